"""FLAME loading and forward pass, region labels and asset path resolution, on the open stand-in."""
from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.head import safe_pickle
from backend.config import ASSETS, assets_folder, resolve_asset
from backend.errors import MicroFaceError
from backend.head.flame import FlameLayer, load_flame
from backend.head.regions import REGION_NAMES, region_labels

ENV_VARS = [a.env for a in ASSETS.values()]
ASSET_DIR = assets_folder()
STAND_IN = ASSET_DIR / "microface_ict_flame.pkl"
GLOBAL, NECK, JAW, LEFT_EYE, RIGHT_EYE = range(5)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for env in ENV_VARS:
        monkeypatch.delenv(env, raising=False)


@pytest.fixture(scope="module")
def model():
    return load_flame(STAND_IN, ASSET_DIR)


@pytest.fixture(scope="module")
def layer(model):
    return FlameLayer(model)


@pytest.fixture(scope="module")
def raw():
    """The stand-in's pickled dict, for building modified copies."""
    return safe_pickle.load(STAND_IN)


def _zeros(model, b=1):
    return torch.zeros(b, model.n_shape), torch.zeros(b, model.n_expr), torch.zeros(b, 3 * model.n_joints)


def _posed(layer, model, joint, axis_angle):
    shape, expr, pose = _zeros(model)
    pose[0, 3 * joint:3 * joint + 3] = torch.tensor(axis_angle)
    with torch.no_grad():
        return layer(shape, expr, pose)[0][0].numpy().astype(np.float64)


def test_stand_in_counts_and_names(model):
    assert model.v_template.shape == (5023, 3) and model.faces.shape == (9976, 3)
    assert (model.n_shape, model.n_expr, model.n_joints) == (100, 53, 5)
    assert model.expr_named and len(model.expression_names) == 53
    assert model.joint_names == ["global", "neck", "jaw", "left_eye", "right_eye"]
    assert model.parents.tolist() == [-1, 0, 1, 1, 1]
    assert model.model_id.startswith("microface_ict_flame.pkl@sha256:de2d4ba0503befff")


def test_zero_parameters_give_the_template(model, layer):
    with torch.no_grad():
        verts, joints = layer(*_zeros(model))
    assert np.abs(verts[0].numpy() - model.v_template).max() <= 1e-6
    np.testing.assert_allclose(joints[0].numpy(), model.j_regressor @ model.v_template, atol=1e-6)


@pytest.mark.parametrize("joint", [LEFT_EYE, RIGHT_EYE])
def test_eye_rotation_moves_only_its_eyeball_rigidly(model, layer, joint):
    rest = model.v_template.astype(np.float64)
    posed = _posed(layer, model, joint, [0.0, 0.3, 0.0])
    eyeball = model.weights[:, joint] > 0
    assert eyeball.sum() == 546
    moved = np.linalg.norm(posed - rest, axis=1)
    assert moved[~eyeball].max() <= 1e-7
    assert moved[eyeball].mean() > 2e-3  # measured 3.2 mm for 0.3 rad
    a, b = rest[eyeball], posed[eyeball]
    d_rest = np.linalg.norm(a[:, None] - a[None], axis=-1)
    d_posed = np.linalg.norm(b[:, None] - b[None], axis=-1)
    assert np.abs(d_posed - d_rest).max() <= 1e-6


def test_jaw_opens_the_chin_and_leaves_the_forehead(model, layer):
    rest = model.v_template.astype(np.float64)
    posed = _posed(layer, model, JAW, [0.2, 0.0, 0.0])  # +x opens the mouth
    delta = posed - rest
    chin, forehead = model.region_vertices("chin"), model.region_vertices("forehead")
    assert np.linalg.norm(delta[chin], axis=1).mean() > 8e-3   # measured 16 mm
    assert delta[chin, 1].mean() < -5e-3                       # chin goes down: measured -10.5 mm
    assert np.abs(delta[forehead]).max() <= 1e-6


def test_jaw_pose_slice_is_the_jaw_joints_entries(model):
    assert model.jaw_pose_slice() == slice(3 * JAW, 3 * JAW + 3)
    jawless = dataclasses.replace(model, joint_names=["global", "neck", "left_eye", "right_eye"])
    assert jawless.jaw_pose_slice() == slice(0, 0)


