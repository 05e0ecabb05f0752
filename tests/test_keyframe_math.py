"""The keyframe tools' numbers, without bpy: amplify (values and rotations), region shares,
onset-keeping smoothing on signals with known answers, Douglas-Peucker cleaning and baking."""
from __future__ import annotations

import numpy as np
import pytest

from microface_blender.core import keyframe_math as km
from microface_blender.core.lbs import axis_angle_to_quaternion


def test_region_names_are_the_result_formats():
    from backend.contract.result import REGION_NAMES

    assert km.REGION_NAMES == REGION_NAMES


# --- regions ------------------------------------------------------------------------------------

def test_region_shares_are_energy_fractions_over_labelled_vertices():
    labels = np.array([3, 3, 7, -1, 0])
    deltas = np.zeros((3, 5, 3))
    deltas[0, 0] = [3, 0, 0]          # mouth: energy 9 + 9
    deltas[0, 1] = [0, 3, 0]
    deltas[0, 2] = [0, 0, 6]          # chin: 36
    deltas[0, 3] = [100, 0, 0]        # outside every region: ignored
    deltas[1, 4] = [1e-3, 0, 0]       # left eye only
    shares = km.region_shares(deltas, labels)
    assert shares.shape == (3, 8)
    np.testing.assert_allclose(shares[0], [0, 0, 0, 18 / 54, 0, 0, 0, 36 / 54])
    np.testing.assert_allclose(shares[1], np.eye(8)[0])
    np.testing.assert_array_equal(shares[2], 0)          # moves nothing: no share anywhere


def test_key_gains_mix_region_gains_by_share_and_keep_unit_gains_exact():
    shares = np.array([[0.25, 0, 0, 0.75, 0, 0, 0, 0], np.zeros(8), [0.1] * 4 + [0.15] * 4])
    g = np.ones(8)
    g[3] = 0.0                                            # mouth off
    np.testing.assert_allclose(km.key_gains(shares, 2.0, g), [2 * 0.25, 2.0, 2 * (1 - 0.1)])
    assert np.all(km.key_gains(shares, 1.0, np.ones(8)) == 1.0)   # exactly, whatever the rounding
    assert np.all(km.key_gains(shares, 2.0, np.full(8, 1.5)) == 3.0)


def test_flame_bones_map_to_regions_and_head_motion_to_none():
    assert km.bone_regions(["global", "neck", "jaw", "left_eye", "right_eye"]) == [
        None, None, "mouth", "left_eye", "right_eye"]
    assert km.bone_regions(["root", "Jaw", "eye.L", "eye.R"]) == [None, "mouth", "left_eye", "right_eye"]


# --- amplify ------------------------------------------------------------------------------------

def test_amplify_scales_motion_about_the_onset():
    w = np.array([0.2, 0.3, 0.6, 0.1], np.float32)
    np.testing.assert_allclose(km.amplify(w, 0.2, 2.0), [0.2, 0.4, 1.0, 0.0], atol=1e-7)
    assert km.amplify(w, 0.2, 1.0).tobytes() == w.astype(np.float64).tobytes()
    np.testing.assert_allclose(km.amplify(w, 0.2, 0.0), 0.2)


def _axis_angle_quats(axis, angles):
    axis = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    return np.concatenate([np.cos(angles / 2)[:, None], np.sin(angles / 2)[:, None] * axis], 1)


