"""The ``injected`` family: windows of real footage with a known 3D micro-expression warped in.

    .venv/bin/python benchmarks/families/injected.py --out /work/data/microface/families [--limit N]
    .venv/bin/python benchmarks/families/injected.py --out /work/data/microface/families_train --training

writes ``OUT/injected/<name>/`` for each of :data:`HELDOUT_WINDOWS` (existing folders are kept):
``original.avi`` (the window, re-encoded), ``warped.avi`` (the same frames with the motion added),
both FFV1 (lossless: ``backend.capture.video.read_clip`` returns exactly the frames written, checked on
every write) at the source frame rate, and ``clip.npz`` (``benchmarks/families/__init__.py``).
The score is reconstruct(warped) - reconstruct(original) against ``motion_head``.

Per window:
1. decode the window at source size, detect landmarks on it alone (every frame must be valid) and
   run the product's static fit on it (``backend.capture.fit.fit_sequence`` with the pipeline's arguments and
   default config: focal = max(width, height), the intrinsics the product uses when ``focal`` is 0);
2. draw from the window's seed (independent streams, as ``backend.synthetic.synth.generate``): 1-2 regions, an
   expression direction (``synth.expression_direction``, 2 components per region) scaled so its peak
   head-space displacement in those regions is a log-uniform 0.5-3 mm (lowered x0.75 until every
   weight, and every fitted weight plus it, stays <= 1 for the named 0..1 model), a duration
   0.15-0.5 s with onset >= 4 frames in and offset >= 2 frames before the end (``synth.micro_profile``),
   and an off-basis bump (``synth.off_basis_field``, peak uniform 0-0.3 mm, 10 mm radius);
3. the truth. Head space is ``flame.head_space``: FLAME with the global and neck rotation zeroed
   (the fit never moves the neck; checked). The modified head is H'_t = head_space(shape, expr_t +
   p_t c, pose_t) + p_t F and ``motion_head`` = H'_t - H_t, which is p_t (E c + F) up to the jaw's
   pivot moving with the expression (the largest difference is in ``info``). In camera space
   M'_t = FLAME(shape, expr_t + p_t c, pose_t, trans_t) + R_t p_t F with R_t the global rotation:
   FLAME's whole skinning chain hangs off the root joint, so this is exactly the head-space
   definition (checked by mapping M'_t back). Active regions: the synth's rule, mean apex motion
   >= 0.3 x the largest region's;
4. the image: per-vertex displacement d = project(M') - project(M) with the fit's intrinsics,
   densified over the face by rasterizing M_t (barycentric interpolation on the visible triangles
   whose three vertices are in FLAME's face regions, extended a few pixels beyond them with a
   smooth falloff so no seam appears: :func:`densify`), then every frame is warped so content
   moves by d: out(x) = in(x - d~(x)) with d~ the field at the destination (fixed-point inversion,
   :func:`destination_field`), sampled with Catmull-Rom cubic interpolation at exact coordinates
   (:func:`sample_cubic`; ``cv2.remap`` rounds coordinates to 1/32 px and its a = -0.75 cubic does
   not reproduce a linear ramp). Pixels the field does not move, and so every frame where the
   profile is 0, are bit-identical to the original.

Known limits: the warp moves the pixels where the fitted mesh is, and the fit is a few pixels off
the real face; the eyeballs are not face-region triangles, so lid motion drags the eye opening's
pixels within the falloff; the shading does not change with the motion.

Held-out and training windows: :data:`HELDOUT_WINDOWS` is fixed (clip, first source frame, frame
count, seed), about 10 windows over the three real clips, chosen where MediaPipe holds the face
in every frame (no hand over the mouth in WolfgangLanger 58-229, no cut or faceless shot in
tears_of_steel 0-64 and 185-239). **Training** may use any window of those clips that overlaps no
held-out window, i.e. lies inside :func:`training_ranges` (:func:`overlaps_heldout` tests one).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FAMILY = "injected"
VIDEOS_DIR = ROOT.parent / "shared" / "videos"
FOURCC, EXT = "FFV1", ".avi"
PEAK_MM = (0.5, 3.0)              # log-uniform
OFF_BASIS_MM = 0.3                # uniform 0..this
OFF_BASIS_RADIUS_MM = 10.0
DURATION_S = (0.15, 0.5)          # onset -> offset
PRE_FRAMES, POST_FRAMES = 4, 2    # onset >= PRE_FRAMES; offset <= T - 1 - POST_FRAMES
FEATHER_PX = 6.0                  # falloff of the image field beyond the face regions
FIXED_POINT_ITERS = 3
ACTIVE_FRACTION = 0.3             # backend.synthetic.synth's rule


@dataclass(frozen=True)
class Window:
    clip: str       # file name in VIDEOS_DIR
    start: int      # first source frame
    count: int      # frames
    seed: int
    draw: int = 0   # > 0: another draw of the motion on the same frames (its own seed and folder)

    @property
    def end(self) -> int:
        return self.start + self.count - 1

    @property
    def name(self) -> str:
        base = f"{Path(self.clip).stem}_{self.start:05d}_n{self.count}"
        return f"{base}_d{self.draw}" if self.draw else base


# Frames per clip, and the windows held out from training (face valid in every frame: checked on
# each window's own landmark detection when the clip is made).
CLIP_FRAMES = {"single_face.mp4": 72, "WolfgangLanger_Pexels.mp4": 472, "clip_01_tears_of_steel.mp4": 240}
HELDOUT_WINDOWS: tuple[Window, ...] = (
    Window("single_face.mp4", 4, 28, 700001),
    Window("single_face.mp4", 44, 28, 700002),
    Window("WolfgangLanger_Pexels.mp4", 8, 32, 700003),
    Window("WolfgangLanger_Pexels.mp4", 236, 32, 700004),
    Window("WolfgangLanger_Pexels.mp4", 300, 36, 700005),
    Window("WolfgangLanger_Pexels.mp4", 370, 32, 700006),
    Window("WolfgangLanger_Pexels.mp4", 432, 40, 700007),
    Window("clip_01_tears_of_steel.mp4", 70, 28, 700008),
    Window("clip_01_tears_of_steel.mp4", 115, 32, 700009),
    Window("clip_01_tears_of_steel.mp4", 152, 30, 700010),
)


# Windows for choosing settings (experiments/tune_reader.py) or training: inside training_ranges, with
# the face valid in every frame (the hand covers WolfgangLanger 58-229, tears_of_steel has no usable
# face in 0-64 and 185-239).
TRAINING_WINDOWS: tuple[Window, ...] = (
    Window("single_face.mp4", 32, 12, 800001),
    Window("WolfgangLanger_Pexels.mp4", 40, 18, 800007),
    Window("WolfgangLanger_Pexels.mp4", 268, 28, 800003),
    Window("WolfgangLanger_Pexels.mp4", 338, 30, 800004),
    Window("WolfgangLanger_Pexels.mp4", 402, 28, 800005),
    Window("clip_01_tears_of_steel.mp4", 98, 16, 800006),
)
# Two more draws of the motion (regions, direction, size, timing) on each training window's frames,
# seed + 1000 x draw; by the first draw's seed, the windows whose draw 2 has no reachable peak for
# its regions (tears_of_steel 98) take draw 3 instead.
_EXTRA_DRAWS = {800006: (1, 3)}
TRAINING_WINDOWS += tuple(Window(w.clip, w.start, w.count, w.seed + 1000 * d, draw=d)
                          for w in TRAINING_WINDOWS for d in _EXTRA_DRAWS.get(w.seed, (1, 2)))


def overlaps_heldout(clip: str, start: int, count: int) -> bool:
    """True when source frames start..start+count-1 of ``clip`` share a frame with a held-out window."""
    end = start + count - 1
    return any(w.clip == clip and start <= w.end and w.start <= end for w in HELDOUT_WINDOWS)


def training_ranges(clip: str, n_frames: int | None = None) -> list[tuple[int, int]]:
    """Inclusive source-frame ranges of ``clip`` outside every held-out window: training windows
    must lie inside one of them (whether the face is usable there is the training data's concern)."""
    n = CLIP_FRAMES.get(clip) if n_frames is None else n_frames
    if n is None:
        raise KeyError(f"frame count of {clip} unknown; pass n_frames")
    held = sorted((w.start, w.end) for w in HELDOUT_WINDOWS if w.clip == clip)
    out, a = [], 0
    for s, e in held:
        if s > a:
            out.append((a, s - 1))
        a = max(a, e + 1)
    if a <= n - 1:
        out.append((a, n - 1))
    return out


# ----------------------------------------------------------------------------- pure image functions

def _catmull_rom(t: np.ndarray) -> tuple[np.ndarray, ...]:
    t2, t3 = t * t, t * t * t
    return (-0.5 * t3 + t2 - 0.5 * t, 1.5 * t3 - 2.5 * t2 + 1.0, -1.5 * t3 + 2.0 * t2 + 0.5 * t, 0.5 * t3 - 0.5 * t2)


def sample_cubic(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Catmull-Rom interpolation of ``img`` (H, W, C) at float pixel positions ``x``, ``y`` (same
    shape S); edges clamped. Returns (S..., C) float64. Exact at integer positions; reproduces
    polynomials up to degree 2."""
    img = np.asarray(img)
    h, w = img.shape[:2]
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x0, y0 = np.floor(x), np.floor(y)
    wx, wy = _catmull_rom(x - x0), _catmull_rom(y - y0)
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    xs = [np.clip(x0 - 1 + i, 0, w - 1) for i in range(4)]
    out = np.zeros(x.shape + img.shape[2:], np.float64)
    for j in range(4):
        yy = np.clip(y0 - 1 + j, 0, h - 1)
        row = sum(wx[i][..., None] * img[yy, xs[i]] for i in range(4))
        out += wy[j][..., None] * row
    return out


def sample_bilinear(field: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of ``field`` (H, W, C) at float positions; edges clamped. (S..., C)."""
    h, w = field.shape[:2]
    x = np.clip(np.asarray(x, np.float64), 0, w - 1)
    y = np.clip(np.asarray(y, np.float64), 0, h - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 2) if w > 1 else np.zeros(x.shape, np.int64)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 2) if h > 1 else np.zeros(y.shape, np.int64)
    tx, ty = (x - x0)[..., None], (y - y0)[..., None]
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    return ((1 - ty) * ((1 - tx) * field[y0, x0] + tx * field[y0, x1])
            + ty * ((1 - tx) * field[y1, x0] + tx * field[y1, x1]))


def densify(face_index: np.ndarray, bary: np.ndarray, faces: np.ndarray, vertex_disp: np.ndarray,
            face_mask: np.ndarray, feather_px: float = FEATHER_PX) -> np.ndarray:
    """Per-pixel displacement (H, W, 2) px at the SOURCE positions from a rasterized mesh.

    face_index (H, W) triangle per pixel (-1 none) and bary (H, W, 3) from ``backend.head.render.rasterize``;
    faces (F, 3); vertex_disp (V, 2) px; face_mask (F,) bool: the triangles whose pixels carry the
    field. On those pixels the field is the barycentric interpolation of ``vertex_disp``, exactly;
    beyond them it continues smoothly (Gaussian-normalised extension of the border values, sigma
    feather_px / 2) times a smoothstep falloff from 1 at the border to 0 at ``feather_px`` pixels.
    """
    import cv2

    face_index = np.asarray(face_index)
    hit = face_index >= 0
    fi = np.where(hit, face_index, 0)
    inside = hit & np.asarray(face_mask, bool)[fi]
    field = np.zeros(face_index.shape + (2,), np.float64)
    if not inside.any():
        return field
    corners = np.asarray(vertex_disp, np.float64)[np.asarray(faces)[fi[inside]]]       # (N, 3, 2)
    field[inside] = np.einsum("nk,nkc->nc", np.asarray(bary, np.float64)[inside], corners)
    if feather_px <= 0:
        return field
    m = inside.astype(np.float64)
    sigma = max(feather_px / 2.0, 0.5)
    den = cv2.GaussianBlur(m, (0, 0), sigma)
    num = cv2.GaussianBlur(field * m[..., None], (0, 0), sigma)
    ext = num / np.maximum(den, 1e-12)[..., None]
    dist = cv2.distanceTransform((~inside).astype(np.uint8), cv2.DIST_L2, 5).astype(np.float64)
    s = np.clip(1.0 - dist / feather_px, 0.0, 1.0)
    weight = s * s * (3.0 - 2.0 * s)
    weight[den < 1e-9] = 0.0
    return np.where(inside[..., None], field, ext * weight[..., None])


def _support_box(field: np.ndarray, margin: int) -> tuple[int, int, int, int] | None:
    moving = (field != 0).any(-1)
    if not moving.any():
        return None
    rows, cols = np.flatnonzero(moving.any(1)), np.flatnonzero(moving.any(0))
    h, w = moving.shape
    return (max(rows[0] - margin, 0), min(rows[-1] + margin + 1, h),
            max(cols[0] - margin, 0), min(cols[-1] + margin + 1, w))


def destination_field(field: np.ndarray, iterations: int = FIXED_POINT_ITERS):
    """The field at the destination: d~(x) = d(y) where x = y + d(y), for ``field`` d (H, W, 2) px
    given at source positions; fixed-point y <- x - d(y) from y = x - d(x), bilinear in d.
    Returns (d~ (h, w, 2) over a box, box (r0, r1, c0, c1)) or (None, None) when d is zero."""
    field = np.asarray(field, np.float64)
    peak = float(np.abs(field).max()) if field.size else 0.0
    box = _support_box(field, int(math.ceil(peak)) + 2)
    if box is None:
        return None, None
    r0, r1, c0, c1 = box
    yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float64)
    dt = field[r0:r1, c0:c1].copy()
    for _ in range(iterations):
        dt = sample_bilinear(field, xx - dt[..., 0], yy - dt[..., 1])
    return dt, box


