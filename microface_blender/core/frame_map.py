"""Where a result's frames land on the scene timeline (numpy only).

A frame map turns the result's source frame numbers ``frame_indices`` (T,) into scene frames (T,)
float64. The File > Import operator uses :func:`offset_frame_map` (the first result frame on the
scene's start frame, one scene frame per source frame); a caller that knows better (a movie strip
in the sequencer, a different scene frame rate) passes its own array or function.
"""
from __future__ import annotations

from typing import Callable, Sequence, Union

import numpy as np

FrameMap = Union[None, Sequence[float], np.ndarray, Callable[[np.ndarray], Sequence[float]]]


def offset_frame_map(frame_indices: np.ndarray, frame_start: float) -> np.ndarray:
    """The default: scene frame = frame_start + (frame_indices[t] - frame_indices[0]). Gaps stay gaps."""
    fi = np.asarray(frame_indices, np.float64)
    return frame_start + (fi - fi[0])


def linear_frame_map(frame_indices: np.ndarray, frame_start: float, source_start: float = 0.0,
                     source_fps: float = 1.0, scene_fps: float = 1.0) -> np.ndarray:
    """scene frame = frame_start + (frame_indices[t] - source_start) * scene_fps / source_fps.

    For a movie strip whose source frame ``source_start`` shows at scene frame ``frame_start``;
    with different rates the result's frames fall between scene frames (keys on subframes).
    """
    if not (source_fps > 0 and scene_fps > 0):
        raise ValueError(f"frame rates must be positive (source {source_fps}, scene {scene_fps})")
    fi = np.asarray(frame_indices, np.float64)
    return frame_start + (fi - source_start) * (scene_fps / source_fps)


def resolve_frame_map(frame_map: FrameMap, frame_indices: np.ndarray, frame_start: float) -> np.ndarray:
    """Scene frames (T,) float64 for ``frame_map``: None (the default offset map), an array of T
    scene frames, or a function of ``frame_indices``. Raises ValueError unless the result is T
    finite, strictly increasing numbers (keys must not collide or run backwards)."""
    fi = np.asarray(frame_indices)
    if frame_map is None:
        out = offset_frame_map(fi, frame_start)
    else:
        out = np.asarray(frame_map(fi) if callable(frame_map) else frame_map, np.float64)
    if out.shape != fi.shape:
        raise ValueError(f"frame map gives {out.shape[0] if out.ndim == 1 else out.shape} scene frames for "
                         f"{len(fi)} result frames")
    if not np.isfinite(out).all() or np.any(np.diff(out) <= 0):
        raise ValueError("frame map must give finite, strictly increasing scene frames")
    return out
