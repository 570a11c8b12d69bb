"""Experiment tracking with Weights & Biases (``--track``; ``pip install "hp_rl[track]"``), as rl-baselines3-zoo
and CleanRL do it: the run's TensorBoard events, gate charts included, are synced to a W&B run named after the run
folder, with the run's configuration.

The W&B run id is kept in the run folder (``tracking_id.txt``), so ``--resume --track`` continues the same tracked
run. W&B's own files go where W&B puts them (``./wandb``, or ``$WANDB_DIR``), never into the run folder: they hold
links, and a run folder holds only its own regular files. ``WANDB_MODE=offline`` records locally for a later
``wandb sync``.
"""

from __future__ import annotations

import argparse
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from hp_rl.core.errors import CliError
from hp_rl.core.paths import write_text_by_rename
from hp_rl.core.run_folder import RunFolder

__all__ = [
    "TrackingError",
    "TrackingOptions",
    "add_tracking_arguments",
    "tracking_from",
    "check_tracking",
    "tracking_id",
    "tracked",
]

TRACKING_ID_FILE = "tracking_id.txt"
_ID = re.compile(r"[a-z0-9]{8,64}")


class TrackingError(CliError):
    """Weights & Biases did not start a tracked run (not logged in, no network)."""


@dataclass(frozen=True)
class TrackingOptions:
    """Where a tracked run goes.

    :param project: the W&B project (``--wandb-project-name``).
    :param entity: the W&B team or user (``--wandb-entity``; ``None``: the logged-in user's default).
    :param tags: W&B tags (``--wandb-tags``).
    """

    project: str = "hp_rl"
    entity: str | None = None
    tags: tuple[str, ...] = ()


def check_tracking() -> None:
    """Refuse ``--track`` before any training when W&B is not installed.

    :raises CliError: naming the extra that installs it.
    """
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise CliError(
            "--track records the run with Weights & Biases, which is not installed: "
            'pip install "hp_rl[track]" (or drop --track).'
        ) from None


def tracking_id(folder: RunFolder) -> str:
    """The W&B run id of ``folder``: made on first use and kept in ``tracking_id.txt``, so a resume continues it."""
    path = folder.path / TRACKING_ID_FILE
    try:
        if path.is_file() and not path.is_symlink() and path.stat().st_size <= 128:
            recorded = path.read_text(encoding="ascii", errors="replace").strip()
            if _ID.fullmatch(recorded):
                return recorded
    except OSError:  # unreadable: a new id, so the run is tracked anew rather than not at all
        pass
    new = secrets.token_hex(8)
    write_text_by_rename(path, new + "\n")
    return new


@contextmanager
def tracked(options: TrackingOptions | None, folder: RunFolder, config: dict[str, Any]) -> Iterator[None]:
    """Track the training inside the block with W&B (nothing when ``options`` is ``None``).

    TensorBoard is patched before the block so every event file written under the run folder (SB3's scalars, the
    experts' gate charts) is synced; the W&B run ends with the block, marked failed when it raises.

    :param options: where the run goes, or ``None`` (not tracked).
    :param folder: the run folder (its name names the W&B run; its TensorBoard events are synced).
    :param config: the run's resolved configuration.
    :raises CliError: W&B refused to start (not logged in, no network): the message says how to go on.
    """
    if options is None:
        yield
        return
    check_tracking()
    import wandb
    from wandb.integration import tensorboard as wandb_tensorboard

    wandb_tensorboard.patch(root_logdir=str(folder.path))
    try:
        run = wandb.init(
            project=options.project,
            entity=options.entity,
            id=tracking_id(folder),
            name=folder.path.name,
            resume="allow",
            config=config,
            tags=list(options.tags) or None,
        )
    except Exception as error:  # W&B raises its own UsageError/CommError, and plain errors from its service
        wandb_tensorboard.unpatch()
        raise TrackingError(
            f"--track: Weights & Biases did not start ({type(error).__name__}: {error}). Log in with `wandb login`, "
            "or record offline with WANDB_MODE=offline and upload later with `wandb sync`; or drop --track."
        ) from error
    exit_code = 1
    try:
        yield
        exit_code = 0
    finally:
        run.finish(exit_code=exit_code)
        wandb_tensorboard.unpatch()


def add_tracking_arguments(parser: argparse.ArgumentParser) -> None:
    """``--track`` and the W&B flags rl-baselines3-zoo users know (``--wandb-project-name``, ...)."""
    group = parser.add_argument_group('experiment tracking (pip install "hp_rl[track]")')
    group.add_argument(
        "--track", action="store_true", help="record the run with Weights & Biases: its TensorBoard charts and config"
    )
    group.add_argument("--wandb-project-name", default="hp_rl", help="W&B project (default: hp_rl)")
    group.add_argument("--wandb-entity", help="W&B team or user (default: your own)")
    group.add_argument("--wandb-tags", nargs="+", default=[], metavar="TAG", help="W&B tags of the run")


def tracking_from(args: argparse.Namespace) -> TrackingOptions | None:
    """The tracking options of a parsed command line (``None`` without ``--track``), W&B's presence checked."""
    if not args.track:
        return None
    check_tracking()
    return TrackingOptions(args.wandb_project_name, args.wandb_entity, tuple(args.wandb_tags or ()))
