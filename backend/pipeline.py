"""The reconstruction pipeline, stage by stage: video -> landmarks -> alignment -> flow -> fit -> file.

Each stage lives in its own module; this one only orders them, times them and assembles the
result file. Bad input fails early (output path and head model are checked before the video is
decoded) with a :class:`MicroFaceError`.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__
from .capture.align import Alignment
from .capture.fit import FitResult
from .capture.landmarks import Landmarks
from .capture.video import Clip
from .head.camera import face_width_px
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
    try:   # access() says yes to root on read-only or virtual file systems (/proc): try it
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as exc:
        raise MicroFaceError(f"cannot write {out}: {exc.strerror or exc} in folder {existing}") from None
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


def region_attention(flow: np.ndarray, vertices: np.ndarray, labels: np.ndarray, n_regions: int,
                     intrinsics: np.ndarray, align: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 12 and 18–20 with the network's own functions: flow (T, S, S, 2) crop px at each frame's
    region centroids of ``vertices`` (T, V, 3) m, projected with ``intrinsics`` (3,) and ``align``
    (T, 2, 3) -> intensity (T, R) crop px and attention (T, R)."""
    import torch

    from .net.dgmd import attention_weights, region_centroids, region_flow_intensity

    f32 = dict(dtype=torch.float32)
    with torch.no_grad():
        centres = region_centroids(torch.as_tensor(vertices, **f32), torch.as_tensor(labels), n_regions,
                                   torch.as_tensor(intrinsics, **f32).expand(len(vertices), 3),
                                   torch.as_tensor(align, **f32))
        inten = region_flow_intensity(torch.as_tensor(flow, **f32), centres, crop_size=flow.shape[1])
        return inten.numpy(), attention_weights(inten).numpy()


@dataclass
class Frontend:
    """What the non-learned stages made of a clip (clip pixels; see :func:`network_inputs`)."""

    clip: Clip
    landmarks: Landmarks
    alignment: Alignment
    flow: np.ndarray            # (T-1, S, S, 2) between consecutive crops, S-crop pixels (flow.aligned_flow)
    fit: FitResult

    @property
    def lmk68(self) -> np.ndarray:
        """(T, 68, 2) clip pixels: FAN when it ran, else the fitted mesh's 68-point embedding."""
        return self.landmarks.lmk68 if self.landmarks.lmk68 is not None else self.fit.landmarks_68


def _timed(timings: dict, name: str, fn, *a, **kw):
    t = time.perf_counter()
    value = fn(*a, **kw)
    timings[name] = round(time.perf_counter() - t, 3)
    return value


def run_frontend(clip: Clip, lms: Landmarks, model, cfg: ReconstructConfig, device: str = "cpu",
                 progress: Progress | None = None, timings: dict | None = None) -> Frontend:
    """Alignment, optical flow and the static fit (anchored on the first frame), in that order."""
    from .capture.align import align_faces
    from .capture.fit import fit_sequence
    from .capture.flow import aligned_flow

    timings = {} if timings is None else timings
    alignment = _timed(timings, "align", align_faces, clip, lms, cfg.align)
    flow = _timed(timings, "flow", aligned_flow, clip.frames, alignment, cfg.flow, progress)
    fit = _timed(timings, "fit", fit_sequence, model, lms.mp[..., :2], lms.valid, (clip.width, clip.height),
                 clip.fps, cfg.fit, anchor=0, lmk68=lms.lmk68, device=device, progress=progress)
    return Frontend(clip, lms, alignment, flow, fit)