@pytest.mark.parametrize("kind", ["68", "mediapipe"])
def test_landmark_embeddings_lie_on_the_surface(model, layer, kind):
    faces_idx, bary = (model.lmk68_faces, model.lmk68_bary) if kind == "68" else (model.mp_faces, model.mp_bary)
    assert faces_idx.min() >= 0 and faces_idx.max() < len(model.faces)
    assert bary.min() >= -1e-6 and np.abs(bary.sum(1) - 1).max() <= 1e-5
    shape, expr, pose = _zeros(model)
    expr[0] = 0.5
    pose[0, 3 * JAW] = 0.15
    with torch.no_grad():
        verts = layer(shape, expr, pose)[0]
        pts = (layer.landmarks68 if kind == "68" else layer.landmarks_mp)(verts)[0].numpy().astype(np.float64)
    tri = verts[0].numpy().astype(np.float64)[model.faces[faces_idx]]      # (K, 3, 3)
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    assert np.abs(((pts - tri[:, 0]) * normal).sum(1)).max() <= 1e-6     # on the triangle's plane
    # Recover barycentrics from the points: they must be the stored ones, so inside the triangle.
    edges = np.stack([tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]], -1)  # (K, 3, 2)
    uv = np.stack([np.linalg.lstsq(e, p, rcond=None)[0] for e, p in zip(edges, pts - tri[:, 0])])
    recovered = np.column_stack([1 - uv.sum(1), uv])
    assert np.abs(recovered - bary).max() <= 1e-4


def test_landmark_embeddings_follow_the_subjects_sides(model, layer):
    with torch.no_grad():
        lmk = layer.landmarks68(layer(*_zeros(model))[0])[0].numpy()
    assert lmk[36:42, 0].mean() < -0.02 and lmk[42:48, 0].mean() > 0.02  # iBUG 36-41: subject's right eye
    assert lmk[:, 2].argmax() == 30                                       # nose tip is frontmost
    mp = model.mp_indices
    assert len(np.unique(mp)) == len(mp) == len(model.mp_faces) and mp.min() >= 0 and mp.max() < 478


def test_batched_forward_equals_per_frame(model, layer):
    g = torch.Generator().manual_seed(1)
    b = 4
    shape = torch.randn(b, model.n_shape, generator=g)
    expr = torch.rand(b, model.n_expr, generator=g) * 0.5
    pose = torch.randn(b, 3 * model.n_joints, generator=g) * 0.2
    trans = torch.randn(b, 3, generator=g) * 0.1
    with torch.no_grad():
        verts, joints = layer(shape, expr, pose, trans)
        for i in range(b):
            v_i, j_i = layer(shape[i:i + 1], expr[i:i + 1], pose[i:i + 1], trans[i:i + 1])
            assert (v_i[0] - verts[i]).abs().max() <= 1e-6   # measured 3e-8
            assert (j_i[0] - joints[i]).abs().max() <= 1e-6
        # A 1-D shape is shared by all frames.
        v_shared = layer(shape[0], expr, pose, trans)[0]
        assert (v_shared[0] - verts[0]).abs().max() <= 1e-6


def test_gradients_reach_every_parameter(model, layer):
    shape, expr, pose = (t.requires_grad_() for t in _zeros(model, 2))
    trans = torch.zeros(2, 3, requires_grad=True)
    verts = layer(shape, expr, pose, trans)[0]
    target = torch.as_tensor(model.v_template) + 0.001
    ((verts - target) ** 2).sum().backward()
    for name, t in (("shape", shape), ("expr", expr), ("pose", pose), ("trans", trans)):
        assert torch.isfinite(t.grad).all(), name
        assert t.grad.abs().sum() > 0, name
    # Every joint's rotation matters, including at exactly zero pose (the Taylor branch).
    assert (pose.grad.reshape(2, -1, 3).abs().sum(-1) > 0).all()


def test_pose_gradient_matches_finite_differences(model):
    layer64 = FlameLayer(model, dtype=torch.float64)
    # Chin and eyeball vertices: together they depend on all five joints.
    eyes = [np.flatnonzero(model.weights[:, j])[:2] for j in (LEFT_EYE, RIGHT_EYE)]
    idx = torch.as_tensor(np.concatenate([model.region_vertices("chin")[:4], *eyes]))

    def f(pose):
        return layer64(torch.zeros(model.n_shape, dtype=torch.float64),
                       torch.zeros(1, model.n_expr, dtype=torch.float64), pose)[0][:, idx]

    for start in (torch.zeros(1, 15, dtype=torch.float64), torch.full((1, 15), 0.1, dtype=torch.float64)):
        assert torch.autograd.gradcheck(f, (start.requires_grad_(),), eps=1e-6, atol=1e-6, fast_mode=True)


# --- counts come from the file -------------------------------------------------------------------

def _variant(raw: dict, tmp_path: Path, name: str, drop=(), columns: int | None = None, **changes) -> Path:
    d = {k: v for k, v in raw.items() if k not in drop}
    d["shapedirs"] = d["shapedirs"][:, :, :columns].astype(np.float32)  # float32: half the file size
    d.update(changes)
    path = tmp_path / name
    with open(path, "wb") as fh:
        pickle.dump(d, fh, protocol=4)
    return path


