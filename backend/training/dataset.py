"""Training samples for the learned modules: synthetic clips with known truth, and windows of real clips.

Every sample is the frontend's view of a short clip, exactly as the pipeline computes it for a
user's video (decode, MediaPipe landmarks, 224 aligned crops, optical flow, static fit with the
first frame as anchor), stored smaller (112 crops, float16 flow) so training reads it fast.
The file format is specified in ``docs/learned_modules.md``; :data:`SAMPLE_KEYS` and
:data:`GT_KEYS` below are that table, and :func:`check_sample` enforces it on every write.

Synthetic samples (``clip_<seed:06d>.npz``) render a micro-expression seen by a 100-200 fps camera
at a stride, so 12-16 stored frames span pre-onset, onset -> apex -> offset and a little after.
Everything is drawn from the seed, so a sample is reproducible from its name alone. Truth vertices
are not stored: :func:`gt_vertices` recomputes them exactly from the stored parameters.

Real samples (``real_<stem>_<start:05d>_x<stride>.npz``) are windows of a real clip whose frames
all show the tracked face; they have no ``gt_*`` keys and serve self-supervised fine-tuning.

CLI (resumable: existing files are skipped)::

    python -m backend.training.dataset synth OUT_DIR --seeds 0:400 --workers 2
    python -m backend.training.dataset real OUT_DIR VIDEO [VIDEO ...]
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import ReconstructConfig
from ..contract.atomic import atomic_path
from ..errors import MicroFaceError
from ..head.regions import REGION_NAMES

log = logging.getLogger(__name__)

FORMAT = "microface-sample"
VERSION = 1
STORE_SIZE = 112               # stored crop side: the 224 crop halved
MIN_VALID_FRACTION = 0.9       # synthetic clips where MediaPipe misses more frames are not kept
WINDOW_MIN = 12                # shortest stored window, frames
WINDOW_MAX = 16

# Name -> (dtype, shape). Symbols: N frames, S stored crop side, K identity coefficients,
# E expression coefficients, P = 3 * joints, V vertices; "N-1" flow pairs.
SAMPLE_KEYS: dict[str, tuple[str, tuple]] = {
    "crops": ("uint8", ("N", "S", "S", 3)),
    "flow": ("float16", ("N-1", "S", "S", 2)),
    "align": ("float32", ("N", 2, 3)),
    "intrinsics": ("float32", (3,)),
    "image_size": ("int32", (2,)),
    "lmk_mp": ("float32", ("N", 478, 2)),
    "lmk_68": ("float32", ("N", 68, 2)),
    "valid": ("bool", ("N",)),
    "fit_shape": ("float32", ("K",)),
    "fit_expr": ("float32", ("N", "E")),
    "fit_pose": ("float32", ("N", "P")),
    "fit_trans": ("float32", ("N", 3)),
}
GT_KEYS: dict[str, tuple[str, tuple]] = {
    "gt_shape": ("float32", ("K",)),
    "gt_expr": ("float32", ("N", "E")),
    "gt_pose": ("float32", ("N", "P")),
    "gt_trans": ("float32", ("N", 3)),
    "gt_offbasis": ("float32", ("V", 3)),
    "gt_profile": ("float32", ("N",)),
}
META_KEYS = ("format", "version", "fps", "capture_fps", "stride", "onset", "apex", "offset", "active_regions",
             "requested_regions", "peak_mm", "seed", "kind", "source")


# ----------------------------------------------------------------------------- file format

def _encode_meta(meta: dict) -> np.ndarray:
    return np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), np.uint8)


def check_sample(arrays: dict, meta: dict) -> None:
    """Raise ValueError unless ``arrays`` and ``meta`` follow the sample format.

    Synthetic samples (meta kind "synthetic") must carry every ``GT_KEYS`` entry; real ones none.
    """
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"sample meta lacks {missing}")
    if meta["kind"] not in ("synthetic", "real"):
        raise ValueError(f"sample kind must be synthetic or real, not {meta['kind']!r}")
    spec = dict(SAMPLE_KEYS)
    if meta["kind"] == "synthetic":
        spec.update(GT_KEYS)
    extra = set(arrays) - set(spec)
    if extra - set(GT_KEYS) or (meta["kind"] == "real" and extra):
        raise ValueError(f"unexpected sample arrays {sorted(extra)}")
    sizes: dict[str, int] = {}
    for name, (dtype, shape) in spec.items():
        if name not in arrays:
            raise ValueError(f"sample lacks {name}")
        a = arrays[name]
        if a.dtype != np.dtype(dtype):
            raise ValueError(f"{name} is {a.dtype}, must be {dtype}")
        if a.ndim != len(shape):
            raise ValueError(f"{name} has shape {a.shape}, must be {shape}")
        for dim, want in zip(a.shape, shape):
            if isinstance(want, int):
                ok = dim == want
            elif want == "N-1":
                ok = sizes.setdefault("N", dim + 1) == dim + 1
            else:
                ok = sizes.setdefault(want, dim) == dim
            if not ok:
                raise ValueError(f"{name} has shape {a.shape}, inconsistent with {shape} ({sizes})")
        if a.dtype.kind == "f" and name not in ("lmk_mp", "lmk_68", "align") and not np.isfinite(a).all():
            raise ValueError(f"{name} holds NaN or infinity")
    if sizes["N"] < 2:
        raise ValueError("a sample needs at least 2 frames")


def write_sample(path: str | os.PathLike, arrays: dict, meta: dict) -> Path:
    """Check and write one sample to exactly ``path``, atomically (temp file in the same folder, then
    rename): a reader or a resumed run never sees a partial file. Returns the path."""
    path = Path(path)
    meta = {"format": FORMAT, "version": VERSION, **meta}
    check_sample(arrays, meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        # Compressed: ~3x smaller; decoding 2 MB costs a few ms, far less than a training step.
        np.savez_compressed(fh, meta=_encode_meta(meta), **arrays)
    return path


def load_sample(path: str | os.PathLike) -> dict:
    """Every array of a sample file, loaded into memory, plus ``meta`` decoded to a dict."""
    with np.load(path, allow_pickle=False) as z:
        out = {k: z[k] for k in z.files}
    out["meta"] = json.loads(out["meta"].tobytes().decode("utf-8"))
    return out


def load_samples(folder: str | os.PathLike, pattern: str, seeds: tuple[int, int] | None = None) -> list[dict]:
    """The samples in ``folder`` matching ``pattern``, by name; with ``seeds`` (lo, hi) only the
    synthetic clips whose seed is in [lo, hi)."""
    paths = sorted(Path(folder).glob(pattern))
    if seeds is not None:
        paths = [p for p in paths if seeds[0] <= int(p.stem.split("_")[-1]) < seeds[1]]
    return [load_sample(p) for p in paths]


def gt_vertices(sample: dict, layer) -> tuple[np.ndarray, np.ndarray]:
    """True vertices of a synthetic sample: (camera (N, V, 3), head (N, V, 3)) float32 metres.

    Composed as :func:`backend.synthetic.synth.generate` does: FLAME(shape, expr, pose, trans) plus the
    off-basis field scaled by the profile and rotated with the head's global rotation; head space is
    FLAME without pose or translation plus the unrotated field. ``layer`` is a
    :class:`backend.head.flame.FlameLayer` of the sample's head model (float64 for the last micrometre).
    """
    import torch

    from ..head.flame import axis_angle_to_matrix

    p = layer.v_template
    as_t = lambda a: torch.as_tensor(np.asarray(a), dtype=p.dtype, device=p.device)  # noqa: E731
    shape, expr, pose, trans = (as_t(sample[k]) for k in ("gt_shape", "gt_expr", "gt_pose", "gt_trans"))
    with torch.no_grad():
        cam, _ = layer(shape, expr, pose, trans)
        head, _ = layer(shape, expr, torch.zeros_like(pose))
        rot = axis_angle_to_matrix(torch.as_tensor(sample["gt_pose"][:, :3], dtype=torch.float64)).numpy()
    off = sample["gt_profile"].astype(np.float64)[:, None, None] * sample["gt_offbasis"].astype(np.float64)[None]
    cam = cam.cpu().numpy().astype(np.float64) + np.einsum("tij,tvj->tvi", rot, off)
    head = head.cpu().numpy().astype(np.float64) + off
    return cam.astype(np.float32), head.astype(np.float32)


# ----------------------------------------------------------------------------- the frontend

def default_config() -> ReconstructConfig:
    """The pipeline's defaults, on the CPU (samples are made where no GPU is needed)."""
    return ReconstructConfig(device="cpu")


