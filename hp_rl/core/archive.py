"""Reading zip files (SB3 checkpoints), safetensors and ``.npz`` files with size caps and without unpickling.

Stable-Baselines3 saves a model as a zip of ``data`` (JSON in which objects such as spaces and schedules
are cloudpickled under ``:serialized:``), ``policy.pth``, ``policy.optimizer.pth``,
``pytorch_variables.pth`` and version files. Whoever wrote the file can make SB3's own loader run code
through ``data``. Here only the JSON's plain values are read (nothing under ``:serialized:`` is decoded),
tensors are read with ``torch.load(weights_only=True)``, and every member's decompressed size is checked
against a cap before it is read, so a small file cannot inflate to gigabytes in memory. Safetensors and
``.npz`` files are checked the same way before a library reads them: every size a header declares must fit
the file that declares it and the cap (:func:`check_safetensors_file`, :func:`check_npz_file`).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hp_rl.core.errors import HpRlError

__all__ = [
    "ArchiveError",
    "MAX_DATA_BYTES",
    "MAX_TENSOR_BYTES",
    "MAX_COMPRESSION_RATIO",
    "read_member",
    "load_tensors",
    "SB3Archive",
    "read_sb3_archive",
    "check_safetensors_file",
    "check_npz_file",
    "load_json_bytes",
]

# Caps on decompressed member sizes. A CnnPolicy's ``data`` is well under 1 MiB; the largest hub
# backbones' weights are a few hundred MiB. HP_RL_MAX_TENSOR_BYTES raises the tensor cap for larger models.
MAX_DATA_BYTES = 64 * 2**20
MAX_TENSOR_BYTES = int(os.environ.get("HP_RL_MAX_TENSOR_BYTES", 4 * 2**30))
# Trained float weights barely compress; a member over 64 MiB that inflates more than this is a zip bomb.
MAX_COMPRESSION_RATIO = 100
_RATIO_CHECK_BYTES = 64 * 2**20


class ArchiveError(HpRlError, ValueError):
    """A zip file is missing, corrupt, over a size cap, or does not hold what it should."""


def read_member(archive: zipfile.ZipFile, name: str, path: Path, limit: int) -> bytes:
    """The bytes of member ``name``, refused when it would decompress past ``limit`` bytes.

    The size in the zip's directory is checked first; the read itself also stops at ``limit + 1`` bytes,
    so a directory that lies about the size cannot get past the cap.

    :raises ArchiveError: a missing member, or one over the cap or the compression-ratio limit.
    """
    try:
        info = archive.getinfo(name)
    except KeyError as error:
        raise ArchiveError(
            f"{path} has no member '{name}': it is not a file saved by Stable-Baselines3's "
            "model.save() (or it is truncated)."
        ) from error
    too_big = (
        f"{path}: member '{name}' inflates to {{}} bytes, over the limit of {limit} bytes; "
        "the file is corrupt or built to exhaust memory. Use the original file."
    )
    if info.file_size > limit:
        raise ArchiveError(too_big.format(info.file_size))
    if info.file_size > _RATIO_CHECK_BYTES and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
        raise ArchiveError(
            f"{path}: member '{name}' inflates {info.file_size / max(info.compress_size, 1):.0f}-fold "
            f"(limit {MAX_COMPRESSION_RATIO}); weights do not compress like that: the file is built "
            "to exhaust memory. Use the original file."
        )
    try:
        with archive.open(info) as handle:
            data = handle.read(limit + 1)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as error:
        raise ArchiveError(
            f"{path}: member '{name}' cannot be read ({error}); the file is corrupt or truncated."
        ) from error
    if len(data) > limit:
        raise ArchiveError(too_big.format(f"more than {limit}"))
    return data


def load_tensors(raw: bytes, what: str) -> Any:
    """``torch.load`` of ``raw`` with ``weights_only=True``: tensors and plain containers only.

    :param raw: the serialized bytes.
    :param what: the member and file, for the message.
    :raises ArchiveError: for anything that is not plain weights (a pickled object, a corrupt stream).
    """
    import torch

    try:
        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe payloads
        raise ArchiveError(
            f"{what} cannot be read as plain weights ({type(error).__name__}: {error}); nothing "
            "in it was run. Use a file saved by hp_rl or Stable-Baselines3."
        ) from error


@dataclass
class SB3Archive:
    """What can be read from an SB3 zip without unpickling.

    :param path: the file.
    :param data: the plain JSON values of ``data`` (numbers, strings, lists; every ``:serialized:`` object
        is left out).
    :param serialized_keys: the keys of ``data`` whose values are pickled objects (never decoded).
    :param state_dicts: member stem -> loaded weights: ``policy``, ``policy.optimizer``, ...
    :param pytorch_variables: the tensors of ``pytorch_variables.pth`` (empty when absent).
    """

    path: Path
    data: dict[str, Any]
    serialized_keys: tuple[str, ...]
    state_dicts: dict[str, Any] = field(default_factory=dict)
    pytorch_variables: dict[str, Any] = field(default_factory=dict)


def load_json_bytes(raw: bytes, what: str) -> Any:
    """The JSON value in ``raw`` (read from a file of unknown origin, already size-capped by the caller).

    :param what: the file and member, for the message.
    :raises ArchiveError: for bytes that are not UTF-8 JSON, or JSON nested too deeply to parse (a hostile
        file's thousands of brackets would otherwise end in a ``RecursionError``).
    """
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArchiveError(f"{what} is not JSON ({error}); the file is corrupt.") from None
    except RecursionError:
        raise ArchiveError(f"{what} is nested too deeply to be a file this package wrote or reads.") from None


def _plain_json(raw: bytes, path: Path) -> tuple[dict[str, Any], tuple[str, ...]]:
    parsed = load_json_bytes(raw, f"{path}: member 'data'")
    if not isinstance(parsed, dict):
        raise ArchiveError(f"{path}: member 'data' is not a JSON object; the file is corrupt.")
    plain: dict[str, Any] = {}
    serialized = []
    for key, value in parsed.items():
        if isinstance(value, dict) and ":serialized:" in value:
            serialized.append(key)  # a cloudpickle payload: never decoded
        else:
            plain[key] = value
    return plain, tuple(serialized)


def read_sb3_archive(path: str | Path, tensors: bool = True) -> SB3Archive:
    """Read an SB3 checkpoint zip safely (see the module docstring).

    :param path: the zip.
    :param tensors: also read every ``.pth`` member (else only ``data``).
    :raises ArchiveError: a missing, corrupt or oversized file or member, or a ``.pth`` that is not weights.
    """
    path = Path(path)
    if not path.is_file():
        raise ArchiveError(f"{path} does not exist (or is not a file).")
    try:
        with zipfile.ZipFile(path) as archive:
            data, serialized = _plain_json(read_member(archive, "data", path, MAX_DATA_BYTES), path)
            result = SB3Archive(path, data, serialized)
            if not tensors:
                return result
            for name in archive.namelist():
                if not name.endswith(".pth"):
                    continue
                loaded = load_tensors(read_member(archive, name, path, MAX_TENSOR_BYTES), f"{path}: member '{name}'")
                if not isinstance(loaded, dict):
                    raise ArchiveError(f"{path}: member '{name}' is not a mapping of weights; the file is corrupt.")
                stem = name[: -len(".pth")]
                if stem == "pytorch_variables":
                    result.pytorch_variables = loaded
                else:
                    result.state_dicts[stem] = loaded
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as error:
        raise ArchiveError(f"{path} is not a readable zip file ({error}): truncated or corrupt.") from error
    return result


# --- declared sizes ------------------------------------------------------------------------------------------
# The safetensors library's own cap on its JSON header.
MAX_SAFETENSORS_HEADER_BYTES = 100 * 2**20
_SAFETENSORS_ITEM_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip


def _header_json(raw: bytes, path: Path) -> Any:
    return load_json_bytes(raw, f"{path}: the safetensors header")


def _tensor_bytes(path: Path, name: str, entry: Any, data_bytes: int) -> int:
    """The bytes one safetensors header entry declares, checked against the data the file holds."""
    bad = f"{path}: tensor {name[:80]!r} in the safetensors header"
    if not isinstance(entry, dict) or entry.get("dtype") not in _SAFETENSORS_ITEM_BYTES:
        raise ArchiveError(f"{bad} has no known dtype; the file is corrupt.")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape) or len(shape) > 32:
        raise ArchiveError(f"{bad} has no valid shape; the file is corrupt.")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(n, int) for n in offsets):
        raise ArchiveError(f"{bad} has no valid data_offsets; the file is corrupt.")
    count = 1
    for n in shape:
        count *= n
    declared = count * _SAFETENSORS_ITEM_BYTES[entry["dtype"]]
    begin, end = offsets
    if not 0 <= begin <= end <= data_bytes or end - begin != declared:
        raise ArchiveError(
            f"{bad} declares {declared} bytes at offsets {begin}..{end}, but the file holds {data_bytes} bytes of "
            "data: it is truncated or was not written by a safetensors writer."
        )
    return declared


def check_safetensors_file(path: Path, limit: int = MAX_TENSOR_BYTES) -> dict[str, str]:
    """Check every size a safetensors file declares before the library reads it; return its metadata.

    :param path: the file.
    :param limit: the cap on the tensors' total bytes.
    :return: the header's ``__metadata__`` (string to string).
    :raises ArchiveError: a header larger than the file or the cap, a tensor outside the file's data, a
        total over ``limit``, malformed JSON.
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ArchiveError(f"{path} is too short to be a safetensors file ({size} bytes).")
        header_bytes = int.from_bytes(prefix, "little")
        if header_bytes > min(MAX_SAFETENSORS_HEADER_BYTES, size - 8):
            raise ArchiveError(
                f"{path}: the safetensors header declares {header_bytes} bytes, but the file has {size} bytes "
                f"(limit {MAX_SAFETENSORS_HEADER_BYTES}): it is truncated or not a safetensors file."
            )
        header = _header_json(handle.read(header_bytes), path)
    if not isinstance(header, dict):
        raise ArchiveError(f"{path}: the safetensors header is not a JSON object; the file is corrupt.")
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ArchiveError(f"{path}: the safetensors __metadata__ must map strings to strings.")
    data_bytes = size - 8 - header_bytes
    total = sum(_tensor_bytes(path, str(k), v, data_bytes) for k, v in header.items() if k != "__metadata__")
    if total > limit:
        raise ArchiveError(
            f"{path} holds {total} bytes of tensors, over the cap of {limit}; set HP_RL_MAX_TENSOR_BYTES to "
            "read a larger model."
        )
    return {str(k): v for k, v in metadata.items()}


def check_npz_file(path: Path, limit: int = MAX_TENSOR_BYTES) -> None:
    """Check every array of an ``.npz`` file before numpy reads it: each member's declared shape must fit the
    bytes the member holds, no member may need pickle, and the total must be under ``limit``.

    :raises ArchiveError: naming the member and what it declares.
    """
    import numpy as np
    from numpy.lib import format as npy_format

    path = Path(path)
    total = 0
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                total += info.file_size
                if total > limit:
                    raise ArchiveError(
                        f"{path} inflates to more than {limit} bytes; set HP_RL_MAX_TENSOR_BYTES to read a larger file."
                    )
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as member:
                    version = npy_format.read_magic(member)
                    read_header = (
                        npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
                    )
                    shape, _, dtype = read_header(member)
                if dtype.hasobject:
                    raise ArchiveError(f"{path}: array {info.filename!r} holds Python objects, which are never read.")
                declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if declared > info.file_size:
                    raise ArchiveError(
                        f"{path}: array {info.filename!r} declares shape {tuple(shape)} ({declared} bytes) but holds "
                        f"{info.file_size} bytes: the file is corrupt."
                    )
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as error:
        if isinstance(error, ArchiveError):
            raise
        raise ArchiveError(f"{path} is not a readable .npz file ({error}).") from None