def reader_flow(fe: Frontend, cfg: ReconstructConfig, progress: Progress | None = None,
                timings: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The flow reader's input: flow from anchor frames every ``cfg.reader.anchor_every_s`` seconds
    (backend.capture.flow.anchor_pairs). Returns (pairs (T-1, 2), flows (T-1, S, S, 2) crop px)."""
    from .capture.flow import aligned_flow, anchor_pairs

    clip = fe.clip
    pairs = anchor_pairs(len(clip.frames), max(1, round(cfg.reader.anchor_every_s * clip.fps)))
    report = None if progress is None else (lambda _, done, total: progress("reader_flow", done, total))
    return pairs, _timed({} if timings is None else timings, "reader_flow", aligned_flow, clip.frames, fe.alignment,
                         cfg.flow, report, pairs)


def read_motion(fe: Frontend, model, cfg: ReconstructConfig, progress: Progress | None = None,
                timings: dict | None = None, flows: tuple[np.ndarray, np.ndarray] | None = None):
    """The flow reader on a processed clip (backend/capture/flow_reader.py). ``flows``: :func:`reader_flow`'s
    output when already made (it depends on the flow and anchor settings, not on the reader's).
    Returns its FlowReading."""
    from .capture.flow_reader import read_flow

    timings = {} if timings is None else timings
    clip, fit = fe.clip, fe.fit
    pairs, anchored = flows if flows is not None else reader_flow(fe, cfg, progress, timings)
    return _timed(timings, "reader", read_flow, model, anchored, fe.alignment.transforms, fit.intrinsics,
                  (clip.width, clip.height), fit.shape, fit.expr, fit.pose, fit.trans, fe.landmarks.valid, clip.fps,
                  fe.alignment.size, cfg.reader, pairs)


def network_inputs(fe: Frontend) -> dict[str, np.ndarray]:
    """The network's inputs in the training-sample layout (docs/learned_modules.md), in SOURCE
    pixels (a decode downscale undone), without the crops: flow pooled to 112, align, intrinsics,
    image_size, lmk_mp, lmk_68, valid, fit_shape/expr/pose/trans. float32."""
    from .capture.flow import pool_flow

    clip, fit = fe.clip, fe.fit
    inv = 1.0 / clip.scale
    align_src = fe.alignment.transforms.astype(np.float64).copy()
    align_src[:, :, :2] *= clip.scale   # crop = A (clip px) = A (scale * source px)
    f32 = np.float32
    return {
        "flow": pool_flow(fe.flow).astype(f32),
        "align": align_src.astype(f32),
        "intrinsics": (fit.intrinsics.astype(np.float64) * inv).astype(f32),
        "image_size": np.array(clip.source_size, np.int32),
        "lmk_mp": (fe.landmarks.mp[..., :2] * inv).astype(f32),
        "lmk_68": (np.asarray(fe.lmk68) * inv).astype(f32),
        "valid": fe.landmarks.valid.astype(bool),
        "fit_shape": fit.shape.astype(f32), "fit_expr": fit.expr.astype(f32),
        "fit_pose": fit.pose.astype(f32), "fit_trans": fit.trans.astype(f32),
    }


def reconstruct(video: str | os.PathLike, output: str | os.PathLike, cfg: ReconstructConfig | None = None,
                progress: Progress | None = None):
    """Run every stage on ``video`` and write the result file atomically to ``output``.

    Returns (absolute output path, :class:`backend.contract.result.Result`).
    """
    cfg = cfg or ReconstructConfig()
    progress = progress or (lambda stage, done, total: None)
    timings: dict[str, float] = {}
    out = _check_output(output)
    if not cfg.drift_sigma_s >= 0:   # also NaN
        raise MicroFaceError(f"drift sigma {cfg.drift_sigma_s} is not a time in seconds >= 0 (0 turns it off)")
    if not 0 < cfg.photometric.prior_weight < float("inf"):
        raise MicroFaceError(f"photometric weight {cfg.photometric.prior_weight} is not a number > 0")
    if not 0 < cfg.reader.prior_weight < float("inf"):
        raise MicroFaceError(f"reader weight {cfg.reader.prior_weight} is not a number > 0")
    if cfg.fit.iters < 1:   # 0 or fewer would skip the fit and still write a result
        raise MicroFaceError(f"fit iterations {cfg.fit.iters} is not a positive count (--iters)")
    if cfg.fit.focal is not None and not 0 < cfg.fit.focal < float("inf"):   # also NaN
        raise MicroFaceError(f"focal length {cfg.fit.focal} is not a number of pixels > 0 (--focal; omit it for "
                             f"max(width, height))")
    device = pick_device(cfg.device)

    from .capture.landmarks import detect_landmarks
    from .capture.video import read_clip
    from .head.flame import load_flame

    from .config import WEIGHTS_DIR, asset_id, assets_folder, resolve_asset
    from .head.expression_layer import working_model

    user_model = _timed(timings, "load_model", load_flame, cfg.flame, cfg.assets)
    # Every stage runs on one expression basis, the one they were tuned and trained on; the result
    # speaks the user's own model (backend/head/expression_layer.py).
    wpath = resolve_asset("weights", cfg.weights, folders=(WEIGHTS_DIR,), required=cfg.network)
    model, expression_layer = working_model(user_model, wpath.parent if wpath else WEIGHTS_DIR,
                                            assets_folder(cfg.assets))
    net, weights_info = None, None
    if cfg.network:   # a missing, corrupt or foreign weights file is found before the video is read
        from .net.network import load_weights

        net = load_weights(wpath, model, device)
        weights_info = {"path": str(wpath), "id": asset_id(wpath)}
    clip = _timed(timings, "decode", read_clip, video, cfg.video, progress)
    lms = _timed(timings, "landmarks", detect_landmarks, clip, cfg.landmarks, progress)
    fe = run_frontend(clip, lms, model, cfg, device, progress, timings)
    fit = fe.fit
    inputs = network_inputs(fe)

    vertices, vertices_init, expr, pose = fit.vertices, fit.vertices, fit.expr, fit.pose
    warnings, photometric, reader_info = [], None, None
    drift = cfg.drift_sigma_s * clip.fps
    reading = None
    if cfg.reader.enabled:
        reading = read_motion(fe, model, cfg, progress, timings)
        reader_info = {"points": reading.points, "residual_px": round(reading.residual_px, 4),
                       "patterns": int(len(reading.patterns)), "prior_weight": round(reading.prior_weight, 4),
                       "noise_mm": round(reading.noise_mm, 5), "fit_share": round(reading.fit_share, 4)}
    meshes = None
    if net is not None:
        from .net.apply import apply_network

        meshes = _timed(timings, "network", apply_network, net, inputs, clip.frame_indices, drift,
                        psi=(reading.expr, reading.pose) if reading else None)
        used = cfg.flow.recipe()
        if net.trained_flow is not None and net.trained_flow != used:
            warnings.append(f"the network was trained on {net.trained_flow['method']} flow at "
                            f"{net.trained_flow['supersample']}x and this run used {used['method']} at "
                            f"{used['supersample']}x: its refinement is outside what it learned")
    elif reading is not None:
        from .net.apply import parametric_meshes

        meshes = parametric_meshes(model, fit, reading.expr, reading.pose, clip.frame_indices, drift)
    if meshes is not None:
        seconds = (len(clip.frames) - 1) / clip.fps
        if cfg.photometric.enabled and seconds > cfg.photometric.max_seconds:
            warnings.append(f"photometric refinement skipped: the range lasts {seconds:.2f} s and it corrects one "
                            f"micro-expression from the range's first frame; trim the range to at most "
                            f"{cfg.photometric.max_seconds:g} s around one to refine it from the frames' colours")
        elif cfg.photometric.enabled:
            from .net.photometric import correct_photometric

            meshes, correction = _timed(timings, "photometric", correct_photometric, clip.frames, meshes, model,
                                        fit.shape, fit.trans, fit.intrinsics, inputs["valid"], cfg.photometric)
            photometric = {"prior_weight": float(cfg.photometric.prior_weight),
                           "frames": correction.frames_used if correction else 0}
        vertices, vertices_init = meshes.vertices, meshes.vertices_init
        expr, pose = meshes.expr, meshes.pose

    # Per-region intensity of the flow accumulated from the onset (Eq. 18) at each region's
    # projected centroid (Eq. 12), and its attention (Eq. 19-20): what the mesh deformation reads.
    flow_acc = np.concatenate([np.zeros_like(fe.flow[:1]), np.cumsum(fe.flow, 0)])
    region_flow, attention = region_attention(flow_acc, vertices, model.region_labels, len(model.region_names),
                                              inputs["intrinsics"], inputs["align"])

    # How far each region moved from the first frame, the rigid head motion taken out, and which
    # regions count as active by the rule calibrated with the weights (backend/training/calibrate.py).
    from .head.flame import FlameLayer, head_space
    from .head.regions import region_detection, region_motion

    head = meshes.vertices_head if meshes is not None else head_space(FlameLayer(model), fit.shape, fit.expr,
                                                                           fit.pose)
    motion = region_motion(head, model.region_labels, len(model.region_names))
    # The network's rule was calibrated on its own meshes; any other motion gets the configured one.
    rule = (cfg.regions.fraction, cfg.regions.floor_mm, cfg.regions.noise_factor)
    if net is not None and net.detection and reading is None:
        rule = (net.detection["fraction"], net.detection["floor_mm"],
                net.detection.get("noise_factor", cfg.regions.noise_factor))
    detection = region_detection(motion, model.region_names, *rule)

    face_px = face_width_px(fit.vertices, model.region_labels, fit.intrinsics, lms.valid) / clip.scale
    if face_px < cfg.min_face_px:
        warnings.append(f"the face is {face_px:.0f} px wide, under the {cfg.min_face_px:g} px below which "
                        "micro-expressions are lost in the pixels: use footage where it is larger")
    if lms.interpolated.any():
        warnings.append(f"no usable face in source frames {_runs(lms.interpolated, clip.frame_indices)}: "
                        "landmarks there are interpolated and the fit is carried by its temporal prior")

    # ARKit-52 weights of the final meshes (what retargeting reads), and the head's and eyes' rotations.
    from .head.arkit import arkit_weights, head_and_eye_rotations

    arkit = _timed(timings, "arkit", arkit_weights, model, head, fit.shape)
    head_rotation, eye_rotation = head_and_eye_rotations(model, pose)

    if not expression_layer.identity:   # ψ in the user's own expressions and jaw (least squares)
        expr, pose = expression_layer.to_model(expr, pose, model.jaw_pose_slice())

    from .contract.result import UNITS, Result, ResultError, write_result

    src = Path(video)
    meta = {
        "backend_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": {"path": str(src.absolute()), "name": src.name, "size_bytes": src.stat().st_size},
        "fps": float(clip.fps),
        "frame_range": [int(clip.frame_indices[0]), int(clip.frame_indices[-1])],
        **user_model.result_meta(),
        "landmarks_68_source": lms.lmk68_source,
        "device": device,
        "timings": timings,
        "warnings": warnings,
        "refined": bool(cfg.network),
        "weights": weights_info,
        "expression_layer": expression_layer.meta(),
        **({"reader": reader_info} if reader_info else {}),
        **({"drift_sigma_s": float(cfg.drift_sigma_s)} if meshes is not None else {}),
        "region_detection": detection,
        "face_px": round(float(face_px), 1),
        **({"photometric": photometric} if photometric else {}),
        "units": dict(UNITS),
    }
    result = Result(
        vertices=vertices, vertices_init=vertices_init, faces=model.faces.astype(np.int32),
        shape=fit.shape.astype(np.float32), expr=expr.astype(np.float32), pose=pose.astype(np.float32),
        trans=fit.trans.astype(np.float32), intrinsics=inputs["intrinsics"],
        image_size=inputs["image_size"], frame_indices=clip.frame_indices.astype(np.int64),
        region_flow=region_flow.astype(np.float32), attention=attention.astype(np.float32),
        region_motion=motion.astype(np.float32),
        landmarks_mp=inputs["lmk_mp"], landmarks_68=inputs["lmk_68"],
        valid=inputs["valid"], interpolated=lms.interpolated.astype(bool),
        align_transforms=inputs["align"], fit_error_px=(fit.reproj_px / clip.scale).astype(np.float32),
        arkit_weights=arkit, head_rotation=head_rotation, eye_rotation=eye_rotation,
        meta=meta, **user_model.rig_arrays(fit.shape),
    )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _timed(timings, "write", write_result, out, result)
    except ResultError as exc:
        raise MicroFaceError(str(exc)) from None
    return out, result
