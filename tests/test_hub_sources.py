"""Expert sources: every registered source loads, SB3 zips give SB3's own features, bad files fail clearly."""

from __future__ import annotations

import io
import shutil
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.preprocessing import preprocess_obs

from hp_rl.core.paths import file_sha256
from hp_rl.hub import (
    SOURCES,
    CheckpointError,
    ExpertSpec,
    HFUnavailableError,
    HubExpert,
    HubSpecError,
    load_expert,
    parse_hub,
    read_sb3_trunk,
)
from hp_rl.hub.architectures import MLPTrunk, TrunkInfo
from hp_rl.hub.expert import Provenance
from hp_rl.hub.export import ExportItem, export_trunk
from hp_rl.hub.vision_sources import vision_available

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def cartpole_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PPO MlpPolicy checkpoint written by SB3 itself."""
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=16, batch_size=16, seed=0, device="cpu")
    path = tmp_path_factory.mktemp("zips") / "ppo_cartpole.zip"
    model.save(path)
    return path


def make_hf_cache(root: Path, repo_id: str, source_zip: Path, commit: str = COMMIT, ref: str = "main") -> Path:
    """The huggingface_hub cache layout for one file: blobs/<sha256>, snapshots/<commit>/<file> -> blob, refs/<ref>."""
    folder = root / ("models--" + repo_id.replace("/", "--"))
    digest = file_sha256(source_zip)
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    blob = folder / "blobs" / digest
    shutil.copyfile(source_zip, blob)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    link = snapshot / f"{repo_id.split('/')[-1]}.zip"
    if not link.exists():
        link.symlink_to(Path("../../blobs") / digest)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / ref).write_text(commit)
    return folder


@pytest.fixture()
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cartpole_zip: Path) -> Path:
    """An offline Hugging Face cache in tmp_path holding sb3/ppo-CartPole-v1 at COMMIT (ref main)."""
    cache = tmp_path / "hf_home" / "hub"
    make_hf_cache(cache, "sb3/ppo-CartPole-v1", cartpole_zip)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


# --------------------------------------------------- every registered source loads from a file we make

SourceFactory = Callable[[Path, Path], ExpertSpec]


def _sb3(tmp: Path, cartpole_zip: Path) -> ExpertSpec:
    return ExpertSpec(name="sb3", source="sb3", path=str(cartpole_zip))


def _safetensors(tmp: Path, cartpole_zip: Path) -> ExpertSpec:
    trunk, info, _ = read_sb3_trunk(cartpole_zip)
    entry = export_trunk(ExportItem("st", HubExpert(trunk, info, Provenance("sb3", "x"))), tmp)
    return ExpertSpec(name="st", source="safetensors", path=str(tmp / str(entry.path)))


def _random(tmp: Path, cartpole_zip: Path) -> ExpertSpec:
    return ExpertSpec(name="rnd", source="random", input_shape=(4,), options={"seed": 3})


def _torchscript(tmp: Path, cartpole_zip: Path) -> ExpertSpec:
    path = tmp / "trunk.pt"
    # the file says its output width itself (hp_rl never runs a TorchScript file to measure it)
    torch.jit.save(torch.jit.script(MLPTrunk(4, (32,))), str(path), _extra_files={"facts.json": '{"features_dim": 32}'})
    return ExpertSpec(name="ts", source="torchscript", path=str(path), input_shape=(4,))


def _hf(tmp: Path, cartpole_zip: Path) -> ExpertSpec:
    # The hf_cache fixture (requested by the test for this source) holds the repo.
    return ExpertSpec(name="hf", source="hf", path="sb3/ppo-CartPole-v1")


def _torchvision(tmp: Path, cartpole_zip: Path) -> ExpertSpec:
    if not vision_available("torchvision"):
        pytest.skip("torchvision is not installed (optional extra 'timm')")
    import torchvision

    path = tmp / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return ExpertSpec(
        name="tv", source="torchvision", arch="resnet18", path=str(path), input_shape=(4, 84, 84), options={"size": 64}
    )


def _timm(tmp: Path, cartpole_zip: Path) -> ExpertSpec:
    if not vision_available("timm"):
        pytest.skip("timm is not installed (optional extra 'timm')")
    import timm

    path = tmp / "resnet10t.pth"
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), path)
    return ExpertSpec(
        name="timm", source="timm", arch="resnet10t", path=str(path), input_shape=(4, 84, 84), options={"size": 64}
    )


FACTORIES: dict[str, SourceFactory] = {
    "sb3": _sb3,
    "safetensors": _safetensors,
    "random": _random,
    "torchscript": _torchscript,
    "hf": _hf,
    "torchvision": _torchvision,
    "timm": _timm,
}


def test_every_registered_source_has_a_test_factory() -> None:
    assert set(SOURCES) <= set(FACTORIES), f"add a factory for {sorted(set(SOURCES) - set(FACTORIES))}"


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
@pytest.mark.parametrize(
    "source", [pytest.param(name, marks=[pytest.mark.extra] if SOURCES[name].extra else []) for name in sorted(SOURCES)]
)
def test_registered_source_gives_batch_features(
    source: str, tmp_path: Path, cartpole_zip: Path, request: pytest.FixtureRequest
) -> None:
    if source == "hf":
        request.getfixturevalue("hf_cache")
    spec = FACTORIES[source](tmp_path, cartpole_zip)
    expert = load_expert(spec)
    assert isinstance(expert, HubExpert)
    assert expert.provenance.source == source
    x = torch.rand(3, *expert.info.input_shape)
    with torch.no_grad():
        features = expert(x)
    assert features.shape == (3, expert.info.features_dim)
    assert torch.isfinite(features).all()
    assert expert.num_parameters > 0


# --------------------------------------------------- SB3 zips give exactly SB3's own features


def _frames(env: gym.Env | object, steps: int = 12) -> np.ndarray:
    """A few real observations from a vectorised env (random actions)."""
    obs = env.reset()  # type: ignore[attr-defined]
    collected = [obs]
    for _ in range(steps):
        obs, *_ = env.step(np.array([env.action_space.sample() for _ in range(env.num_envs)]))  # type: ignore[attr-defined]
        collected.append(obs)
    return np.concatenate(collected[-4:])


def _sb3_features(model: BaseAlgorithm, obs: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(what SB3's policy computes, the preprocessed observation the expert gets)."""
    policy = model.policy
    obs_tensor, _ = policy.obs_to_tensor(obs)
    preprocessed = preprocess_obs(obs_tensor, policy.observation_space, normalize_images=policy.normalize_images)
    with torch.no_grad():
        if isinstance(model, DQN):
            features = model.q_net.extract_features(obs_tensor, model.q_net.features_extractor)
            if model.q_net.features_extractor.__class__.__name__ != "NatureCNN":
                features = model.q_net.q_net[:-1](features)
        else:
            features = policy.extract_features(obs_tensor)  # type: ignore[assignment]
            if policy.features_extractor.__class__.__name__ != "NatureCNN":  # MLP: the actor's hidden layers
                features = policy.mlp_extractor.forward_actor(features)  # type: ignore[operator, union-attr]
    return features, preprocessed.float()


