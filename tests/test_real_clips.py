"""The whole pipeline on the real clips in ../shared/videos.

Bounds are the measured figures (docs/accuracy.md, docs/speed.md, benchmarks/bench_pipeline.py) with margin.
"""
from __future__ import annotations

import numpy as np
import pytest

from backend.config import ReconstructConfig, RegionCallConfig
from backend.errors import MicroFaceError
from backend.overlay import overlay_frames
from backend.pipeline import reconstruct
from backend.contract.result import read_result
from conftest import shared_video


def _cfg(**video) -> ReconstructConfig:
    cfg = ReconstructConfig(device="cpu")
    for k, v in video.items():
        setattr(cfg.video, k, v)
    return cfg


@pytest.mark.slow
def test_single_face_main_job(tmp_path):
    """The README's main job with the default flow, landmarks on every frame, mesh on the face."""
    video = shared_video("single_face.mp4")
    out, res = reconstruct(video, tmp_path / "out" / "single_face.npz", _cfg())  # folder made on success
    back = read_result(out)
    assert back.n_frames == 72 and back.valid.all() and not back.interpolated.any()
    assert np.array_equal(back.frame_indices, np.arange(72))
    assert back.meta["landmarks_68_source"] in ("fan", "flame_embedding")
    # measured 1.13-1.71 px median (640x360)
    assert float(np.median(back.fit_error_px)) < 2.5
    # the projected mesh lies on the detected face: its 68 landmarks sit inside the MediaPipe face box
    lo, hi = back.landmarks_mp.min(1), back.landmarks_mp.max(1)
    inside = ((back.landmarks_68 >= lo[:, None] - 5) & (back.landmarks_68 <= hi[:, None] + 5)).all(-1)
    assert inside.mean() > 0.98
    # Onset-to-t flow per region (Eq. 18) and attention (Eq. 19-20). At the smile (frame 36,
    # measured with DIS on the 2x crop) the cheeks moved 6.6 / 5.8 crop px, the nose 2.0 and the
    # forehead 0.4 (TV-L1: 6.5 / 7.6, 0.9, 0.7): the smile's regions get attention above 1/2, the
    # still ones below.
    names = back.meta["region_names"]
    rf, att = back.region_flow[36], back.attention[36]
    cheeks = [names.index("left_cheek"), names.index("right_cheek")]
    still = [names.index("nose"), names.index("forehead")]
    assert (back.region_flow[0] == 0).all() and np.allclose(back.attention[0], 0.5)
    assert rf[cheeks].min() > 2 * rf[still].max()
    assert att[cheeks].min() > 0.5 > att[still].max()
    # The default motion is the flow reader's on the fit (no network, no photometric stage).
    assert not back.meta["refined"] and back.meta["weights"] is None and back.meta["reader"]["points"] > 1000
    assert back.meta["drift_sigma_s"] == 0.5
    assert "photometric" not in back.meta and back.meta["warnings"] == []
    assert back.meta["face_px"] > ReconstructConfig().min_face_px   # measured 150 px wide: no warning
    # Region motion from frame 0 without the head's rigid motion. At the smile (frame 36) the mouth
    # moved 3.6 mm, the cheeks 1.6 / 1.3 and the forehead 0.75 (measured); over the clip the reader's
    # rule (0.7 of the largest peak, 4.0 mm, and 1.5 x the clip's noise floor, 0.87 mm) calls the
    # mouth active and the nose (0.71 mm), eyes (1.0 / 0.86) and forehead (0.87) still.
    motion = back.region_motion
    assert (motion[0] == 0).all() and motion[36, names.index("mouth")] > 3.0
    assert motion[36, cheeks].min() > 1.5 * motion[36, names.index("forehead")]
    det = back.meta["region_detection"]
    rule = RegionCallConfig()
    assert (det["fraction"], det["floor_mm"], det["noise_factor"]) == (rule.fraction, rule.floor_mm, rule.noise_factor)
    assert "mouth" in det["active"]
    assert not {"left_eye", "right_eye", "nose", "forehead"} & set(det["active"])
    # The rig arrays: skinning them gives vertices_init up to the joints' small dependence on the
    # expression (measured 0.007 mm; the stand-in has no pose correctives).
    from microface_blender.core.lbs import skin

    assert back.has_rig
    shaped = back.rig_rest_vertices + np.einsum("te,evc->tvc", back.expr, back.rig_expr_dirs)
    posed = skin(shaped, back.pose, back.trans, back.rig_joints, back.rig_parents, back.rig_skin_weights)
    assert np.sqrt(((posed - back.vertices_init) ** 2).sum(-1)).max() < 1e-4
    # the overlay QA images (python -m backend overlay) come out for the frames asked for
    pngs = overlay_frames(out, video, tmp_path, [0, 36])
    assert [p.name for p in pngs] == ["overlay_000000.png", "overlay_000036.png"]
    assert all(p.stat().st_size > 10_000 for p in pngs)


