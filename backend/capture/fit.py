"""Static stage: fit FLAME identity, expression, pose and translation to per-frame 2D landmarks.

One identity (shape) is shared by the clip; expression, jaw, eyes, head rotation and translation
are per frame. All frames are optimised together (vectorised), with the onset frame as the anchor:
expression changes are penalised relative to the onset expression, not to zero.

Units: every term is expressed in squared millimetres so weights are comparable.
- Landmark residuals (pixels) are scaled by the face's apparent size, so 1 unit = 1 mm on a face
  of the template's inter-ocular distance.
- The expression prior is the mean squared vertex displacement (mm²) the coefficients cause over
  the face, computed from the model's own blendshapes: the same weights work for FLAME's
  unit-variance PCA and for ARKit-style 0..1 targets.
- Temporal smoothness penalises velocities per second, so it means the same at 30 and 200 fps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..config import FitConfig
from ..head.camera import default_intrinsics, project
from ..head.flame import FlameLayer, FlameModel
from ..head.priors import expression_gram

# MediaPipe face-mesh points used for scale and the iris term.
MP_EYE_OUTER = (33, 263)
MP_IRIS_CENTRES = (468, 473)
_REF_FPS = 30.0


@dataclass
class FitResult:
    shape: np.ndarray          # (n_shape,)
    expr: np.ndarray           # (T, n_expr)
    pose: np.ndarray           # (T, 3*J) axis-angle radians
    trans: np.ndarray          # (T, 3) metres, camera space
    intrinsics: np.ndarray     # (3,) f, cx, cy pixels
    vertices: np.ndarray       # (T, V, 3) float32 metres, camera space
    landmarks_68: np.ndarray   # (T, 68, 2) pixels, the fitted mesh's 68-point embedding projected
    reproj_px: np.ndarray      # (T,) RMS landmark reprojection error in pixels
    loss_history: list[float]


def _rotation_to_axis_angle(r: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.Rodrigues(np.asarray(r, np.float64))[0].reshape(3)


def _pnp_init(model_pts: np.ndarray, obs: np.ndarray, valid: np.ndarray, intr: np.ndarray,
              root: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame rigid pose from PnP on the template's landmark positions.

    model_pts (K, 3) head-space metres; obs (T, K, 2) pixels. Returns global axis-angle (T, 3) and
    FLAME translation (T, 3): FLAME's global rotation pivots about the root joint ``root``.
    """
    import cv2

    k = np.array([[intr[0], 0, intr[1]], [0, intr[0], intr[2]], [0, 0, 1]], np.float64)
    flip = np.diag([1.0, -1.0, -1.0])  # OpenCV camera (y down, z forward) -> ours (y up, z back)
    t_count = obs.shape[0]
    rot, trans = np.zeros((t_count, 3)), np.zeros((t_count, 3))
    ok = np.zeros(t_count, bool)
    prev = None
    pts3 = model_pts.astype(np.float64)
    for t in np.flatnonzero(valid):
        pts2 = obs[t].astype(np.float64)
        good, rv, tv = False, None, None
        if prev is not None:  # refine from the previous frame: fast and temporally consistent
            good, rv, tv = cv2.solvePnP(pts3, pts2, k, None, rvec=prev[0].copy(), tvec=prev[1].copy(),
                                        useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
        if not good or tv[2, 0] <= 0:
            # SQPnP finds the global optimum without a guess; unguided ITERATIVE can converge to the
            # mirror pose behind the camera (seen on a synthetic clip: tz = -0.46 m).
            good, rv, tv = cv2.solvePnP(pts3, pts2, k, None, flags=cv2.SOLVEPNP_SQPNP)
        if not good or tv[2, 0] <= 0:
            continue
        prev = (rv, tv)
        r_cv = cv2.Rodrigues(rv)[0]
        r = flip @ r_cv
        rot[t] = _rotation_to_axis_angle(r)
        trans[t] = flip @ tv[:, 0] - root + r @ root
        ok[t] = True
    if not ok.any():
        raise ValueError("PnP failed on every frame")
    idx = np.arange(t_count)
    for arr in (rot, trans):
        for c in range(3):
            arr[:, c] = np.interp(idx, idx[ok], arr[ok, c])
    return rot, trans


def _eye_pupils(model: FlameModel) -> dict[int, int]:
    """Eye joint index -> the eyeball vertex at the front of the pupil (largest z)."""
    out = {}
    for j in model.eye_joints():
        ball = np.flatnonzero(model.eyeball_mask(j))
        if len(ball):
            out[j] = int(ball[np.argmax(model.v_template[ball, 2])])
    return out


def fit_sequence(model: FlameModel, *args, device: str = "cpu", **kwargs) -> FitResult:
    """Fit the clip; see :func:`_fit` for the arguments.

    On CPU the fit runs on one thread: its tensors are small, and OpenMP threads that spin at
    barriers slow it 40x when another process holds a core (measured: 3.3 s vs 133 s).
    """
    if torch.device(device).type != "cpu":
        return _fit(model, *args, device=device, **kwargs)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit(model, *args, device=device, **kwargs)
    finally:
        torch.set_num_threads(before)


def _fit(model: FlameModel, mp_points: np.ndarray, valid: np.ndarray, image_size: tuple[int, int],
                 fps: float, cfg: FitConfig | None = None, anchor: int = 0, lmk68: np.ndarray | None = None,
                 device: str = "cpu", progress: Callable[[str, int, int], None] | None = None,
                 layer: FlameLayer | None = None) -> FitResult:
    """Fit the clip.

    mp_points (T, 478 or 468, 2) MediaPipe points in pixels; valid (T,) frames whose landmarks were
    detected (others are carried by the temporal prior); image_size (width, height) pixels;
    lmk68 (T, 68, 2) optional FAN points in pixels; anchor: index of the onset frame.
    """
    cfg = cfg or FitConfig()
    dev = torch.device(device)
    layer = layer or FlameLayer(model, device=dev)
    t_count = mp_points.shape[0]
    valid = np.asarray(valid, bool)
    if valid.sum() < 1:
        raise ValueError("no valid frames to fit")
    width, height = image_size
    intr = default_intrinsics(width, height, cfg.focal)
    n_j = model.n_joints
    jaw = model.joint_names.index("jaw") if "jaw" in model.joint_names else None
    pupils = _eye_pupils(model)

    obs_mp = mp_points[:, model.mp_indices, :2].astype(np.float64)
    # Which iris goes with which eyeball: MediaPipe point 33 is on the same side as iris 468.
    iris_pairs: list[tuple[int, int]] = []
    if mp_points.shape[1] >= 478 and len(pupils) == 2:
        x_of = {j: model.v_template[v, 0] for j, v in pupils.items()}
        side33 = -1.0
        if 33 in model.mp_indices:
            k33 = int(np.flatnonzero(model.mp_indices == 33)[0])
            side33 = np.sign(model.v_template[model.faces[model.mp_faces[k33]], 0].mean())
        for iris, sign in ((MP_IRIS_CENTRES[0], side33), (MP_IRIS_CENTRES[1], -side33)):
            j = min(x_of, key=lambda jj: abs(np.sign(x_of[jj]) - sign))
            iris_pairs.append((iris, j))

    # Face size in pixels per frame (outer eye corners), and the template's in mm.
    eye_px = np.linalg.norm(mp_points[:, MP_EYE_OUTER[0], :2] - mp_points[:, MP_EYE_OUTER[1], :2], axis=-1)
    scale_px = float(np.median(eye_px[valid]))
    k_l, k_r = (int(np.flatnonzero(model.mp_indices == i)[0]) for i in MP_EYE_OUTER)
    tmpl_lmk = model.embed(model.v_template, "mp")
    eye_mm = 1000.0 * float(np.linalg.norm(tmpl_lmk[k_l] - tmpl_lmk[k_r]))
    px_to_mm = eye_mm / max(scale_px, 1e-6)

    root = (model.j_regressor[0] @ model.v_template).astype(np.float64)
    rot0, trans0 = _pnp_init(tmpl_lmk, obs_mp, valid, intr, root)

    # Evaluate only the vertices the landmarks and pupils sit on.
    tri = [model.faces[model.mp_faces]]
    if lmk68 is not None:
        tri.append(model.faces[model.lmk68_faces])
    sub = np.unique(np.concatenate([t.ravel() for t in tri] + [np.array(list(pupils.values()), np.int64)]))
    remap = {int(v): i for i, v in enumerate(sub)}
    sub_t = torch.as_tensor(sub, device=dev)
    f32 = dict(dtype=torch.float32, device=dev)

    def sub_tris(faces_idx: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.vectorize(remap.get)(model.faces[faces_idx]), device=dev)

    mp_tri, mp_bary = sub_tris(model.mp_faces), torch.as_tensor(model.mp_bary, **f32)
    l68_tri = sub_tris(model.lmk68_faces) if lmk68 is not None else None
    l68_bary = torch.as_tensor(model.lmk68_bary, **f32)
    pupil_sub = {j: remap[v] for j, v in pupils.items()}

    intr_t = torch.as_tensor(intr, **f32)
    obs_t = torch.as_tensor(obs_mp, **f32)
    w_frame = torch.as_tensor(valid.astype(np.float32), **f32)
    iris_obs = [(torch.as_tensor(mp_points[:, i, :2], **f32), pupil_sub[j]) for i, j in iris_pairs]
    obs68 = torch.as_tensor(lmk68, **f32) if lmk68 is not None else None

    # Expression prior metric: G = mean over face vertices of B_v^T B_v, in mm² per coefficient².
    gram = expression_gram(model, device=dev)
    lo, hi = (0.0, 1.0) if (cfg.expr_bounds == "auto" and model.expr_named) else (None, None)

    shape = torch.zeros(model.n_shape, **f32, requires_grad=True)
    expr = torch.zeros(t_count, model.n_expr, **f32, requires_grad=True)
    rot = torch.as_tensor(rot0, **f32).requires_grad_(True)
    tr = torch.as_tensor(trans0, **f32).requires_grad_(True)
    local = torch.zeros(t_count, 3 * (n_j - 1), **f32, requires_grad=True)  # neck, jaw, eyes
    local_mask = torch.zeros(3 * (n_j - 1), **f32)
    if jaw is not None:
        local_mask[3 * (jaw - 1):3 * jaw] = 1.0
    for j in pupils:
        local_mask[3 * (j - 1):3 * j] = 1.0

    def robust(sq: torch.Tensor, delta: float = 3.0) -> torch.Tensor:
        # Huber on the residual norm (mm units): one bad point does not drag a frame.
        r = torch.sqrt(sq + 1e-12)
        return torch.where(r < delta, sq, 2 * delta * r - delta * delta)

    temporal_w = cfg.w_temporal * (fps / _REF_FPS) ** 2
    anchor = int(np.clip(anchor, 0, t_count - 1))
    history: list[float] = []

    def loss_fn(with_expr: bool) -> torch.Tensor:
        pose = torch.cat([rot, local * local_mask], 1)
        e = expr if with_expr else expr.detach() * 0
        verts, _ = layer(shape, e, pose, tr, vertex_ids=sub_t)
        lm = (verts[:, mp_tri] * mp_bary[None, :, :, None]).sum(2)
        res = (project(lm, intr_t) - obs_t) * px_to_mm
        data = (robust((res ** 2).sum(-1)).mean(1) * w_frame).sum() / w_frame.sum()
        loss = cfg.w_lmk_mp * data
        for obs_i, pv in iris_obs:
            r = (project(verts[:, pv:pv + 1], intr_t)[:, 0] - obs_i) * px_to_mm
            loss = loss + 0.5 * cfg.w_lmk_mp * (robust((r ** 2).sum(-1)) * w_frame).sum() / w_frame.sum()
        if obs68 is not None:
            l68 = (verts[:, l68_tri] * l68_bary[None, :, :, None]).sum(2)
            r = (project(l68, intr_t) - obs68) * px_to_mm
            loss = loss + cfg.w_lmk68 * (robust((r ** 2).sum(-1)).mean(1) * w_frame).sum() / w_frame.sum()
        loss = loss + cfg.w_shape * (shape ** 2).sum()
        if with_expr:
            ea = expr[anchor:anchor + 1]
            d = expr - ea
            loss = loss + cfg.w_expr * 0.1 * (ea @ gram * ea).sum() \
                + cfg.w_expr * ((d @ gram) * d).sum(1).mean()
            if t_count > 1:
                de = expr[1:] - expr[:-1]
                loss = loss + temporal_w * ((de @ gram) * de).sum(1).mean()
        if t_count > 1:
            dr = rot[1:] - rot[:-1]
            dt = (tr[1:] - tr[:-1]) * 1000.0
            dl = (local[1:] - local[:-1]) * local_mask
            # radians weighed as ~100 mm lever arm (head radius)
            loss = loss + temporal_w * 0.1 * (((dr * 100) ** 2).sum(1) + ((dl * 100) ** 2).sum(1) / 3
                                              + (dt ** 2).sum(1)).mean()
        loss = loss + 1e-2 * ((local * local_mask * 100) ** 2).sum(1).mean()
        return loss

    stages = [("fit_rigid", [rot, tr], max(cfg.iters // 3, 20), False),
              ("fit", [shape, expr, rot, tr, local], cfg.iters, True)]
    lr_of = {id(shape): cfg.lr * 2, id(expr): cfg.lr, id(rot): cfg.lr * 0.25,
             id(tr): cfg.lr * 0.05, id(local): cfg.lr * 0.25}
    for name, params, iters, with_expr in stages:
        opt = torch.optim.Adam([{"params": [p], "lr": lr_of[id(p)]} for p in params])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * i / iters)))
        for i in range(iters):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(with_expr)
            loss.backward()
            opt.step()
            sched.step()
            if lo is not None:
                with torch.no_grad():
                    expr.clamp_(lo, hi)
            history.append(float(loss.detach()))
            if progress and (i % 20 == 0 or i == iters - 1):
                progress(name, i + 1, iters)

    with torch.no_grad():
        pose = torch.cat([rot, local * local_mask], 1)
        verts = []
        for s in range(0, t_count, 256):
            v, _ = layer(shape, expr[s:s + 256], pose[s:s + 256], tr[s:s + 256])
            verts.append(v)
        vall = torch.cat(verts)
        proj_mp = project(layer.landmarks_mp(vall), intr_t)
        reproj = torch.sqrt(((proj_mp - obs_t) ** 2).sum(-1).mean(1))
        l68 = project(layer.landmarks68(vall), intr_t)
    return FitResult(
        shape=shape.detach().cpu().numpy(), expr=expr.detach().cpu().numpy(),
        pose=pose.cpu().numpy(), trans=tr.detach().cpu().numpy(), intrinsics=intr.astype(np.float32),
        vertices=vall.cpu().numpy().astype(np.float32), landmarks_68=l68.cpu().numpy(),
        reproj_px=reproj.cpu().numpy(), loss_history=history,
    )
