"""TorchScript experts are code: what may run, and what can be read of one without running it.

A TorchScript file holds a program (its ``forward``, and ``__setstate__`` that runs while it loads), so
loading one runs whatever its author wrote. hp_rl therefore:

- never calls one to learn its shapes: ``input_shape`` and ``features_dim`` come from the hub spec or from the
  ``facts.json`` the file carries (:func:`torchscript_facts`, read from the zip without loading it);
- runs one named by a run folder (``--resume``, ``evaluate``) only when its digest is trusted: recorded when the
  user started a run with it (:func:`trust_code`, called on the files a new run was given), or added by
  ``python -m hp_rl.hub trust FILE`` after looking at it. The record lives in the user's cache
  (``trusted_code.txt``, one sha256 per line), outside any run folder, so a folder cannot vouch for itself;
- describes one in ``python -m hp_rl.hub inspect`` from its zip listing alone (:func:`describe_code_file`);
- bounds every call into one by time (:class:`TimeBoundedCode`, :func:`load_bounded`): a load or a forward that
  runs past ``HP_RL_CODE_TIMEOUT`` seconds (default 300) stops the process with exit 2 and a message. Training
  cannot be interrupted inside the call, but the run's last checkpoint is on disk (written by rename), so
  nothing consistent is lost and ``--resume`` continues from it.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from torch import Tensor, nn

from hp_rl.core.paths import file_sha256
from hp_rl.hub.spec import ExpertSpec, HubSpecError

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
    "CODE_TIMEOUT_ENV",
    "code_timeout_s",
    "TimeBoundedCode",
    "load_bounded",
]

# Hub sources whose files are programs rather than weights.
CODE_SOURCES = frozenset({"torchscript"})
TRUST_FILE_NAME = "trusted_code.txt"
_MAX_TRUST_FILE_BYTES = 4 * 2**20
_MAX_FACTS_BYTES = 2**20
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
CODE_TIMEOUT_ENV = "HP_RL_CODE_TIMEOUT"
DEFAULT_CODE_TIMEOUT_S = 300.0
_Result = TypeVar("_Result")


class UntrustedCodeError(HubSpecError):
    """A run folder names a TorchScript file that the user has not trusted."""


def trust_file() -> Path:
    """``trusted_code.txt`` in the user cache (:func:`hp_rl.core.paths.cache_dir`, read at each call)."""
    from hp_rl.core.paths import cache_dir

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
    from hp_rl.core.paths import append_text_by_rename

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
    from hp_rl.core.archive import ArchiveError, load_json_bytes, read_member

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


def code_timeout_s() -> float:
    """Seconds one call into a TorchScript file may run: ``HP_RL_CODE_TIMEOUT``, default 300.

    :raises HubSpecError: a value that is not a positive number of seconds.
    """
    raw = os.environ.get(CODE_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_CODE_TIMEOUT_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < 1e9:  # also refuses nan and inf
        raise HubSpecError(
            f"{CODE_TIMEOUT_ENV}={raw[:40]!r} is not a number of seconds: give a positive number (default "
            f"{DEFAULT_CODE_TIMEOUT_S:g}) or unset it."
        )
    return seconds


class _Watchdog:
    """One daemon thread that ends the process when a bounded call outlives its deadline.

    A call registers its deadline and removes it when it returns (two dictionary operations, well under a
    microsecond, so the bound costs the training path nothing measurable). TorchScript releases the GIL while
    it runs, so the thread wakes even when the call never returns.
    """

    def __init__(self) -> None:
        self._calls: dict[int, tuple[float, float, str]] = {}
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def arm(self, what: str, limit_s: float) -> int:
        token = next(self._tokens)
        self._calls[token] = (time.monotonic() + limit_s, limit_s, what)
        if self._thread is None:
            self._start()
        return token

    def disarm(self, token: int) -> None:
        self._calls.pop(token, None)

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="hp_rl-code-watchdog", daemon=True)
                self._thread.start()

    def _watch(self) -> None:
        while True:
            time.sleep(0.25)
            now = time.monotonic()
            for deadline, limit_s, what in list(self._calls.values()):
                if now > deadline:
                    _stop_process(what, limit_s)


def _stop_process(what: str, limit_s: float) -> None:
    """Say why and end the process with exit 2 (a thread cannot interrupt the call itself)."""
    from hp_rl.core.errors import printable

    sys.stderr.write(
        f"hp_rl: {printable(what)} has run for more than {limit_s:g} s without returning. A TorchScript file is a "
        "program, and this one may never return: the process stops here (exit 2). A run keeps its last "
        f"checkpoint (resume with --resume). If the file is meant to be this slow, raise {CODE_TIMEOUT_ENV} "
        "(seconds).\n"
    )
    sys.stderr.flush()
    os._exit(2)


_WATCHDOG = _Watchdog()


def load_bounded(load: Callable[[], _Result], what: str) -> _Result:
    """``load()`` (e.g. ``torch.jit.load``, which runs the file's ``__setstate__``) bounded by
    :func:`code_timeout_s`."""
    token = _WATCHDOG.arm(what, code_timeout_s())
    try:
        return load()
    finally:
        _WATCHDOG.disarm(token)


class TimeBoundedCode(nn.Module):
    """A TorchScript trunk whose every forward is bounded by time (:func:`code_timeout_s`).

    Its state dict is the wrapped module's, key for key, so checkpoints read the same with or without the bound.

    :param code: the loaded TorchScript module.
    :param name: the expert's name, for the message.
    """

    def __init__(self, code: nn.Module, name: str) -> None:
        super().__init__()
        self.code = code
        self.what = f"expert {name!r} (TorchScript)"
        self.limit_s = code_timeout_s()
        self._register_state_dict_hook(_drop_code_prefix)
        self.register_load_state_dict_pre_hook(_add_code_prefix)

    def forward(self, observations: Tensor) -> Tensor:
        """:param observations: ``(B, *input_shape)``. :return: ``(B, features_dim)``, as the file computes."""
        token = _WATCHDOG.arm(self.what, self.limit_s)
        try:
            return self.code(observations)
        finally:
            _WATCHDOG.disarm(token)


def _drop_code_prefix(module: nn.Module, state: dict[str, Any], prefix: str, _metadata: Any) -> None:
    for key in [k for k in state if k.startswith(prefix + "code.")]:
        state[prefix + key[len(prefix) + len("code.") :]] = state.pop(key)


def _add_code_prefix(module: nn.Module, state: dict[str, Any], prefix: str, *_: Any) -> None:
    for key in [k for k in state if k.startswith(prefix) and not k.startswith(prefix + "code.")]:
        state[prefix + "code." + key[len(prefix) :]] = state.pop(key)