def test_expression_count_is_read_from_the_file(raw, tmp_path, monkeypatch):
    path = _variant(raw, tmp_path, "n20.pkl", n_expr=20, expression_names=raw["expression_names"][:20])
    monkeypatch.setenv("MICROFACE_FLAME", str(path))   # also: the environment variable is used
    m = load_flame(assets=ASSET_DIR)
    assert m.path == path.resolve()
    assert (m.n_shape, m.n_expr) == (100, 20)
    assert m.expression_names == raw["expression_names"][:20] and m.expr_named
    np.testing.assert_array_equal(m.exprdirs, raw["shapedirs"][:, :, 300:320].astype(np.float32))
    assert FlameLayer(m)(*_zeros(m))[0].shape == (1, 5023, 3)


def test_official_file_without_count_keys_uses_flame_defaults(raw, tmp_path):
    drop = ("n_shape", "n_expr", "shape_offset", "expr_offset", "expression_names", "identity_names", "joint_names")
    m = load_flame(_variant(raw, tmp_path, "official.pkl", drop=drop), ASSET_DIR)
    assert (m.n_shape, m.n_expr) == (300, 100)
    assert not m.expr_named and m.expression_names[:2] == ["exp000", "exp001"]
    assert m.joint_names == ["global", "neck", "jaw", "left_eye", "right_eye"]
    np.testing.assert_array_equal(m.exprdirs, raw["shapedirs"][:, :, 300:400].astype(np.float32))
    np.testing.assert_array_equal(m.shapedirs, raw["shapedirs"][:, :, :300].astype(np.float32))


def test_official_file_with_fewer_expression_columns(raw, tmp_path):
    drop = ("n_shape", "n_expr", "shape_offset", "expr_offset", "expression_names")
    m = load_flame(_variant(raw, tmp_path, "official350.pkl", drop=drop, columns=350), ASSET_DIR)
    assert (m.n_shape, m.n_expr) == (300, 50)


def test_counts_beyond_the_columns_are_refused(raw, tmp_path):
    path = _variant(raw, tmp_path, "bad.pkl", n_expr=200)
    with pytest.raises(MicroFaceError, match="has 400 blendshape columns, too few for 100 identity and 200"):
        load_flame(path, ASSET_DIR)


# --- regions -------------------------------------------------------------------------------------

def test_regions_are_nonempty_disjoint_and_on_the_right_sides(model):
    labels = model.region_labels
    assert labels.shape == (5023,) and labels.min() == -1 and labels.max() == len(REGION_NAMES) - 1
    sets = {name: set(model.region_vertices(name).tolist()) for name in REGION_NAMES}
    assert all(len(s) >= 50 for s in sets.values()), {k: len(v) for k, v in sets.items()}  # smallest: chin 100
    assert sum(len(s) for s in sets.values()) == len(set().union(*sets.values())) == (labels >= 0).sum()
    centre = {name: model.v_template[list(s)].mean(0) for name, s in sets.items()}
    for side in ("eye", "cheek"):
        assert centre[f"left_{side}"][0] > 0.02 and centre[f"right_{side}"][0] < -0.02  # left = +x
    heights = [centre[n][1] for n in ("forehead", "left_eye", "nose", "mouth", "chin")]
    assert heights == sorted(heights, reverse=True)


def test_region_masks_missing_a_mask_is_an_error(model):
    with pytest.raises(ValueError, match="lacks .*forehead"):
        region_labels({"left_eye_region": [0], "right_eye_region": [1], "nose": [2], "lips": [3], "face": [4]},
                      model.v_template)


# --- path resolution -----------------------------------------------------------------------------

def test_missing_flag_file_names_the_flag_and_the_fix(tmp_path):
    missing = tmp_path / "generic_model.pkl"
    with pytest.raises(MicroFaceError) as err:
        load_flame(missing)
    msg = str(err.value)
    assert str(missing) in msg and "from flag" in msg and "--flame" in msg and "MICROFACE_FLAME" in msg
    assert "\n" not in msg


def test_missing_env_file_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("MICROFACE_FLAME", str(tmp_path / "gone.pkl"))
    with pytest.raises(MicroFaceError, match=r"gone.pkl \(from MICROFACE_FLAME\)"):
        load_flame()


def test_flag_beats_environment_beats_default(tmp_path, monkeypatch):
    env_file = tmp_path / "env.pkl"
    env_file.write_bytes(b"")
    assert resolve_asset("flame", folders=(ASSET_DIR,)) == ASSET_DIR / "microface_ict_flame.pkl"
    with pytest.raises(MicroFaceError, match="--flame PATH"):
        resolve_asset("flame")  # no flag, no variable, no default folder
    monkeypatch.setenv("MICROFACE_FLAME", str(env_file))
    assert resolve_asset("flame", folders=(ASSET_DIR,)) == env_file.resolve()
    assert resolve_asset("flame", STAND_IN) == STAND_IN.resolve()
