"""Photometric refinement: the network's micro-expression, corrected by the frames' own colours.

The flow hands the network only part of what the pixels hold (docs/learned_modules.md, the
ceilings). This stage reads the pixels directly, by analysis by synthesis without a renderer: each
face point visible in the first frame (face vertices and face-triangle centroids) carries that
frame's colour, and one change δ of expression and jaw, applied along the network's own temporal
profile p_t, is fitted so that frame t shows those colours where the corrected mesh projects them.

Per frame, nuisances absorb what is not the micro-expression: a small rigid correction of the head
(rotation about the face's centre and translation, 6) and a gain and bias per colour channel (the
light drifts, 6). They are eliminated by their Schur complement, so each Gauss-Newton step solves
only for δ. The residual is Huber-weighted; the prior λ δᵀBδ penalises δ's motion in mm (B is the
Gram of its per-vertex displacement), so λ trades pixels against motion the flow did not see.

All of it knows nothing of the truth: the profile, the rigid motion and the first frame's mesh come
from the network's output. It corrects one micro-expression per processed range, from its first
frame, as the network reads it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from ..config import PhotometricConfig
from .apply import ClipMeshes

_MARGIN_PX = 8      # around the face's box over all frames: the Sobel kernel and a few pixels of motion


def image_and_gradients(frame: np.ndarray) -> list[torch.Tensor]:
    """A frame (H, W, 3) and its x and y gradients, each (1, H, W, 3) float64 per pixel."""
    import cv2

    img = np.asarray(frame, np.float64)
    return [torch.as_tensor(m)[None] for m in (img, *(cv2.Sobel(img, cv2.CV_64F, *d, ksize=3) / 8.0
                                                       for d in ((1, 0), (0, 1))))]


def sample_image(maps: torch.Tensor, px: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of maps (1, H, W, C) at pixels px (N, 2), x right and y down -> (N, C).
    Pixel centres sit at integers; outside the image the border value is used."""
    import torch.nn.functional as F

    h, w = maps.shape[1:3]
    grid = torch.stack([(2.0 * px[:, 0] + 1.0) / w - 1.0, (2.0 * px[:, 1] + 1.0) / h - 1.0], -1)
    out = F.grid_sample(maps.permute(0, 3, 1, 2).to(px.dtype), grid[None, None], mode="bilinear",
                        padding_mode="border", align_corners=False)              # (1, C, 1, N)
    return out[0, :, 0].T


