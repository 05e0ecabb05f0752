"""Rasterizer, texture lookup and OBJ reader: coverage, perspective, z-buffer, shading, UVs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_fill_holes, distance_transform_edt
from scipy.spatial.transform import Rotation

from backend.head.camera import project, project_np
from backend.errors import MicroFaceError
from backend.head.flame import load_flame
from backend.synthetic.obj import read_obj
from backend.head.render import Light, rasterize, render, sample_texture

TEMPLATE_OFFSET = np.array([0.0, 1.50308116, 0.01649517])


@pytest.fixture(scope="module")
def model():
    return load_flame()


def _unproject(px: np.ndarray, depth: float, k: np.ndarray) -> np.ndarray:
    """(N, 2) pixels at positive depth -> (N, 3) camera-space points."""
    f, cx, cy = k
    return np.stack([(px[:, 0] - cx) * depth / f, -(px[:, 1] - cy) * depth / f, np.full(len(px), -depth)], 1)


def _head_in_camera(model, yaw_deg: float = 0.0, distance: float = 0.55) -> np.ndarray:
    v = model.v_template.astype(np.float64)
    centre = v[model.region_labels >= 0].mean(0)
    return Rotation.from_euler("y", yaw_deg, degrees=True).apply(v - centre) + [0.0, 0.0, -distance]


def test_triangle_coverage_matches_analytic_area():
    k = np.array([300.0, 99.5, 79.5])
    corners = np.array([[23.3, 17.8], [181.6, 40.2], [70.9, 150.4]])
    verts = _unproject(corners, 2.0, k)
    r = render(verts, np.array([[0, 1, 2]]), k, 200, 160, light=None, cull_backfaces=False)
    (x0, y0), (x1, y1), (x2, y2) = corners
    area = 0.5 * abs((x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0))
    covered = (r.face_index == 0).sum()
    assert abs(covered - area) < 0.01 * area, (covered, area)
    assert np.allclose(r.depth[r.face_index == 0], 2.0, atol=1e-6)
    assert np.isinf(r.depth[r.face_index < 0]).all()
    assert (r.image[r.face_index < 0] == 0).all()


def test_barycentrics_are_perspective_correct():
    # A triangle strongly slanted in depth: the bary-weighted 3D point must lie on each pixel's ray.
    k = np.array([250.0, 127.5, 127.5])
    verts = np.array([[-0.3, -0.2, -0.6], [0.35, -0.1, -2.5], [0.0, 0.3, -1.2]])
    r = render(verts, np.array([[0, 1, 2]]), k, 256, 256, light=None, cull_backfaces=False)
    hit = np.argwhere(r.face_index == 0)
    assert len(hit) > 2000
    b = r.bary[hit[:, 0], hit[:, 1]].astype(np.float64)
    assert np.allclose(b.sum(1), 1.0, atol=1e-5) and (b >= -1e-6).all()
    points = b @ verts
    reproj = project_np(points, k)
    assert np.abs(reproj - hit[:, ::-1]).max() < 1e-3
    assert np.allclose(-points[:, 2], r.depth[hit[:, 0], hit[:, 1]], rtol=1e-5)
    # Screen-linear interpolation would miss by many pixels on this triangle.
    assert np.ptp(-points[:, 2]) > 1.0


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_nearer_triangle_wins_regardless_of_order(order):
    k = np.array([200.0, 63.5, 63.5])
    near = _unproject(np.array([[10.0, 10.0], [110.0, 20.0], [40.0, 110.0]]), 1.0, k)
    far = _unproject(np.array([[20.0, 100.0], [120.0, 110.0], [70.0, 5.0]]), 1.5, k)
    verts = np.vstack([near, far])
    tris = [np.array([0, 1, 2]), np.array([3, 4, 5])]
    faces = np.stack([tris[i] for i in order])
    near_id = order.index(0)
    colours = np.repeat([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], 3, axis=0)
    r = render(verts, faces, k, 128, 128, vertex_colors=colours, light=None, cull_backfaces=False)
    # Coverage of each triangle alone (flat depth), to find where they overlap.
    only_near = rasterize(project_np(near, k)[None], np.ones((1, 3)), 128, 128)[0] >= 0
    only_far = rasterize(project_np(far, k)[None], np.ones((1, 3)), 128, 128)[0] >= 0
    both = only_near & only_far
    assert both.sum() > 500
    assert (r.face_index[both] == near_id).all()
    assert np.allclose(r.depth[both], 1.0, atol=1e-6)
    assert np.allclose(r.image[both], [1.0, 0.0, 0.0])
    assert (r.face_index[only_far & ~only_near] == 1 - near_id).all()


def test_backface_culling_drops_clockwise_triangles():
    k = np.array([200.0, 63.5, 63.5])
    ccw = _unproject(np.array([[10.0, 100.0], [100.0, 100.0], [50.0, 10.0]]), 1.0, k)  # CCW seen from camera
    front = render(ccw, np.array([[0, 1, 2]]), k, 128, 128, light=None, cull_backfaces=True)
    back = render(ccw, np.array([[0, 2, 1]]), k, 128, 128, light=None, cull_backfaces=True)
    both_sides = render(ccw, np.array([[0, 2, 1]]), k, 128, 128, light=None, cull_backfaces=False)
    assert (front.face_index == 0).sum() > 3000
    assert (back.face_index >= 0).sum() == 0
    assert (both_sides.face_index == 0).sum() == (front.face_index == 0).sum()
    cavity = render(ccw, np.array([[0, 2, 1]]), k, 128, 128, light=None, cull_backfaces=False,
                    inside_albedo=(0.0, 1.0, 0.0))
    assert np.allclose(cavity.image[cavity.face_index == 0], [0.0, 1.0, 0.0])
    assert np.allclose(front.image[front.face_index == 0], 0.7)   # front faces keep their albedo


def test_lambert_shading_follows_light_direction():
    k = np.array([100.0, 31.5, 31.5])
    verts = _unproject(np.array([[0.0, 0.0], [80.0, 0.0], [0.0, 80.0], [80.0, 80.0]]), 1.0, k)
    faces = np.array([[0, 2, 1], [1, 2, 3]])  # facing the camera (normal +z)
    albedo = np.full((4, 3), 0.5)
    lit = render(verts, faces, k, 64, 64, vertex_colors=albedo, light=Light((0, 0, 1), 0.6, 0.3))
    grazing = render(verts, faces, k, 64, 64, vertex_colors=albedo, light=Light((1, 0, 1), 0.6, 0.3))
    behind = render(verts, faces, k, 64, 64, vertex_colors=albedo, light=Light((0, 0, -1), 0.6, 0.3))
    inside_out = render(verts, faces[:, ::-1], k, 64, 64, vertex_colors=albedo, light=Light((0, 0, 1), 0.6, 0.3),
                        cull_backfaces=False)
    m = lit.face_index >= 0
    assert m.sum() > 3000
    assert np.allclose(inside_out.image[m], lit.image[m])      # two-sided: the visible side is lit
    assert np.allclose(lit.image[m], 0.5 * 0.9, atol=1e-5)
    assert np.allclose(grazing.image[m], 0.5 * (0.3 + 0.6 * np.sqrt(0.5)), atol=1e-5)
    assert np.allclose(behind.image[m], 0.5 * 0.3, atol=1e-5)


def test_sample_texture_bilinear_and_obj_uv_convention():
    tex = np.zeros((2, 4, 1))
    tex[0, :, 0] = [0.0, 1.0, 2.0, 3.0]       # top row (v near 1)
    tex[1, :, 0] = [10.0, 11.0, 12.0, 13.0]   # bottom row (v near 0)
    # Texel centres: u = (i + 0.5) / 4, v = 1 - (j + 0.5) / 2.
    uv = np.array([[0.125, 0.75], [0.375, 0.25], [0.25, 0.75], [0.25, 0.5], [-1.0, 2.0]])
    got = sample_texture(tex, uv)[:, 0]
    assert np.allclose(got, [0.0, 11.0, 0.5, 5.5, 0.0])
    assert np.allclose(sample_texture(np.full((1, 1, 3), 0.3), uv), 0.3)


def test_clipped_and_behind_camera_triangles():
    k = np.array([100.0, 31.5, 31.5])
    # Half outside the image: only in-frame pixels are covered, as the analytic clipped area says.
    verts = _unproject(np.array([[-40.0, 0.0], [40.0, 0.0], [-40.0, 80.0]]), 1.0, k)
    r = render(verts, np.array([[0, 2, 1]]), k, 64, 64, light=None)
    expected = sum(1 for v in range(64) for u in range(64) if u <= 40 - v)       # the part with u >= 0
    assert abs((r.face_index == 0).sum() - expected) <= 0.02 * expected
    # A corner behind the camera: the triangle is dropped, not smeared across the frame.
    behind = verts.copy()
    behind[1, 2] = 0.5
    assert (render(behind, np.array([[0, 2, 1]]), k, 64, 64, cull_backfaces=False).face_index < 0).all()


def test_textured_quad_shows_texture_quadrants():
    k = np.array([100.0, 31.5, 31.5])
    verts = _unproject(np.array([[4.0, 4.0], [60.0, 4.0], [4.0, 60.0], [60.0, 60.0]]), 1.0, k)
    faces = np.array([[0, 2, 1], [1, 2, 3]])
    uv = np.array([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])  # image top = v 1
    tex = np.zeros((64, 64, 3), np.float32)
    tex[:32, :32] = [1, 0, 0]
    tex[:32, 32:] = [0, 1, 0]
    tex[32:, :32] = [0, 0, 1]
    tex[32:, 32:] = [1, 1, 1]
    r = render(verts, faces, k, 64, 64, face_uvs=uv[faces], texture=tex, light=None)
    assert np.allclose(r.image[12, 12], [1, 0, 0]) and np.allclose(r.image[12, 52], [0, 1, 0])
    assert np.allclose(r.image[52, 12], [0, 0, 1]) and np.allclose(r.image[52, 52], [1, 1, 1])
    with pytest.raises(ValueError):
        render(verts, faces, k, 64, 64, texture=tex)


@pytest.mark.parametrize("size", [(256, 256), (640, 360)])
def test_flame_vertices_project_inside_rendered_silhouette(model, size):
    w, h = size
    k = np.array([1.2 * h, (w - 1) / 2, (h - 1) / 2])
    verts = _head_in_camera(model)
    r = render(verts, model.faces, k, w, h)
    silhouette = r.face_index >= 0
    px = np.rint(project(torch.as_tensor(verts), torch.as_tensor(k)).numpy()).astype(int)
    # Coverage is sampled at pixel centres, so vertices on the outline may round one pixel out.
    outside_px = distance_transform_edt(~silhouette)[px[:, 1], px[:, 0]]
    assert outside_px.max() <= 1.0 + 1e-9
    assert (outside_px == 0).mean() > 0.97, (outside_px == 0).mean()
    # With the z-test alone nothing shows through: no cracks between triangles.
    r_all = render(verts, model.faces, k, w, h, cull_backfaces=False)
    assert not (binary_fill_holes(r_all.face_index >= 0) & ~(r_all.face_index >= 0)).any()
    # Culling back faces only opens the few pixels that look into the open mesh (lip seam).
    assert ((r_all.face_index >= 0) != silhouette).sum() < 0.003 * silhouette.sum()
    assert r.image[silhouette].min() > 0 and r.image[~silhouette].max() == 0


def _brute_force_depth(px_corners: np.ndarray, depth_corners: np.ndarray, pixel: np.ndarray) -> float:
    """Nearest depth of any triangle covering ``pixel`` (2,), by testing every triangle."""
    x, y = px_corners[..., 0], px_corners[..., 1]
    area2 = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (x[:, 2] - x[:, 0]) * (y[:, 1] - y[:, 0])
    u, v = pixel
    l0 = ((x[:, 2] - x[:, 1]) * (v - y[:, 1]) - (y[:, 2] - y[:, 1]) * (u - x[:, 1])) / area2
    l1 = ((x[:, 0] - x[:, 2]) * (v - y[:, 2]) - (y[:, 0] - y[:, 2]) * (u - x[:, 2])) / area2
    lam = np.stack([l0, l1, 1 - l0 - l1], 1)
    inside = (lam >= -1e-9).all(1) & (np.abs(area2) > 1e-12)
    if not inside.any():
        return np.inf
    return float((1.0 / (lam[inside] / depth_corners[inside]).sum(1)).min())


@pytest.mark.parametrize("yaw", [0.0, 70.0])
def test_head_zbuffer_matches_brute_force(model, yaw):
    # At 70 degrees of yaw the nose hides part of the far cheek: visibility must come from depth.
    w = h = 160
    k = np.array([1.2 * h, (w - 1) / 2, (h - 1) / 2])
    verts = _head_in_camera(model, yaw)
    r = render(verts, model.faces, k, w, h, cull_backfaces=False)
    px = project_np(verts, k)[model.faces]
    dz = -verts[model.faces, 2]
    rng = np.random.default_rng(0)
    hits = np.argwhere(r.face_index >= 0)
    for row, col in hits[rng.choice(len(hits), 150, replace=False)]:
        expected = _brute_force_depth(px, dz, np.array([col, row], float))
        assert abs(r.depth[row, col] - expected) < 1e-5, (row, col, r.depth[row, col], expected)
    # The point nearest the camera is visible, the farthest is hidden behind the head.
    for idx, visible in ((int(np.argmax(verts[:, 2])), True), (int(np.argmin(verts[:, 2])), False)):
        u_, v_ = np.rint(project_np(verts[idx:idx + 1], k)[0]).astype(int)
        seen = r.depth[v_, u_]
        if visible:
            assert abs(seen - (-verts[idx, 2])) < 0.002
        else:
            assert seen < -verts[idx, 2] - 0.05


def test_read_obj_faces_uvs_and_errors(tmp_path):
    p = tmp_path / "quad.obj"
    p.write_text("# quad\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\n"
                 "vn 0 0 1\nf 1/1/1 2/2/1 3/3/1 4/4/1\nf -4/-4 -2/-2 -1/-1\n")
    mesh = read_obj(p)
    assert mesh.faces.tolist() == [[0, 1, 2], [0, 2, 3], [0, 2, 3]]
    assert mesh.face_uvs.shape == (3, 3, 2)
    assert np.allclose(mesh.face_uvs[1], [[0, 0], [1, 1], [0, 1]])
    p.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nf 1//1 2//1 3//1\n")
    no_uv = read_obj(p)
    assert no_uv.face_uv_indices is None
    with pytest.raises(MicroFaceError):
        no_uv.face_uvs
    p.write_text("v 0 0 0\nv 1 0 0\nf 1 2 5\n")
    with pytest.raises(MicroFaceError, match=r"quad.obj:3"):
        read_obj(p)


def test_read_head_template_matches_model(model):
    mesh = read_obj(model.path.parent / "head_template.obj")
    assert mesh.vertices.shape == model.v_template.shape
    assert np.array_equal(mesh.faces, model.faces)
    assert np.abs(mesh.vertices - TEMPLATE_OFFSET - model.v_template).max() < 1e-6
    uv = mesh.face_uvs
    assert uv.shape == (len(model.faces), 3, 2)
    assert uv.min() >= 0.0 and uv.max() <= 1.0
    # Seams: some vertices carry different UVs on different triangles.
    per_vertex = {}
    seams = 0
    for f, t in zip(mesh.faces.reshape(-1), mesh.face_uv_indices.reshape(-1)):
        seams += per_vertex.setdefault(int(f), int(t)) != int(t)
    assert seams > 0


def test_face_width_is_the_median_pixel_span_of_the_face_region():
    from backend.head.camera import face_width_px

    k = np.array([800.0, 319.5, 239.5])
    labels = np.array([0, 3, 3, -1])                 # the last vertex lies outside the face regions
    frames = []
    for width_px in (100.0, 120.0, 90.0, 400.0):     # face spans; the 400 px frame has no face
        px = np.array([[300.0, 200.0], [300.0 + width_px, 220.0], [310.0, 260.0], [0.0, 0.0]])
        frames.append(_unproject(px, 0.6, k))
    frames = np.stack(frames)
    valid = np.array([True, True, True, False])
    assert face_width_px(frames, labels, k, valid) == pytest.approx(100.0)       # median of 100, 120, 90
    assert face_width_px(frames, labels, k) == pytest.approx(110.0)              # every frame counted