def _frontend(clip, lms, model, cfg: ReconstructConfig) -> dict:
    """The pipeline's own alignment, flow and fit on a decoded clip whose landmarks are known:
    arrays of the sample format (source pixels) plus ``info`` (timings in s, landmark source, fit error)."""
    import cv2

    from ..pipeline import network_inputs, run_frontend

    timings: dict[str, float] = {}
    fe = run_frontend(clip, lms, model, cfg, cfg.device, timings=timings)
    size = fe.alignment.size
    if size % 2:
        raise MicroFaceError(f"crop size {size} must be even to halve it for storage")
    half = size // 2
    arrays = network_inputs(fe)
    arrays["crops"] = np.stack([cv2.resize(c, (half, half), interpolation=cv2.INTER_AREA)
                                for c in fe.alignment.crops]).astype(np.uint8)
    arrays["flow"] = arrays["flow"].astype(np.float16)
    info = {"timings": timings, "landmarks_68_source": lms.lmk68_source,
            "flow": cfg.flow.recipe(),
            "fit_reproj_px": float(np.median(fe.fit.reproj_px) / clip.scale), "head_model": model.model_id}
    return {**arrays, "info": info}


def process_clip(clip, model, cfg: ReconstructConfig | None = None) -> dict:
    """Run the frontend on a decoded :class:`backend.capture.video.Clip`, in the pipeline's order.

    Returns the sample-format arrays (see :data:`SAMPLE_KEYS`: crops (N, 112, 112, 3) uint8, flow
    (N-1, 112, 112, 2) float16 in 224-crop pixels, ...; pixels are source pixels) and ``info``.
    Raises :class:`MicroFaceError` when MediaPipe finds fewer than 2 usable frames.
    """
    from ..capture.landmarks import detect_landmarks

    cfg = cfg or default_config()
    t = time.perf_counter()
    lms = detect_landmarks(clip, cfg.landmarks)
    out = _frontend(clip, lms, model, cfg)
    out["info"]["timings"]["landmarks"] = time.perf_counter() - t - sum(out["info"]["timings"].values())
    return out


