"""Synthetic result files with known motion, straight from the head model (no video, no fit).

For tests and benchmarks of what reads results (the Blender extension): every frame is the FLAME
head for smooth random expression, pose and translation, plus a smooth low-rank displacement
outside the rig (what the learned mesh deformation adds) and optional per-vertex noise. Camera
space, metres, like a real result; the landmark arrays hold NaN (nothing was detected).
"""
from __future__ import annotations

import numpy as np
import torch

from .. import __version__
from ..contract.result import UNITS, Result
from ..head.flame import FlameLayer, FlameModel, head_space
from ..head.regions import TRUTH_RULE, region_detection, region_motion


def _smooth(rng: np.random.Generator, n: int, dims: int, periods: tuple[float, float] = (20.0, 120.0)) -> np.ndarray:
    """(n, dims) sums of three sinusoids with random periods (frames) and phases, about -1..1."""
    t = np.arange(n, dtype=np.float64)[:, None]
    out = np.zeros((n, dims))
    for _ in range(3):
        period = rng.uniform(*periods, dims)
        out += np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi, dims)) / 3
    return out


def detail_field(model: FlameModel, rest: np.ndarray, rng: np.random.Generator, rank: int,
                 peak_mm: float) -> np.ndarray:
    """(rank, V, 3) metres: smooth bumps (3 cm wide) around random face vertices, peak ``peak_mm``."""
    face = np.flatnonzero(model.region_labels >= 0)
    out = np.zeros((rank, len(rest), 3))
    for k in range(rank):
        centre = rest[rng.choice(face)]
        bump = np.exp(-((rest - centre) ** 2).sum(1) / (2 * 0.015 ** 2))
        out[k] = bump[:, None] * rng.normal(size=3) / np.sqrt(3)
        out[k] *= peak_mm * 1e-3 / np.abs(out[k]).max()
    return out


def synthetic_result(model: FlameModel, n_frames: int = 60, seed: int = 0, *, fps: float = 200.0,
                     first_frame: int = 0, frame_step: int = 1, detail_rank: int = 3, detail_mm: float = 0.3,
                     noise_mm: float = 0.0, layer: FlameLayer | None = None) -> Result:
    """A valid result (with rig arrays) of ``n_frames`` frames at source frames
    ``first_frame + frame_step * t``. ``detail_rank`` smooth fields of up to ``detail_mm`` each, with
    smooth weights in -1..1, plus iid Gaussian noise of ``noise_mm`` per coordinate, make
    ``vertices - vertices_init`` (camera space)."""
    rng = np.random.default_rng(seed)
    layer = layer or FlameLayer(model)
    t = n_frames
    shape = rng.normal(0, 0.3, model.n_shape)
    if model.expr_named:  # ARKit-style 0..1 weights
        expr = np.clip(0.25 + 0.25 * _smooth(rng, t, model.n_expr), 0, 1) * (rng.random(model.n_expr) < 0.3)
    else:
        expr = 0.8 * _smooth(rng, t, model.n_expr)
    amp = np.zeros(3 * model.n_joints)
    amp[:3] = (0.15, 0.3, 0.08)                    # global: nod, turn, tilt (radians)
    if model.n_joints >= 3:
        amp[3:6] = 0.05                            # neck
        amp[6:9] = (0.12, 0.02, 0.02)              # jaw, mostly opening
    amp[9:] = 0.1                                  # eyes
    pose = amp * _smooth(rng, t, 3 * model.n_joints)
    if model.n_joints >= 3:
        pose[:, 6] = np.abs(pose[:, 6])            # the jaw opens, it does not overbite
    trans = np.array([0.0, 0.0, -0.6]) + 0.01 * _smooth(rng, t, 3)

    with torch.no_grad():
        f = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
        v_init = layer(f(shape), f(expr), f(pose), f(trans))[0].numpy().astype(np.float64)
    rig = model.rig_arrays(shape)
    fields = detail_field(model, rig["rig_rest_vertices"].astype(np.float64), rng, detail_rank, detail_mm)
    verts = v_init + np.einsum("tk,kvc->tvc", _smooth(rng, t, detail_rank), fields)
    if noise_mm:
        verts += rng.normal(0, noise_mm * 1e-3, verts.shape)

    # region motion of the head without its rigid motion (the detail fields left out), called by the truth's rule
    motion = region_motion(head_space(layer, shape, expr, pose), model.region_labels, len(model.region_names))
    frames = first_frame + frame_step * np.arange(t, dtype=np.int64)
    nan = np.full((t, 478, 2), np.nan, np.float32)
    meta = {
        "backend_version": __version__,
        "source": {"path": f"synthetic://seed{seed}", "name": f"synthetic_{seed}.mp4", "size_bytes": 0},
        "fps": float(fps),
        "frame_range": [int(frames[0]), int(frames[-1])],
        **model.result_meta(),
        "landmarks_68_source": "flame_embedding",
        "device": "cpu",
        "timings": {},
        "warnings": [],
        "units": dict(UNITS),
        "refined": detail_rank > 0 or noise_mm > 0,
        "region_detection": region_detection(motion, model.region_names, *TRUTH_RULE),
        "synthetic": {"seed": seed, "detail_rank": detail_rank, "detail_mm": detail_mm, "noise_mm": noise_mm},
    }
    return Result(
        vertices=verts.astype(np.float32), vertices_init=v_init.astype(np.float32),
        faces=model.faces.astype(np.int32), shape=shape.astype(np.float32), expr=expr.astype(np.float32),
        pose=pose.astype(np.float32), trans=trans.astype(np.float32),
        intrinsics=np.array([1000.0, 639.5, 359.5], np.float32), image_size=np.array([1280, 720], np.int32),
        frame_indices=frames, region_flow=np.zeros((t, 8), np.float32),
        attention=np.full((t, 8), 0.5, np.float32), region_motion=motion.astype(np.float32),
        landmarks_mp=nan, landmarks_68=nan[:, :68].copy(),
        valid=np.ones(t, bool), interpolated=np.zeros(t, bool),
        align_transforms=np.tile(np.eye(2, 3, dtype=np.float32), (t, 1, 1)), meta=meta, **rig,
    )
