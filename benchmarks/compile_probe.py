"""Does ``torch.compile`` pay for the acting forward of a hub on a CPU? One measurement, in one process.

The acting path of a MinAtar hub (4 random small-frame experts, k=2, batch 8: one observation per environment):
the generator, the content-keyed noise (its torch form, which the compiler can trace), the noisy top-k router,
the fused call of the experts and the weighted combination, timed eagerly and compiled by inductor
(``dynamic=False``: one graph for the acting batch), with the outputs compared. Then the parts that stay
external kernels in the compiled graph (the convolutions and batched products), timed alone: they are the
floor of what compiling can reach.

    python benchmarks/compile_probe.py --out bench_out/compile_probe.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hp_rl.bench.throughput.training import minatar_hub


def _cpu_us(call: Callable[[], Any], calls: int = 300, reps: int = 7) -> float:
    """Median over ``reps`` of the mean CPU microseconds of ``calls`` calls, without gradient."""
    results = []
    with torch.no_grad():
        for _ in range(calls // 10):
            call()
        for _ in range(reps):
            began = time.process_time()
            for _ in range(calls):
                call()
            results.append((time.process_time() - began) / calls * 1e6)
    return round(statistics.median(results), 1)


def _acting_path(extractor: Any, frames: torch.Tensor) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The pathway's acting forward as one traceable function of the frames (its noise seed and epoch fixed)."""
    from hp_rl.routing import noise as keyed

    pathway = extractor.pathway
    groups = pathway.fused_groups(frames)
    for group in groups:  # acting under no_grad reads the stacked frozen weights: no cache checks to trace
        group(frames)
        cache = {key: value for key, (_, value) in group._cache.items()}
        group._stacked = lambda step, path, build, cache=cache: cache.get((step, path))
    seed, epoch = (int(v) for v in pathway.noise.state.tolist())
    m = len(pathway.experts)
    weights = keyed._position_weights(frames[0].numel(), keyed._wrap64(seed), "cpu")
    seed_term = torch.tensor(keyed._wrap64(seed))
    epoch_term = torch.tensor(keyed._wrap64(epoch * keyed._MIX_1))
    counters = torch.tensor([keyed._wrap64((i + 1) * keyed._GOLDEN) for i in range(2 * m)])

    def acting(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = pathway.generator(x)
        flat = x.reshape(x.shape[0], -1).float().contiguous().view(torch.int32)
        hashed = keyed._mix((flat * weights).sum(dim=1, dtype=torch.int32).long() + seed_term)
        bits = (keyed._mix((hashed + epoch_term)[:, None] + counters[None, :]) & keyed._MASK_24).float()
        uniform = (bits + 0.5) / float(1 << 24)
        normal = torch.sqrt(-2.0 * torch.log(uniform[:, :m])) * torch.cos(2.0 * torch.pi * uniform[:, m:])
        routes = pathway.router(logits.clean, logits.noise, normal)
        out = None
        for group in groups:
            part = (routes.weights[:, group.columns].t().unsqueeze(-1) * group(x)).sum(0)
            out = part if out is None else out + part
        assert out is not None
        return out, routes.weights

    return acting


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="MinAtar/Breakout-v1")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from hp_rl.rl.envs import make_env
    from hp_rl.rl.extractor import HubPathwayExtractor

    env = make_env(args.env, 1, seed=0)
    space = env.observation_space
    env.close()
    assert space.shape is not None
    frames = (torch.rand((8, *space.shape), generator=torch.Generator().manual_seed(0)) < 0.1).float()
    torch.manual_seed(0)
    extractor = HubPathwayExtractor(space, hub=minatar_hub(4, int(space.shape[0]), None), k=2).eval()
    acting = _acting_path(extractor, frames)
    with torch.no_grad():
        eager_out, eager_weights = acting(frames)
        reference = extractor.pathway(frames)
    began = time.perf_counter()
    compiled = torch.compile(acting, dynamic=False)
    with torch.no_grad():
        compiled_out, compiled_weights = compiled(frames)
    compile_s = time.perf_counter() - began
    group = extractor.pathway.fused_groups(frames)[0]
    generator_conv = next(m for m in extractor.pathway.generator.modules() if isinstance(m, torch.nn.Conv2d))
    from hp_rl.rl.baselines import SmallFrameCNN

    plain = SmallFrameCNN(space).eval()
    result = {
        "plain extractor (SmallFrameCNN)": _cpu_us(lambda: plain(frames)),
        "hub extractor, eager (as hp_rl runs it)": _cpu_us(lambda: extractor(frames)),
        "acting path, eager": _cpu_us(lambda: acting(frames)),
        "acting path, compiled": _cpu_us(lambda: compiled(frames)),
        "compile seconds": round(compile_s, 1),
        "same routes as the pathway": bool(torch.equal(eager_weights, reference.routes.weights)),
        "compiled max abs difference": float((compiled_out - eager_out).abs().max()),
        "compiled same routes": bool(torch.equal(compiled_weights > 0, eager_weights > 0)),
        "part: fused experts (every expert, every row)": _cpu_us(lambda: group(frames)),
        "part: generator convolution": _cpu_us(lambda: generator_conv(frames)),
    }
    for key, value in result.items():
        print(f"{key:<48} {value}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"torch": torch.__version__, "env": args.env, **result}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