def _make_model(kind: str) -> tuple[BaseAlgorithm, np.ndarray]:
    if kind.endswith("cnn"):
        from hp_rl.rl.envs import make_env

        env = make_env("BreakoutNoFrameskip-v4", n_envs=1, seed=0)
    else:
        from stable_baselines3.common.env_util import make_vec_env

        env = make_vec_env("CartPole-v1", n_envs=1, seed=0)
    policy = "CnnPolicy" if kind.endswith("cnn") else "MlpPolicy"
    if kind.startswith("ppo"):
        model: BaseAlgorithm = PPO(policy, env, n_steps=8, batch_size=8, seed=0, device="cpu")
    elif kind.startswith("a2c"):
        model = A2C(policy, env, seed=0, device="cpu")
    else:
        model = DQN(policy, env, buffer_size=64, learning_starts=0, seed=0, device="cpu")
    obs = _frames(env)
    env.close()
    return model, obs


@pytest.mark.parametrize("kind", ["ppo_cnn", "a2c_mlp", "dqn_cnn", "dqn_mlp"])
def test_sb3_zip_gives_exactly_sb3_features(kind: str, tmp_path: Path) -> None:
    if kind.endswith("cnn"):
        pytest.importorskip("ale_py")
    model, obs = _make_model(kind)
    # Give the weights something to tell apart: perturb every parameter (default inits are structured).
    with torch.no_grad():
        for parameter in model.policy.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    path = tmp_path / f"{kind}.zip"
    model.save(path)
    loaded = type(model).load(path, device="cpu")
    expected, preprocessed = _sb3_features(loaded, obs)
    expert = load_expert(ExpertSpec(name=kind, source="sb3", path=str(path)))
    assert expert.info.input_shape == tuple(preprocessed.shape[1:])
    with torch.no_grad():
        got = expert(preprocessed)
    assert got.shape == expected.shape
    assert torch.equal(got, expected)
    assert expert.provenance.sha256 == file_sha256(path)


