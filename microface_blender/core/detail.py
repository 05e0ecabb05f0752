"""Micro-detail basis: a per-clip PCA of the residual the rig does not reproduce (numpy only).

The residual (what is left of each frame's mesh after the expression shape keys and the bones)
becomes a few shape keys with keyframed weights: the fewest principal components whose worst
per-vertex reconstruction error over the whole clip stays within a tolerance.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_TOLERANCE = 5e-5   # metres (0.05 mm): far below what the backend can resolve
DEFAULT_MAX_KEYS = 32
_CHUNK = 128               # frames per pass when measuring errors (bounds temporary memory)


@dataclass
class DetailBasis:
    """K shape-key displacements and their per-frame weights; residual[t] ~= weights[t] @ keys."""

    keys: np.ndarray     # (K, V, 3) float32 metres: the displacement at weight 1
    weights: np.ndarray  # (T, K) float32, scaled into -1..1 (a shape key slider's default range)
    max_error: float     # metres: worst per-vertex distance between residual and reconstruction
    mean_error: float    # metres: mean of that distance over all frames and vertices
    residual_max: float  # metres: worst per-vertex length of the residual itself (the error with K = 0)

    @property
    def n_keys(self) -> int:
        return int(self.keys.shape[0])


def _vertex_errors(d: np.ndarray, coef: np.ndarray | None, basis: np.ndarray | None, k: int,
                   with_sum: bool = False) -> tuple[float, float]:
    """Max (and, with ``with_sum``, the sum) over frames and vertices of the per-vertex distance
    |d - coef[:, :k] @ basis[:k]|, d being (T, 3V) with x, y, z interleaved."""
    worst2, total = 0.0, 0.0
    for s in range(0, len(d), _CHUNK):
        e = d[s:s + _CHUNK]
        if k:
            e = e - coef[s:s + _CHUNK, :k] @ basis[:k]
        e = e * e
        n2 = e[:, 0::3] + e[:, 1::3] + e[:, 2::3]  # strided adds: ~4x faster than a sum over a last axis of 3
        worst2 = max(worst2, float(n2.max()))
        if with_sum:
            total += float(np.sqrt(n2).sum(dtype=np.float64))
    return float(np.sqrt(worst2)), total


def _principal_axes(d: np.ndarray, rank: int, seed: int) -> np.ndarray:
    """Orthonormal rows (rank, N) spanning d's dominant row space. Exact SVD for short clips,
    else a randomized range finder with two power iterations (Halko et al. 2011): the error is
    measured afterwards, so a slightly sub-optimal basis only costs a key, never accuracy."""
    t = d.shape[0]
    if t <= 2 * rank:
        return np.linalg.svd(d.astype(np.float64), full_matrices=False)[2][:rank]
    rng = np.random.default_rng(seed)
    y = d @ rng.standard_normal((d.shape[1], min(t, rank + 8))).astype(d.dtype)
    for _ in range(2):
        q = np.linalg.qr(y.astype(np.float64))[0].astype(d.dtype)
        z = np.linalg.qr((d.T @ q).astype(np.float64))[0].astype(d.dtype)
        y = d @ z
    q = np.linalg.qr(y.astype(np.float64))[0].astype(d.dtype)
    b = (q.T @ d).astype(np.float64)
    return np.linalg.svd(b, full_matrices=False)[2][:rank]


def fit_detail(residual: np.ndarray, tolerance: float = DEFAULT_TOLERANCE, max_keys: int = DEFAULT_MAX_KEYS,
               seed: int = 0) -> DetailBasis:
    """PCA of a (T, V, 3) residual in metres, keeping the fewest components (at most ``max_keys``)
    whose max per-vertex error is <= ``tolerance`` metres. Components are not mean-centred (the
    mean is just another direction), so weights of zero mean "no detail"."""
    t, v = residual.shape[:2]
    d = np.ascontiguousarray(residual, np.float32).reshape(t, v * 3)
    worst0, total0 = _vertex_errors(d, None, None, 0, with_sum=True)
    none = DetailBasis(np.zeros((0, v, 3), np.float32), np.zeros((t, 0), np.float32), worst0, total0 / (t * v), worst0)
    if worst0 <= tolerance or max_keys <= 0:
        return none
    rank = min(max_keys, t, v * 3)
    basis = _principal_axes(d, rank, seed).astype(np.float32)            # (rank, 3V)
    coef = d @ basis.T                                                    # (T, rank)
    # Smallest k within tolerance by bisection (the error falls with k); rank itself if none is.
    cache = {0: (worst0, total0)}

    def err(k: int) -> tuple[float, float]:
        if k not in cache:
            cache[k] = _vertex_errors(d, coef, basis, k)
        return cache[k]

    lo, hi = 0, rank
    if err(rank)[0] <= tolerance:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if err(mid)[0] <= tolerance else (mid, hi)
    k = hi
    worst, total = _vertex_errors(d, coef, basis, k, with_sum=True) if k else cache[0]
    scale = np.abs(coef[:, :k]).max(0)
    scale[scale == 0] = 1.0
    return DetailBasis(
        keys=(basis[:k] * scale[:, None]).reshape(k, v, 3).astype(np.float32),
        weights=(coef[:, :k] / scale).astype(np.float32),
        max_error=worst, mean_error=total / (t * v), residual_max=worst0)
