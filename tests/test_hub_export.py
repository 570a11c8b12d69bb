"""Export to fp16 safetensors + hub.yaml, and the ``python -m hp_rl.hub`` commands."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from stable_baselines3 import PPO

from hp_rl.core.paths import file_sha256
from hp_rl.hub import CheckpointError, ExpertSpec, HubSpecError, load_expert, load_hub, parse_hub
from hp_rl.hub.export import ExportError, ExportItem, export_hub, export_trunk, features_agree
from hp_rl.hub_cli import main


@pytest.fixture(scope="module")
def cnn_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PPO CnnPolicy checkpoint on 4 x 84 x 84 frames, weights perturbed away from their init."""
    import gymnasium as gym
    import numpy as np
    from stable_baselines3.common.vec_env import DummyVecEnv

    space = gym.spaces.Box(0, 255, (84, 84, 4), np.uint8)

    class Frames(gym.Env):  # type: ignore[type-arg]
        observation_space = space
        action_space = gym.spaces.Discrete(3)

    model = PPO("CnnPolicy", DummyVecEnv([Frames]), n_steps=8, batch_size=8, seed=0, device="cpu")
    with torch.no_grad():
        for parameter in model.policy.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    path = tmp_path_factory.mktemp("cnn") / "ppo_cnn.zip"
    model.save(path)
    return path


def test_fp16_export_round_trip(cnn_zip: Path, tmp_path: Path) -> None:
    original = load_expert(ExpertSpec(name="cnn", source="sb3", path=str(cnn_zip)))
    provenance = {"algo": "ppo", "env_id": "QbertNoFrameskip-v4", "steps": 123, "seed": 0, "source_return": 1.5}
    manifest = export_hub(
        [ExportItem("qbert", original, provenance)], tmp_path / "hub", description="d", recipe="r.yml"
    )
    raw = yaml.safe_load(manifest.read_text())
    assert raw["description"] == "d" and raw["recipe"] == "r.yml"
    entry = raw["experts"][0]
    assert entry["source"] == "safetensors" and entry["path"] == "qbert.safetensors"
    assert entry["sha256"] == file_sha256(tmp_path / "hub" / "qbert.safetensors")
    assert entry["provenance"]["steps"] == 123 and entry["provenance"]["dtype"] == "float16"
    size = (tmp_path / "hub" / "qbert.safetensors").stat().st_size
    assert entry["provenance"]["size_bytes"] == size
    assert size < 0.55 * cnn_zip.stat().st_size  # fp16 trunk only: no heads, no optimizer state
    # The manifest is itself a hub spec; its experts give features within fp16 tolerance of the original.
    exported = load_hub(str(manifest))["qbert"]
    assert exported.info == original.info
    assert exported.provenance.details["env_id"] == "QbertNoFrameskip-v4"
    x = torch.rand(4, 4, 84, 84)
    with torch.no_grad():
        reference, roundtrip = original(x), exported(x)
    assert torch.allclose(reference, roundtrip, rtol=1e-2, atol=1e-2 * float(reference.abs().max()))
    assert not torch.equal(reference, roundtrip)  # really stored in fp16
    assert features_agree(original, exported) < 1e-2


def test_tampered_export_fails_its_sha(cnn_zip: Path, tmp_path: Path) -> None:
    original = load_expert(ExpertSpec(name="cnn", source="sb3", path=str(cnn_zip)))
    manifest = export_hub([ExportItem("x", original)], tmp_path)
    weights = tmp_path / "x.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_hub(str(manifest))


def test_unexportable_architecture(tmp_path: Path) -> None:
    expert = load_expert(ExpertSpec(name="r", source="random", input_shape=(3,)))
    object.__setattr__(expert.info, "arch", "torchvision:resnet18")
    with pytest.raises(ExportError, match="cannot be rebuilt"):
        export_trunk(ExportItem("r", expert), tmp_path)