@pytest.mark.slow
def test_hand_over_mouth_is_flagged_not_fatal(tmp_path):
    video = shared_video("WolfgangLanger_Pexels.mp4")
    # the hand covers the mouth from source frame 58 on (tests/test_landmarks.py)
    out, res = reconstruct(video, tmp_path / "wolf.npz", _cfg(start=40, end=75))
    assert res.frame_indices[0] == 40 and res.n_frames == 36
    covered = (res.frame_indices >= 58)
    assert not res.valid[covered].any() and res.interpolated[covered].all()
    assert res.valid[res.frame_indices < 56].all()
    assert any("58" in w for w in res.meta["warnings"])
    assert np.isfinite(res.vertices).all()


@pytest.mark.slow
def test_cuts_and_faceless_shots_partial_but_honest(tmp_path):
    video = shared_video("clip_01_tears_of_steel.mp4")
    out, res = reconstruct(video, tmp_path / "tos.npz", _cfg())
    assert res.n_frames == 240
    # one person is tracked (frames 65-184, measured); the robot, faceless shots and the other
    # people after cuts are flagged, and the result says so
    valid_frames = res.frame_indices[res.valid]
    assert 0.3 < res.valid.mean() < 0.7
    assert valid_frames.min() >= 60 and valid_frames.max() <= 190
    assert any("interpolated" in w for w in res.meta["warnings"])
    assert np.isfinite(res.vertices).all()


def test_a_face_too_small_for_micro_expressions_is_warned(tmp_path):
    """single_face at a sixth of its size (a face about 25 px wide in 106x60 frames) still
    reconstructs, and the result says the face is too small to read micro-expressions from."""
    import cv2

    from backend.capture.video import read_clip
    from backend.config import VideoConfig
    from conftest import write_video

    frames = read_clip(shared_video("single_face.mp4"), VideoConfig(end=11)).frames
    small = np.stack([cv2.resize(f, (f.shape[1] // 6, f.shape[0] // 6), interpolation=cv2.INTER_AREA)
                      for f in frames])
    video = write_video(tmp_path / "small.mp4", small, 30.0)
    _, res = reconstruct(video, tmp_path / "small.npz", _cfg())
    assert res.meta["face_px"] < ReconstructConfig().min_face_px
    warning = next(w for w in res.meta["warnings"] if "px wide" in w)
    assert f"{res.meta['face_px']:.0f} px wide" in warning and "\n" not in warning


def test_face_index_beyond_faces_is_a_clear_error(tmp_path):
    video = shared_video("single_face.mp4")
    cfg = _cfg(start=0, end=5)
    cfg.landmarks.face_index = 3
    with pytest.raises(MicroFaceError) as err:
        reconstruct(video, tmp_path / "x.npz", cfg)
    assert "face" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "x.npz").exists()