def test_rotations_are_amplified_in_log_space_about_the_onset():
    angles = np.array([0.1, 0.15, 0.3, 0.05])
    q = _axis_angle_quats([1, 0.2, 0], angles)
    out = km.amplify_rotations(q, q[0], 2.0)
    # About one axis, doubling the motion doubles the angle beyond the onset's 0.1 rad.
    np.testing.assert_allclose(out, _axis_angle_quats([1, 0.2, 0], 0.1 + 2 * (angles - 0.1)), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(km.rotation_angles(out, q[0]), 2 * np.abs(angles - 0.1), atol=1e-9)
    assert km.amplify_rotations(q, q[0], 1.0).tobytes() == q.tobytes()
    np.testing.assert_allclose(km.amplify_rotations(q, q[0], 0.0), np.tile(q[0], (4, 1)), atol=1e-12)


def test_rotation_amplification_composes_about_an_arbitrary_onset_and_keeps_hemispheres():
    rng = np.random.default_rng(0)
    r = rng.normal(0, 0.2, (20, 3))
    q = axis_angle_to_quaternion(r)
    q[::3] *= -1                                         # same rotations, other hemisphere
    q_on = axis_angle_to_quaternion(np.array([0.3, -0.2, 0.1]))
    out = km.amplify_rotations(q, q_on, 1.7)
    assert np.all((out * q).sum(1) > 0)                  # each stays beside its input key
    conj = q_on * [1, -1, -1, -1]
    rel_in = km.quat_log(km.quat_multiply(np.broadcast_to(conj, q.shape), q))
    rel_out = km.quat_log(km.quat_multiply(np.broadcast_to(conj, q.shape), out))
    np.testing.assert_allclose(rel_out, 1.7 * rel_in, atol=1e-10)
    np.testing.assert_allclose(axis_angle_to_quaternion(km.quat_log(q)), q * np.sign(q[:, :1]), atol=1e-12)  # exp inverts log


# --- smooth -------------------------------------------------------------------------------------

def _anchors(x, onset=0):
    return np.union1d([onset], km.timing_keys(x))


def test_a_constant_stays_exactly_constant():
    t = np.arange(40.0)
    x = np.full(40, 0.3712)
    assert np.array_equal(km.smooth_keys(t, x, 3.0, [0]), x)
    assert np.array_equal(km.smooth_keys(t, x, 3.0, _anchors(x)), x)


@pytest.mark.parametrize("times", [np.arange(50.0), np.cumsum(np.random.default_rng(1).uniform(0.3, 2.5, 50))])
def test_a_ramp_stays_a_ramp_even_with_uneven_keys(times):
    x = 0.05 + 0.01 * times
    out = km.smooth_keys(times, x, 2.0, _anchors(x))
    np.testing.assert_allclose(out, x, atol=1e-12)


def test_the_quadratic_smoother_keeps_parabolas_and_peak_heights():
    t = np.arange(60.0)
    parabola = 0.002 * (t - 25) ** 2 - 0.3
    np.testing.assert_allclose(km.smooth_keys(t, parabola, 3.0), parabola, atol=1e-12)
    sine = np.sin(2 * np.pi * t / 20)
    quad = np.abs(km.smooth_keys(t, sine, 2.0)[10:50]).max()
    lin = np.abs(km.smooth_keys(t, sine, 2.0, degree=1)[10:50]).max()
    assert quad > 0.97 and lin < 0.85


def test_a_step_at_onset_stays_a_step_at_onset():
    t = np.arange(60.0)
    step = np.where(t >= 20, 0.4, 0.0)
    anchors = _anchors(step)
    assert {19, 20} <= set(anchors.tolist())           # last key at rest, first key moved
    np.testing.assert_array_equal(km.smooth_keys(t, step, 3.0, anchors), step)
    # With noise: still at rest until the onset, and at the new level one frame later.
    rng = np.random.default_rng(2)
    noisy = step + rng.normal(0, 0.01, 60)
    anchors = _anchors(noisy)
    assert {19, 20} <= set(anchors.tolist())
    out = km.smooth_keys(t, noisy, 3.0, anchors)
    assert int(np.argmax(out > 0.2)) == 20
    assert np.abs(out[:20]).max() < 0.03 and np.abs(out[20:] - 0.4).max() < 0.03
    # A plain (unanchored) smoother would blur it over several frames.
    blurred = km.smooth_keys(t, noisy, 3.0, [0])
    assert np.sum((blurred > 0.05) & (blurred < 0.35)) >= 4


def test_smoothing_keeps_anchors_and_the_onset_and_reduces_jitter():
    rng = np.random.default_rng(3)
    t = np.arange(200.0)
    clean = 0.3 * np.exp(-0.5 * ((t - 90) / 15) ** 2)        # onset -> apex at 90 -> offset
    noisy = clean + rng.normal(0, 0.01, len(t))
    anchors = _anchors(noisy)
    out = km.smooth_keys(t, noisy, 2.0, anchors)
    np.testing.assert_array_equal(out[anchors], noisy[anchors])
    assert out[0] == noisy[0]
    assert km.jitter(t, out) < 0.5 * km.jitter(t, noisy)
    assert np.sqrt(np.mean((out - clean) ** 2)) < 0.6 * np.sqrt(np.mean((noisy - clean) ** 2))
    assert abs(int(np.argmax(out)) - 90) <= 3              # the apex stays where it was
    # Several channels at once (a bone's quaternion) give the same answer as one by one.
    two = np.stack([noisy, 2 * noisy], 1)
    np.testing.assert_allclose(km.smooth_keys(t, two, 2.0, anchors)[:, 1], 2 * out, atol=1e-12)


def test_turning_points_find_onset_apex_and_offset_of_a_bump():
    t = np.arange(100.0)
    x = np.where((t > 30) & (t < 60), np.sin(np.pi * (t - 30) / 30), 0.0)
    # Onset, the apex's start and end (within 0.05 of the peak at 45), offset.
    np.testing.assert_array_equal(km.turning_points(x, 0.2), [30, 42, 48, 60])
    # A sharp apex is kept itself.
    np.testing.assert_array_equal(km.turning_points(np.interp(t, [0, 20, 30, 40, 99], [0, 0, 1, 0, 0]), 0.2),
                                  [20, 30, 40])
    assert len(km.turning_points(np.full(10, 1.0), 0.1)) == 0
    assert len(km.turning_points(np.arange(2.0), 0.1)) == 0


def test_noise_sigma_measures_white_noise_and_ignores_smooth_motion():
    rng = np.random.default_rng(4)
    t = np.arange(2000.0)
    assert km.noise_sigma(0.2 * np.sin(t / 50) + rng.normal(0, 0.01, len(t))) == pytest.approx(0.01, rel=0.1)
    assert km.noise_sigma(0.2 * np.sin(t / 50)) < 1e-4


def test_timing_keys_ignore_pure_noise_but_find_a_motion_in_it():
    rng = np.random.default_rng(6)
    for n in (50, 200, 1000):
        assert len(km.timing_keys(rng.normal(0, 0.01, n))) == 0
    t = np.arange(200.0)
    bump = 0.1 * np.exp(-0.5 * ((t - 100) / 10) ** 2) + rng.normal(0, 0.005, 200)
    tp = km.timing_keys(bump)
    assert any(abs(i - 100) <= 5 for i in tp) and tp.min() < 85 and tp.max() > 115


def test_motion_magnitude_is_the_rms_vertex_motion_relative_to_onset():
    rng = np.random.default_rng(7)
    deltas = rng.normal(0, 1e-3, (4, 50, 3))
    w = rng.random((6, 4))
    direct = np.sqrt((np.einsum("mk,kvc->mvc", w - w[2], deltas) ** 2).sum(2).mean(1))
    np.testing.assert_allclose(km.motion_magnitude(w, w[2], km.key_gram(deltas)), direct, rtol=1e-10)
    assert km.motion_magnitude(w, w[2], km.key_gram(deltas))[2] == 0.0


def test_events_snap_to_the_nearest_key_within_reach():
    t = np.array([1.0, 3.0, 5.0, 7.0])
    np.testing.assert_array_equal(km.snap_to_keys(t, [1.0, 3.4, 4.0, 6.0, 9.0]), [0, 1])
    np.testing.assert_array_equal(km.snap_to_keys(t, [4.0, 6.0, 9.0], reach=2.0), [1, 2, 3])  # ties: the earlier key
    assert len(km.snap_to_keys(t, [])) == 0 and len(km.snap_to_keys(t[:1], [1.2])) == 1


# --- clean and bake -----------------------------------------------------------------------------

def test_douglas_peucker_keeps_corners_and_stays_within_tolerance():
    t = np.arange(100.0)
    x = np.interp(t, [0, 30, 60, 99], [0.0, 1.0, 0.2, 0.2])   # three straight pieces
    keep = km.simplify(t, x, 1e-9)
    assert np.flatnonzero(keep).tolist() == [0, 30, 60, 99]
    rng = np.random.default_rng(5)
    y = np.sin(t / 8) + rng.normal(0, 1e-3, len(t))
    for tol in (1e-3, 1e-2, 5e-2):
        keep = km.simplify(t, y, tol)
        assert keep[0] and keep[-1]
        assert np.abs(np.interp(t, t[keep], y[keep]) - y).max() <= tol
    assert km.simplify(t, y, 5e-2).sum() < km.simplify(t, y, 1e-2).sum() < km.simplify(t, y, 1e-3).sum() < 100
    assert km.simplify(t, y, 0.0).sum() >= 98                 # nothing is exactly collinear


def test_refine_adds_the_worst_miss_between_kept_keys():
    keep = np.array([1, 0, 0, 0, 1, 0, 0, 1], bool)
    errors = np.array([0, 0.2, 0.5, 0.1, 0, 0.05, 0.01, 0])
    np.testing.assert_array_equal(km.restore_missed_keys(keep, errors, 0.1), [1, 0, 1, 0, 1, 0, 0, 1])
    assert np.array_equal(km.restore_missed_keys(keep, errors, 1.0), keep)


def test_bake_frames_cover_every_key():
    np.testing.assert_array_equal(km.bake_frames(1.0, 5.0), [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(km.bake_frames(10.125, 13.6), [10, 11, 12, 13, 14])
    np.testing.assert_array_equal(km.bake_frames(1, 10, step=4), [1, 5, 9])
