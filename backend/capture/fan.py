"""FAN 68-point landmarks (face-alignment's 2D FAN-4), used only when its weights are on disk.

Nothing here downloads: the weights are looked up locally (see :func:`find_fan_weights`). The
network runs on crops built from the MediaPipe face box, so face-alignment's own face detector
(and its weights) is never needed. The TorchScript archive face-alignment ships is loaded with
``torch.jit.load``: TorchScript is a restricted language, not arbitrary Python, and the file is
one the user put there.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import cv2
import numpy as np

from ..config import ASSETS, resolve_asset
from ..errors import MicroFaceError
from .video import Progress

# Files face-alignment 1.4.1 downloads for the 2D FAN-4 network: the default, then the torch-1.6 and
# torch-1.5 builds. All are TorchScript archives loaded with torch.jit.load.
FAN_WEIGHT_FILES = ASSETS["fan"].files
FAN_INPUT = 256       # network input side, pixels
FAN_REFERENCE = 195.0  # face-alignment's detector box size that maps to scale 1 (200 px crop)
# MediaPipe points along iBUG-68's outline (jaw contour and brows): their box stands in for the face
# detector box that FAN crops were made from.
MP_JAW_AND_BROWS = (127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365,
                    397, 288, 361, 323, 454, 356, 70, 63, 105, 66, 107, 336, 296, 334, 293, 300)



def _torch_hub_dir() -> Path:
    """``torch.hub.get_dir()`` without importing torch (1-2 s) when it is not loaded yet."""
    if "torch" in sys.modules:
        return Path(sys.modules["torch"].hub.get_dir())
    cache = os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    return Path(os.environ.get("TORCH_HOME", os.path.join(cache, "torch"))).expanduser() / "hub"


def find_fan_weights(flag: str | None = None, required: bool = False) -> Path | None:
    """The FAN-4 2D weights file if it is on disk, else None: ``flag``, then $MICROFACE_FAN_DIR (a
    folder or the file itself), then torch's hub cache (``torch.hub.get_dir()/checkpoints``),
    where face-alignment keeps its downloads. Never downloads."""
    return resolve_asset("fan", flag, folders=(_torch_hub_dir() / "checkpoints",), required=required)


def fan_crop_transforms(mp_points: np.ndarray) -> np.ndarray:
    """(T, 478, 2+) MediaPipe points -> (T, 2, 3) float64 affine, clip pixels -> 256 px FAN input.

    Follows face-alignment's cropping of a detector box: centre raised by 0.12 box heights, crop
    side 200 * (w + h) / 195 pixels. The box here is that of the MediaPipe points on the jaw and
    brows, a stand-in for the SFD detector's box.
    """
    xy = mp_points[:, list(MP_JAW_AND_BROWS), :2].astype(np.float64)
    lo, hi = xy.min(1), xy.max(1)
    w, h = hi[:, 0] - lo[:, 0], hi[:, 1] - lo[:, 1]
    cx, cy = (lo[:, 0] + hi[:, 0]) / 2, (lo[:, 1] + hi[:, 1]) / 2 - 0.12 * h
    s = FAN_INPUT / (200.0 * (w + h) / FAN_REFERENCE)
    c = (FAN_INPUT - 1) / 2   # pixel centres at integers (OpenCV)
    m = np.zeros((len(xy), 2, 3))
    m[:, 0, 0] = m[:, 1, 1] = s
    m[:, 0, 2] = c - s * cx
    m[:, 1, 2] = c - s * cy
    return m


def decode_fan_heatmaps(heatmaps: np.ndarray, crop_transforms: np.ndarray) -> np.ndarray:
    """FAN heatmaps (N, 68, 64, 64) -> (N, 68, 2) points in the pixels the crops were cut from.

    As in FAN: the arg-max pixel, moved a quarter pixel towards the larger of its two neighbours
    along each axis (not at the border). Heatmap pixel j covers input pixels 4j..4j+3, whose centre
    is 4j + 1.5; ``crop_transforms`` (N, 2, 3) map source pixels to input pixels and are inverted.
    """
    n, k, hh, ww = heatmaps.shape
    flat = heatmaps.reshape(n, k, -1)
    idx = flat.argmax(-1)
    py, px = np.divmod(idx, ww)
    pts = np.stack([px, py], -1).astype(np.float64)                     # (N, K, 2) heatmap pixels
    ni, ki = np.meshgrid(np.arange(n), np.arange(k), indexing="ij")
    inner = (px > 0) & (px < ww - 1) & (py > 0) & (py < hh - 1)
    dx = heatmaps[ni, ki, py, np.minimum(px + 1, ww - 1)] - heatmaps[ni, ki, py, np.maximum(px - 1, 0)]
    dy = heatmaps[ni, ki, np.minimum(py + 1, hh - 1), px] - heatmaps[ni, ki, np.maximum(py - 1, 0), px]
    pts[..., 0] += np.where(inner, 0.25 * np.sign(dx), 0.0)
    pts[..., 1] += np.where(inner, 0.25 * np.sign(dy), 0.0)
    stride = FAN_INPUT / ww
    crop = pts * stride + (stride - 1) / 2                               # (N, K, 2) input pixels
    out = np.empty_like(crop)
    for i in range(n):
        inv = cv2.invertAffineTransform(crop_transforms[i].astype(np.float64))
        out[i] = crop[i] @ inv[:, :2].T + inv[:, 2]
    return out


def run_fan(frames: np.ndarray, mp_points: np.ndarray, weights: Path, progress: Progress | None,
             batch: int = 8) -> np.ndarray:
    """FAN-4 on crops from the MediaPipe mesh. Returns (T, 68, 2) float32 clip pixels."""
    import torch

    try:
        net = torch.jit.load(str(weights), map_location="cpu").eval()
    except (RuntimeError, ValueError, OSError) as exc:
        raise MicroFaceError(f"FAN weights {weights} cannot be loaded ({type(exc).__name__}); delete the "
                             "file or set use_fan to off") from None
    transforms = fan_crop_transforms(mp_points)
    out = np.zeros((len(frames), 68, 2), np.float32)
    for start in range(0, len(frames), batch):
        sl = slice(start, min(start + batch, len(frames)))
        crops = np.stack([cv2.warpAffine(f, m, (FAN_INPUT, FAN_INPUT), flags=cv2.INTER_LINEAR,
                                         borderMode=cv2.BORDER_CONSTANT)
                          for f, m in zip(frames[sl], transforms[sl])])
        x = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div_(255.0)
        with torch.no_grad():
            heat = net(x)
        if isinstance(heat, (list, tuple)):
            heat = heat[-1]   # stacked hourglass: the last stack's output
        out[sl] = decode_fan_heatmaps(heat.float().numpy(), transforms[sl])
        if progress is not None:
            progress("fan", sl.stop, len(frames))
    return out


# ---------------------------------------------------------------------------------------------
