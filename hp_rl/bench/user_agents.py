"""The agents of a benchmark hub as the files users have: one bare SB3 zip per agent, nothing beside it.

An exported hub (``hub.yaml`` with safetensors, the bundled MinAtar hub) holds each agent's trunk and heads. Here
each becomes the plain SB3 model it was trained as (the hub builder's configuration of its task: PPO with the
family's network, ``net_arch: []``), with those weights, saved by ``model.save()``: what a user hands to
``python -m hp_rl.train --hub a.zip,b.zip``. The zip records no task id and no file sits beside it, so nothing
but the zip itself and the zero-shot scores can tell the agents apart. Comparing this path with the manifest
path therefore runs the same weights through both.

    python benchmarks/user_agents.py hp_rl/hub/bundled/minatar/hub.yaml bench_out/user_zips
    hp-rl bench user_agents HUB_YAML OUT          # the same, from an installed hp_rl
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["write_bare_zip", "write_bare_zips", "main"]


def _plain_model(entry: dict[str, Any]) -> Any:
    """The plain SB3 model the agent was trained as (its recipe's settings on its own task)."""
    from hp_rl.rl.envs import make_env
    from hp_rl.rl.runs import RunConfig
    from hp_rl.rl.training import build_model

    provenance = entry.get("provenance", {})
    env_id, algo = str(provenance["env_id"]), str(provenance.get("algo", "ppo"))
    config = RunConfig.for_task(algo, env_id, overrides={"policy_kwargs.net_arch": []}, n_timesteps=1, device="cpu")
    env = make_env(env_id, config.n_envs, 0)
    return build_model(config, env), env


def write_bare_zip(entry: dict[str, Any], path: Path) -> Path:
    """Write the agent of an exported hub's ``entry`` (as :func:`hp_rl.hub.parse_hub` reads it) as an SB3 zip."""
    from hp_rl.hub import load_expert, parse_hub

    spec = parse_hub({"experts": [entry]}).experts[0]
    expert = load_expert(spec, None)
    model, env = _plain_model(entry)
    state = model.policy.state_dict()
    trunk = {f"features_extractor.{k}": v for k, v in expert.trunk.state_dict().items()}
    for prefix in ("pi_features_extractor.", "vf_features_extractor."):
        trunk.update(
            {prefix + k[len("features_extractor.") :]: v for k, v in trunk.items() if k.startswith("features")}
        )
    heads = expert.heads
    if heads is None or heads.value_weight is None or heads.value_bias is None:
        raise ValueError(f"{spec.name}: the export holds no policy and value heads to write.")
    loaded = {
        **trunk,
        "action_net.weight": heads.action_weight,
        "action_net.bias": heads.action_bias,
        "value_net.weight": heads.value_weight,
        "value_net.bias": heads.value_bias,
    }
    missing = sorted(set(state) - set(loaded))
    if missing:
        raise ValueError(f"{spec.name}: the plain model has weights the export lacks: {missing}.")
    model.policy.load_state_dict({k: v.to(state[k].dtype) for k, v in loaded.items() if k in state})
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    env.close()
    return path


def write_bare_zips(manifest: Path, out: Path, names: Sequence[str] | None = None) -> dict[str, Path]:
    """Every (or each named) agent of ``manifest`` as ``out/<name>.zip``; zips already there are kept.

    :return: agent name -> zip.
    """
    from hp_rl.hub import parse_hub

    spec = parse_hub(str(manifest))
    written = {}
    for expert in spec.experts:
        if names is not None and expert.name not in names:
            continue
        path = out / f"{expert.name}.zip"
        if not path.is_file():
            write_bare_zip(expert.as_dict(), path)
        written[expert.name] = path
    return written


def build_parser() -> argparse.ArgumentParser:
    """The command line: ``manifest out [--only a,b]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("manifest", type=Path, help="an exported hub.yaml")
    parser.add_argument("out", type=Path, help="folder of the zips")
    parser.add_argument("--only", default=None, help="comma-separated agent names")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Write the zips (``manifest out [--only a,b]``)."""
    args = build_parser().parse_args(argv)
    names = args.only.split(",") if args.only else None
    for name, path in write_bare_zips(args.manifest, args.out, names).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
