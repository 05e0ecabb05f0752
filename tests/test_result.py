"""The result file: round trip, atomic writes, and clean refusals of bad or foreign files."""
from __future__ import annotations

import ast
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from backend.contract import result as R
from backend.contract.result import Result, ResultError, read_meta, read_result, write_result

# The stored dtype of every array, as docs/result_format.md specifies it.
DTYPES = {
    "vertices": np.float32, "vertices_init": np.float32, "faces": np.int32, "shape": np.float32,
    "expr": np.float32, "pose": np.float32, "trans": np.float32, "intrinsics": np.float32,
    "image_size": np.int32, "frame_indices": np.int64, "region_flow": np.float32, "attention": np.float32,
    "landmarks_mp": np.float32, "landmarks_68": np.float32, "valid": np.bool_, "interpolated": np.bool_,
    "align_transforms": np.float32, "fit_error_px": np.float32, "region_motion": np.float32,
    "rig_rest_vertices": np.float32, "rig_expr_dirs": np.float32, "rig_joints": np.float32,
    "rig_parents": np.int32, "rig_skin_weights": np.float32, "rig_region_labels": np.int8,
}


def make_result(t: int = 6, v: int = 12, n_shape: int = 4, n_expr: int = 3, n_joints: int = 5,
                seed: int = 0, **overrides) -> Result:
    """A small consistent result, in float64 / int64 as a pipeline would hand it over."""
    rng = np.random.default_rng(seed)
    meta = {
        "backend_version": "0.1.0",
        "source": {"path": "/clips/a.mp4", "name": "a.mp4", "size_bytes": 1234},
        "fps": np.float64(200.0),                      # numpy scalars must serialise
        "frame_range": [10, 10 + 2 * (t - 1)],
        "head_model": {"id": "m.pkl@sha256:0123456789abcdef", "path": "/m.pkl", "n_shape": n_shape,
                       "n_expr": n_expr, "n_joints": n_joints},
        "expression_names": [f"e{i}" for i in range(n_expr)],
        "joint_names": [f"j{i}" for i in range(n_joints)],
        "region_names": list(R.REGION_NAMES),
        "landmarks_68_source": "flame_embedding",
        "device": "cpu",
        "timings": {"landmarks": 1.5, "fit": np.float32(2.25)},
        "warnings": ["frames 12-14 had no face; interpolated"],
        "extra_setting": {"nested": [1, 2]},
    }
    verts = rng.normal(0, 0.1, (t, v, 3)) + [0, 0, -0.6]
    fields = dict(
        vertices=verts, vertices_init=verts + 1e-4, faces=rng.integers(0, v, (2 * v, 3)),
        shape=rng.normal(size=n_shape), expr=rng.random((t, n_expr)), pose=rng.normal(0, 0.1, (t, 3 * n_joints)),
        trans=rng.normal(0, 0.01, (t, 3)), intrinsics=np.array([1280.0, 639.5, 359.5]),
        image_size=np.array([1280, 720]), frame_indices=np.arange(10, 10 + 2 * t, 2),
        region_flow=rng.random((t, 8)), attention=rng.random((t, 8)),
        landmarks_mp=rng.random((t, 478, 2)) * 700, landmarks_68=rng.random((t, 68, 2)) * 700,
        valid=np.arange(t) % 3 != 1, interpolated=np.arange(t) % 3 == 1,
        align_transforms=rng.normal(size=(t, 2, 3)), meta=meta,
    )
    fields["landmarks_68"][1] = np.nan  # no face in frame 1: landmarks may be NaN
    fields.update(overrides)
    return Result(**fields)


