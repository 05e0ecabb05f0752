"""Face alignment (similarity fit, smoothing, stability on a still head) and optical flow (sub-pixel
accuracy, parallel = serial, Eq. 18-20 by hand)."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from conftest import shared_video

from backend.capture.align import (STABLE_POINTS, Alignment, align_faces, canonical_points, fit_similarity,
                           smooth_similarities, to_crop, to_source, upscale_transforms, warp_crops)
from backend.config import AlignConfig, FlowConfig, LandmarkConfig
from backend.errors import MicroFaceError
from backend.capture.flow import aligned_flow, crop_flow
from backend.capture.landmarks import detect_landmarks
from backend.capture.video import read_clip


def _similarity(scale: float, angle: float, tx: float, ty: float) -> np.ndarray:
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


# --- alignment ----------------------------------------------------------------------------------

def test_fit_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 500, (3, 10, 2))
    truth = np.stack([_similarity(0.8, 0.3, 12, -40), _similarity(1.7, -2.9, -5, 3), _similarity(1.0, 0, 0, 0)])
    dst = np.einsum("tij,tnj->tni", truth[:, :, :2], src) + truth[:, None, :, 2]
    np.testing.assert_allclose(fit_similarity(src, dst), truth, atol=1e-9)


def test_smoothing_keeps_constant_transforms_and_handles_the_angle_wrap():
    const = np.repeat(_similarity(0.5, 0.2, 30, 40)[None], 9, 0)
    np.testing.assert_allclose(smooth_similarities(const, 224, 2.0), const, atol=1e-9)
    # Angles alternating just either side of +-pi average to pi, not to 0.
    wrap = np.stack([_similarity(1.0, math.pi - 0.05 if t % 2 else -math.pi + 0.05, 0, 0) for t in range(9)])
    sm = smooth_similarities(wrap, 224, 2.0)
    angles = np.arctan2(sm[:, 1, 0], sm[:, 0, 0])
    assert np.all(np.abs(np.abs(angles) - math.pi) < 0.05)
    assert np.allclose(np.hypot(sm[:, 0, 0], sm[:, 1, 0]), 1.0)


def test_to_crop_and_to_source_invert_each_other():
    rng = np.random.default_rng(1)
    m = np.stack([_similarity(0.6, 0.1, 5, 7), _similarity(2.0, -1.0, -30, 2)])
    pts = rng.uniform(0, 640, (2, 5, 2))
    np.testing.assert_allclose(to_source(to_crop(pts, m), m), pts, atol=1e-9)


@pytest.fixture(scope="module")
def single_face_aligned():
    clip = read_clip(shared_video("single_face.mp4"))
    lms = detect_landmarks(clip, LandmarkConfig(detect_hands=False))
    return clip, lms, align_faces(clip, lms, AlignConfig())


def test_alignment_maps_the_stable_points_onto_the_canonical_layout(single_face_aligned):
    clip, lms, al = single_face_aligned
    t = len(clip.frames)
    assert al.crops.shape == (t, 224, 224, 3) and al.crops.dtype == np.uint8 and al.size == 224
    assert al.transforms.shape == (t, 2, 3) and al.transforms.dtype == np.float32
    m = al.transforms.astype(np.float64)
    np.testing.assert_allclose(m[:, 0, 0], m[:, 1, 1], atol=1e-6)   # a similarity: no shear,
    np.testing.assert_allclose(m[:, 0, 1], -m[:, 1, 0], atol=1e-6)  # no reflection
    crop_pts = to_crop(lms.mp[:, list(STABLE_POINTS), :2], al.transforms)
    err = np.linalg.norm(crop_pts - canonical_points(224, AlignConfig().scale), axis=-1)
    assert np.median(err) < 4.0                                       # measured 2.3 px (max 7.8)
    # The crops show the frame: the crop pixel at a mesh point is the frame pixel under it.
    nose = lms.mp[:, 4, :2]
    at = np.rint(to_crop(nose[:, None], al.transforms)[:, 0]).astype(int)
    crop_vals = al.crops[np.arange(t), at[:, 1], at[:, 0]].astype(float)
    src = np.rint(to_source(at[:, None].astype(float), al.transforms)[:, 0]).astype(int)
    frame_vals = clip.frames[np.arange(t), src[:, 1], src[:, 0]].astype(float)
    assert np.abs(crop_vals - frame_vals).mean() < 5                  # measured 1.5 grey levels


def test_alignment_is_stable_on_a_still_head(single_face_aligned):
    clip, lms, al = single_face_aligned
    # Fixed clip pixels: the crop corners and centre of the first frame.
    corners = np.array([[0, 0], [223, 0], [0, 223], [223, 223], [111.5, 111.5]], float)
    src = to_source(corners[None], al.transforms[:1])[0]
    path = to_crop(np.repeat(src[None], len(clip.frames), 0), al.transforms)       # (T, 5, 2)
    step = np.linalg.norm(np.diff(path, axis=0), axis=-1)
    jitter = np.linalg.norm(np.diff(path, 2, axis=0), axis=-1)
    # The head drifts ~30 px and nods over the clip, so the transform must follow it a little; what
    # must be small is its jitter (the second difference). Measured: centre step max 1.34 px,
    # jitter median 0.10 px, max 0.49 px; unsmoothed: median 0.54 px, max 5.95 px.
    assert step[:, 4].max() < 2.5
    assert np.median(jitter) < 0.25 and jitter.max() < 1.0
    raw = fit_similarity(lms.mp[:, list(STABLE_POINTS), :2], canonical_points(224, AlignConfig().scale))
    raw_path = to_crop(np.repeat(src[None], len(clip.frames), 0), raw)
    raw_jitter = np.linalg.norm(np.diff(raw_path, 2, axis=0), axis=-1)
    assert np.median(jitter) < 0.4 * np.median(raw_jitter)
    # What the flow stage sees: motion of the expression-free points between consecutive crops
    # (DIS flow, median over the stable points). Measured median 0.16 px, 95th percentile 0.42 px.
    flow = crop_flow(al.crops, FlowConfig(method="dis"))
    pts = np.rint(canonical_points(224, AlignConfig().scale)).astype(int)
    rigid = np.linalg.norm(np.median(flow[:, pts[:, 1], pts[:, 0]], axis=1), axis=-1)
    assert np.median(rigid) < 0.3 and np.percentile(rigid, 95) < 0.8


def test_align_rejects_mismatched_inputs(single_face_aligned):
    clip, lms, _ = single_face_aligned
    with pytest.raises(MicroFaceError, match="crop size 8 is too small"):
        align_faces(clip, lms, AlignConfig(size=8))
    short = type(lms)(**{**lms.__dict__, "mp": lms.mp[:5]})
    with pytest.raises(MicroFaceError, match="landmarks cover 5 frames but the clip has 72"):
        align_faces(clip, short, AlignConfig())


# --- flow ---------------------------------------------------------------------------------------

def _texture(size: int = 224, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).random((size, size)).astype(np.float32)
    img = cv2.GaussianBlur(noise, (0, 0), 2.0)
    img = (img - img.min()) / (img.max() - img.min()) * 255
    return np.repeat(img.astype(np.uint8)[..., None], 3, -1)


@pytest.mark.parametrize("method, tolerance", [("tvl1", 0.1), ("dis", 0.1)])
def test_flow_recovers_a_subpixel_shift(method, tolerance):
    img = _texture()
    shift = (0.7, -0.4)
    moved = cv2.warpAffine(img, np.float32([[1, 0, shift[0]], [0, 1, shift[1]]]), (224, 224),
                           flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    flow = crop_flow(np.stack([img, moved, img]), FlowConfig(method=method))
    assert flow.shape == (2, 224, 224, 2) and flow.dtype == np.float32
    # Measured error of the interior median: TV-L1 0.031 px, DIS 0.028 px (0.06 / 0.05 at worst over
    # shifts of 0.3-1.5 px and three textures).
    forward = np.median(flow[0, 20:-20, 20:-20].reshape(-1, 2), axis=0)
    backward = np.median(flow[1, 20:-20, 20:-20].reshape(-1, 2), axis=0)
    np.testing.assert_allclose(forward, shift, atol=tolerance)
    np.testing.assert_allclose(backward, -np.array(shift), atol=tolerance)


@pytest.mark.parametrize("method", ["tvl1", "dis"])
def test_identical_frames_have_zero_flow(method):
    img = _texture(seed=1)
    flow = crop_flow(np.stack([img, img]), FlowConfig(method=method))
    assert np.abs(flow).max() < 1e-3


def test_threaded_flow_equals_serial():
    frames = np.stack([np.roll(_texture(96, seed=2), k, axis=1) for k in range(4)])
    calls = []
    serial = crop_flow(frames, FlowConfig(workers=1))
    threaded = crop_flow(frames, FlowConfig(workers=2), progress=lambda *a: calls.append(a))
    np.testing.assert_array_equal(serial, threaded)
    assert calls[-1] == ("flow", 3, 3)


def _framed(shift_px: tuple[float, float]):
    """Two 640 px frames of one texture, the second moved by ``shift_px`` frame pixels, and an
    alignment that crops a rotated 448 px square of them to 224 px (0.5 crop px per frame px)."""
    big = cv2.resize(_texture(320, seed=3), (640, 640), interpolation=cv2.INTER_CUBIC)
    moved = cv2.warpAffine(big, np.float32([[1, 0, shift_px[0]], [0, 1, shift_px[1]]]), (640, 640),
                           flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    m = np.repeat(_similarity(0.5, 0.2, -40, -5)[None], 2, 0).astype(np.float32)
    frames = np.stack([big, moved])
    return frames, Alignment(crops=warp_crops(frames, m, 224), transforms=m, size=224)


def test_upscaled_transforms_keep_the_framing():
    frames, al = _framed((0.0, 0.0))
    big = warp_crops(frames, upscale_transforms(al.transforms, 2), 448)
    down = np.stack([cv2.resize(c, (224, 224), interpolation=cv2.INTER_AREA) for c in big]).astype(float)
    # Measured 0.43 grey levels; framing off by half a large-crop pixel (or x_big = 2 x) gives 3.3.
    assert np.abs(down - al.crops)[:, 8:-8, 8:-8].mean() < 1.5
    pts = np.array([[[3.0, 7.0], [100.5, 20.25]]] * 2)
    np.testing.assert_allclose(to_crop(pts, upscale_transforms(al.transforms, 2)),
                               2 * to_crop(pts, al.transforms) + 0.5, atol=1e-4)


@pytest.mark.parametrize("method, supersample", [("dis", 1), ("dis", 2), ("tvl1", 2)])
def test_aligned_flow_is_in_crop_pixels_at_any_supersampling(method, supersample):
    shift = (0.8, -0.6)                  # frame pixels; the crop is rotated by 0.2 rad at 0.5 px/px
    frames, al = _framed(shift)
    flow = aligned_flow(frames, al, FlowConfig(method=method, supersample=supersample))
    assert flow.shape == (1, 224, 224, 2) and flow.dtype == np.float32
    expected = al.transforms[0, :, :2].astype(float) @ np.array(shift)
    # Measured error of the interior median over shifts of 0.3-1.5 frame px: DIS 0.037 (1x) and
    # 0.012 (2x) crop px, TV-L1 0.028 (2x).
    np.testing.assert_allclose(np.median(flow[0, 24:-24, 24:-24].reshape(-1, 2), axis=0), expected, atol=0.08)


def test_flow_rejects_bad_input():
    with pytest.raises(MicroFaceError, match="unknown flow method 'farneback'"):
        crop_flow(np.zeros((2, 8, 8, 3), np.uint8), FlowConfig(method="farneback"))
    with pytest.raises(MicroFaceError, match="at least 2 frames"):
        crop_flow(np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(MicroFaceError, match="crop side 9 is not a multiple of the flow reduction 2"):
        crop_flow(np.zeros((2, 9, 9, 3), np.uint8), reduce=2)
    frames, al = _framed((0.0, 0.0))
    with pytest.raises(MicroFaceError, match="supersampling must be a positive integer"):
        aligned_flow(frames, al, FlowConfig(supersample=0))


