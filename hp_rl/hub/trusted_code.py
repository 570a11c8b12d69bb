"""TorchScript experts are code: what may run, and what can be read of one without running it.

A TorchScript file holds a program (its ``forward``, and ``__setstate__`` that runs while it loads), so
loading one runs whatever its author wrote. hp_rl therefore:

- never calls one to learn its shapes: ``input_shape`` and ``features_dim`` come from the hub spec or from the
  ``facts.json`` the file carries (:func:`torchscript_facts`, read from the zip without loading it);
- runs one named by a run folder (``--resume``, ``evaluate``) only when its digest is trusted: recorded when the
  user started a run with it (:func:`trust_code`, called on the files a new run was given), or added by
  ``python -m hp_rl.hub trust FILE`` after looking at it. The record lives in the user's cache
  (``trusted_code.txt``, one sha256 per line), outside any run folder, so a folder cannot vouch for itself;
- describes one in ``python -m hp_rl.hub inspect`` from its zip listing alone (:func:`describe_code_file`).
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hp_rl.hub.spec import ExpertSpec, HubSpecError
from hp_rl.paths import file_sha256

__all__ = [
    "CODE_SOURCES",
    "UntrustedCodeError",
    "trust_file",
    "trusted_digests",
    "trust_code",
    "refuse_untrusted_code",
    "refuse_untrusted_hub",
    "trust_hub_code",
    "torchscript_facts",
    "describe_code_file",
]

# Hub sources whose files are programs rather than weights.
CODE_SOURCES = frozenset({"torchscript"})
TRUST_FILE_NAME = "trusted_code.txt"
_MAX_TRUST_FILE_BYTES = 4 * 2**20
_MAX_FACTS_BYTES = 2**20
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")


class UntrustedCodeError(HubSpecError):
    """A run folder names a TorchScript file that the user has not trusted."""


def trust_file() -> Path:
    """``trusted_code.txt`` in the user cache (:func:`hp_rl.paths.cache_dir`, read at each call)."""
    from hp_rl.paths import cache_dir

    return cache_dir() / TRUST_FILE_NAME


def trusted_digests() -> frozenset[str]:
    """The sha256 digests the user trusts (an absent or unreadable record trusts nothing)."""
    path = trust_file()
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > _MAX_TRUST_FILE_BYTES:
            return frozenset()
        lines = path.read_text(encoding="ascii", errors="replace").split()
    except OSError:
        return frozenset()
    return frozenset(line.lower() for line in lines if _HEX_DIGEST.fullmatch(line))


def trust_code(paths: Iterable[str | Path]) -> list[str]:
    """Record the digests of ``paths`` as trusted; returns them (already trusted ones included).

    :param paths: TorchScript files the user gave.
    """
    from hp_rl.paths import append_text_by_rename

    digests = [file_sha256(path) for path in paths]
    trusted = trusted_digests()
    new = [d for d in dict.fromkeys(digests) if d not in trusted]
    if new:
        trust_file().parent.mkdir(parents=True, exist_ok=True)
        append_text_by_rename(trust_file(), "".join(f"{d}\n" for d in new))
    return digests


def code_experts(experts: Iterable[ExpertSpec]) -> list[ExpertSpec]:
    """The experts whose files are programs."""
    return [expert for expert in experts if expert.source in CODE_SOURCES and expert.path is not None]


def refuse_untrusted_code(experts: Iterable[ExpertSpec], where: str) -> None:
    """Refuse to run a TorchScript expert that ``where`` (a run folder's hub spec) names unless the user
    trusts its file.

    :raises UntrustedCodeError: naming the expert, the file and the two ways forward.
    """
    trusted = trusted_digests()
    for expert in code_experts(experts):
        path = Path(str(expert.path)).expanduser()
        if not path.is_file():
            continue  # the loader reports a missing file with its own message
        if file_sha256(path) not in trusted:
            raise UntrustedCodeError(
                f"{where} names expert {expert.name!r}, a TorchScript file ({path}): a program that runs when it "
                "loads. It is not among the files you have trusted (you did not start a run with it on this "
                f"machine). Look at it with: python -m hp_rl.hub inspect {path}; if you trust it, record that with: "
                f"python -m hp_rl.hub trust {path}"
            )


def _facts_member(archive: zipfile.ZipFile) -> zipfile.ZipInfo | None:
    return next((i for i in archive.infolist() if i.filename.endswith("/extra/facts.json")), None)


def torchscript_facts(path: str | Path) -> dict[str, Any]:
    """The ``facts.json`` a TorchScript file carries (``torch.jit.save(..., _extra_files={"facts.json": ...})``),
    read from its zip without loading it; ``{}`` when it has none.

    Keys hp_rl reads: ``input_shape`` (a list), ``features_dim`` (an integer); the rest is provenance.

    :raises HubSpecError: a facts member that is oversized or not a JSON object.
    """
    from hp_rl.archive import ArchiveError, load_json_bytes, read_member

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            member = _facts_member(archive)
            if member is None:
                return {}
            raw = read_member(archive, member.filename, path, _MAX_FACTS_BYTES)
    except (zipfile.BadZipFile, OSError, ArchiveError) as error:
        raise HubSpecError(f"{path} is not a readable TorchScript file ({error}).") from None
    try:
        facts = load_json_bytes(raw, f"{path}: its facts.json")
    except ArchiveError as error:
        raise HubSpecError(str(error)) from None
    if not isinstance(facts, dict):
        raise HubSpecError(f"{path}: its facts.json is not a JSON object.")
    return facts


def describe_code_file(path: str | Path) -> dict[str, Any]:
    """What can be said of a TorchScript file without running it: digest, trust, facts, its code members.

    :return: ``{"sha256", "trusted", "facts", "code_files", "bytes"}``.
    """
    path = Path(path)
    digest = file_sha256(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = [i.filename for i in archive.infolist() if "/code/" in i.filename and i.filename.endswith(".py")]
    except (zipfile.BadZipFile, OSError) as error:
        raise HubSpecError(f"{path} is not a readable TorchScript file ({error}).") from None
    return {
        "sha256": digest,
        "trusted": digest in trusted_digests(),
        "facts": torchscript_facts(path),
        "code_files": names,
        "bytes": path.stat().st_size,
    }


def refuse_untrusted_hub(hub: Any, where: str) -> None:
    """:func:`refuse_untrusted_code` for every expert of ``hub`` (anything :func:`~hp_rl.hub.spec.parse_hub` takes;
    ``None``: no hub)."""
    from hp_rl.hub.spec import parse_hub

    if hub is not None:
        refuse_untrusted_code(parse_hub(hub).experts, where)


def trust_hub_code(experts: Iterable[ExpertSpec]) -> list[str]:
    """Record the TorchScript files of ``experts`` as trusted: the hub a user starts a run with."""
    return trust_code(Path(str(expert.path)).expanduser() for expert in code_experts(experts))
