"""Aligned face crops: a temporally smoothed similarity per frame from clip pixels to a canonical
square crop.

Micro-expressions move the skin by a pixel or less, so any jitter of the crop transform shows up as
fake optical flow. The similarity is therefore fitted to points that expressions do not move (eye
corners, nose bridge and dorsum), and its four parameters are smoothed in time: rotation as an
angle, scale as a log scale, and position as the clip pixel that lands on the crop centre (so
smoothing the position does not depend on rotation and scale).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d

from ..config import AlignConfig
from ..errors import MicroFaceError
from .landmarks import Landmarks
from .video import Clip

# MediaPipe indices of expression-stable points: eye corners (outer, inner, inner, outer), then the
# nose from the bridge between the eyes down to the tip.
STABLE_POINTS = (33, 133, 362, 263, 168, 6, 197, 195, 5, 4)
# Their frontal positions, mm, x to the image right (the subject's left), y down: the FLAME template
# of assets/flame projected orthographically through the MediaPipe landmark embedding.
CANONICAL_MM = np.array([
    [-44.69, -21.82], [-18.14, -19.62], [18.14, -19.62], [44.69, -21.82],
    [0.00, -24.55], [0.01, -18.16], [0.01, -11.84], [0.01, -5.96], [0.00, -0.51], [0.00, 6.87],
])
# Reference length of AlignConfig.scale: eye-corner midpoint to chin on the same template, mm.
FACE_LENGTH_MM = 110.0
# Crop centre in the same template mm: midway between the forehead top (y -88) and the chin (+89),
# nudged 5 mm down so an opening jaw stays inside.
CROP_CENTRE_MM = np.array([0.0, 5.0])


@dataclass
class Alignment:
    """Aligned crops and the transforms that made them."""

    crops: np.ndarray        # (T, S, S, 3) uint8 RGB
    transforms: np.ndarray   # (T, 2, 3) float32 similarity: clip pixels -> crop pixels
    size: int                # S, crop side in pixels


def canonical_points(size: int, scale: float) -> np.ndarray:
    """(len(STABLE_POINTS), 2) target crop pixels of the stable points for a ``size`` px crop whose
    side is ``scale`` times the eye-to-chin length. Pixel centres at integers (OpenCV)."""
    px_per_mm = size / (scale * FACE_LENGTH_MM)
    return (CANONICAL_MM - CROP_CENTRE_MM) * px_per_mm + (size - 1) / 2


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama) per frame mapping ``src`` to ``dst``.

    src (T, N, 2), dst (N, 2) or (T, N, 2) -> (T, 2, 3) float64 with dst = A @ [x, y, 1].
    """
    src = np.asarray(src, np.float64)
    dst = np.broadcast_to(np.asarray(dst, np.float64), src.shape)
    p = src[..., 0] + 1j * src[..., 1]
    q = dst[..., 0] + 1j * dst[..., 1]
    pm, qm = p.mean(-1, keepdims=True), q.mean(-1, keepdims=True)
    pc, qc = p - pm, q - qm
    # dst = a * src + b with a = s * exp(i theta): the complex least-squares solution.
    a = (qc * pc.conj()).sum(-1) / np.maximum((np.abs(pc) ** 2).sum(-1), 1e-12)
    b = qm[:, 0] - a * pm[:, 0]
    out = np.zeros(src.shape[:-2] + (2, 3))
    out[..., 0, 0], out[..., 0, 1], out[..., 0, 2] = a.real, -a.imag, b.real
    out[..., 1, 0], out[..., 1, 1], out[..., 1, 2] = a.imag, a.real, b.imag
    return out