def process_frames(frames: np.ndarray, fps: float, model, cfg: ReconstructConfig | None = None,
                   focal: float | None = None, keep_frames: bool = False) -> dict:
    """Run the frontend on in-memory frames (N, H, W, 3) uint8 RGB at ``fps``, as on a video file.

    The frames go through an mp4 (OpenCV mp4v) and back first: real inputs are compressed, and the
    learned modules must see codec artefacts in training too. ``focal`` (pixels) is the camera's
    focal length when known (synthetic clips); None keeps the fit's default. Returns as
    :func:`process_clip`, plus with ``keep_frames`` the decoded ``frames`` the frontend saw (the
    photometric refinement reads them).
    """
    import cv2

    from ..capture.video import read_clip

    cfg = copy.deepcopy(cfg or default_config())
    cfg.video.fps = float(fps)
    if focal is not None:
        cfg.fit.focal = float(focal)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (N, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    h, w = frames.shape[1:3]
    with tempfile.TemporaryDirectory(prefix="microface_sample_") as tmp:
        path = Path(tmp) / "clip.mp4"
        # The container rate is irrelevant (cfg.video.fps overrides it), and MPEG-4 refuses rates
        # such as 68.317 whose time base denominator exceeds 65535: store at a plain 30 fps.
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (w, h))
        if not writer.isOpened():
            raise OSError(f"OpenCV cannot write mp4 to {path}")
        for frame in frames:
            writer.write(np.ascontiguousarray(frame[..., ::-1]))
        writer.release()
        clip = read_clip(path, cfg.video)
    if len(clip.frames) != len(frames):
        raise MicroFaceError(f"mp4 round trip returned {len(clip.frames)} of {len(frames)} frames")
    sample = process_clip(clip, model, cfg)
    if keep_frames:
        sample["frames"] = clip.frames
    return sample


