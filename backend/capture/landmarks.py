"""Per-frame face landmarks of one tracked face.

MediaPipe's face mesh (478 points with iris) runs in tracking mode on every frame. One face is
followed through the clip; frames where it is missing, hidden by a hand, or where its mesh glitches
are marked invalid and their landmarks interpolated in time from the valid ones.

What MediaPipe does under occlusion (measured on WolfgangLanger_Pexels.mp4, hand over the mouth in
frames 58-227): it never loses the face and keeps drawing a plausible mouth under the fingers; the
mouth points only jitter 1.5-3x more than the rest, which does not separate them from real
expression motion. So occlusion is detected directly: MediaPipe's hand landmarker runs beside the
face mesh, and a frame is occluded when enough face-mesh points fall inside a hand's outline.
Glitches (a mesh jumping for a frame) are caught separately by comparing each frame with the
straight line through its neighbouring frames.

Pixel coordinates are clip pixels as MediaPipe gives them (x * width, y * height); z is MediaPipe's
depth times the frame width, so it has the same scale as x.

Optional 68-point landmarks come from the FAN network of the face-alignment project, only when its
weights file is already on disk (nothing is downloaded). It is run on crops built from the
MediaPipe mesh; face-alignment's own face detector is never constructed.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from dataclasses import dataclass

import cv2
import numpy as np

from ..config import LandmarkConfig
from ..errors import MicroFaceError
from .fan import find_fan_weights, run_fan
from .video import Clip, Progress

N_MP = 478
N_HAND = 21
# Tracks may bridge gaps of a few frames; beyond this many frames the allowed jump stops growing.
_MAX_JUMP_FRAMES = 4
# Detections overlapping a larger one by more than this IoU are the same face found twice.
_DUPLICATE_IOU = 0.5

@dataclass
class Landmarks:
    """Landmarks of the tracked face for every clip frame, clip pixels."""

    mp: np.ndarray              # (T, 478, 3) float32 MediaPipe mesh: x, y pixels, z pixels (scaled like x)
    valid: np.ndarray           # (T,) bool: the tracked face was found, unoccluded and not a glitch
    interpolated: np.ndarray    # (T,) bool: = ~valid; landmarks filled by linear interpolation in time
    n_faces: np.ndarray         # (T,) int64 faces MediaPipe saw in the frame (any identity)
    boxes: np.ndarray           # (T, 4) float32 x0, y0, x1, y1 of the tracked face's mesh
    lmk68: np.ndarray | None    # (T, 68, 2) float32 FAN points, pixels; None when FAN did not run
    lmk68_source: str           # "fan", or "flame_embedding": the fit takes them from the FLAME mesh
    occluded: np.ndarray        # (T,) bool: found, but a hand covers part of the face
    outlier: np.ndarray         # (T,) bool: found, but the mesh jumped away from its neighbours


# ---------------------------------------------------------------------------------------------
# MediaPipe

@contextlib.contextmanager
def _native_logs_captured():
    """Route the C++ log lines MediaPipe and TF-Lite print on fd 2 into a temporary file, and replay
    them only if the block fails. Anything else written to stderr meanwhile is dropped too (progress
    callbacks should write to stdout). Set MICROFACE_DEBUG=1 to see it all live."""
    try:
        saved = -1 if os.environ.get("MICROFACE_DEBUG") else os.dup(2)
    except OSError:          # no stderr to protect (a detached child process)
        saved = -1
    if saved < 0:
        yield
        return
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        ok = False
        try:
            yield
            ok = True
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if not ok:
                sink.seek(0)
                sys.stderr.write(sink.read().decode(errors="replace"))


def _detect_all(frames: np.ndarray, cfg: LandmarkConfig,
                progress: Progress | None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Run the face mesh (and hand landmarker) on every frame.

    Returns per frame: faces (n, 478, 3) float32 pixels, hands (m, 21, 2) float32 pixels.
    """
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import mediapipe as mp

    t_count, h, w = frames.shape[:3]
    faces: list[np.ndarray] = []
    hands: list[np.ndarray] = []
    scale = np.array([w, h, w], np.float32)
    with _native_logs_captured():
        mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=False, refine_landmarks=True, max_num_faces=cfg.max_faces,
            min_detection_confidence=cfg.min_confidence, min_tracking_confidence=cfg.min_confidence)
        hand_model = mp.solutions.hands.Hands(
            static_image_mode=False, max_num_hands=2, model_complexity=0,
            min_detection_confidence=0.5, min_tracking_confidence=0.5) if cfg.detect_hands else None
        try:
            for t in range(t_count):
                frame = np.ascontiguousarray(frames[t])
                res = mesh.process(frame)
                found = res.multi_face_landmarks or []
                faces.append(np.array([[(p.x, p.y, p.z) for p in f.landmark] for f in found],
                                      np.float32).reshape(-1, N_MP, 3) * scale)
                if hand_model is not None:
                    res = hand_model.process(frame)
                    found = res.multi_hand_landmarks or []
                    hands.append(np.array([[(p.x, p.y) for p in f.landmark] for f in found],
                                          np.float32).reshape(-1, N_HAND, 2) * scale[:2])
                else:
                    hands.append(np.zeros((0, N_HAND, 2), np.float32))
                if progress is not None and (t + 1) % 10 == 0:
                    progress("landmarks", t + 1, t_count)
        finally:
            mesh.close()
            if hand_model is not None:
                hand_model.close()
    return faces, hands