def warp_frame(img: np.ndarray, field: np.ndarray, iterations: int = FIXED_POINT_ITERS) -> np.ndarray:
    """(H, W, C) uint8 image whose content moved by ``field`` (H, W, 2) px (given at the source
    positions): out(x) = in(x - d~(x)), Catmull-Rom, rounded. Pixels where d~ is exactly 0 are
    copied bit for bit (so a zero field returns the input unchanged)."""
    img = np.asarray(img)
    dt, box = destination_field(field, iterations)
    out = img.copy()
    if dt is None:
        return out
    r0, r1, c0, c1 = box
    yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float64)
    vals = sample_cubic(img.astype(np.float64), xx - dt[..., 0], yy - dt[..., 1])
    if np.issubdtype(img.dtype, np.integer):
        info = np.iinfo(img.dtype)
        vals = np.clip(np.rint(vals), info.min, info.max)
    moved = (dt != 0).any(-1)
    region = out[r0:r1, c0:c1]
    region[moved] = vals[moved].astype(img.dtype)
    return out


# ----------------------------------------------------------------------------- lossless files

def write_video(path: str | Path, frames: np.ndarray, fps: float) -> Path:
    """(T, H, W, 3) uint8 RGB frames to ``path`` (FFV1, lossless), then read back with
    ``backend.capture.video.read_clip`` and checked to be the same frames at ``fps``; raises otherwise."""
    import cv2

    from backend.capture.video import read_clip

    path = Path(path)
    frames = np.asarray(frames)
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*FOURCC), float(fps), (w, h))
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot write {FOURCC} to {path}")
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[..., ::-1]))
    writer.release()
    back = read_clip(path)
    if back.frames.shape != frames.shape or not np.array_equal(back.frames, frames):
        raise OSError(f"{path.name}: the {FOURCC} round trip is not exact ({back.frames.shape} vs {frames.shape})")
    if abs(back.fps - fps) > 1e-3 * fps:
        raise OSError(f"{path.name}: written at {fps} fps, reads back at {back.fps}")
    return path


