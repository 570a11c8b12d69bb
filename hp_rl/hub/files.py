"""The file an expert spec names, checked before any source reads it."""

from __future__ import annotations

from pathlib import Path

from hp_rl.core.paths import file_sha256
from hp_rl.hub.sb3_zip import CheckpointError
from hp_rl.hub.spec import ExpertSpec, HubSpecError

__all__ = ["verify_file"]


def verify_file(spec: ExpertSpec) -> Path:
    """The spec's weight file, checked to exist and to match ``spec.sha256`` when given."""
    if spec.path is None:
        raise HubSpecError(f"Expert {spec.name!r}: source '{spec.source}' needs a 'path'.")
    path = Path(spec.path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"Expert {spec.name!r}: weight file {path} does not exist. Check 'path' in the hub spec.")
    if spec.sha256 is not None:
        actual = file_sha256(path)
        if actual != spec.sha256.lower():
            raise CheckpointError(
                f"Expert {spec.name!r}: {path} has sha256 {actual}, but the spec pins {spec.sha256}. "
                "The file changed or is corrupt; fetch it again or update the pinned digest."
            )
    return path