def make_rig(v: int = 12, n_expr: int = 3, n_joints: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    """The optional rig arrays for :func:`make_result`'s sizes, in float64 / int64."""
    rng = np.random.default_rng(seed)
    weights = rng.random((v, n_joints))
    return {
        "rig_rest_vertices": rng.normal(0, 0.1, (v, 3)), "rig_expr_dirs": rng.normal(0, 1e-3, (n_expr, v, 3)),
        "rig_joints": rng.normal(0, 0.05, (n_joints, 3)), "rig_parents": np.array([-1, 0, 1, 1, 1][:n_joints]),
        "rig_skin_weights": weights / weights.sum(1, keepdims=True),
    }


def raw_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def rewrite(path: Path, arrays: dict, meta: dict | None = None) -> None:
    """Write an .npz by hand, bypassing the writer's checks."""
    arrays = dict(arrays)
    if meta is not None:
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, Result]:
    res = make_result()
    path = tmp_path / "clip.npz"
    write_result(path, res)
    return path, res


def test_round_trip_keeps_values_and_stores_canonical_dtypes(written):
    path, res = written
    back = read_result(path)
    assert back.n_frames == 6 and back.n_vertices == 12
    for name, value in res.arrays().items():
        got = getattr(back, name)
        assert got.dtype == DTYPES[name], name
        np.testing.assert_array_equal(got, np.asarray(value).astype(DTYPES[name]), err_msg=name)
    assert back.fit_error_px is None
    meta = back.meta
    assert meta["format"] == R.FORMAT and meta["version"] == R.VERSION == 1
    assert meta["units"] == {"length": "m", "angles": "rad axis-angle", "pixels": "source"}
    assert meta["created"].endswith("+00:00")
    assert meta["fps"] == 200.0 and meta["timings"]["fit"] == 2.25
    assert meta["extra_setting"] == {"nested": [1, 2]}
    assert read_meta(path) == meta
    assert "created" not in res.meta  # the caller's dict is not modified


def test_file_is_plain_uncompressed_npz_with_json_meta(written):
    path, res = written
    with zipfile.ZipFile(path) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
    raw = raw_arrays(path)
    assert set(raw) == set(res.arrays()) | {"meta"}
    assert all(a.dtype != object for a in raw.values())
    assert raw["meta"].dtype == np.uint8 and raw["meta"].ndim == 1
    assert json.loads(raw["meta"].tobytes().decode("utf-8"))["format"] == "microface-result"
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_optional_fit_error_round_trips(tmp_path):
    res = make_result(fit_error_px=np.array([0.3, np.nan, 0.5, 0.4, 0.2, 0.1]))
    back = read_result(write_result(tmp_path / "r.npz", res))
    np.testing.assert_array_equal(back.fit_error_px, res.fit_error_px.astype(np.float32))


def test_region_motion_and_detection_are_optional_and_checked(tmp_path):
    motion = np.abs(np.random.default_rng(1).normal(size=(6, 8)))
    det = {"fraction": 0.35, "floor_mm": 0.08, "active": ["mouth", "chin"]}
    res = make_result(region_motion=motion)
    res.meta["region_detection"] = det
    back = read_result(write_result(tmp_path / "r.npz", res))
    np.testing.assert_array_equal(back.region_motion, motion.astype(np.float32))
    assert back.meta["region_detection"] == det
    assert make_result().region_motion is None
    with pytest.raises(ResultError, match="'region_motion' holds NaN"):
        write_result(tmp_path / "bad.npz", make_result(region_motion=np.full((6, 8), np.nan)))
    with pytest.raises(ResultError, match="'region_motion' has shape"):
        write_result(tmp_path / "bad.npz", make_result(region_motion=motion[:, :7]))
    for bad in ({"fraction": 0.35, "floor_mm": 0.08, "active": ["lips"]}, {"fraction": 0.35, "active": []}, []):
        res.meta["region_detection"] = bad
        with pytest.raises(ResultError, match="metadata region_detection must be"):
            write_result(tmp_path / "bad.npz", res)
    assert not (tmp_path / "bad.npz").exists()


