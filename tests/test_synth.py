"""Synthetic micro-expression clips: ground truth consistent with FLAME, motion as requested, files, detection."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from backend.head.camera import project_np
from backend.head.flame import FlameLayer, axis_angle_to_matrix, load_flame
from backend.synthetic.synth import (MicroExpressionSpec, SynthConfig, expression_direction, generate, micro_profile,
                           save_ground_truth, smooth_jitter, write_video)

TINY = dict(n_frames=5, width=96, height=96, texture_size=256)


@pytest.fixture(scope="module")
def model():
    return load_flame()


@pytest.fixture(scope="module")
def clip(model):
    return generate(SynthConfig(n_frames=36, seed=3), model)


def _region_mask(model, names) -> np.ndarray:
    return np.isin(model.region_labels, [model.region_names.index(r) for r in names])


def _layer_outputs(model, clip, pose=None, trans=None):
    layer = FlameLayer(model)
    f32 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    pose = clip.pose if pose is None else pose
    with torch.no_grad():
        v, _ = layer(f32(clip.shape), f32(clip.expr), f32(pose), None if trans is None else f32(trans))
    return v.numpy().astype(np.float64)


def test_clip_layout(clip, model):
    t = 36
    assert clip.frames.shape == (t, 256, 256, 3) and clip.frames.dtype == np.uint8
    assert clip.expr.shape == (t, model.n_expr) and clip.pose.shape == (t, 3 * model.n_joints)
    assert clip.vertices.shape == clip.vertices_basis.shape == clip.vertices_head.shape == (t, 5023, 3)
    assert 0 <= clip.onset < clip.apex < clip.offset < t
    assert (clip.offset - clip.onset) / clip.fps < 0.5
    assert np.allclose(clip.pose[:, 3:], 0.0)                      # only the global joint rotates
    # Head about 0.5 m away, crown to chin filling roughly half the frame height.
    assert 0.45 < -clip.vertices[0, :, 2].mean() < 0.6
    px = project_np(clip.vertices[0].astype(np.float64), clip.intrinsics)
    chin = project_np((model.lmk68_bary[8, :, None] * clip.vertices[0][model.faces[model.lmk68_faces[8]]]).sum(0)
                      .astype(np.float64)[None], clip.intrinsics)[0]
    fill = (chin[1] - px[:, 1].min()) / clip.height
    assert 0.45 < fill < 0.65, fill
    face = px[model.region_labels >= 0].mean(0)
    assert np.abs(face - [clip.width / 2, clip.height / 2]).max() < 0.1 * clip.width


def test_same_seed_same_clip_other_seed_other_clip(model):
    a = generate(SynthConfig(seed=11, **TINY), model)
    b = generate(SynthConfig(seed=11, **TINY), model)
    c = generate(SynthConfig(seed=12, **TINY), model)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.vertices, b.vertices)
    assert not np.array_equal(a.shape, c.shape)
    assert np.abs(a.frames.astype(int) - c.frames.astype(int)).mean() > 5


def test_ground_truth_vertices_are_flame_output_plus_off_basis(clip, model):
    basis = _layer_outputs(model, clip, trans=clip.trans)
    assert np.abs(clip.vertices_basis - basis).max() < 1e-6
    r = axis_angle_to_matrix(torch.as_tensor(clip.pose[:, :3])).numpy()
    off = clip.profile[:, None, None] * clip.off_basis_field[None].astype(np.float64)
    assert np.abs(clip.vertices - (basis + np.einsum("tij,tvj->tvi", r, off))).max() < 1e-6
    head = _layer_outputs(model, clip, pose=np.zeros_like(clip.pose))
    assert np.abs(clip.vertices_head - (head + off)).max() < 1e-6
    assert np.abs(clip.off_basis_field).max() > 0


def test_peak_displacement_matches_request(clip, model):
    head = _layer_outputs(model, clip, pose=np.zeros_like(clip.pose))    # basis only, no rigid motion
    motion_mm = np.linalg.norm(head[clip.apex] - head[clip.onset], axis=1) * 1000
    peak = motion_mm[_region_mask(model, clip.requested_regions)].max()
    assert abs(peak - clip.config.micro.peak_mm) < 0.03 * clip.config.micro.peak_mm, peak
    # The regime of the design brief: a few tenths of a millimetre on average where it moves.
    mean_active = motion_mm[_region_mask(model, clip.active_regions)].mean()
    assert 0.1 < mean_active < 0.6, mean_active
    # Before onset and after offset the face is at rest.
    assert np.abs(head[:clip.onset + 1] - head[0]).max() < 1e-9
    assert np.abs(head[clip.offset:] - head[0]).max() < 1e-9


def test_inactive_regions_stay_still(clip, model):
    motion_mm = np.linalg.norm(clip.vertices_head[clip.apex] - clip.vertices_head[clip.onset], axis=1) * 1000
    means = {r: motion_mm[model.region_labels == i].mean() for i, r in enumerate(model.region_names)}
    assert set(clip.requested_regions) <= set(clip.active_regions)
    for r in model.region_names:
        if r not in clip.active_regions:
            assert means[r] < 0.3 * max(means.values()), (r, means)
    # Regions far from the mouth move by a few microns at most.
    far = motion_mm[_region_mask(model, ["left_eye", "right_eye", "forehead"])]
    assert far.max() < 0.05 * clip.config.micro.peak_mm, far.max()


def test_off_basis_field_is_outside_expression_span_smooth_and_local(clip, model):
    field = clip.off_basis_field.astype(np.float64)
    e = model.exprdirs.astype(np.float64).reshape(-1, model.n_expr)
    coef, *_ = np.linalg.lstsq(e, field.reshape(-1), rcond=None)
    outside = np.linalg.norm(field.reshape(-1) - e @ coef) / np.linalg.norm(field)
    assert outside > 0.7 and abs(outside - clip.off_basis_outside_fraction) < 1e-6
    norm = np.linalg.norm(field, axis=1)
    assert abs(norm.max() * 1000 - clip.config.off_basis_mm) < 1e-4
    assert (norm > 0.5 * norm.max()).sum() >= 8                   # a bump, not a single vertex
    far = np.linalg.norm(model.v_template - model.v_template[norm.argmax()], axis=1) > 0.06
    assert norm[far].max() == 0.0
    label = model.region_labels[norm.argmax()]
    assert label >= 0 and model.region_names[label] in clip.requested_regions


def test_micro_profile_shape():
    p = micro_profile(60, 20, 30, 45)
    assert p[:21].max() == 0 and p[45:].max() == 0 and p[30] == 1
    assert (np.diff(p[20:31]) > 0).all() and (np.diff(p[30:46]) < 0).all()
    with pytest.raises(ValueError):
        micro_profile(60, 30, 30, 45)


def test_head_jitter_is_smooth_and_sized(clip):
    long = smooth_jitter(np.random.default_rng(0), 200 * 60, 200.0, 0.01, 0.15)
    assert 0.6 < long.std(0).mean() / 0.01 < 1.4
    step = np.degrees(np.linalg.norm(np.diff(clip.pose[:, :3], axis=0), axis=1))
    assert 0 < step.max() < 0.05       # drift and tremor, no jumps between 5 ms frames
    assert np.ptp(clip.trans, 0).max() < 0.004


def test_light_drifts_as_configured(clip):
    d = clip.light_direction
    assert np.allclose(np.linalg.norm(d, axis=1), 1.0)
    azimuth = np.degrees(np.arctan2(d[:, 0], d[:, 2]))
    assert abs(abs(azimuth[-1] - azimuth[0]) - clip.config.light_direction_drift_deg) < 1e-6
    ratio = clip.light_intensity[-1] / clip.light_intensity[0]
    assert abs(abs(ratio - 1) - clip.config.light_intensity_drift) < 1e-9


def test_expression_choice_follows_regions(model):
    rng = np.random.default_rng(0)
    for named in (True, False):
        m = model if named else replace(model, expr_named=False)   # PCA path: signed, eigen-localised
        for region in ("mouth", "forehead", "left_eye"):
            c = expression_direction(m, [region], 2, rng)
            disp = np.linalg.norm(np.einsum("vck,k->vc", model.exprdirs, c), axis=1)
            inside = disp[_region_mask(model, [region])].mean()
            others = [disp[model.region_labels == i].mean() for i, r in enumerate(model.region_names) if r != region]
            assert inside > 1.5 * max(others), (named, region, inside, others)
            if named:
                assert c.min() >= 0
    c = expression_direction(model, ["mouth"], 2, rng, components=("jawOpen", "mouthPucker"))
    assert set(np.flatnonzero(c)) == {model.expression_names.index("jawOpen"),
                                      model.expression_names.index("mouthPucker")}
    with pytest.raises(ValueError):
        expression_direction(model, ["mouth"], 2, rng, components=("notAShape",))
    with pytest.raises(ValueError):
        generate(SynthConfig(micro=MicroExpressionSpec(regions=("ear",)), **TINY), model)


def test_write_video_and_ground_truth(clip, tmp_path):
    import cv2

    video = write_video(clip, tmp_path / "clip.mp4")
    gt = save_ground_truth(clip, tmp_path / "clip_gt.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "clip_gt.npz"]   # no temp files left
    cap = cv2.VideoCapture(str(video))
    assert abs(cap.get(cv2.CAP_PROP_FPS) - clip.fps) < 0.5
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f[..., ::-1])
    cap.release()
    assert len(frames) == len(clip.frames)
    assert np.abs(np.asarray(frames, float) - clip.frames).mean() < 6.0
    with np.load(gt, allow_pickle=False) as z:
        assert np.array_equal(z["vertices"], clip.vertices)
        assert list(z["active_regions"]) == clip.active_regions
        assert int(z["apex"]) == clip.apex and float(z["fps"]) == clip.fps
        assert z["off_basis_field"].shape == (5023, 3)


@pytest.mark.parametrize("fps", [68.317, 137.25, 199.9])
def test_write_video_at_high_non_integer_rates(clip, tmp_path, fps):
    """MPEG-4 refused 68.317 fps outright (time base denominator > 65535)."""
    import cv2
    from dataclasses import replace

    video = write_video(replace(clip, fps=fps), tmp_path / "clip.mp4")
    cap = cv2.VideoCapture(str(video))
    assert abs(cap.get(cv2.CAP_PROP_FPS) - fps) < 0.006
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == len(clip.frames)
    cap.release()


def test_texture_kinds(model):
    flat = generate(SynthConfig(texture="flat", **TINY), model)
    assert flat.frames.shape == (5, 96, 96, 3)
    with pytest.raises(ValueError):
        generate(SynthConfig(texture="marble", **TINY), model)


@pytest.mark.slow
@pytest.mark.parametrize("yaw", [0.0, -20.0, 20.0])
def test_mediapipe_detects_face_on_synthetic_frames(model, yaw):
    import mediapipe as mp

    clip = generate(SynthConfig(n_frames=24, seed=int(yaw) + 100, yaw_deg=yaw,
                                micro=MicroExpressionSpec(regions=None)), model)
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=False, refine_landmarks=True, max_num_faces=1) as fm:
        found = [fm.process(f).multi_face_landmarks is not None for f in clip.frames]
    assert np.mean(found) >= 0.95, np.mean(found)
