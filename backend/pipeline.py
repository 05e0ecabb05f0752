"""The reconstruction pipeline, stage by stage: video -> landmarks -> alignment -> flow -> fit -> file.

Each stage lives in its own module; this one only orders them, times them and assembles the
result file. Bad input fails early (output path and head model are checked before the video is
decoded) with a :class:`MicroFaceError`.
"""
from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__
from .config import ReconstructConfig, pick_device
from .errors import MicroFaceError

Progress = Callable[[str, int, int], None]


def _check_output(path: str | os.PathLike) -> Path:
    out = Path(path).expanduser().absolute()
    if out.is_dir():
        raise MicroFaceError(f"output {out} is a directory; give a file name such as {out / 'result.npz'}")
    # Missing folders are made just before the write, so a failed run leaves nothing behind.
    existing = out.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise MicroFaceError(f"cannot write {out}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise MicroFaceError(f"cannot write {out}: folder {existing} is not writable")
    if out.suffix != ".npz":
        raise MicroFaceError(f"output {out} must end in .npz")
    return out


def _runs(mask: np.ndarray, frame_indices: np.ndarray) -> str:
    """'3-7, 12' style list of source frames where ``mask`` is true."""
    idx = np.flatnonzero(mask)
    parts, start = [], None
    for i, k in enumerate(idx):
        if start is None:
            start = k
        if i == len(idx) - 1 or idx[i + 1] != k + 1:
            a, b = int(frame_indices[start]), int(frame_indices[k])
            parts.append(f"{a}" if a == b else f"{a}-{b}")
            start = None
    return ", ".join(parts)


def region_centroids_px(vertices: np.ndarray, labels: np.ndarray, n_regions: int,
                        intrinsics: np.ndarray) -> np.ndarray:
    """Eq. 12: each region's projected centroid. vertices (T, V, 3) m -> (T, R, 2) pixels."""
    from .camera import project_np

    out = np.zeros((vertices.shape[0], n_regions, 2), np.float64)
    for r in range(n_regions):
        sel = labels == r
        out[:, r] = project_np(vertices[:, sel].astype(np.float64), intrinsics).mean(1)
    return out


def _file_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def region_attention(flow: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 18–20: flow (P, S, S, 2) crop px and centroids (P, R, 2) crop px -> intensity, attention (P, R)."""
    import torch

    from .dgmd import attention_weights, region_flow_intensity

    with torch.no_grad():
        inten = region_flow_intensity(torch.as_tensor(flow, dtype=torch.float32),
                                      torch.as_tensor(centres, dtype=torch.float32), crop_size=flow.shape[1])
        return inten.numpy(), attention_weights(inten).numpy()


def reconstruct(video: str | os.PathLike, output: str | os.PathLike, cfg: ReconstructConfig | None = None,
                progress: Progress | None = None):
    """Run every stage on ``video`` and write the result file atomically to ``output``.

    Returns (absolute output path, :class:`backend.result.Result`).
    """
    cfg = cfg or ReconstructConfig()
    progress = progress or (lambda stage, done, total: None)
    timings: dict[str, float] = {}
    out = _check_output(output)
    device = pick_device(cfg.device)

    def timed(name: str, fn, *a, **kw):
        t = time.perf_counter()
        value = fn(*a, **kw)
        timings[name] = round(time.perf_counter() - t, 3)
        return value

    from .flame import load_flame

    model = timed("load_model", load_flame, cfg.flame, cfg.assets)

    from .video import read_clip

    clip = timed("decode", read_clip, video, cfg.video, progress)

    from .landmarks import detect_landmarks

    lms = timed("landmarks", detect_landmarks, clip, cfg.landmarks, progress)

    from .align import align_faces

    alignment = timed("align", align_faces, clip, lms, cfg.align)

    from .flow import tvl1_flow

    flow = timed("flow", tvl1_flow, alignment.crops, cfg.flow, progress)

    from .fit import fit_sequence

    fit = timed("fit", fit_sequence, model, lms.mp[..., :2], lms.valid, (clip.width, clip.height), clip.fps,
                cfg.fit, anchor=0, lmk68=lms.lmk68, device=device, progress=progress)

    lmk68 = lms.lmk68 if lms.lmk68 is not None else fit.landmarks_68
    vertices, vertices_init, expr, pose = fit.vertices, fit.vertices, fit.expr, fit.pose
    weights_info = None
    if cfg.refine:
        from .config import WEIGHTS_DIR, resolve_asset
        from .flow import pool_flow
        from .model import load_weights
        from .refine import refine_sample

        wpath = resolve_asset("weights", cfg.weights, folders=(WEIGHTS_DIR,))
        net = load_weights(wpath, model, device)
        sample = {"valid": lms.valid, "flow": pool_flow(flow), "lmk_68": lmk68, "lmk_mp": lms.mp[..., :2],
                  "fit_shape": fit.shape, "fit_expr": fit.expr, "fit_pose": fit.pose, "fit_trans": fit.trans,
                  "intrinsics": fit.intrinsics, "align": alignment.transforms}
        refined = timed("refine", refine_sample, net, sample, clip.frame_indices)
        vertices, vertices_init = refined["vertices"], refined["vertices_init"]
        expr, pose = refined["expr"], refined["pose"]
        weights_info = {"path": str(wpath), "id": f"{wpath.name}@sha256:{_file_sha256(wpath)[:16]}"}

    # Per-region intensity of the flow accumulated from the onset (Eq. 18) at each region's
    # projected centroid (Eq. 12), and its attention (Eq. 19-20): what the mesh deformation reads.
    from .align import to_crop

    cent = region_centroids_px(vertices, model.region_labels, len(model.region_names), fit.intrinsics)
    flow_acc = np.concatenate([np.zeros_like(flow[:1]), np.cumsum(flow, 0)])
    region_flow, attention = region_attention(flow_acc, to_crop(cent, alignment.transforms))

    warnings = []
    if lms.interpolated.any():
        warnings.append(f"no usable face in source frames {_runs(lms.interpolated, clip.frame_indices)}: "
                        "landmarks there are interpolated and the fit is carried by its temporal prior")

    # Everything below is in source-video pixels: undo any decode downscale.
    inv = 1.0 / clip.scale
    intr = fit.intrinsics.astype(np.float64).copy()
    intr *= inv
    src_w, src_h = int(round(clip.width * inv)), int(round(clip.height * inv))
    align_src = alignment.transforms.astype(np.float64).copy()
    align_src[:, :, :2] *= clip.scale  # crop = A (clip px) = A (scale * source px)

    from .result import Result, ResultError, write_result

    src = Path(video)
    meta = {
        "backend_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": {"path": str(src.absolute()), "name": src.name, "size_bytes": src.stat().st_size},
        "fps": float(clip.fps),
        "frame_range": [int(clip.frame_indices[0]), int(clip.frame_indices[-1])],
        "head_model": {"id": model.model_id, "path": str(model.path), "n_shape": model.n_shape,
                       "n_expr": model.n_expr, "n_joints": model.n_joints},
        "expression_names": model.expression_names,
        "joint_names": model.joint_names,
        "region_names": list(model.region_names),
        "landmarks_68_source": lms.lmk68_source,
        "device": device,
        "timings": timings,
        "warnings": warnings,
        "refined": bool(cfg.refine),
        "weights": weights_info,
        "units": {"length": "m", "angles": "rad axis-angle", "pixels": "source"},
    }
    result = Result(
        vertices=vertices, vertices_init=vertices_init, faces=model.faces.astype(np.int32),
        shape=fit.shape.astype(np.float32), expr=expr.astype(np.float32), pose=pose.astype(np.float32),
        trans=fit.trans.astype(np.float32), intrinsics=intr.astype(np.float32),
        image_size=np.array([src_w, src_h], np.int32), frame_indices=clip.frame_indices.astype(np.int64),
        region_flow=region_flow.astype(np.float32), attention=attention.astype(np.float32),
        landmarks_mp=(lms.mp[..., :2] * inv).astype(np.float32), landmarks_68=(lmk68 * inv).astype(np.float32),
        valid=lms.valid.astype(bool), interpolated=lms.interpolated.astype(bool),
        align_transforms=align_src.astype(np.float32), fit_error_px=(fit.reproj_px * inv).astype(np.float32),
        meta=meta,
    )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        timed("write", write_result, out, result)
    except ResultError as exc:
        raise MicroFaceError(str(exc)) from None
    return out, result
