"""Procedural appearance for synthetic clips: a skin texture baked in UV space, and a background.

The texture has what face detectors and optical flow need to see a face: skin tone with
low-frequency blotches and pores, darker lips and mouth line, lashes, brows, nostrils, hair, and
eyeballs with iris and pupil. Features are placed from the model's landmark embedding and
regions, so any FLAME-topology model works.
"""
from __future__ import annotations

import numpy as np

from ..head.flame import FlameModel
from ..head.render import rasterize, vertex_normals


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    s = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return s * s * (3 - 2 * s)


def _distance_to_polyline(points: np.ndarray, line: np.ndarray, reach: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """Distance (N,) from 3D points to a polyline (K, 3), and the arc parameter (N,) 0..1 of the nearest point.

    Points farther than ``reach`` metres from the polyline's bounding box get distance inf.
    """
    best_all = np.full(len(points), np.inf)
    arc_all = np.zeros(len(points))
    near = np.flatnonzero(((points > line.min(0) - reach) & (points < line.max(0) + reach)).all(1))
    points = points[near]
    best = best_all[near]
    arc = arc_all[near]
    seg_len = np.linalg.norm(np.diff(line, axis=0), axis=1)
    total = max(seg_len.sum(), 1e-12)
    start = np.r_[0.0, np.cumsum(seg_len)[:-1]]
    for a, b, s0, sl in zip(line[:-1], line[1:], start, seg_len):
        ab = b - a
        t = np.clip(((points - a) @ ab) / max(ab @ ab, 1e-24), 0.0, 1.0)
        d = np.linalg.norm(points - (a + t[:, None] * ab), axis=1)
        closer = d < best
        best[closer] = d[closer]
        arc[closer] = (s0 + t[closer] * sl) / total
    best_all[near], arc_all[near] = best, arc
    return best_all, arc_all


def _texel_noise(rng: np.random.Generator, size: int, sigmas: tuple[float, ...],
                 weights: tuple[float, ...]) -> np.ndarray:
    """(size, size) zero-mean unit-ish multi-octave noise in texel space."""
    from scipy.ndimage import gaussian_filter

    out = np.zeros((size, size))
    for s, w in zip(sigmas, weights):
        n = gaussian_filter(rng.normal(size=(size, size)), s, mode="wrap")
        out += w * n / n.std()
    return out


def _fourier_noise(rng: np.random.Generator, points: np.ndarray, wavelength_mm: tuple[float, float],
                   n_waves: int = 24) -> np.ndarray:
    """(N,) smooth 3D noise on surface points (N, 3) metres, std about 1, seam-free in UV."""
    dirs = rng.normal(size=(n_waves, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    k = 2 * np.pi / (rng.uniform(*wavelength_mm, n_waves) / 1000)
    phase = rng.uniform(0, 2 * np.pi, n_waves)
    return np.sin(points @ (dirs * k[:, None]).T + phase).sum(1) * np.sqrt(2 / n_waves)


def _uv_texels(face_uvs: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Surface point under every texel: triangle (size*size,) and barycentrics (size*size, 3).

    Texels between UV islands take their nearest covered texel, so bilinear lookups at seams stay
    on the surface. The last layout is kept: every clip of a session bakes on the same one.
    """
    key = (size, face_uvs.shape, hash(np.ascontiguousarray(face_uvs).tobytes()))
    if _UV_TEXEL_CACHE.get("key") != key:
        from scipy.ndimage import distance_transform_edt

        corners = np.stack([face_uvs[..., 0] * size - 0.5, (1 - face_uvs[..., 1]) * size - 0.5], -1)
        tri, bary, _ = rasterize(corners, np.ones(face_uvs.shape[:2]), size, size)
        _, (iy, ix) = distance_transform_edt(tri < 0, return_indices=True)
        _UV_TEXEL_CACHE.update(key=key, value=(tri[iy, ix].reshape(-1), bary[iy, ix].reshape(-1, 3)))
    return _UV_TEXEL_CACHE["value"]


_UV_TEXEL_CACHE: dict = {}


def procedural_skin_texture(model: FlameModel, neutral: np.ndarray, face_uvs: np.ndarray, size: int,
                            rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) float32 RGB 0..1 UV texture (OBJ convention: row 0 is v = 1).

    Features are placed from the head's own geometry: skin tone, blotches and pores everywhere;
    lips, lid lines, brows and mouth line from the 68-point landmark embedding; iris and pupil on
    the eyeballs (vertices skinned to the eye joints); hair above the face region.
    ``neutral`` is (V, 3) head-space metres of this identity at rest.
    """
    faces = model.faces
    tri, bary = _uv_texels(face_uvs, size)
    corner = faces[tri]
    pos = (neutral[corner] * bary[:, :, None]).sum(1)                              # (N, 3) metres
    normals = vertex_normals(neutral, faces)
    nrm = (normals[corner] * bary[:, :, None]).sum(1)
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
    label = model.region_labels[corner[np.arange(len(tri)), bary.argmax(1)]]

    lmk = model.embed(neutral, "68")  # (68, 3)
    tone = np.array([[0.93, 0.76, 0.66], [0.85, 0.66, 0.54], [0.72, 0.52, 0.40], [0.55, 0.38, 0.28]])
    u = rng.uniform(0, len(tone) - 1)                                               # light .. dark
    i = min(int(u), len(tone) - 2)
    skin = (tone[i] * (1 - (u - i)) + tone[i + 1] * (u - i)) * rng.uniform(0.97, 1.03, 3)
    colour = np.tile(skin, (len(pos), 1))

    # Low-frequency blotches and redness, then texel-scale pores.
    # Wavelengths far above the vertex spacing: evaluate on vertices and interpolate.
    blotches = _fourier_noise(rng, neutral, (15, 60))
    colour *= 1 + 0.05 * (blotches[corner] * bary).sum(1)[:, None]
    red = np.array([1.04, 0.93, 0.93])
    for r in ("left_cheek", "right_cheek", "nose"):
        sel = model.region_labels == model.region_names.index(r)
        c = neutral[sel].mean(0)
        blush = np.exp(-((pos - c) ** 2).sum(1) / (2 * 0.018 ** 2)) * rng.uniform(0.4, 1.0)
        colour *= 1 + blush[:, None] * (red - 1)
    pores = _texel_noise(rng, size, (0.7, 1.5, 3.5), (0.5, 0.35, 0.25)).reshape(-1)
    colour *= (1 + 0.06 * pores)[:, None]
    speck = _texel_noise(rng, size, (0.8,), (1.0,)).reshape(-1)
    colour *= (1 - 0.10 * _smoothstep(1.8, 2.6, speck))[:, None]

    # Lips: inside the outer lip contour, redder and darker; dark line where the lips meet.
    outer = np.vstack([lmk[48:60], lmk[48:49]])
    d_lip, _ = _distance_to_polyline(pos, outer)
    inside_lip = _inside_xy(pos, lmk[48:60]) & (pos[:, 2] > lmk[48:60, 2].min() - 0.01)
    lip = np.where(inside_lip, 1.0, 1 - _smoothstep(0.0, 0.0015, d_lip)) * (pos[:, 2] > lmk[48:60, 2].min() - 0.01)
    lip_colour = skin * np.array([0.80, 0.50, 0.50]) * rng.uniform(0.85, 1.05)
    colour = colour * (1 - lip[:, None]) + lip_colour * (1 + 0.05 * pores[:, None]) * lip[:, None]
    # Inside the seam the lips curl back into the mouth: fade to a dark cavity with depth.
    seam_z = lmk[60:68, 2].mean()
    cavity = _inside_xy(pos, lmk[48:60]) * _smoothstep(0.002, 0.008, seam_z - pos[:, 2]) * (pos[:, 2] > seam_z - 0.05)
    colour = colour * (1 - cavity[:, None]) + np.array([0.22, 0.07, 0.07]) * cavity[:, None]
    d_mouth, _ = _distance_to_polyline(pos, np.vstack([lmk[60:65], lmk[64:65], lmk[65:68][::-1], lmk[60:61]]))
    colour *= (1 - 0.65 * (1 - _smoothstep(0.0004, 0.0012, d_mouth)))[:, None]

    # Eyelid lash lines and a soft socket shadow.
    hair = np.array([0.16, 0.11, 0.08]) * rng.uniform(0.5, 1.6)
    for eye in (lmk[36:42], lmk[42:48]):
        upper = eye[[0, 1, 2, 3]]
        lower = eye[[3, 4, 5, 0]]
        d_up, _ = _distance_to_polyline(pos, upper)
        d_lo, _ = _distance_to_polyline(pos, lower)
        lash = np.maximum(0.85 * (1 - _smoothstep(0.0005, 0.0016, d_up)),
                          0.45 * (1 - _smoothstep(0.0002, 0.0009, d_lo)))
        colour = colour * (1 - lash[:, None]) + 0.3 * hair * lash[:, None]
        socket = np.exp(-((pos - eye.mean(0) - [0, 0.002, 0]) ** 2).sum(1) / (2 * 0.011 ** 2))
        colour *= (1 - 0.12 * socket)[:, None]

    # Eyebrows: a band under the brow landmarks, thick at the inner end, with strand noise.
    strands = _texel_noise(rng, size, (0.6, 1.2), (0.6, 0.4)).reshape(-1)
    for brow in (lmk[17:22][::-1], lmk[22:27]):                                    # inner -> outer
        d_brow, arc = _distance_to_polyline(pos, brow - [0, 0.0025, 0])
        half = 0.0045 * (1 - arc) + 0.0018 * arc
        amount = (1 - _smoothstep(0.75, 1.15, d_brow / half)) * (0.75 + 0.25 * np.tanh(strands))
        amount *= pos[:, 2] > brow[:, 2].min() - 0.02
        colour = colour * (1 - amount[:, None]) + hair * amount[:, None]

    # Nostrils: downward-facing surface just behind the nose tip.
    nose_bottom = lmk[31:36]
    near_nostril = np.exp(-((pos - nose_bottom.mean(0) - [0, 0.002, -0.004]) ** 2).sum(1) / (2 * 0.008 ** 2))
    colour *= (1 - 0.6 * near_nostril * _smoothstep(0.3, 0.8, -nrm[:, 1]))[:, None]

    # Hair: above the face region and behind the ears, with a soft hairline.
    face_top = neutral[model.region_labels >= 0, 1].max()
    face_back = neutral[model.region_labels >= 0, 2].min()
    scalp = _smoothstep(face_top - 0.012, face_top + 0.006, pos[:, 1]) * (label < 0)
    scalp = np.maximum(scalp, _smoothstep(0.0, 0.02, face_back - 0.03 - pos[:, 2]) * _smoothstep(
        lmk[36, 1] - 0.005, lmk[36, 1] + 0.02, pos[:, 1]))
    hair_tex = hair * (1 + 0.35 * strands[:, None])
    colour = colour * (1 - scalp[:, None]) + hair_tex * scalp[:, None]

    # Eyeballs: sclera, iris with radial streaks and a dark limbal ring, pupil.
    eyeball = model.eyeball_mask()
    on_eye = eyeball[corner].all(1)
    iris_colour = np.array([[0.35, 0.22, 0.12], [0.30, 0.42, 0.55], [0.35, 0.40, 0.22], [0.18, 0.11, 0.07]])[
        rng.integers(4)]
    for positive_x in (True, False):
        sel = on_eye & ((pos[:, 0] > 0) == positive_x)
        verts = eyeball & ((neutral[:, 0] > 0) == positive_x)
        if not sel.any() or not verts.any():
            continue
        centre = neutral[verts].mean(0)
        direction = pos[sel] - centre
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        angle = np.degrees(np.arccos(np.clip(direction[:, 2], -1, 1)))
        spoke = np.arctan2(direction[:, 1], direction[:, 0])
        streak = 1 + 0.25 * np.sin(spoke * 37 + 3 * np.sin(spoke * 11)) * np.clip((angle - 10) / 15, 0, 1)
        eye_rgb = np.tile([0.90, 0.87, 0.84], (sel.sum(), 1))
        eye_rgb *= (1 - 0.15 * _smoothstep(30, 70, angle))[:, None]               # shadowed corners
        iris = 1 - _smoothstep(27, 29, angle)
        eye_rgb = eye_rgb * (1 - iris[:, None]) + iris_colour * streak[:, None] * iris[:, None]
        limbus = np.exp(-((angle - 27) / 2.5) ** 2)
        eye_rgb *= (1 - 0.5 * limbus)[:, None]
        pupil = 1 - _smoothstep(10, 11.5, angle)
        eye_rgb = eye_rgb * (1 - pupil[:, None]) + 0.03 * pupil[:, None]
        colour[sel] = eye_rgb
    return np.clip(colour, 0, 1).reshape(size, size, 3).astype(np.float32)


def _inside_xy(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """(N,) bool: points inside a polygon (K, 3), both projected on the x-y plane (even-odd rule)."""
    x, y = points[:, 0], points[:, 1]
    inside = np.zeros(len(points), bool)
    px, py = polygon[:, 0], polygon[:, 1]
    for i in range(len(polygon)):
        x0, y0, x1, y1 = px[i - 1], py[i - 1], px[i], py[i]
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            xc = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < xc)
    return inside


def background_image(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """(H, W, 3) float32 0..1: a muted two-tone gradient with soft blotches and fine grain."""
    from scipy.ndimage import gaussian_filter

    a, b = rng.uniform(0.25, 0.6, 3), rng.uniform(0.25, 0.6, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    ramp = np.clip(0.5 + (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle), 0, 1)[..., None]
    img = a * (1 - ramp) + b * ramp
    blotch = gaussian_filter(rng.normal(size=(height, width)), max(width, height) / 12)
    img *= 1 + 0.12 * (blotch / blotch.std())[..., None]
    grain = gaussian_filter(rng.normal(size=(height, width)), 1.0)
    img *= 1 + 0.04 * (grain / grain.std())[..., None]
    return np.clip(img, 0, 1).astype(np.float32)


# ----------------------------------------------------------------------------- clip
