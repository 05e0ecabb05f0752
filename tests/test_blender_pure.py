"""The Blender extension's numpy-only helpers, tested without bpy: skinning against the FLAME
layer, the micro-detail PCA, frame maps, the rig data built from a result, and code rules."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest

from microface_blender.core import detail, frame_map, lbs, paths, rigdata

PACKAGE = Path(__file__).resolve().parents[1] / "microface_blender"


@pytest.fixture(scope="module")
def model():
    from backend.head.flame import load_flame

    return load_flame()


@pytest.fixture(scope="module")
def synth(model):
    from backend.synthetic.synth_result import synthetic_result

    return synthetic_result(model, 24, seed=5, noise_mm=0.002)


# --- code rules (the import rules are in test_layout.py) ---------------------------------------

def test_keys_are_written_in_bulk():
    for path in PACKAGE.rglob("*.py"):
        calls = {n.func.attr for n in ast.walk(ast.parse(path.read_text()))
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
        assert "keyframe_insert" not in calls, path.relative_to(PACKAGE).as_posix()


def test_importing_the_package_does_no_work():
    # Module level holds only definitions: no calls other than class/property declarations.
    init = ast.parse((PACKAGE / "__init__.py").read_text())
    for node in init.body:
        assert isinstance(node, (ast.Expr, ast.Import, ast.ImportFrom, ast.FunctionDef, ast.Assign)), ast.dump(node)


# --- skinning -------------------------------------------------------------------------------------

def test_quaternions_match_rotation_matrices():
    rng = np.random.default_rng(0)
    aa = np.concatenate([rng.normal(0, 1, (50, 3)), rng.normal(0, 1e-9, (5, 3)), np.zeros((1, 3))])
    q = lbs.axis_angle_to_quaternion(aa)
    np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 1, atol=1e-12)
    w, x, y, z = q.T
    m = np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                  2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                  2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(-1, 3, 3)
    np.testing.assert_allclose(m, lbs.axis_angle_to_matrix(aa), atol=1e-12)


def test_continuous_quaternions_stay_in_one_hemisphere():
    rng = np.random.default_rng(1)
    q = lbs.axis_angle_to_quaternion(np.cumsum(rng.normal(0, 0.5, (40, 2, 3)), 0))
    q *= np.where(rng.random((40, 2, 1)) < 0.5, -1, 1)
    c = lbs.continuous_quaternions(q)
    assert np.all((c[1:] * c[:-1]).sum(-1) >= 0)
    np.testing.assert_allclose(np.abs((c * q).sum(-1)), 1, atol=1e-12)  # same rotations


def test_skin_matches_the_flame_layer(model, synth):
    import torch

    from backend.head.flame import FlameLayer

    layer = FlameLayer(model, dtype=torch.float64)
    t = 8
    f = lambda a: torch.as_tensor(np.asarray(a, np.float64))  # noqa: E731
    shape, expr = f(synth.shape).expand(t, -1), f(synth.expr[:t])
    pose, trans = f(synth.pose[:t]), f(synth.trans[:t])
    with torch.no_grad():
        want = layer(shape, expr, pose, trans)[0].numpy()
        rest = layer.shaped(shape, expr).numpy()
        joints = layer.rest_joints(shape, expr).numpy()     # FLAME's joints follow the expression
    got = lbs.skin(rest, pose.numpy(), trans.numpy(), joints, model.parents, model.weights)
    assert np.abs(got - want).max() < 1e-6
    # unskin is skin's exact inverse, for every vertex (one joint or several).
    back = lbs.unskin(got, pose.numpy(), trans.numpy(), joints, model.parents, model.weights)
    assert np.abs(back - rest).max() < 1e-9


def test_unskin_inverts_arbitrary_weights_and_unweighted_vertices():
    rng = np.random.default_rng(2)
    v, j = 40, 4
    weights = rng.random((v, j)) * (rng.random((v, j)) < 0.6)
    weights[:3] = 0          # no weight: Blender leaves these undeformed
    weights[3:6] = 0
    weights[3:6, 2] = 0.7    # one joint, weight not 1: normalised like the Armature modifier
    parents = np.array([-1, 0, 1, 1])
    joints, pts = rng.normal(0, 0.1, (j, 3)), rng.normal(0, 0.1, (5, v, 3))
    pose, trans = rng.normal(0, 0.4, (5, 3 * j)), rng.normal(0, 0.1, (5, 3))
    posed = lbs.skin(pts, pose, trans, joints, parents, weights)
    np.testing.assert_allclose(posed[:, :3], pts[:, :3])  # not moved, not even by trans
    np.testing.assert_allclose(lbs.unskin(posed, pose, trans, joints, parents, weights), pts, atol=1e-12)


def test_rig_arrays_are_the_flame_rest_state(model, synth):
    import torch

    from backend.head.flame import FlameLayer

    layer = FlameLayer(model, dtype=torch.float64)
    shape = torch.as_tensor(synth.shape[None], dtype=torch.float64)
    zero = torch.zeros(1, model.n_expr, dtype=torch.float64)
    np.testing.assert_allclose(synth.rig_rest_vertices, layer.shaped(shape, zero)[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(synth.rig_joints, layer.rest_joints(shape, zero)[0].numpy(), atol=1e-6)
    np.testing.assert_array_equal(synth.rig_expr_dirs, model.exprdirs.transpose(2, 0, 1))


# --- micro-detail PCA -----------------------------------------------------------------------------

def _low_rank(t=60, v=300, rank=3, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    fields = rng.normal(0, 1e-4, (rank, v, 3))
    return (np.einsum("tk,kvc->tvc", rng.normal(size=(t, rank)), fields) + rng.normal(0, noise, (t, v, 3)))


def _max_err(res, basis):
    rec = np.einsum("tk,kvc->tvc", basis.weights, basis.keys)
    return np.sqrt(((res - rec) ** 2).sum(-1)).max()


@pytest.mark.parametrize("t", [20, 200])  # exact SVD and the randomized range finder
def test_pca_keeps_the_fewest_keys_within_tolerance(t):
    res = _low_rank(t=t, noise=1e-7)
    b = detail.fit_detail(res, tolerance=5e-6)
    assert b.n_keys == 3
    assert b.max_error <= 5e-6 and b.mean_error < b.max_error
    assert abs(_max_err(res, b) - b.max_error) < 1e-8  # the reported error is the real one
    assert np.abs(b.weights).max() == pytest.approx(1, abs=1e-6)  # fits a -1..1 slider
    assert b.keys.dtype == np.float32 and b.weights.shape == (t, 3)


def test_pca_needs_no_key_for_a_tiny_residual_and_caps_the_count():
    tiny = _low_rank() * 1e-3
    b = detail.fit_detail(tiny, tolerance=5e-5)
    assert b.n_keys == 0 and b.max_error == b.residual_max <= 5e-5
    full = _low_rank(rank=12, seed=3)
    capped = detail.fit_detail(full, tolerance=1e-9, max_keys=4)
    assert capped.n_keys == 4 and capped.max_error > 1e-9
    assert abs(_max_err(full, capped) - capped.max_error) < 1e-8


# --- frame maps -----------------------------------------------------------------------------------

def test_default_frame_map_starts_at_the_scene_start_and_keeps_gaps():
    fi = np.array([100, 101, 103, 110])
    np.testing.assert_array_equal(frame_map.offset_frame_map(fi, 1), [1, 2, 4, 11])
    np.testing.assert_array_equal(frame_map.resolve_frame_map(None, fi, 1), [1, 2, 4, 11])


def test_linear_frame_map_for_a_strip_with_another_rate():
    fi = np.array([0, 8, 16])
    # A 200 fps clip in a 25 fps scene, source frame 0 at scene frame 10: 8 source frames per scene frame.
    np.testing.assert_allclose(frame_map.linear_frame_map(fi, 10, 0, 200, 25), [10, 11, 12])
    np.testing.assert_allclose(frame_map.resolve_frame_map(lambda f: f * 0.5 + 3, fi, 1), [3, 7, 11])
    with pytest.raises(ValueError, match="positive"):
        frame_map.linear_frame_map(fi, 1, 0, 0, 25)


@pytest.mark.parametrize("bad, message", [
    ([1, 2], "gives 2 scene frames for 3"),
    ([1, 1, 2], "strictly increasing"),
    ([1, np.nan, 3], "finite"),
])
def test_bad_frame_maps_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        frame_map.resolve_frame_map(bad, np.arange(3), 1)


# --- rig data -------------------------------------------------------------------------------------

def test_rig_data_reproduces_every_frame(synth):
    rig = rigdata.rig_from_result(synth)
    assert 3 <= rig.detail.n_keys <= 32 and rig.detail.max_error <= 5e-5
    shaped = (rig.rest + np.einsum("te,evc->tvc", rig.expr, rig.expr_dirs)
              + np.einsum("tk,kvc->tvc", rig.detail.weights, rig.detail.keys))
    q = rig.quaternions                       # back to axis-angle through the quaternions
    angle = 2 * np.arctan2(np.linalg.norm(q[..., 1:], axis=-1), q[..., 0])
    axis = q[..., 1:] / np.maximum(np.linalg.norm(q[..., 1:], axis=-1, keepdims=True), 1e-12)
    pose = (axis * angle[..., None]).reshape(len(q), -1)
    posed = lbs.skin(shaped, pose, rig.root_location, rig.joints, rig.parents, rig.weights)
    err = np.sqrt(((posed - synth.vertices) ** 2).sum(-1)).max()
    assert err <= rig.detail.max_error + 1e-6


def test_rig_data_refuses_a_result_without_rig(synth):
    import copy

    from backend.contract.result import RIG_ARRAYS

    old = copy.copy(synth)
    for name in RIG_ARRAYS:
        setattr(old, name, None)
    with pytest.raises(rigdata.RigDataError, match="no rig data .* run the MicroFace backend"):
        rigdata.rig_from_result(old, "clip.npz")


# --- finding the backend --------------------------------------------------------------------------

def test_backend_python_is_found_beside_the_package_or_from_the_environment(tmp_path):
    repo = tmp_path / "repo"
    (repo / "backend").mkdir(parents=True)
    (repo / "backend" / "__init__.py").write_text("")
    py = paths.venv_python(repo)
    py.parent.mkdir(parents=True)
    py.write_text("")
    assert paths.find_backend_python(repo / "microface_blender", environ={}) == str(py)
    installed = tmp_path / "extensions" / "microface"   # an installed zip: its own backend, no .venv, no path
    (installed / "backend").mkdir(parents=True)
    assert paths.find_backend_python(installed, environ={}) == ""
    assert paths.checkout_roots(installed)[0] == installed
    assert paths.find_backend_python(installed, environ={"MICROFACE_PYTHON": sys.executable}) == sys.executable