@pytest.mark.parametrize("policy", ["MlpPolicy", "CnnPolicy"])
def test_qrdqn_zip_gives_exactly_sb3_features(policy: str, tmp_path: Path) -> None:
    sb3_contrib = pytest.importorskip("sb3_contrib")
    from stable_baselines3.common.vec_env import DummyVecEnv

    if policy == "CnnPolicy":
        space = gym.spaces.Box(0, 255, (84, 84, 4), np.uint8)

        class Frames(gym.Env):  # type: ignore[type-arg]
            observation_space = space
            action_space = gym.spaces.Discrete(3)

        env: object = DummyVecEnv([Frames])
        obs = np.random.default_rng(0).integers(0, 255, (3, 84, 84, 4), dtype=np.uint8)
    else:
        env = "CartPole-v1"
        obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    model = sb3_contrib.QRDQN(policy, env, buffer_size=64, seed=0, device="cpu")
    path = tmp_path / "qrdqn.zip"
    model.save(path)
    net = sb3_contrib.QRDQN.load(path, device="cpu").quantile_net
    obs_tensor, _ = net.obs_to_tensor(obs)
    with torch.no_grad():
        expected = net.extract_features(obs_tensor, net.features_extractor)
        if policy == "MlpPolicy":
            expected = net.quantile_net[:-1](expected)
        preprocessed = preprocess_obs(obs_tensor, net.observation_space).float()
        got = load_expert(ExpertSpec(name="q", source="sb3", path=str(path)))(preprocessed)
    assert torch.equal(got, expected)


def _rewrite_without_copies(source: Path, target: Path) -> None:
    """The zip as SB3 < 1.7 saved it: policy.pth without the pi_/vf_ features-extractor copies."""
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    state = torch.load(io.BytesIO(members["policy.pth"]), weights_only=True)
    removed = [k for k in state if k.startswith(("pi_features_extractor.", "vf_features_extractor."))]
    assert removed, "SB3 >= 1.7 writes the copies; the test needs them to remove"
    buffer = io.BytesIO()
    torch.save({k: v for k, v in state.items() if k not in removed}, buffer)
    members["policy.pth"] = buffer.getvalue()
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def test_zip_without_pi_vf_copies_gives_the_same_features(tmp_path: Path) -> None:
    pytest.importorskip("ale_py")
    model, obs = _make_model("ppo_cnn")
    path = tmp_path / "new.zip"
    model.save(path)
    old = tmp_path / "old.zip"
    _rewrite_without_copies(path, old)
    expected, preprocessed = _sb3_features(model, obs)
    with torch.no_grad():
        got = load_expert(ExpertSpec(name="old", source="sb3", path=str(old)))(preprocessed)
    assert torch.equal(got, expected)


# ------------------------------------------------------------------------------ bad files, clear errors


