"""FLAME head model: file loading (no chumpy, no code from the pickle) and a batched PyTorch layer.

Coordinates are FLAME's model frame in metres: +y up, +z out of the face, +x the subject's left.
The pose vector per frame is axis-angle for each joint in file order (FLAME: global, neck, jaw,
left eye, right eye), so (B, 3*J) radians.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import safe_pickle
from ..config import asset_id, assets_folder, resolve_asset
from ..errors import MicroFaceError
from .regions import REGION_NAMES, region_labels

# Pose entries of the head's rigid motion (global and neck rotation); "head space" zeroes them.
HEAD_MOTION = slice(0, 6)

# Official FLAME files lack these keys; their layout is 300 identity then 100 expression columns.
_DEFAULT_N_SHAPE, _DEFAULT_N_EXPR, _DEFAULT_EXPR_OFFSET = 300, 100, 300
_REQUIRED = ("v_template", "f", "shapedirs", "weights", "J_regressor", "kintree_table")


@dataclass
class FlameModel:
    """A head model in FLAME layout, as numpy arrays (float32 geometry, metres)."""

    path: Path
    model_id: str                     # "<file name>@sha256:<first 16 hex>"
    v_template: np.ndarray            # (V, 3)
    faces: np.ndarray                 # (F, 3) int64
    shapedirs: np.ndarray             # (V, 3, n_shape), per unit coefficient
    exprdirs: np.ndarray              # (V, 3, n_expr)
    posedirs: np.ndarray | None       # (9*(J-1), 3V) pose correctives, None when all zero
    j_regressor: np.ndarray           # (J, V)
    weights: np.ndarray               # (V, J) skinning weights
    parents: np.ndarray               # (J,) int64, -1 for the root
    joint_names: list[str]
    expression_names: list[str]
    expr_named: bool                  # named one-sided targets (ARKit-style 0..1) vs PCA
    lmk68_faces: np.ndarray           # (68,) triangle per landmark
    lmk68_bary: np.ndarray            # (68, 3)
    mp_faces: np.ndarray              # (K,) triangle per embedded MediaPipe point
    mp_bary: np.ndarray               # (K, 3)
    mp_indices: np.ndarray            # (K,) index into MediaPipe's 478 points
    region_labels: np.ndarray         # (V,) index into REGION_NAMES, -1 outside
    region_names: tuple[str, ...] = field(default=REGION_NAMES)

    @property
    def n_shape(self) -> int:
        return self.shapedirs.shape[2]

    @property
    def n_expr(self) -> int:
        return self.exprdirs.shape[2]

    @property
    def n_joints(self) -> int:
        return len(self.parents)

    def jaw_pose_slice(self) -> slice:
        """The jaw's 3 axis-angle entries in a (3J,) pose vector; empty for a head with no jaw joint."""
        if "jaw" not in self.joint_names:
            return slice(0, 0)
        j = 3 * self.joint_names.index("jaw")
        return slice(j, j + 3)

    def eye_joints(self) -> list[int]:
        """Indices of the eye joints (FLAME: left_eye, right_eye)."""
        return [j for j, n in enumerate(self.joint_names) if "eye" in n.lower()]

    def eyeball_mask(self, joint: int | None = None) -> np.ndarray:
        """(V,) bool: vertices skinned mostly to one eye joint, or to either when ``joint`` is None."""
        joints = self.eye_joints() if joint is None else [joint]
        if not joints:
            return np.zeros(len(self.weights), bool)
        return self.weights[:, joints].sum(1) > 0.5

    def embed(self, verts: np.ndarray, which: str) -> np.ndarray:
        """Surface points of the ``"68"`` or ``"mp"`` landmark embedding (numpy twin of
        :meth:`FlameLayer.landmarks68` / ``landmarks_mp``): (..., V, 3) -> (..., K, 3)."""
        tri, bary = (self.lmk68_faces, self.lmk68_bary) if which == "68" else (self.mp_faces, self.mp_bary)
        return (verts[..., self.faces[tri], :] * bary[:, :, None]).sum(-2)

    def result_meta(self) -> dict:
        """The result file's meta keys that describe this model: head_model, expression_names,
        joint_names and region_names (docs/result_format.md)."""
        return {
            "head_model": {"id": self.model_id, "path": str(self.path), "n_shape": self.n_shape,
                           "n_expr": self.n_expr, "n_joints": self.n_joints},
            "expression_names": list(self.expression_names),
            "joint_names": list(self.joint_names),
            "region_names": list(self.region_names),
        }

    def rest_vertices(self, shape: np.ndarray) -> np.ndarray:
        """(V, 3) float64 metres: the head of identity ``shape`` (n_shape,) at zero expression and pose
        (what FLAME gives there: pose correctives vanish at rest)."""
        return self.v_template.astype(np.float64) + self.shapedirs.astype(np.float64) @ np.asarray(shape, np.float64)

    def rig_arrays(self, shape: np.ndarray) -> dict[str, np.ndarray]:
        """The result file's optional ``rig_*`` arrays for identity ``shape`` (n_shape,): rest vertices
        (V, 3) and joints (J, 3) at zero expression and pose, expression directions (n_expr, V, 3) per
        unit coefficient, parents (J,) and skinning weights (V, J). Metres, head-model frame, float32.
        Also the per-vertex region labels (V,) int8 (index into ``region_names``, -1 outside).
        Pose correctives (posedirs) are not part of it."""
        rest = self.rest_vertices(shape)
        f32 = np.float32
        return {
            "rig_rest_vertices": rest.astype(f32),
            "rig_expr_dirs": np.ascontiguousarray(self.exprdirs.transpose(2, 0, 1), dtype=f32),
            "rig_joints": (self.j_regressor.astype(np.float64) @ rest).astype(f32),
            "rig_parents": self.parents.astype(np.int32),
            "rig_skin_weights": self.weights.astype(f32),
            "rig_region_labels": self.region_labels.astype(np.int8),
        }

    def region_vertices(self, name: str) -> np.ndarray:
        return np.flatnonzero(self.region_labels == self.region_names.index(name))


