"""The 8 facial regions of the design brief, derived from FLAME's vertex masks.

FLAME_masks.pkl has eye regions, nose, lips, forehead and the whole face, but no cheeks or chin.
Those are carved out of the face mask by position on the template (y up, +x = subject's left).
"""
from __future__ import annotations

import numpy as np

REGION_NAMES = ("left_eye", "right_eye", "nose", "mouth", "left_cheek", "right_cheek", "forehead", "chin")


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
