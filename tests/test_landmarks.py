"""Landmarks on real clips (one face, a hand over the mouth, cuts and no faces), face selection and
tracking with several faces, the flagging rules, and the FAN plumbing (without FAN's weights)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import shared_video, write_video

from backend.config import LandmarkConfig, VideoConfig
from backend.errors import MicroFaceError
from backend.capture.fan import FAN_WEIGHT_FILES, decode_fan_heatmaps, fan_crop_transforms, find_fan_weights
from backend.capture.landmarks import N_MP, detect_landmarks, hand_coverage, interpolate_invalid, mesh_outliers, shot_cuts
from backend.capture.video import Clip, read_clip


@pytest.fixture(autouse=True)
def no_fan_weights(tmp_path, monkeypatch):
    """Every test sees an empty weights cache, whatever this machine has downloaded."""
    monkeypatch.delenv("MICROFACE_FAN_DIR", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def _runs(mask: np.ndarray, frame_indices: np.ndarray) -> list[tuple[int, int]]:
    out, start = [], None
    for i, m in enumerate(mask):
        if m and start is None:
            start = i
        if start is not None and (not m or i == len(mask) - 1):
            end = i if m else i - 1
            out.append((int(frame_indices[start]), int(frame_indices[end])))
            start = None
    return out


# --- real clips -------------------------------------------------------------------------------

def test_single_face_every_frame_valid():
    clip = read_clip(shared_video("single_face.mp4"))
    calls = []
    lms = detect_landmarks(clip, LandmarkConfig(), progress=lambda *a: calls.append(a))
    t = len(clip.frames)
    assert lms.valid.all() and not lms.interpolated.any() and not lms.occluded.any() and not lms.outlier.any()
    assert lms.mp.shape == (t, N_MP, 3) and lms.mp.dtype == np.float32 and np.isfinite(lms.mp).all()
    assert (lms.n_faces == 1).all()
    # Pixels of the clip frame: the face sits inside the 640x360 frame, boxes enclose the mesh.
    assert (lms.mp[..., 0] > 0).all() and (lms.mp[..., 0] < 640).all()
    assert (lms.mp[..., 1] > 0).all() and (lms.mp[..., 1] < 360).all()
    np.testing.assert_allclose(lms.boxes[:, :2], lms.mp[..., :2].min(1), atol=1e-3)
    face_width = lms.boxes[:, 2] - lms.boxes[:, 0]
    assert 100 < face_width.mean() < 250
    # z has the scale of x: the face's depth range is a sizeable fraction of its width.
    depth = lms.mp[..., 2].max(1) - lms.mp[..., 2].min(1)
    assert (0.3 * face_width < depth).all() and (depth < 1.5 * face_width).all()
    assert lms.lmk68 is None and lms.lmk68_source == "flame_embedding"
    assert calls[-1] == ("landmarks", t, t)


def test_hand_over_mouth_frames_are_flagged():
    # WolfgangLanger_Pexels.mp4: the hand covers the lower face in source frames 58-227 (checked by
    # eye, frame by frame); MediaPipe keeps a face there, so the hand detector must flag them.
    clip = read_clip(shared_video("WolfgangLanger_Pexels.mp4"), VideoConfig(start=50, end=240))
    lms = detect_landmarks(clip, LandmarkConfig())
    idx = clip.frame_indices
    covered = (idx >= 58) & (idx <= 227)
    assert lms.occluded[covered].all() and not lms.valid[covered].any()
    assert lms.valid[idx <= 55].all() and lms.valid[idx >= 232].all()
    # One run: measured 58-229 (the hand is detected from 59 to 228, padded by a frame each side).
    (first, last), = _runs(~lms.valid, idx)
    assert 56 <= first <= 58 and 227 <= last <= 231
    assert np.array_equal(lms.interpolated, ~lms.valid) and np.isfinite(lms.mp).all()
    # Filled frames lie on the straight line between the last and next valid frames.
    mid = np.searchsorted(idx, 140)
    a, b = np.searchsorted(idx, 57), np.searchsorted(idx, 230)
    w = (mid - a) / (b - a)
    np.testing.assert_allclose(lms.mp[mid], (1 - w) * lms.mp[a] + w * lms.mp[b], atol=1e-3)


def test_cuts_and_faceless_shots_give_an_honest_partial_track():
    # clip_01_tears_of_steel.mp4: robot and a distant figure (0-64), cut at 65 to a man with glasses
    # (65-184), robot (185-~222), a woman (223-239). The man is the largest face over time, so he is tracked;
    # the woman is another shot, so her frames are not passed off as his.
    clip = read_clip(shared_video("clip_01_tears_of_steel.mp4"))
    lms = detect_landmarks(clip, LandmarkConfig())
    valid = np.flatnonzero(lms.valid)
    assert valid.min() >= 65 and valid.max() <= 184 and len(valid) >= 110
    assert (lms.n_faces[:65] == 0).all()
    assert (lms.n_faces[225:] >= 1).all() and not lms.valid[185:].any()
    assert lms.interpolated[:65].all() and np.isfinite(lms.mp).all()
    # Frames before the first valid one hold its landmarks.
    np.testing.assert_array_equal(lms.mp[0], lms.mp[valid[0]])


def test_a_face_hidden_by_a_hand_in_all_its_frames_is_an_error():
    # The second face (frames 94-98) holds her head with her hand in all five frames.
    clip = read_clip(shared_video("clip_01_tears_of_steel.mp4"), VideoConfig(start=85, end=110))
    with pytest.raises(MicroFaceError, match=r"only 0 of the 26 frames .* hand-occluded 5.* at least 2 are needed"):
        detect_landmarks(clip, LandmarkConfig(face_index=1))


# --- several faces, no face -------------------------------------------------------------------

def _side_by_side(face: np.ndarray, left_scale, right_scale, hide_left=()) -> np.ndarray:
    """(T, 360, 640, 3): two copies of ``face`` (T, 320, 320, 3) centred at x = 160 and 480, scaled
    per frame by left_scale(t) / right_scale(t); the left one is left out in frames ``hide_left``."""
    frames = []
    for t in range(len(face)):
        canvas = np.full((360, 640, 3), 90, np.uint8)
        for s, cx in ((left_scale(t), 160), (right_scale(t), 480)):
            if cx == 160 and t in hide_left:
                continue
            side = int(round(320 * s))
            y0, x0 = 180 - side // 2, cx - side // 2
            canvas[y0:y0 + side, x0:x0 + side] = cv2.resize(face[t], (side, side), interpolation=cv2.INTER_AREA)
        frames.append(canvas)
    return np.stack(frames)


@pytest.fixture(scope="module")
def single_face_crop() -> np.ndarray:
    src = read_clip(shared_video("single_face.mp4"), VideoConfig(start=0, end=23))
    return src.frames[:, 20:340, 140:460]


@pytest.fixture(scope="module")
def two_faces(tmp_path_factory, single_face_crop) -> Clip:
    """24 frames: the left face grows from 0.40 to 0.65 of its size while the right one shrinks from
    0.65 to 0.40, so their size order flips half way."""
    frames = _side_by_side(single_face_crop, lambda t: 0.40 + 0.25 * t / 23, lambda t: 0.65 - 0.25 * t / 23)
    return read_clip(write_video(tmp_path_factory.mktemp("two_faces") / "two_faces.mp4", frames))


@pytest.mark.parametrize("face_index, side", [(0, "right"), (1, "left")])
def test_face_index_picks_by_size_then_tracks_the_identity(two_faces, face_index, side):
    lms = detect_landmarks(two_faces, LandmarkConfig(face_index=face_index))
    assert lms.valid.all() and (lms.n_faces == 2).all()
    centre_x = (lms.boxes[:, 0] + lms.boxes[:, 2]) / 2
    assert ((centre_x < 320) if side == "left" else (centre_x > 320)).all()
    width = lms.boxes[:, 2] - lms.boxes[:, 0]
    # The sizes cross: ranking by size frame by frame would have switched faces half way.
    if side == "left":
        assert width[-1] > 1.4 * width[0]
    else:
        assert width[-1] < 0.7 * width[0]


def test_face_index_beyond_the_faces_present(two_faces):
    with pytest.raises(MicroFaceError, match=r"face index 2 requested but at most 2 face\(s\) are visible"):
        detect_landmarks(two_faces, LandmarkConfig(face_index=2))
    with pytest.raises(MicroFaceError, match=r"face index -1 is negative"):
        detect_landmarks(two_faces, LandmarkConfig(face_index=-1))


def test_default_face_is_the_largest_over_time_and_survives_a_gap(tmp_path, single_face_crop):
    # A big face missing for 3 frames beside a small one seen throughout: the big one is the subject.
    frames = _side_by_side(single_face_crop, lambda t: 0.65, lambda t: 0.40, hide_left=(10, 11, 12))
    clip = read_clip(write_video(tmp_path / "gap.mp4", frames))
    lms = detect_landmarks(clip, LandmarkConfig())
    assert np.flatnonzero(~lms.valid).tolist() == [10, 11, 12]
    assert lms.n_faces[10:13].tolist() == [1, 1, 1]
    centre_x = (lms.boxes[:, 0] + lms.boxes[:, 2]) / 2
    assert (centre_x < 320).all()


def test_no_face_anywhere(tmp_path):
    rng = np.random.default_rng(1)
    frames = np.clip(128 + rng.normal(0, 25, (12, 120, 160, 3)), 0, 255).astype(np.uint8)
    frames[6:] = 128
    clip = read_clip(write_video(tmp_path / "noise.mp4", frames))
    with pytest.raises(MicroFaceError, match=r"^no face found in any of the 12 frames of noise\.mp4$"):
        detect_landmarks(clip, LandmarkConfig())


# --- the flagging rules on constructed data ---------------------------------------------------

def _face_track(t_count: int, rng) -> np.ndarray:
    """(T, 478, 3) a rigid random 'face' 150 px wide moving smoothly and fast (up to 8 px a frame)."""
    shape = rng.uniform(-75, 75, (N_MP, 3)).astype(np.float32)
    t = np.arange(t_count, dtype=np.float32)
    offset = np.stack([300 + 40 * np.sin(t / 5), 200 + 20 * np.cos(t / 7), 0 * t], -1)
    return shape[None] + offset[:, None]


def test_mesh_outliers_flag_jumps_not_fast_motion():
    rng = np.random.default_rng(2)
    pts = _face_track(40, rng)
    usable = np.ones(40, bool)
    cfg = LandmarkConfig()
    win, thr = cfg.outlier_window, cfg.outlier_threshold
    assert not mesh_outliers(pts, usable, win, thr).any()
    assert not mesh_outliers(pts, usable, 7, thr).any()
    glitch = pts.copy()
    glitch[17, :, :2] += rng.normal(0, 8, (N_MP, 2))       # mesh scrambled by ~9 px (6% of its size)
    glitch[30, :, 0] += 9                                  # or shifted by 6% for one frame
    assert np.flatnonzero(mesh_outliers(glitch, usable, win, thr)).tolist() == [17, 30]
    # Two frames off together look half as far off from their neighbours: 6% is not caught, 10% is.
    glitch[31, :, 0] += 9
    assert np.flatnonzero(mesh_outliers(glitch, usable, win, thr)).tolist() == [17]
    glitch[30:32, :, 0] += 6
    assert np.flatnonzero(mesh_outliers(glitch, usable, win, thr)).tolist() == [17, 30, 31]
    usable[16:19] = False                                  # unusable frames are neither judged nor used
    assert np.flatnonzero(mesh_outliers(glitch, usable, win, thr)).tolist() == [30, 31]


def test_hand_coverage_counts_points_inside_the_hand_outline():
    grid = np.stack(np.meshgrid(np.arange(10), np.arange(10)), -1).reshape(-1, 2).astype(np.float32)
    face = np.concatenate([grid, np.zeros((100, 1), np.float32)], 1)
    # A 'hand' whose 21 points span x in [0, 4.5], y in [0, 9]: columns 0-4 of the grid, half the points.
    hand = np.stack([np.r_[0.0, 4.5, 4.5, 0.0, np.full(17, 2.0)], np.r_[0.0, 0.0, 9.0, 9.0, np.linspace(1, 8, 17)]], -1)
    assert hand_coverage(face, hand[None]) == pytest.approx(0.5)
    assert hand_coverage(face, np.zeros((0, 21, 2), np.float32)) == 0.0
    far = hand + 100
    assert hand_coverage(face, np.stack([far, hand])) == pytest.approx(0.5)


def test_interpolate_invalid_by_hand():
    values = np.array([[0.0], [9.0], [2.0], [9.0], [9.0], [8.0], [9.0]])
    valid = np.array([False, False, True, False, False, True, False])
    out = interpolate_invalid(values, valid)
    assert out[:, 0].tolist() == [2.0, 2.0, 2.0, 4.0, 6.0, 8.0, 8.0]


def test_shot_cuts_on_a_colour_change():
    frames = np.zeros((8, 90, 160, 3), np.uint8)
    rng = np.random.default_rng(3)
    frames[:4] = (200, 60, 40) + rng.integers(0, 10, (4, 90, 160, 3))
    frames[4:] = (30, 90, 200) + rng.integers(0, 10, (4, 90, 160, 3))
    assert np.flatnonzero(shot_cuts(frames, 0.3)).tolist() == [4]


# --- FAN plumbing (no weights here; the network itself is not exercised) ------------------------

def _gaussian_heatmap(centre_xy, size=64, sigma=1.5):
    y, x = np.mgrid[0:size, 0:size]
    return np.exp(-((x - centre_xy[0]) ** 2 + (y - centre_xy[1]) ** 2) / (2 * sigma ** 2)).astype(np.float32)


def test_fan_heatmap_decoding_and_crop_round_trip():
    single = read_clip(shared_video("single_face.mp4"), VideoConfig(start=0, end=1))
    lms = detect_landmarks(single, LandmarkConfig(detect_hands=False))
    m = fan_crop_transforms(lms.mp)
    assert m.shape == (2, 2, 3)
    s = m[0, 0, 0]
    # The crop holds the whole face: every mesh point lands inside the 256 px input.
    crop = lms.mp[0, :, :2] @ m[0, :, :2].T + m[0, :, 2]
    assert crop.min() > 0 and crop.max() < 255
    # Points anywhere on the face -> heatmap coordinates -> a Gaussian there -> decoded back.
    rng = np.random.default_rng(4)
    src = lms.mp[0, rng.choice(N_MP, 68, replace=False), :2].astype(np.float64)
    hm_xy = ((src @ m[0, :, :2].T + m[0, :, 2]) - 1.5) / 4
    heat = np.stack([_gaussian_heatmap(p) for p in hm_xy])[None]
    back = decode_fan_heatmaps(heat, m[:1])
    # Quarter-pixel decoding: at most 0.25 heatmap px per axis from the true peak, i.e. 1 input px.
    err = np.abs(back[0] - src) * s
    assert err.max() <= 1.0 + 1e-6 and err.mean() < 0.65   # mean: 0.5 expected, 0.53 measured


def test_fan_decoding_matches_face_alignment():
    utils = pytest.importorskip("face_alignment.utils")
    rng = np.random.default_rng(5)
    heat = rng.random((2, 68, 64, 64)).astype(np.float32)
    heat[0, 3] = _gaussian_heatmap((0.2, 30.0))          # peak on the border: no quarter shift
    ref, _, _ = utils.get_preds_fromhm(heat.copy())
    identity = np.tile(np.array([[1.0, 0, 0], [0, 1.0, 0]]), (2, 1, 1))
    ours = (decode_fan_heatmaps(heat, identity) - 1.5) / 4
    # face-alignment reports pixel edges (+0.5), ours pixel centres.
    np.testing.assert_allclose(ours, ref - 0.5, atol=1e-5)


def test_fan_weights_are_looked_up_never_downloaded(tmp_path, monkeypatch):
    folder = tmp_path / "fan"
    folder.mkdir()
    monkeypatch.delenv("MICROFACE_FAN_DIR", raising=False)
    assert find_fan_weights() is None
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / FAN_WEIGHT_FILES[1]).write_bytes(b"placeholder: only the lookup is tested")
    assert find_fan_weights() == hub / FAN_WEIGHT_FILES[1]
    # a folder named by the variable but lacking the weights is the user's mistake: say so
    monkeypatch.setenv("MICROFACE_FAN_DIR", str(folder))
    with pytest.raises(MicroFaceError, match=r"FAN weights not found at .*fan \(from MICROFACE_FAN_DIR\)"):
        find_fan_weights()
    (folder / FAN_WEIGHT_FILES[0]).write_bytes(b"placeholder")
    assert find_fan_weights() == folder / FAN_WEIGHT_FILES[0]
    assert find_fan_weights(str(hub)) == hub / FAN_WEIGHT_FILES[1]  # the flag beats the variable
    monkeypatch.setenv("MICROFACE_FAN_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(MicroFaceError, match=r"FAN weights not found at .*nowhere"):
        find_fan_weights()


def test_fan_required_but_absent_fails_before_any_work():
    clip = Clip(path=Path("x.mp4"), frames=np.zeros((2, 32, 32, 3), np.uint8),
                frame_indices=np.arange(2), fps=30.0, width=32, height=32)
    with pytest.raises(MicroFaceError, match=r"no FAN weights found; pass --fan PATH"):
        detect_landmarks(clip, LandmarkConfig(use_fan="on"))
    with pytest.raises(MicroFaceError, match=r"use_fan must be auto, on or off, not 'maybe'"):
        detect_landmarks(clip, LandmarkConfig(use_fan="maybe"))
