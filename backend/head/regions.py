"""The 8 facial regions of the design brief: which vertices belong to each, and which regions move.

FLAME_masks.pkl has eye regions, nose, lips, forehead and the whole face, but no cheeks or chin.
Those are carved out of the face mask by position on the template (y up, +x = subject's left).
A region is called active when its motion is a large enough share of the most-moving region's,
above a floor and above a multiple of the clip's own noise floor; a method's best rule depends on
its noise, so it is calibrated on clips with truth.
"""
from __future__ import annotations

import numpy as np

from ..contract.result import REGION_NAMES   # the one list, in the result file's contract


def region_labels(masks: dict[str, np.ndarray], v_template: np.ndarray) -> np.ndarray:
    """Per-vertex region index into ``REGION_NAMES``; -1 outside the 8 regions. (V,) int64.

    ``masks`` maps FLAME mask names to vertex index arrays; ``v_template`` is (V, 3) metres.
    """
    need = ("left_eye_region", "right_eye_region", "nose", "lips", "forehead", "face")
    missing = [k for k in need if k not in masks]
    if missing:
        raise ValueError(f"region masks file lacks {', '.join(missing)}")
    n = len(v_template)
    x, y = v_template[:, 0], v_template[:, 1]
    face = np.zeros(n, bool)
    face[np.asarray(masks["face"], dtype=np.int64)] = True
    labels = np.full(n, -1, np.int64)

    def claim(region: str, sel: np.ndarray) -> None:
        labels[sel & (labels < 0)] = REGION_NAMES.index(region)

    def mask(name: str) -> np.ndarray:
        sel = np.zeros(n, bool)
        sel[np.asarray(masks[name], dtype=np.int64)] = True
        return sel

    lips = mask("lips")
    eyes_top = v_template[np.asarray(masks["left_eye_region"]), 1].max()
    lips_bottom = v_template[lips, 1].min()
    # Order matters: named masks first, then the carved regions take what is left of the face.
    claim("left_eye", mask("left_eye_region"))
    claim("right_eye", mask("right_eye_region"))
    claim("nose", mask("nose"))
    claim("mouth", lips)
    claim("forehead", mask("forehead") | (face & (y > eyes_top - 0.004)))
    claim("chin", face & (y < lips_bottom))
    mid = 0.1 * (v_template[face, 0].max() - v_template[face, 0].min()) / 2
    claim("mouth", face & (np.abs(x) < mid) & (y < v_template[lips, 1].max() + 0.01))  # philtrum
    claim("left_cheek", face & (x >= 0))
    claim("right_cheek", face & (x < 0))
    return labels


# (fraction, floor_mm): the synthetic generator's own rule for its ground truth (backend/synthetic/synth.py)
TRUTH_RULE = (0.3, 0.03)
DETECTION_FRACTIONS = tuple(np.round(np.arange(0.2, 0.91, 0.05), 2))
DETECTION_FLOORS_MM = (0.0, 0.02, 0.03, 0.05, 0.08, 0.1, 0.15, 0.2, 0.3)
NOISE_FACTORS = (0.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def region_motion(head: np.ndarray, labels: np.ndarray, n_regions: int = len(REGION_NAMES)) -> np.ndarray:
    """Per frame and region, the mean |V_t - V_0| over the region's vertices.

    head (T, V, 3) metres without the rigid head motion, frame 0 the onset; labels (V,) region
    index or -1. Returns (T, R) mm; a region without vertices is 0.
    """
    d = np.linalg.norm(np.asarray(head, np.float64) - head[0], axis=-1) * 1000.0      # (T, V)
    out = np.zeros((len(d), n_regions))
    for r in range(n_regions):
        sel = labels == r
        if sel.any():
            out[:, r] = d[:, sel].mean(1)
    return out


def clip_noise_mm(peak_mm: np.ndarray) -> np.ndarray:
    """(...,) mm: the clip's own noise floor, what its regions that do not move show. The lower
    quartile of the regions' peak motion (..., R): a micro-expression moves one or a few regions,
    so at least a quarter of them are still, and how far they seem to move is the clip's noise
    (camera, codec, tracking), which an unfamiliar camera raises everywhere at once."""
    return np.quantile(np.asarray(peak_mm, np.float64), 0.25, axis=-1)


def active_regions(peak_mm: np.ndarray, fraction: float = TRUTH_RULE[0], floor_mm: float = TRUTH_RULE[1],
                   noise_factor: float = 0.0) -> np.ndarray:
    """(..., R) bool: regions moving at least ``fraction`` of the most-moving one, above ``floor_mm``
    and above ``noise_factor`` times the clip's noise floor (:func:`clip_noise_mm`)."""
    peak_mm = np.asarray(peak_mm)
    out = (peak_mm >= fraction * peak_mm.max(-1, keepdims=True)) & (peak_mm >= floor_mm)
    if noise_factor > 0:
        out &= peak_mm > noise_factor * clip_noise_mm(peak_mm)[..., None]
    return out


def calibrate_detection(peak_mm: np.ndarray, truth: np.ndarray,
                        noise_factors: tuple[float, ...] = (0.0,)) -> tuple[float, float, float]:
    """The (fraction, floor_mm, noise_factor) of :func:`active_regions` that calls ``truth`` (N, R)
    bool best from a method's ``peak_mm`` (N, R), over DETECTION_FRACTIONS x DETECTION_FLOORS_MM x
    ``noise_factors``; ties go to the lower noise factor, then floor, then fraction. A method's
    motion has its own noise floor, so the truth's rule is not its best detector; calibrate on
    training clips, never on the held-out ones.
    """
    best = max(((float((active_regions(peak_mm, f, m, k) == truth).mean()), -k, -m, -f)
                for k in noise_factors for m in DETECTION_FLOORS_MM for f in DETECTION_FRACTIONS))
    return -best[3], -best[2], -best[1]


def region_detection(motion_mm: np.ndarray, names: tuple[str, ...], fraction: float, floor_mm: float,
                     noise_factor: float = 0.0) -> dict:
    """The result file's ``region_detection``: the rule, the clip's noise floor (mm) and the ``names``
    of the regions it calls active from the peak over frames of ``motion_mm`` (T, R)
    (:func:`region_motion`)."""
    peak = np.asarray(motion_mm).max(0)
    active = active_regions(peak, fraction, floor_mm, noise_factor)
    return {"fraction": float(fraction), "floor_mm": float(floor_mm), "noise_factor": float(noise_factor),
            "noise_mm": round(float(clip_noise_mm(peak)), 5), "active": [n for n, a in zip(names, active) if a]}
