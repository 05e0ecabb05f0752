"""ARKit-52 weights from meshes (backend/head/arkit.py): meshes made from known weights come back,
the rotations compose as the skeleton does, and every result carries them. Bounds are from the
measurements in the comments (2026-12-06)."""
from __future__ import annotations

import numpy as np
import pytest

from backend.contract.result import ARKIT_NAMES
from backend.head.arkit import arkit_matrix, arkit_weights, basis_name, head_and_eye_rotations, solve_weights
from backend.head.flame import FlameLayer, head_space
from conftest import shared_video


def _known(model, frames: int = 30, seed: int = 3):
    """Basis weights (T, 53): 1-6 shapes a frame at 0..1, the merged pairs' halves alike."""
    rng = np.random.default_rng(seed)
    w = np.zeros((frames, model.n_expr))
    for t in range(frames):
        k = rng.integers(1, 7)
        w[t, rng.choice(model.n_expr, k, replace=False)] = rng.uniform(0.05, 1.0, k)
    names = model.expression_names
    for left, right in (("browInnerUp_L", "browInnerUp_R"), ("cheekPuff_L", "cheekPuff_R")):
        w[:, names.index(right)] = w[:, names.index(left)]
    return w


def test_names_follow_apple_and_map_onto_the_basis(head_model):
    assert len(ARKIT_NAMES) == 52 == len(set(ARKIT_NAMES))
    assert ARKIT_NAMES[:2] == ("eyeBlinkLeft", "eyeLookDownLeft") and ARKIT_NAMES[-1] == "tongueOut"
    assert basis_name("eyeBlinkLeft") == "eyeBlink_L" and basis_name("mouthLeft") == "mouthLeft"
    m = arkit_matrix(head_model.expression_names)
    assert m.shape == (52, 53) and np.allclose(m.sum(1)[[ARKIT_NAMES.index("tongueOut")]], 0)
    for merged in ("browInnerUp", "cheekPuff"):
        assert sorted(m[ARKIT_NAMES.index(merged)][m[ARKIT_NAMES.index(merged)] > 0]) == [0.5, 0.5]
    assert ((m > 0).sum(0) == 1).all()   # every basis shape lands in exactly one ARKit weight


def test_known_weights_come_back_from_the_meshes(head_model):
    w = _known(head_model)
    layer = FlameLayer(head_model).double()
    pose = np.zeros((len(w), 3 * head_model.n_joints))
    shape = np.zeros(head_model.n_shape)
    got = arkit_weights(head_model, head_space(layer, shape, w, pose), shape)
    want = w @ arkit_matrix(head_model.expression_names).T
    assert got.min() >= 0 and got.max() <= 1
    assert np.abs(got - want).max() < 1e-4          # measured 3e-8


def test_the_jaw_joint_reads_as_jaw_open(head_model):
    # FLAME opens the mouth with a joint, ARKit with a shape: the solve from the meshes carries it over.
    layer = FlameLayer(head_model).double()
    pose = np.zeros((3, 3 * head_model.n_joints))
    pose[:, head_model.jaw_pose_slice().start] = [0.05, 0.1, 0.2]   # radians
    zeros = np.zeros((3, head_model.n_expr))
    shape = np.zeros(head_model.n_shape)
    w = arkit_weights(head_model, head_space(layer, shape, zeros, pose), shape)
    jaw = w[:, ARKIT_NAMES.index("jawOpen")]
    assert (np.argmax(w, 1) == ARKIT_NAMES.index("jawOpen")).all()    # measured 0.13, 0.26, 0.52
    assert (np.diff(jaw) > 0.1).all()


def test_the_bounds_hold_where_least_squares_would_leave_them():
    rng = np.random.default_rng(0)
    dirs = rng.standard_normal((40, 3, 4)) * 1e-3
    target = np.array([[1.5, -0.5, 0.3, 0.0]])        # outside the box in two coordinates
    disp = np.einsum("nck,tk->tnc", dirs, target)
    w = solve_weights(disp, dirs)
    assert (w >= 0).all() and (w <= 1).all()
    # the bounded optimum: no feasible step along any coordinate lowers the error
    a = dirs.reshape(-1, 4)
    grad = a.T @ (a @ w[0] - disp[0].ravel())
    assert all((g >= -1e-12 if x <= 0 else g <= 1e-12 if x >= 1 else abs(g) < 1e-9) for g, x in zip(grad, w[0]))


def test_head_rotation_is_global_then_neck_and_eyes_pass_through(head_model):
    from scipy.spatial.transform import Rotation

    pose = np.zeros((2, 3 * head_model.n_joints))
    pose[:, 0:3] = [0.0, 0.3, 0.0]                  # global: yaw
    pose[:, 3:6] = [0.2, 0.0, 0.1]                  # neck
    pose[1, 9:12], pose[1, 12:15] = [0.05, -0.1, 0.0], [0.05, -0.12, 0.0]
    head, eyes = head_and_eye_rotations(head_model, pose)
    want = (Rotation.from_rotvec(pose[0, 0:3]) * Rotation.from_rotvec(pose[0, 3:6])).as_rotvec()
    np.testing.assert_allclose(head[0], want, atol=1e-6)
    np.testing.assert_allclose(eyes[1], [[0.05, -0.1, 0.0], [0.05, -0.12, 0.0]], atol=1e-7)


@pytest.mark.slow
def test_the_smile_in_single_face_raises_mouth_smile(tmp_path):
    from backend.cli import main
    from backend.contract.result import read_result

    out = tmp_path / "r.npz"
    assert main(["reconstruct", str(shared_video("single_face.mp4")), "-o", str(out), "--quiet"]) == 0
    res = read_result(out)
    assert res.arkit_weights.shape == (res.n_frames, 52) and res.head_rotation.shape == (res.n_frames, 3)
    for name in ("mouthSmileLeft", "mouthSmileRight"):   # measured 0.05 -> 0.29 and 0.03 -> 0.34 at the peak
        curve = res.arkit_weights[:, ARKIT_NAMES.index(name)]
        assert curve.max() > curve[0] + 0.15, name
    assert res.arkit_weights[:, ARKIT_NAMES.index("tongueOut")].max() == 0
