"""Head-model pickles from the internet: hostile ones are refused without running anything, damaged
ones fail with one line, and the legitimate encodings (chumpy, scipy.sparse, old protocols) load."""
from __future__ import annotations

import builtins
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from backend.head import safe_pickle
from backend.config import ASSETS, assets_folder
from backend.errors import MicroFaceError
from backend.head.flame import FlameLayer, load_flame

ASSET_DIR = assets_folder()
STAND_IN = ASSET_DIR / "microface_ict_flame.pkl"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for env in (a.env for a in ASSETS.values()):
        monkeypatch.delenv(env, raising=False)


@pytest.fixture(scope="module")
def raw():
    return safe_pickle.load(STAND_IN)


def _dump(tmp_path: Path, obj, name: str = "model.pkl", protocol: int = 4) -> Path:
    path = tmp_path / name
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def _load_error(path: Path) -> str:
    with pytest.raises(MicroFaceError) as err:
        load_flame(path, ASSET_DIR)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    return msg


# --- hostile files -------------------------------------------------------------------------------

class _Call:
    """Pickles as a call of ``func(*args)``: what a malicious head-model file would contain."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker: Path) -> dict:
    cmd = f"touch {marker}"
    return {
        "os.system": _Call(os.system, cmd),
        "builtins.eval": _Call(builtins.eval, f"__import__('os').system({cmd!r})"),
        "builtins.exec": _Call(builtins.exec, f"import os; os.system({cmd!r})"),
        "subprocess.call": _Call(subprocess.call, ["touch", str(marker)]),
        "subprocess.Popen": _Call(subprocess.Popen, ["touch", str(marker)]),
        "pathlib.touch": _Call(Path.touch, marker),
        "numpy.load": _Call(np.load, str(marker)),  # numpy is partly allowed; its loaders are not
    }


@pytest.mark.parametrize("kind", sorted(_payloads(Path("x"))))
@pytest.mark.parametrize("nested", [False, True])
def test_code_in_the_pickle_is_refused_and_never_runs(tmp_path, kind, nested):
    marker = tmp_path / "pwned_marker"
    payload = _payloads(marker)[kind]
    obj = {"v_template": np.zeros((3, 3)), "f": payload} if nested else payload
    msg = _load_error(_dump(tmp_path, obj))
    assert "refused" in msg and "head-model file holds only arrays" in msg
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2])
def test_old_protocol_payloads_are_refused(tmp_path, protocol):
    marker = tmp_path / "pwned_marker"
    msg = _load_error(_dump(tmp_path, _Call(os.system, f"touch {marker}"), protocol=protocol))
    assert "refused" in msg and "system" in msg
    assert not marker.exists()


def test_handwritten_global_opcode_is_refused(tmp_path):
    marker = tmp_path / "pwned_marker"
    path = tmp_path / "model.pkl"
    path.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    assert "refused to load 'os.system'" in _load_error(path)
    assert not marker.exists()


def test_codecs_encode_is_limited_to_latin1():
    import codecs

    with pytest.raises(safe_pickle.UnsafePickleError, match="latin-1"):
        safe_pickle.load(pickle.dumps(_Call(codecs.encode, "abc", "rot13")))


def test_reconstructor_cannot_build_arbitrary_classes():
    import copyreg

    data = pickle.dumps(_Call(copyreg._reconstructor, object, object, None))
    with pytest.raises(safe_pickle.UnsafePickleError, match="copy_reg reconstruction"):
        safe_pickle.load(data)


# --- damaged or wrong files ----------------------------------------------------------------------

def test_truncated_model_is_corrupt(tmp_path):
    path = tmp_path / "truncated.pkl"
    with open(STAND_IN, "rb") as fh:
        path.write_bytes(fh.read(1 << 20))
    assert "is corrupt or not a FLAME pickle" in _load_error(path)


@pytest.mark.parametrize("content", [b"", np.random.default_rng(0).bytes(4096), b"v 0 0 0\nf 1 2 3\n"])
def test_random_or_empty_bytes_are_corrupt(tmp_path, content):
    path = tmp_path / "model.pkl"
    path.write_bytes(content)
    assert "is corrupt or not a FLAME pickle" in _load_error(path)


def test_top_level_list_is_not_a_flame_file(tmp_path):
    msg = _load_error(_dump(tmp_path, [np.zeros(3)]))
    assert "is not a FLAME pickle (top level is list, not a dict)" in msg


def test_missing_keys_are_named(tmp_path, raw):
    d = {k: v for k, v in raw.items() if k not in ("v_template", "weights")}
    assert "is not a FLAME file: missing v_template, weights" in _load_error(_dump(tmp_path, d))


def test_malformed_array_is_named(tmp_path, raw):
    d = dict(raw, v_template="not an array")
    assert "has a malformed array" in _load_error(_dump(tmp_path, d))


def test_wrong_shapes_are_named(tmp_path, raw):
    d = dict(raw, weights=raw["weights"][:100])
    assert "is malformed: weights rows do not match the vertex count" in _load_error(_dump(tmp_path, d))


def test_directory_without_a_model_is_an_error(tmp_path):
    msg = _load_error(tmp_path)
    assert "not found at" in msg and "(from flag)" in msg and "--flame PATH" in msg


# --- legitimate encodings ------------------------------------------------------------------------

@pytest.fixture
def chumpy_ch():
    """A throwaway class that pickles as ``chumpy.ch.Ch``, the way FLAME 2020 stores arrays.

    The fake modules are removed again before anything is loaded, so the loader never sees them.
    """
    pkg, mod = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x = np.asarray(x)

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    mod.Ch, pkg.ch = Ch, mod
    saved = {k: sys.modules.get(k) for k in ("chumpy", "chumpy.ch")}
    sys.modules.update({"chumpy": pkg, "chumpy.ch": mod})
    try:
        yield Ch
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_chumpy_arrays_load_as_numpy(chumpy_ch, protocol):
    value = np.arange(12.0).reshape(4, 3)
    data = pickle.dumps({"v_template": chumpy_ch(value), "nested": [chumpy_ch([1, 2])]}, protocol=protocol)
    sys.modules.pop("chumpy.ch")
    sys.modules.pop("chumpy")
    out = safe_pickle.load(data)
    assert type(out["v_template"]) is np.ndarray
    np.testing.assert_array_equal(out["v_template"], value)
    np.testing.assert_array_equal(out["nested"][0], [1, 2])


def test_chumpy_without_value_is_refused(chumpy_ch):
    # An empty __dict__ pickles as NEWOBJ without BUILD: no state at all, and __init__ never ran.
    empty = chumpy_ch(0)
    del empty.x
    with pytest.raises(safe_pickle.UnsafePickleError, match="no value"):
        safe_pickle.load(pickle.dumps(empty))


DENSE = np.array([[1.0, 0, 2, 0], [0, 0, 3, 0], [4, 5, 0, 6]])


@pytest.mark.parametrize("make", [sp.csc_matrix, sp.csr_matrix, sp.coo_matrix, sp.csc_array, sp.csr_array])
@pytest.mark.parametrize("protocol", [2, 4])
def test_sparse_matrices_load_as_dense(make, protocol):
    out = safe_pickle.load(pickle.dumps({"J_regressor": make(DENSE)}, protocol=protocol))["J_regressor"]
    assert type(out) is np.ndarray
    np.testing.assert_array_equal(out, DENSE)


def test_sparse_duplicate_entries_are_summed_as_scipy_does():
    m = sp.csr_matrix((np.array([1.0, 2.0, 5.0]), np.array([1, 1, 0]), np.array([0, 2, 3])), shape=(2, 3))
    assert not m.has_canonical_format
    np.testing.assert_array_equal(safe_pickle.load(pickle.dumps(m)), m.toarray())  # [[0, 3, 0], [5, 0, 0]]


def test_sparse_with_out_of_range_indices_is_corrupt(tmp_path, raw):
    m = sp.csc_matrix(DENSE)
    m.indices[0] = 99
    with pytest.raises(ValueError, match="malformed array") as err:
        safe_pickle.load(pickle.dumps(m))
    assert not isinstance(err.value, safe_pickle.UnsafePickleError)
    assert "is corrupt" in _load_error(_dump(tmp_path, dict(raw, J_regressor=m)))


def test_flame_2020_style_file_loads(raw, tmp_path, chumpy_ch):
    """Chumpy arrays, a csc J_regressor and protocol 2 (bytes via _codecs.encode), as in older files."""
    d = dict(raw)
    for key in ("v_template", "posedirs", "weights", "J"):
        d[key] = chumpy_ch(raw[key])
    d["shapedirs"] = chumpy_ch(raw["shapedirs"][:, :, :353].astype(np.float32))
    d["J_regressor"] = sp.csc_matrix(raw["J_regressor"])
    d["f"] = raw["f"].astype(np.uint32)
    path = _dump(tmp_path, d, protocol=2)
    sys.modules.pop("chumpy.ch")
    sys.modules.pop("chumpy")
    m = load_flame(path, ASSET_DIR)
    reference = load_flame(STAND_IN, ASSET_DIR)
    assert (m.n_shape, m.n_expr) == (reference.n_shape, reference.n_expr)
    for name in ("v_template", "shapedirs", "exprdirs", "weights", "j_regressor"):
        np.testing.assert_array_equal(getattr(m, name), getattr(reference, name), err_msg=name)
    assert FlameLayer(m).n_joints == 5
