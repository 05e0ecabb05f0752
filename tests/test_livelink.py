"""Live Link Face CSV (microface_blender/core/livelink.py), without Blender: the app's exact header,
timecodes, the rotation conventions of recorded takes, and a written take reading back."""
from __future__ import annotations

import numpy as np
import pytest

from microface_blender.core import livelink as ll

# The app's header, as in recorded takes (alexdjulin/LiveLinkFace-CSV-Retarget-For-Motionbuilder, anim/*.csv).
APP_HEADER = (
    "Timecode,BlendShapeCount,EyeBlinkLeft,EyeLookDownLeft,EyeLookInLeft,EyeLookOutLeft,EyeLookUpLeft,EyeSquintLeft,"
    "EyeWideLeft,EyeBlinkRight,EyeLookDownRight,EyeLookInRight,EyeLookOutRight,EyeLookUpRight,EyeSquintRight,"
    "EyeWideRight,JawForward,JawRight,JawLeft,JawOpen,MouthClose,MouthFunnel,MouthPucker,MouthRight,MouthLeft,"
    "MouthSmileLeft,MouthSmileRight,MouthFrownLeft,MouthFrownRight,MouthDimpleLeft,MouthDimpleRight,MouthStretchLeft,"
    "MouthStretchRight,MouthRollLower,MouthRollUpper,MouthShrugLower,MouthShrugUpper,MouthPressLeft,MouthPressRight,"
    "MouthLowerDownLeft,MouthLowerDownRight,MouthUpperUpLeft,MouthUpperUpRight,BrowDownLeft,BrowDownRight,BrowInnerUp,"
    "BrowOuterUpLeft,BrowOuterUpRight,CheekPuff,CheekSquintLeft,CheekSquintRight,NoseSneerLeft,NoseSneerRight,"
    "TongueOut,HeadYaw,HeadPitch,HeadRoll,LeftEyeYaw,LeftEyePitch,LeftEyeRoll,RightEyeYaw,RightEyePitch,RightEyeRoll")


def _take(frames: int = 20, seed: int = 0) -> ll.Take:
    rng = np.random.default_rng(seed)
    return ll.Take(times=np.arange(frames) / 200.0, weights=rng.uniform(0, 1, (frames, 52)),
                   rotations=rng.uniform(-0.3, 0.3, (frames, 9)))


def test_the_header_is_the_apps_and_every_row_counts_61():
    text = ll.format_take(_take(), 200.0)
    lines = text.splitlines()
    assert lines[0] == APP_HEADER and ",".join(ll.HEADER) == APP_HEADER
    assert all(line.split(",")[1] == "61" for line in lines[1:]) and len(lines) == 21
    assert all(len(line.split(",")) == 63 for line in lines)


def test_timecodes_count_frames_within_the_second_at_the_clips_rate():
    assert ll.timecode(0.0, 200) == "00:00:00:00.000"
    assert ll.timecode(1.0 + 37 / 200, 200) == "00:00:01:37.000"
    assert ll.timecode(3723.5, 30) == "01:02:03:15.000"
    assert ll.timecode(2.5 / 30, 30) == "00:00:00:02.500"             # the sub-frame in thousandths
    assert ll.parse_timecode("13:13:04:31.652", 60) == pytest.approx(13 * 3600 + 13 * 60 + 4 + 31.652 / 60)
    with pytest.raises(ll.LiveLinkError, match="not HH:MM:SS:FF.mmm"):
        ll.parse_timecode("12.5", 30)


def test_rotations_follow_the_recorded_conventions():
    # pitch positive looking down (a rotation about +x tips the gaze, +z, towards -y), yaw positive
    # towards the subject's left (+x), roll about +z; radians.
    np.testing.assert_allclose(ll.yaw_pitch_roll(np.array([[0.2, 0, 0], [0, 0.3, 0], [0, 0, -0.1]])),
                               [[0, 0.2, 0], [0.3, 0, 0], [0, 0, -0.1]], atol=1e-12)
    from scipy.spatial.transform import Rotation

    ypr = np.array([0.3, -0.2, 0.1])
    aa = (Rotation.from_rotvec([0, ypr[0], 0]) * Rotation.from_rotvec([ypr[1], 0, 0])
          * Rotation.from_rotvec([0, 0, ypr[2]])).as_rotvec()
    np.testing.assert_allclose(ll.yaw_pitch_roll(aa[None])[0], ypr, atol=1e-12)


def test_a_written_take_reads_back_to_the_same_curves(tmp_path):
    take = _take()
    path = tmp_path / "take.csv"
    path.write_text(ll.format_take(take, 200.0, start_seconds=12.0))
    back = ll.read_take(path, 200.0)
    np.testing.assert_allclose(back.weights, take.weights, atol=1e-9)
    np.testing.assert_allclose(back.rotations, take.rotations, atol=1e-9)
    np.testing.assert_allclose(back.times, take.times, atol=1e-9)


def test_columns_are_matched_by_name_and_a_dropped_frame_reads_as_zeros(tmp_path):
    take = _take(frames=3)
    rows = [r.split(",") for r in ll.format_take(take, 30.0).splitlines()]
    order = [0, 1] + list(range(len(rows[0]) - 1, 1, -1))           # every column reversed, names lower-cased
    text = [",".join(r[i].lower() if n == 0 else r[i] for i in order) for n, r in enumerate(rows)]
    text[2] = text[2].split(",")[0] + ",0"                            # the app's row for a lost frame
    path = tmp_path / "shuffled.csv"
    path.write_text("\n".join(text) + "\n")
    back = ll.read_take(path, 30.0)
    np.testing.assert_allclose(back.weights[[0, 2]], take.weights[[0, 2]], atol=1e-9)
    assert (back.weights[1] == 0).all() and (back.rotations[1] == 0).all()


@pytest.mark.parametrize("content, message", [
    ("a,b\n1,2\n", "is not a Live Link Face CSV"),
    ("Timecode,BlendShapeCount,EyeBlinkLeft\n00:00:00:00.000,61,0.5\n", "lacks the columns eyeLookDownLeft"),
    (APP_HEADER + "\n", "holds no frames"),
])
def test_a_file_that_is_not_a_take_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ll.LiveLinkError, match=message):
        ll.read_take(path, 30.0)
