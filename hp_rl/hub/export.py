"""Exporting expert trunks to (fp16) safetensors plus a ``hub.yaml`` manifest: the format of the bundled hubs.

Each exported file holds one trunk's state dict and, as safetensors metadata, what the ``safetensors``
source needs to rebuild it (``arch``, ``input_shape``, ``features_dim``, ``options``) and the expert's
provenance (string values). The manifest ``hub.yaml`` beside the files is itself a hub spec: one expert
per file with ``source: safetensors``, a relative ``path``, the file's ``sha256`` (verified on load), and a
``provenance`` mapping (recipe, command, algorithm, environment, steps, seed, source-task and random-policy
returns, size).
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from hp_rl.core.errors import HpRlError
from hp_rl.core.paths import file_sha256
from hp_rl.hub.architectures import ARCHITECTURES
from hp_rl.hub.expert import HubExpert
from hp_rl.hub.spec import ExpertSpec, HubSpec

__all__ = [
    "ExportError",
    "ExportItem",
    "export_trunk",
    "export_hub",
    "features_agree",
    "manifest_spec",
    "MANIFEST_NAME",
]

MANIFEST_NAME = "hub.yaml"
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# Metadata keys the safetensors source reads to rebuild the trunk; everything else is provenance.
_STRUCTURE_KEYS = ("arch", "input_shape", "features_dim", "options")


class ExportError(HpRlError, ValueError):
    """An expert cannot be exported (architecture the safetensors source cannot rebuild, or a bad round trip)."""


@dataclass(frozen=True)
class ExportItem:
    """One expert to export.

    :param name: expert name (also the file stem).
    :param expert: the loaded expert.
    :param provenance: facts to record (recipe, command, algo, env, steps, seed, returns, ...).
    :param channel_names: meanings of the expert's input channels, recorded in the manifest.
    :param action_meanings: meanings of its policy head's actions, recorded in the manifest.
    """

    name: str
    expert: HubExpert
    provenance: Mapping[str, Any] = field(default_factory=dict)
    channel_names: tuple[str, ...] | None = None
    action_meanings: tuple[str, ...] | None = None


_SAFETENSORS_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}


def save_safetensors(tensors: Mapping[str, Tensor], path: str | Path, metadata: Mapping[str, str]) -> None:
    """Write a standard safetensors file with a deterministic layout (keys sorted), so that exporting the
    same weights and metadata twice gives the same bytes and the same sha256 (``safetensors.torch.save_file``
    orders the metadata differently in each process).

    :param tensors: name -> tensor (float16, bfloat16 or float32; written little-endian, C order).
    :param path: the file to write.
    :param metadata: string -> string header metadata.
    """
    if sys.byteorder != "little":
        from safetensors.torch import save_file

        save_file(dict(tensors), str(path), metadata=dict(metadata))
        return
    header: dict[str, Any] = {"__metadata__": {str(k): str(metadata[k]) for k in sorted(metadata)}}
    blobs: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        if tensor.dtype not in _SAFETENSORS_DTYPES:
            raise ExportError(f"Tensor {name!r} has dtype {tensor.dtype}; export float16, bfloat16 or float32.")
        data = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(text)))
        handle.write(text)
        for blob in blobs:
            handle.write(blob)


def _metadata_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def features_agree(
    original: HubExpert, exported: HubExpert, batch: int = 8, seed: int = 0, rtol: float = 1e-2
) -> float:
    """Largest feature difference between two experts on random inputs in [0, 1], relative to the feature scale.

    :param original: the expert as trained (fp32).
    :param exported: the expert read back from the export.
    :param batch: inputs ``(batch, *input_shape)`` drawn uniformly from [0, 1].
    :param seed: seed of the inputs.
    :param rtol: tolerance; :class:`ExportError` when exceeded.
    :return: ``max |f - f'| / max(1, max |f|)``.
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((batch, *original.info.input_shape), generator=generator)
    with torch.no_grad():
        reference = original.eval()(x)
        roundtrip = exported.eval()(x)
    error = float((reference - roundtrip).abs().max() / max(1.0, float(reference.abs().max())))
    if error > rtol:
        raise ExportError(f"Exported features differ from the original by {error:.3g} (relative), above {rtol}.")
    return error


