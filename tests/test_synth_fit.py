"""Synthetic clip end to end: render a micro-expression with known truth, run the pipeline users run,
and compare the fitted per-frame vertices with the truth in the face region (millimetres).

Bounds come from `benchmarks/bench_synth_fit.py` (seeds 100-104, docs/accuracy.md): aligned face error
2.6-3.4 mm, reprojection 0.43-0.48 px, invented still-region motion 0.017-0.037 mm, jitter before
onset 0.002-0.003 mm. The camera-space error is larger (4-44 mm) because monocular depth and head
size trade off; it is bounded loosely to catch a broken camera model, not to grade accuracy.
"""
from __future__ import annotations

import numpy as np
import pytest

from backend.config import ReconstructConfig
from backend.training.evaluate import micro_metrics
from backend.head.flame import FlameLayer, head_space, load_flame
from backend.pipeline import reconstruct
from backend.head.regions import region_motion
from backend.synthetic.synth import MicroExpressionSpec, SynthConfig, generate, write_video


@pytest.mark.slow
def test_fit_recovers_synthetic_vertices(tmp_path):
    model = load_flame()
    clip = generate(SynthConfig(seed=7, micro=MicroExpressionSpec(regions=("mouth",))), model)
    video = write_video(clip, tmp_path / "synth.mp4")
    cfg = ReconstructConfig(device="cpu")  # the static fit alone: no network, no reader
    cfg.reader.enabled = False
    cfg.flow.supersample = 1  # the fit does not read the flow; keep the test fast
    cfg.video.fps = clip.fps
    cfg.fit.focal = float(clip.intrinsics[0])
    _, res = reconstruct(video, tmp_path / "synth.npz", cfg)

    assert res.valid.all()
    assert res.vertices.shape == clip.vertices.shape
    pred_head = head_space(FlameLayer(model), res.shape, res.expr, res.pose)
    m = micro_metrics(res.vertices, clip.vertices, pred_head, clip.vertices_head, model.region_labels,
                      model.region_names, clip.active_regions, clip.onset, clip.offset)
    print(m.as_dict(), "reproj px", float(np.median(res.fit_error_px)))
    # the fit's own region motion is written, and called by the configured rule (no network ran)
    np.testing.assert_allclose(res.region_motion, region_motion(pred_head, model.region_labels), atol=1e-4)
    det, rule = res.meta["region_detection"], cfg.regions
    assert (det["fraction"], det["floor_mm"], det["noise_factor"]) == (rule.fraction, rule.floor_mm, rule.noise_factor)
    assert "reader" not in res.meta
    assert np.median(res.fit_error_px) < 0.8
    assert m.face_error_aligned_mm < 4.5
    assert m.face_error_mm < 60.0
    assert m.invented_still_mm < 0.08
    assert m.jitter_pre_onset_mm < 0.01


@pytest.mark.slow
def test_pnp_initialisation_never_lands_behind_the_camera():
    """Training seed 39: unguided iterative PnP converged to the mirror pose behind the camera on the
    first frame (tz = -0.46 m) and the fit raised "PnP failed on every frame". It must now fit."""
    from backend.training.dataset import _render, draw_synthetic_spec, process_frames

    model = load_flame()
    clip, _ = _render(draw_synthetic_spec(39), model)
    sample = process_frames(clip.frames, clip.fps, model, focal=float(clip.intrinsics[0]))
    assert (sample["fit_trans"][:, 2] < -0.3).all()                # the head is in front of the camera
    assert sample["info"]["fit_reproj_px"] < 1.0