def test_cli_list_inspect_export(cnn_zip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for source in ("sb3", "hf", "safetensors", "torchscript", "random", "torchvision", "timm"):
        assert f"  {source} " in out
    assert "control" in out
    assert main(["inspect", str(cnn_zip)]) == 0
    out = capsys.readouterr().out
    for text in ("nature_cnn", "(4, 84, 84)", "features             512", file_sha256(cnn_zip), "parameters"):
        assert text in out
    assert main(["inspect", "random:2", "--obs-shape", "6", "--json"]) == 0
    described = yaml.safe_load(capsys.readouterr().out)
    assert [e["input_shape"] for e in described["experts"]] == [[6], [6]]
    assert main(["export", str(cnn_zip), "--out", str(tmp_path / "out")]) == 0
    assert parse_hub(str(tmp_path / "out" / "hub.yaml")).names == ("ppo_cnn",)
    assert main(["inspect", "nothing.bin"]) == 2
    assert "Cannot tell the source" in capsys.readouterr().err


def test_cli_build_evaluate_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A tiny recipe end to end: train (resumable), evaluate against a random policy, export, load."""
    recipe = tmp_path / "tiny_bundled.recipe.yml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "description": "tiny",
                "algo": "ppo",
                "n_timesteps": 256,
                "seed": 0,
                "save_freq": 0,
                "eval_episodes": 2,
                "overrides": {"n_steps": 32, "n_epochs": 1},
                "tasks": [{"name": "cartpole", "env_id": "CartPole-v1"}],
            }
        )
    )
    workdir = tmp_path / "work"
    assert main(["build", str(recipe), "--workdir", str(workdir)]) == 0
    built = yaml.safe_load((workdir / "hub.yaml").read_text())
    provenance = built["experts"][0]["provenance"]
    assert provenance["algo"] == "ppo" and provenance["env_id"] == "CartPole-v1" and provenance["steps"] >= 256
    assert provenance["eval_episodes"] == 2 and "random_return" in provenance and "source_return" in provenance
    assert "hp_rl.hub build" in provenance["command"]
    assert len(load_hub(str(workdir / "hub.yaml"))) == 1
    # Resumable: a second build trains nothing and reuses the evaluation.
    evaluation = (workdir / "cartpole" / "source_eval.yml").read_text()
    assert main(["build", str(recipe), "--workdir", str(workdir)]) == 0
    assert (workdir / "cartpole" / "source_eval.yml").read_text() == evaluation
    out = tmp_path / "exported"
    assert main(["export", str(recipe), "--workdir", str(workdir), "--out", str(out)]) == 0
    hub = parse_hub(str(out / "hub.yaml"))
    assert hub.experts[0].provenance["source_return"] == provenance["source_return"]
    exported, original = load_hub(hub)["cartpole"], load_hub(str(workdir / "hub.yaml"))["cartpole"]
    x = torch.randn(8, 4)
    assert torch.allclose(exported(x), original(x), atol=1e-2)
    assert main(["build", str(recipe), "--only", "nope", "--workdir", str(workdir)]) == 2
    assert main(["export", str(tmp_path / "empty.recipe.yml"), "--out", str(out)]) == 2


def test_build_only_one_expert_succeeds_while_the_others_are_unbuilt(tmp_path: Path) -> None:
    """One process per expert (``--only``) in a shared workdir: each exits 0 once its own expert is done."""
    recipe = tmp_path / "two.recipe.yml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "description": "two",
                "algo": "ppo",
                "n_timesteps": 64,
                "seed": 0,
                "save_freq": 0,
                "eval_episodes": 1,
                "overrides": {"n_steps": 32, "n_epochs": 1},
                "tasks": [{"name": "cartpole", "env_id": "CartPole-v1"}, {"name": "acrobot", "env_id": "Acrobot-v1"}],
            }
        )
    )
    workdir = tmp_path / "work"
    assert main(["build", str(recipe), "--workdir", str(workdir), "--only", "cartpole", "--no-eval"]) == 0
    assert [e["name"] for e in yaml.safe_load((workdir / "hub.yaml").read_text())["experts"]] == ["cartpole"]
    assert not list(workdir.glob("*.partial")) and not (workdir / "acrobot").exists()
    # Without --only the build trains the missing expert and the spec lists both.
    assert main(["build", str(recipe), "--workdir", str(workdir), "--no-eval"]) == 0
    assert [e["name"] for e in yaml.safe_load((workdir / "hub.yaml").read_text())["experts"]] == ["cartpole", "acrobot"]


def test_spec_errors_surface_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "hub.yaml"
    spec.write_text(yaml.safe_dump({"experts": [{"name": "a", "source": "random", "lr": 1}]}))
    assert main(["inspect", str(spec)]) == 2
    err = capsys.readouterr().err
    assert str(spec) in err and "'lr'" in err
    with pytest.raises(HubSpecError):
        parse_hub(str(spec))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_export_is_byte_for_byte_reproducible(dtype: str, tmp_path: Path) -> None:
    """Same weights and provenance give the same file and sha256, in any dtype, readable by safetensors."""
    from safetensors.torch import load_file

    expert = load_expert(ExpertSpec(name="m", source="random", input_shape=(5,), options={"seed": 1}))
    item = ExportItem("m", expert, {"env_id": "CartPole-v1", "steps": 10, "z": 1, "a": 2})
    first, second = export_trunk(item, tmp_path / "a", dtype), export_trunk(item, tmp_path / "b", dtype)
    assert first.sha256 == second.sha256
    assert (tmp_path / "a" / "m.safetensors").read_bytes() == (tmp_path / "b" / "m.safetensors").read_bytes()
    state = load_file(str(tmp_path / "a" / "m.safetensors"))
    reference = expert.trunk.state_dict()
    for key, value in state.items():
        assert value.dtype == getattr(torch, dtype)
        assert torch.equal(value, reference[key].to(value.dtype))


def test_build_on_a_local_ray_trains_the_same_experts_as_one_process(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    from hp_rl.hub.sb3_zip import read_sb3_trunk

    recipe = tmp_path / "two.recipe.yml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "description": "two",
                "algo": "ppo",
                "n_timesteps": 64,
                "seed": 0,
                "save_freq": 0,
                "eval_episodes": 1,
                "overrides": {"n_steps": 32, "n_epochs": 1},
                "tasks": [{"name": "cartpole", "env_id": "CartPole-v1"}, {"name": "acrobot", "env_id": "Acrobot-v1"}],
            }
        )
    )
    assert main(["build", str(recipe), "--workdir", str(tmp_path / "here"), "--no-eval"]) == 0
    assert main(["build", str(recipe), "--workdir", str(tmp_path / "ray"), "--no-eval", "--ray", "--jobs", "2"]) == 0
    for name in ("cartpole", "acrobot"):
        here, _, _ = read_sb3_trunk(tmp_path / "here" / name / "model.zip")
        there, _, _ = read_sb3_trunk(tmp_path / "ray" / name / "model.zip")
        for key, value in here.state_dict().items():
            assert torch.equal(value, there.state_dict()[key]), (name, key)
    names = [e["name"] for e in yaml.safe_load((tmp_path / "ray" / "hub.yaml").read_text())["experts"]]
    assert names == ["cartpole", "acrobot"]
