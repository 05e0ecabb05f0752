"""Numbers behind the keyframe editing tools (numpy only, no bpy): amplify, smooth, clean, bake.

Every function works on plain key arrays: ``times`` (N,) in scene frames, strictly increasing,
and ``values`` (N,) or (N, C) in the channel's own units (shape-key weight, quaternion component,
metres). The Blender side (``ops/keyframe_*.py``, one module per tool) reads F-curves into such arrays
in bulk and writes the answers back.

- Amplify: ``w' = w_on + g * (w - w_on)`` about the onset value; rotations are scaled in log
  (axis-angle) space about the onset rotation, never component-wise. Per-region gains reach a
  shape key through its share of displacement energy per face region (:func:`region_shares`).
- Smooth: zero-phase Gaussian-weighted local polynomial regression in time (quadratic by default,
  a time-aware Savitzky-Golay: exact for constants, ramps and parabolas, so peaks keep their
  height; correct for non-uniform keys), run separately between anchors (the onset key and, optionally,
  the onset/apex/offset keys) so the micro-expression's timing is never blurred. Those keys are the
  turning points of a motion magnitude relative to onset: the whole face's RMS vertex motion
  (:func:`motion_magnitude`), or one channel's own value.
- Clean: Douglas-Peucker on each curve: the fewest keys whose linear interpolation stays within a
  tolerance of every original key.
- Bake: one key per scene frame over a range.
"""
from __future__ import annotations

import math

import numpy as np

from .lbs import axis_angle_to_quaternion
from .contract import contract_module

# The result format's region order (its reader refuses any other).
REGION_NAMES = contract_module("result").REGION_NAMES
# FLAME's joints (in result-file order: global, neck, jaw, left eye, right eye) -> the region whose
# gain amplifies them. Global and neck carry rigid head motion: they have none and are never amplified.
FLAME_BONE_REGIONS = (None, None, "mouth", "left_eye", "right_eye")

_CHUNK = 256   # rows per pass of the smoother (bounds the (rows, window) temporaries)
_SUPPORT = 4.0  # the Gaussian kernel is cut at this many sigmas


# --- regions ------------------------------------------------------------------------------------

def region_shares(deltas: np.ndarray, labels: np.ndarray, n_regions: int = len(REGION_NAMES)) -> np.ndarray:
    """Each shape key's share of displacement energy per face region.

    deltas: (K, V, 3) displacement of each key at weight 1 (metres; the units cancel).
    labels: (V,) region index per vertex, -1 outside the regions (ignored).
    Returns (K, n_regions) float64; each row sums to 1, or is all 0 for a key that moves no
    labelled vertex (such a key then takes the global gain alone).
    """
    deltas = np.asarray(deltas, np.float64)
    labels = np.asarray(labels).astype(np.int64)
    energy = (deltas * deltas).sum(-1)                                       # (K, V)
    onehot = (labels[:, None] == np.arange(n_regions)).astype(np.float64)    # (V, R)
    per = energy @ onehot
    total = per.sum(1, keepdims=True)
    return np.divide(per, total, out=np.zeros_like(per), where=total > 0)


def bone_regions(joint_names: list[str]) -> list[str | None]:
    """The region whose gain drives each joint's rotation, or None (rigid head motion, never
    amplified). FLAME's five joints by position; other rigs by name (jaw -> mouth, eyes -> eyes)."""
    if len(joint_names) == len(FLAME_BONE_REGIONS):
        return list(FLAME_BONE_REGIONS)
    out = []
    for name in joint_names:
        n = name.lower()
        if "jaw" in n:
            out.append("mouth")
        elif "eye" in n and ("left" in n or n.endswith(("_l", ".l"))):
            out.append("left_eye")
        elif "eye" in n and ("right" in n or n.endswith(("_r", ".r"))):
            out.append("right_eye")
        else:
            out.append(None)
    return out