def pixel_jacobian(x: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """d(pixel)/d(camera point) (N, 2, 3) of camera points x (N, 3) metres under backend.head.camera.project."""
    d = -x[:, 2]
    f = intrinsics[0]
    dpi = torch.zeros(len(x), 2, 3, dtype=x.dtype)
    dpi[:, 0, 0], dpi[:, 0, 2] = f / d, f * x[:, 0] / d ** 2
    dpi[:, 1, 1], dpi[:, 1, 2] = -f / d, -f * x[:, 1] / d ** 2
    return dpi


def gain_bias_jacobian(template: torch.Tensor) -> torch.Tensor:
    """(3N, 6): how the residual (colour - template) of N points moves with a per-channel gain and bias."""
    gb = torch.zeros(len(template), 3, 6, dtype=template.dtype)
    for c in range(3):
        gb[:, c, c], gb[:, c, 3 + c] = -template[:, c], -1.0
    return gb.reshape(-1, 6)


def rigid_jacobian(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, 6): how camera points x (N, 3) move with a small rotation (radians) about their mean,
    then a translation (metres)."""
    q = x - x.mean(0)
    j = torch.zeros(len(x), 3, 6, dtype=x.dtype)
    j[:, 0, 1], j[:, 0, 2] = q[:, 2], -q[:, 1]
    j[:, 1, 0], j[:, 1, 2] = -q[:, 2], q[:, 0]
    j[:, 2, 0], j[:, 2, 1] = q[:, 1], -q[:, 0]
    j[:, 0, 3] = j[:, 1, 4] = j[:, 2, 5] = 1.0
    return j


def residual_and_jacobian(maps: list[torch.Tensor], px: torch.Tensor, jac_px: torch.Tensor,
                          template: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour residual (3N,) at pixels px (N, 2) against template (N, 3), and its Jacobian (3N, K)
    for the pixel motion jac_px (N, 2, K)."""
    img, gx, gy = maps
    res = (sample_image(img, px) - template).reshape(-1)
    jac = sample_image(gx, px)[:, :, None] * jac_px[:, None, 0] + sample_image(gy, px)[:, :, None] * jac_px[:, None, 1]
    return res, jac.reshape(len(res), -1)


def schur_terms(res: torch.Tensor, jp: torch.Tensor, je: torch.Tensor, huber: float, min_scale: float = 0.0):
    """One frame's Huber-weighted Gauss-Newton terms for the shared unknowns (columns of jp), with the
    frame's own nuisances (columns of je) eliminated by their Schur complement.

    ``huber`` is the robust scale in MADs of the residual, at least ``min_scale`` (residual units:
    where most residuals are exactly 0, as between a frame and its own copy, the MAD is 0). Returns (hessian, gradient) of the shared
    unknowns and ``back(step)``, the nuisances' step that goes with the shared unknowns' ``step``.
    """
    scale = (huber * 1.4826 * res.abs().median()).clamp_min(min_scale)
    w = (scale / res.abs().clamp_min(1e-9)).clamp(max=1.0)[:, None] / len(res)
    hee_inv = torch.linalg.inv((je * w).T @ je + 1e-12 * torch.eye(je.shape[1], dtype=je.dtype))
    hpe, ge = (jp * w).T @ je, (je * w).T @ res
    hess = (jp * w).T @ jp - hpe @ hee_inv @ hpe.T
    grad = (jp * w).T @ res - hpe @ hee_inv @ ge
    return hess, grad, lambda step: -hee_inv @ (ge + hpe.T @ step)


def frame_rotations(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Per frame, the rotation (T, 3, 3) that best maps point sets src (T, N, 3) onto dst (T, N, 3)."""
    a, b = src - src.mean(1, keepdims=True), dst - dst.mean(1, keepdims=True)
    u, _, vt = np.linalg.svd(np.einsum("tni,tnj->tij", a, b))
    d = np.sign(np.linalg.det(np.einsum("tij,tjk->tik", u, vt)))
    u[:, :, -1] *= d[:, None]
    return np.einsum("tij,tjk->tki", u, vt)


@dataclass
class Correction:
    """The fitted change: ``dpsi`` (P,) expression then jaw, scaled per frame by ``profile`` (T,)."""
    dpsi: np.ndarray
    profile: np.ndarray
    frames_used: int


def fit_correction(frames: np.ndarray, vertices: np.ndarray, vertices_head: np.ndarray, jac_head: np.ndarray,
                   intrinsics: np.ndarray, faces: np.ndarray, face_mask: np.ndarray, valid: np.ndarray,
                   cfg: PhotometricConfig) -> Correction | None:
    """Fit δ on frames (T, H, W, 3) uint8 RGB against frame 0.

    vertices / vertices_head (T, V, 3) metres: the network's meshes in camera and head space;
    jac_head (V, 3, P) metres per unit of ψ: the head's motion per change of expression and jaw;
    intrinsics (3,) f, cx, cy in the frames' pixels; face_mask (V,) the face's vertices; valid (T,)
    frames whose face was seen. None when the network saw no motion (its profile is empty) or too
    few face points are visible.
    """
    from ..head.camera import project, project_np
    from ..head.visibility import vertex_visibility

    h, w = frames.shape[1:3]
    motion = np.linalg.norm(vertices_head[:, face_mask] - vertices_head[:1, face_mask], axis=-1).mean(1)
    if motion.max() < 1e-7 or len(frames) < 2:
        return None
    profile = motion / motion.max()
    seen = face_mask & vertex_visibility(vertices[:1], faces, intrinsics, w, h)[0]
    tri = faces[seen[faces].all(1)]
    if seen.sum() < 50:
        return None
    f64 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731

    def points(v):                                   # (V, ...) -> (N, ...): vertices, then centroids
        return torch.cat([v[seen], v[tri].mean(1)])

    # Only the face's box over all frames is read: the gradients' cost follows the face, not the frame.
    intr = f64(intrinsics).clone()
    px_all = project_np(vertices[:, face_mask].astype(np.float64), np.asarray(intrinsics, np.float64))
    x0, y0 = np.floor(np.maximum(px_all.min((0, 1)) - _MARGIN_PX, 0)).astype(int)
    x1, y1 = np.ceil(np.minimum(px_all.max((0, 1)) + _MARGIN_PX, [w - 1, h - 1])).astype(int)
    frames = frames[:, y0:y1 + 1, x0:x1 + 1]
    intr[1] -= x0
    intr[2] -= y0
    jac_pts = points(f64(jac_head))                                                   # (N, 3, P)
    prior_basis = f64(jac_head[face_mask]).reshape(-1, jac_head.shape[-1]) * 1000.0
    prior = prior_basis.T @ prior_basis / face_mask.sum()
    rot = f64(frame_rotations(vertices_head[:, face_mask], vertices[:, face_mask]))
    template = sample_image(image_and_gradients(frames[0])[0], project(points(f64(vertices[0])), intr))
    gain_bias = gain_bias_jacobian(template)
    use = [t for t in range(1, len(frames)) if valid[t] and profile[t] > cfg.min_profile]
    if not use:
        return None

    def frame_terms(t):
        x = points(f64(vertices[t]))
        dpi = pixel_jacobian(x, intr)
        return project(x, intr), dpi @ torch.einsum("ij,njp->nip", rot[t], jac_pts) * profile[t], dpi @ rigid_jacobian(x)

    terms = {t: frame_terms(t) for t in use}
    n_psi = jac_head.shape[-1]
    dpsi = torch.zeros(n_psi, dtype=torch.float64)
    rigid = {t: torch.zeros(6, dtype=torch.float64) for t in use}
    for _ in range(cfg.iterations):
        hess, grad, backs = cfg.prior_weight * prior, cfg.prior_weight * prior @ dpsi, {}
        for t in use:
            px0, jp_px, jr_px = terms[t]
            maps = image_and_gradients(frames[t])   # recomputed: a long clip's maps would not fit in memory
            px = px0 + jp_px @ dpsi + jr_px @ rigid[t]
            res, jac = residual_and_jacobian(maps, px, torch.cat([jp_px, jr_px], -1), template)
            hp, gp, backs[t] = schur_terms(res, jac[:, :n_psi], torch.cat([jac[:, n_psi:], gain_bias], 1), cfg.huber)
            hess, grad = hess + hp, grad + gp
        step = -torch.linalg.solve(hess, grad)
        dpsi = dpsi + step
        for t in use:
            rigid[t] = rigid[t] + backs[t](step)[:6]
    return Correction(dpsi.numpy(), profile, len(use))


def correct_photometric(frames: np.ndarray, refined: ClipMeshes, model, shape: np.ndarray,
                       trans: np.ndarray, intrinsics: np.ndarray, valid: np.ndarray,
                       cfg: PhotometricConfig) -> tuple[ClipMeshes, Correction | None]:
    """The network's output ``refined`` (backend.net.apply.apply_network) corrected by :func:`fit_correction`.

    frames (T, H, W, 3) uint8 RGB, the same frames; shape (n_shape,), trans (T, 3) metres: the fit's
    identity and translation. Expression and jaw take ``profile_t * dpsi``; the initial meshes are
    FLAME of the corrected ψ, and the final ones keep the mesh deformation's offsets on top. Returns
    (the corrected copy, the Correction), or (``refined`` itself, None) when there is nothing to fit.
    """
    from torch.func import jacfwd

    from ..head.flame import HEAD_MOTION, FlameLayer, head_space

    layer = FlameLayer(model).double()
    jaw, n = model.jaw_pose_slice(), refined.expr.shape[1]
    f64 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
    pose0 = f64(refined.pose[0]).clone()
    pose0[HEAD_MOTION] = 0.0

    def head(psi):
        p = pose0.clone()
        p[jaw] = psi[n:]
        return layer(f64(shape)[None], psi[None, :n], p[None])[0][0]

    psi0 = torch.cat([f64(refined.expr[0]), pose0[jaw]])
    jac_head = jacfwd(head)(psi0).numpy()                                             # (V, 3, P)
    corr = fit_correction(frames, refined.vertices, refined.vertices_head, jac_head, intrinsics,
                          np.asarray(model.faces), model.region_labels >= 0, valid, cfg)
    if corr is None:
        return refined, None
    step = corr.profile[:, None] * corr.dpsi[None]                                    # (T, P)
    expr = (refined.expr + step[:, :n]).astype(np.float32)
    pose = refined.pose.copy()
    pose[:, jaw] += step[:, n:].astype(np.float32)
    with torch.no_grad():
        v_cam, _ = layer(f64(shape)[None].expand(len(step), -1), f64(expr), f64(pose), f64(trans))
    v_head = head_space(layer, shape, expr, pose)

    def rebuilt(new, final, init):   # the new initial mesh, and it plus the deformation's old offsets
        new = new.astype(np.float32)
        return new, (new + (final - init)).astype(np.float32)

    cam_init, cam = rebuilt(v_cam.numpy(), refined.vertices, refined.vertices_init)
    head_init, head_final = rebuilt(v_head, refined.vertices_head, refined.vertices_init_head)
    return replace(refined, expr=expr, pose=pose, vertices=cam, vertices_init=cam_init,
                   vertices_head=head_final, vertices_init_head=head_init), corr
