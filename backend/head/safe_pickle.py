"""Allow-listed unpickling for head-model files that come from the internet.

FLAME pickles (2020, 2023, 2023 Open, and the ICT stand-in) hold only numpy arrays, scipy sparse
matrices and, in the 2020 release, chumpy ``Ch`` arrays. This loader resolves exactly those
globals. Sparse matrices and chumpy arrays are never constructed: their pickled state is captured
in inert records and converted to numpy, so neither scipy nor chumpy code runs on file content.
``_codecs.encode`` is resolved to a latin-1-only stand-in: Python 3 pickles of protocol < 3
store array bytes that way.
Any other global (``os.system``, ``builtins.eval``, ...) raises :class:`UnsafePickleError`.
"""
from __future__ import annotations

import io
import os
import pickle
from typing import Any

import numpy as np


class UnsafePickleError(ValueError):
    """The file asks for a Python object that a head-model file never contains."""


class _Record:
    """Inert stand-in for a class whose state we read but whose code we never run."""

    # Class defaults: NEWOBJ creates instances without calling __init__, and BUILD may be absent.
    args: tuple = ()
    state: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _SparseRecord(_Record):
    fmt = ""


class _CscRecord(_SparseRecord):
    fmt = "csc"


class _CsrRecord(_SparseRecord):
    fmt = "csr"


class _CooRecord(_SparseRecord):
    fmt = "coo"


class _ChumpyRecord(_Record):
    pass


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    # copy_reg._reconstructor from Python 2 pickles; only our allow-listed classes reach here.
    if not isinstance(cls, type) or not issubclass(cls, _Record):
        raise UnsafePickleError(f"copy_reg reconstruction of {cls!r} is not allowed")
    return cls()


def _codecs_encode(text: Any, encoding: str = "utf-8") -> bytes:
    # Python 3 pickles of protocol < 3 store bytes (e.g. array buffers) as _codecs.encode(str, "latin1").
    if not isinstance(text, str) or encoding.replace("_", "-").lower() not in ("latin1", "latin-1"):
        raise UnsafePickleError("_codecs.encode is allowed only for latin-1 text")
    return text.encode("latin-1")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    from numpy.core import multiarray  # numpy<2 here; numpy 2 pickles say numpy._core

    out: dict[tuple[str, str], Any] = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(mod, "_reconstruct")] = multiarray._reconstruct
        out[(mod, "scalar")] = multiarray.scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        out[(mod, "_frombuffer")] = np.core.numeric._frombuffer
    out[("numpy", "ndarray")] = np.ndarray
    out[("numpy", "dtype")] = np.dtype
    return out


_SPARSE = {
    (mod, f"{fmt}_{kind}"): rec
    for fmt, rec in (("csc", _CscRecord), ("csr", _CsrRecord), ("coo", _CooRecord))
    for kind in ("matrix", "array")
    for mod in (f"scipy.sparse._{fmt}", f"scipy.sparse.{fmt}", "scipy.sparse")
}
_CHUMPY = {("chumpy.ch", "Ch"), ("chumpy", "Ch")}
_REDUCERS = {("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor")}
_BUILTINS = {("__builtin__", "object"), ("builtins", "object")}
_CODECS = {("_codecs", "encode")}


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only the globals a FLAME file needs."""

    _numpy = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in self._numpy:
            return self._numpy[key]
        if key in _SPARSE:
            return _SPARSE[key]
        if key in _CHUMPY:
            return _ChumpyRecord
        if key in _REDUCERS:
            return _reconstructor
        if key in _BUILTINS:
            return object
        if key in _CODECS:
            return _codecs_encode
        raise UnsafePickleError(f"refused to load '{module}.{name}': a head-model file holds only arrays")


def _sparse_to_dense(rec: _SparseRecord) -> np.ndarray:
    st = rec.state if isinstance(rec.state, dict) else {}
    shape = st.get("_shape", st.get("shape"))
    data = st.get("data")
    if shape is None or data is None:
        raise UnsafePickleError("sparse matrix in head-model file has no data or shape")
    shape = tuple(int(s) for s in shape)
    data = np.asarray(data, dtype=np.float64)
    out = np.zeros(shape, dtype=np.float64)
    # np.add.at, not assignment: non-canonical matrices may repeat an entry, which means a sum.
    if rec.fmt == "coo":
        # scipy >= 1.13 pickles ``coords`` (row, col); older versions ``row`` and ``col``.
        row, col = st["coords"] if "coords" in st else (st["row"], st["col"])
        np.add.at(out, (np.asarray(row), np.asarray(col)), data)
        return out
    indices, indptr = np.asarray(st["indices"]), np.asarray(st["indptr"])
    major = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    if rec.fmt == "csc":
        np.add.at(out, (indices, major), data)
    else:
        np.add.at(out, (major, indices), data)
    return out


def _convert(obj: Any) -> Any:
    """Replace inert records with numpy arrays, recursively."""
    if isinstance(obj, _SparseRecord):
        return _sparse_to_dense(obj)
    if isinstance(obj, _ChumpyRecord):
        st = obj.state if isinstance(obj.state, dict) else {}
        if "x" not in st:
            raise UnsafePickleError("chumpy array in head-model file has no value ('x')")
        return np.asarray(st["x"])
    if isinstance(obj, dict):
        return {(k.decode() if isinstance(k, bytes) else k): _convert(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_convert(v) for v in obj)
    if isinstance(obj, _Record) or (type(obj) is object):
        raise UnsafePickleError("head-model file contains an object that is not an array")
    return obj


def load(path_or_bytes: str | bytes | "os.PathLike[str]") -> Any:
    """Load a pickle through the allow-list; sparse and chumpy arrays come back as numpy arrays.

    Raises :class:`UnsafePickleError` for disallowed content and ``ValueError`` for corrupt files.
    """
    if isinstance(path_or_bytes, bytes):
        fh: Any = io.BytesIO(path_or_bytes)
    else:
        fh = open(path_or_bytes, "rb")
    with fh:
        try:
            obj = SafeUnpickler(fh, encoding="latin1").load()
        except UnsafePickleError:
            raise
        except Exception as exc:  # truncated, not a pickle, wrong protocol...
            raise ValueError(f"not a readable pickle ({type(exc).__name__}: {exc})") from None
    try:
        return _convert(obj)
    except UnsafePickleError:
        raise
    except Exception as exc:  # sparse record with missing keys, out-of-range indices...
        raise ValueError(f"malformed array in pickle ({type(exc).__name__}: {exc})") from None
