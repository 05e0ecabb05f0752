"""The injected family's image side: warp, field inversion, densify, lossless files, window lists.

Pure numpy/cv2 (no MediaPipe, no fit). The textured test image has wavelengths 17-31 px and
amplitude ~70 grey levels; bounds below were measured on it (2024 run) and given ~2x headroom.
"""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.families.injected import (HELDOUT_WINDOWS, POST_FRAMES, PRE_FRAMES, TRAINING_WINDOWS, densify,
                                          destination_field, draw_timing, overlaps_heldout, sample_cubic,
                                          training_ranges, warp_frame, write_video)

H, W = 120, 160
INNER = (slice(8, -8), slice(8, -8))   # away from the clamped image border


def _tex(x, y):
    return 128 + 40 * np.sin(2 * np.pi * x / 23 + 0.3) * np.cos(2 * np.pi * y / 17) + 30 * np.sin(2 * np.pi * (x + y) / 31)


def _image(x, y):
    return np.stack([_tex(x, y), _tex(x + 5, y - 3), _tex(y, x)], -1)


@pytest.fixture(scope="module")
def grid():
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    return xx, yy


def _bump(x, y, centre=(80.0, 60.0), sigma=15.0, amp=(2.5, -1.8)):
    g = np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * sigma ** 2))
    return g[..., None] * np.asarray(amp)


def test_cubic_sampling_is_exact_at_integers_and_on_quadratics(grid):
    xx, yy = grid
    img = np.random.default_rng(0).integers(0, 256, (H, W, 3)).astype(np.float64)
    assert np.array_equal(sample_cubic(img, xx, yy), img)
    quad = (0.01 * xx ** 2 - 0.3 * xx * yy / 50 + 2 * yy)[..., None]
    x, y = xx[10:-10, 10:-10] + 0.37, yy[10:-10, 10:-10] - 0.81
    want = 0.01 * x ** 2 - 0.3 * x * y / 50 + 2 * y
    assert np.abs(sample_cubic(quad, x, y)[..., 0] - want).max() < 1e-9


def test_constant_shift_matches_the_shifted_image(grid):
    xx, yy = grid
    img_f = _image(xx, yy)
    c = np.array([1.37, -0.62])
    field = np.broadcast_to(c, (H, W, 2)).copy()
    want = _image(xx - c[0], yy - c[1])
    # Interpolation alone (float image): measured 0.034 grey levels.
    assert np.abs(warp_frame(img_f, field) - want)[INNER].max() < 0.08
    # uint8 in and out: within one level of the exactly shifted image (measured 0.986).
    out = warp_frame(np.rint(img_f).astype(np.uint8), field)
    assert out.dtype == np.uint8
    assert np.abs(out - want)[INNER].max() < 1.5
    assert np.abs(out.astype(int) - np.rint(want))[INNER].max() <= 1


def test_smooth_field_inverts_and_warps_to_the_exact_answer(grid):
    xx, yy = grid
    field = _bump(xx, yy)                       # peak 3.1 px, gradient up to 0.1
    field[np.linalg.norm(field, axis=-1) < 1e-6] = 0.0
    # Exact: the source point y of destination x solves y + d(y) = x (60 fixed-point steps on d itself).
    x = np.stack([xx, yy], -1)
    y = x - _bump(xx, yy)
    for _ in range(60):
        y = x - _bump(y[..., 0], y[..., 1])
    d_dest = x - y
    dt, (r0, r1, c0, c1) = destination_field(field, 3)
    # Measured 0.0024 px (the bilinear sampling of d); 1 iteration only: 0.028.
    assert np.abs(dt - d_dest[r0:r1, c0:c1]).max() < 0.005
    want = _image(y[..., 0], y[..., 1])
    img_f = _image(xx, yy)
    assert np.abs(warp_frame(img_f, field) - want)[INNER].max() < 0.12      # measured 0.061
    out = warp_frame(np.rint(img_f).astype(np.uint8), field)
    assert np.abs(out - want)[INNER].max() < 1.5                             # measured 1.03