# ----------------------------------------------------------------------------- synthetic samples

@dataclass
class SyntheticSpec:
    """Everything drawn from a sample's seed. Frames are stored-frame indices; times are seconds."""

    seed: int
    capture_fps: float            # the simulated high-speed camera
    stride: int                   # every stride-th captured frame is stored: fps = capture_fps / stride
    n_frames: int                 # stored frames, 12-16
    onset: int
    apex: int
    offset: int
    regions: tuple[str, ...]
    peak_mm: float
    yaw_deg: float
    pitch_deg: float
    roll_deg: float
    jitter_scale: float           # times SynthConfig's default sway and tremor
    noise_std: float              # 0..255 units
    light_direction_drift_deg: float
    light_intensity_drift: float
    off_basis_mm: float
    # 512 px frames: the flow reads faint motion better with more pixels across the face
    # (docs/learned_modules.md, "The ceiling").
    width: int = 512
    height: int = 512
    texture_size: int = 1024

    @property
    def fps(self) -> float:
        return self.capture_fps / self.stride

    @property
    def duration_s(self) -> float:
        """Onset to offset, seconds."""
        return (self.offset - self.onset) / self.fps

    def synth_config(self):
        """The :class:`backend.synthetic.synth.SynthConfig` that renders this sample."""
        from ..synthetic.synth import MicroExpressionSpec, SynthConfig

        base = SynthConfig()
        return SynthConfig(
            fps=self.fps, n_frames=self.n_frames, width=self.width, height=self.height, seed=self.seed,
            micro=MicroExpressionSpec(regions=self.regions, peak_mm=self.peak_mm, onset=self.onset,
                                      apex=self.apex, offset=self.offset),
            off_basis_mm=self.off_basis_mm, yaw_deg=self.yaw_deg, pitch_deg=self.pitch_deg,
            roll_deg=self.roll_deg, jitter_rotation_deg=base.jitter_rotation_deg * self.jitter_scale,
            jitter_translation_mm=base.jitter_translation_mm * self.jitter_scale, noise_std=self.noise_std,
            light_direction_drift_deg=self.light_direction_drift_deg,
            light_intensity_drift=self.light_intensity_drift, texture_size=self.texture_size)


def draw_synthetic_spec(seed: int) -> SyntheticSpec:
    """The random recipe of sample ``seed`` (np.random.default_rng(seed)); see the module docstring.

    A micro-expression lasts 0.15-0.45 s (onset to offset). The stored clip has 2-3 frames before the
    onset and 1-3 after the offset; the stride is chosen so the onset-offset span of L stored frames
    lasts as close as possible to the drawn duration while staying inside 0.15-0.45 s.
    """
    rng = np.random.default_rng(seed)
    capture_fps = float(rng.uniform(100.0, 200.0))
    duration = float(rng.uniform(0.15, 0.45))
    n_frames = int(rng.integers(WINDOW_MIN, WINDOW_MAX + 1))
    pre = int(rng.integers(2, 4))
    post = int(rng.integers(1, 4))
    span = n_frames - 1 - pre - post                     # onset -> offset, stored frames (5..12)
    lo = math.ceil(0.15 * capture_fps / span)
    hi = math.floor(0.45 * capture_fps / span)           # lo <= hi since span / capture_fps <= 0.12 s
    stride = int(np.clip(round(duration * capture_fps / span), lo, hi))
    onset, offset = pre, pre + span
    apex = onset + int(np.clip(round(rng.uniform(0.3, 0.6) * span), 1, span - 1))
    regions = tuple(str(r) for r in rng.choice(REGION_NAMES, 1 + int(rng.random() < 0.5), replace=False))
    peak_mm = float(np.exp(rng.uniform(np.log(0.3), np.log(3.0))))
    yaw, pitch, roll = (float(rng.uniform(-a, a)) for a in (20.0, 10.0, 5.0))
    jitter_scale = 1.0 if rng.random() < 0.5 else float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    return SyntheticSpec(
        seed=int(seed), capture_fps=capture_fps, stride=stride, n_frames=n_frames, onset=onset, apex=apex,
        offset=offset, regions=regions, peak_mm=peak_mm, yaw_deg=yaw, pitch_deg=pitch, roll_deg=roll,
        jitter_scale=jitter_scale, noise_std=float(rng.uniform(1.0, 4.0)),
        light_direction_drift_deg=float(rng.uniform(0.0, 8.0)),
        light_intensity_drift=float(rng.uniform(0.0, 0.08)), off_basis_mm=float(rng.uniform(0.0, 0.5)))