def test_rig_arrays_round_trip(tmp_path):
    res = make_result(**make_rig())
    assert res.has_rig and not make_result().has_rig
    path = write_result(tmp_path / "r.npz", res)
    assert set(raw_arrays(path)) == set(res.arrays()) | {"meta"}
    back = read_result(path)
    assert back.has_rig
    for name in R.RIG_ARRAYS:
        got = getattr(back, name)
        assert got.dtype == DTYPES[name], name
        np.testing.assert_array_equal(got, np.asarray(getattr(res, name)).astype(DTYPES[name]), err_msg=name)


def test_file_without_rig_stays_valid(written):
    back = read_result(written[0])
    assert not back.has_rig and all(getattr(back, k) is None for k in R.RIG_ARRAYS)


def _rig(**changes):
    return make_result(**{**make_rig(), **changes})


def test_absurd_magnitudes_are_refused_on_write_and_read(tmp_path):
    # Before, rig_rest_vertices near 1e38 ended the import in a traceback (float NaN to integer) and
    # vertices x 1e30 imported "successfully" with "max error inf mm".
    good = make_result()
    with pytest.raises(ResultError, match=r"'vertices' holds .* m; a head's coordinates are metres"):
        write_result(tmp_path / "x.npz", make_result(vertices=good.vertices * 1e30))
    path = write_result(tmp_path / "r.npz", good)
    with np.load(path, allow_pickle=False) as z:
        arrays = dict(z)
    arrays["vertices"] = arrays["vertices"] * np.float32(1e30)
    np.savez(tmp_path / "edited.npz", **arrays)
    with pytest.raises(ResultError, match=r"'vertices' holds .* m"):
        read_result(tmp_path / "edited.npz")


@pytest.mark.parametrize("res, message", [
    (_rig(rig_joints=None), r"rig arrays come as a set; rig_joints missing"),
    (_rig(rig_expr_dirs=np.zeros((2, 12, 3))), r"'rig_expr_dirs'.*axis 0 should be n_expr=3"),
    (_rig(rig_rest_vertices=np.zeros((11, 3))), r"'rig_rest_vertices'.*axis 0 should be vertices=12"),
    (_rig(rig_skin_weights=np.zeros((12, 4))), r"'rig_skin_weights'.*axis 1 should be n_joints=5"),
    (_rig(rig_parents=np.array([-1, 0, 1])), r"'rig_parents'.*axis 0 should be n_joints=5"),
    (_rig(rig_parents=np.array([-1, 0, 3, 1, 1])), r"rig_parents \[-1, 0, 3, 1, 1\] must be -1 for joint 0"),
    (_rig(rig_parents=np.array([0, 0, 1, 1, 1])), r"rig_parents .* must be -1 for joint 0"),
    (_rig(rig_parents=np.zeros(5, np.float32)), r"'rig_parents' has dtype float32; expected integers"),
    (_rig(rig_joints=np.full((5, 3), np.inf)), r"'rig_joints' holds NaN or infinite"),
    (_rig(rig_rest_vertices=np.full((12, 3), 1e38)), r"'rig_rest_vertices' holds 1e\+38 m; a head's coordinates"),
])
def test_writer_refuses_bad_rig_arrays(tmp_path, res, message):
    with pytest.raises(ResultError, match=message):
        write_result(tmp_path / "x.npz", res)
    assert list(tmp_path.iterdir()) == []


def test_region_labels_are_optional_and_checked(tmp_path):
    labels = np.arange(12) % 9 - 1                  # int64 -1..7, as a pipeline hands it over
    back = read_result(write_result(tmp_path / "r.npz", make_result(**make_rig(), rig_region_labels=labels)))
    assert back.rig_region_labels.dtype == DTYPES["rig_region_labels"]
    np.testing.assert_array_equal(back.rig_region_labels, labels)
    assert read_result(write_result(tmp_path / "n.npz", make_result(**make_rig()))).rig_region_labels is None
    # Labels without the rig arrays are allowed (they are not one of the five).
    assert read_result(write_result(tmp_path / "l.npz", make_result(rig_region_labels=labels))).has_rig is False
    for bad, message in ((np.full(12, 8), r"'rig_region_labels' holds values outside -1..7"),
                         (np.full(12, 300), r"outside -1..7"),     # would wrap to 44 if narrowed first
                         (np.full(12, -2), r"outside -1..7"),
                         (np.zeros(11, np.int8), r"'rig_region_labels'.*axis 0 should be vertices=12"),
                         (np.zeros(12, np.float32), r"'rig_region_labels' has dtype float32; expected integers")):
        with pytest.raises(ResultError, match=message):
            write_result(tmp_path / "x.npz", make_result(**make_rig(), rig_region_labels=bad))
    assert not (tmp_path / "x.npz").exists()