def _load_pickle(path: Path, what: str) -> dict:
    try:
        data = safe_pickle.load(path)
    except safe_pickle.UnsafePickleError as exc:
        raise MicroFaceError(f"{what} {path} refused: {exc}") from None
    except (ValueError, OSError) as exc:
        raise MicroFaceError(f"{what} {path} is corrupt or not a FLAME pickle: {exc}") from None
    if not isinstance(data, dict):
        raise MicroFaceError(f"{what} {path} is not a FLAME pickle (top level is {type(data).__name__}, not a dict)")
    return data


def _load_npz(path: Path, keys: tuple[str, ...], what: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in keys}
    except KeyError as exc:
        raise MicroFaceError(f"{what} {path} lacks array {exc}") from None
    except (ValueError, OSError) as exc:
        raise MicroFaceError(f"{what} {path} is corrupt or not an .npz: {exc}") from None


def load_flame(flame: str | Path | None = None, assets: str | Path | None = None) -> FlameModel:
    """Load a FLAME-format model and its companions (masks, 68-point and MediaPipe embeddings).

    ``flame`` and ``assets`` follow :func:`backend.config.resolve_asset`: flag, environment, default;
    the companions are looked for in the assets folder, then beside the head model. Every problem
    raises :class:`MicroFaceError` with a one-line message.
    """
    adir = assets_folder(assets)
    path = resolve_asset("flame", flame, folders=(adir,))
    d = _load_pickle(path, "head model")
    missing = [k for k in _REQUIRED if k not in d]
    if missing:
        raise MicroFaceError(f"head model {path} is not a FLAME file: missing {', '.join(missing)}")
    try:
        v = np.asarray(d["v_template"], np.float64)
        faces = np.asarray(d["f"], np.int64)
        sd = np.asarray(d["shapedirs"], np.float64)
        weights = np.asarray(d["weights"], np.float64)
        jreg = np.asarray(d["J_regressor"], np.float64)
        kin = np.asarray(d["kintree_table"]).astype(np.int64)
    except (TypeError, ValueError) as exc:
        raise MicroFaceError(f"head model {path} has a malformed array: {exc}") from None
    n_v = v.shape[0] if v.ndim == 2 else -1
    n_j = weights.shape[1] if weights.ndim == 2 else -1
    checks = [
        (v.ndim == 2 and v.shape[1] == 3, "v_template is not (V, 3)"),
        (faces.ndim == 2 and faces.shape[1] == 3 and faces.size and faces.min() >= 0 and faces.max() < n_v,
         "f is not (F, 3) indices into the vertices"),
        (sd.ndim == 3 and sd.shape[:2] == (n_v, 3), "shapedirs is not (V, 3, K)"),
        (weights.shape[0] == n_v, "weights rows do not match the vertex count"),
        (jreg.shape == (n_j, n_v), "J_regressor is not (J, V)"),
        (kin.shape == (2, n_j), "kintree_table is not (2, J)"),
        (np.isfinite(v).all() and np.isfinite(sd).all(), "non-finite values in geometry"),
    ]
    for ok, msg in checks:
        if not ok:
            raise MicroFaceError(f"head model {path} is malformed: {msg}")

    n_cols = sd.shape[2]
    n_shape = int(d.get("n_shape", min(_DEFAULT_N_SHAPE, n_cols)))
    shape_offset = int(d.get("shape_offset", 0))
    expr_offset = int(d.get("expr_offset", _DEFAULT_EXPR_OFFSET))
    n_expr = int(d.get("n_expr", max(0, min(_DEFAULT_N_EXPR, n_cols - expr_offset))))
    if n_expr <= 0 or expr_offset + n_expr > n_cols or shape_offset + n_shape > n_cols:
        raise MicroFaceError(f"head model {path} has {n_cols} blendshape columns, too few for "
                             f"{n_shape} identity and {n_expr} expression components")
    names = d.get("expression_names")
    expr_named = isinstance(names, (list, tuple)) and len(names) == n_expr
    expression_names = [str(s) for s in names] if expr_named else [f"exp{i:03d}" for i in range(n_expr)]

    parents = kin[0].copy()
    parents[parents >= n_j] = -1  # root is stored as uint32 max
    # Skinning and the result's rig both walk the joints parents first (backend/contract/result.py).
    if parents[0] != -1 or np.any((parents[1:] < 0) | (parents[1:] >= np.arange(1, n_j))):
        raise MicroFaceError(f"head model {path} is malformed: kintree_table's parents {parents.tolist()} must be "
                             f"none for joint 0 and an earlier joint for every other joint")
    posedirs = None
    if "posedirs" in d:
        pd = np.asarray(d["posedirs"], np.float64)
        if pd.shape == (n_v, 3, 9 * (n_j - 1)) and np.abs(pd).max() > 0:
            posedirs = pd.reshape(-1, pd.shape[2]).T.astype(np.float32)

    # The companions: in the assets folder, else beside the head model (FLAME's downloads unpacked together).
    companions = (adir, path.parent)
    masks = _load_pickle(resolve_asset("masks", folders=companions), "region masks")
    l68 = _load_npz(resolve_asset("lmk68", folders=companions), ("full_lmk_faces_idx", "full_lmk_bary_coords"),
                    "68-point landmark embedding")
    lmp = _load_npz(resolve_asset("lmk_mediapipe", folders=companions),
                    ("lmk_face_idx", "lmk_b_coords", "landmark_indices"), "MediaPipe landmark embedding")
    try:
        labels = region_labels(masks, v)
    except (ValueError, IndexError) as exc:
        raise MicroFaceError(f"region masks do not fit this head model: {exc}") from None

    joint_names = d.get("joint_names")
    if not (isinstance(joint_names, (list, tuple)) and len(joint_names) == n_j):
        joint_names = ["global", "neck", "jaw", "left_eye", "right_eye"][:n_j] if n_j == 5 else \
            [f"joint{i}" for i in range(n_j)]
    f32 = np.float32
    return FlameModel(
        path=path,
        model_id=asset_id(path),
        v_template=v.astype(f32),
        faces=faces,
        shapedirs=sd[:, :, shape_offset:shape_offset + n_shape].astype(f32),
        exprdirs=sd[:, :, expr_offset:expr_offset + n_expr].astype(f32),
        posedirs=posedirs,
        j_regressor=jreg.astype(f32),
        weights=weights.astype(f32),
        parents=parents,
        joint_names=[str(s) for s in joint_names],
        expression_names=expression_names,
        expr_named=expr_named,
        lmk68_faces=l68["full_lmk_faces_idx"].reshape(-1).astype(np.int64),
        lmk68_bary=l68["full_lmk_bary_coords"].reshape(-1, 3).astype(f32),
        mp_faces=lmp["lmk_face_idx"].astype(np.int64),
        mp_bary=lmp["lmk_b_coords"].astype(f32),
        mp_indices=lmp["landmark_indices"].astype(np.int64),
        region_labels=labels,
    )


