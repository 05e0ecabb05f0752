"""Linear-blend skinning in numpy, as Blender's Armature modifier evaluates it (no bpy).

Conventions follow the result file's rig: a joint rotates about its rest position by the axis-angle
of ``pose`` (radians), chained from its parent; the root also carries ``trans`` (metres). Points
are metres. The forward pass equals FLAME's (backend.head.flame.FlameLayer) for the same joints.
"""
from __future__ import annotations

import numpy as np


def axis_angle_to_matrix(aa: np.ndarray) -> np.ndarray:
    """Rodrigues: (..., 3) radians -> (..., 3, 3) float64 rotation matrices."""
    aa = np.asarray(aa, np.float64)
    theta2 = (aa * aa).sum(-1)
    theta = np.sqrt(theta2)
    small = theta2 < 1e-8
    safe = np.where(small, 1.0, theta)
    # Taylor terms near zero avoid 0/0; the error there is below 1e-16.
    a = np.where(small, 1 - theta2 / 6, np.sin(safe) / safe)
    b = np.where(small, 0.5 - theta2 / 24, (1 - np.cos(safe)) / np.where(small, 1.0, theta2))
    x, y, z = aa[..., 0], aa[..., 1], aa[..., 2]
    zero = np.zeros_like(x)
    k = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*aa.shape[:-1], 3, 3)
    return np.eye(3) + a[..., None, None] * k + b[..., None, None] * (k @ k)


def axis_angle_to_quaternion(aa: np.ndarray) -> np.ndarray:
    """(..., 3) radians -> (..., 4) unit quaternions (w, x, y, z), Blender's component order."""
    aa = np.asarray(aa, np.float64)
    theta = np.sqrt((aa * aa).sum(-1))
    half = 0.5 * theta
    small = theta < 1e-6
    s = np.where(small, 0.5 - theta * theta / 48, np.sin(half) / np.where(small, 1.0, theta))
    return np.concatenate([np.cos(half)[..., None], aa * s[..., None]], -1)


def continuous_quaternions(q: np.ndarray) -> np.ndarray:
    """Flip signs along axis 0 so consecutive quaternions lie in one hemisphere: (T, ..., 4) -> same.

    q and -q are the same rotation, but keyframes interpolated across a sign flip swing the long way.
    """
    q = np.array(q, np.float64)
    if len(q) < 2:
        return q
    flip = (q[1:] * q[:-1]).sum(-1) < 0
    sign = np.concatenate([np.ones_like(flip[:1], float), np.cumprod(np.where(flip, -1.0, 1.0), 0)])
    return q * sign[..., None]


def skinning_transforms(pose: np.ndarray, joints: np.ndarray, parents) -> tuple[np.ndarray, np.ndarray]:
    """Per-joint rest-to-posed transforms, without the root translation.

    pose (..., 3J) axis-angle radians, joint by joint; joints (..., J, 3) rest positions in metres
    (broadcast against pose's leading axes); parents (J,) with -1 for the root and parents first.
    Returns R (..., J, 3, 3) and t (..., J, 3) such that joint j maps a rest point x to R x + t.
    """
    joints = np.asarray(joints, np.float64)
    n_j = joints.shape[-2]
    pose = np.asarray(pose, np.float64)
    rot = axis_angle_to_matrix(pose.reshape(*pose.shape[:-1], n_j, 3))
    lead = np.broadcast_shapes(rot.shape[:-3], joints.shape[:-2])
    rot = np.broadcast_to(rot, (*lead, n_j, 3, 3))
    joints = np.broadcast_to(joints, (*lead, n_j, 3))
    world_r = np.empty_like(rot)
    world_t = np.empty(joints.shape)
    for j in range(n_j):
        p = int(parents[j])
        if p < 0:
            world_r[..., j, :, :] = rot[..., j, :, :]
            world_t[..., j, :] = joints[..., j, :]
        else:
            world_r[..., j, :, :] = world_r[..., p, :, :] @ rot[..., j, :, :]
            world_t[..., j, :] = world_t[..., p, :] + (world_r[..., p, :, :]
                                                       @ (joints[..., j, :] - joints[..., p, :])[..., None])[..., 0]
    offs = world_t - (world_r @ joints[..., None])[..., 0]
    return world_r, offs


