"""Synthetic micro-expression clips with known ground truth, rendered from the head model.

A clip is a textured FLAME head in front of a fixed camera at a high frame rate. Over the clip:
a subtle, localized expression rises and falls (onset -> apex -> offset), a small displacement
outside the expression basis follows the same profile, the head drifts and trembles, the light
drifts and the sensor adds noise. Every quantity that made the pixels is returned as ground truth.

Head space is FLAME's model frame before the rigid pose (metres, +y up, +x the subject's left).
Only the global joint rotates (neck, jaw and eyes stay at rest), so every vertex moves rigidly
with the global rotation and the off-basis field rotates with it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..contract.atomic import atomic_path
from ..head.camera import default_intrinsics
from ..head.flame import FlameLayer, FlameModel, load_flame
from ..head.render import Light, render, vertex_normals
from .obj import read_obj
from .texture import background_image, procedural_skin_texture

# Seen through parted lips, the inside of the open head mesh stands in for the mouth cavity.
_MOUTH_CAVITY = (0.10, 0.03, 0.03)
# Fraction of the largest region's mean apex motion above which a region counts as active.
_ACTIVE_FRACTION = 0.3


@dataclass
class MicroExpressionSpec:
    """Which part of the face moves, how far and when.

    ``regions`` are names from ``REGION_NAMES``; None draws one or two from the seed.
    ``components`` names expression components explicitly and then overrides the choice by region.
    ``peak_mm`` is the largest head-space displacement, apex minus onset, over the vertices of
    ``regions``, from the expression basis alone. Frames default to onset T/3, apex T/2, and an
    offset 1.5x the rise time after the apex.
    """

    regions: tuple[str, ...] | None = ("mouth",)
    components: tuple[str, ...] | None = None
    components_per_region: int = 2
    peak_mm: float = 0.8
    onset: int | None = None
    apex: int | None = None
    offset: int | None = None


@dataclass
class SynthConfig:
    """Everything that defines a synthetic clip. The same config renders the same pixels."""

    fps: float = 200.0
    n_frames: int = 60
    width: int = 256
    height: int = 256
    seed: int = 0
    identity_sigma: float = 0.8             # std of the N(0, 1)-scaled identity coefficients
    micro: MicroExpressionSpec = field(default_factory=MicroExpressionSpec)
    off_basis_mm: float = 0.3               # peak of a smooth bump the expression basis cannot explain
    off_basis_radius_mm: float = 10.0       # its Gaussian radius (wider where the mesh is coarse)
    distance_m: float = 0.5                 # camera to face centre
    focal_scale: float = 1.5                # focal length = focal_scale * height, pixels
    yaw_deg: float = 0.0                    # + turns the face toward +x (the subject's left)
    pitch_deg: float = 0.0                  # + tilts the face up
    roll_deg: float = 0.0
    jitter_rotation_deg: float = 0.2        # std of slow head sway, per axis
    jitter_translation_mm: float = 0.5
    tremor_fraction: float = 0.15           # 8-12 Hz tremor amplitude relative to the drift std
    noise_std: float = 2.0                  # Gaussian sensor noise, 0..255 units
    light_azimuth_deg: float | None = None  # None: drawn from the seed
    light_elevation_deg: float | None = None
    light_intensity: float = 0.7
    light_ambient: float = 0.35
    light_direction_drift_deg: float = 4.0  # total azimuth change over the clip
    light_intensity_drift: float = 0.04     # total relative intensity change over the clip
    texture: str = "procedural"             # "procedural" or "flat"
    texture_size: int = 1024                # texels per side of the UV texture
    supersample: int = 2                    # render at this factor and area-downsample (anti-aliasing)


@dataclass
class SynthClip:
    """Rendered frames and the ground truth that made them."""

    frames: np.ndarray            # (T, H, W, 3) uint8 RGB
    fps: float
    intrinsics: np.ndarray        # (3,) f, cx, cy pixels
    width: int
    height: int
    faces: np.ndarray             # (F, 3) int64
    shape: np.ndarray             # (n_shape,)
    expr: np.ndarray              # (T, n_expr)
    pose: np.ndarray              # (T, 3*J) axis-angle radians; only the global joint is non-zero
    trans: np.ndarray             # (T, 3) metres
    vertices: np.ndarray          # (T, V, 3) metres camera space, including the off-basis field
    vertices_basis: np.ndarray    # (T, V, 3) metres camera space, FLAME output only
    vertices_head: np.ndarray     # (T, V, 3) metres head space (before the rigid pose), including off-basis
    profile: np.ndarray           # (T,) 0..1 temporal profile of the micro-expression
    onset: int
    apex: int
    offset: int
    requested_regions: list[str]
    active_regions: list[str]     # regions whose mean apex motion is >= 30% of the largest region's
    components: list[str]         # expression components that move
    off_basis_field: np.ndarray   # (V, 3) metres head space at the apex; vertices add profile[t] * R_t field
    off_basis_outside_fraction: float  # share of the field's norm no expression vector reproduces
    light_direction: np.ndarray   # (T, 3) unit, camera space, toward the light
    light_intensity: np.ndarray   # (T,)
    model_id: str
    config: SynthConfig


# ----------------------------------------------------------------------------- motion

def micro_profile(n_frames: int, onset: int, apex: int, offset: int) -> np.ndarray:
    """(T,) raised-cosine rise from onset to apex (value 1) and fall to offset; 0 outside."""
    if not 0 <= onset < apex < offset <= n_frames - 1:
        raise ValueError(f"need 0 <= onset < apex < offset < n_frames, got {onset}, {apex}, {offset}, {n_frames}")
    t = np.arange(n_frames, dtype=np.float64)
    rise = 0.5 - 0.5 * np.cos(np.pi * (t - onset) / (apex - onset))
    fall = 0.5 + 0.5 * np.cos(np.pi * (t - apex) / (offset - apex))
    return np.where(t < onset, 0.0, np.where(t <= apex, rise, np.where(t <= offset, fall, 0.0)))


def region_energy_fraction(model: FlameModel) -> np.ndarray:
    """(R, n_expr): share of each component's squared displacement that falls in each region."""
    energy = (model.exprdirs.astype(np.float64) ** 2).sum(1)                       # (V, K)
    per_region = np.stack([energy[model.region_labels == r].sum(0) for r in range(len(model.region_names))])
    return per_region / np.maximum(energy.sum(0), 1e-30)