def synthetic_name(seed: int) -> str:
    return f"clip_{int(seed):06d}.npz"


def with_reachable_peak(spec: SyntheticSpec, make):
    """``make(spec)`` (a generate() or motion() of the spec); an ARKit-style model cannot reach some
    peaks with weights <= 1, so the peak is lowered (x0.75, deterministically) until it can.
    Returns (what ``make`` returned, peak_mm used)."""
    peak = spec.peak_mm
    for _ in range(12):
        try:
            return make(dataclasses.replace(spec, peak_mm=peak)), peak
        except ValueError as exc:
            if "weights above 1" not in str(exc):
                raise
            peak *= 0.75
    raise ValueError(f"seed {spec.seed}: no reachable peak for regions {spec.regions}")


def _render(spec: SyntheticSpec, model):
    """generate() the spec at a reachable peak (:func:`with_reachable_peak`): (SynthClip, peak_mm used)."""
    from ..synthetic.synth import generate

    return with_reachable_peak(spec, lambda s: generate(s.synth_config(), model))


def truth_arrays(clip) -> dict[str, np.ndarray]:
    """A rendered clip's ground truth under the sample layout's ``gt_*`` names, as generated."""
    return dict(gt_shape=clip.shape, gt_expr=clip.expr, gt_pose=clip.pose, gt_trans=clip.trans,
                gt_offbasis=clip.off_basis_field, gt_profile=clip.profile)


def rendered_sample(spec: SyntheticSpec, model, cfg: ReconstructConfig | None = None,
                    keep_frames: bool = False) -> dict:
    """``spec`` rendered and run through the frontend in memory, not written: the stored layout's
    arrays with the truth (``gt_*``) and a ``meta`` of onset, apex, offset, peak_mm and active
    regions; with ``keep_frames`` also the decoded ``frames``. Raises MicroFaceError when the
    frontend drops the clip."""
    clip, peak = _render(spec, model)
    sample = process_frames(clip.frames, clip.fps, model, cfg, focal=float(clip.intrinsics[0]), keep_frames=keep_frames)
    sample.update(truth_arrays(clip))
    sample["meta"] = {"fps": float(clip.fps), "onset": clip.onset, "apex": clip.apex, "offset": clip.offset,
                      "peak_mm": peak, "active_regions": list(clip.active_regions)}
    return sample