# ----------------------------------------------------------------------------- the micro-expression

def draw_timing(rng: np.random.Generator, n_frames: int, fps: float) -> tuple[int, int, int]:
    """Onset, apex, offset: a duration 0.15-0.5 s (at least 3 frames), onset >= PRE_FRAMES, offset
    <= n_frames - 1 - POST_FRAMES, apex at 30-60 % of the span."""
    max_span = n_frames - 1 - POST_FRAMES - PRE_FRAMES
    if max_span < 2:
        raise ValueError(f"a {n_frames}-frame window is too short")
    span = int(np.clip(round(rng.uniform(*DURATION_S) * fps), min(3, max_span), max_span))
    onset = int(rng.integers(PRE_FRAMES, n_frames - POST_FRAMES - span))
    apex = onset + int(np.clip(round(rng.uniform(0.3, 0.6) * span), 1, span - 1))
    return onset, apex, onset + span


def make_window(win: Window, model, out_root: str | Path, videos_dir: Path = VIDEOS_DIR, log=print) -> dict | None:
    """Make ``out_root/injected/<win.name>/``; None when it exists. Returns the summary printed."""
    import torch

    from backend.head.camera import default_intrinsics, project_np
    from backend.config import ReconstructConfig, VideoConfig
    from backend.capture.fit import fit_sequence
    from backend.head.flame import HEAD_MOTION, FlameLayer, axis_angle_to_matrix, head_space
    from backend.capture.landmarks import detect_landmarks
    from backend.head.render import rasterize
    from backend.synthetic.synth import expression_direction, micro_profile, off_basis_field, outside_span_fraction
    from backend.capture.video import read_clip
    from benchmarks.families import CLIP_FILE, FamilyClip, new_clip_folder, save_clip

    final = Path(out_root) / FAMILY / win.name
    if (final / CLIP_FILE).exists():
        return None
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    cfg = ReconstructConfig(device="cpu")          # the product's defaults
    source = Path(videos_dir) / win.clip
    clip = read_clip(source, VideoConfig(start=win.start, end=win.end, max_side=1 << 16))
    if clip.scale != 1.0 or len(clip.frames) != win.count:
        raise ValueError(f"{win.name}: decoded {len(clip.frames)} frames at scale {clip.scale}")
    frames, fps, (w, h) = clip.frames, float(clip.fps), (clip.width, clip.height)
    t_count = len(frames)
    timings["decode"] = time.perf_counter() - t0

    t = time.perf_counter()
    lms = detect_landmarks(clip, cfg.landmarks)
    if not lms.valid.all():
        bad = (clip.frame_indices[~lms.valid]).tolist()
        raise ValueError(f"{win.name}: no usable face in source frames {bad}; the window list must avoid them")
    timings["landmarks"] = time.perf_counter() - t
    t = time.perf_counter()
    fit = fit_sequence(model, lms.mp[..., :2], lms.valid, (w, h), fps, cfg.fit, anchor=0, lmk68=lms.lmk68,
                       device="cpu")
    timings["fit"] = time.perf_counter() - t
    intr = fit.intrinsics.astype(np.float64)
    if not np.allclose(intr, default_intrinsics(w, h, cfg.fit.focal), atol=1e-3):
        raise ValueError(f"{win.name}: fit intrinsics {intr} are not the product's default")
    pose = fit.pose.astype(np.float64)
    if np.abs(pose[:, 3:HEAD_MOTION.stop]).max() > 0:
        raise ValueError(f"{win.name}: the fit moved the neck; the off-basis field's rotation assumes it does not")

    # The micro-expression, from independent streams of the window's seed.
    t = time.perf_counter()
    streams = {k: np.random.default_rng([win.seed, i]) for i, k in enumerate(("timing", "expression", "offbasis"))}
    onset, apex, offset = draw_timing(streams["timing"], t_count, fps)
    profile = micro_profile(t_count, onset, apex, offset)
    rng = streams["expression"]
    regions = [str(r) for r in rng.choice(model.region_names, 1 + int(rng.random() < 0.5), replace=False)]
    peak_drawn = float(np.exp(rng.uniform(np.log(PEAK_MM[0]), np.log(PEAK_MM[1]))))
    direction = expression_direction(model, regions, 2, rng)
    disp = np.einsum("vck,k->vc", model.exprdirs.astype(np.float64), direction)
    in_regions = np.isin(model.region_labels, [model.region_names.index(r) for r in regions])
    unit_peak = float(np.linalg.norm(disp[in_regions], axis=1).max())
    if unit_peak <= 0:
        raise ValueError(f"{win.name}: the expression direction does not move {regions}")
    expr_fit = fit.expr.astype(np.float64)
    peak = peak_drawn
    for _ in range(24):
        coef = direction * (peak / 1000 / unit_peak)
        expr_new = expr_fit + profile[:, None] * coef[None]
        if not model.expr_named or (coef.max() <= 1.0 and expr_new.max() <= max(1.0, expr_fit.max())):
            break
        peak *= 0.75
    else:
        raise ValueError(f"{win.name}: no reachable peak for regions {regions}")
    off_mm = float(streams["offbasis"].uniform(0.0, OFF_BASIS_MM))

    layer = FlameLayer(model, dtype=torch.float64)
    t64 = lambda a: torch.as_tensor(np.asarray(a, np.float64))  # noqa: E731
    shape = fit.shape.astype(np.float64)
    with torch.no_grad():
        neutral = layer.shaped(t64(shape)[None], torch.zeros(1, model.n_expr, dtype=torch.float64))[0].numpy()
    field_apex = off_basis_field(model, neutral, regions, off_mm, OFF_BASIS_RADIUS_MM, streams["offbasis"])
    off = profile[:, None, None] * field_apex[None]                                       # (T, V, 3)

    head = head_space(layer, shape, expr_fit, pose)
    head_new = head_space(layer, shape, expr_new, pose) + off
    motion_head = head_new - head
    linear = profile[:, None, None] * (disp * (peak / 1000 / unit_peak) + field_apex)[None]
    with torch.no_grad():
        cam, _ = layer(t64(shape), t64(expr_fit), t64(pose), t64(fit.trans))
        cam_new, _ = layer(t64(shape), t64(expr_new), t64(pose), t64(fit.trans))
        root_new = layer.rest_joints(t64(shape).expand(t_count, -1), t64(expr_new))[:, 0].numpy()
        rot = axis_angle_to_matrix(t64(pose[:, :3])).numpy()
    cam, cam_new = cam.numpy(), cam_new.numpy() + np.einsum("tij,tvj->tvi", rot, off)
    # M' mapped back through the rigid head motion must be exactly H' (head space incl. the field).
    back = np.einsum("tji,tvj->tvi", rot, cam_new - fit.trans[:, None] - root_new[:, None]) + root_new[:, None]
    consistency_m = float(np.abs(back - head_new).max())
    if consistency_m > 1e-7:   # 0.1 um; measured 1-3 nm (skinning weights sum to 1 only within 4e-8)
        raise ValueError(f"{win.name}: camera and head space disagree by {consistency_m:.2e} m")

    motion = np.linalg.norm(motion_head[apex] - motion_head[onset], axis=1)
    means = np.array([motion[model.region_labels == r].mean() for r in range(len(model.region_names))])
    active = [n for n, m in zip(model.region_names, means) if m >= ACTIVE_FRACTION * means.max()]
    timings["truth"] = time.perf_counter() - t

    # The image motion and the warp.
    t = time.perf_counter()
    faces = model.faces
    face_mask = (model.region_labels[faces] >= 0).all(1)
    px, px_new = project_np(cam, intr), project_np(cam_new, intr)
    warped = frames.copy()
    peak_px = np.zeros(t_count)
    for k in np.flatnonzero(profile > 0):
        fidx, bary, _ = rasterize(px[k][faces], -cam[k][faces][..., 2], w, h)
        field = densify(fidx, bary, faces, px_new[k] - px[k], face_mask)
        peak_px[k] = float(np.linalg.norm(field, axis=-1).max())
        warped[k] = warp_frame(frames[k], field)
    timings["warp"] = time.perf_counter() - t
    unchanged = [int(k) for k in range(t_count) if np.array_equal(warped[k], frames[k])]
    if any(not np.array_equal(warped[k], frames[k]) for k in np.flatnonzero(profile == 0)):
        raise AssertionError(f"{win.name}: a frame with profile 0 changed")

    t = time.perf_counter()
    with new_clip_folder(final) as tmp:
        write_video(tmp / f"original{EXT}", frames, fps)
        write_video(tmp / f"warped{EXT}", warped, fps)
        timings["write"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        info = {
            "source": win.clip, "start": win.start, "count": win.count, "seed": win.seed,
            "source_frames": [int(clip.frame_indices[0]), int(clip.frame_indices[-1])],
            "size": [w, h], "codec": FOURCC, "container": EXT, "fps": fps,
            "regions": regions, "active_regions": active,
            "components": [model.expression_names[i] for i in np.flatnonzero(np.abs(coef) > 0)],
            "coefficients": {model.expression_names[i]: float(coef[i]) for i in np.flatnonzero(np.abs(coef) > 0)},
            "peak_mm_drawn": peak_drawn, "peak_mm": peak, "off_basis_mm": off_mm,
            "off_basis_radius_mm": OFF_BASIS_RADIUS_MM,
            "off_basis_outside_fraction": outside_span_fraction(model, field_apex) if off_mm > 0 else 0.0,
            "duration_s": (offset - onset) / fps,
            "peak_image_px": float(peak_px.max()), "peak_image_px_per_frame": [round(float(p), 4) for p in peak_px],
            "max_expr_weight": float(expr_new.max()),
            "motion_vs_linear_max_mm": float(np.abs(motion_head - linear).max() * 1000),
            "head_space_consistency_m": consistency_m,
            "fit_reproj_px": float(np.median(fit.reproj_px)), "landmarks_68_source": lms.lmk68_source,
            "feather_px": FEATHER_PX, "fixed_point_iterations": FIXED_POINT_ITERS, "interpolation": "catmull-rom",
            "unchanged_frames": unchanged, "head_model": model.model_id,
            "timings": {k: round(v, 2) for k, v in timings.items()},
        }
        save_clip(FamilyClip(
            folder=tmp, video=f"warped{EXT}", reference=f"original{EXT}", fps=fps, focal=0.0,
            onset=onset, apex=apex, offset=offset, motion_head=motion_head, vertices_cam=cam_new,
            intrinsics=intr, profile=profile, active_regions=active, peak_mm=peak, info=info,
            params={"shape": shape, "expr": expr_new, "pose": pose, "trans": fit.trans, "expr_base": expr_fit}))
    summary = {"name": win.name, "regions": regions, "active": active, "peak_mm": round(peak, 3),
               "off_basis_mm": round(off_mm, 3), "peak_px": round(float(peak_px.max()), 2),
               "onset/apex/offset": [onset, apex, offset], "seconds": round(timings["total"], 1)}
    log(json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/work/data/microface/families")
    ap.add_argument("--limit", type=int, default=None, help="make at most the first N held-out windows")
    ap.add_argument("--videos", default=str(VIDEOS_DIR), help="folder of the real clips")
    ap.add_argument("--training", action="store_true", help="make TRAINING_WINDOWS instead of the held-out ones")
    args = ap.parse_args(argv)
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    from backend.head.flame import load_flame

    model = load_flame()
    failed = 0
    for win in (TRAINING_WINDOWS if args.training else HELDOUT_WINDOWS)[:args.limit]:
        try:
            if make_window(win, model, Path(args.out), Path(args.videos)) is None:
                print(json.dumps({"name": win.name, "exists": True}), flush=True)
        except (ValueError, OSError, AssertionError) as exc:
            failed += 1
            print(json.dumps({"name": win.name, "failed": str(exc)}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