def expression_direction(model: FlameModel, regions: list[str], per_region: int, rng: np.random.Generator,
                         components: tuple[str, ...] | None = None) -> np.ndarray:
    """(n_expr,) an unscaled expression vector whose motion concentrates in ``regions``.

    Named one-sided models (weights 0..1) mix the components whose displacement lies most inside
    the regions, with positive weights. PCA models mix the directions that maximise in-region over
    out-of-region displacement (generalised eigenvectors), with signed weights.
    """
    k = model.n_expr
    if components:
        unknown = [c for c in components if c not in model.expression_names]
        if unknown:
            raise ValueError(f"unknown expression components {unknown}")
        idx = [model.expression_names.index(c) for c in components]
        c = np.zeros(k)
        c[idx] = rng.uniform(0.5, 1.0, len(idx)) * (1 if model.expr_named else rng.choice([-1, 1], len(idx)))
        return c
    sel = np.isin(model.region_labels, [model.region_names.index(r) for r in regions])
    n = min(k, per_region * len(regions))
    if model.expr_named:
        fraction = region_energy_fraction(model)
        c = np.zeros(k)
        for r in regions:
            # Draw among the components most concentrated in this region, favouring the most local.
            inside = fraction[model.region_names.index(r)].copy()
            inside[c > 0] = 0.0
            pool = np.argsort(-inside)[:3 * per_region]
            p = inside[pool] ** 2
            idx = rng.choice(pool, min(per_region, int((p > 0).sum())), replace=False, p=p / p.sum())
            c[idx] = rng.uniform(0.5, 1.0, len(idx))
        return c
    from scipy.linalg import eigh  # only PCA models need it

    e = model.exprdirs.astype(np.float64)
    e_in = e[sel].reshape(-1, k)
    e_out = e[~sel].reshape(-1, k)
    b = e_out.T @ e_out
    _, vecs = eigh(e_in.T @ e_in, b + 1e-6 * np.trace(b) / k * np.eye(k))
    return vecs[:, -n:] @ rng.normal(size=n)


