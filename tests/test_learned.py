"""The learned modules (paper IV-A, IV-B): formulas against hand calculations, constructed cases
with known answers, shapes and gradients, and the weights file's failure modes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backend.head.camera import project
from backend.net.dem import DynamicEncodedModule, ResidualODEFusion, window_times
from backend.net.dgmd import (attention_weights, lift_landmarks, normalized_adjacency,
                          patch_mean, region_centroids, region_flow_intensity)
from backend.errors import MicroFaceError
from backend.head.flame import load_flame
from backend.net.network import MicroFaceNet, landmark_points, load_weights, save_weights


@pytest.fixture(scope="module")
def flame_model():
    return load_flame()


def test_region_flow_intensity_by_hand():
    flow = torch.zeros(2, 20, 20, 2)
    flow[0, ..., 0] = 3.0
    flow[0, ..., 1] = 4.0                       # magnitude 5 everywhere in pair 0
    flow[1, 10, 10] = torch.tensor([0.0, 2.5])  # pair 1: one pixel of magnitude 2.5 ...
    flow[1, 0:5, 15:20, 0] = torch.arange(25.0).reshape(5, 5)   # ... and a ramp 0..24 in a corner
    centres = torch.tensor([[[10.0, 10.0], [3.0, 3.0]],
                            [[10.4, 9.6], [30.0, -7.0]]])   # rounds to (10, 10); clipped to centre (17, 2)
    out = region_flow_intensity(flow, centres, crop_size=20)
    torch.testing.assert_close(out, torch.tensor([[5.0, 5.0], [2.5 / 25, 12.0]]))


def test_attention_weights_by_hand():
    intensity = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    # Row 0: mean 3, population std sqrt((4 + 1 + 0 + 9) / 4) = sqrt(3.5), tau = 3 + 0.5 sqrt(3.5).
    tau = 3 + 0.5 * math.sqrt(3.5)
    expected0 = [1 / (1 + math.exp(-(i - tau) / (tau + 1e-4))) for i in (1.0, 2.0, 3.0, 6.0)]
    w = attention_weights(intensity)
    np.testing.assert_allclose(w[0].numpy(), expected0, rtol=1e-9)
    np.testing.assert_allclose(w[0].numpy(), [0.32172, 0.37947, 0.44086, 0.62822], atol=5e-5)
    np.testing.assert_allclose(w[1].numpy(), 0.5)   # no motion anywhere: tau = 0, every weight 1/2


def test_region_correspondence_picks_the_right_patches():
    """Two regions of a constructed mesh project to known pixels; each reads its own 5x5 patch."""
    f, cx, cy = 100.0, 50.0, 50.0
    # region 0: 3 vertices whose projections average to (30, 40); region 1 to (70, 60); vertex 6 outside
    px = np.array([[28, 40], [30, 38], [32, 42], [70, 60], [68, 62], [72, 58], [5, 5]], np.float64)
    depth = 0.5
    verts = np.stack([(px[:, 0] - cx) / f * depth, -(px[:, 1] - cy) / f * depth, np.full(7, -depth)], -1)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, -1])
    intr = torch.tensor([[f, cx, cy]])
    align = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])      # source px = crop px
    c = region_centroids(torch.as_tensor(verts, dtype=torch.float32)[None], labels, 2, intr, align)
    torch.testing.assert_close(c, torch.tensor([[[30.0, 40.0], [70.0, 60.0]]]), atol=1e-4, rtol=0)
    fmap = torch.zeros(1, 2, 100, 100)
    fmap[0, 0, 38:43, 28:33] = 7.0     # exactly region 0's patch
    fmap[0, 1, 58:63, 68:73] = 3.0     # exactly region 1's patch
    fmap[0, :, 43, 28:33] = 100.0      # a row just outside region 0's patch: must not leak in
    torch.testing.assert_close(patch_mean(fmap, c), torch.tensor([[[7.0, 0.0], [0.0, 3.0]]]))


def test_landmark_lifting_inverts_the_projection():
    pts = torch.tensor([[[0.01, -0.02, -0.5], [0.03, 0.04, -0.45]]])
    intr = torch.tensor([[400.0, 128.0, 120.0]])
    lifted = lift_landmarks(project(pts, intr), pts, intr)
    torch.testing.assert_close(lifted, pts)


def test_normalized_adjacency_rows_of_a_single_triangle():
    adj = normalized_adjacency(np.array([[0, 1, 2]]), 3).to_dense()
    # A + I is all ones, every degree 3: each entry 1/3
    torch.testing.assert_close(adj, torch.full((3, 3), 1 / 3))


def test_ode_fusion_is_the_identity_without_motion():
    """E_ode is linear in Δψ (backend/net/dem.py), so Δψ = 0 leaves ψ_t = ψ_1 exactly, trained or not."""
    torch.manual_seed(0)
    fusion = ResidualODEFusion(10)
    for p in fusion.parameters():
        torch.nn.init.normal_(p, std=0.5)
    psi1 = torch.rand(3, 10)
    out = fusion(psi1, torch.zeros(3, 6, 10), window_times(torch.arange(7)))
    torch.testing.assert_close(out, psi1[:, None].expand(3, 7, 10), atol=1e-6, rtol=0)
    moving = fusion(psi1, torch.ones(3, 6, 10), window_times(torch.arange(7)))
    assert (moving[:, -1] - psi1).abs().max() > 1e-3          # and it does respond to motion
    torch.testing.assert_close(moving[:, 0], psi1)              # the onset stays ψ_1 exactly


def test_dem_shapes_gradients_and_zero_flow(flame_model):
    torch.manual_seed(0)
    dem = DynamicEncodedModule(flame_model.n_expr + 3)
    torch.nn.init.normal_(dem.motion.head[-1].weight, std=0.05)
    psi1 = torch.rand(2, flame_model.n_expr + 3)
    flow = torch.randn(2, 5, 112, 112, 2, requires_grad=True)
    psi, dpsi = dem(psi1, flow, window_times(torch.arange(6) * 2))
    assert psi.shape == (2, 6, flame_model.n_expr + 3) and dpsi.shape == (2, 5, flame_model.n_expr + 3)
    psi.sum().backward()
    assert flow.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in dem.parameters())
    still, _ = dem(psi1, torch.zeros(2, 5, 112, 112, 2), window_times(torch.arange(6)))
    torch.testing.assert_close(still, psi1[:, None].expand_as(still), atol=1e-6, rtol=0)


def _batch(flame_model, b=2, t=4, s=56):
    torch.manual_seed(1)
    net = MicroFaceNet(flame_model)
    pose = torch.zeros(b, t, 3 * flame_model.n_joints)
    pose[..., 1] = 0.1
    trans = torch.tensor([0.0, 0.0, -0.5]).expand(b, t, 3)
    expr = torch.rand(b, t, flame_model.n_expr) * 0.1
    with torch.no_grad():
        v, _ = net.flame(torch.zeros(flame_model.n_shape), expr.reshape(b * t, -1), pose.reshape(b * t, -1),
                         trans.reshape(b * t, 3))
    intr = torch.tensor([[500.0, 128.0, 128.0]]).expand(b, 3)
    lm = torch.cat([net.flame.landmarks68(v), net.flame.landmarks_mp(v)], 1)
    lmk = project(lm, intr.repeat_interleave(t, 0)).view(b, t, -1, 2)
    return net, {
        "fit_shape": torch.zeros(b, flame_model.n_shape), "fit_expr": expr, "fit_pose": pose, "fit_trans": trans,
        "flow": torch.randn(b, t - 1, s, s, 2), "times": window_times(torch.arange(t)), "intrinsics": intr,
        "align": torch.tensor([[1.0, 0.0, -16.0], [0.0, 1.0, -16.0]]).expand(b, t, 2, 3), "lmk": lmk,
    }


def test_full_network_shapes_and_gradients(flame_model):
    net, batch = _batch(flame_model)
    for p in (net.dem.motion.head[-1].weight, net.dgmd.out[-1].weight):
        torch.nn.init.normal_(p, std=0.05)
    out = net(batch)
    b, t = batch["fit_expr"].shape[:2]
    nv = flame_model.v_template.shape[0]
    for key in ("vertices", "vertices_init", "vertices_head", "vertices_init_head", "delta_head"):
        assert out[key].shape == (b, t, nv, 3), key
    assert out["attention"].shape == (b, t, nv) and out["intensity"].shape == (b, t, 8)
    # the onset frame has no accumulated flow: every region at threshold, weight 1/2
    torch.testing.assert_close(out["attention_region"][:, 0], torch.full((b, 8), 0.5))
    # the displacement is the attention-weighted base, rotated into camera space
    assert (out["attention"][..., flame_model.region_labels < 0] == 0).all()
    (out["vertices"].square().sum() + out["expr"].sum()).backward()
    dead = [n for n, p in net.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert dead == []


def test_mixed_precision_keeps_the_mesh_in_float32(flame_model):
    """Autocast (bfloat16 on CPU here; the same code runs on CUDA) touches only the flow convolutions:
    outputs stay float32, gradients reach every parameter, and the meshes stay within 0.001 mm of
    float32 (measured: 0.00006 mm for these random weights and flow)."""
    net, batch = _batch(flame_model)
    for p in (net.dem.motion.head[-1].weight, net.dgmd.out[-1].weight):
        torch.nn.init.normal_(p, std=0.05)
    with torch.no_grad():
        ref = net(batch)
    net.set_mixed_precision(torch.bfloat16)
    out = net(batch)
    assert out["vertices"].dtype == torch.float32 and out["expr"].dtype == torch.float32
    assert 0 < (out["vertices"] - ref["vertices"]).norm(dim=-1).max() < 1e-6
    out["vertices"].square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters() if p.requires_grad)
    net.set_mixed_precision(None)
    with torch.no_grad():
        torch.testing.assert_close(net(batch)["vertices"], ref["vertices"], rtol=0, atol=0)


def test_untrained_network_is_the_static_fit(flame_model):
    """Zero-initialised heads: before training the network returns the fit's meshes unchanged."""
    net, batch = _batch(flame_model)
    out = net(batch)
    torch.testing.assert_close(out["expr"], batch["fit_expr"].expand_as(out["expr"])[:, :1].expand_as(out["expr"]))
    torch.testing.assert_close(out["vertices"], out["vertices_init"])