def axis_angle_to_matrix(aa: torch.Tensor) -> torch.Tensor:
    """Rodrigues: (..., 3) radians -> (..., 3, 3). Smooth at zero."""
    theta2 = (aa * aa).sum(-1, keepdim=True)
    theta = torch.sqrt(theta2 + 1e-16)
    small = theta2 < 1e-8
    # Taylor terms near zero keep gradients finite.
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / (theta2 + 1e-16))
    x, y, z = aa.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*aa.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand_as(k)
    return eye + a[..., None] * k + b[..., None] * (k @ k)


class FlameLayer(torch.nn.Module):
    """Batched FLAME forward: blendshapes, joint regression, pose correctives and LBS."""

    def __init__(self, model: FlameModel, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        super().__init__()
        self.model = model
        self.parents = [int(p) for p in model.parents]
        buf = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)  # noqa: E731
        self.register_buffer("v_template", buf(model.v_template))
        self.register_buffer("shapedirs", buf(model.shapedirs))
        self.register_buffer("exprdirs", buf(model.exprdirs))
        self.register_buffer("weights", buf(model.weights))
        self.register_buffer("faces", torch.as_tensor(model.faces, device=device))
        self.register_buffer("posedirs", buf(model.posedirs) if model.posedirs is not None else None)
        self.register_buffer("lmk68_faces", torch.as_tensor(model.lmk68_faces, device=device))
        self.register_buffer("lmk68_bary", buf(model.lmk68_bary))
        self.register_buffer("mp_faces", torch.as_tensor(model.mp_faces, device=device))
        self.register_buffer("mp_bary", buf(model.mp_bary))
        # Joints are linear in shape and expression: regress the bases once.
        jreg = model.j_regressor.astype(np.float64)
        self.register_buffer("j_template", buf(jreg @ model.v_template))
        self.register_buffer("j_shapedirs", buf(np.einsum("jv,vck->jck", jreg, model.shapedirs)))
        self.register_buffer("j_exprdirs", buf(np.einsum("jv,vck->jck", jreg, model.exprdirs)))

    @property
    def n_joints(self) -> int:
        return len(self.parents)

    def shaped(self, shape: torch.Tensor, expr: torch.Tensor, vertex_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Rest-pose vertices: template + identity + expression. (B, V or len(vertex_ids), 3) metres."""
        t, sd, ed = self.v_template, self.shapedirs, self.exprdirs
        if vertex_ids is not None:
            t, sd, ed = t[vertex_ids], sd[vertex_ids], ed[vertex_ids]
        return t + torch.einsum("vck,bk->bvc", sd, shape) + torch.einsum("vck,bk->bvc", ed, expr)

    def rest_joints(self, shape: torch.Tensor, expr: torch.Tensor) -> torch.Tensor:
        """Joint positions before posing, (B, J, 3) metres; exact, from bases regressed once."""
        return (self.j_template + torch.einsum("jck,bk->bjc", self.j_shapedirs, shape)
                + torch.einsum("jck,bk->bjc", self.j_exprdirs, expr))

    def forward(self, shape: torch.Tensor, expr: torch.Tensor, pose: torch.Tensor,
                trans: torch.Tensor | None = None,
                vertex_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Posed vertices and joints.

        shape (B, n_shape) or (n_shape,) broadcast over B; expr (B, n_expr); pose (B, 3*J) axis-angle;
        trans (B, 3) metres added last; vertex_ids (K,) evaluates only those vertices (exactly).
        Returns vertices (B, V or K, 3) and joints (B, J, 3), metres.
        """
        b = expr.shape[0]
        if shape.dim() == 1:
            shape = shape.expand(b, -1)
        v_shaped = self.shaped(shape, expr, vertex_ids)
        joints = self.rest_joints(shape, expr)
        rot = axis_angle_to_matrix(pose.reshape(b, self.n_joints, 3))
        v_posed = v_shaped
        if self.posedirs is not None:
            eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
            feat = (rot[:, 1:] - eye).reshape(b, -1)
            pd = self.posedirs.reshape(feat.shape[1], -1, 3)
            if vertex_ids is not None:
                pd = pd[:, vertex_ids]
            v_posed = v_shaped + torch.einsum("bp,pvc->bvc", feat, pd)

        # World transform of each joint along the kinematic chain.
        rel = joints.clone()
        rel[:, 1:] = joints[:, 1:] - joints[:, self.parents[1:]]
        chain_r, chain_t = [rot[:, 0]], [rel[:, 0]]
        for j in range(1, self.n_joints):
            p = self.parents[j]
            chain_r.append(chain_r[p] @ rot[:, j])
            chain_t.append(chain_t[p] + (chain_r[p] @ rel[:, j, :, None])[..., 0])
        world_r = torch.stack(chain_r, 1)                     # (B, J, 3, 3)
        world_t = torch.stack(chain_t, 1)                     # (B, J, 3)
        # Skinning transform maps rest-pose points: x -> R x + (t - R j_rest).
        offs = world_t - (world_r @ joints[..., None])[..., 0]
        w = self.weights if vertex_ids is None else self.weights[vertex_ids]
        r_v = torch.einsum("vj,bjxy->bvxy", w, world_r)
        t_v = torch.einsum("vj,bjx->bvx", w, offs)
        verts = (r_v @ v_posed[..., None])[..., 0] + t_v
        if trans is not None:
            verts = verts + trans[:, None]
            world_t = world_t + trans[:, None]
        return verts, world_t

    def _embed(self, verts: torch.Tensor, faces_idx: torch.Tensor, bary: torch.Tensor) -> torch.Tensor:
        tri = verts[:, self.faces[faces_idx]]                 # (B, K, 3, 3)
        return (tri * bary[None, :, :, None]).sum(2)

    def landmarks68(self, verts: torch.Tensor) -> torch.Tensor:
        """(B, V, 3) -> (B, 68, 3) points on the surface, iBUG-68 order."""
        return self._embed(verts, self.lmk68_faces, self.lmk68_bary)

    def landmarks_mp(self, verts: torch.Tensor) -> torch.Tensor:
        """(B, V, 3) -> (B, K, 3) surface points matching MediaPipe points ``model.mp_indices``."""
        return self._embed(verts, self.mp_faces, self.mp_bary)


def head_space(layer: FlameLayer, shape: np.ndarray, expr: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """FLAME vertices without the head's rigid motion (global and neck rotation, translation).

    shape (n_shape,), expr (T, n_expr), pose (T, 3J). Returns (T, V, 3) metres in the layer's
    precision (float32, or float64 for a ``.double()`` layer).
    """
    pose = np.array(pose, copy=True)
    pose[:, HEAD_MOTION] = 0.0
    kw = dict(dtype=layer.v_template.dtype, device=layer.v_template.device)
    with torch.no_grad():
        v, _ = layer(torch.as_tensor(shape, **kw), torch.as_tensor(expr, **kw), torch.as_tensor(pose, **kw))
    return v.cpu().numpy()