def smooth_jitter(rng: np.random.Generator, n_frames: int, fps: float, std: float,
                  tremor_fraction: float) -> np.ndarray:
    """(T, 3) slow sway (0.1-0.6 Hz) plus physiological tremor (8-12 Hz); sway std ``std`` per axis."""
    t = np.arange(n_frames)[:, None, None] / fps                                   # (T, 1, 1)
    drift_f = rng.uniform(0.1, 0.6, (1, 3, 3))
    tremor_f = rng.uniform(8.0, 12.0, (1, 3, 2))
    drift = np.sin(2 * np.pi * drift_f * t + rng.uniform(0, 2 * np.pi, (1, 3, 3))).sum(2) * std * np.sqrt(2 / 3)
    tremor = np.sin(2 * np.pi * tremor_f * t + rng.uniform(0, 2 * np.pi, (1, 3, 2))).sum(2) * std * tremor_fraction
    return drift + tremor


def off_basis_field(model: FlameModel, neutral: np.ndarray, regions: list[str], peak_mm: float,
                    radius_mm: float, rng: np.random.Generator, tries: int = 12) -> np.ndarray:
    """(V, 3) metres: a smooth bump in one of ``regions`` that the expression basis explains poorly.

    Each candidate is a Gaussian bump (``radius_mm``, or 1.5 local mesh edges where that is wider;
    cut to zero beyond 3 radii) centred on a random vertex of the regions, pushing along the
    surface normal plus a random tangent. Of ``tries`` candidates the one whose least-squares fit
    by the expression blendshapes leaves the largest residual is kept (typically 80-100% of its
    norm, see :func:`outside_span_fraction`). Removing the in-span part exactly would leave a
    jagged, non-local field, so it is not done. Eyeballs are left out. Scaled so its largest
    vertex displacement is ``peak_mm``.
    """
    v = len(neutral)
    if peak_mm <= 0:
        return np.zeros((v, 3))
    sel = np.flatnonzero(np.isin(model.region_labels, [model.region_names.index(r) for r in regions]))
    normals = vertex_normals(neutral, model.faces)
    eyeball = model.eyeball_mask()
    # Where the mesh is coarse (FLAME's forehead, chin and outer cheeks: 9-12 mm edges) widen the
    # bump so it spans several vertices instead of moving one.
    edges = np.concatenate([model.faces[:, [0, 1]], model.faces[:, [1, 2]], model.faces[:, [2, 0]]])
    length = np.linalg.norm(neutral[edges[:, 0]] - neutral[edges[:, 1]], axis=1)
    spacing = np.bincount(edges[:, 0], length, v) / np.maximum(np.bincount(edges[:, 0], minlength=v), 1)
    span, _ = np.linalg.qr(model.exprdirs.astype(np.float64).reshape(3 * v, -1))
    best, best_outside = None, -1.0
    for _ in range(tries):
        i = rng.choice(sel)
        centre, radius = neutral[i], max(radius_mm / 1000, 1.5 * spacing[i])
        tangent = np.cross(normals, rng.normal(size=3))
        tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-12)
        dist2 = ((neutral - centre) ** 2).sum(1) / radius ** 2
        weight = np.exp(-dist2 / 2) * np.clip(1 - dist2 / 9, 0, None) ** 2
        weight[eyeball] = 0.0
        bump = weight[:, None] * (normals + rng.uniform(-0.7, 0.7) * tangent)
        flat = bump.reshape(-1)
        outside = np.linalg.norm(flat - span @ (span.T @ flat)) / np.linalg.norm(flat)
        if outside > best_outside:
            best, best_outside = bump, outside
    return best * (peak_mm / 1000 / np.linalg.norm(best, axis=1).max())


