"""Movie strip -> source frame range and -> scene frames (microface_blender.core.strip_map, numpy only).

The rules (content frame round((F - frame_start) * rate) at scene frame F) were checked against
Blender 5.0 by rendering the sequencer headless; test_blender_strip_operator.py renders it again."""
from __future__ import annotations

import numpy as np
import pytest

from microface_blender.core import frame_map
from microface_blender.core.strip_map import StripMapError, StripTiming, strip_rate, strip_timing


def _strip(**kw) -> StripTiming:
    base = dict(frame_start=1, final_start=1, final_end=73, frame_duration=72, movie_fps=30.0, scene_fps=30.0,
                movie_frames=72)
    base.update(kw)
    return strip_timing(**base)


def _shown(timing: StripTiming) -> dict[int, int]:
    """Scene frame -> source frame, for every visible frame."""
    return {f: timing.source_frame_at(f) for f in range(timing.final_start, timing.final_end)}


def test_untrimmed_strip_at_the_scene_start():
    t = _strip()
    assert t.rate == 1.0 and t.source_range() == (0, 71)
    np.testing.assert_array_equal(t.scene_frames(np.arange(72)), np.arange(1, 73))


def test_trimmed_strip_shows_and_keys_the_frames_inside_its_handles():
    # Content starts at scene frame 10; 5 frames trimmed at the start, 20 at the end.
    t = _strip(frame_start=10, final_start=15, final_end=10 + 72 - 20)
    assert t.source_range() == (5, 51)
    src = np.arange(5, 52)
    frames = t.scene_frames(src)
    np.testing.assert_array_equal(frames, np.arange(15, 62))
    assert all(t.source_frame_at(f) == s for f, s in zip(frames, src))  # each key sits where its frame shows


def test_strip_moved_before_the_scene_start_and_hard_trimmed():
    # Content frame 0 at scene frame -7; the movie's first 4 frames cut off (animation_offset_start).
    t = _strip(frame_start=-7, final_start=-2, final_end=40, frame_duration=66, animation_offset_start=4,
               animation_offset_end=2)
    assert t.source_offset == 4 and t.content_frames == 66
    assert t.source_range() == (4 + 5, 4 + 46)
    frames = t.scene_frames(np.arange(9, 51))
    np.testing.assert_array_equal(frames, np.arange(-2, 40))
    assert _shown(t) == {int(f): s for f, s in zip(frames, range(9, 51))}


def test_scene_fps_differs_with_adjusted_playback_rate():
    # A 30 fps movie in a 24 fps scene, added with "Adjust Playback Rate" (the Add > Movie default):
    # 72 frames take 57 scene frames and play in real time.
    t = _strip(frame_start=10, final_start=12, final_end=10 + 57 - 3, frame_duration=57, scene_fps=24.0)
    assert t.rate == pytest.approx(30 / 24)
    first, last = t.source_range()
    assert (first, last) == (round(2 * 1.25 + 1e-9), int(np.floor(53 * 1.25 + 0.5)))  # rounding half up
    src = np.arange(first, last + 1)
    frames = t.scene_frames(src)
    # The formula: frame_start + (source - first source frame of the content) * scene/movie fps.
    np.testing.assert_allclose(frames, frame_map.linear_frame_map(src, 10, 0, 30.0, 24.0))
    np.testing.assert_allclose(frames, 10 + src * 24 / 30)
    # Every visible scene frame shows the source frame whose key is nearest to it (within half a
    # source frame), so keys land where the strip shows their frames.
    for f, s in _shown(t).items():
        assert abs(t.scene_frames(np.array([s]))[0] - f) <= 0.5 / t.rate + 1e-9


def test_scene_fps_differs_without_adjusted_rate_plays_one_frame_per_scene_frame():
    # Added from Python (strips.new_movie): one movie frame per scene frame, whatever the rates.
    t = _strip(frame_start=1, final_start=1, final_end=73, frame_duration=72, scene_fps=24.0)
    assert t.rate == 1.0 and t.source_range() == (0, 71)
    # The same strip in a 60 fps scene with the adjusted rate is twice as long.
    t2 = _strip(final_end=1 + 144, frame_duration=144, scene_fps=60.0)
    assert t2.rate == pytest.approx(0.5) and t2.source_range() == (0, 71)
    np.testing.assert_allclose(t2.scene_frames(np.arange(72)), 1 + 2 * np.arange(72))


def test_the_rate_needs_the_movie_length_only_when_it_is_ambiguous():
    assert strip_rate(72, 30.0, 30.0) == 1.0
    with pytest.raises(StripMapError, match="length is unknown"):
        strip_rate(57, 30.0, 24.0)
    with pytest.raises(StripMapError, match="matches neither"):
        strip_rate(40, 30.0, 24.0, content_frames=72)


@pytest.mark.parametrize("scene_fps, speed, duration, expected", [
    (30, 2.0, 36, 2.0),            # Retiming > Set Speed 200 %
    (24, 0.5, 115, 1.25 * 0.5),    # adjusted playback rate, then 50 %
    (60, 0.7, 206, 0.5 * 0.7),     # as Blender 5.0 measured: 205.7 frames shown as 206
    (29, 1.5, 46, None),           # 46.4 -> 46: any rate within the rounding
    (24, 1.33, 43, None),
])
def test_uniform_retiming_speed(scene_fps, speed, duration, expected):
    rate = strip_rate(duration, 30.0, scene_fps, n_retiming_keys=2, content_frames=72)
    true = 30.0 / scene_fps * speed
    if expected is not None:
        assert rate == pytest.approx(expected)
    # Over the whole strip the keys drift from where the frames show by well under a frame.
    assert abs(duration * (rate - true)) < 0.6


def test_variable_speed_and_reversed_strips_are_refused_in_one_line():
    with pytest.raises(StripMapError, match="variable-speed retiming"):
        strip_rate(72, 30.0, 30.0, n_retiming_keys=4, content_frames=72)
    with pytest.raises(StripMapError, match="Reverse Frames"):
        _strip(reversed_frames=True)
    with pytest.raises(StripMapError, match="no frames"):
        _strip(final_start=5, final_end=5).source_range()


def test_source_frames_are_clamped_to_the_content():
    t = _strip(frame_start=1, final_start=1, final_end=80)  # a handle dragged past the content's end
    assert t.source_range() == (0, 71)
