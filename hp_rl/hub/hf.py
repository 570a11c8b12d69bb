"""The ``hf`` source: SB3 checkpoints published on the Hugging Face Hub (``hf:sb3/ppo-PongNoFrameskip-v4@REV``).

rl-baselines3-zoo publishes each agent as a repository ``sb3/<algo>-<EnvId>`` holding ``<algo>-<EnvId>.zip``.
Resolution goes through ``huggingface_hub`` and its cache, local cache first:

1. the file is looked up in the local cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, read at call time);
   a pinned commit hash or a cached ref (``main``, a tag) resolves without any network access;
2. in offline mode (``HF_HUB_OFFLINE=1``) a cache miss fails at once with a message that says how to
   provide the file;
3. otherwise the file is downloaded once with :func:`huggingface_hub.hf_hub_download`.

The commit hash and the sha256 actually used are recorded in the expert's :class:`Provenance`, so the
run folder's hub manifest says exactly which weights a run used.
"""

from __future__ import annotations

import os
import re
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

from hp_rl.core.paths import file_sha256
from hp_rl.hub.expert import HubExpert, Provenance
from hp_rl.hub.origin import AgentOrigin, read_agent_origin
from hp_rl.hub.sb3_zip import CheckpointError, read_sb3_expert
from hp_rl.hub.spec import ExpertSpec, HubSpecError

__all__ = [
    "HFUnavailableError",
    "ResolvedFile",
    "hf_cache_dir",
    "hf_endpoint",
    "hf_offline",
    "hf_reachable",
    "default_filename",
    "find_cached",
    "resolve_hf_file",
    "load_hf_expert",
]

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_TRUE = {"1", "on", "yes", "true"}


class HFUnavailableError(CheckpointError):
    """A Hugging Face file is neither in the local cache nor downloadable (offline mode, no network)."""


@dataclass(frozen=True)
class ResolvedFile:
    """A Hugging Face file as found in the local cache.

    :param repo_id: ``org/name``.
    :param filename: file inside the repository.
    :param path: local path of the file (a snapshot entry; usually a link into ``blobs/``).
    :param commit: the 40-hex commit hash of the snapshot that holds it.
    :param requested: the revision that was asked for (``main``, a tag, a commit hash).
    :param sha256: hex sha256 of the file's content.
    """

    repo_id: str
    filename: str
    path: Path
    commit: str
    requested: str
    sha256: str


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, from the environment at call time (``huggingface_hub`` reads it at import)."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.path.expandvars(os.environ[variable])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hf_offline() -> bool:
    """Whether Hugging Face offline mode is on (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``), read at call time."""
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(variable, "").strip().lower() in _TRUE:
            return True
    return False