def _make_synthetic(seed: int, model, out_dir: Path, cfg: ReconstructConfig | None = None,
                    spec: SyntheticSpec | None = None) -> tuple[Path | None, dict]:
    """Render, run the frontend, write. Returns (path or None when skipped, info for the log line)."""
    spec = spec or draw_synthetic_spec(seed)
    t0 = time.perf_counter()
    clip, peak = _render(spec, model)
    t_render = time.perf_counter() - t0
    info = {"seed": int(seed), "frames": spec.n_frames, "valid": 0.0}
    try:
        front = process_frames(clip.frames, clip.fps, model, cfg, focal=float(clip.intrinsics[0]))
    except MicroFaceError as exc:
        info["skipped"] = f"frontend failed: {exc}"
        return None, info
    valid = front["valid"]
    info["valid"] = float(valid.mean())
    if valid.mean() < MIN_VALID_FRACTION:
        info["skipped"] = f"MediaPipe kept {int(valid.sum())}/{len(valid)} frames (< {MIN_VALID_FRACTION:.0%})"
        return None, info
    finfo = front.pop("info")
    arrays = dict(front)
    arrays.update({k: v.astype(np.float32) for k, v in truth_arrays(clip).items()})
    timings = {"render": t_render, **finfo["timings"]}
    meta = {
        "kind": "synthetic", "source": f"backend.synthetic.synth seed {seed}", "seed": int(seed),
        "fps": float(clip.fps), "capture_fps": spec.capture_fps, "stride": spec.stride,
        "onset": clip.onset, "apex": clip.apex, "offset": clip.offset, "duration_s": spec.duration_s,
        "active_regions": list(clip.active_regions), "requested_regions": list(clip.requested_regions),
        "components": list(clip.components), "peak_mm": peak, "peak_mm_drawn": spec.peak_mm,
        "off_basis_outside_fraction": float(clip.off_basis_outside_fraction),
        "spec": dataclasses.asdict(spec), "synth_config": dataclasses.asdict(clip.config),
        "head_model": model.model_id, "landmarks_68_source": finfo["landmarks_68_source"], "flow": finfo["flow"],
        "fit_reproj_px": finfo["fit_reproj_px"], "valid_fraction": info["valid"],
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    path = write_sample(Path(out_dir) / synthetic_name(seed), arrays, meta)
    info["timings"] = meta["timings"]
    return path, info


def make_synthetic_sample(seed: int, model, out_dir: str | os.PathLike, cfg: ReconstructConfig | None = None,
                          spec: SyntheticSpec | None = None) -> Path | None:
    """Render synthetic sample ``seed`` (recipe :func:`draw_synthetic_spec`, or ``spec``), run the
    frontend on it and write ``out_dir/clip_<seed:06d>.npz``. Returns the path, or None (logged, no
    file) when MediaPipe found the face in under 90% of the frames."""
    path, info = _make_synthetic(seed, model, Path(out_dir), cfg, spec)
    if path is None:
        log.warning("seed %d skipped: %s", seed, info["skipped"])
    return path


# ----------------------------------------------------------------------------- real windows

def real_windows(valid: np.ndarray, cuts: np.ndarray, window: int = WINDOW_MAX, strides=(1, 2, 4),
                 min_frames: int = WINDOW_MIN) -> list[np.ndarray]:
    """Frame-index arrays of windows: every ``stride``-th frame, ``min_frames``..``window`` long, all
    valid and inside one shot. Per stride, windows are cut greedily from the start and do not overlap.

    valid (T,) bool; cuts (T,) bool, True where a frame starts a new shot.
    """
    valid = np.asarray(valid, bool)
    shot = np.cumsum(np.asarray(cuts, bool))
    t_count = len(valid)
    out = []
    for s in strides:
        start = 0
        while start + s * (min_frames - 1) < t_count:
            idx = [start]
            if valid[start]:
                while (len(idx) < window and idx[-1] + s < t_count and valid[idx[-1] + s]
                       and shot[idx[-1] + s] == shot[start]):
                    idx.append(idx[-1] + s)
            if valid[start] and len(idx) >= min_frames:
                out.append(np.array(idx, np.int64))
                start = idx[-1] + s
            else:
                start += 1
    return out


def real_name(stem: str, start: int, stride: int) -> str:
    return f"real_{stem}_{int(start):05d}_x{int(stride)}.npz"


def make_real_samples(video_path: str | os.PathLike, model, out_dir: str | os.PathLike, window: int = WINDOW_MAX,
                      strides=(1, 2, 4), cfg: ReconstructConfig | None = None, min_frames: int = WINDOW_MIN,
                      report=None) -> list[Path]:
    """Cut training windows from a real clip; write ``real_<stem>_<start:05d>_x<stride>.npz`` each.

    Landmarks are detected once on the whole clip (MediaPipe tracks through it, as the pipeline
    does); each window (:func:`real_windows`) then gets its own alignment, flow and fit (anchor: the
    window's first frame) at fps / stride, exactly as if it were the clip given to the pipeline.
    ``cfg.video`` picks the frame range. Existing files are kept. ``report(name, info)`` is called per
    window. Returns the paths of the windows' files (existing ones included).
    """
    from ..capture.landmarks import detect_landmarks, shot_cuts
    from ..capture.video import Clip, read_clip

    cfg = cfg or default_config()
    out_dir = Path(out_dir)
    video_path = Path(video_path)
    clip = read_clip(video_path, cfg.video)
    lms = detect_landmarks(clip, cfg.landmarks)
    cuts = shot_cuts(clip.frames, cfg.landmarks.cut_threshold)
    paths = []
    for idx in real_windows(lms.valid, cuts, window, strides, min_frames):
        stride = int(idx[1] - idx[0])
        start = int(clip.frame_indices[idx[0]])
        path = out_dir / real_name(video_path.stem, start, stride)
        paths.append(path)
        if path.exists():
            if report:
                report(path.name, {"exists": True})
            continue
        t0 = time.perf_counter()
        sub = Clip(path=clip.path, frames=clip.frames[idx], frame_indices=clip.frame_indices[idx],
                   fps=clip.fps / stride, width=clip.width, height=clip.height, scale=clip.scale)
        sub_lms = dataclasses.replace(
            lms, mp=lms.mp[idx], valid=lms.valid[idx], interpolated=lms.interpolated[idx],
            n_faces=lms.n_faces[idx], boxes=lms.boxes[idx], occluded=lms.occluded[idx], outlier=lms.outlier[idx],
            lmk68=None if lms.lmk68 is None else lms.lmk68[idx])
        front = _frontend(sub, sub_lms, model, cfg)
        finfo = front.pop("info")
        meta = {
            "kind": "real", "source": video_path.name, "seed": None, "fps": float(sub.fps),
            "capture_fps": float(clip.fps), "stride": stride, "onset": None, "apex": None, "offset": None,
            "active_regions": None, "requested_regions": None, "peak_mm": None,
            "source_frames": [int(i) for i in clip.frame_indices[idx]], "head_model": model.model_id,
            "landmarks_68_source": finfo["landmarks_68_source"], "flow": finfo["flow"],
            "fit_reproj_px": finfo["fit_reproj_px"], "timings": {k: round(v, 3) for k, v in finfo["timings"].items()},
        }
        write_sample(path, front, meta)
        if report:
            report(path.name, {"frames": len(idx), "valid": 1.0, "seconds": time.perf_counter() - t0})
    return paths


# ----------------------------------------------------------------------------- CLI

_WORKER: dict = {}


def _init_worker(flow_workers: int, single_thread: bool = True) -> None:
    """Per process: the model loaded once and, in pool workers, one thread per library (the pool
    supplies the parallelism; more threads would oversubscribe the cores)."""
    if single_thread:
        import cv2
        import torch

        torch.set_num_threads(1)
        cv2.setNumThreads(1)
    from ..head.flame import load_flame

    cfg = default_config()
    cfg.flow.workers = flow_workers
    _WORKER.update(model=load_flame(), cfg=cfg)


def _synth_job(args: tuple[int, str]) -> dict:
    seed, out_dir = args
    t0 = time.perf_counter()
    try:
        path, info = _make_synthetic(seed, _WORKER["model"], Path(out_dir), _WORKER["cfg"])
        if path is None:
            # Remember the verdict, so a resumed run does not render the seed again.
            (Path(out_dir) / synthetic_name(seed)).with_suffix(".skip").write_text(info["skipped"] + "\n")
    except Exception as exc:  # one bad seed must not stop a long run
        info = {"seed": seed, "failed": f"{type(exc).__name__}: {exc}"}
    info["seconds"] = time.perf_counter() - t0
    return info


def _parse_seeds(text: str) -> list[int]:
    """'0:400' (end exclusive), '5' or '1,2,7'."""
    if ":" in text:
        a, b = text.split(":")
        return list(range(int(a), int(b)))
    return [int(s) for s in text.split(",") if s.strip()]


def _cmd_synth(args) -> int:
    import multiprocessing as mp

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seeds = _parse_seeds(args.seeds)
    todo = [s for s in seeds if not (out / synthetic_name(s)).exists()
            and not (out / synthetic_name(s)).with_suffix(".skip").exists()]
    print(f"synth: {len(seeds)} seeds, {len(seeds) - len(todo)} already done, {len(todo)} to make, "
          f"{args.workers} worker(s) -> {out}", flush=True)
    t0 = time.perf_counter()
    counts = {"written": 0, "skipped": 0, "failed": 0}
    if not todo:
        print(f"summary: 0 written, 0 skipped, 0 failed, {len(seeds)} existing", flush=True)
        return 0
    valid, seconds = [], []
    jobs = [(s, str(out)) for s in todo]
    if args.workers <= 1:
        # In this process: flow pairs spread over the cores instead.
        _init_worker(flow_workers=0, single_thread=False)
        results = map(_synth_job, jobs)
        pool = None
    else:
        pool = mp.get_context("spawn").Pool(args.workers, initializer=_init_worker, initargs=(1,))
        results = pool.imap_unordered(_synth_job, jobs)
    try:
        for k, info in enumerate(results, 1):
            seconds.append(info["seconds"])
            head = f"[{k}/{len(todo)}] seed {info['seed']:06d}"
            if "failed" in info:
                counts["failed"] += 1
                print(f"{head} FAILED {info['failed']} {info['seconds']:.1f} s", flush=True)
                continue
            valid.append(info["valid"])
            status = "skipped: " + info["skipped"] if "skipped" in info else "ok"
            counts["skipped" if "skipped" in info else "written"] += 1
            print(f"{head} frames {info['frames']} valid {info['valid']:.2f} {info['seconds']:.1f} s {status}",
                  flush=True)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    wall = time.perf_counter() - t0
    v = np.array(valid) if valid else np.zeros(1)
    print(f"summary: {counts['written']} written, {counts['skipped']} skipped, {counts['failed']} failed, "
          f"{len(seeds) - len(todo)} existing; wall {wall:.0f} s, {wall / max(len(todo), 1):.1f} s/sample "
          f"({np.mean(seconds) if seconds else 0:.1f} s per worker job); valid fraction min {v.min():.2f} "
          f"mean {v.mean():.3f}", flush=True)
    return 1 if counts["failed"] else 0


def _cmd_real(args) -> int:
    from ..head.flame import load_flame

    model = load_flame()
    cfg = default_config()
    strides = tuple(int(s) for s in args.strides.split(","))
    t0 = time.perf_counter()
    total, failed = 0, 0
    for video in args.videos:
        def report(name, info):
            if info.get("exists"):
                print(f"{name} exists", flush=True)
            else:
                print(f"{name} frames {info['frames']} valid {info['valid']:.2f} {info['seconds']:.1f} s",
                      flush=True)
        try:
            paths = make_real_samples(video, model, args.out_dir, args.window, strides, cfg, report=report)
            total += len(paths)
            print(f"{Path(video).name}: {len(paths)} windows", flush=True)
        except (MicroFaceError, OSError, ValueError) as exc:
            failed += 1
            print(f"{Path(video).name} FAILED {exc}", flush=True)
    print(f"summary: {total} windows from {len(args.videos) - failed} videos, {failed} failed, "
          f"wall {time.perf_counter() - t0:.0f} s", flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m backend.training.dataset", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("synth", help="synthetic clips with known truth, clip_<seed>.npz")
    s.add_argument("out_dir")
    s.add_argument("--seeds", default="0:400", help="A:B (B exclusive), or a comma list")
    s.add_argument("--workers", type=int, default=2, help="processes (each loads the model once)")
    r = sub.add_parser("real", help="windows of real clips, real_<stem>_<start>_x<stride>.npz")
    r.add_argument("out_dir")
    r.add_argument("videos", nargs="+")
    r.add_argument("--window", type=int, default=WINDOW_MAX)
    r.add_argument("--strides", default="1,2,4")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    return _cmd_synth(args) if args.cmd == "synth" else _cmd_real(args)


if __name__ == "__main__":
    sys.exit(main())
