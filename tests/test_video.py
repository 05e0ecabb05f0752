"""Decoding frame ranges, and one-line errors for every kind of bad video input."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import shared_video, write_video

from backend.config import VideoConfig
from backend.errors import MicroFaceError
from backend.capture.video import _frame_rate, read_clip


def _source_frame(path: Path, index: int) -> np.ndarray:
    cap = cv2.VideoCapture(str(path))
    for _ in range(index):
        cap.grab()
    ok, bgr = cap.read()
    cap.release()
    assert ok
    return bgr[..., ::-1]


def test_reads_the_requested_range_as_rgb():
    path = shared_video("single_face.mp4")
    calls = []
    clip = read_clip(path, VideoConfig(start=10, end=34), progress=lambda *a: calls.append(a))
    assert clip.frames.shape == (25, 360, 640, 3) and clip.frames.dtype == np.uint8
    assert clip.frame_indices.tolist() == list(range(10, 35))
    assert clip.fps == pytest.approx(30.0) and (clip.width, clip.height) == (640, 360) and clip.scale == 1.0
    # Seeking by grab() lands on the same frame as decoding from the start.
    np.testing.assert_array_equal(clip.frames[0], _source_frame(path, 10))
    np.testing.assert_array_equal(clip.frames[-1], _source_frame(path, 34))
    assert calls[-1] == ("decode", 25, 25) and all(c[0] == "decode" for c in calls) and len(calls) >= 3


def test_whole_clip_by_default_and_fps_override():
    path = shared_video("single_face.mp4")
    clip = read_clip(path, VideoConfig(fps=120.0))
    assert len(clip.frames) == 72 and clip.frame_indices[-1] == 71 and clip.fps == 120.0


def test_downscale_records_the_factor():
    path = shared_video("single_face.mp4")
    clip = read_clip(path, VideoConfig(start=0, end=3, max_side=320))
    assert clip.frames.shape[1:3] == (180, 320)
    assert clip.scale == pytest.approx(0.5) and clip.source_size == (640, 360)
    full = _source_frame(path, 0).astype(np.float32)
    expected = cv2.resize(full, (320, 180), interpolation=cv2.INTER_AREA)
    assert np.abs(clip.frames[0].astype(np.float32) - expected).mean() < 1.0


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad_videos")
    (d / "notes.mp4").write_text("this is a text file, not a video\n")
    (d / "noise.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    (d / "empty.mp4").write_bytes(b"")
    (d / "folder.mp4").mkdir()
    write_video(d / "one_frame.mp4", np.full((1, 64, 64, 3), 128, np.uint8))
    write_video(d / "three_frames.mp4", np.full((3, 64, 64, 3), 128, np.uint8))
    return {p.name: p for p in d.iterdir()} | {"missing.mp4": d / "missing.mp4"}


@pytest.mark.parametrize("name, cfg, message", [
    ("missing.mp4", {}, r"video not found: .*missing\.mp4"),
    ("folder.mp4", {}, r"folder\.mp4 is a directory, not a video file"),
    ("notes.mp4", {}, r"notes\.mp4 is not a video OpenCV can decode"),
    # Blender gives a movie strip it cannot decode one frame: the file, not the range, is the problem.
    ("notes.mp4", {"start": 0, "end": 0}, r"notes\.mp4 is not a video OpenCV can decode"),
    ("noise.mp4", {}, r"noise\.mp4 is not a video OpenCV can decode"),
    ("empty.mp4", {}, r"empty\.mp4 is not a video OpenCV can decode"),
    ("one_frame.mp4", {}, r"one_frame\.mp4 has a single frame .* at least 2 are needed for optical flow"),
    ("three_frames.mp4", {"start": 2}, r"single frame in range 2\.\.2"),
    ("three_frames.mp4", {"start": 5}, r"start frame 5 is beyond the end of three_frames\.mp4 \(3 frames"),
    ("three_frames.mp4", {"end": 7}, r"end frame 7 is beyond the end of three_frames\.mp4 \(3 frames"),
    ("three_frames.mp4", {"start": 2, "end": 1}, r"frame range 2\.\.1 is empty"),
    ("three_frames.mp4", {"start": 1, "end": 1}, r"frame range 1\.\.1 has one frame"),
    ("three_frames.mp4", {"start": -1}, r"start frame -1 is negative"),
    ("three_frames.mp4", {"fps": 0.0}, r"--fps 0.0 is not a positive frame rate"),
])
def test_bad_input_is_one_line_error(bad_inputs, name, cfg, message):
    with pytest.raises(MicroFaceError, match=message) as err:
        read_clip(bad_inputs[name], VideoConfig(**cfg))
    assert "\n" not in str(err.value) and err.value.code == 2


class _CapWithoutRate:
    def __init__(self, fps: float):
        self.fps = fps

    def get(self, prop):
        assert prop == cv2.CAP_PROP_FPS
        return self.fps


@pytest.mark.parametrize("fps", [0.0, float("nan"), 90000.0])
def test_unknown_frame_rate_asks_for_fps(fps):
    with pytest.raises(MicroFaceError, match=r"does not state a usable frame rate .*pass --fps N"):
        _frame_rate(_CapWithoutRate(fps), VideoConfig(), Path("clip.mp4"))
    assert _frame_rate(_CapWithoutRate(fps), VideoConfig(fps=200), Path("clip.mp4")) == 200.0
