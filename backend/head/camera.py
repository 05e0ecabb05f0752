"""Pinhole camera shared by fitting, rendering and the Blender side.

The camera sits at the origin and looks down -z with +y up (Blender's and OpenGL's convention),
so a head in front of it has negative z. Image pixels have +u right and +v down, and pixel
centres sit at integer coordinates, as in OpenCV.
Intrinsics are ``(f, cx, cy)`` in pixels of the image being projected into.
"""
from __future__ import annotations

import numpy as np
import torch


def project(points: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """(..., N, 3) camera-space metres -> (..., N, 2) pixels. ``intrinsics`` is (..., 3): f, cx, cy."""
    f, cx, cy = intrinsics[..., 0:1], intrinsics[..., 1:2], intrinsics[..., 2:3]
    depth = (-points[..., 2]).clamp_min(1e-6)
    u = cx + f * points[..., 0] / depth
    v = cy - f * points[..., 1] / depth
    return torch.stack([u, v], -1)


def project_np(points: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """numpy twin of :func:`project`, for code that has no torch at hand."""
    f, cx, cy = (np.asarray(intrinsics, np.float64)[..., i:i + 1] for i in range(3))
    depth = np.maximum(-points[..., 2], 1e-6)
    return np.stack([cx + f * points[..., 0] / depth, cy - f * points[..., 1] / depth], -1)


def default_intrinsics(width: int, height: int, focal: float | None = None) -> np.ndarray:
    """(3,) f, cx, cy. Without a known focal length, f = max(width, height) (about 53° across)."""
    return np.array([focal or float(max(width, height)), (width - 1) / 2.0, (height - 1) / 2.0], np.float64)


def face_width_px(vertices: np.ndarray, region_labels: np.ndarray, intrinsics: np.ndarray,
                  valid: np.ndarray | None = None) -> float:
    """How wide the face is in the image: the horizontal pixel span of the projected face-region
    vertices (``region_labels >= 0``), the median over the frames (those ``valid`` (T,) marks, when
    any are). ``vertices`` (T, V, 3) camera-space metres; ``intrinsics`` (3,) f, cx, cy pixels."""
    u = project_np(np.asarray(vertices, np.float64)[:, region_labels >= 0], intrinsics)[..., 0]
    span = np.ptp(u, axis=1)
    if valid is not None and np.any(valid):
        span = span[np.asarray(valid, bool)]
    return float(np.median(span))