def test_landmark_points_order(flame_model):
    lmk68 = torch.zeros(68, 2)
    mp = torch.arange(478 * 2, dtype=torch.float32).view(478, 2)
    pts = landmark_points(flame_model, lmk68, mp)
    assert pts.shape == (68 + len(flame_model.mp_indices), 2)
    torch.testing.assert_close(pts[68:], mp[torch.as_tensor(flame_model.mp_indices)])


def test_weights_round_trip_and_failures(flame_model, tmp_path):
    net, batch = _batch(flame_model)
    torch.nn.init.normal_(net.dgmd.out[-1].weight, std=0.05)
    path = save_weights(net, tmp_path / "w.pt", {"note": "test"})
    assert (tmp_path / "w.pt.json").exists()
    back = load_weights(path, flame_model)
    torch.testing.assert_close(back.dgmd.out[-1].weight, net.dgmd.out[-1].weight)
    assert back.trained_flow is None and back.detection is None
    net.trained_flow = {"method": "dis", "supersample": 2}
    net.detection = {"fraction": 0.35, "floor_mm": 0.08, "accuracy": 0.8, "clips": 3}
    back = load_weights(save_weights(net, tmp_path / "f.pt", {}), flame_model)
    assert (back.trained_flow, back.detection) == (net.trained_flow, net.detection)
    with pytest.raises(MicroFaceError, match="not found"):
        load_weights(tmp_path / "missing.pt", flame_model)
    (tmp_path / "bad.pt").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(MicroFaceError, match="corrupt"):
        load_weights(tmp_path / "bad.pt", flame_model)
    import os as _os

    class Evil:
        def __reduce__(self):
            return (_os.system, ("touch /tmp/microface_weights_pwned",))

    torch.save({"format": "microface-weights", "evil": Evil()}, tmp_path / "evil.pt", pickle_protocol=2)
    with pytest.raises(MicroFaceError, match="corrupt"):
        load_weights(tmp_path / "evil.pt", flame_model)
    assert not _os.path.exists("/tmp/microface_weights_pwned")


