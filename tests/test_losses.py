"""Training losses (backend/training/losses.py): hand-computed values on tiny meshes, and gradient checks."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from backend.head.priors import expression_gram, identity_gram
from backend.head.visibility import vertex_visibility
from backend.training import losses as L

D = torch.float64


def t64(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, np.float64), dtype=D)


IDENT = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]


def cam(f: float, c: float, b: int = 1) -> torch.Tensor:
    return t64([[f, c, c]] * b)


def aligns(*shifts) -> torch.Tensor:
    """(1, T, 2, 3) identity aligns, frame t translated by shifts[t] crop px."""
    return t64([[[[1, 0, dx], [0, 1, dy]] for dx, dy in shifts]])


# ----------------------------------------------------------------------------- landmarks

def test_landmark_loss_hand_values():
    pred = t64([[[[3, 4], [0, 0]]]])                      # (1, 1, 2, 2); obs = 0
    obs = torch.zeros_like(pred)
    # |r|^2 = 25 and 0 -> mean 12.5
    assert L.landmark_loss(pred, obs).item() == pytest.approx(12.5)
    # per-point weights (1, 0) keep only 25
    assert L.landmark_loss(pred, obs, t64([[[1, 0]]])).item() == pytest.approx(25.0)
    # scale 5 px: r = (0.6, 0.8), |r|^2 = 1 -> mean (1 + 0) / 2
    assert L.landmark_loss(pred, obs, scale_px=t64([5])).item() == pytest.approx(0.5)
    # Huber delta 3 on |r| = 5: 2*3*5 - 9 = 21 -> mean (21 + 0) / 2
    assert L.landmark_loss(pred, obs, huber_delta=3.0).item() == pytest.approx(10.5)
    # per-frame weights: frame 0 error 25, frame 1 error 1, weights 1 and 3 -> (25 + 3) / 4 = 7
    pred2 = t64([[[[3, 4]], [[1, 0]]]])                   # (1, 2, 1, 2)
    assert L.landmark_loss(pred2, torch.zeros_like(pred2), t64([[1, 3]])).item() == pytest.approx(7.0)


# ----------------------------------------------------------------------------- flow reprojection

# f = 100 px, principal point (50, 50): at z = -1 m, 1 cm of x is exactly 1 px.
PTS = [[-0.1, 0.0, -1.0], [0.0, 0.05, -1.0], [0.1, -0.05, -1.0]]   # -> px (40,50), (50,45), (60,55)


def moved(*dx_m) -> torch.Tensor:
    """(1, T, 3, 3): PTS translated in x by dx_m[t] metres in frame t."""
    return t64([[[[p[0] + dx, p[1], p[2]] for p in PTS] for dx in dx_m]])


def const_flow(n: int, fx: float, fy: float = 0.0, size: int = 50) -> torch.Tensor:
    f = torch.zeros(1, n, size, size, 2, dtype=D)
    f[..., 0], f[..., 1] = fx, fy
    return f


def test_project_to_crop_applies_each_frames_align():
    p = L.project_to_crop(moved(0.0, 0.0), cam(100, 50), aligns((0, 0), (3, -1)))
    np.testing.assert_allclose(p[0, 0].numpy(), [[40, 50], [50, 45], [60, 55]], atol=1e-12)
    np.testing.assert_allclose(p[0, 1].numpy(), [[43, 49], [53, 44], [63, 54]], atol=1e-12)


def test_flow_reprojection_known_translation():
    verts = moved(0.0, 0.02)                               # 2 cm at 1 m with f = 100 -> 2 px
    vis = torch.ones(1, 2, 3, dtype=D)
    a = aligns((0, 0), (0, 0))
    kw = dict(crop_size=100, eps_px=0.0)                   # flow map 50x50 covers the 100 px crop
    assert L.flow_reprojection_loss(verts, cam(100, 50), a, const_flow(1, 2.0), vis, **kw).item() \
        == pytest.approx(0.0, abs=1e-12)
    assert L.flow_reprojection_loss(verts, cam(100, 50), a, const_flow(1, 0.0), vis, **kw).item() \
        == pytest.approx(2.0)
    # Charbonnier: sqrt(2^2 + 0.01^2) - 0.01
    assert L.flow_reprojection_loss(verts, cam(100, 50), a, const_flow(1, 0.0), vis, crop_size=100,
                                    eps_px=0.01).item() == pytest.approx(math.sqrt(4 + 1e-4) - 0.01)


def test_flow_reprojection_compares_crops_of_their_own_frames():
    # Still head, but crop 1 is shifted by (3, -1) px: the crops' content moves by exactly that.
    verts = moved(0.0, 0.0)
    vis = torch.ones(1, 2, 3, dtype=D)
    a = aligns((0, 0), (3, -1))
    kw = dict(crop_size=100, eps_px=0.0)
    assert L.flow_reprojection_loss(verts, cam(100, 50), a, const_flow(1, 3.0, -1.0), vis, **kw).item() \
        == pytest.approx(0.0, abs=1e-12)
    assert L.flow_reprojection_loss(verts, cam(100, 50), a, const_flow(1, 0.0), vis, **kw).item() \
        == pytest.approx(math.sqrt(10))


def test_flow_reprojection_samples_at_p_t_with_pixel_centre_convention():
    # 50x50 map over a 100 px crop: map pixel j is centred on crop x = 2 j + 0.5. A field
    # flow_x = 0.05 * (crop x) read at p_0 = 40, 50, 60 gives 2.0, 2.5, 3.0; the mesh moves 2 px,
    # so the residuals are 0, 0.5, 1.0 -> mean 0.5. (Sampled at p_1 it would be 0.6; sampled with
    # x/2 as the map coordinate it would be off by 0.025.)
    j = torch.arange(50, dtype=D)
    flow = torch.zeros(1, 1, 50, 50, 2, dtype=D)
    flow[..., 0] = 0.05 * (2 * j + 0.5)[None, None, None, :]
    verts = moved(0.0, 0.02)
    a = aligns((0, 0), (0, 0))
    vis = torch.ones(1, 2, 3, dtype=D)
    assert L.flow_reprojection_loss(verts, cam(100, 50), a, flow, vis, crop_size=100, eps_px=0.0).item() \
        == pytest.approx(0.5)
    # vertex 2 hidden in frame 1: mean of (0, 0.5)
    vis[0, 1, 2] = 0
    assert L.flow_reprojection_loss(verts, cam(100, 50), a, flow, vis, crop_size=100, eps_px=0.0).item() \
        == pytest.approx(0.25)


def test_flow_reprojection_ignores_points_outside_the_crop():
    verts = torch.cat([moved(0.0, 0.02), t64([[[[0.9, 0.0, -1.0]], [[0.92, 0.0, -1.0]]]])], 2)  # u = 140
    vis = torch.ones(1, 2, 4, dtype=D)
    assert L.flow_reprojection_loss(verts, cam(100, 50), aligns((0, 0), (0, 0)), const_flow(1, 0.0), vis,
                                    crop_size=100, eps_px=0.0).item() == pytest.approx(2.0)


def test_flow_reprojection_accumulated_vs_pair():
    verts = moved(0.0, 0.01, 0.03)                         # at 1 px and 3 px from the onset
    flow = torch.cat([const_flow(1, 1.0), const_flow(1, 3.0)], 1)
    vis = torch.ones(1, 3, 3, dtype=D)
    a = aligns((0, 0), (0, 0), (0, 0))
    kw = dict(crop_size=100, eps_px=0.0)
    # read as onset->t flow it fits exactly
    assert L.flow_reprojection_loss(verts, cam(100, 50), a, flow, vis, accumulated=True, **kw).item() \
        == pytest.approx(0.0, abs=1e-12)
    # read as pair flow: pair motions are 1 and 2 px against 1 and 3 -> mean(0, 1) = 0.5
    assert L.flow_reprojection_loss(verts, cam(100, 50), a, flow, vis, **kw).item() == pytest.approx(0.5)


def _smooth_map(c: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(1, c, size // 4, size // 4, generator=g, dtype=D)
    return torch.nn.functional.interpolate(m, size=(size, size), mode="bicubic", align_corners=False) \
        .permute(0, 2, 3, 1)


def _random_verts(t: int, v: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = (torch.rand(1, t, v, 2, generator=g, dtype=D) - 0.5) * 0.8     # within +-0.4 m -> +-4 px
    z = -1.0 - 0.1 * torch.rand(1, t, v, 1, generator=g, dtype=D)
    return torch.cat([xy, z], -1)


def test_flow_reprojection_gradcheck():
    verts = _random_verts(3, 4, 0).requires_grad_(True)
    flow = (_smooth_map(2, 8, 1) - 0.5)[:, None].repeat(1, 2, 1, 1, 1) * 3  # (1, 2, 8, 8, 2)
    th = 0.1
    a = t64([[[[math.cos(th), -math.sin(th), 1.0], [math.sin(th), math.cos(th), -0.5]]] * 3])
    intr = cam(10, 8)
    vis = torch.ones(1, 3, 4, dtype=D)
    for acc in (False, True):
        assert torch.autograd.gradcheck(
            lambda x: L.flow_reprojection_loss(x, intr, a, flow, vis, crop_size=16, accumulated=acc), (verts,))


# ----------------------------------------------------------------------------- photometric

def gradient_crops(t: int) -> torch.Tensor:
    """(1, T, 10, 10, 3) covering a 20 px crop: R = 0.04 * crop x, G = 0.5, B = 0.04 * crop y
    (map pixel j is centred on crop coordinate 2 j + 0.5)."""
    c = 0.04 * (2 * torch.arange(10, dtype=D) + 0.5)
    img = torch.stack([c[None, :].expand(10, 10), torch.full((10, 10), 0.5, dtype=D), c[:, None].expand(10, 10)], -1)
    return img[None, None].repeat(1, t, 1, 1, 1)


def test_photometric_constant_and_gradient_images():
    # f = 10, centre (10, 10): at z = -1 m, 0.1 m is 1 px. Vertex 0 at u = 6 moves +2 px, vertex 1
    # at u = 10 moves +5 px, rows unchanged.
    verts = t64([[[[-0.4, 0, -1], [0, 0, -1]], [[-0.2, 0, -1], [0.5, 0, -1]]]])
    a = aligns((0, 0), (0, 0))
    vis = torch.ones(1, 2, 2, dtype=D)
    const = torch.full((1, 2, 10, 10, 3), 0.3, dtype=D)
    assert L.photometric_loss(verts, cam(10, 10), a, const, vis, crop_size=20).item() == pytest.approx(0.0)
    # R changes by 0.04 * 2 = 0.08 and 0.04 * 5 = 0.2, G and B by 0: per vertex mean over channels
    # 0.08/3 and 0.2/3 -> mean 0.28 / 6
    crops = gradient_crops(2)
    assert L.photometric_loss(verts, cam(10, 10), a, crops, vis, crop_size=20).item() == pytest.approx(0.28 / 6)
    # vertex 1 hidden at the onset: only 0.08 / 3
    vis[0, 0, 1] = 0
    assert L.photometric_loss(verts, cam(10, 10), a, crops, vis, crop_size=20).item() == pytest.approx(0.08 / 3)


def test_photometric_reference_detached():
    verts = t64([[[[-0.4, 0, -1], [0, 0, -1]], [[-0.2, 0, -1], [0.5, 0, -1]]]]).requires_grad_(True)
    args = (cam(10, 10), aligns((0, 0), (0, 0)), gradient_crops(2), torch.ones(1, 2, 2, dtype=D))
    L.photometric_loss(verts, *args, crop_size=20).backward()
    assert verts.grad[0, 0].abs().max() == 0 and verts.grad[0, 1].abs().max() > 0
    verts.grad = None
    L.photometric_loss(verts, *args, crop_size=20, detach_reference=False).backward()
    assert verts.grad[0, 0].abs().max() > 0


def test_photometric_gradcheck():
    verts = _random_verts(3, 4, 2)
    crops = _smooth_map(3, 16, 3)[:, None].repeat(1, 3, 1, 1, 1) * torch.tensor([1.0, 0.7, 0.4], dtype=D)
    crops[:, 1:] = crops[:, 1:].flip(-2)                   # later frames differ from the onset
    intr, a, vis = cam(10, 8), aligns((0, 0), (0.3, -0.2), (0.5, 0.1)), torch.ones(1, 3, 4, dtype=D)
    v = verts.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: L.photometric_loss(x, intr, a, crops, vis, crop_size=16, detach_reference=False), (v,))
    # detached reference: gradient only through frames t >= 1
    later = verts[:, 1:].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: L.photometric_loss(torch.cat([verts[:, :1], x], 1), intr, a, crops, vis, crop_size=16), (later,))


# ----------------------------------------------------------------------------- visibility

def quad(x0, x1, y0, y1, z):
    """4 corners and 2 counter-clockwise triangles facing the camera (+z)."""
    return [[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], [[0, 1, 2], [0, 2, 3]]


def test_vertex_visibility_occlusion_facing_and_bounds():
    parts = [quad(-0.2, 0.2, -0.2, 0.2, -1.0),    # near: px 30..70, visible
             quad(-0.2, 0.2, -0.2, 0.2, -2.0),    # far, px 40..60: entirely behind the near quad
             quad(0.6, 0.9, -0.2, 0.2, -2.0)]     # far, px 80..95: beside it, visible
    verts, faces = [], []
    for v, f in parts:
        faces += [[i + len(verts) for i in tri] for tri in f]
        verts += v
    verts += [[-1.0, -0.2, -1.5], [-1.0, 0.2, -1.5], [-0.6, -0.2, -1.5]]   # wound clockwise: back side
    faces.append([len(verts) - 3, len(verts) - 2, len(verts) - 1])
    verts += [[1.2, 0, -1.0], [1.4, 0, -1.0], [1.4, 0.1, -1.0]]            # px 170..190: off image
    faces.append([len(verts) - 3, len(verts) - 2, len(verts) - 1])
    v = np.array([verts], np.float64)
    expect = [True] * 4 + [False] * 4 + [True] * 4 + [False] * 3 + [False] * 3
    vis = vertex_visibility(v, np.array(faces), np.array([100.0, 50, 50]), 101, 101)
    assert vis.shape == (1, 18) and vis[0].tolist() == expect
    vis_t = vertex_visibility(torch.as_tensor(v), torch.as_tensor(faces), torch.tensor([100.0, 50, 50]), 101, 101)
    assert vis_t.dtype == torch.bool and vis_t[0].tolist() == expect
    # moving the far quad in front (z = -0.5, px 10..90) hides the near one instead
    v2 = v.copy()
    v2[0, 4:8, 2] = -0.5
    vis2 = vertex_visibility(v2, np.array(faces), np.array([100.0, 50, 50]), 101, 101)
    assert vis2[0, :4].tolist() == [False] * 4 and vis2[0, 4:8].all()


# ----------------------------------------------------------------------------- parameter terms

def test_expression_terms_and_gram():
    e = t64([[[1, 2], [0, 1]]])                            # (1, 2, 2)
    # plain: (1 + 4 + 0 + 1) / 2 = 3
    assert L.expression_regularization(e).item() == pytest.approx(3.0)
    # G = [[1, .5], [.5, 1]]: (1,2) -> 1 + 2*0.5*2 + 4 = 7; (0,1) -> 1; mean 4
    g = t64([[1, 0.5], [0.5, 1]])
    assert L.expression_regularization(e, g).item() == pytest.approx(4.0)
    assert L.expression_consistency_loss(e, e - t64([1, 0]), g).item() == pytest.approx(1.0)
    assert L.expression_consistency_loss(e, torch.zeros_like(e)).item() == pytest.approx(3.0)
    # identity: (3,4) vs 0 -> 25; (0,0) -> 0; mean 12.5
    assert L.identity_consistency_loss(t64([[3, 4], [0, 0]]), torch.zeros(2, 2, dtype=D)).item() \
        == pytest.approx(12.5)
    # fake model: 2 face vertices; basis 0 moves vertex 0 by 1 mm, basis 1 moves vertex 1 by 2 mm;
    # the third vertex (outside the face) moves a lot but does not count. G = diag(1/2, 4/2).
    dirs = np.zeros((3, 3, 2), np.float32)
    dirs[0, 0, 0], dirs[1, 1, 1], dirs[2, 2, :] = 0.001, 0.002, 1.0
    model = SimpleNamespace(region_labels=np.array([0, 3, -1]), exprdirs=dirs, shapedirs=dirs)
    gram = expression_gram(model, dtype=D)
    assert gram.numpy() == pytest.approx(np.diag([0.5, 2.0]))
    # e = (1, 1): mean squared displacement over the face (1 + 4) / 2 = 2.5 mm^2
    assert L.expression_regularization(t64([[[1, 1]]]), gram).item() == pytest.approx(2.5)
    assert identity_gram(model, dtype=D).numpy() == pytest.approx(np.diag([0.5, 2.0]))


# ----------------------------------------------------------------------------- Laplacian

def hexagon_fan():
    ang = np.arange(6) * np.pi / 3
    verts = np.concatenate([[[0, 0, 0]], np.stack([np.cos(ang), np.sin(ang), 0 * ang], 1)])
    faces = np.array([[0, k, k % 6 + 1] for k in range(1, 7)])
    return verts, faces


def test_uniform_laplacian_hexagon():
    verts, faces = hexagon_fan()
    lap = L.laplacian_matrix(faces, 7, kind="uniform", dtype=D)
    dense = lap.to_dense()
    assert dense[0].tolist() == pytest.approx([1] + [-1 / 6] * 6)
    # the centre of a regular hexagon is the mean of its ring: zero Laplacian
    assert (dense @ t64(verts))[0].tolist() == pytest.approx([0, 0, 0], abs=1e-12)
    # centre displaced by 1 mm in z, ring still: L dV = (0,0,1) mm at the centre and -(0,0,1/3) on
    # each ring vertex (neighbours: centre + 2 ring) -> E|L dV|^2 = (1 + 6/9) / 7 = 5/21 mm^2
    delta = torch.zeros(1, 1, 7, 3, dtype=D)
    delta[0, 0, 0, 2] = 0.001
    assert L.laplacian_loss(delta, lap).item() == pytest.approx(5 / 21)


def test_cotangent_laplacian_right_isosceles_pair():
    # unit square split along 0-2: right angles at 1 and 3 (cot 0 -> diagonal weight 0), 45-degree
    # angles elsewhere (cot 1): each side weighs 1/2. Rows normalised: row 0 = [1, -1/2, 0, -1/2].
    verts = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float64)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    cot = L.laplacian_matrix(faces, 4, verts=verts, dtype=D).to_dense()     # cotangent is the default
    assert cot.numpy() == pytest.approx(np.array([[1, -.5, 0, -.5], [-.5, 1, -.5, 0],
                                                  [0, -.5, 1, -.5], [-.5, 0, -.5, 1]]))
    uni = L.laplacian_matrix(faces, 4, kind="uniform", dtype=D).to_dense()
    assert uni[0].tolist() == pytest.approx([1, -1 / 3, -1 / 3, -1 / 3])
    # lift vertex 2 by 3 mm: cotangent rows 0..3 give z = 0, -1.5, 3, -1.5 mm -> mean sq 13.5/4
    delta = torch.zeros(1, 1, 4, 3, dtype=D)
    delta[0, 0, 2, 2] = 0.003
    assert L.laplacian_loss(delta, L.laplacian_matrix(faces, 4, verts=verts, dtype=D)).item() \
        == pytest.approx((2.25 + 9 + 2.25) / 4)
    with pytest.raises(ValueError):
        L.laplacian_matrix(faces, 4)                      # cotangent needs positions
    with pytest.raises(ValueError):
        L.laplacian_matrix(faces, 4, kind="nope")


def test_cotangent_has_linear_precision_uniform_does_not():
    from scipy.spatial import Delaunay

    rng = np.random.default_rng(0)
    xy = np.concatenate([rng.uniform(0, 1, (40, 2)), [[0, 0], [1, 0], [1, 1], [0, 1]]])
    faces = Delaunay(xy).simplices
    verts = np.concatenate([xy, np.zeros((len(xy), 1))], 1)
    interior = np.all((xy > 1e-9) & (xy < 1 - 1e-9), 1) & ~np.isin(np.arange(len(xy)), Delaunay(xy).convex_hull)
    field = verts @ np.array([[0.3, 0, 1.0], [0.1, 0.2, -2.0], [0, 0, 0]])  # linear displacement field
    for kind, zero in (("cotangent", True), ("uniform", False)):
        lap = L.laplacian_matrix(faces, len(xy), kind=kind, verts=verts, dtype=D).to_dense().numpy()
        res = np.abs(lap @ field)[interior].max()
        assert (res < 1e-9) == zero, (kind, res)


def test_laplacian_gradcheck():
    verts, faces = hexagon_fan()
    lap = L.laplacian_matrix(faces, 7, verts=verts + [0, 0.1, 0], dtype=D)
    delta = (torch.rand(2, 2, 7, 3, dtype=D) * 1e-3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda d: L.laplacian_loss(d, lap), (delta,))


# ----------------------------------------------------------------------------- normals

def test_normal_consistency_rotated_triangle():
    tri = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float64)
    th = 0.3
    rx = np.array([[1, 0, 0], [0, math.cos(th), -math.sin(th)], [0, math.sin(th), math.cos(th)]])
    init = t64(np.concatenate([tri, tri + [2, 0, 0]]))[None, None]                  # two triangles
    refined = t64(np.concatenate([tri @ rx.T, tri + [2, 0, 0]]))[None, None]      # first rotated by 0.3 rad
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    # (1 - cos 0.3 + 0) / 2
    assert L.normal_consistency_loss(refined, init, faces).item() == pytest.approx((1 - math.cos(th)) / 2)
    flipped = init[..., [0, 2, 1, 3, 4, 5], :]            # winding reversed on the first: normal flipped
    assert L.normal_consistency_loss(flipped, init, faces).item() == pytest.approx(1.0)   # (2 + 0) / 2


def test_normal_consistency_gradcheck():
    verts, faces = hexagon_fan()
    init = t64(verts)[None, None].expand(1, 2, 7, 3)
    refined = (init + 0.05 * torch.rand(1, 2, 7, 3, dtype=D)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: L.normal_consistency_loss(v, init, faces), (refined,))


# ----------------------------------------------------------------------------- flow-guided

def test_flow_guided_two_vertices():
    delta = t64([[[[0.003, 0.004, 0], [0, 0, 0.002]]]])   # |dV| = 5 mm and 2 mm
    w = t64([[[0.2, 0.9]]])
    # E[|dV| M_low] = (5*1 + 2*0)/2 = 2.5; E[|dV| W] = (5*0.2 + 2*0.9)/2 = 1.4; 2.5 - 0.1*1.4 = 2.36
    assert L.flow_guided_loss(delta, w).item() == pytest.approx(2.36)
    # W = 0.5 is not "low": only the reward remains, -0.1 * (5*0.5 + 2*0.5)/2 = -0.175
    assert L.flow_guided_loss(delta, t64([[[0.5, 0.5]]])).item() == pytest.approx(-0.175)
    # zero displacement: value 0 and a finite (zero) gradient
    z = torch.zeros(1, 1, 2, 3, dtype=D, requires_grad=True)
    L.flow_guided_loss(z, w).backward()
    assert torch.isfinite(z.grad).all()


# ----------------------------------------------------------------------------- supervised

def test_vertex_and_motion_loss_mm():
    gt = torch.zeros(1, 2, 2, 3, dtype=D)
    pred = gt.clone()
    pred[0, :, 0] = t64([0.003, 0.004, 0])                 # vertex 0 off by 5 mm in both frames
    assert L.vertex_loss(pred, gt).item() == pytest.approx(2.5)             # (5 + 0) / 2
    assert L.vertex_loss(pred, gt, torch.tensor([True, False])).item() == pytest.approx(5.0)
    # a constant offset is no motion
    assert L.motion_loss(pred, gt).item() == pytest.approx(0.0)
    # frame 1 of vertex 1 moves (0, 3, 4) mm while the truth is still -> frames != onset: (0 + 5) / 2
    pred[0, 1, 1] = t64([0, 0.003, 0.004])
    assert L.motion_loss(pred, gt).item() == pytest.approx(2.5)
    # with frame 1 as the onset the error shows at frame 0 instead: same value
    assert L.motion_loss(pred, gt, onset_index=1).item() == pytest.approx(2.5)


# ----------------------------------------------------------------------------- total

def test_total_loss_combines_rec_and_geo():
    terms = {"flow": t64(0.5), "photo": t64(0.1), "lap": t64(2.0), "normal": t64(0.01)}
    w = {"flow": 1.0, "photo": 2.0, "lap": 10.0, "normal": 10.0, "geo": 0.5}
    total, log = L.total_loss(terms, w)
    # rec = 0.5 + 0.2 = 0.7; geo = 20 + 0.1 = 20.1; total = 0.7 + 0.5 * 20.1 = 10.75
    assert total.item() == pytest.approx(10.75)
    assert log["rec"] == pytest.approx(0.7) and log["geo"] == pytest.approx(20.1)
    assert log["lap"] == pytest.approx(2.0) and log["total"] == pytest.approx(10.75)
    with pytest.raises(KeyError):
        L.total_loss({"flow": t64(1.0), "mystery": t64(1.0)}, w)
    with pytest.raises(KeyError):
        L.total_loss({"lap": t64(1.0)}, {"lap": 1.0})      # lambda_geo missing
    # a zero-weighted NaN term does not poison the total
    total, _ = L.total_loss({"flow": t64(1.0), "vertex": t64(float("nan"))}, L.LossWeights())
    assert total.item() == pytest.approx(L.LossWeights().flow)


def test_photometric_accepts_uint8_crops():
    # the dataset's uint8 crops give the float result to within rounding of 1/255 levels
    verts = t64([[[[-0.4, 0, -1], [0, 0, -1]], [[-0.2, 0, -1], [0.5, 0, -1]]]])
    args = (cam(10, 10), aligns((0, 0), (0, 0)))
    vis = torch.ones(1, 2, 2, dtype=D)
    crops8 = (gradient_crops(2) * 255).round().to(torch.uint8)
    assert L.photometric_loss(verts, *args, crops8, vis, crop_size=20).item() == pytest.approx(0.28 / 6, abs=2e-3)
