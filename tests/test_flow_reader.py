"""backend/capture/flow_reader.py on constructed cases with exact answers: a head whose expression change
is known, seen through flows built from its true image motion."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from backend.head.camera import default_intrinsics, project_np
from backend.config import ReaderConfig
from backend.head.flame import FlameLayer, head_space
from backend.capture.flow import anchor_pairs
from backend.capture.flow_reader import motion_noise_mm2, read_flow

T = 7
SIZE = 448          # the crop is the image: align = identity
W = H = SIZE


def _head_clip(model, dpsi_apex: np.ndarray, rotate_deg: float, fit_sees_expression: bool = False):
    """A head 0.5 m in front of the camera whose ψ (expression ⊕ jaw) moves by profile_t * dpsi_apex
    while it turns by up to ``rotate_deg`` about y. Returns the fit (the truth without the turn, which
    the reader must find, and without the expression change unless ``fit_sees_expression``), the crop
    positions and depths of every vertex per frame, the camera and the true head-space meshes."""
    jaw = model.jaw_pose_slice()
    n = model.n_expr
    layer = FlameLayer(model, dtype=torch.float64)
    profile = np.array([0, 0, 0.3, 0.8, 1.0, 0.6, 0.2])
    shape = np.zeros(model.n_shape)
    expr = np.zeros((T, n)) + profile[:, None] * dpsi_apex[None, :n]
    pose = np.zeros((T, 3 * model.n_joints))
    pose[:, jaw] = profile[:, None] * dpsi_apex[None, n:]
    turned = pose.copy()
    turned[:, 1] = np.radians(rotate_deg) * np.linspace(0, 1, T)
    with torch.no_grad():
        neutral, _ = layer(torch.zeros(1, model.n_shape, dtype=torch.float64),
                           torch.zeros(1, n, dtype=torch.float64), torch.zeros(1, 3 * model.n_joints, dtype=torch.float64))
        centre = neutral[0].numpy()[model.region_labels >= 0].mean(0)
        trans = np.tile(np.array([0.0, 0.0, -0.5]) - centre, (T, 1))
        cam, _ = layer(torch.as_tensor(shape)[None].expand(T, -1), torch.as_tensor(expr), torch.as_tensor(turned),
                       torch.as_tensor(trans))
    intr = default_intrinsics(W, H, focal=1.5 * H)
    crop = project_np(cam.numpy(), intr)                                           # (T, V, 2)
    fit = dict(shape=shape, expr=expr if fit_sees_expression else np.zeros((T, n)),
               pose=pose if fit_sees_expression else np.zeros_like(pose), trans=trans)
    return fit, crop, -cam.numpy()[..., 2], intr, head_space(layer, shape, expr, pose), layer


def _flows_from_motion(crop: np.ndarray, depth: np.ndarray, faces: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Dense flow maps (M, S, S, 2) for ``pairs``: at each crop pixel, the true displacement of the
    surface point the source frame shows there (its visible triangle's corners' displacements,
    barycentrically mixed): what a perfect optical flow would report. 0 off the head."""
    from backend.head.render import rasterize

    out = np.zeros((len(pairs), SIZE, SIZE, 2), np.float32)
    for m, (src, dst) in enumerate(pairs):
        tri, bary, _ = rasterize(crop[src][faces], depth[src][faces], SIZE, SIZE, cull_backfaces=True)
        hit = tri >= 0
        d = (crop[dst] - crop[src])[faces[tri[hit]]]                                # (n, 3, 2)
        out[m][hit] = (bary[hit][:, :, None] * d).sum(1)
    return out


@pytest.fixture(scope="module")
def smile(head_model):
    """ψ at the apex: a one-sided smile of the stand-in (0.4 mm mean over the face at the apex).

    Its motion lies mostly across the image. Motion along the view ray is not seen by any flow: a
    jaw opening, which the stand-in can make with its jaw joint or its jawOpen shape, is read with
    the image motion right (residual 0.002 px) but 35 % off in 3D."""
    dpsi = np.zeros(head_model.n_expr + 3)
    dpsi[list(head_model.expression_names).index("mouthSmile_L")] = 0.3
    return dpsi


def _read_known_change(head_model, dpsi_apex, cfg, pairs, fit_sees_expression=False):
    """The change ``dpsi_apex`` of a head turning by 1°, read through exact flows for ``pairs``
    under ``cfg``. Returns the read head-space motion's error and the true motion, both (T, F, 3)
    m over the F face vertices, and the reading."""
    fit, crop, depth, intr, true_head, layer = _head_clip(head_model, dpsi_apex, 1.0, fit_sees_expression)
    flows = _flows_from_motion(crop, depth, head_model.faces, pairs)
    reading = read_flow(head_model, flows, np.tile(np.array([[1.0, 0, 0], [0, 1.0, 0]]), (T, 1, 1)), intr, (W, H),
                        fit["shape"], fit["expr"], fit["pose"], fit["trans"], np.ones(T, bool), 200.0, SIZE, cfg, pairs)
    read_head = head_space(layer, fit["shape"], reading.expr, reading.pose)
    face = head_model.region_labels >= 0
    motion = (true_head - true_head[:1])[:, face]
    return (read_head - read_head[:1])[:, face] - motion, motion, reading