def test_chunked_refinement_equals_the_whole_window(flame_model):
    """backend/net/apply.py runs long clips in chunks of frames; the result must not depend on it."""
    from backend.net.apply import drift_from_fit, apply_network

    net, batch = _batch(flame_model, b=1, t=7)
    for p in (net.dem.motion.head[-1].weight, net.dgmd.out[-1].weight):
        torch.nn.init.normal_(p, std=0.05)
    with torch.no_grad():
        whole = net(batch)
    mp = np.zeros((7, 478, 2), np.float32)
    mp[:, flame_model.mp_indices] = batch["lmk"][0, :, 68:].numpy()
    sample = {"valid": np.ones(7, bool), "flow": batch["flow"][0].numpy(), "lmk_68": batch["lmk"][0, :, :68].numpy(),
              "lmk_mp": mp, "intrinsics": batch["intrinsics"][0].numpy(), "align": batch["align"][0].numpy(),
              **{k: batch[k][0].numpy() for k in ("fit_shape", "fit_expr", "fit_pose", "fit_trans")}}
    out = apply_network(net, sample, chunk=3)
    np.testing.assert_allclose(out.vertices, whole["vertices"][0].numpy(), atol=1e-6)
    np.testing.assert_allclose(out.expr, whole["expr"][0].numpy(), atol=1e-6)
    np.testing.assert_allclose(out.attention_region, whole["attention_region"][0].numpy(), atol=1e-6)
    # With a drift sigma, the DEM's expression and jaw take the fit's slow part, then the deformation runs.
    sigma = 2.5
    anchored = apply_network(net, sample, drift_sigma=sigma, chunk=3)
    jaw = net.jaw
    psi = np.concatenate([out.expr, out.pose[:, jaw]], 1)
    fit_psi = np.concatenate([sample["fit_expr"], sample["fit_pose"][:, jaw]], 1)
    want = drift_from_fit(psi, fit_psi, np.arange(7), sigma)
    np.testing.assert_allclose(anchored.expr, want[:, :psi.shape[1] - 3], atol=1e-5)
    np.testing.assert_allclose(anchored.pose[:, jaw], want[:, -3:], atol=1e-5)
    assert np.abs(anchored.expr - out.expr).max() > 1e-3   # it did change something