# ---------------------------------------------------------------------------------------------
# Tracking one identity

def _box(points: np.ndarray) -> np.ndarray:
    """(..., N, 2+) -> (..., 4) x0, y0, x1, y1."""
    xy = points[..., :2]
    return np.concatenate([xy.min(-2), xy.max(-2)], -1)


def _box_size(box: np.ndarray) -> np.ndarray:
    """Geometric mean of width and height, pixels."""
    return np.sqrt(np.maximum(box[..., 2] - box[..., 0], 1e-3) * np.maximum(box[..., 3] - box[..., 1], 1e-3))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _drop_duplicates(faces: np.ndarray) -> np.ndarray:
    """Keep one mesh per face when MediaPipe returns the same face twice; largest first."""
    if len(faces) < 2:
        return faces
    boxes = _box(faces)
    order = np.argsort(-_box_size(boxes))
    keep: list[int] = []
    for i in order:
        if all(_iou(boxes[i], boxes[j]) <= _DUPLICATE_IOU for j in keep):
            keep.append(int(i))
    return faces[keep]


def shot_cuts(frames: np.ndarray, threshold: float) -> np.ndarray:
    """(T,) bool, True where frame t starts a new shot (never frame 0).

    A cut is a Bhattacharyya distance above ``threshold`` between the HSV colour histograms of
    consecutive frames (measured: at most 0.06 within the shots of the test clips, 0.79-0.80 at
    the cuts of clip_01_tears_of_steel.mp4).
    """
    hists = []
    for frame in frames:
        small = cv2.resize(frame, (160, 90), interpolation=cv2.INTER_AREA)
        hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
        hist = cv2.calcHist([hsv], [0, 1, 2], None, [12, 4, 4], [0, 180, 0, 256, 0, 256])
        hists.append(hist / max(float(hist.sum()), 1.0))
    cuts = np.zeros(len(frames), bool)
    for t in range(1, len(frames)):
        cuts[t] = cv2.compareHist(hists[t - 1], hists[t], cv2.HISTCMP_BHATTACHARYYA) > threshold
    return cuts


def _tracks(boxes: list[np.ndarray], cuts: np.ndarray, cfg: LandmarkConfig) -> list[dict[int, int]]:
    """Link detections into identities. Returns tracks as {frame: detection index}.

    A detection continues a track when its centre moved at most ``track_max_jump`` track sizes per
    frame since the track was last seen (so short dropouts are bridged) and its size changed by at
    most ``track_max_scale``. Assignment is greedy by jump, smallest first. A cut ends all tracks.
    """
    tracks: list[dict[int, int]] = []
    active: list[int] = []                      # indices into tracks
    last: dict[int, tuple[int, np.ndarray]] = {}  # track -> (frame, box)
    for t, frame_boxes in enumerate(boxes):
        if cuts[t]:
            active = []
        pairs = []
        for k in active:
            t_last, box = last[k]
            size = float(_box_size(box))
            centre = (box[:2] + box[2:]) / 2
            allowed = cfg.track_max_jump * min(t - t_last, _MAX_JUMP_FRAMES)
            for i, b in enumerate(frame_boxes):
                jump = float(np.linalg.norm((b[:2] + b[2:]) / 2 - centre)) / size
                ratio = float(_box_size(b)) / size
                if jump <= allowed and 1 / cfg.track_max_scale <= ratio <= cfg.track_max_scale:
                    pairs.append((jump, k, i))
        taken_tracks: set[int] = set()
        taken_dets: set[int] = set()
        for _, k, i in sorted(pairs):
            if k in taken_tracks or i in taken_dets:
                continue
            tracks[k][t] = i
            last[k] = (t, frame_boxes[i])
            taken_tracks.add(k)
            taken_dets.add(i)
        for i, b in enumerate(frame_boxes):
            if i not in taken_dets:
                tracks.append({t: i})
                last[len(tracks) - 1] = (t, b)
                active.append(len(tracks) - 1)
    return tracks


