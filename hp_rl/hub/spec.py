"""Hub specs: which experts a hub holds, where their weights come from, and how they train."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from hp_rl.core.errors import ConfigError, HpRlError
from hp_rl.core.paths import PathTextError, check_path_text, expand_path_variables, named_hub_spec
from hp_rl.core.yaml_files import read_yaml
from hp_rl.hub.options import MAX_EXPERTS, MAX_FEATURES_DIM
from hp_rl.hub.registry import SOURCES

__all__ = ["HubSpecError", "ExpertSpec", "HubSpec", "parse_hub"]


class HubSpecError(HpRlError, ValueError):
    """A hub spec is malformed: the message names the file and the key."""


# Bounds checked before anything is built (see also hp_rl.hub.options).
MAX_SPEC_BYTES = 4 * 2**20
MAX_INPUT_SIDE = 4096
_NAME = re.compile(r"[A-Za-z0-9_+-]{1,64}")

_EXTENSION_SOURCES = {".zip": "sb3", ".safetensors": "safetensors", ".pt": "torchscript", ".ts": "torchscript"}


@dataclass(frozen=True)
class ExpertSpec:
    """One expert of a hub.

    :param name: unique name (TensorBoard tags use it: ``gates/usage/<name>``).
    :param source: source registry key: ``sb3``, ``safetensors``, ``torchscript``, ``random``, ``hf``, ...
    :param path: weight file or repository id (``hf``); ``None`` for ``random``.
    :param arch: architecture name where the source needs one (``random``, ``safetensors`` without metadata).
    :param input_shape: input shape the trunk expects, where the source cannot tell (``random`` defaults
        to the observation shape).
    :param features_dim: trunk output width, where the source cannot tell.
    :param frozen: freeze the trunk; ``None`` uses the extractor's ``freeze_experts``.
    :param lr_scale: learning-rate multiplier for a fine-tuned trunk (HubPPO/HubA2C).
    :param sha256: expected file digest; verified when given.
    :param options: extra source options (for instance ``revision`` for ``hf``).
    :param provenance: facts about how the weights were made (written by ``hp_rl.hub export``: recipe,
        command, algorithm, environment, steps, seed, returns); informational, recorded in run manifests.
    :param channel_names: what each input channel of an image expert means (MinAtar: ``paddle``, ``ball``,
        ...); with the target's names the input adapter maps channels by meaning.
    :param action_meanings: what each action of the expert's policy head means (``NOOP``, ``LEFT``, ...);
        with the target's meanings the head is mapped onto the target's actions (output aggregation).
    """

    name: str
    source: str
    path: str | None = None
    arch: str | None = None
    input_shape: tuple[int, ...] | None = None
    features_dim: int | None = None
    frozen: bool | None = None
    lr_scale: float = 1.0
    sha256: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    provenance: Mapping[str, Any] = field(default_factory=dict)
    channel_names: tuple[str, ...] | None = None
    action_meanings: tuple[str, ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain, YAML/JSON-serialisable form (unset fields left out)."""
        out: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            empty_mapping = item.name in ("options", "provenance") and not value
            if value is None or empty_mapping or (item.name == "lr_scale" and value == 1.0):
                continue
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[item.name] = value
        return out


@dataclass(frozen=True)
class HubSpec:
    """A validated list of experts.

    :param experts: the experts, in routing column order.
    :param origin: where the spec came from (a file path, ``"<list>"``), for messages and manifests.
    """

    experts: tuple[ExpertSpec, ...]
    origin: str = "<inline>"

    def as_dict(self) -> dict[str, Any]:
        """Plain form accepted back by :func:`parse_hub`."""
        return {"experts": [expert.as_dict() for expert in self.experts]}

    @property
    def names(self) -> tuple[str, ...]:
        """Expert names in order."""
        return tuple(expert.name for expert in self.experts)


_KNOWN_KEYS = {f.name for f in fields(ExpertSpec)}
# Sources whose 'path' names a repository rather than a local file.
_REPO_SOURCES = {"hf"}


def _expert_from_mapping(raw: Mapping[str, Any], where: str, base_dir: Path | None) -> ExpertSpec:
    _check_identity(raw, where)
    values = dict(raw)
    _resolve_path(values, where, base_dir)
    _check_numbers(values, where)
    _check_options(values, where)
    _check_names(values, where)
    return ExpertSpec(**values)