def test_drift_from_fit_known_answers():
    """psi + G * (fit - psi): a constant offset and a linear drift go, a one-frame spike stays but
    for the kernel's own weight at its frame, and chunking the rows changes nothing."""
    from backend.net.apply import drift_from_fit

    rng = np.random.default_rng(0)
    f = np.arange(200)
    fit = rng.normal(size=(200, 4))
    sigma = 10.0
    np.testing.assert_allclose(drift_from_fit(fit + [0.3, -1.0, 2.0, 0.0], fit, f, sigma), fit, atol=1e-12)

    drifting = fit + 0.01 * f[:, None]
    inner = slice(41, 159)                                         # more than 4 sigma from either end
    np.testing.assert_allclose(drift_from_fit(drifting, fit, f, sigma)[inner], fit[inner], atol=1e-12)

    spike = fit.copy()
    spike[100] += 1.0
    kernel = np.exp(-0.5 * (np.arange(-40, 41) / sigma) ** 2)
    kept = 1.0 - 1.0 / kernel.sum()                                # 0.960 for sigma = 10 frames
    out = drift_from_fit(spike, fit, f, sigma)
    np.testing.assert_allclose(out[100] - fit[100], kept, atol=1e-12)
    np.testing.assert_allclose(out[90] - fit[90], -np.exp(-0.5) / kernel.sum(), atol=1e-12)

    gaps = np.sort(rng.choice(1000, 200, replace=False))          # non-uniform frame numbers
    np.testing.assert_allclose(drift_from_fit(spike, fit, gaps, sigma, rows=7),
                               drift_from_fit(spike, fit, gaps, sigma), atol=1e-12)
