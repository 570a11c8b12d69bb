"""The default hub (``--hub auto``): which experts a target task gets when the user names none.

- Atari game X: leave-X-out over the rl-baselines3-zoo agents that the ``sb3`` organisation publishes on
  the Hugging Face Hub (``sb3/{ppo,a2c}-<Game>NoFrameskip-v4`` for the other games of
  :data:`ZOO_ATARI_GAMES`), if they are all in the local Hugging Face cache (pinned to the cached
  commits) or the Hub answers one short check; otherwise the bundled Atari hub without X.
- Classic control from states: the bundled control hub without the target task.
- Control from pixels: the bundled Atari hub (image experts; the input adapters bridge the frames).
- MinAtar game X: the bundled MinAtar hub without X's experts (its default and its variants).
- Anything else: :class:`ValueError` naming the ways to give a hub.

Deciding takes a few seconds at most without network: offline mode skips the check entirely, and the
check itself is bounded (:func:`hp_rl.hub.hf.hf_reachable`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from hp_rl.core.errors import HpRlError
from hp_rl.core.paths import BUNDLED_HUB_DIR, cache_dir
from hp_rl.core.yaml_files import read_yaml_mapping
from hp_rl.hub.hf import find_cached, hf_offline, hf_reachable

__all__ = [
    "ZOO_ATARI_GAMES",
    "ZOO_ALGOS",
    "BUNDLED_HUBS",
    "AutoHub",
    "NoFittingHubError",
    "atari_game",
    "task_key",
    "zoo_repos",
    "choose_auto_hub",
    "resolve_auto_hub",
]

logger = logging.getLogger(__name__)

ZOO_ATARI_GAMES = (
    "Pong",
    "SpaceInvaders",
    "Qbert",
    "Seaquest",
    "BeamRider",
    "Asteroids",
    "MsPacman",
    "RoadRunner",
    "Enduro",
    "Breakout",
)
ZOO_ALGOS = ("ppo", "a2c")
BUNDLED_HUBS: dict[str, Path] = {
    "atari": BUNDLED_HUB_DIR / "atari" / "hub.yaml",
    "control": BUNDLED_HUB_DIR / "control" / "hub.yaml",
    "minatar": BUNDLED_HUB_DIR / "minatar" / "hub.yaml",
}
# Environment family (envs/<family>.yml) -> bundled hub that fits its observations.
_FAMILY_HUB = {"atari": "atari", "control": "control", "control_pixels": "atari", "minatar": "minatar"}
_ATARI_ID = re.compile(r"^(?:ALE/)?([A-Z][A-Za-z0-9]*?)(?:NoFrameskip|Deterministic)?-v\d+$")

WAYS_TO_GIVE_A_HUB = (
    "give one with --hub: a YAML hub spec (--hub path.yaml; examples in configs/hubs/), a comma-separated "
    "list of checkpoints (--hub a.zip,b.safetensors,hf:sb3/ppo-PongNoFrameskip-v4), random experts "
    "(--hub random:4), or no hub at all (--hub none: the plain SB3 policy)"
)


class NoFittingHubError(HpRlError, ValueError):
    """No default hub fits the target task; the message names the ways to give one."""


@dataclass(frozen=True)
class AutoHub:
    """The outcome of ``--hub auto``.

    :param spec: a hub spec string :func:`hp_rl.hub.parse_hub` accepts (YAML path or comma-separated list).
    :param name: which hub (``zoo-leave-Breakout-out``, ``bundled-atari``, ...).
    :param reason: why this one, in a few words.
    """

    spec: str
    name: str
    reason: str

    def line(self) -> str:
        """The one line printed when the hub is chosen."""
        return f"[hub auto] using {self.name} ({self.spec}): {self.reason}"


def atari_game(env_id: str) -> str | None:
    """The game of an Atari id (``BreakoutNoFrameskip-v4``, ``ALE/Breakout-v5`` -> ``Breakout``), else ``None``."""
    match = _ATARI_ID.match(env_id)
    if match is None or (
        "NoFrameskip" not in env_id and not env_id.startswith("ALE/") and "Deterministic" not in env_id
    ):
        return None
    return match.group(1)


def task_key(env_id: str) -> str:
    """What makes two environment ids the same task: the Atari game, else the id without its version."""
    return atari_game(env_id) or re.sub(r"-v\d+$", "", env_id)


def zoo_repos(exclude_game: str | None = None) -> list[str]:
    """The rl-baselines3-zoo Atari agents on the Hugging Face Hub, without ``exclude_game``'s."""
    return [
        f"sb3/{algo}-{game}NoFrameskip-v4" for game in ZOO_ATARI_GAMES if game != exclude_game for algo in ZOO_ALGOS
    ]


def _no_hub(env_id: str, family: str, why: str) -> NoFittingHubError:
    return NoFittingHubError(f"No default hub fits {env_id} (family {family!r}): {why}. Instead, {WAYS_TO_GIVE_A_HUB}.")


def _cache_dir() -> Path:
    return cache_dir() / "hubs"


def _expert_task(expert: dict[str, Any]) -> str | None:
    provenance = expert.get("provenance") or {}
    env = provenance.get("env_id") or provenance.get("env")
    return task_key(str(env)) if env else None