def _select_track(tracks: list[dict[int, int]], boxes: list[np.ndarray], face_index: int | None,
                  name: str) -> dict[int, int]:
    """The track the user asked for: see ``LandmarkConfig.face_index``."""
    if face_index is None:
        # The largest face, weighted by how long it is seen: a background face visible throughout
        # does not beat the subject who turns away for a moment.
        return max(tracks, key=lambda tr: sum(float(_box_size(boxes[t][i])) for t, i in tr.items()))
    if face_index < 0:
        raise MicroFaceError(f"face index {face_index} is negative; faces are counted from 0 (the largest)")
    most = max(len(b) for b in boxes)
    anchor = next((t for t, b in enumerate(boxes) if len(b) > face_index), None)
    if anchor is None:
        raise MicroFaceError(f"face index {face_index} requested but at most {most} face(s) are visible in "
                             f"any frame of {name}; faces are counted from 0, largest first")
    order = np.argsort(-_box_size(boxes[anchor]), kind="stable")
    det = int(order[face_index])
    return next(tr for tr in tracks if tr.get(anchor) == det)


# ---------------------------------------------------------------------------------------------
# Flagging unusable frames

def _inside_convex(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """(N, 2) points, (M, 2) convex polygon in order -> (N,) bool inside or on the edge."""
    edge = np.roll(polygon, -1, axis=0) - polygon                        # (M, 2)
    rel = points[:, None, :] - polygon[None, :, :]                       # (N, M, 2)
    cross = edge[None, :, 0] * rel[..., 1] - edge[None, :, 1] * rel[..., 0]
    return np.all(cross >= 0, axis=1) | np.all(cross <= 0, axis=1)


def hand_coverage(face: np.ndarray, hands: np.ndarray) -> float:
    """Fraction of the face's mesh points (478, 2+) inside the outline (convex hull) of any hand
    (m, 21, 2). 0 when there is no hand."""
    if len(hands) == 0:
        return 0.0
    inside = np.zeros(len(face), bool)
    for hand in hands:
        hull = cv2.convexHull(hand.astype(np.float32)).reshape(-1, 2)
        if len(hull) >= 3:
            inside |= _inside_convex(face[:, :2], hull)
    return float(inside.mean())


def _mesh_residual(t: int, xy: np.ndarray, size: np.ndarray, neighbours: np.ndarray, pairs: int,
                   reach: int) -> float:
    """Residual of frame t against its prediction from up to ``pairs`` ``neighbours`` frames on each
    side, no further than ``reach`` frames; NaN if there are too few to judge."""
    before = [u for u in range(t - 1, max(t - reach, 0) - 1, -1) if neighbours[u]][:pairs]
    after = [u for u in range(t + 1, min(t + reach, len(xy) - 1) + 1) if neighbours[u]][:pairs]
    m = min(len(before), len(after))
    if m >= 1:
        # straight lines through pairs of neighbours, nearest pair first; their per-point median
        preds = [xy[b] + (xy[a] - xy[b]) * (t - b) / (a - b) for b, a in zip(before[:m], after[:m])]
        predicted = np.median(preds, axis=0)
    elif max(len(before), len(after)) >= 2:
        near, far = (before if before else after)[:2]
        predicted = xy[near] + (xy[near] - xy[far]) * (t - near) / (near - far)
    else:
        return float("nan")
    return float(np.median(np.linalg.norm(xy[t] - predicted, axis=-1)) / size[t])


def mesh_outliers(points: np.ndarray, usable: np.ndarray, window: int, threshold: float) -> np.ndarray:
    """(T,) bool: usable frames whose mesh jumped away from its neighbours.

    ``points`` (T, N, 2+) pixels. Each usable frame is compared with a prediction from the usable
    frames within +-window//2 frames: the per-point median of the straight lines through pairs of
    neighbours on either side (exact for steady motion at any speed), or, at the first and last
    usable frame of a run, the extrapolation of its two nearest. The residual is the median over
    points of the distance to that prediction, divided by the face size (geometric mean of the mesh
    box sides). A frame whose mesh jumps and comes back has a residual equal to the jump. With the
    default window of 3 (the nearest frame on each side), frames without glitches measured at most
    0.011 on WolfgangLanger_Pexels.mp4 (fast head turns included) and 0.021 on the man in
    clip_01_tears_of_steel.mp4 (dark, blurred, three-quarter view); wider windows grow with the
    head's acceleration (0.015 and 0.060 at 5 frames). A second pass re-judges every frame with the
    first pass's outliers removed from the neighbours (looking a little further for them), so a
    glitch does not also flag the frames beside it. A glitch lasting two frames looks half as large
    from its neighbours, so it is caught from twice the threshold. Frames with no usable neighbour
    within the window are not judged.
    """
    xy = points[..., :2].astype(np.float64)
    size = _box_size(_box(xy))
    half = max(window // 2, 1)
    frames = np.flatnonzero(usable)
    out = np.zeros(len(xy), bool)
    for t in frames:
        out[t] = _mesh_residual(t, xy, size, usable, half, half) > threshold
    if out.any():
        # The same number of neighbours, which may now sit across removed frames.
        clean = usable & ~out
        for t in frames:
            out[t] = _mesh_residual(t, xy, size, clean, half, 2 * half + 1) > threshold
    return out


def interpolate_invalid(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill frames where ``valid`` is False by linear interpolation in time between the nearest valid
    frames, holding the first/last valid value at the ends. ``values`` (T, ...); needs a valid frame."""
    idx = np.flatnonzero(valid)
    t = np.arange(len(values))
    pos = np.searchsorted(idx, t)
    right = idx[np.minimum(pos, len(idx) - 1)]
    left = idx[np.maximum(pos - 1, 0)]
    left = np.where(t < idx[0], right, left)
    span = (right - left).astype(np.float64)
    w = np.where(span > 0, (t - left) / np.where(span > 0, span, 1), 0.0)
    w = np.clip(w, 0.0, 1.0).reshape((-1,) + (1,) * (values.ndim - 1))
    out = (1 - w) * values[left] + w * values[right]
    return out.astype(values.dtype)


# ---------------------------------------------------------------------------------------------
# FAN 68 points

def detect_landmarks(clip: Clip, cfg: LandmarkConfig | None = None, progress: Progress | None = None) -> Landmarks:
    """Landmarks of one face through ``clip``: see the module docstring and :class:`Landmarks`.

    Raises :class:`MicroFaceError` when no frame has a face, when the requested face index does not
    exist, or when fewer than 2 frames are usable.
    """
    cfg = cfg or LandmarkConfig()
    if cfg.use_fan not in ("auto", "on", "off"):
        raise MicroFaceError(f"use_fan must be auto, on or off, not {cfg.use_fan!r}")
    if cfg.max_faces < 1:
        raise MicroFaceError(f"max_faces must be at least 1, not {cfg.max_faces}")
    fan_weights = find_fan_weights(cfg.fan, required=cfg.use_fan == "on") if cfg.use_fan != "off" else None

    frames = clip.frames
    t_count = len(frames)
    name = clip.path.name
    raw_faces, hands = _detect_all(frames, cfg, progress)
    faces = [_drop_duplicates(f) for f in raw_faces]
    boxes = [_box(f) for f in faces]
    n_faces = np.array([len(f) for f in faces], np.int64)
    if n_faces.sum() == 0:
        raise MicroFaceError(f"no face found in any of the {t_count} frames of {name}")

    cuts = shot_cuts(frames, cfg.cut_threshold)
    track = _select_track(_tracks(boxes, cuts, cfg), boxes, cfg.face_index, name)

    points = np.zeros((t_count, N_MP, 3), np.float32)
    found = np.zeros(t_count, bool)
    for t, i in track.items():
        points[t] = faces[t][i]
        found[t] = True

    occluded = np.zeros(t_count, bool)
    if cfg.detect_hands:
        coverage = np.array([hand_coverage(points[t], hands[t]) if found[t] else 0.0 for t in range(t_count)])
        occluded = coverage >= cfg.hand_occlusion_fraction
        pad = max(int(cfg.occlusion_pad_frames), 0)
        if pad and occluded.any():
            occluded = np.convolve(occluded.astype(float), np.ones(2 * pad + 1), mode="same") > 0
        occluded &= found
    outlier = mesh_outliers(points, found & ~occluded, cfg.outlier_window, cfg.outlier_threshold)
    valid = found & ~occluded & ~outlier

    n_valid = int(valid.sum())
    if n_valid < 2:
        raise MicroFaceError(
            f"only {n_valid} of the {t_count} frames of {name} show the tracked face usably "
            f"(found in {int(found.sum())}, hand-occluded {int(occluded.sum())}, glitching {int(outlier.sum())}); "
            "at least 2 are needed")

    points = interpolate_invalid(points, valid)
    lmk68 = None
    source = "flame_embedding"
    if fan_weights is not None:
        lmk68 = interpolate_invalid(run_fan(frames, points, fan_weights, progress), valid)
        source = "fan"
    if progress is not None:
        progress("landmarks", t_count, t_count)
    return Landmarks(mp=points, valid=valid, interpolated=~valid, n_faces=n_faces,
                     boxes=_box(points).astype(np.float32), lmk68=lmk68, lmk68_source=source,
                     occluded=occluded, outlier=outlier)
