"""Region motion and detection rules (backend/head/regions.py, backend/training/evaluate.py) on hand-made examples with known answers."""
from __future__ import annotations

import numpy as np

from backend.training.evaluate import region_truth
from backend.head.regions import active_regions, calibrate_detection, region_motion

T, F = True, False


def test_active_regions_batched_equals_per_clip():
    peaks = np.array([[1.0, 0.5, 0.04], [0.2, 0.05, 0.01]])
    want = [[T, T, F], [T, F, F]]      # the truth's rule: >= 0.3 of the largest and >= 0.03 mm
    assert active_regions(peaks).tolist() == [active_regions(p).tolist() for p in peaks] == want
    assert active_regions(peaks, 0.2, 0.0).tolist() == [[T, T, F], [T, T, F]]
    assert active_regions(peaks, 0.2, 0.6).tolist() == [[T, F, F], [F, F, F]]


def test_calibration_picks_the_lowest_perfect_rule():
    # Without a floor, row 1 needs fraction > 0.325 (0.065 / 0.2) and row 0 fraction <= 0.5:
    # the lowest perfect rule on the grid is fraction 0.35 with no floor.
    peaks = np.array([[1.0, 0.5, 0.04], [0.2, 0.065, 0.01], [2.0, 0.1, 0.12]])
    truth = np.array([[T, T, F], [T, F, F], [T, F, F]])
    assert calibrate_detection(peaks, truth) == (0.35, 0.0, 0.0)
    # Now row 1 would need fraction > 0.75 (0.06 / 0.08), which row 0 forbids: only a floor in
    # (0.06, 0.08] separates it, and with that floor the lowest fraction on the grid works.
    peaks[1] = [0.08, 0.06, 0.01]
    assert calibrate_detection(peaks, truth) == (0.2, 0.08, 0.0)


def test_region_truth_names_the_regions():
    assert region_truth(["b", "d"], ("a", "b", "c", "d")).tolist() == [F, T, F, T]


def test_region_motion_is_the_mean_displacement_from_frame_0():
    labels = np.array([0, 0, 1, -1])
    head = np.zeros((3, 4, 3))
    head[1, 0, 0] = 0.002       # frame 1: one of region 0's two vertices moves 2 mm
    head[2, :, 1] = 0.001       # frame 2: everything moves 1 mm
    head += [0.1, 0.2, -0.5]    # where the head is does not matter
    np.testing.assert_allclose(region_motion(head, labels, 3), [[0, 0, 0], [1, 0, 0], [1, 1, 0]], atol=1e-9)


def test_noise_factor_calls_only_what_stands_out_of_the_clips_floor():
    from backend.head.regions import clip_noise_mm

    # A quiet camera: one region moves. A noisy camera: every region seems to move about as much,
    # so the share-of-the-largest rule calls all of them; the noise floor calls none but the mover.
    quiet = np.array([0.40, 0.02, 0.03, 0.02, 0.01, 0.02, 0.03, 0.02])
    noisy = np.array([0.45, 0.20, 0.25, 0.18, 0.22, 0.21, 0.19, 0.24])
    assert clip_noise_mm(quiet) == np.quantile(quiet, 0.25)
    assert active_regions(noisy, 0.3, 0.08).sum() == 8
    for peaks in (quiet, noisy):
        assert active_regions(peaks, 0.3, 0.08, 2.0).tolist() == [T] + [F] * 7
    # Calibration finds the factor when the truth needs it, and none when it does not: a clip with
    # two movers needs fraction <= 0.4 (0.2 / 0.5), which the noisy clip's 0.25 / 0.45 forbids.
    two = np.array([0.50, 0.20, 0.02, 0.03, 0.02, 0.01, 0.02, 0.03])
    truth = np.array([[T] + [F] * 7, [T, T] + [F] * 6, [T] + [F] * 7])
    assert calibrate_detection(np.stack([quiet, two, noisy]), truth, (0.0, 2.0))[2] == 2.0
    assert calibrate_detection(np.stack([quiet, two, quiet]), truth, (0.0, 2.0))[2] == 0.0
