"""Model-based flow reader: the micro-expression read from the optical flow through the fitted head.

No learning, so nothing here depends on the look of the footage it was tuned on. For each face
vertex visible at the onset (frame 0), its crop position is tracked through flows from anchor
frames (p_t = p_a + flow_{a->t}(p_a), a a recent anchor; with consecutive pairs a plain chain). Its position predicted without any micro-motion is the
fitted head with the onset expression and jaw, moved by frame t's fitted pose. What is left,
r_t = p_t - q_t, is explained through the linearised projection of the fitted mesh by

    r_t ≈ J_t Δψ_t + K_t δ_t,

Δψ_t the change of expression and jaw from the onset and δ_t a small rigid correction of the
fitted pose (rotation about the face's centre, translation), solved per frame by iteratively
reweighted least squares (Huber) with the prior λ (Δψ - μ)ᵀ B (Δψ - μ), B the Gram of the motion Δψ causes in
mm over the face (from the model's own blendshapes, so it suits PCA and 0..1 targets alike). μ_t
is the share of the fit's own change (from the landmarks) that the flow confirms: the least-squares
gain of that change in the per-frame normal equations, in [0, fit_prior], so where both see the
motion the prior no longer shrinks it, and a fit the flow contradicts is not followed. λ
follows the clip's own noise: max(prior_weight, noise_weight · σ²), σ² the frame-to-frame scatter
of the per-frame solutions at a reference λ (:func:`motion_noise_mm2`), so a noisy camera gets
a stronger prior and a clean one reads small motion.

Micro-expressions are a few spatial patterns with their own time courses, not a free vector per
frame: the per-frame solutions are reduced to the ``patterns`` strongest directions in the mm
metric, and each frame is solved again for those directions' time courses only (plus its rigid
correction), which are smoothed over ``smooth_s`` seconds. Frame 0 is the anchor (Δψ_0 = 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import ReaderConfig
from ..head.flame import FlameLayer, FlameModel, axis_angle_to_matrix
from ..head.priors import MM

_RIGID_RIDGE = 1e-9      # the rigid correction is free, up to this ridge
_MIN_POINTS = 50        # below this many tracked face points a frame is not solved


@dataclass
class FlowReading:
    """What the reader read: ψ = expression ⊕ jaw (see MicroFaceNet.pack_psi)."""

    expr: np.ndarray        # (T, n_expr) the fit's onset expression plus the read change
    pose: np.ndarray        # (T, 3J) the fit's pose with the read jaw
    dpsi: np.ndarray        # (T, P) the read change of ψ from frame 0
    patterns: np.ndarray    # (K, P) spatial patterns of Δψ
    courses: np.ndarray     # (T, K) their time courses (0 at frame 0)
    points: int             # face points tracked from frame 0
    residual_px: float      # median |r_t - model| over points and frames, 224-crop px
    prior_weight: float     # the prior's weight λ used (ReaderConfig: from the clip's noise)
    noise_mm: float         # the clip's frame-to-frame noise of the per-frame motion, mm rms over the face
    fit_share: float = 0.0  # the share of the fit's own change the prior pulls towards (ReaderConfig.fit_prior)


def _sample_flow(flow: torch.Tensor, p: torch.Tensor, crop_size: float) -> torch.Tensor:
    """Bilinear samples of one pair flow (S, S, 2), in crop px of a ``crop_size`` crop, at crop
    positions p (N, 2) -> (N, 2). The flow grid may be coarser than the crop (pooled)."""
    import torch.nn.functional as F

    s = flow.shape[0]
    g = (2.0 * ((p + 0.5) * (s / crop_size)) / s) - 1.0
    out = F.grid_sample(flow.permute(2, 0, 1)[None].to(p.dtype), g[None, None], mode="bilinear",
                        padding_mode="border", align_corners=False)
    return out[0, :, 0].T


def _crop_jacobian(x: np.ndarray, intrinsics: np.ndarray, align: np.ndarray) -> np.ndarray:
    """d(crop px)/d(camera point) (N, 2, 3) for camera points x (N, 3) m: the pinhole, then the
    crop's affine map (2, 3)."""
    from ..net.photometric import pixel_jacobian

    j = pixel_jacobian(torch.as_tensor(x), torch.as_tensor(np.asarray(intrinsics, np.float64))).numpy()
    return np.einsum("ij,njk->nik", align[:, :2], j)


