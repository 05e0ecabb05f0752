"""Decoding a frame range of a video file into memory.

Frame numbers are the container's, 0-based. Pixel coordinates everywhere downstream are *clip*
pixels: the decoded frames after the optional downscale, so ``clip px = scale * source px``.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..config import VideoConfig
from ..errors import MicroFaceError

Progress = Callable[[str, int, int], None]

MIN_FRAMES = 2  # optical flow needs a pair


@dataclass
class Clip:
    """Decoded frames of one video range."""

    path: Path
    frames: np.ndarray          # (T, H, W, 3) uint8 RGB, clip pixels
    frame_indices: np.ndarray   # (T,) int64 source frame numbers, 0-based
    fps: float                  # frames per second (container's, or the override)
    width: int                  # W, clip pixels
    height: int                 # H, clip pixels
    scale: float = 1.0          # clip px / source px (<= 1); source px = clip px / scale

    @property
    def source_size(self) -> tuple[int, int]:
        """(width, height) of the frames as stored in the container, source pixels."""
        return int(round(self.width / self.scale)), int(round(self.height / self.scale))


def _check_range(cfg: VideoConfig, min_frames: int) -> tuple[int, int | None]:
    start = 0 if cfg.start is None else int(cfg.start)
    end = None if cfg.end is None else int(cfg.end)
    if start < 0:
        raise MicroFaceError(f"start frame {start} is negative; frames are numbered from 0")
    if end is not None and end < start:
        raise MicroFaceError(f"frame range {start}..{end} is empty: end is before start")
    if end is not None and end - start + 1 < min_frames:
        raise MicroFaceError(f"frame range {start}..{end} has one frame; at least {min_frames} are needed "
                             "for optical flow")
    return start, end


def _frame_rate(cap: cv2.VideoCapture, cfg: VideoConfig, path: Path) -> float:
    if cfg.fps is not None:
        fps = float(cfg.fps)
        if not math.isfinite(fps) or fps <= 0:
            raise MicroFaceError(f"--fps {cfg.fps} is not a positive frame rate")
        return fps
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    # Some containers report 0, NaN or absurd rates (e.g. 90000, the time base) when unknown.
    if not math.isfinite(fps) or fps <= 0 or fps > 10000:
        raise MicroFaceError(f"{path.name} does not state a usable frame rate ({fps:g}); pass --fps N")
    return fps


def read_clip(path: str | os.PathLike, cfg: VideoConfig | None = None, progress: Progress | None = None,
              min_frames: int = MIN_FRAMES) -> Clip:
    """Decode source frames ``cfg.start..cfg.end`` (inclusive) of ``path`` into a :class:`Clip`.

    Frames larger than ``cfg.max_side`` on their longer side are downscaled (INTER_AREA) and
    ``Clip.scale`` records the factor. ``progress(stage, done, total)`` is called every ~10 frames
    with stage ``"decode"``. Every bad input raises :class:`MicroFaceError` with a one-line message.
    """
    cfg = cfg or VideoConfig()
    path = Path(path).expanduser()
    if not path.exists():
        raise MicroFaceError(f"video not found: {path}")
    if path.is_dir():
        raise MicroFaceError(f"{path} is a directory, not a video file")
    if cfg.max_side < 16:
        raise MicroFaceError(f"max_side {cfg.max_side} is too small to find a face; use at least 16")

    if not os.environ.get("MICROFACE_DEBUG"):
        # FFmpeg's own complaints ("moov atom not found") would precede our one-line error.
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise MicroFaceError(f"{path.name} is not a video OpenCV can decode")
        # After the open: Blender gives a movie strip it cannot decode one frame, and "not a video"
        # is the problem to name, not the range.
        start, end = _check_range(cfg, min_frames)
        fps = _frame_rate(cap, cfg, path)
        hint = float(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0.0)  # may be 0, NaN or off by a few
        count = int(hint) if math.isfinite(hint) and hint > 0 else 0
        last_wanted = end if end is not None else (count - 1 if count > 0 else None)
        total = max(last_wanted - start + 1, 0) if last_wanted is not None else 0

        # Seek by grab(): exact for every codec, and it skips colour conversion of unused frames.
        index = 0
        while index < start:
            if not cap.grab():
                break
            index += 1
        if index < start:
            if index == 0:
                raise MicroFaceError(f"{path.name} has no decodable frames (empty or not a video)")
            raise MicroFaceError(f"start frame {start} is beyond the end of {path.name} "
                                 f"({index} frames, numbered 0..{index - 1})")

        frames: list[np.ndarray] = []
        scale = 1.0
        source_size: tuple[int, int] | None = None   # (w, h) source pixels
        clip_size: tuple[int, int] | None = None
        while end is None or index <= end:
            ok, bgr = cap.read()
            if not ok or bgr is None:
                break
            if source_size is None:
                h, w = bgr.shape[:2]
                source_size = (w, h)
                s = min(1.0, cfg.max_side / max(w, h))
                clip_size = (max(1, round(w * s)), max(1, round(h * s)))
                scale = clip_size[0] / w  # exact along x; y differs by under half a pixel
            if (bgr.shape[1], bgr.shape[0]) != source_size:
                raise MicroFaceError(f"{path.name}: frame {index} changes size mid-stream; re-encode the video")
            if clip_size != source_size:
                bgr = cv2.resize(bgr, clip_size, interpolation=cv2.INTER_AREA)
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            index += 1
            if progress is not None and len(frames) % 10 == 0:
                progress("decode", len(frames), max(total, len(frames)))
    finally:
        cap.release()

    n = len(frames)
    if n == 0:
        if start == 0:
            raise MicroFaceError(f"{path.name} has no decodable frames (empty or not a video)")
        raise MicroFaceError(f"start frame {start} is beyond the end of {path.name} ({index} frames)")
    if end is not None and index <= end:
        raise MicroFaceError(f"end frame {end} is beyond the end of {path.name} "
                             f"({index} frames, numbered 0..{index - 1})")
    if n < min_frames:
        raise MicroFaceError(f"{path.name} has a single frame in range {start}..{index - 1}; at least "
                             f"{min_frames} are needed for optical flow")
    if progress is not None:
        progress("decode", n, n)
    arr = np.stack(frames)
    return Clip(path=path.resolve(), frames=arr, frame_indices=np.arange(start, start + n, dtype=np.int64),
                fps=fps, width=int(arr.shape[2]), height=int(arr.shape[1]), scale=float(scale))