def test_reader_refuses_a_partial_rig(tmp_path):
    path = write_result(tmp_path / "r.npz", make_result(**make_rig()))
    arrays = raw_arrays(path)
    del arrays["rig_skin_weights"]
    rewrite(path, arrays)
    with pytest.raises(ResultError, match="rig_skin_weights missing"):
        read_result(path)


def test_writes_exactly_the_given_name_and_replaces_old_file(tmp_path):
    path = tmp_path / "take1.result"
    write_result(path, make_result(seed=1))
    write_result(path, make_result(seed=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["take1.result"]
    np.testing.assert_array_equal(read_result(path).shape, make_result(seed=2).shape.astype(np.float32))


def test_unknown_arrays_and_meta_keys_are_ignored(written):
    # Additive optional keys keep the version, so today's reader must accept them.
    path, _ = written
    arrays = raw_arrays(path)
    meta = json.loads(arrays.pop("meta").tobytes())
    meta["future_key"] = "x"
    rewrite(path, {**arrays, "future_array": np.zeros((6, 4), np.float32)}, meta)
    assert read_result(path).meta["future_key"] == "x"


# --- atomic writes -------------------------------------------------------------------------------

def _fail_midway(fh, **arrays):
    fh.write(b"PK\x03\x04partial")
    raise RuntimeError("disk went away")


@pytest.mark.parametrize("target", ["savez", "fsync", "replace"])
def test_failed_write_leaves_no_partial_file_and_keeps_old_one(tmp_path, monkeypatch, target):
    path = tmp_path / "clip.npz"
    write_result(path, make_result(seed=1))
    before = path.read_bytes()
    if target == "savez":
        monkeypatch.setattr(R.np, "savez", _fail_midway)
        expected = RuntimeError
    else:
        def boom(*args):
            raise OSError(5, "Input/output error")
        monkeypatch.setattr(R.os, target, boom)
        expected = ResultError
    with pytest.raises(expected):
        write_result(path, make_result(seed=2))
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["clip.npz"]
    assert path.read_bytes() == before


def test_failed_first_write_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(R.np, "savez", _fail_midway)
    with pytest.raises(RuntimeError):
        write_result(tmp_path / "new.npz", make_result())
    assert list(tmp_path.iterdir()) == []


def test_invalid_result_is_refused_before_anything_is_written(tmp_path):
    res = make_result()
    res.expr = res.expr[:, :2]
    with pytest.raises(ResultError, match=r"'expr'.*axis 1 should be n_expr=3"):
        write_result(tmp_path / "x.npz", res)
    assert list(tmp_path.iterdir()) == []


def test_missing_directory_is_one_clear_line(tmp_path):
    path = tmp_path / "no" / "such" / "dir" / "out.npz"
    with pytest.raises(ResultError) as err:
        write_result(path, make_result())
    msg = str(err.value)
    assert msg.startswith(f"cannot write result to {path}:") and "does not exist" in msg and "\n" not in msg


def test_parent_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "somefile.txt").write_text("x")
    with pytest.raises(ResultError, match="cannot write result to .*somefile.txt is not a directory"):
        write_result(tmp_path / "somefile.txt" / "out.npz", make_result())


def test_target_that_is_a_directory_is_refused(tmp_path):
    (tmp_path / "out.npz").mkdir()
    with pytest.raises(ResultError, match="it is a directory"):
        write_result(tmp_path / "out.npz", make_result())


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_is_permission_denied(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(ResultError, match="permission denied"):
            write_result(ro / "out.npz", make_result())
    finally:
        ro.chmod(0o755)


# --- validation ----------------------------------------------------------------------------------

def _with_meta(**changes) -> Result:
    res = make_result()
    res.meta = {**res.meta, **changes}
    return res


@pytest.mark.parametrize("res, message", [
    (make_result(faces=np.zeros((4, 3), np.float32)), r"'faces' has dtype float32; expected integers"),
    (make_result(valid=np.ones(6, np.int8)), r"'valid' has dtype int8; expected booleans"),
    (make_result(vertices_init=np.zeros((6, 11, 3))), r"'vertices_init'.*axis 1 should be vertices=12"),
    (make_result(trans=np.zeros((5, 3))), r"'trans'.*axis 0 should be frames=6"),
    (make_result(pose=np.zeros((6, 12))), r"'pose'.*axis 1 should be 3\*n_joints=15"),
    (make_result(landmarks_mp=np.zeros((6, 468, 2))), r"'landmarks_mp'.*axis 1 should be 478"),
    (make_result(region_flow=np.zeros(6)), r"'region_flow' has shape \(6,\); expected 2 dimensions"),
    (make_result(vertices=np.full((6, 12, 3), np.nan)), r"'vertices' holds NaN"),
    (make_result(faces=np.array([[0, 1, 12]])), r"faces index vertices outside 0..11"),
    (make_result(frame_indices=np.array([10, 12, 12, 14, 16, 18])), "not strictly increasing"),
    (make_result(frame_indices=np.arange(6)), r"frame_range \[10, 20\] does not match frame_indices \[0, 5\]"),
    (make_result(intrinsics=np.array([0.0, 1, 1])), "focal length must be positive"),
    (_with_meta(expression_names=["a"]), "expression_names has 1 names but head_model says 3"),
    (_with_meta(region_names=list(R.REGION_NAMES[::-1])), "region_names must be"),
    (_with_meta(landmarks_68_source="dlib"), "landmarks_68_source must be one of fan, flame_embedding"),
    (_with_meta(fps=0), "fps must be a positive number"),
    (_with_meta(version=2), "meta version is 2; this writer writes 1"),
    (_with_meta(fps=float("nan")), "fps must be a positive number"),
    (_with_meta(timings={"fit": "slow"}), "timings must be an object of stage name -> seconds"),
    (_with_meta(source={**make_result().meta["source"], "opened_by": object()}), "cannot be stored as JSON"),
])
def test_writer_refuses_inconsistent_results(tmp_path, res, message):
    with pytest.raises(ResultError, match=message):
        write_result(tmp_path / "x.npz", res)
    assert list(tmp_path.iterdir()) == []


def test_writer_requires_every_meta_key(tmp_path):
    res = make_result()
    del res.meta["landmarks_68_source"], res.meta["warnings"]
    with pytest.raises(ResultError, match="metadata lacks landmarks_68_source, warnings"):
        write_result(tmp_path / "x.npz", res)


# --- reading foreign, damaged or hostile files ---------------------------------------------------

class _Payload:
    """Unpickling this would create a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_missing_file(tmp_path):
    with pytest.raises(ResultError, match="does not exist"):
        read_result(tmp_path / "nope.npz")


@pytest.mark.parametrize("content", [b"", b"hello, not a zip", np.random.default_rng(0).bytes(4096)])
def test_not_an_npz(tmp_path, content):
    path = tmp_path / "x.npz"
    path.write_bytes(content)
    with pytest.raises(ResultError, match=r"is not a MicroFace result \(.npz\) file"):
        read_result(path)


def test_npy_and_pickle_files_are_not_results(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros(3))
    marker = tmp_path / "unpickled_marker"
    (tmp_path / "b.npz").write_bytes(pickle.dumps({"vertices": _Payload(marker)}))
    for name in ("a.npy", "b.npz"):
        with pytest.raises(ResultError, match="not a MicroFace result"):
            read_result(tmp_path / name)
    assert not marker.exists()


def test_truncated_file(written):
    path, _ = written
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ResultError, match="damaged or truncated"):
        read_result(path)


def test_corrupted_array_bytes_are_caught(written):
    path, _ = written
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("vertices.npy")
    data[info.header_offset + 200] ^= 0xFF  # inside the stored member: the CRC check must fail
    path.write_bytes(bytes(data))
    with pytest.raises(ResultError, match=r"array 'vertices' is damaged"):
        read_result(path)


def test_other_npz_without_meta(tmp_path):
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ResultError, match=r"not a MicroFace result \(no 'meta' entry\)"):
        read_result(tmp_path / "other.npz")


def test_wrong_format(written):
    path, _ = written
    arrays = raw_arrays(path)
    meta = json.loads(arrays.pop("meta").tobytes())
    rewrite(path, arrays, {**meta, "format": "someone-else"})
    with pytest.raises(ResultError, match="format 'someone-else', expected 'microface-result'"):
        read_result(path)
    with pytest.raises(ResultError, match="format 'someone-else'"):
        read_meta(path)


def test_meta_that_is_not_json(written):
    path, _ = written
    arrays = raw_arrays(path)
    arrays["meta"] = np.frombuffer(b"\xff{not json", np.uint8)
    rewrite(path, arrays)
    with pytest.raises(ResultError, match="not valid UTF-8 JSON"):
        read_result(path)


def test_version_from_the_future_is_refused(written):
    path, _ = written
    arrays = raw_arrays(path)
    meta = json.loads(arrays.pop("meta").tobytes())
    del arrays["vertices_init"]  # a newer file may lack today's arrays: the version message comes first
    rewrite(path, arrays, {**meta, "version": 2})
    for reader in (read_result, read_meta):
        with pytest.raises(ResultError, match=r"newer MicroFace \(result format version 2; .*up to version 1\)"):
            reader(path)


def test_missing_array_is_named(written):
    path, _ = written
    arrays = raw_arrays(path)
    del arrays["faces"]
    rewrite(path, arrays)
    with pytest.raises(ResultError, match=r"lacks array 'faces'"):
        read_result(path)


def test_inconsistent_shapes_on_read(written):
    path, _ = written
    arrays = raw_arrays(path)
    arrays["expr"] = arrays["expr"][:, :2]
    rewrite(path, arrays)
    with pytest.raises(ResultError, match=r"inconsistent shapes: array 'expr'.*n_expr=3"):
        read_result(path)


def test_object_arrays_are_refused_without_unpickling(written, tmp_path):
    path, _ = written
    marker = tmp_path / "unpickled_marker"
    arrays = raw_arrays(path)
    arrays["faces"] = np.array([_Payload(marker), 1], dtype=object)
    rewrite(path, arrays)  # np.savez pickles object arrays
    with pytest.raises(ResultError, match=r"array 'faces' holds pickled Python objects; refused"):
        read_result(path)
    assert not marker.exists()


def test_region_names_match_the_backend():
    from backend.head.regions import REGION_NAMES

    assert R.REGION_NAMES == REGION_NAMES


def test_module_is_self_contained(written):
    # It is copied verbatim into the Blender add-on: numpy and the standard library only.
    src = Path(R.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import"
            imported.add(node.module.split(".")[0])
    assert imported - set(sys.stdlib_module_names) == {"numpy"}
    # Loaded as a lone file, with torch and the backend unavailable, it still reads a result.
    code = (
        "import sys, importlib.util; sys.modules['torch'] = None; sys.modules['backend'] = None\n"
        f"spec = importlib.util.spec_from_file_location('mf_result', {R.__file__!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['mf_result'] = m; spec.loader.exec_module(m)\n"
        f"print(m.read_result({str(written[0])!r}).n_frames)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["6"]
