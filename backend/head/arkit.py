"""ARKit-52 blendshape weights from meshes, and the head's and eyes' rotations (issue 16).

Animators drive their characters through Apple's 52 ARKit blendshapes. The expression basis every
stage runs on (backend/head/expression_layer.py) is ICT-FaceKit's ARKit-style set on FLAME topology:
the same shapes, with ``browInnerUp`` and ``cheekPuff`` split into halves and no tongue. The weights
are solved from the final head-space meshes, not copied from the expression coefficients, so that
what the mesh deformation and the jaw joint add reaches them: per frame, a least-squares fit of the
mesh's displacement from the neutral head by the basis, each weight bounded to 0..1 (projected
coordinate descent on the normal equations, all frames at once). The eyeballs are left out: gaze is
the eye joints' rotation, reported beside the weights.
"""
from __future__ import annotations

import numpy as np

from ..contract.result import ARKIT_NAMES
from ..errors import MicroFaceError
from .flame import FlameModel

_MERGED = {"browInnerUp": ("browInnerUp_L", "browInnerUp_R"), "cheekPuff": ("cheekPuff_L", "cheekPuff_R")}
_ALWAYS_ZERO = ("tongueOut",)
_SWEEPS = 60     # coordinate-descent sweeps: 0.04 s for 30 frames, in-span meshes back to 1e-8


def basis_name(arkit: str) -> str:
    """The ICT-style basis name of an ARKit name without a merge: eyeBlinkLeft -> eyeBlink_L."""
    for side, suffix in (("Left", "_L"), ("Right", "_R")):
        if arkit.endswith(side) and arkit not in ("mouthLeft", "mouthRight", "jawLeft", "jawRight"):
            return arkit[: -len(side)] + suffix
    return arkit


def arkit_matrix(basis_names: list[str] | tuple[str, ...]) -> np.ndarray:
    """(52, K): ARKit weights = M @ basis weights (a merged pair is the mean of its halves)."""
    index = {n: i for i, n in enumerate(basis_names)}
    m = np.zeros((len(ARKIT_NAMES), len(basis_names)))
    for a, name in enumerate(ARKIT_NAMES):
        if name in _ALWAYS_ZERO:
            continue
        halves = _MERGED.get(name, (basis_name(name),))
        missing = [h for h in halves if h not in index]
        if missing:
            raise MicroFaceError(f"the expression basis lacks {', '.join(missing)} (needed for ARKit {name})")
        for h in halves:
            m[a, index[h]] = 1.0 / len(halves)
    return m


def solve_weights(displacement: np.ndarray, dirs: np.ndarray, sweeps: int = _SWEEPS) -> np.ndarray:
    """Basis weights w (T, K) in [0, 1] minimising |dirs · w_t - displacement_t|² per frame.

    displacement (T, N, 3) metres, dirs (N, 3, K) metres per unit weight, on the same N vertices.
    """
    a = dirs.reshape(-1, dirs.shape[2]).astype(np.float64)                  # (3N, K)
    gram = a.T @ a
    rhs = displacement.reshape(len(displacement), -1).astype(np.float64) @ a  # (T, K)
    diag = np.maximum(np.diag(gram), 1e-30)
    w = np.clip(np.linalg.solve(gram + 1e-9 * np.diag(diag), rhs.T).T, 0.0, 1.0)   # a bounded start
    for _ in range(sweeps):
        for k in range(len(diag)):
            # exact minimiser of coordinate k given the others, then the bound
            w[:, k] = np.clip(w[:, k] + (rhs[:, k] - w @ gram[:, k]) / diag[k], 0.0, 1.0)
    return w


def arkit_weights(model: FlameModel, head: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """ARKit-52 weights (T, 52) float32 in 0..1 of the head-space meshes ``head`` (T, V, 3) metres
    against the neutral head of identity ``shape`` (no expression, no jaw), on ``model``'s expression
    basis (the working model's: named ICT ARKit-style shapes). Eyeballs are left out."""
    if not model.expr_named:
        raise MicroFaceError("ARKit weights need the ARKit-style expression basis (the working model's)")
    use = (np.abs(model.exprdirs).max((1, 2)) > 0) & ~model.eyeball_mask()
    w = solve_weights(head[:, use] - model.rest_vertices(shape)[use], model.exprdirs[use])
    return (w @ arkit_matrix(model.expression_names).T).astype(np.float32)


def head_and_eye_rotations(model: FlameModel, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The head's rotation in the camera frame (global then neck, axis-angle (T, 3) radians) and each
    eye's rotation relative to the head ((T, 2, 3), left eye first) from the pose (T, 3J)."""
    from scipy.spatial.transform import Rotation

    p = np.asarray(pose, np.float64).reshape(len(pose), -1, 3)
    names = model.joint_names
    head = Rotation.from_rotvec(p[:, 0])
    if "neck" in names:
        head = head * Rotation.from_rotvec(p[:, names.index("neck")])
    eye = np.zeros((len(pose), 2, 3))
    for i, j in enumerate(model.eye_joints()[:2]):
        eye[:, i] = p[:, j]
    return head.as_rotvec().astype(np.float32), eye.astype(np.float32)