def _project_crop(x: np.ndarray, intrinsics: np.ndarray, align: np.ndarray) -> np.ndarray:
    from ..head.camera import project_np

    return project_np(x, intrinsics) @ align[:, :2].T + align[:, 2]


def _irls(a: np.ndarray, r: np.ndarray, prior: np.ndarray, huber_px: float,
          iters: int, prior_rhs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """argmin_u Σ_n ρ(|r_n - a_n u|) / N + uᵀ prior u - 2 uᵀ prior_rhs, Huber ρ of scale ``huber_px``
    (prior_rhs = prior μ centres the prior on μ).

    a (N, 2, U), r (N, 2), prior (U, U), prior_rhs (U,) or None. Returns u (U,), the per-point residual norms (N,) and
    the final robust weights (N,)."""
    n = len(r)
    w = np.ones(n)
    af, rf = a.reshape(2 * n, -1), r.reshape(-1)
    for _ in range(iters):
        ww = np.repeat(w, 2) / n
        rhs = (af * ww[:, None]).T @ rf
        u = np.linalg.solve((af * ww[:, None]).T @ af + prior, rhs if prior_rhs is None else rhs + prior_rhs)
        res = np.linalg.norm(r - a @ u, axis=1)
        w = np.minimum(1.0, huber_px / np.maximum(res, 1e-12))
    return u, res, w


def _gaussian_smooth(x: np.ndarray, times: np.ndarray, sigma: float) -> np.ndarray:
    """x (T, K) smoothed over ``times`` (T,) seconds by a normalised Gaussian of ``sigma`` seconds;
    frame 0 stays the anchor (0)."""
    if sigma <= 0 or len(x) < 3:
        return x
    d = times[:, None] - times[None, :]
    w = np.exp(-0.5 * (d / sigma) ** 2)
    out = (w @ x) / w.sum(1, keepdims=True)
    return np.concatenate([x[:1], out[1:]])


def motion_noise_mm2(per_frame: np.ndarray, solved: np.ndarray, gram: np.ndarray) -> float:
    """The per-frame motion's noise: median over consecutive solved frames of |Δψ_t - Δψ_t-1|²_B / 2,
    mm² (mean over the face). per_frame (T, P), solved (T,) bool, gram (P, P) mm² per ψ². White
    noise of variance σ² gives σ²; motion slow against the frame rate adds little."""
    both = solved[1:] & solved[:-1]
    if not both.any():
        return 0.0
    d = (per_frame[1:] - per_frame[:-1])[both]
    return float(np.median(np.einsum("tp,pq,tq->t", d, gram, d)) / 2.0)


def confirmed_share(change: np.ndarray, hess: np.ndarray, grad: np.ndarray, solved: np.ndarray,
                    cap: float) -> float:
    """The least-squares gain s of a per-frame change (T, P) in the flow's normal equations
    (hess (T, P, P), grad (T, P), over the solved (T,) frames): argmin_s Σ_t data_t(s · change_t),
    clipped to [0, cap]. 0 when the flow sees none of the change."""
    d = change[solved]
    seen = float(np.einsum("tp,tpq,tq->", d, hess[solved], d))
    if not seen > 0:
        return 0.0
    return float(np.clip(np.einsum("tp,tp->", d, grad[solved]) / seen, 0.0, cap))


def _solve_frames(prior_psi: np.ndarray, cam: np.ndarray, jac_head: np.ndarray, rotations: np.ndarray,
                  track: np.ndarray, inside: np.ndarray, valid: np.ndarray, intrinsics: np.ndarray,
                  align: np.ndarray, cfg: ReaderConfig, prior_mean: np.ndarray | None = None):
    """Per frame: IRLS on the full ψ with the prior ``prior_psi`` (P, P), then its normal equations
    with the rigid correction eliminated (Schur complement), which the low-rank stage reuses.

    cam (T, N, 3) m the tracked points on the fitted head with the onset expression, jac_head
    (N, 3, P) their head-space Jacobian in ψ, rotations (T, 3, 3) head -> camera, track (T, N, 2)
    crop px, inside (T, N) bool. Returns per_frame (T, P), hess (T, P, P), grad (T, P), solved (T,)
    bool and the per-frame residual norms (list of (N_t,) crop px)."""
    from ..net.photometric import rigid_jacobian

    t_count, p_count = len(cam), prior_psi.shape[0]
    prior = np.zeros((p_count + 6, p_count + 6))
    prior[:p_count, :p_count] = prior_psi
    prior[p_count:, p_count:] = _RIGID_RIDGE * np.eye(6)
    per_frame = np.zeros((t_count, p_count))
    hess = np.zeros((t_count, p_count, p_count))
    grad = np.zeros((t_count, p_count))
    solved = np.zeros(t_count, bool)
    residuals = []
    for t in range(1, t_count):
        keep = inside[t]
        if not valid[t] or keep.sum() < _MIN_POINTS:
            continue
        x, rot = cam[t], rotations[t]
        pull = None if prior_mean is None else np.concatenate([prior_psi @ prior_mean[t], np.zeros(6)])
        for rigid_pass in range(cfg.rigid_passes):
            jc = _crop_jacobian(x, intrinsics, align[t])                                   # (N, 2, 3)
            a = np.concatenate([np.einsum("nij,jk,nkp->nip", jc, rot, jac_head),
                                np.einsum("nij,njk->nik", jc, rigid_jacobian(torch.as_tensor(x)).numpy())],
                               2)[keep]                                                         # (N, 2, P + 6)
            r = (track[t] - _project_crop(x, intrinsics, align[t]))[keep]
            u, res, wts = _irls(a, r, prior, cfg.huber_px, cfg.iterations, pull)
            if rigid_pass + 1 < cfg.rigid_passes:
                # Move the head by the rigid correction and linearise again there: a turn of a
                # degree leaves second-order residuals the size of a micro-expression.
                turn = axis_angle_to_matrix(torch.as_tensor(u[p_count:p_count + 3])).numpy()
                centre = x.mean(0)
                x = (x - centre) @ turn.T + centre + u[p_count + 3:]
                rot = turn @ rot
        per_frame[t], solved[t] = u[:p_count], True
        residuals.append(res)
        af = a.reshape(-1, p_count + 6) * np.sqrt(np.repeat(wts, 2) / len(r))[:, None]
        h_all, g_all = af.T @ af, af.T @ (r.reshape(-1) * np.sqrt(np.repeat(wts, 2) / len(r)))
        h_pp, h_pr, h_rr = h_all[:p_count, :p_count], h_all[:p_count, p_count:], h_all[p_count:, p_count:]
        inv_rr = np.linalg.inv(h_rr + prior[p_count:, p_count:])
        hess[t] = h_pp - h_pr @ inv_rr @ h_pr.T
        grad[t] = g_all[:p_count] - h_pr @ inv_rr @ g_all[p_count:]
    return per_frame, hess, grad, solved, residuals


def read_flow(model: FlameModel, flow: np.ndarray, align: np.ndarray, intrinsics: np.ndarray,
              image_size: tuple[int, int], shape: np.ndarray, expr: np.ndarray, pose: np.ndarray,
              trans: np.ndarray, valid: np.ndarray, fps: float, crop_size: int = 224,
              cfg: ReaderConfig | None = None, pairs: np.ndarray | None = None) -> FlowReading:
    """Read the micro-expression of one processed range, frame 0 its onset.

    flow (M, S, S, 2) flows between aligned crops, in ``crop_size``-crop px (S may be smaller:
    pooled), for ``pairs`` (M, 2) (source, target) frames, one pair per target 1..T-1 from an
    earlier source (backend.capture.flow.anchor_pairs; default the consecutive pairs); align (T, 2, 3)
    image px -> crop px; intrinsics (3,) f, cx, cy and
    image_size (W, H) in the same image px; shape (n_shape,), expr (T, n), pose (T, 3J), trans
    (T, 3) m: the static fit; valid (T,) bool frames with a usable face; fps frames per second.
    """
    from torch.func import jacfwd

    from ..head.visibility import vertex_visibility
    from ..net.photometric import frame_rotations

    cfg = cfg or ReaderConfig()
    t_count = len(expr)
    jaw = model.jaw_pose_slice()
    n = model.n_expr
    f64 = dict(dtype=torch.float64)
    layer = FlameLayer(model, dtype=torch.float64)
    shape_t = torch.as_tensor(shape, **f64)
    psi0 = torch.cat([torch.as_tensor(expr[0], **f64), torch.as_tensor(pose[0, jaw], **f64)])
    p_count = psi0.numel()

    def head(psi):
        p = torch.zeros(3 * model.n_joints, **f64)
        p[jaw] = psi[n:]
        return layer(shape_t[None], psi[None, :n], p[None])[0][0]

    with torch.no_grad():
        head0 = head(psi0).numpy()                                                         # (V, 3)
        pose_on = np.array(pose, np.float64)
        pose_on[:, jaw] = pose[0, jaw]
        cam, _ = layer(shape_t[None].expand(t_count, -1), torch.as_tensor(expr[:1], **f64).expand(t_count, -1),
                       torch.as_tensor(pose_on, **f64), torch.as_tensor(trans, **f64))
    cam = cam.numpy()                                                                      # (T, V, 3)
    jac_head = jacfwd(head)(psi0).numpy()                                                  # (V, 3, P)

    face = model.region_labels >= 0
    w, h = (int(v) for v in image_size)
    seen = face & ~model.eyeball_mask() & vertex_visibility(cam[:1], model.faces, intrinsics, w, h)[0]
    # Grazing points smear in the flow: keep those facing the camera.
    from ..head.render import vertex_normals

    normals = vertex_normals(cam[0], model.faces)
    facing = (normals * -cam[0] / np.linalg.norm(cam[0], axis=1, keepdims=True)).sum(1)
    seen &= facing > cfg.min_facing
    idx = np.flatnonzero(seen)

    # Mean squared face motion in mm² of a change of ψ: the prior's metric.
    basis_mm = jac_head[face].reshape(-1, p_count) * MM
    gram = basis_mm.T @ basis_mm / face.sum()

    rotations = frame_rotations(np.broadcast_to(head0[idx], cam[:, idx].shape), cam[:, idx])     # head -> camera

    # Track the points from frame 0 through the flow.
    align = np.asarray(align, np.float64)
    track = np.empty((t_count, len(idx), 2))
    track[0] = _project_crop(cam[0, idx], intrinsics, align[0])
    flow_t = torch.as_tensor(np.asarray(flow, np.float32))
    inside = np.ones((t_count, len(idx)), bool)
    if pairs is None:
        pairs = np.stack([np.arange(t_count - 1), np.arange(1, t_count)], 1)
    for m in np.argsort(pairs[:, 1], kind="stable"):
        src, dst = (int(v) for v in pairs[m])
        step = _sample_flow(flow_t[m], torch.as_tensor(track[src]), crop_size).numpy()
        track[dst] = track[src] + step
        inside[dst] = inside[src] & (track[dst] >= 0).all(1) & (track[dst] <= crop_size - 1).all(1)

    # The prior's weight follows the clip's own noise: the frame-to-frame scatter of the
    # per-frame solutions (at a reference weight) is mostly flow noise, and a noisy clip needs a
    # stronger prior to keep it out of the read motion.
    solve = lambda weight, mean=None: _solve_frames(weight * gram, cam[:, idx], jac_head[idx], rotations, track,  # noqa: E731
                                                    inside, valid, intrinsics, align, cfg, mean)
    frames_ref = solve(cfg.noise_reference_weight) if cfg.noise_weight > 0 or cfg.fit_prior > 0 else None
    noise_mm2 = 0.0 if frames_ref is None or cfg.noise_weight <= 0 else motion_noise_mm2(frames_ref[0], frames_ref[3], gram)
    weight = max(cfg.prior_weight, cfg.noise_weight * noise_mm2)
    # The prior pulls towards the share of the fit's own change (landmarks) that the flow confirms.
    fit_share, mean = 0.0, None
    if cfg.fit_prior > 0:
        fit_change = np.concatenate([expr, pose[:, jaw]], 1).astype(np.float64) - psi0.numpy()[None]
        fit_share = confirmed_share(fit_change, frames_ref[1], frames_ref[2], frames_ref[3], cfg.fit_prior)
        mean = fit_share * fit_change if fit_share > 0 else None
    per_frame, hess, grad, solved, residuals = (frames_ref if frames_ref is not None and mean is None
                                                and weight == cfg.noise_reference_weight else solve(weight, mean))

    # A few patterns with their own time courses: alternate least squares on
    # Σ_t data_t(U c_t) + λ |U c_t - μ_t|²_B, started from the per-frame solutions' strongest directions.
    evals, evecs = np.linalg.eigh(gram)
    root = evecs * np.sqrt(np.maximum(evals, 1e-12 * evals.max()))                       # gram = root rootᵀ
    _, _, vt = np.linalg.svd(per_frame @ root, full_matrices=False)
    k = max(1, min(cfg.patterns, len(vt)))
    patterns = np.linalg.solve(root.T, vt[:k].T)                                           # (P, K)
    lam_b = weight * gram
    if mean is not None:        # the prior's pull towards the fit's change, in the normal equations
        grad = grad + np.einsum("pq,tq->tp", lam_b, mean)
    courses = np.zeros((t_count, k))
    frames = np.flatnonzero(solved)
    for _ in range(cfg.alternations):
        for t in frames:
            a = patterns.T @ (hess[t] + lam_b) @ patterns
            courses[t] = np.linalg.solve(a + 1e-12 * np.eye(k), patterns.T @ grad[t])
        cc = np.einsum("tk,tl->tkl", courses[frames], courses[frames])                     # (t, K, K)
        big = np.einsum("tkl,tpq->kplq", cc, hess[frames] + lam_b[None]).reshape(k * p_count, k * p_count)
        rhs = np.einsum("tk,tp->kp", courses[frames], grad[frames]).reshape(-1)
        patterns = np.linalg.solve(big + 1e-12 * np.eye(k * p_count), rhs).reshape(k, p_count).T
        # Fix the scale between patterns and courses: each pattern moves the face 1 mm rms.
        scale = np.sqrt(np.maximum(np.einsum("pk,pq,qk->k", patterns, gram, patterns), 1e-30))
        patterns /= scale[None]
        courses *= scale[None]
    for t in frames:       # the courses that go with the final patterns
        a = patterns.T @ (hess[t] + lam_b) @ patterns
        courses[t] = np.linalg.solve(a + 1e-12 * np.eye(k), patterns.T @ grad[t])
    # Frames left unsolved (no face, too few points) take their neighbours' values.
    every = np.arange(t_count)
    known = solved.copy()
    known[0] = True
    for j in range(k):
        courses[:, j] = np.interp(every, every[known], courses[known, j])
    courses = _gaussian_smooth(courses, every / float(fps), cfg.smooth_s)
    dpsi = courses @ patterns.T                                                            # (T, P)
    residual = float(np.median(np.concatenate(residuals))) if residuals else float("nan")

    psi = psi0.numpy()[None] + dpsi
    out_pose = np.array(pose, np.float64)
    out_pose[:, jaw] = psi[:, n:]
    out_expr = psi[:, :n]
    return FlowReading(expr=out_expr.astype(np.float32), pose=out_pose.astype(np.float32),
                       dpsi=dpsi.astype(np.float32), patterns=patterns.T.astype(np.float32),
                       courses=courses.astype(np.float32), points=len(idx), residual_px=residual,
                       prior_weight=float(weight), noise_mm=float(np.sqrt(noise_mm2)), fit_share=fit_share)