def _check_identity(raw: Any, where: str) -> None:
    """A mapping of known keys with a usable name and a known source."""
    if not isinstance(raw, Mapping):
        raise HubSpecError(f"{where}: each expert must be a mapping with 'name' and 'source', got {raw!r}.")
    unknown = sorted(set(raw) - _KNOWN_KEYS)
    if unknown:
        raise HubSpecError(f"{where}: unknown key(s) {unknown}; allowed keys: {sorted(_KNOWN_KEYS)}.")
    for key in ("name", "source"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise HubSpecError(f"{where}: key '{key}' is required and must be a non-empty string.")
    if not _NAME.fullmatch(raw["name"]):
        raise HubSpecError(
            f"{where}: key 'name': {raw['name']!r} is not a usable expert name; use up to 64 letters, "
            "digits, '_', '-' or '+' (names become module keys and TensorBoard tags)."
        )
    if raw["source"] not in SOURCES:
        known = ", ".join(sorted(SOURCES))
        raise HubSpecError(f"{where}: key 'source': unknown source {raw['source']!r}; known: {known}.")
    for key in ("arch", "path"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise HubSpecError(f"{where}: key '{key}' must be a string, got {raw[key]!r}.")


def _resolve_path(values: dict[str, Any], where: str, base_dir: Path | None) -> None:
    """A local file's path made absolute (relative to the spec's folder) and checked; a random trunk's arch."""
    path = values.get("path")
    if path is not None and values["source"] not in _REPO_SOURCES:
        _check_path_text(path, f"{where}: key 'path'")
        path = values["path"] = expand_path_variables(path)
        if base_dir is not None and not Path(path).expanduser().is_absolute():
            values["path"] = str((base_dir / path).resolve())
        if not _is_file(Path(values["path"]).expanduser()):
            raise HubSpecError(f"{where}: key 'path': file {values['path']} does not exist.")
    arch = values.get("arch")
    if arch is not None and values["source"] == "random":  # other sources name their own architectures
        from hp_rl.hub.architectures import ARCHITECTURES

        if arch not in ARCHITECTURES:
            raise HubSpecError(
                f"{where}: key 'arch': unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}."
            )


def _check_numbers(values: dict[str, Any], where: str) -> None:
    """The input shape, frozen flag, learning-rate scale and feature width, each in range."""
    if "input_shape" in values and values["input_shape"] is not None:
        shape = values["input_shape"]
        if (
            not isinstance(shape, Sequence)
            or isinstance(shape, str)
            or not 1 <= len(shape) <= 3
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 < s <= MAX_INPUT_SIDE for s in shape)
        ):
            raise HubSpecError(
                f"{where}: key 'input_shape' must be a list of 1 to 3 integers in [1, {MAX_INPUT_SIDE}], got {shape!r}."
            )
        values["input_shape"] = tuple(shape)
    if "frozen" in values and not isinstance(values["frozen"], bool | None):
        raise HubSpecError(f"{where}: key 'frozen' must be true or false, got {values['frozen']!r}.")
    scale = values.get("lr_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale) or scale < 0:
        raise HubSpecError(f"{where}: key 'lr_scale' must be a finite number >= 0, got {scale!r}.")
    values["lr_scale"] = float(scale)
    features = values.get("features_dim")
    if features is not None and (
        isinstance(features, bool) or not isinstance(features, int) or not 0 < features <= MAX_FEATURES_DIM
    ):
        raise HubSpecError(
            f"{where}: key 'features_dim' must be an integer in [1, {MAX_FEATURES_DIM}], got {features!r}."
        )


def _check_options(values: dict[str, Any], where: str) -> None:
    """Options and provenance: mappings of string keys; a random trunk's seed, a repository's revision."""
    for key in ("options", "provenance"):
        if not isinstance(values.get(key, {}), Mapping) or not all(isinstance(k, str) for k in values.get(key, {})):
            raise HubSpecError(f"{where}: key '{key}' must be a mapping with string keys, got {values[key]!r}.")
    seed = dict(values.get("options", {})).get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise HubSpecError(f"{where}: key 'options.seed' must be a whole number in [0, 2**63), got {seed!r}.")
    revision = dict(values.get("options", {})).get("revision")
    if revision is not None and not isinstance(revision, str):
        raise HubSpecError(f"{where}: key 'options.revision' must be a string, got {revision!r}.")


def _check_names(values: dict[str, Any], where: str) -> None:
    """Channel and action names (non-empty, distinct) and the file's sha256."""
    for key in ("channel_names", "action_meanings"):
        names = values.get(key)
        if names is None:
            continue
        if (
            isinstance(names, str)
            or not isinstance(names, Sequence)
            or not names
            or not all(isinstance(n, str) and n for n in names)
        ):
            raise HubSpecError(f"{where}: key '{key}' must be a non-empty list of names, got {names!r}.")
        if len(set(names)) != len(names):
            raise HubSpecError(f"{where}: key '{key}' repeats a name: {list(names)}.")
        values[key] = tuple(names)
    sha = values.get("sha256")
    if sha is not None and (not isinstance(sha, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha)):
        raise HubSpecError(f"{where}: key 'sha256' must be 64 hex digits, got {sha!r}.")


def _expert_from_string(entry: str, index: int) -> ExpertSpec:
    """``path.zip``, ``path.safetensors``, ``hf:org/repo[@rev]`` or ``random:ARCH``."""
    if entry.startswith("hf:"):
        repo, _, revision = entry[3:].partition("@")
        name = repo.split("/")[-1]
        return ExpertSpec(name=name, source="hf", path=repo, options={"revision": revision} if revision else {})
    if entry.startswith("random:"):
        return ExpertSpec(name=f"random{index}", source="random", arch=entry[len("random:") :] or None)
    _check_path_text(entry, "hub entry")
    path = Path(entry).expanduser()
    source = _EXTENSION_SOURCES.get(path.suffix.lower())
    if source is None:
        raise HubSpecError(
            f"Cannot tell the source of hub entry {entry!r}: use a .zip (SB3 checkpoint), .safetensors, "
            ".pt (TorchScript) file, 'hf:org/repo[@rev]', 'random:nature_cnn' or a YAML hub spec."
        )
    if not _is_file(path):
        raise HubSpecError(f"Hub entry {entry!r}: file {path.resolve()} does not exist. Check the path.")
    return ExpertSpec(name=_name_from_path(path), source=source, path=str(path.resolve()))


def _name_from_path(path: Path) -> str:
    """An expert name from a file: the stem, or the folder's name for SB3's generic ``model``/``best_model``
    (``breakout/model.zip`` -> ``breakout``), with unusable characters replaced."""
    stem = path.stem
    if stem in ("model", "best_model", "policy") and path.parent.name:
        stem = path.parent.name if stem == "model" or path.parent.name != "eval" else path.parent.parent.name
    name = re.sub(r"[^A-Za-z0-9_+-]", "_", stem)[:64].strip("_") or "expert"
    return name


def _check_path_text(path: Any, where: str) -> None:
    try:
        check_path_text(path, where)
    except PathTextError as error:
        raise HubSpecError(str(error)) from error


def _is_file(path: Path) -> bool:
    """``path.is_file()``, with names the system cannot take (too long, bad bytes) reported as errors."""
    try:
        return path.is_file()
    except (OSError, ValueError) as error:
        raise HubSpecError(f"{str(path)[:80]!r}: not a usable path ({error}).") from error


def _unique_names(experts: Sequence[ExpertSpec], origin: str, rename: bool) -> tuple[ExpertSpec, ...]:
    seen: dict[str, int] = {}
    out = []
    for expert in experts:
        if expert.name in seen:
            if not rename:
                raise HubSpecError(f"{origin}: duplicate expert name {expert.name!r}; names must be unique.")
            seen[expert.name] += 1
            expert = replace(expert, name=f"{expert.name}_{seen[expert.name]}")
        seen.setdefault(expert.name, 0)
        out.append(expert)
    return tuple(out)


def _load_yaml(path: Path) -> Any:
    if not _is_file(path):
        raise HubSpecError(f"Hub spec {path} does not exist.")
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise HubSpecError(f"Hub spec {path} is over {MAX_SPEC_BYTES} bytes; a spec lists experts, not weights.")
    try:
        return read_yaml(path, "hub spec")
    except ConfigError as error:
        raise HubSpecError(str(error)) from None
    except RecursionError:
        raise HubSpecError(f"{path}: nested too deeply to be a hub spec.") from None


def parse_hub(hub: str | Sequence[str] | Mapping[str, Any] | HubSpec, base_dir: str | Path | None = None) -> HubSpec:
    """Validate a hub given in any accepted form.

    :param hub: a :class:`HubSpec`; a YAML file path; a comma-separated string or list of entries (weight
        files, ``hf:org/repo@rev``, ``random:ARCH``); ``"random:N"`` for N random experts; or a mapping
        ``{"experts": [...]}`` as in the YAML files.
    :param base_dir: directory that relative paths in a mapping are resolved against.
    :raises HubSpecError: naming the file and the key at fault.
    """
    if isinstance(hub, HubSpec):
        return hub
    if isinstance(hub, str):
        text = hub.strip()
        folder_spec = _spec_in_folder(text)
        if folder_spec is not None:  # a hub folder (an export): its hub.yaml
            text = str(folder_spec)
        if text.lower().endswith((".yml", ".yaml")) and "," not in text:
            _check_path_text(text, "hub spec")
            path = Path(text).expanduser().resolve()
            return _parse_mapping(_load_yaml(path), str(path), path.parent)
        if text.startswith("random:") and text[len("random:") :].isdigit():
            count = int(text[len("random:") :])
            if not 1 <= count <= MAX_EXPERTS:
                raise HubSpecError(f"'{text}': a hub holds between 1 and {MAX_EXPERTS} experts.")
            return HubSpec(tuple(ExpertSpec(name=f"random{i}", source="random") for i in range(count)), text)
        named = named_hub_spec(text)
        if named is not None and Path(text).exists():  # a local file of that name wins
            named = None
        if named is not None:  # a spec shipped with the package, by name: control_finetune_example
            return _parse_mapping(_load_yaml(named), str(named), named.parent)
        entries = [part.strip() for part in text.split(",") if part.strip()]
        if not entries:
            raise HubSpecError("The hub is empty: give a YAML spec, checkpoint paths, 'auto' or 'none'.")
        return parse_hub(entries)
    if isinstance(hub, Mapping):
        return _parse_mapping(hub, "<mapping>", Path(base_dir) if base_dir is not None else None)
    if not isinstance(hub, Sequence) or isinstance(hub, bytes):
        raise HubSpecError(f"A hub is a spec path, a list of entries or a mapping with 'experts'; got {hub!r}.")
    entries = list(hub)
    if not entries:
        raise HubSpecError("The hub is empty: give at least one expert.")
    if len(entries) > MAX_EXPERTS:
        raise HubSpecError(f"The hub lists {len(entries)} experts; at most {MAX_EXPERTS} are supported.")
    experts = [
        _expert_from_mapping(e, f"<list>[{i}]", None) if isinstance(e, Mapping) else _expert_from_string(str(e), i)
        for i, e in enumerate(entries)
    ]
    return HubSpec(_unique_names(experts, "<list>", rename=True), "<list>")


def _spec_in_folder(text: str) -> Path | None:
    """``text/hub.yaml`` (or ``hub.yml``) where ``text`` names a folder holding one, else ``None``."""
    if "," in text or not text or "\0" in text or len(text) > 4096:
        return None
    try:
        folder = Path(text).expanduser()
        if not folder.is_dir():
            return None
        return next((folder / name for name in ("hub.yaml", "hub.yml") if (folder / name).is_file()), None)
    except (OSError, ValueError):
        return None


def _parse_mapping(raw: Any, origin: str, base_dir: Path | None) -> HubSpec:
    if not isinstance(raw, Mapping) or "experts" not in raw:
        raise HubSpecError(f"{origin}: a hub spec is a mapping with an 'experts' list.")
    unknown = sorted(set(raw) - {"experts", "description", "recipe"})
    if unknown:
        raise HubSpecError(f"{origin}: unknown top-level key(s) {unknown}; allowed: experts, description, recipe.")
    experts_raw = raw["experts"]
    if not isinstance(experts_raw, Sequence) or isinstance(experts_raw, str) or not experts_raw:
        raise HubSpecError(f"{origin}: 'experts' must be a non-empty list.")
    if len(experts_raw) > MAX_EXPERTS:
        raise HubSpecError(f"{origin}: 'experts' lists {len(experts_raw)}; at most {MAX_EXPERTS} are supported.")
    experts = [_expert_from_mapping(e, f"{origin}: experts[{i}]", base_dir) for i, e in enumerate(experts_raw)]
    return HubSpec(_unique_names(experts, origin, rename=False), origin)