def _bundled_without(hub: str, env_id: str, family: str) -> tuple[str, list[str]]:
    """The bundled hub's manifest, or a copy without the experts trained on ``env_id``'s task."""
    path = BUNDLED_HUBS[hub]
    if not path.is_file():
        raise _no_hub(env_id, family, f"the bundled {hub} hub {path} is missing (not exported yet?)")
    raw = read_yaml_mapping(path, "bundled hub manifest")
    target = task_key(env_id)
    kept = [e for e in raw["experts"] if _expert_task(e) != target]
    dropped = [str(e["name"]) for e in raw["experts"] if _expert_task(e) == target]
    if not dropped:
        return str(path), []
    if not kept:
        raise _no_hub(env_id, family, f"every expert of the bundled {hub} hub was trained on {target}")
    for expert in kept:  # the copy lives elsewhere: make its paths absolute
        expert["path"] = str((path.parent / expert["path"]).resolve())
    raw["experts"] = kept
    raw["description"] = f"{raw.get('description', '').strip()} (without {', '.join(dropped)}: target {env_id})".strip()
    out = _cache_dir() / f"bundled-{hub}-without-{re.sub(r'[^A-Za-z0-9_.-]', '_', target)}.yaml"
    text = yaml.safe_dump(raw, sort_keys=False, width=100)
    if not out.is_file() or out.read_text() != text:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return str(out), dropped


@cache
def ale_action_meanings(game: str) -> tuple[str, ...] | None:
    """What each action of ``<game>NoFrameskip-v4`` means (ALE's minimal action set, as the rl-zoo agents act
    on it), or ``None`` without ale-py. Recorded in the zoo hub so that output aggregation and kickstarting
    can map each agent's policy head onto the target's actions instead of starting it fresh."""
    try:
        import ale_py
        import gymnasium as gym
    except ImportError:
        return None
    gym.register_envs(ale_py)
    try:
        env = gym.make(f"{game}NoFrameskip-v4")
    except gym.error.Error:
        return None
    try:
        return tuple(str(name) for name in env.unwrapped.get_action_meanings())  # type: ignore[attr-defined]
    finally:
        env.close()


def _zoo_spec(repos: list[str], commits: dict[str, str | None], label: str) -> str:
    """The zoo hub as a spec file in the cache: one ``hf`` entry per agent, pinned where cached, with its
    game's action meanings."""
    experts = []
    for repo in repos:
        algo, game_id = repo.split("/")[1].split("-", 1)
        game = game_id.removesuffix("NoFrameskip-v4")
        entry: dict[str, Any] = {"name": f"{algo}-{game.lower()}", "source": "hf", "path": repo}
        if commits.get(repo):
            entry["options"] = {"revision": commits[repo]}
        meanings = ale_action_meanings(game)
        if meanings is not None:
            entry["action_meanings"] = list(meanings)
        entry["provenance"] = {"env_id": game_id, "algo": algo}
        experts.append(entry)
    raw = {"description": f"{label}: rl-baselines3-zoo Atari agents of the sb3 organisation", "experts": experts}
    out = _cache_dir() / f"{label}.yaml"
    text = yaml.safe_dump(raw, sort_keys=False, width=100)
    if not out.is_file() or out.read_text() != text:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return str(out)


def _zoo_hub(env_id: str, reach_timeout: float) -> AutoHub | str:
    """The leave-X-out zoo hub, or why not."""
    game = atari_game(env_id)
    repos = zoo_repos(game)
    cached = {repo: find_cached(repo, digest=False) for repo in repos}
    label = f"zoo-leave-{game}-out" if game in ZOO_ATARI_GAMES else "zoo-atari"
    if all(found is not None for found in cached.values()):
        commits = {repo: found.commit if found is not None else None for repo, found in cached.items()}
        reason = f"all {len(repos)} rl-zoo agents are in the local Hugging Face cache"
        return AutoHub(_zoo_spec(repos, commits, label), label, reason)
    missing = sum(found is None for found in cached.values())
    if hf_offline():
        return f"{missing} of {len(repos)} rl-zoo agents are not in the Hugging Face cache and HF_HUB_OFFLINE is set"
    if not hf_reachable(reach_timeout):
        return f"{missing} of {len(repos)} rl-zoo agents are not in the Hugging Face cache and the Hub is unreachable"
    reason = f"the Hub is reachable; {missing} of {len(repos)} rl-zoo agents will be downloaded once"
    return AutoHub(_zoo_spec(repos, {}, label), label, reason)


def choose_auto_hub(env_id: str, family: str, reach_timeout: float = 3.0) -> AutoHub:
    """Decide the default hub for a target task (prints nothing; see :func:`resolve_auto_hub`).

    :param env_id: the target environment id.
    :param family: its environment family (``hp_rl.rl.envs.preset_for(env_id).family``).
    :param reach_timeout: seconds for the one reachability check of the Hugging Face Hub.
    :raises NoFittingHubError: no hub fits; the message names the ways to give one.
    """
    hub = _FAMILY_HUB.get(family)
    if hub is None:
        raise _no_hub(env_id, family, "there is no bundled hub for this family")
    why_not_zoo = ""
    if family == "atari":
        zoo = _zoo_hub(env_id, reach_timeout)
        if isinstance(zoo, AutoHub):
            return zoo
        why_not_zoo = zoo
    spec, dropped = _bundled_without(hub, env_id, family)
    reason = why_not_zoo or f"the default hub for the {family} family"
    if dropped:
        reason += f"; left out {', '.join(dropped)} (trained on the target task)"
    return AutoHub(spec, f"bundled-{hub}", reason)


def resolve_auto_hub(env_id: str, family: str) -> str:
    """The hub spec string that ``--hub auto`` means for ``env_id``; prints one line saying which hub and why.

    :param env_id: the target environment id.
    :param family: its environment family (``atari``, ``control``, ``control_pixels``, ``minatar``, ...).
    :return: a spec for :func:`hp_rl.hub.parse_hub`: a YAML manifest path or a comma-separated ``hf:`` list.
    :raises NoFittingHubError: (a ``ValueError``) no hub fits; the message names ``--hub path.yaml``, a
        checkpoint list, ``random:N`` and ``none``.
    """
    choice = choose_auto_hub(env_id, family)
    logger.info(choice.line())
    return choice.spec