def export_trunk(item: ExportItem, out_dir: str | Path, dtype: str = "float16") -> ExpertSpec:
    """Write one expert's trunk as ``out_dir/<name>.safetensors`` and check that it reads back.

    :param item: the expert and its provenance.
    :param out_dir: destination folder (created).
    :param dtype: stored dtype: ``float16`` (default), ``bfloat16`` or ``float32``; loading casts back to fp32.
    The agent's policy and value heads, when the expert has them, are stored beside the trunk
    (``heads.action.*``, ``heads.value.*``).

    :return: the manifest entry (relative path, sha256, provenance with the file size and the round-trip error).
    :raises ExportError: architecture not rebuildable by the safetensors source, or a failed round trip.
    """
    from hp_rl.hub.sources import load_expert

    if dtype not in _DTYPES:
        raise ExportError(f"Unknown dtype {dtype!r}; choose one of {', '.join(_DTYPES)}.")
    info = item.expert.info
    if info.arch not in ARCHITECTURES:
        raise ExportError(
            f"Expert {item.name!r}: architecture {info.arch!r} cannot be rebuilt from safetensors (known: "
            f"{', '.join(sorted(ARCHITECTURES))}); keep it as its original source in the hub spec."
        )
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; give a folder (it is created) for the exported hub.")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{item.name}.safetensors"
    state: dict[str, Tensor] = {
        key: value.detach().to("cpu", _DTYPES[dtype]).contiguous()
        for key, value in item.expert.trunk.state_dict().items()
    }
    if item.expert.heads is not None:  # the agent's own heads travel with the trunk (output aggregation)
        heads = item.expert.heads.tensors()
        state.update({k: v.detach().to("cpu", _DTYPES[dtype]).contiguous() for k, v in heads.items()})
    provenance = {str(k): v for k, v in item.provenance.items() if v is not None}
    metadata = {
        "arch": info.arch,
        "input_shape": json.dumps(list(info.input_shape)),
        "features_dim": str(info.features_dim),
        "options": json.dumps(dict(info.options), sort_keys=True),
        "dtype": dtype,
    }
    metadata.update({k: _metadata_value(v) for k, v in provenance.items() if k not in _STRUCTURE_KEYS})
    save_safetensors(state, path, metadata)
    path.chmod(0o644)
    digest = file_sha256(path)
    spec = ExpertSpec(name=item.name, source="safetensors", path=str(path), sha256=digest)
    error = features_agree(item.expert, load_expert(spec))
    provenance.update({"size_bytes": path.stat().st_size, "dtype": dtype, "roundtrip_rel_error": float(f"{error:.3g}")})
    return ExpertSpec(
        name=item.name,
        source="safetensors",
        path=path.name,
        arch=info.arch,
        input_shape=tuple(info.input_shape),
        features_dim=info.features_dim,
        sha256=digest,
        provenance=provenance,
        channel_names=item.channel_names,
        action_meanings=item.action_meanings,
    )


def export_hub(
    items: Sequence[ExportItem],
    out_dir: str | Path,
    description: str = "",
    recipe: str | None = None,
    dtype: str = "float16",
) -> Path:
    """Export every expert and write the manifest ``out_dir/hub.yaml`` (a valid hub spec).

    Files of experts no longer in ``items`` are left alone; the manifest lists exactly ``items``.

    :param items: the experts, in routing order.
    :param out_dir: the hub folder.
    :param description: one paragraph for the manifest.
    :param recipe: the recipe the experts were built from (recorded at the top of the manifest).
    :param dtype: stored dtype of the weights.
    :return: the manifest path.
    """
    out = Path(out_dir)
    entries = [export_trunk(item, out, dtype) for item in items]
    manifest: dict[str, Any] = {}
    if description:
        manifest["description"] = description.strip()
    if recipe:
        manifest["recipe"] = recipe
    manifest["experts"] = [entry.as_dict() for entry in entries]
    path = out / MANIFEST_NAME
    path.write_text(yaml.safe_dump(manifest, sort_keys=False, width=100))
    return path


def manifest_spec(path: str | Path) -> HubSpec:
    """The hub spec of a manifest (or of a folder holding one)."""
    from hp_rl.hub.spec import parse_hub

    path = Path(path)
    return parse_hub(str(path / MANIFEST_NAME if path.is_dir() else path))
