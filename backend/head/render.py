"""A small z-buffer triangle rasterizer in numpy, for synthetic clips and photometric checks.

The camera is :mod:`backend.head.camera`'s pinhole: at the origin looking down -z, +y up; pixel
centres sit at integer (u, v) with v down. Coverage is sampled at pixel centres only (no
anti-aliasing; render larger and downsample for that). Barycentrics are perspective-correct.
All triangles are scan-converted at once: each row of a triangle's bounding box gets the span
of pixels inside its three edges, spans expand to fragments in vectorised chunks, and the
nearest fragment per pixel wins.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .camera import project_np

# Fragments (triangle, pixel) depth-sorted at once; bounds peak memory at roughly 100 bytes each.
_FRAGMENT_CHUNK = 1 << 20


@dataclass(frozen=True)
class Light:
    """Ambient plus one directional light, in camera space.

    ``direction`` points from the surface toward the light (need not be unit length); (0, 0, 1)
    lights the face from the camera. Shaded colour = albedo * (ambient + intensity * max(0, n.l)).
    """

    direction: tuple[float, float, float] = (0.3, 0.5, 1.0)
    intensity: float = 0.7
    ambient: float = 0.35


class Rendering(NamedTuple):
    image: np.ndarray        # (H, W, 3) float32 in 0..1
    depth: np.ndarray        # (H, W) float32 metres along -z (positive in front), inf on background
    face_index: np.ndarray   # (H, W) int64 triangle per pixel, -1 on background
    bary: np.ndarray         # (H, W, 3) float32 perspective-correct barycentrics, 0 on background


def rasterize(corners_px: np.ndarray, corners_depth: np.ndarray, width: int, height: int,
              cull_backfaces: bool = False, near: float = 1e-4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Visible triangle, barycentrics and depth per pixel.

    corners_px (F, 3, 2) pixel coordinates of each triangle's corners; corners_depth (F, 3)
    positive view depth (metres, or any positive value whose reciprocal interpolates linearly
    on screen; pass ones for an orthographic bake). With ``cull_backfaces`` triangles that wind
    clockwise on the camera's image plane (counter-clockwise in pixel coordinates with v down)
    are dropped: that is the back side of an outward, counter-clockwise mesh such as FLAME.
    Triangles with a corner nearer than ``near`` are dropped. A pixel centre on an edge shared by
    two triangles belongs to both (the z-test picks one), so meshes rasterize without cracks.
    Returns face_index (H, W) int64 (-1 = none), bary (H, W, 3) float64, depth (H, W) float64 (inf = none).
    """
    corners_px = np.asarray(corners_px, np.float64)
    corners_depth = np.asarray(corners_depth, np.float64)
    n_pix = width * height
    zbuf = np.full(n_pix, np.inf)
    fbuf = np.full(n_pix, -1, np.int64)

    x, y = corners_px[..., 0], corners_px[..., 1]
    area2 = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (x[:, 2] - x[:, 0]) * (y[:, 1] - y[:, 0])
    keep = (np.abs(area2) > 1e-12) & (corners_depth > near).all(1) & np.isfinite(corners_px).all((1, 2))
    if cull_backfaces:
        keep &= area2 < 0
    with np.errstate(invalid="ignore"):
        x0 = np.clip(np.ceil(x.min(1)), 0, width).astype(np.int64)
        x1 = np.clip(np.floor(x.max(1)), -1, width - 1).astype(np.int64)
        y0 = np.clip(np.ceil(y.min(1)), 0, height).astype(np.int64)
        y1 = np.clip(np.floor(y.max(1)), -1, height - 1).astype(np.int64)
    keep &= (x1 >= x0) & (y1 >= y0)
    tris = np.flatnonzero(keep)
    if len(tris) == 0:
        return fbuf.reshape(height, width), np.zeros((height, width, 3)), zbuf.reshape(height, width)

    # Barycentrics are affine on screen: lam_i = a_i u + b_i v + c_i. So is 1/depth.
    a, b, c = _barycentric_planes(x[tris], y[tris], area2[tris])               # (K, 3) each
    inv_depth = 1.0 / corners_depth[tris]
    za, zb, zc = (a * inv_depth).sum(1), (b * inv_depth).sum(1), (c * inv_depth).sum(1)

    # Scanlines: each triangle's rows, and on each row the span of pixels inside all three edges.
    n_rows = y1[tris] - y0[tris] + 1
    row_tri = np.repeat(np.arange(len(tris)), n_rows)
    row_v = y0[tris][row_tri] + np.arange(len(row_tri)) - np.repeat(np.cumsum(n_rows) - n_rows, n_rows)
    ra = a[row_tri]
    rc = b[row_tri] * row_v[:, None] + c[row_tri]
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = (-1e-9 - rc) / ra                                                  # lam_i >= -1e-9
    lo = np.where(ra > 0, bound, -np.inf).max(1)
    hi = np.where(ra < 0, bound, np.inf).min(1)
    blocked = ((ra == 0) & (rc < -1e-9)).any(1)
    row_u0 = np.maximum(np.ceil(np.clip(lo, -1, width)), x0[tris][row_tri]).astype(np.int64)
    row_u1 = np.minimum(np.floor(np.clip(hi, -1, width)), x1[tris][row_tri]).astype(np.int64)
    counts = np.where(blocked, 0, np.maximum(row_u1 - row_u0 + 1, 0))
    rows = np.flatnonzero(counts)
    counts = counts[rows]
    ends = np.cumsum(counts)
    row_za, row_z0 = za[row_tri[rows]], zb[row_tri[rows]] * row_v[rows] + zc[row_tri[rows]]

    start = 0
    while start < len(rows):
        # Take rows until the chunk holds about _FRAGMENT_CHUNK pixels.
        base = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + _FRAGMENT_CHUNK, side="right")))
        cnt = counts[start:stop]
        frag_row = np.repeat(np.arange(start, stop), cnt)
        u = row_u0[rows[frag_row]] + np.arange(int(cnt.sum())) - np.repeat(ends[start:stop] - cnt - base, cnt)
        z = 1.0 / (row_za[frag_row] * u + row_z0[frag_row])
        pix = row_v[rows[frag_row]] * width + u
        # Nearest fragment per pixel: sort by pixel then depth in one key (depth scaled to [0, 1)).
        order = np.argsort(pix + z / (z.max() * (1 + 1e-9)))
        pix_sorted = pix[order]
        first = order[np.r_[True, pix_sorted[1:] != pix_sorted[:-1]]]
        pix, z, tri = pix[first], z[first], tris[row_tri[rows[frag_row[first]]]]
        nearer = z < zbuf[pix]
        zbuf[pix[nearer]] = z[nearer]
        fbuf[pix[nearer]] = tri[nearer]
        start = stop

    bary = np.zeros((n_pix, 3))
    hit = np.flatnonzero(fbuf >= 0)
    if len(hit):
        tri = fbuf[hit]
        lam = np.clip(_screen_barycentrics(x[tri], y[tri], area2[tri], hit % width, hit // width), 0.0, None)
        w = lam / corners_depth[tri]
        bary[hit] = w / w.sum(1, keepdims=True)
    return fbuf.reshape(height, width), bary.reshape(height, width, 3), zbuf.reshape(height, width)


def _barycentric_planes(x: np.ndarray, y: np.ndarray, area2: np.ndarray) -> tuple[np.ndarray, ...]:
    """Coefficients (a, b, c), each (N, 3), with screen barycentric lam_i = a_i u + b_i v + c_i."""
    i, j = [1, 2, 0], [2, 0, 1]                      # lam_i is the edge function of edge (i+1, i+2)
    a = -(y[:, j] - y[:, i]) / area2[:, None]
    b = (x[:, j] - x[:, i]) / area2[:, None]
    c = ((y[:, j] - y[:, i]) * x[:, i] - (x[:, j] - x[:, i]) * y[:, i]) / area2[:, None]
    return a, b, c


def _screen_barycentrics(x: np.ndarray, y: np.ndarray, area2: np.ndarray, px: np.ndarray,
                         py: np.ndarray) -> np.ndarray:
    """Screen-space barycentrics (N, 3) of pixels (px, py) in triangles with corners x, y (N, 3)."""
    l0 = (x[:, 2] - x[:, 1]) * (py - y[:, 1]) - (y[:, 2] - y[:, 1]) * (px - x[:, 1])
    l1 = (x[:, 0] - x[:, 2]) * (py - y[:, 2]) - (y[:, 0] - y[:, 2]) * (px - x[:, 2])
    l2 = (x[:, 1] - x[:, 0]) * (py - y[:, 0]) - (y[:, 1] - y[:, 0]) * (px - x[:, 0])
    return np.stack([l0, l1, l2], 1) / area2[:, None]


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 3) unit normals, area-weighted from (F, 3) counter-clockwise triangles of (V, 3) points."""
    tri = verts[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    idx = faces.reshape(-1)
    vn = np.stack([np.bincount(idx, np.repeat(fn[:, k], 3), len(verts)) for k in range(3)], 1)
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-20)


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup. texture (Th, Tw, C); uv (N, 2) in OBJ convention (v = 0 at the bottom row).

    Coordinates outside [0, 1] clamp to the edge texels. Returns (N, C) float64.
    """
    th, tw = texture.shape[:2]
    tx = np.clip(uv[:, 0] * tw - 0.5, 0, tw - 1)
    ty = np.clip((1.0 - uv[:, 1]) * th - 0.5, 0, th - 1)
    ix, iy = tx.astype(np.int64), ty.astype(np.int64)
    ix1, iy1 = np.minimum(ix + 1, tw - 1), np.minimum(iy + 1, th - 1)
    fx, fy = (tx - ix)[:, None], (ty - iy)[:, None]
    t = texture.reshape(th * tw, -1)
    at = lambda r, c: t[r * tw + c].astype(np.float64)  # noqa: E731 (gather first, convert only the texels used)
    top = at(iy, ix) * (1 - fx) + at(iy, ix1) * fx
    bottom = at(iy1, ix) * (1 - fx) + at(iy1, ix1) * fx
    return top * (1 - fy) + bottom * fy


def render(verts_cam: np.ndarray, faces: np.ndarray, intrinsics: np.ndarray, width: int, height: int, *,
           vertex_colors: np.ndarray | None = None, face_uvs: np.ndarray | None = None,
           texture: np.ndarray | None = None, light: Light | None = Light(),
           background: float | np.ndarray = 0.0, cull_backfaces: bool = True,
           inside_albedo: tuple[float, float, float] | None = None) -> Rendering:
    """Render a shaded mesh.

    verts_cam (V, 3) camera-space metres (in front of the camera means z < 0); faces (F, 3)
    counter-clockwise seen from outside; intrinsics (3,) f, cx, cy in pixels.
    Albedo comes from ``vertex_colors`` (V, 3) in 0..1, or from ``texture`` (Th, Tw, 3) in 0..1
    sampled at per-corner ``face_uvs`` (F, 3, 2) (OBJ convention), or is 0.7 grey without either.
    ``light`` None leaves the albedo unshaded; back faces that remain visible are lit on their
    inner side. ``background`` is a grey level, an RGB (3,) or an (H, W, 3) image in 0..1.
    Without ``cull_backfaces`` the z-test alone decides visibility: through the openings of an
    open mesh (FLAME's parted lips) the inside of the head shows instead of the background, with
    ``inside_albedo`` (RGB 0..1) as its colour when given, e.g. a dark mouth cavity.
    """
    verts_cam = np.asarray(verts_cam, np.float64)
    faces = np.asarray(faces, np.int64)
    px = project_np(verts_cam, np.asarray(intrinsics, np.float64))
    face_index, bary, depth = rasterize(px[faces], -verts_cam[faces, 2], width, height, cull_backfaces)

    image = np.empty((height, width, 3), np.float32)
    image[:] = np.broadcast_to(np.asarray(background, np.float32), (height, width, 3)) if np.ndim(background) \
        else np.float32(background)
    hit = face_index >= 0
    tri = face_index[hit]
    b = bary[hit]
    corner_ids = faces[tri]                                           # (N, 3)
    if texture is not None:
        if face_uvs is None:
            raise ValueError("a texture needs face_uvs (F, 3, 2)")
        uv = np.einsum("nkc,nk->nc", np.asarray(face_uvs, np.float64)[tri], b)
        albedo = sample_texture(texture, uv)[:, :3]
    elif vertex_colors is not None:
        albedo = np.einsum("nkc,nk->nc", np.asarray(vertex_colors, np.float64)[corner_ids], b)
    else:
        albedo = np.full((len(tri), 3), 0.7)
    c = px[corner_ids]
    e1, e2 = c[:, 1] - c[:, 0], c[:, 2] - c[:, 0]
    backface = e1[:, 0] * e2[:, 1] > e2[:, 0] * e1[:, 1]        # counter-clockwise in pixels (v down)
    if inside_albedo is not None:
        albedo[backface] = inside_albedo
    if light is not None:
        vn = vertex_normals(verts_cam, faces)
        n = np.einsum("nkc,nk->nc", vn[corner_ids], b)
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-20)
        n[backface] *= -1  # two-sided lighting: a visible back face is lit on the side we see
        ldir = np.asarray(light.direction, np.float64)
        ldir = ldir / np.linalg.norm(ldir)
        albedo = albedo * (light.ambient + light.intensity * np.maximum(n @ ldir, 0.0))[:, None]
    image[hit] = np.clip(albedo, 0.0, 1.0)
    return Rendering(image, depth.astype(np.float32), face_index, bary.astype(np.float32))
