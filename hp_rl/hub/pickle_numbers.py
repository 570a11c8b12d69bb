"""Reading the numbers out of a pickle without building any of its objects.

Stable-Baselines3 saves ``VecNormalize`` statistics (rl-baselines3-zoo's ``vecnormalize.pkl``, the Hugging Face
``vec_normalize.pkl``) as a pickle of the whole wrapper object. Unpickling it with :mod:`pickle` would import and
call whatever the file names, so whoever wrote the file could run code here. :func:`read_pickle_numbers` reads
it with an unpickler whose every global is a stand-in: a class becomes a :class:`Record` (a plain mapping of
the attributes the pickle sets), a NumPy array is rebuilt from its raw bytes only when its dtype is numeric, and
any other callable the file asks for (``os.system``, ``builtins.eval``, ...) stops the read with an error. The
result holds only dicts, lists, tuples, strings, numbers, booleans, ``None`` and numeric arrays.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from hp_rl.core.errors import HpRlError

__all__ = ["PickleReadError", "Record", "read_pickle_numbers", "MAX_PICKLE_BYTES"]

# A VecNormalize pickle is a few KiB (its spaces and two running means); image statistics a few MiB.
MAX_PICKLE_BYTES = 64 * 2**20
# Largest array a pickle may declare (elements), before its bytes are read.
_MAX_ARRAY_ELEMENTS = 2**24


class PickleReadError(HpRlError, ValueError):
    """A pickle asks for something other than plain objects and numeric arrays, or is corrupt."""


class Record(dict[str, Any]):
    """What an object of the pickle reads as: its class name and the attributes the pickle gave it
    (``args``: the arguments the pickle called the class with, if any)."""

    qualname = "object"
    args: tuple[Any, ...] = ()

    def __init__(self, *args: Any, **_: Any) -> None:
        super().__init__()
        self.args = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict | type(None)):
            state = {**(state[0] or {}), **(state[1] or {})}  # (dict, slots) form
        if isinstance(state, dict):
            self.update({str(k): v for k, v in state.items()})
        else:
            self["__state__"] = state


def _record_class(qualname: str) -> type[Record]:
    """A stand-in for a class the pickle names: a Record subclass (pickle's NEWOBJ needs a real type)."""
    return type("Record", (Record,), {"qualname": qualname})


def _record_factory(qualname: str) -> Any:
    """A stand-in for a constructor function (NumPy's random generators): gives a Record."""

    def make(*args: Any) -> Record:
        return _record_class(qualname)(*args)

    return make


class _Dtype:
    """A NumPy dtype by name; only numeric and boolean kinds are accepted."""

    def __init__(self, name: Any, *_: Any) -> None:
        if not isinstance(name, str):
            raise PickleReadError(f"a dtype named by {type(name).__name__}, not a string")
        try:
            dtype = np.dtype(name)
        except TypeError as error:
            raise PickleReadError(f"unknown dtype {name!r}") from error
        if dtype.kind not in "biuf":
            raise PickleReadError(f"dtype {name!r} is not a number type (only numeric arrays are read)")
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        # (version, byte order, ...): a dtype pickled on a machine of the other byte order says so here
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


class _Array:
    """An ndarray being rebuilt: ``_reconstruct`` makes an empty one, ``__setstate__`` gives its bytes."""

    def __init__(self, *_: Any) -> None:
        self.value: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) != 5:
            raise PickleReadError("an array whose state is not (version, shape, dtype, fortran, bytes)")
        _, shape, dtype, fortran, raw = state
        if not isinstance(dtype, _Dtype) or not isinstance(raw, bytes):
            raise PickleReadError("an array of objects (only numeric arrays are read)")
        if not isinstance(shape, tuple) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise PickleReadError(f"an array of shape {shape!r}")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if count > _MAX_ARRAY_ELEMENTS or count * dtype.dtype.itemsize != len(raw):
            raise PickleReadError(f"an array of shape {shape} whose bytes do not match it")
        flat = np.frombuffer(raw, dtype=dtype.dtype)
        self.value = (flat.reshape(tuple(shape), order="F") if fortran else flat.reshape(tuple(shape))).copy()


