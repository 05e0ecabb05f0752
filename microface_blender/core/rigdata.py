"""Everything numeric the importer writes into Blender, computed from a result (numpy only, no bpy).

The rig is the result file's ``rig_*`` arrays: rest vertices (identity baked in), expression
directions, joints, parents and skinning weights. Bones rotate about their rest heads by the
per-frame ``pose`` (as quaternions) and the root also moves by ``trans``. Whatever the rig does not
reproduce of ``vertices`` (the learned mesh deformation, pose correctives, the joints' dependence on
expression) is brought back to rest space and kept as micro-detail shape keys (:mod:`.detail`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import lbs
from .detail import DEFAULT_MAX_KEYS, DEFAULT_TOLERANCE, DetailBasis, fit_detail

_CHUNK = 64  # frames per pass of the residual (bounds the (chunk, V, 3, 3) temporaries to ~20 MB)


class RigDataError(ValueError):
    """The result cannot be turned into a rig. ``str(err)`` is one line for the user."""


@dataclass
class RigData:
    """T frames, V vertices, J joints, E expressions. Metres and the head model's frame (+y up)."""

    faces: np.ndarray            # (F, 3) int32
    rest: np.ndarray             # (V, 3) float32 rest vertices: template + identity
    expr_names: list[str]        # (E,)
    expr_dirs: np.ndarray        # (E, V, 3) float32 displacement per unit coefficient
    expr: np.ndarray             # (T, E) float32 per-frame coefficients (the shape key values)
    joint_names: list[str]       # (J,)
    parents: np.ndarray          # (J,) int, -1 for the root, parents first
    joints: np.ndarray           # (J, 3) float64 rest joint positions (the bone heads)
    weights: np.ndarray          # (V, J) float32 skinning weights
    quaternions: np.ndarray      # (T, J, 4) float64 (w, x, y, z) bone rotations relative to rest
    root_location: np.ndarray    # (T, 3) float64 root bone translation (the result's trans)
    detail: DetailBasis          # micro-detail shape keys and weights


def rest_space_residual(res, joints: np.ndarray | None = None) -> np.ndarray:
    """(T, V, 3) float32 metres: each frame's ``vertices`` unposed through the rig (each vertex's
    blended bone transform inverted) minus the rest mesh with that frame's expression."""
    joints = np.asarray(res.rig_joints if joints is None else joints, np.float64)
    n_e, n_v = res.rig_expr_dirs.shape[:2]
    dirs = res.rig_expr_dirs.reshape(n_e, n_v * 3).astype(np.float32)
    rest = res.rig_rest_vertices.astype(np.float64)
    out = np.empty(res.vertices.shape, np.float32)
    for s in range(0, len(out), _CHUNK):
        c = slice(s, s + _CHUNK)
        x = lbs.unskin(res.vertices[c], res.pose[c], res.trans[c], joints, res.rig_parents, res.rig_skin_weights)
        x -= rest
        x -= (res.expr[c].astype(np.float32) @ dirs).reshape(-1, n_v, 3)
        out[c] = x
    return out


def rig_from_result(res, where: str = "result", tolerance: float = DEFAULT_TOLERANCE,
                    max_detail_keys: int = DEFAULT_MAX_KEYS) -> RigData:
    """Build :class:`RigData` from a read result (``backend.contract.result.Result``). ``tolerance`` (metres)
    and ``max_detail_keys`` bound the micro-detail PCA. Raises :class:`RigDataError` when the file
    has no rig arrays."""
    if not getattr(res, "has_rig", False):  # the reader guarantees all five rig arrays or none
        raise RigDataError(f"{where} has no rig data (it predates the rig arrays): run the MicroFace backend "
                           "on the clip again to import it")
    meta = res.meta
    n_j = len(res.rig_parents)
    quats = lbs.continuous_quaternions(lbs.axis_angle_to_quaternion(res.pose.reshape(-1, n_j, 3)))
    detail = fit_detail(rest_space_residual(res), tolerance, max_detail_keys)
    return RigData(
        faces=np.asarray(res.faces, np.int32),
        rest=np.asarray(res.rig_rest_vertices, np.float32),
        expr_names=[str(s) for s in meta["expression_names"]],
        expr_dirs=np.asarray(res.rig_expr_dirs, np.float32),
        expr=np.asarray(res.expr, np.float32),
        joint_names=[str(s) for s in meta["joint_names"]],
        parents=np.asarray(res.rig_parents, np.int64),
        joints=np.asarray(res.rig_joints, np.float64),
        weights=np.asarray(res.rig_skin_weights, np.float32),
        quaternions=quats,
        root_location=np.asarray(res.trans, np.float64),
        detail=detail,
    )