def _recovered(diff, motion, axes=(0, 1, 2)):
    axes = list(axes)
    return 1.0 - np.linalg.norm(diff[..., axes], axis=-1).mean() / np.linalg.norm(motion[..., axes], axis=-1).mean()


@pytest.mark.parametrize("anchored", [False, True])
def test_reader_recovers_a_known_expression_change_and_absorbs_a_head_turn(head_model, smile, anchored):
    pairs = anchor_pairs(T, 3) if anchored else anchor_pairs(T, 1)
    cfg = dataclasses.replace(ReaderConfig(), prior_weight=1e-7, noise_weight=0.0, patterns=1, smooth_s=0.0)
    diff, motion, _ = _read_known_change(head_model, smile, cfg, pairs)
    # Recovered share, measured: across the image (head x, y; the face looks at the camera) 0.969
    # chained and 0.960 anchored; in 3D 0.965 and 0.947, since motion along the view ray is seen
    # only through the model's shapes. The issue asks for 5 % across the image.
    assert _recovered(diff, motion, [0, 1]) > 0.95
    assert _recovered(diff, motion) > 0.93


def test_prior_pulls_towards_the_share_of_the_fits_change_that_the_flow_confirms(head_model, smile):
    strong = dataclasses.replace(ReaderConfig(), prior_weight=10.0, noise_weight=0.0, patterns=1, smooth_s=0.0)
    pairs = anchor_pairs(T, 1)
    shrunk = _recovered(*_read_known_change(head_model, smile, dataclasses.replace(strong, fit_prior=0.0), pairs, True)[:2])
    # The fit saw the smile and the flow shows all of it: the share is 1 and the strong prior,
    # now centred on the truth, no longer shrinks it (measured: share 0.994, recovered 0.993 against
    # 0.001 without the pull).
    diff, motion, reading = _read_known_change(head_model, smile, dataclasses.replace(strong, fit_prior=1.0), pairs, True)
    assert abs(reading.fit_share - 1.0) < 0.02
    assert _recovered(diff, motion) > 0.93 > shrunk + 0.3
    # A fit that saw no change gives the prior nothing to pull towards.
    *_, blind = _read_known_change(head_model, smile, dataclasses.replace(strong, fit_prior=1.0), pairs, False)
    assert blind.fit_share == 0.0


def test_reader_reads_nothing_from_a_still_face(head_model):
    fit, _, _, intr, _, _ = _head_clip(head_model, np.zeros(head_model.n_expr + 3), rotate_deg=0.0)
    flows = np.zeros((T - 1, SIZE // 2, SIZE // 2, 2), np.float32)              # pooled grid, no motion
    reading = read_flow(head_model, flows, np.tile(np.array([[1.0, 0, 0], [0, 1.0, 0]]), (T, 1, 1)), intr, (W, H),
                        fit["shape"], fit["expr"], fit["pose"], fit["trans"], np.ones(T, bool), 200.0, SIZE)
    assert np.abs(reading.dpsi).max() < 1e-9
    assert reading.points > 500


def test_motion_noise_is_the_variance_of_white_noise_and_ignores_slow_motion():
    rng = np.random.default_rng(0)
    p, t, sigma = 50, 4000, 0.03
    gram = np.eye(p) / p                                  # mean over p coordinates: |u|²_B = mean u²
    solved = np.ones(t, bool)
    solved[0] = False                                     # the onset is never solved
    slow = np.linspace(0, 1, t)[:, None] * np.ones(p)     # 1 mm over the clip: 0.00025 mm a frame
    noisy = slow + rng.normal(0, sigma, (t, p))
    # Median of a chi-square with p degrees of freedom, over p: (1 - 2 / (9p))^3.
    expected = sigma ** 2 * (1 - 2 / (9 * p)) ** 3
    assert abs(motion_noise_mm2(noisy, solved, gram) - expected) < 0.03 * expected
    assert motion_noise_mm2(slow, solved, gram) < 1e-7


def test_reader_weight_rises_with_the_clips_noise(head_model):
    fit, _, _, intr, _, _ = _head_clip(head_model, np.zeros(head_model.n_expr + 3), rotate_deg=0.0)
    rng = np.random.default_rng(1)
    flows = rng.normal(0, 2.0, (T - 1, SIZE // 2, SIZE // 2, 2)).astype(np.float32)   # flow noise, crop px
    args = (np.tile(np.array([[1.0, 0, 0], [0, 1.0, 0]]), (T, 1, 1)), intr, (W, H), fit["shape"], fit["expr"],
            fit["pose"], fit["trans"], np.ones(T, bool), 200.0, SIZE)
    adaptive = read_flow(head_model, flows, *args)
    fixed = read_flow(head_model, flows, *args, dataclasses.replace(ReaderConfig(), noise_weight=0.0))
    assert adaptive.noise_mm > 0 and fixed.noise_mm == 0
    assert adaptive.prior_weight > ReaderConfig().prior_weight == fixed.prior_weight
    # The stronger prior reads less of the noise as motion.
    assert np.abs(adaptive.dpsi).max() < np.abs(fixed.dpsi).max()
