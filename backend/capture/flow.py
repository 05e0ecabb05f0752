"""Optical flow between consecutive aligned crops.

DIS is OpenCV's dense inverse search; TV-L1 (the paper's choice) is DualTVL1 from opencv-contrib.
Micro-motion is a fraction of a crop pixel, and both methods read it better on a crop twice the
side the network reads (same framing), averaged back down: ``FlowConfig.supersample``.
On the held-out synthetic clips DIS on a 2x crop carries the most micro-motion of the variants
measured (docs/learned_modules.md, "The ceiling"), so it is the default. Flow pairs are
independent, so they are spread over a small thread pool (OpenCV releases the GIL).
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from ..config import FlowConfig
from ..errors import MicroFaceError
from .align import Alignment, upscale_transforms, warp_crops
from .video import Progress

METHODS = ("tvl1", "dis")


def _make_solver(cfg: FlowConfig):
    if cfg.method == "dis":
        return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return cv2.optflow.DualTVL1OpticalFlow_create(
        tau=cfg.tau, lambda_=cfg.lambda_, theta=cfg.theta, nscales=cfg.nscales, warps=cfg.warps,
        epsilon=cfg.epsilon)


def crop_flow(crops: np.ndarray, cfg: FlowConfig | None = None, progress: Progress | None = None,
              reduce: int = 1, pairs: np.ndarray | None = None) -> np.ndarray:
    """Dense flow from crop t to crop t+1: (T, S, S, 3) uint8 RGB -> (T-1, S/reduce, S/reduce, 2)
    float32 in pixels of the reduced crop. ``pairs`` (M, 2) (source, target) crop indices gives
    M other pairs instead (e.g. from an anchor frame, see :func:`anchor_pairs`).

    ``flow[t, y, x]`` is where the pixel (x, y) of crop t moved to in crop t+1, minus (x, y):
    crop_t(p) ~ crop_t+1(p + flow). ``cfg.method`` picks DIS (medium preset) or TV-L1 with ``cfg``'s
    parameters. ``reduce`` > 1 averages each pair's flow over reduce x reduce blocks and divides it
    by ``reduce`` (see :func:`aligned_flow`). ``progress("flow", done, total)`` is called about every
    10 pairs.
    """
    cfg = cfg or FlowConfig()
    if cfg.method not in METHODS:
        raise MicroFaceError(f"unknown flow method {cfg.method!r}; use one of {', '.join(METHODS)}")
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8:
        raise MicroFaceError(f"flow needs (T, S, S, 3) uint8 crops, got {crops.shape} {crops.dtype}")
    if crops.shape[1] % reduce or crops.shape[2] % reduce:
        raise MicroFaceError(f"crop side {crops.shape[1]} is not a multiple of the flow reduction {reduce}")
    if len(crops) < 2:
        raise MicroFaceError("optical flow needs at least 2 frames")
    if pairs is None:
        pairs = np.stack([np.arange(len(crops) - 1), np.arange(1, len(crops))], 1)
    n_pairs = len(pairs)
    gray = [cv2.cvtColor(c, cv2.COLOR_RGB2GRAY) for c in crops]
    local = threading.local()

    def pair(t: int) -> np.ndarray:
        if not hasattr(local, "solver"):
            local.solver = _make_solver(cfg)   # solvers keep state: one per thread
        flow = local.solver.calc(gray[pairs[t][0]], gray[pairs[t][1]], None)
        return flow if reduce == 1 else pool_flow(flow[None], reduce)[0] / reduce

    out = np.empty((n_pairs, crops.shape[1] // reduce, crops.shape[2] // reduce, 2), np.float32)
    workers = cfg.workers if cfg.workers > 0 else max(1, cv2.getNumberOfCPUs())
    workers = min(workers, n_pairs)
    if workers == 1:
        results = map(pair, range(n_pairs))
        pool = None
    else:
        pool = ThreadPoolExecutor(workers, thread_name_prefix="flow")
        results = pool.map(pair, range(n_pairs))
    try:
        for t, flow in enumerate(results):
            out[t] = flow
            if progress is not None and ((t + 1) % 10 == 0 or t + 1 == n_pairs):
                progress("flow", t + 1, n_pairs)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return out


def anchor_pairs(n_frames: int, every: int) -> np.ndarray:
    """(T-1, 2) flow pairs (anchor, t) for t = 1..T-1, the anchor the last multiple of ``every``
    frames before t: each frame is read from a recent frame directly instead of through a chain of
    consecutive pairs, whose errors add up."""
    t = np.arange(1, n_frames)
    return np.stack([((t - 1) // max(1, every)) * max(1, every), t], 1)


def aligned_flow(frames: np.ndarray, alignment: Alignment, cfg: FlowConfig | None = None,
                 progress: Progress | None = None, pairs: np.ndarray | None = None) -> np.ndarray:
    """Flow between consecutive aligned crops: (T-1, S, S, 2) float32 in S-crop pixels, S the
    alignment's side (or between ``pairs``, see :func:`crop_flow`). With ``cfg.supersample`` k > 1
    it is computed on (k S)-pixel crops of ``frames`` (T, H, W, 3) uint8 cut with the same framing,
    then reduced k-fold to the S grid."""
    cfg = cfg or FlowConfig()
    k = int(cfg.supersample)
    if k < 1:
        raise MicroFaceError(f"flow supersampling must be a positive integer, got {cfg.supersample}")
    if k == 1:
        return crop_flow(alignment.crops, cfg, progress, pairs=pairs)
    big = warp_crops(frames, upscale_transforms(alignment.transforms, k), alignment.size * k)
    return crop_flow(big, cfg, progress, reduce=k, pairs=pairs)


def pool_flow(flow: np.ndarray, factor: int = 2) -> np.ndarray:
    """Average ``factor``×``factor`` blocks: (P, S, S, 2) -> (P, S/f, S/f, 2), values still in crop
    pixels of the full crop. The learned network reads flow at 112 for a 224 crop."""
    p, h, w, c = flow.shape
    return flow.reshape(p, h // factor, factor, w // factor, factor, c).mean((2, 4))