def test_corrupt_zip_is_a_checkpoint_error(tmp_path: Path, cartpole_zip: Path) -> None:
    broken = tmp_path / "broken.zip"
    broken.write_bytes(cartpole_zip.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="not a valid zip"):
        load_expert(ExpertSpec(name="b", source="sb3", path=str(broken)))


def test_zip_without_policy_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data", "{}")
    with pytest.raises(CheckpointError, match=r"policy\.pth"):
        load_expert(ExpertSpec(name="o", source="sb3", path=str(path)))


def test_missing_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_expert(ExpertSpec(name="m", source="sb3", path=str(tmp_path / "nope.zip")))


def test_sha256_mismatch_is_a_checkpoint_error(cartpole_zip: Path) -> None:
    with pytest.raises(CheckpointError, match="sha256"):
        load_expert(ExpertSpec(name="s", source="sb3", path=str(cartpole_zip), sha256="0" * 64))
    expert = load_expert(ExpertSpec(name="s", source="sb3", path=str(cartpole_zip), sha256=file_sha256(cartpole_zip)))
    assert expert.provenance.sha256 == file_sha256(cartpole_zip)


def test_pickled_objects_are_refused(tmp_path: Path, cartpole_zip: Path) -> None:
    """An untrusted zip whose policy.pth holds an arbitrary object is not unpickled."""
    path = tmp_path / "evil.zip"
    buffer = io.BytesIO()
    torch.save({"weights": TrunkInfo("mlp", "vector", (4,), 8)}, buffer)  # a dataclass, not plain weights
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("policy.pth", buffer.getvalue())
    with pytest.raises(CheckpointError, match="plain weights"):
        read_sb3_trunk(path)


# ----------------------------------------------------------------------------- Hugging Face, offline


def test_hf_resolves_main_from_the_offline_cache(hf_cache: Path, cartpole_zip: Path) -> None:
    hub = parse_hub("hf:sb3/ppo-CartPole-v1")
    expert = load_expert(hub.experts[0])
    assert expert.provenance.source == "hf"
    assert expert.provenance.location == f"sb3/ppo-CartPole-v1@{COMMIT}"
    assert expert.provenance.sha256 == file_sha256(cartpole_zip)
    assert expert.provenance.details["revision"] == COMMIT
    assert expert.provenance.details["requested_revision"] == "main"
    reference = load_expert(ExpertSpec(name="z", source="sb3", path=str(cartpole_zip)))
    x = torch.randn(5, 4)
    assert torch.equal(expert(x), reference(x))


def test_a_zoo_repository_names_its_task_and_brings_its_statistics(hf_cache: Path) -> None:
    import numpy as np
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    expert = load_expert(parse_hub("hf:sb3/ppo-CartPole-v1").experts[0])
    assert expert.origin is not None and expert.origin.env_id == "CartPole-v1" and expert.normalizer is None
    # rl-zoo's load_from_hub fetches vec_normalize.pkl beside the zip: its statistics come with the agent
    venv = VecNormalize(make_vec_env("CartPole-v1", 1, seed=0))
    venv.reset()
    for _ in range(20):
        venv.step(np.array([venv.action_space.sample()]))
    venv.save(str(hf_cache / "models--sb3--ppo-CartPole-v1" / "snapshots" / COMMIT / "vec_normalize.pkl"))
    normalised = load_expert(parse_hub("hf:sb3/ppo-CartPole-v1").experts[0])
    assert normalised.normalizer is not None
    torch.testing.assert_close(normalised.normalizer.mean, torch.as_tensor(venv.obs_rms.mean, dtype=torch.float32))