def hf_endpoint() -> str:
    """The Hub's base URL (``HF_ENDPOINT`` or https://huggingface.co)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hf_reachable(timeout: float = 3.0) -> bool:
    """One short check whether the Hub answers, bounded by ``timeout`` seconds in all (DNS included).

    Always ``False`` in offline mode, without touching the network.
    """
    if hf_offline():
        return False
    result: list[bool] = []

    def probe() -> None:
        request = urllib.request.Request(f"{hf_endpoint()}/api/models/sb3/ppo-PongNoFrameskip-v4", method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=timeout):
                result.append(True)
        except urllib.error.HTTPError:
            result.append(True)  # the server answered, even if with an error status
        except (OSError, ValueError):
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def default_filename(repo_id: str) -> str:
    """``<repo name>.zip``, the file rl-baselines3-zoo uploads (``sb3/ppo-PongNoFrameskip-v4`` ->
    ``ppo-PongNoFrameskip-v4.zip``)."""
    return f"{repo_id.split('/')[-1]}.zip"


def _repo_folder(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def find_cached(
    repo_id: str,
    filename: str | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    digest: bool = True,
) -> ResolvedFile | None:
    """The cached file for ``revision``, without any network access, or ``None``.

    :param repo_id: ``org/name``.
    :param filename: file in the repository; default :func:`default_filename`.
    :param revision: branch, tag or commit hash; default ``main``.
    :param cache_dir: the hub cache; default :func:`hf_cache_dir`.
    :param digest: compute the file's sha256 (else ``sha256`` is empty: a quick presence check).
    """
    filename = filename or default_filename(repo_id)
    requested = revision or "main"
    folder = _repo_folder(Path(cache_dir) if cache_dir is not None else hf_cache_dir(), repo_id)
    commit = requested
    ref = folder / "refs" / requested
    if ref.is_file():
        commit = ref.read_text().strip()
    candidates = [commit]
    if not _COMMIT.fullmatch(commit) and (folder / "snapshots").is_dir():
        # An abbreviated commit hash: accept it if it names exactly one cached snapshot.
        matches = [p.name for p in (folder / "snapshots").iterdir() if p.name.startswith(commit) and len(commit) >= 7]
        candidates = matches if len(matches) == 1 else []
    for candidate in candidates:
        path = folder / "snapshots" / candidate / filename
        if _COMMIT.fullmatch(candidate) and path.is_file():
            return ResolvedFile(repo_id, filename, path, candidate, requested, file_sha256(path) if digest else "")
    return None


def _commit_from_path(path: Path) -> str:
    parent = path.parent.name
    return parent if _COMMIT.fullmatch(parent) else "unknown"


def resolve_hf_file(
    repo_id: str,
    filename: str | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    etag_timeout: float = 10.0,
) -> ResolvedFile:
    """Find or download one file of a Hub repository; the local cache is tried first.

    :param repo_id: ``org/name``, e.g. ``sb3/ppo-PongNoFrameskip-v4``.
    :param filename: file in the repository; default :func:`default_filename`.
    :param revision: branch, tag or commit hash; default ``main``.
    :param cache_dir: the hub cache; default :func:`hf_cache_dir`.
    :param etag_timeout: seconds to wait for the Hub when downloading.
    :raises HFUnavailableError: not cached and offline, or the download failed.
    """
    filename = filename or default_filename(repo_id)
    cache = Path(cache_dir) if cache_dir is not None else hf_cache_dir()
    cached = find_cached(repo_id, filename, revision, cache)
    if cached is not None:
        return cached
    at = f"{repo_id}@{revision or 'main'}"
    how = (
        f"Fetch it where the Hub is reachable (hf download {repo_id} {filename}"
        + (f" --revision {revision}" if revision else "")
        + f") and copy the cache folder {_repo_folder(cache, repo_id)} here, or give the downloaded .zip "
        "path in the hub spec (source: sb3)."
    )
    if hf_offline():
        raise HFUnavailableError(
            f"{filename} of {at} is not in the local Hugging Face cache ({cache}) and HF_HUB_OFFLINE=1 forbids "
            f"downloading it. {how}"
        )
    from huggingface_hub import hf_hub_download

    limit = download_time_limit()
    outcome: dict[str, object] = {}

    def download() -> None:
        try:
            outcome["path"] = hf_hub_download(
                repo_id, filename, revision=revision, cache_dir=str(cache), etag_timeout=etag_timeout
            )
        except Exception as error:  # network, auth, missing repo or file: huggingface_hub has many error types
            outcome["error"] = error

    # huggingface_hub retries a silent server without end: the download runs in a thread that is given up on
    # (left as a daemon, which ends with the process) once the limit has passed
    worker = threading.Thread(target=download, name=f"hf-download {repo_id}", daemon=True)
    worker.start()
    worker.join(limit)
    if worker.is_alive():
        raise HFUnavailableError(
            f"Downloading {filename} of {at} took more than {limit:g} s (HP_RL_HF_TIMEOUT); the Hub or the "
            f"endpoint ({os.environ.get('HF_ENDPOINT', 'huggingface.co')}) does not answer. {how}"
        )
    error = outcome.get("error")
    if isinstance(error, BaseException):
        raise HFUnavailableError(
            f"Cannot download {filename} of {at} ({type(error).__name__}: {error}). {how}"
        ) from error
    local = Path(str(outcome["path"]))
    return ResolvedFile(repo_id, filename, local, _commit_from_path(local), revision or "main", file_sha256(local))


def download_time_limit() -> float:
    """Seconds a download of one file may take in all: ``HP_RL_HF_TIMEOUT``, default 300 (a 14 MB Atari agent at
    50 kB/s)."""
    try:
        value = float(os.environ.get("HP_RL_HF_TIMEOUT", "300"))
    except ValueError:
        return 300.0
    return value if value > 0 else 300.0


def load_hf_expert(spec: ExpertSpec, observation_shape: tuple[int, ...] | None = None) -> HubExpert:
    """The ``hf`` source: an SB3 checkpoint zip in a Hub repository.

    Spec keys: ``path`` is the repository id; ``options.revision`` (branch, tag or commit) and
    ``options.filename`` are optional; ``sha256``, when given, must match the file.

    :param spec: the expert spec.
    :param observation_shape: unused (the checkpoint says its input shape).
    :return: the expert; its provenance location is ``repo@commit`` and records the sha256 used.
    """
    if not spec.path:
        raise HubSpecError(
            f"Expert {spec.name!r}: source 'hf' needs 'path': the repository id, e.g. sb3/ppo-PongNoFrameskip-v4."
        )
    unknown = sorted(set(spec.options) - {"revision", "filename"})
    if unknown:
        raise HubSpecError(
            f"Expert {spec.name!r}: unknown option(s) {unknown} for source 'hf'; allowed: filename, revision."
        )
    revision = spec.options.get("revision")
    filename = spec.options.get("filename")
    resolved = resolve_hf_file(spec.path, str(filename) if filename else None, str(revision) if revision else None)
    if spec.sha256 is not None and resolved.sha256 != spec.sha256.lower():
        raise CheckpointError(
            f"Expert {spec.name!r}: {resolved.filename} of {spec.path}@{resolved.commit} has sha256 {resolved.sha256}, "
            f"but the spec pins {spec.sha256}. The file changed upstream or the cache is corrupt; pin the revision "
            "that matches, or update the digest."
        )
    trunk, info, details, heads = read_sb3_expert(resolved.path)
    origin = _zoo_repo_origin(spec.path, resolved)
    details = {
        **details,
        **origin.details(),
        "repo_id": spec.path,
        "filename": resolved.filename,
        "revision": resolved.commit,
        "requested_revision": resolved.requested,
        "file": str(resolved.path),
    }
    provenance = Provenance("hf", f"{spec.path}@{resolved.commit}", resolved.sha256, details)
    normalizer = origin.input_normalizer(info.input_shape)
    return HubExpert(trunk, info, provenance, heads, origin=origin, normalizer=normalizer)


# rl-baselines3-zoo's repositories are named <org>/<algo>-<env id>
_ZOO_REPO = re.compile(r"^[^/]+/(a2c|ppo|dqn|qrdqn|sac|td3|tqc|ars|trpo|ddpg|crossq)-(.+)$")


def _zoo_repo_origin(repo_id: str, resolved: ResolvedFile) -> AgentOrigin:
    """What a zoo repository says of its agent: the files published beside the zip where the local snapshot holds
    them (``args.yml``, ``env_kwargs.yml``, ``vec_normalize.pkl``, as rl-zoo's ``load_from_hub`` fetches them) and,
    failing those, the task in the repository's name."""
    origin = read_agent_origin(resolved.path)
    match = _ZOO_REPO.match(repo_id)
    if origin.env_id is None and match is not None:
        said = (*origin.told_by, f"{repo_id} (repository name)")
        origin = replace(origin, env_id=match.group(2), algo=match.group(1), told_by=said)
    return origin