def key_gains(shares: np.ndarray, gain: float, region_gains) -> np.ndarray:
    """(K,) effective gain of each key: ``gain * sum_r share[k, r] * region_gains[r]``.

    shares: (K, R) from :func:`region_shares`; rows of zeros take ``gain`` alone.
    region_gains: (R,). When all region gains are equal the result is exactly ``gain * g``, so
    unit gains give exactly 1 (the tools then leave the key untouched).
    """
    shares = np.asarray(shares, np.float64)
    g = np.asarray(region_gains, np.float64)
    if np.all(g == g[0]):
        return np.full(len(shares), float(gain) * float(g[0]))
    total = shares.sum(1)
    mixed = np.divide(shares @ g, total, out=np.ones(len(shares)), where=total > 0)
    return float(gain) * mixed


# --- amplify ------------------------------------------------------------------------------------

def amplify(values: np.ndarray, onset_value, gain: float) -> np.ndarray:
    """``onset_value + gain * (values - onset_value)`` in float64. values (N,) or (N, C);
    onset_value scalar or (C,). Gain 1 returns the values unchanged (bit for bit)."""
    values = np.asarray(values, np.float64)
    if gain == 1.0:
        return values.copy()
    return onset_value + gain * (values - onset_value)


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of (..., 4) quaternions (w, x, y, z)."""
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack([aw * bw - ax * bx - ay * by - az * bz,
                     aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw], -1)


def _normalized(q: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(q, axis=-1, keepdims=True)
    return q / np.where(n > 0, n, 1.0)


def quat_log(q: np.ndarray) -> np.ndarray:
    """(..., 4) unit quaternions -> (..., 3) rotation vectors (axis * angle, radians), angle <= pi.
    The inverse of :func:`.lbs.axis_angle_to_quaternion`."""
    q = _normalized(np.asarray(q, np.float64))
    q = q * np.where(q[..., :1] < 0, -1.0, 1.0)          # the shorter way round
    v = q[..., 1:]
    s = np.linalg.norm(v, axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(s, q[..., :1])
    # angle / s -> 2 as s -> 0 (first order), which keeps tiny rotations exact.
    return v * np.where(s > 1e-12, angle / np.where(s > 1e-12, s, 1.0), 2.0)


def amplify_rotations(quats: np.ndarray, onset: np.ndarray, gain: float) -> np.ndarray:
    """Scale each rotation's motion relative to the onset rotation by ``gain``, in log space:
    ``q' = q_on * exp(gain * log(q_on^-1 * q))``.

    quats: (N, 4) (w, x, y, z); onset: (4,). Returns (N, 4) unit quaternions, each in the same
    hemisphere as its input (so the F-curves stay continuous). Gain 1 returns the input unchanged.
    """
    quats = np.asarray(quats, np.float64)
    if gain == 1.0:
        return quats.copy()
    q_on = _normalized(np.asarray(onset, np.float64))
    conj = q_on * np.array([1.0, -1.0, -1.0, -1.0])
    rel = quat_multiply(np.broadcast_to(conj, quats.shape), _normalized(quats))
    out = quat_multiply(np.broadcast_to(q_on, quats.shape), axis_angle_to_quaternion(gain * quat_log(rel)))
    flip = (out * quats).sum(-1, keepdims=True) < 0
    return np.where(flip, -out, out)


def rotation_angles(quats: np.ndarray, onset: np.ndarray) -> np.ndarray:
    """(N,) angle in radians of each rotation relative to ``onset`` (4,)."""
    q_on = _normalized(np.asarray(onset, np.float64))
    dots = np.abs(_normalized(np.asarray(quats, np.float64)) @ q_on)
    return 2.0 * np.arccos(np.clip(dots, 0.0, 1.0))


# --- smooth -------------------------------------------------------------------------------------

def noise_sigma(values: np.ndarray) -> float:
    """Robust estimate of i.i.d. noise in a (N,) key sequence: the median absolute second
    difference, scaled so that white noise of standard deviation s gives s (second differences of
    white noise have standard deviation s * sqrt(6)). Smooth motion barely contributes."""
    x = np.asarray(values, np.float64)
    if len(x) < 3:
        return 0.0
    d2 = x[2:] - 2.0 * x[1:-1] + x[:-2]
    return float(1.4826 * np.median(np.abs(d2)) / math.sqrt(6.0))


def turning_points(signal: np.ndarray, threshold: float, band: float | None = None) -> np.ndarray:
    """Indices of the keys that time a motion: onset, apex and offset.

    signal: (N,) e.g. a key's value or the motion magnitude relative to onset.
    threshold: a swing smaller than this is not a motion (zig-zag hysteresis), in signal units.
    band: how close to an extreme counts as still there (default threshold / 4).
    Returns sorted unique indices: for each swing between two alternating extremes (rest, apex,
    rest, ...), the last key before the signal leaves the first extreme's band (the onset, or the
    apex's end) and the first key inside the second one's band (the apex's start, or the offset).
    A sharp apex is both at once; a held apex or a rest plateau is bracketed by them, so the exact
    key of a noisy plateau's extreme (which is where the noise happened to peak) is not kept. A
    step keeps its last rest key and its first moved key: its timing survives smoothing.
    """
    x = np.asarray(signal, np.float64)
    n = len(x)
    if n < 3 or not threshold > 0:
        return np.zeros(0, np.int64)
    band = threshold / 4.0 if band is None else band
    extremes: list[int] = []
    lo = hi = 0
    direction = 0  # +1 rising towards a maximum, -1 falling towards a minimum, 0 undecided
    for i in range(1, n):
        v = x[i]
        if direction >= 0 and v > x[hi]:
            hi = i
        if direction <= 0 and v < x[lo]:
            lo = i
        if direction == 0:
            if v - x[lo] >= threshold:
                extremes.append(lo)
                direction, hi = 1, i
            elif x[hi] - v >= threshold:
                extremes.append(hi)
                direction, lo = -1, i
        elif direction > 0 and x[hi] - v >= threshold:
            extremes.append(hi)
            direction, lo = -1, i
        elif direction < 0 and v - x[lo] >= threshold:
            extremes.append(lo)
            direction, hi = 1, i
    if direction:
        extremes.append(hi if direction > 0 else lo)  # the last extreme, still pending at the end
    keep = set()
    for a, b in zip(extremes[:-1], extremes[1:]):
        seg = x[a:b + 1]
        leave = a + int(np.flatnonzero(np.abs(seg - x[a]) <= band).max())  # seg[0] is x[a] itself
        after = x[leave:b + 1]
        near_b = np.flatnonzero(np.abs(after - x[b]) <= band)
        arrive = leave + int(near_b[0]) if len(near_b) else b
        keep.update((leave, arrive))
    return np.array(sorted(keep), np.int64)


def timing_keys(signal: np.ndarray, rel_threshold: float = 0.2, noise_factor: float = 8.0) -> np.ndarray:
    """:func:`turning_points` of ``signal`` (N,) for swings larger than ``rel_threshold`` of its
    range and than ``noise_factor`` times its noise (:func:`noise_sigma`). Pure white noise spans
    about 5-7 standard deviations over 100-1000 keys, so the default 8 finds no motion in it. A
    key counts as still at an extreme within 4 noise deviations of it (at least a quarter of the
    threshold), so noise on a rest plateau does not move its onset key earlier."""
    x = np.asarray(signal, np.float64)
    if len(x) < 3:
        return np.zeros(0, np.int64)
    sigma = noise_sigma(x)
    h = max(rel_threshold * float(np.ptp(x)), noise_factor * sigma)
    return turning_points(x, h, max(h / 4.0, 4.0 * sigma)) if h > 0 else np.zeros(0, np.int64)


def key_gram(deltas: np.ndarray) -> np.ndarray:
    """(K, K) Gram matrix of shape-key displacements (K, V, 3) metres, divided by V, so that
    ``dw @ G @ dw`` is the mean squared vertex displacement (m^2) of weight changes ``dw`` (K,)."""
    d = np.asarray(deltas, np.float64).reshape(len(deltas), -1)
    return d @ d.T / max(1, np.asarray(deltas).shape[1])


def motion_magnitude(values: np.ndarray, onset: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """(M,) RMS vertex displacement (metres) of the shape-key weights ``values`` (M, K) relative
    to the onset weights ``onset`` (K,), through ``gram`` from :func:`key_gram`. The whole face's
    motion relative to onset: its turning points are the micro-expression's onset, apex, offset."""
    dw = np.asarray(values, np.float64) - np.asarray(onset, np.float64)
    return np.sqrt(np.maximum(0.0, np.einsum("mk,kl,ml->m", dw, gram, dw)))


def snap_to_keys(times: np.ndarray, event_times: np.ndarray, reach: float = 0.5) -> np.ndarray:
    """Sorted unique indices of the keys (times (N,), increasing) nearest each of ``event_times``,
    for events with a key within ``reach`` frames. Puts face-level events on one curve's keys."""
    t = np.asarray(times, np.float64)
    ev = np.asarray(event_times, np.float64)
    if len(t) == 0 or len(ev) == 0:
        return np.zeros(0, np.int64)
    j = np.clip(np.searchsorted(t, ev), 1, max(1, len(t) - 1)) if len(t) > 1 else np.zeros(len(ev), np.int64)
    if len(t) > 1:
        j = np.where(np.abs(t[j - 1] - ev) <= np.abs(t[j] - ev), j - 1, j)
    ok = np.abs(t[j] - ev) <= reach
    return np.unique(j[ok]).astype(np.int64)


def _local_poly(t: np.ndarray, y: np.ndarray, sigma: float, rows: np.ndarray, degree: int) -> np.ndarray:
    """Gaussian-weighted local polynomial fit of ``degree`` evaluated at ``t[rows]``, from all of
    (t (n,), y (n, C)). Returns (len(rows), C). Where too few keys are in reach for the degree
    (the normal equations are singular), the next lower degree is used; a lone key keeps its value."""
    out = np.empty((len(rows), y.shape[1]))
    powers = np.arange(degree + 1)
    for s in range(0, len(rows), _CHUNK):
        r = rows[s:s + _CHUNK]
        lo = int(np.searchsorted(t, t[r[0]] - _SUPPORT * sigma, "left"))
        hi = int(np.searchsorted(t, t[r[-1]] + _SUPPORT * sigma, "right"))
        d = (t[lo:hi][None, :] - t[r][:, None]) / sigma        # (rows, window), in sigmas
        w = np.exp(-0.5 * d * d)
        w[np.abs(d) > _SUPPORT] = 0.0
        basis = d[..., None] ** powers                         # (rows, window, degree + 1)
        wb = w[..., None] * basis
        gram = np.einsum("rwi,rwj->rij", wb, basis)            # (rows, p + 1, p + 1)
        rhs = np.einsum("rwi,wc->ric", wb, y[lo:hi])           # (rows, p + 1, C)
        todo = np.ones(len(r), bool)
        res = np.zeros((len(r), y.shape[1]))
        for p in range(degree, 0, -1):
            g = gram[:, :p + 1, :p + 1]
            scale = np.prod(np.diagonal(g, axis1=1, axis2=2), axis=1)
            ok = todo & (np.abs(np.linalg.det(g)) > 1e-10 * np.maximum(scale, 1e-300))
            if ok.any():
                res[ok] = np.linalg.solve(g[ok], rhs[ok, :p + 1])[:, 0]  # the value at d = 0
                todo &= ~ok
        if todo.any():  # the weighted mean (with one key in reach, that key's own value)
            res[todo] = rhs[todo, 0] / gram[todo, 0, 0][:, None]
        out[s:s + len(r)] = res
    return out


def smooth_keys(times: np.ndarray, values: np.ndarray, sigma: float, anchors=(), degree: int = 2) -> np.ndarray:
    """Zero-phase smoothing of keys that keeps ``anchors`` exactly and never smooths across them.

    times: (N,) frames, strictly increasing (non-uniform is fine). values: (N,) or (N, C).
    sigma: standard deviation of the Gaussian, in frames.
    anchors: indices whose values stay as they are (the onset; onset/apex/offset keys). The keys
    between two anchors are smoothed from those keys alone (anchors included as data), so no
    motion leaks across an anchor: a step kept by anchors stays a step at the same frame.
    degree: of the local polynomial. 2 (default) keeps peaks (a period of 10 sigma loses under 2 %
    of its amplitude, against 18 % for degree 1), 1 removes more noise for the same sigma. Either
    way constants and ramps come back unchanged (constants exactly) and the first and last keys
    are not pulled towards the middle.
    Returns float64 of the values' shape.
    """
    t = np.asarray(times, np.float64)
    y = np.asarray(values, np.float64)
    flat = y.ndim == 1
    y2 = y[:, None] if flat else y
    out = y2.copy()
    n = len(t)
    if n < 3 or not sigma > 0:
        return out[:, 0] if flat else out
    cuts = sorted({int(a) for a in anchors if 0 <= int(a) < n})
    bounds = [0, *cuts, n - 1]
    for a, b in zip(bounds[:-1], bounds[1:]):
        inner = np.arange(a + (a in cuts), b + 1 - (b in cuts))
        if b - a < 2 or len(inner) == 0:
            continue
        seg = slice(a, b + 1)
        ref = y2[a]  # smoothed relative to a key value, so a constant stays exactly constant
        out[inner] = ref + _local_poly(t[seg], y2[seg] - ref, sigma, inner - a, degree)
    return out[:, 0] if flat else out


def jitter(times: np.ndarray, values: np.ndarray) -> float:
    """RMS of the second difference of the keys per frame squared: how much the curve shakes
    from key to key (a ramp has none). For uniform keys it is the plain second difference."""
    t = np.asarray(times, np.float64)
    y = np.asarray(values, np.float64)
    if len(t) < 3:
        return 0.0
    slope = np.diff(y, axis=0) / np.diff(t).reshape(-1, *([1] * (y.ndim - 1)))
    curv = np.diff(slope, axis=0)
    return float(np.sqrt(np.mean(curv ** 2)))


# --- clean and bake -----------------------------------------------------------------------------

def simplify(times: np.ndarray, values: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker on one curve: (N,) bool mask of the keys to keep.

    The first and last keys stay. A key is added wherever linear interpolation between the kept
    keys misses an original key's value by more than ``tolerance`` (the channel's units, measured
    vertically, as the curve's value at that frame). So the kept keys, joined by straight lines,
    reproduce every original key within the tolerance.
    """
    t = np.asarray(times, np.float64)
    y = np.asarray(values, np.float64)
    n = len(t)
    keep = np.zeros(n, bool)
    if n == 0:
        return keep
    keep[[0, n - 1]] = True
    stack = [(0, n - 1)]
    while stack:
        i, j = stack.pop()
        if j - i < 2:
            continue
        tt = t[i + 1:j]
        line = y[i] + (y[j] - y[i]) * (tt - t[i]) / (t[j] - t[i])
        err = np.abs(y[i + 1:j] - line)
        k = int(np.argmax(err))
        if err[k] > tolerance:
            k += i + 1
            keep[k] = True
            stack += [(i, k), (k, j)]
    return keep


def restore_missed_keys(keep: np.ndarray, errors: np.ndarray, tolerance: float) -> np.ndarray:
    """Add back keys where a simplified curve, evaluated with its own interpolation, still misses.

    keep: (N,) bool kept keys; errors: (N,) |curve(t_i) - original value_i| at every original key.
    Adds, between each pair of neighbouring kept keys, the worst key whose error exceeds
    ``tolerance``. Returns a new mask (equal to ``keep`` when every error is within tolerance)."""
    keep = keep.copy()
    bad = errors > tolerance
    if not bad.any():
        return keep
    gap = np.cumsum(keep)  # keys between the same two kept keys share a gap number
    for g in np.unique(gap[bad]):
        idx = np.flatnonzero(bad & (gap == g))
        keep[idx[np.argmax(errors[idx])]] = True
    return keep


def bake_frames(first: float, last: float, step: int = 1) -> np.ndarray:
    """(M,) float64 whole scene frames from ``floor(first)`` to ``ceil(last)`` every ``step``, so
    a baked curve covers every original key."""
    a, b = math.floor(first), math.ceil(last)
    return np.arange(a, b + 1, max(1, int(step)), dtype=np.float64)