def outside_span_fraction(model: FlameModel, field: np.ndarray) -> float:
    """Share of a (V, 3) displacement field's norm that no expression vector reproduces, 0..1.

    ||field - E c|| / ||field|| with c the least-squares expression coefficients.
    """
    e = model.exprdirs.astype(np.float64).reshape(-1, model.n_expr)
    f = np.asarray(field, np.float64).reshape(-1)
    coef, *_ = np.linalg.lstsq(e, f, rcond=None)
    return float(np.linalg.norm(f - e @ coef) / max(np.linalg.norm(f), 1e-30))


@dataclass
class SynthMotion:
    """A clip's motion and truth without its pixels: what :func:`generate` renders.

    Another renderer can draw these vertices (camera space, with ``intrinsics``) and keep the same
    truth. ``vertices*`` are float64 here; :class:`SynthClip` stores them as float32.
    """

    fps: float
    intrinsics: np.ndarray        # (3,) f, cx, cy pixels
    width: int
    height: int
    faces: np.ndarray             # (F, 3) int64
    shape: np.ndarray             # (n_shape,)
    neutral: np.ndarray           # (V, 3) metres head space: this identity at rest
    expr: np.ndarray              # (T, n_expr)
    pose: np.ndarray              # (T, 3*J)
    trans: np.ndarray             # (T, 3) metres
    vertices: np.ndarray          # (T, V, 3) float64 metres camera space, including the off-basis field
    vertices_basis: np.ndarray    # (T, V, 3) float64 metres camera space, FLAME output only
    vertices_head: np.ndarray     # (T, V, 3) float64 metres head space, including off-basis
    profile: np.ndarray           # (T,)
    onset: int
    apex: int
    offset: int
    requested_regions: list[str]
    active_regions: list[str]
    components: list[str]
    off_basis_field: np.ndarray   # (V, 3) float64 metres head space at the apex
    off_basis_outside_fraction: float
    model_id: str
    config: SynthConfig


def _streams(seed: int) -> dict[str, np.random.Generator]:
    # Independent streams, so changing one setting does not reshuffle the others.
    return {name: np.random.default_rng([seed, i]) for i, name in enumerate(
        ("identity", "expression", "offbasis", "jitter", "light", "texture", "background", "noise"))}


