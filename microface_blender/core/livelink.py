"""Live Link Face CSV: the take format Unreal's Live Link Face importer and MetaHuman read (no bpy).

Written from a result's ARKit-52 weights and rotations, read back to the same curves. The layout
follows takes recorded by Epic's Live Link Face app (for example those stored in the public
repository alexdjulin/LiveLinkFace-CSV-Retarget-For-Motionbuilder, ``anim/*.csv``):

- the header is ``Timecode,BlendShapeCount``, the 52 shapes in PascalCase in the app's own order
  (JawRight before JawLeft, MouthRight before MouthLeft: columns are matched by name, never by
  index), then ``HeadYaw,HeadPitch,HeadRoll,LeftEyeYaw,...,RightEyeRoll``;
- ``BlendShapeCount`` is 61 on every row (52 shapes and 9 rotations);
- ``Timecode`` is ``HH:MM:SS:FF.mmm``, ``FF`` the frame within the second at the clip's rate and
  ``.mmm`` the sub-frame in thousandths;
- rotations are radians: in those takes an eye looking down has pitch +0.17 and one looking up
  -0.20, and both eyes converging have yaw of opposite signs (left eye -0.03, right eye +0.03). So
  pitch is positive downwards and yaw positive towards the subject's left, which in FLAME's frame
  (+x the subject's left, +y up, +z out of the face) are rotations about +x and +y; roll is about +z.
  The three compose as R = R_y(yaw) R_x(pitch) R_z(roll).
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .contract import contract_module
from .lbs import axis_angle_to_matrix

ARKIT_NAMES = contract_module("result").ARKIT_NAMES
# The app's column order of the 52 shapes: Apple's, in PascalCase, but with each sideways pair of
# the jaw and the mouth the other way round.
_APP_SWAPS = {"jawLeft": "jawRight", "jawRight": "jawLeft", "mouthLeft": "mouthRight", "mouthRight": "mouthLeft"}
APP_ORDER = tuple((n := _APP_SWAPS.get(a, a))[0].upper() + n[1:] for a in ARKIT_NAMES)
ROTATIONS = ("HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
             "RightEyeYaw", "RightEyePitch", "RightEyeRoll")
HEADER = ("Timecode", "BlendShapeCount", *APP_ORDER, *ROTATIONS)
BLENDSHAPE_COUNT = 61


class LiveLinkError(ValueError):
    """A file that is not a Live Link Face take, or bad values to write: one line."""


@dataclass
class Take:
    """Curves of a take: times (T,) seconds from its first row, weights (T, 52) in ARKIT_NAMES
    (Apple's) order, rotations (T, 9) radians in ROTATIONS order."""

    times: np.ndarray
    weights: np.ndarray
    rotations: np.ndarray


def timecode(seconds: float, fps: float) -> str:
    """``HH:MM:SS:FF.mmm`` of a time in seconds at ``fps`` (FF the frame within the second)."""
    frames = seconds * fps
    whole = math.floor(frames + 1e-6)
    sub = min(max(frames - whole, 0.0), 0.999)
    per_second = max(1, int(round(fps)))
    s, ff = divmod(whole, per_second)
    h, rest = divmod(int(s), 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}:{s:02d}:{int(ff):02d}.{int(round(sub * 1000)):03d}"


def parse_timecode(text: str, fps: float) -> float:
    """Seconds of a ``HH:MM:SS:FF[.mmm]`` timecode at ``fps``."""
    try:
        h, m, s, f = text.strip().split(":")
        return int(h) * 3600 + int(m) * 60 + int(s) + float(f) / fps
    except ValueError:
        raise LiveLinkError(f"timecode {text!r} is not HH:MM:SS:FF.mmm") from None


def yaw_pitch_roll(aa: np.ndarray) -> np.ndarray:
    """Axis-angle (..., 3) -> (yaw, pitch, roll) (..., 3) radians, R = R_y(yaw) R_x(pitch) R_z(roll)."""
    r = axis_angle_to_matrix(np.asarray(aa, np.float64))
    pitch = np.arcsin(np.clip(-r[..., 1, 2], -1.0, 1.0))
    yaw = np.arctan2(r[..., 0, 2], r[..., 2, 2])
    roll = np.arctan2(r[..., 1, 0], r[..., 1, 1])
    return np.stack([yaw, pitch, roll], -1)


def rotation_columns(head: np.ndarray, eyes: np.ndarray) -> np.ndarray:
    """The 9 rotation columns (T, 9) from a result's head_rotation (T, 3) and eye_rotation (T, 2, 3)."""
    return np.concatenate([yaw_pitch_roll(head), yaw_pitch_roll(eyes[:, 0]), yaw_pitch_roll(eyes[:, 1])], 1)


def format_take(take: Take, fps: float, start_seconds: float = 0.0) -> str:
    """The CSV text of ``take``, timecodes from ``start_seconds`` at ``fps``."""
    w, rot, t = np.asarray(take.weights, np.float64), np.asarray(take.rotations, np.float64), np.asarray(take.times)
    if w.ndim != 2 or w.shape[1] != len(ARKIT_NAMES) or rot.shape != (len(w), len(ROTATIONS)) or t.shape != (len(w),):
        raise LiveLinkError(f"a take needs (T, 52) weights, (T, 9) rotations and (T,) times; got {w.shape}, "
                            f"{rot.shape}, {t.shape}")
    if not (np.isfinite(w).all() and np.isfinite(rot).all() and np.isfinite(t).all()):
        raise LiveLinkError("a take's curves hold NaN or infinite values")
    apple = {n[0].upper() + n[1:]: i for i, n in enumerate(ARKIT_NAMES)}
    columns = [apple[n] for n in APP_ORDER]                    # by name: the app's order is not Apple's
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    for i in range(len(w)):
        writer.writerow([timecode(start_seconds + t[i], fps), BLENDSHAPE_COUNT,
                         *(f"{v:.10f}" for v in w[i, columns]), *(f"{v:.10f}" for v in rot[i])])
    return out.getvalue()


def read_take(path: str | Path, fps: float) -> Take:
    """A Live Link Face CSV's curves, columns matched by name (any case); rotation columns may be
    absent (zeros). Rows whose BlendShapeCount is 0 (a dropped frame in the app) read as zeros.
    Raises :class:`LiveLinkError` naming what is wrong."""
    path = Path(path)
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    except (OSError, UnicodeDecodeError) as exc:
        raise LiveLinkError(f"cannot read {path}: {exc}") from None
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["timecode", "blendshapecount"]:
        raise LiveLinkError(f"{path.name} is not a Live Link Face CSV (its header does not start with "
                            f"Timecode,BlendShapeCount)")
    index = {c.strip().lower(): i for i, c in enumerate(rows[0])}
    missing = [n for n in ARKIT_NAMES if n.lower() not in index]
    if missing:
        raise LiveLinkError(f"{path.name} lacks the columns {', '.join(missing)}")
    body = [r for r in rows[1:] if any(c.strip() for c in r)]
    if not body:
        raise LiveLinkError(f"{path.name} holds no frames")
    t = np.zeros(len(body))
    w = np.zeros((len(body), len(ARKIT_NAMES)))
    rot = np.zeros((len(body), len(ROTATIONS)))
    for i, row in enumerate(body):
        t[i] = parse_timecode(row[0], fps)
        if len(row) < len(rows[0]) or row[1].strip() in ("", "0"):
            continue
        try:
            w[i] = [float(row[index[n.lower()]]) for n in ARKIT_NAMES]
            rot[i] = [float(row[index[n.lower()]]) if n.lower() in index else 0.0 for n in ROTATIONS]
        except ValueError as exc:
            raise LiveLinkError(f"{path.name} row {i + 2}: {exc}") from None
    return Take(times=t - t[0], weights=w, rotations=rot)


def take_from_result(result) -> Take:
    """The take of a result file (backend/contract/result.py's Result) with ARKit-52 curves: times
    from its source frame numbers at its fps."""
    if result.arkit_weights is None:
        raise LiveLinkError("the result carries no ARKit weights: reconstruct the clip again with backend 0.5 "
                            "or newer")
    f = np.asarray(result.frame_indices, np.float64)
    return Take(times=(f - f[0]) / float(result.meta["fps"]), weights=result.arkit_weights,
                rotations=rotation_columns(result.head_rotation, result.eye_rotation))