def normalised_weights(weights: np.ndarray) -> np.ndarray:
    """(V, J) weights scaled to sum to 1 per vertex, as the Armature modifier does; rows whose
    total is at most 1e-4 become all zero (Blender leaves those vertices undeformed)."""
    w = np.asarray(weights, np.float64)
    total = w.sum(1, keepdims=True)
    return np.where(total > 1e-4, w / np.where(total > 1e-4, total, 1.0), 0.0)


def blend(rot: np.ndarray, offs: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex blended transforms: (..., J, 3, 3), (..., J, 3), weights (V, J) -> M (..., V, 3, 3),
    b (..., V, 3). Vertices without weight get the identity."""
    w = normalised_weights(weights)
    lead = rot.shape[:-3]
    n_j = rot.shape[-3]
    m = (w @ rot.reshape(*lead, n_j, 9)).reshape(*lead, -1, 3, 3)
    b = w @ offs
    free = w.sum(1) == 0
    if free.any():
        m[..., free, :, :] = np.eye(3)
    return m, b


def skin(points: np.ndarray, pose: np.ndarray, trans: np.ndarray | None, joints: np.ndarray, parents,
         weights: np.ndarray) -> np.ndarray:
    """Pose rest-space points: (..., V, 3) metres -> (..., V, 3) metres, float64.

    pose (..., 3J) radians, trans (..., 3) metres or None, joints (J, 3) or (..., J, 3), parents (J,),
    weights (V, J).
    """
    rot, offs = skinning_transforms(pose, joints, parents)
    m, b = blend(rot, offs, weights)
    out = (m @ np.asarray(points, np.float64)[..., None])[..., 0] + b
    if trans is not None:
        out += _root_translation(trans, weights)
    return out


def _root_translation(trans: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(..., 3) -> (..., V, 3): the root's translation moves every vertex with weight (it lives in
    the root bone); Blender leaves unweighted vertices where they are."""
    moved = normalised_weights(weights).sum(1) > 0
    return np.asarray(trans, np.float64)[..., None, :] * moved[:, None]


def unskin(points: np.ndarray, pose: np.ndarray, trans: np.ndarray | None, joints: np.ndarray, parents,
           weights: np.ndarray) -> np.ndarray:
    """Inverse of :func:`skin`: posed points (..., V, 3) -> the rest-space points that skin to them.

    Each vertex's blended 3x3 is inverted exactly, so skin(unskin(p)) == p to rounding: a vertex
    bound to one joint takes that joint's transposed rotation, the others a closed-form solve.
    Same arguments as :func:`skin`.
    """
    rot, offs = skinning_transforms(pose, joints, parents)
    w = normalised_weights(weights)
    n_j = rot.shape[-3]
    # Group vertices (one group per sole joint, one for the rest) so each group is a slice.
    group = np.where((w > 0).sum(1) == 1, w.argmax(1), n_j)
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(n_j + 2))
    w = w[order]
    y = np.take(np.asarray(points, np.float64), order, axis=-2) - w @ offs
    if trans is not None:
        y -= _root_translation(trans, w)
    x = np.empty(np.broadcast_shapes(y.shape, rot.shape[:-3] + y.shape[-2:]))
    for j in range(n_j):
        a, b = bounds[j], bounds[j + 1]
        if b > a:
            x[..., a:b, :] = y[..., a:b, :] @ rot[..., j, :, :]   # R^T y, in row-vector form
    a, b = bounds[n_j], bounds[n_j + 1]
    if b > a:
        m, _ = blend(rot, offs, w[a:b])
        x[..., a:b, :] = solve3(m, y[..., a:b, :])
    out = np.empty_like(x)
    out[..., order, :] = x
    return out


def solve3(m: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Solve m x = y for batches of 3x3 systems: (..., 3, 3), (..., 3) -> (..., 3). Vectorised
    Cramer's rule; np.linalg.solve is ~20x slower for millions of tiny systems."""
    a, b, c = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    d, e, f = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    g, h, i = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    c00, c01, c02 = e * i - f * h, f * g - d * i, d * h - e * g
    det = a * c00 + b * c01 + c * c02
    y0, y1, y2 = y[..., 0], y[..., 1], y[..., 2]
    x0 = c00 * y0 + (c * h - b * i) * y1 + (b * f - c * e) * y2
    x1 = c01 * y0 + (a * i - c * g) * y1 + (c * d - a * f) * y2
    x2 = c02 * y0 + (b * g - a * h) * y1 + (a * e - b * d) * y2
    return np.stack([x0, x1, x2], -1) / det[..., None]