def test_hf_pinned_revision_and_sha(hf_cache: Path, cartpole_zip: Path, tmp_path: Path) -> None:
    # A second snapshot at another commit, reachable only by its hash.
    other_zip = tmp_path / "other.zip"
    PPO("MlpPolicy", "CartPole-v1", n_steps=16, batch_size=16, seed=1, device="cpu").save(other_zip)
    make_hf_cache(hf_cache, "sb3/ppo-CartPole-v1", other_zip, commit=OTHER_COMMIT, ref="v2")
    (hf_cache / "models--sb3--ppo-CartPole-v1" / "refs" / "main").write_text(COMMIT)
    digest = file_sha256(other_zip)
    for revision in (OTHER_COMMIT, OTHER_COMMIT[:10], "v2"):
        spec = ExpertSpec(
            name="p", source="hf", path="sb3/ppo-CartPole-v1", sha256=digest, options={"revision": revision}
        )
        expert = load_expert(spec)
        assert expert.provenance.details["revision"] == OTHER_COMMIT
        assert expert.provenance.sha256 == digest
    with pytest.raises(CheckpointError, match="sha256"):
        load_expert(ExpertSpec(name="p", source="hf", path="sb3/ppo-CartPole-v1", sha256=digest))  # main != other


def test_hf_offline_cache_miss_fails_fast_and_clearly(hf_cache: Path) -> None:
    started = time.perf_counter()
    with pytest.raises(HFUnavailableError) as caught:
        load_expert(parse_hub("hf:sb3/ppo-PongNoFrameskip-v4@main").experts[0])
    assert time.perf_counter() - started < 1.0
    message = str(caught.value)
    assert "HF_HUB_OFFLINE" in message and "ppo-PongNoFrameskip-v4.zip" in message and str(hf_cache) in message
    with pytest.raises(HFUnavailableError, match="not in the local"):
        load_expert(ExpertSpec(name="r", source="hf", path="sb3/ppo-CartPole-v1", options={"revision": "v9"}))


def test_hf_downloads_when_online(hf_cache: Path, cartpole_zip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Online with a cache miss, the file comes through huggingface_hub.hf_hub_download (faked here)."""
    import huggingface_hub

    calls: list[tuple[str, str, str | None]] = []

    def fake_download(
        repo_id: str, filename: str, *, revision: str | None = None, cache_dir: str = "", etag_timeout: float = 10
    ) -> str:
        calls.append((repo_id, filename, revision))
        folder = make_hf_cache(Path(cache_dir), repo_id, cartpole_zip, commit=OTHER_COMMIT)
        return str(folder / "snapshots" / OTHER_COMMIT / filename)

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    expert = load_expert(ExpertSpec(name="a", source="hf", path="sb3/a2c-CartPole-v1"))
    assert calls == [("sb3/a2c-CartPole-v1", "a2c-CartPole-v1.zip", None)]
    assert expert.provenance.details["revision"] == OTHER_COMMIT


def test_hf_spec_errors(hf_cache: Path) -> None:
    with pytest.raises(HubSpecError, match="unknown option"):
        load_expert(ExpertSpec(name="x", source="hf", path="sb3/ppo-CartPole-v1", options={"rev": "main"}))
    with pytest.raises(HubSpecError, match="repository id"):
        load_expert(ExpertSpec(name="x", source="hf"))


def test_hf_a_silent_endpoint_is_given_up_on_within_the_limit(hf_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    # a loopback listener that accepts connections and never answers
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setenv("HP_RL_HF_TIMEOUT", "2")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    started = time.perf_counter()
    try:
        # whichever gives up first, huggingface_hub's own timeout (some versions) or the limit, the error is ours
        with pytest.raises(HFUnavailableError, match=r"ppo-SilentNoFrameskip-v4\.zip"):
            load_expert(ExpertSpec(name="s", source="hf", path="sb3/ppo-SilentNoFrameskip-v4"))
    finally:
        server.close()
    assert time.perf_counter() - started < 10


def test_hf_a_download_that_never_returns_is_given_up_on_at_the_limit(
    hf_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import huggingface_hub

    release = threading.Event()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HP_RL_HF_TIMEOUT", "1")
    # the network edge: a download that retries a silent server without end
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *args, **kwargs: release.wait(30))
    started = time.perf_counter()
    try:
        with pytest.raises(HFUnavailableError, match="does not answer"):
            load_expert(ExpertSpec(name="s", source="hf", path="sb3/ppo-SilentNoFrameskip-v4"))
    finally:
        release.set()
    assert time.perf_counter() - started < 5