def _scalar(dtype: Any, raw: Any = b"") -> Any:
    if not isinstance(dtype, _Dtype) or not isinstance(raw, bytes) or len(raw) != dtype.dtype.itemsize:
        raise PickleReadError("a NumPy scalar that is not a number")
    return np.frombuffer(raw, dtype=dtype.dtype)[0].item()


def _reconstruct(_cls: Any, _shape: Any = None, _dtype: Any = None) -> _Array:
    return _Array()


def _is_record_class(cls: Any) -> bool:
    return isinstance(cls, type) and issubclass(cls, Record)


def _copyreg_reconstructor(cls: Any, _base: Any = None, _state: Any = None) -> Any:
    if _is_record_class(cls):
        return cls()
    raise PickleReadError("copyreg._reconstructor of something that is not a class")


def _new_object(cls: Any, *args: Any) -> Any:
    if _is_record_class(cls):
        return cls(*args)
    raise PickleReadError("__newobj__ of something that is not a class")


# Globals with a meaning of their own; every other global is a class (Record) or refused.
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy", "dtype"): _Dtype,
    ("numpy", "ndarray"): _record_class("numpy.ndarray"),
    ("copyreg", "_reconstructor"): _copyreg_reconstructor,
    ("copy_reg", "_reconstructor"): _copyreg_reconstructor,
    ("copyreg", "__newobj__"): _new_object,
    ("builtins", "object"): _record_class("object"),
    ("__builtin__", "object"): _record_class("object"),
}
# Modules whose names may stand for classes (read as Records): what SB3's VecNormalize pickles hold.
_CLASS_MODULES = ("stable_baselines3.", "gym.", "gymnasium.", "collections", "sb3_contrib.")


class _NumbersUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        known = _NUMPY_GLOBALS.get((module, name))
        if known is not None:
            return known
        if module.startswith(_CLASS_MODULES) and name[:1].isupper():
            return _record_class(f"{module}.{name}")
        if module.startswith("numpy.random"):  # a space's seeded random generator: its constructors, as Records
            return _record_factory(f"{module}.{name}")
        raise PickleReadError(f"the pickle asks for {module}.{name}, which is neither data nor a known class")

    def persistent_load(self, pid: Any) -> Any:
        raise PickleReadError("the pickle refers to outside objects")


def _plain(value: Any, depth: int = 0) -> Any:
    """Arrays out of their rebuilders, recursively; everything else as it is."""
    if depth > 50:
        raise PickleReadError("nested too deeply")
    if isinstance(value, _Array):
        return value.value
    if isinstance(value, _Dtype):
        return str(value.dtype)
    if isinstance(value, Record):
        for key in list(value):
            value[key] = _plain(value[key], depth + 1)
        return value
    if isinstance(value, dict):
        return {key: _plain(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        items = [_plain(item, depth + 1) for item in value]
        return items if isinstance(value, list) else tuple(items)
    return value


def read_pickle_numbers(path: str | Path) -> Any:
    """The contents of a pickle as plain values (see the module docstring): objects become :class:`Record`
    mappings of their attributes, arrays NumPy arrays of numbers.

    :raises PickleReadError: a file over :data:`MAX_PICKLE_BYTES`, a corrupt pickle, or one that names a
        function or an object array.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_PICKLE_BYTES:
            raise PickleReadError(
                f"{path} is {size} bytes; statistics files are far smaller (limit {MAX_PICKLE_BYTES})."
            )
        raw = path.read_bytes()
    except OSError as error:
        raise PickleReadError(f"{path}: cannot be read ({error.strerror}).") from error
    try:
        value = _NumbersUnpickler(io.BytesIO(raw)).load()
    except PickleReadError as error:
        raise PickleReadError(f"{path}: {error}; it was not read.") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as error:
        raise PickleReadError(f"{path} is not a readable pickle ({type(error).__name__}: {error}).") from None
    except RecursionError:
        raise PickleReadError(f"{path}: nested too deeply to be a statistics file.") from None
    return _plain(value)