def smooth_similarities(transforms: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """Gaussian-smooth (T, 2, 3) similarities in time, ``sigma`` frames (0 = unchanged).

    Parameters smoothed: log scale, unwrapped angle, and the clip pixel mapped to the crop centre.
    Frames beyond the ends are the end frames repeated.
    """
    m = np.asarray(transforms, np.float64)
    if sigma <= 0 or len(m) < 2:
        return m.copy()
    a = m[:, 0, 0] + 1j * m[:, 1, 0]
    log_s = np.log(np.abs(a))
    theta = np.unwrap(np.angle(a))
    centre = np.full(2, (size - 1) / 2)
    # clip pixel c that lands on the crop centre: centre = a * c + b
    b = m[:, 0, 2] + 1j * m[:, 1, 2]
    c = (centre[0] + 1j * centre[1] - b) / a
    smooth = [gaussian_filter1d(v, sigma, mode="nearest") for v in (log_s, theta, c.real, c.imag)]
    a = np.exp(smooth[0] + 1j * smooth[1])
    c = smooth[2] + 1j * smooth[3]
    b = centre[0] + 1j * centre[1] - a * c
    out = np.zeros_like(m)
    out[:, 0, 0], out[:, 0, 1], out[:, 0, 2] = a.real, -a.imag, b.real
    out[:, 1, 0], out[:, 1, 1], out[:, 1, 2] = a.imag, a.real, b.imag
    return out


def to_crop(points: np.ndarray, transforms: np.ndarray) -> np.ndarray:
    """Clip pixels (T, N, 2) -> crop pixels (T, N, 2) through per-frame (T, 2, 3) transforms."""
    m = np.asarray(transforms, np.float64)
    p = np.asarray(points, np.float64)
    return np.einsum("tij,tnj->tni", m[:, :, :2], p) + m[:, None, :, 2]


def invert_affine(transforms: np.ndarray) -> np.ndarray:
    """(T, 2, 3) -> (T, 2, 3) inverse affine maps."""
    m = np.asarray(transforms, np.float64)
    lin_inv = np.linalg.inv(m[:, :, :2])
    return np.concatenate([lin_inv, -np.einsum("tij,tj->ti", lin_inv, m[:, :, 2])[..., None]], -1)


def to_source(points: np.ndarray, transforms: np.ndarray) -> np.ndarray:
    """Crop pixels (T, N, 2) -> clip pixels (T, N, 2); ``transforms`` map clip -> crop as in
    :class:`Alignment`."""
    return to_crop(points, invert_affine(transforms))


def align_faces(clip: Clip, landmarks: Landmarks, cfg: AlignConfig | None = None) -> Alignment:
    """Crop every frame to a canonical ``cfg.size`` square face (see the module docstring).

    Uses ``landmarks.mp`` on all frames (invalid ones hold interpolated points, so their transform
    is interpolated too). Warps with bilinear sampling and replicated borders.
    """
    cfg = cfg or AlignConfig()
    if cfg.size < 16:
        raise MicroFaceError(f"crop size {cfg.size} is too small; use at least 16 pixels")
    if cfg.scale <= 0 or cfg.smooth_sigma < 0:
        raise MicroFaceError(f"crop scale must be positive and smoothing non-negative "
                             f"(got scale {cfg.scale}, smooth_sigma {cfg.smooth_sigma})")
    if len(landmarks.mp) != len(clip.frames):
        raise MicroFaceError(f"landmarks cover {len(landmarks.mp)} frames but the clip has {len(clip.frames)}")
    src = landmarks.mp[:, list(STABLE_POINTS), :2]
    raw = fit_similarity(src, canonical_points(cfg.size, cfg.scale))
    transforms = smooth_similarities(raw, cfg.size, cfg.smooth_sigma)
    return Alignment(crops=warp_crops(clip.frames, transforms, cfg.size), transforms=transforms.astype(np.float32),
                     size=int(cfg.size))


def upscale_transforms(transforms: np.ndarray, factor: int) -> np.ndarray:
    """(T, 2, 3) clip -> S-crop maps to clip -> (factor S)-crop maps with the same framing: pixel
    centres at integers, so x_big = factor x + (factor - 1) / 2."""
    m = np.asarray(transforms, np.float64) * factor
    m[:, :, 2] += (factor - 1) / 2
    return m


def warp_crops(frames: np.ndarray, transforms: np.ndarray, size: int) -> np.ndarray:
    """(T, H, W, 3) uint8 frames through (T, 2, 3) clip -> crop maps -> (T, size, size, 3) uint8,
    bilinear with replicated borders."""
    crops = np.empty((len(frames), size, size, 3), np.uint8)
    for t, (frame, m) in enumerate(zip(frames, transforms)):
        crops[t] = cv2.warpAffine(frame, np.asarray(m, np.float64), (size, size), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REPLICATE)
    return crops
