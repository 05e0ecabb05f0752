"""Which source frames a movie strip shows, and on which scene frames (numpy only, no bpy).

Blender's sequencer shows, at scene frame F, the movie's content frame
``round((F - frame_start) * rate)`` plus the strip's hard trim ``animation_offset_start``, where
``frame_start`` is the scene frame of content frame 0 (before the soft trim
``frame_offset_start``) and ``rate`` is source frames per scene frame: 1 for a strip that shows one
movie frame per scene frame, ``movie_fps / scene_fps`` for one added with "Adjust Playback Rate"
(the default of Add > Movie), times a uniform retiming speed. Rounding half up was checked by
rendering the sequencer headless against the decoded frames. Blender does not expose the rate, so
:func:`strip_rate` infers it from the strip's length: exact without retiming, within about a
frame over the whole strip with a retiming speed.

A result's frame of source frame s therefore belongs on scene frame
``frame_start + (s - animation_offset_start) / rate``: an integer frame when ``rate`` is 1,
subframes otherwise (:func:`frame_map.linear_frame_map`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .frame_map import linear_frame_map


class StripMapError(ValueError):
    """The strip's timing cannot be mapped. ``str(err)`` is one line for the user."""


@dataclass(frozen=True)
class StripTiming:
    """A movie strip's timing, in scene frames and source (movie) frames."""

    frame_start: float         # scene frame of content frame 0 (Blender's strip.frame_start)
    final_start: int           # first visible scene frame (strip.frame_final_start)
    final_end: int             # one past the last visible scene frame (strip.frame_final_end)
    source_offset: int = 0     # source frame of content frame 0 (strip.animation_offset_start)
    rate: float = 1.0          # source frames per scene frame
    content_frames: int | None = None  # frames of content after the hard trims; None: unknown

    def source_frame_at(self, scene_frame: float) -> int:
        """The source frame the strip shows at ``scene_frame`` (clamped to its content)."""
        index = math.floor((scene_frame - self.frame_start) * self.rate + 0.5)  # round half up, as Blender
        last = (self.content_frames - 1) if self.content_frames else index
        return self.source_offset + max(0, min(index, last))

    def source_range(self) -> tuple[int, int]:
        """(first, last) source frame of the visible part, inclusive: the backend's --start/--end."""
        if self.final_end <= self.final_start:
            raise StripMapError("the strip shows no frames")
        return self.source_frame_at(self.final_start), self.source_frame_at(self.final_end - 1)

    def scene_frames(self, frame_indices: np.ndarray) -> np.ndarray:
        """(T,) float64 scene frame of each source frame in ``frame_indices`` (T,): where the strip
        shows it. A frame map for :func:`importer.import_result`."""
        return linear_frame_map(frame_indices, self.frame_start, self.source_offset, self.rate, 1.0)


def _roundness(percent: int) -> int:
    return 3 if percent % 100 == 0 else 2 if percent % 10 == 0 else 1 if percent % 5 == 0 else 0


def strip_rate(frame_duration: int, movie_fps: float, scene_fps: float, n_retiming_keys: int = 0,
               content_frames: int | None = None) -> float:
    """Source frames per scene frame of a movie strip.

    frame_duration: the strip's content length on the timeline in scene frames (strip.frame_duration),
        which Blender rounds (within one frame) from ``content_frames / rate``.
    movie_fps, scene_fps: the movie's own rate and the scene's (render.fps / render.fps_base).
    n_retiming_keys: len(strip.retiming_keys); 0 (none) or 2 (one uniform speed) are supported.
    content_frames: frames of the movie after the hard trims. Needed only when the answer is not
        plainly 1 (rates differ, or the strip is retimed).
    Raises StripMapError for variable-speed retiming or a length that no rate explains.
    """
    if n_retiming_keys > 2:
        raise StripMapError("the strip has variable-speed retiming; reset it (Strip > Retiming > Reset) "
                            "or give it one speed")
    if not (movie_fps > 0 and scene_fps > 0):
        raise StripMapError(f"frame rates must be positive (movie {movie_fps}, scene {scene_fps})")
    ratio = movie_fps / scene_fps
    factors = [1.0] if abs(ratio - 1.0) < 1e-9 else [1.0, ratio]  # "Adjust Playback Rate" off / on
    if n_retiming_keys < 2 and len(factors) == 1:
        return 1.0
    if not content_frames or frame_duration <= 0:
        raise StripMapError("cannot tell the strip's playback rate: its movie's length is unknown")
    n = float(content_frames)
    if n_retiming_keys < 2:
        # Without retiming the strip is n or n / ratio frames long: take the nearer.
        best = min(factors, key=lambda f: abs(n / f - frame_duration))
        if abs(n / best - frame_duration) > 1.0:
            raise StripMapError(f"the strip's length ({frame_duration} frames) matches neither its movie "
                                f"({content_frames} frames) nor its playback rate")
        return best
    # One retiming speed. Blender rounds the strip's length (n / rate) to within a frame, so n /
    # frame_duration is good to about a frame over the strip; a whole-percentage speed (what Strip >
    # Retiming > Set Speed makes) whose length lands nearest frame_duration is usually exact.
    # (The keys' own positions are rounded too and do not pin it down better.)
    lo, hi = n / (frame_duration + 1.0), n / max(frame_duration - 1.0, 0.5)
    candidates = []
    for f in factors:
        for p in range(max(1, math.ceil(lo / f * 100)), math.floor(hi / f * 100) + 1):
            candidates.append((abs(n / (f * p / 100) - frame_duration), -_roundness(p), f * p / 100))
    return min(candidates)[2] if candidates else n / frame_duration


def strip_timing(*, frame_start: float, final_start: int, final_end: int, frame_duration: int,
                 movie_fps: float, scene_fps: float, animation_offset_start: int = 0,
                 animation_offset_end: int = 0, n_retiming_keys: int = 0, movie_frames: int | None = None,
                 reversed_frames: bool = False) -> StripTiming:
    """A :class:`StripTiming` from the strip's properties (see :func:`strip_rate`); ``movie_frames``
    is the movie file's frame count, when known."""
    if reversed_frames:
        raise StripMapError("the strip plays its frames in reverse; turn off Reverse Frames to reconstruct it")
    content = None
    if movie_frames:
        content = movie_frames - animation_offset_start - animation_offset_end
    rate = strip_rate(frame_duration, movie_fps, scene_fps, n_retiming_keys, content)
    return StripTiming(frame_start=float(frame_start), final_start=int(final_start), final_end=int(final_end),
                       source_offset=int(animation_offset_start), rate=float(rate), content_frames=content)