def test_zero_displacement_is_bit_identical(grid):
    xx, yy = grid
    img = np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)
    assert np.array_equal(warp_frame(img, np.zeros((H, W, 2))), img)
    # A compact field: every pixel whose destination displacement is 0 keeps its bits.
    field = np.zeros((H, W, 2))
    field[50:60, 70:80] = (0.6, 0.4)
    dt, (r0, r1, c0, c1) = destination_field(field)
    out = warp_frame(img, field)
    moved = np.zeros((H, W), bool)
    moved[r0:r1, c0:c1] = (dt != 0).any(-1)
    assert moved.sum() < 400
    assert np.array_equal(out[~moved], img[~moved])
    assert not np.array_equal(out, img)


def test_densify_interpolates_exactly_inside_and_fades_outside():
    from backend.head.render import rasterize

    # A square of two triangles, orthographic (depth 1): barycentrics are affine, so an affine
    # vertex displacement must come back exactly on its pixels.
    verts = np.array([[40.0, 30.0], [120.0, 30.0], [120.0, 90.0], [40.0, 90.0]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    disp = np.stack([0.01 * verts[:, 0] + 0.5, -0.02 * verts[:, 1] + 0.3], 1)
    fidx, bary, _ = rasterize(verts[faces], np.ones((2, 3)), W, H)
    feather = 6.0
    field = densify(fidx, bary, faces, disp, np.array([True, True]), feather)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    inside = fidx >= 0
    want = np.stack([0.01 * xx + 0.5, -0.02 * yy + 0.3], -1)
    assert np.abs(field[inside] - want[inside]).max() < 1e-9
    far = (xx < 40 - feather - 1) | (xx > 120 + feather + 1) | (yy < 30 - feather - 1) | (yy > 90 + feather + 1)
    assert np.abs(field[far]).max() == 0.0
    # No seam: neighbouring pixels differ by at most the border value / the falloff width (plus slack).
    step = max(np.abs(np.diff(field, axis=0)).max(), np.abs(np.diff(field, axis=1)).max())
    assert step < 1.5 * np.abs(disp).max() / feather
    # A triangle left out of the mask carries no field of its own beyond the falloff.
    half = densify(fidx, bary, faces, disp, np.array([True, False]), feather)
    assert np.abs(half[inside & (fidx == 0)] - want[inside & (fidx == 0)]).max() < 1e-9
    assert np.abs(half[(yy > 80) & (xx < 55) & (fidx == 1)]).max() == 0.0


@pytest.mark.parametrize("fps", [30.0, 24000 / 1001])
def test_lossless_round_trip(tmp_path, fps):
    from backend.capture.video import read_clip

    frames = np.random.default_rng(2).integers(0, 256, (6, 36, 64, 3), dtype=np.uint8)
    path = write_video(tmp_path / "clip.avi", frames, fps)          # checks the round trip itself
    back = read_clip(path)
    assert np.array_equal(back.frames, frames)
    assert len(back.frames) == 6 and abs(back.fps - fps) < 1e-3 * fps


def test_windows_and_timing():
    for w in HELDOUT_WINDOWS:
        assert 24 <= w.count <= 40
        assert overlaps_heldout(w.clip, w.start, w.count)
        others = [o for o in HELDOUT_WINDOWS if o is not w and o.clip == w.clip]
        assert all(o.end < w.start or o.start > w.end for o in others)
        for a, b in training_ranges(w.clip):
            assert not overlaps_heldout(w.clip, a, b - a + 1)
    assert len({w.seed for w in HELDOUT_WINDOWS}) == len(HELDOUT_WINDOWS)
    assert len({w.clip for w in HELDOUT_WINDOWS}) == 3
    assert training_ranges("single_face.mp4") == [(0, 3), (32, 43)]
    # Windows for choosing settings never share a frame with a held-out one, nor a seed.
    for w in TRAINING_WINDOWS:
        assert not overlaps_heldout(w.clip, w.start, w.count)
        assert any(a <= w.start and w.end <= b for a, b in training_ranges(w.clip))
    assert not {w.seed for w in TRAINING_WINDOWS} & {w.seed for w in HELDOUT_WINDOWS}
    for seed in range(200):
        n, fps = (24, 40)[seed % 2], (23.976, 30.0)[seed % 3 % 2]
        onset, apex, offset = draw_timing(np.random.default_rng(seed), n, fps)
        assert PRE_FRAMES <= onset < apex < offset <= n - 1 - POST_FRAMES
        assert 3 <= offset - onset and (offset - onset) / fps <= 0.5 + 0.5 / fps