def motion(cfg: SynthConfig | None = None, model: FlameModel | None = None) -> SynthMotion:
    """The motion and ground truth of ``cfg``'s clip (identity, expression, off-basis field, rigid
    head motion), everything :func:`generate` draws before lighting and rendering. It uses only the
    seed's identity, expression, offbasis and jitter streams."""
    cfg = cfg or SynthConfig()
    model = model or load_flame()
    spec = cfg.micro
    t_count = cfg.n_frames
    streams = _streams(cfg.seed)

    onset = spec.onset if spec.onset is not None else t_count // 3
    apex = spec.apex if spec.apex is not None else t_count // 2
    offset = spec.offset if spec.offset is not None else min(t_count - 1, apex + (3 * (apex - onset)) // 2)
    profile = micro_profile(t_count, onset, apex, offset)

    regions = list(spec.regions) if spec.regions is not None else [str(r) for r in streams["expression"].choice(
        model.region_names, 1 + int(streams["expression"].random() < 0.3), replace=False)]
    unknown = [r for r in regions if r not in model.region_names]
    if unknown or not regions:
        raise ValueError(f"unknown or empty regions {unknown or regions}; choose from {model.region_names}")

    layer = FlameLayer(model, dtype=torch.float64)
    shape = streams["identity"].normal(size=model.n_shape) * cfg.identity_sigma
    shape_t = torch.from_numpy(shape)
    with torch.no_grad():
        neutral = layer.shaped(shape_t[None], torch.zeros(1, model.n_expr, dtype=torch.float64))[0].numpy()

    # Expression: scale so the peak in the requested regions is exactly peak_mm.
    direction = expression_direction(model, regions, spec.components_per_region, streams["expression"],
                                     spec.components)
    disp = np.einsum("vck,k->vc", model.exprdirs.astype(np.float64), direction)
    in_regions = np.isin(model.region_labels, [model.region_names.index(r) for r in regions])
    peak = np.linalg.norm(disp[in_regions], axis=1).max()
    if peak <= 0:
        raise ValueError(f"expression components {spec.components} do not move regions {regions}")
    coef = direction * (spec.peak_mm / 1000 / peak)
    if model.expr_named and coef.max() > 1.0:
        raise ValueError(f"peak_mm={spec.peak_mm} needs expression weights above 1; lower it")
    expr = profile[:, None] * coef[None]
    field_apex = off_basis_field(model, neutral, regions, cfg.off_basis_mm, cfg.off_basis_radius_mm,
                                 streams["offbasis"])

    pose, trans, rotations = _rigid_motion(cfg, model, neutral, streams["jitter"])
    with torch.no_grad():
        verts_basis, _ = layer(shape_t, torch.from_numpy(expr), torch.from_numpy(pose), torch.from_numpy(trans))
        head_basis, _ = layer(shape_t, torch.from_numpy(expr), torch.zeros_like(torch.from_numpy(pose)))
    verts_basis = verts_basis.numpy()
    off = profile[:, None, None] * field_apex[None]
    verts = verts_basis + np.einsum("tij,tvj->tvi", rotations, off)
    verts_head = head_basis.numpy() + off

    # Which regions actually move: mean apex displacement relative to onset, per region.
    moved = np.linalg.norm(verts_head[apex] - verts_head[onset], axis=1)
    means = np.array([moved[model.region_labels == r].mean() for r in range(len(model.region_names))])
    active = [n for n, m in zip(model.region_names, means) if m >= _ACTIVE_FRACTION * means.max()]
    return SynthMotion(
        fps=float(cfg.fps), intrinsics=_intrinsics(cfg), width=cfg.width, height=cfg.height,
        faces=model.faces.copy(), shape=shape, neutral=neutral, expr=expr, pose=pose, trans=trans,
        vertices=verts, vertices_basis=verts_basis, vertices_head=verts_head, profile=profile,
        onset=onset, apex=apex, offset=offset, requested_regions=regions, active_regions=active,
        components=[model.expression_names[i] for i in np.flatnonzero(np.abs(coef) > 0)],
        off_basis_field=field_apex,
        off_basis_outside_fraction=outside_span_fraction(model, field_apex) if cfg.off_basis_mm > 0 else 0.0,
        model_id=model.model_id, config=cfg)


def generate(cfg: SynthConfig | None = None, model: FlameModel | None = None) -> SynthClip:
    """Render a synthetic micro-expression clip and return it with its ground truth."""
    cfg = cfg or SynthConfig()
    model = model or load_flame()
    m = motion(cfg, model)
    streams = _streams(cfg.seed)
    light_dir, light_int = _lighting(cfg, streams["light"])
    frames = _render_frames(cfg, model, m.neutral, m.vertices, light_dir, light_int, streams)
    return SynthClip(
        frames=frames, fps=m.fps, intrinsics=m.intrinsics, width=m.width, height=m.height,
        faces=m.faces, shape=m.shape, expr=m.expr, pose=m.pose, trans=m.trans,
        vertices=m.vertices.astype(np.float32), vertices_basis=m.vertices_basis.astype(np.float32),
        vertices_head=m.vertices_head.astype(np.float32), profile=m.profile, onset=m.onset, apex=m.apex,
        offset=m.offset, requested_regions=m.requested_regions, active_regions=m.active_regions,
        components=m.components, off_basis_field=m.off_basis_field.astype(np.float32),
        off_basis_outside_fraction=m.off_basis_outside_fraction,
        light_direction=light_dir, light_intensity=light_int,
        model_id=m.model_id, config=cfg,
    )


def _rigid_motion(cfg: SynthConfig, model: FlameModel, neutral: np.ndarray,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pose (T, 3J), translation (T, 3) metres and global rotation matrices (T, 3, 3).

    The base orientation turns the head about its root joint, then sway and tremor are added;
    the translation puts the face centre ``distance_m`` in front of the camera.
    """
    from scipy.spatial.transform import Rotation

    t = cfg.n_frames
    base = Rotation.from_euler("YXZ", [cfg.yaw_deg, -cfg.pitch_deg, cfg.roll_deg], degrees=True)
    rot_jitter = smooth_jitter(rng, t, cfg.fps, np.radians(cfg.jitter_rotation_deg), cfg.tremor_fraction)
    trans_jitter = smooth_jitter(rng, t, cfg.fps, cfg.jitter_translation_mm / 1000, cfg.tremor_fraction)
    rotations = base * Rotation.from_rotvec(rot_jitter)
    pose = np.zeros((t, 3 * model.n_joints))
    pose[:, :3] = rotations.as_rotvec()
    root = model.j_regressor[0].astype(np.float64) @ neutral
    face_centre = neutral[model.region_labels >= 0].mean(0)
    trans = (np.array([0.0, 0.0, -cfg.distance_m]) - base.apply(face_centre - root) - root) + trans_jitter
    return pose, trans, rotations.as_matrix()


def _lighting(cfg: SynthConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Light direction (T, 3) unit, camera space, and intensity (T,), drifting smoothly over the clip."""
    azimuth = cfg.light_azimuth_deg if cfg.light_azimuth_deg is not None else rng.uniform(-35, 35)
    elevation = cfg.light_elevation_deg if cfg.light_elevation_deg is not None else rng.uniform(15, 45)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(cfg.n_frames) / max(cfg.n_frames - 1, 1))
    az = np.radians(azimuth + cfg.light_direction_drift_deg * rng.choice([-1, 1]) * ramp)
    el = np.radians(elevation)
    direction = np.stack([np.sin(az) * np.cos(el), np.full_like(az, np.sin(el)), np.cos(az) * np.cos(el)], 1)
    intensity = cfg.light_intensity * (1 + cfg.light_intensity_drift * rng.choice([-1, 1]) * ramp)
    return direction, intensity


def _intrinsics(cfg: SynthConfig) -> np.ndarray:
    return default_intrinsics(cfg.width, cfg.height, focal=cfg.focal_scale * cfg.height)


def _render_frames(cfg: SynthConfig, model: FlameModel, neutral: np.ndarray, verts: np.ndarray,
                   light_dir: np.ndarray, light_int: np.ndarray, streams: dict) -> np.ndarray:
    """(T, H, W, 3) uint8: supersampled renders, area-downsampled, plus sensor noise."""
    import cv2

    ss = max(1, int(cfg.supersample))
    w, h = cfg.width * ss, cfg.height * ss
    f, cx, cy = _intrinsics(cfg)
    k_ss = np.array([f * ss, (cx + 0.5) * ss - 0.5, (cy + 0.5) * ss - 0.5])
    background = cv2.resize(background_image(streams["background"], cfg.width, cfg.height), (w, h),
                            interpolation=cv2.INTER_LINEAR)
    face_uvs = texture = colours = None
    if cfg.texture == "procedural":
        face_uvs = _template_face_uvs(model)
        texture = procedural_skin_texture(model, neutral, face_uvs, cfg.texture_size, streams["texture"])
    elif cfg.texture == "flat":
        colours = np.tile([0.80, 0.62, 0.52], (len(neutral), 1))
    else:
        raise ValueError(f"texture must be 'procedural' or 'flat', not {cfg.texture!r}")
    frames = np.empty((cfg.n_frames, cfg.height, cfg.width, 3), np.uint8)
    noise = streams["noise"]
    for t in range(cfg.n_frames):
        light = Light(tuple(light_dir[t]), float(light_int[t]), cfg.light_ambient)
        img = render(verts[t], model.faces, k_ss, w, h, vertex_colors=colours, face_uvs=face_uvs,
                     texture=texture, light=light, background=background, cull_backfaces=False,
                     inside_albedo=_MOUTH_CAVITY).image
        if ss > 1:
            img = cv2.resize(img, (cfg.width, cfg.height), interpolation=cv2.INTER_AREA)
        img = img * 255.0 + noise.normal(0.0, cfg.noise_std, img.shape)
        frames[t] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return frames


def _template_face_uvs(model: FlameModel) -> np.ndarray:
    """(F, 3, 2) per-corner UVs from the UV'd FLAME template beside the model file."""
    from ..config import assets_folder, resolve_asset

    path = resolve_asset("uv_template", folders=(model.path.parent, assets_folder()))
    mesh = read_obj(path)
    if mesh.faces.shape != model.faces.shape or not np.array_equal(mesh.faces, model.faces):
        raise ValueError(f"{path} does not share the head model's triangles")
    return mesh.face_uvs


# ----------------------------------------------------------------------------- files

def container_fps(fps: float) -> float:
    """The frame rate an mp4v file can store: MPEG-4 needs a time base denominator <= 65535, so a
    non-integer rate like 68.317 is refused; 0.01 fps steps keep it under that up to 655 fps. The
    exact rate stays in the clip's ground truth."""
    return float(fps) if float(fps).is_integer() else round(float(fps), 2)


def write_video(clip: SynthClip, path: str | Path) -> Path:
    """Write the frames as an mp4 (mp4v) at :func:`container_fps` of the clip's fps; a partial file
    never appears at ``path``."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), container_fps(clip.fps),
                                 (clip.width, clip.height))
        if not writer.isOpened():
            raise OSError(f"OpenCV cannot write mp4 to {tmp}")
        for frame in clip.frames:
            writer.write(np.ascontiguousarray(frame[..., ::-1]))
        writer.release()
    return path


def save_ground_truth(clip: SynthClip, path: str | Path) -> Path:
    """Write every ground-truth array (not the frames) to an .npz that loads with allow_pickle=False."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "fps": np.float64(clip.fps), "intrinsics": clip.intrinsics, "width": np.int64(clip.width),
        "height": np.int64(clip.height), "faces": clip.faces, "shape": clip.shape, "expr": clip.expr,
        "pose": clip.pose, "trans": clip.trans, "vertices": clip.vertices, "vertices_basis": clip.vertices_basis,
        "vertices_head": clip.vertices_head, "profile": clip.profile, "onset": np.int64(clip.onset),
        "apex": np.int64(clip.apex), "offset": np.int64(clip.offset),
        "requested_regions": np.array(clip.requested_regions, dtype=str),
        "active_regions": np.array(clip.active_regions, dtype=str),
        "components": np.array(clip.components, dtype=str), "off_basis_field": clip.off_basis_field,
        "off_basis_outside_fraction": np.float64(clip.off_basis_outside_fraction),
        "light_direction": clip.light_direction, "light_intensity": clip.light_intensity,
        "model_id": np.array(clip.model_id), "config": np.array(json.dumps(asdict(clip.config))),
    }
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **arrays)
    return path
