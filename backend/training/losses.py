"""Training losses for the learned stage (paper section IV-C, Eq. 23-27), as pure torch functions.

There is no neural renderer here, so the paper's image terms become per-vertex terms: the mesh is
projected into the aligned crops and compared with the observed optical flow (the main
micro-motion signal) and with the onset frame's colours carried along by the mesh. VGG and
emotion losses are not built (they need the renderer and a pretrained network).

Conventions shared by every function:
- Shapes: B clips, T frames (index 0 = the onset of the window), V vertices, K landmarks.
- 3D inputs are metres in camera space (what :class:`backend.head.flame.FlameLayer` returns). Terms
  that measure a length report millimetres (``MM`` = 1000 per metre), so weights are O(1).
- Pixels: pixel centres at integer coordinates, v down (:mod:`backend.head.camera`). ``intrinsics``
  (B, 3) is f, cx, cy in source-video pixels; ``align`` (B, T, 2, 3) maps source pixels to the
  pixels of the aligned crop of side ``crop_size`` (224 in the pipeline).
- Image-like maps in crop coordinates (flow, crops) may be stored at another resolution H x W
  (the dataset keeps 112 x 112): the map covers the whole crop, so map pixel j is centred on crop
  coordinate (j + 0.5) * crop_size / W - 0.5, the convention of area downsampling. Sampling uses
  ``grid_sample(align_corners=False)`` with normalised coordinate (2 x + 1) / crop_size - 1,
  which is exactly that mapping (and the identity when W == crop_size).
- Weighted means divide by the sum of weights; with all weights zero the term is 0.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..head.camera import project
from ..head.priors import MM   # millimetres per metre

GEO_TERMS = ("lap", "normal", "flow_guide")    # the terms inside L_geo (Eq. 24)


# ----------------------------------------------------------------------------- helpers

def _wmean(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Weighted mean of ``x`` with weights ``w`` broadcast to it; 0 when the weights sum to 0."""
    w = torch.broadcast_to(w.to(x.dtype), x.shape)
    return (x * w).sum() / w.sum().clamp_min(1e-12)


def _safe_norm(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the last axis, exact, with gradient 0 (not NaN) at the zero vector."""
    sq = (x * x).sum(-1)
    nz = sq > 0
    return torch.where(nz, torch.where(nz, sq, torch.ones_like(sq)).sqrt(), torch.zeros_like(sq))


def _charbonnier(x: torch.Tensor, eps: float) -> torch.Tensor:
    """sqrt(|x|^2 + eps^2) - eps over the last axis: 0 at 0, smooth, |x| - eps far out; eps=0 is |x|."""
    if eps <= 0:
        return _safe_norm(x)
    return ((x * x).sum(-1) + eps * eps).sqrt() - eps


def project_to_crop(verts: torch.Tensor, intrinsics: torch.Tensor, align: torch.Tensor) -> torch.Tensor:
    """Crop pixels of vertices: (B, T, V, 3) metres, (B, 3), (B, T, 2, 3) -> (B, T, V, 2).

    Each frame's vertices go through the camera into source pixels, then through that frame's
    own align transform (crops are aligned per frame, so frame t lands in crop_t coordinates).
    """
    px = project(verts, intrinsics[:, None, :].to(verts.dtype))   # f (B,1,1) meets x (B,T,V)
    a = align.to(verts.dtype)
    return torch.einsum("btij,btvj->btvi", a[..., :2], px) + a[:, :, None, :, 2]


def _sample(maps: torch.Tensor, px: torch.Tensor, crop_size: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear samples of maps (N, H, W, C) at crop pixels px (N, V, 2) -> (N, V, C), and an
    (N, V) float mask of points inside the crop (no gradient). Outside, the border value is used."""
    grid = (2.0 * px + 1.0) / crop_size - 1.0
    out = F.grid_sample(maps.permute(0, 3, 1, 2).to(px.dtype), grid[:, None], mode="bilinear",
                        padding_mode="border", align_corners=False)               # (N, C, 1, V)
    inside = ((px >= -0.5) & (px <= crop_size - 0.5)).all(-1).to(px.dtype).detach()
    return out[:, :, 0].transpose(1, 2), inside


# ----------------------------------------------------------------------------- reconstruction terms

def landmark_loss(pred_px: torch.Tensor, obs_px: torch.Tensor, weight: torch.Tensor | None = None,
                  scale_px: torch.Tensor | None = None, huber_delta: float | None = None) -> torch.Tensor:
    """Weighted mean squared landmark error.

    pred_px, obs_px (B, T, K, 2) pixels (any one image space, e.g. source pixels); weight (B, T)
    per frame (e.g. ``valid``) or (B, T, K) per point, None = all 1; scale_px (B,) face size in
    the same pixels (e.g. outer eye-corner distance) or None.
    Per point e = |r|^2 with r = (pred - obs) / scale_px: units px^2, or (fraction of the face
    size)^2 when scaled. With ``huber_delta`` (units of |r|) e becomes Huber on |r|:
    |r|^2 below delta, 2 delta |r| - delta^2 above, so a wrong detection does not dominate.
    Returns a scalar.
    """
    r = pred_px - obs_px
    if scale_px is not None:
        r = r / scale_px.to(r.dtype).reshape(-1, 1, 1, 1)
    sq = (r * r).sum(-1)                                                            # (B, T, K)
    if huber_delta is not None:
        n = _safe_norm(r)
        sq = torch.where(n < huber_delta, sq, 2 * huber_delta * n - huber_delta ** 2)
    if weight is None:
        weight = torch.ones_like(sq)
    elif weight.dim() == 2:
        weight = weight[..., None]
    return _wmean(sq, weight)


def flow_reprojection_loss(verts: torch.Tensor, intrinsics: torch.Tensor, align: torch.Tensor,
                           flow: torch.Tensor, vis: torch.Tensor, crop_size: float = 224,
                           accumulated: bool = False, eps_px: float = 0.01) -> torch.Tensor:
    """Mesh motion projected into the crops against the observed optical flow, crop pixels.

    verts (B, T, V, 3) metres; intrinsics (B, 3); align (B, T, 2, 3) source px -> crop px;
    vis (B, T, V) visibility weights (bool or float, treated as constants); crop_size: crop side
    in pixels. flow (B, T-1, H, W, 2): a map of H x W covering the crop of side ``crop_size``
    (see the module docstring), values in crop pixels; ``flow[:, k, y, x]`` is where the content
    at (x, y) of the earlier crop went, minus (x, y) (:func:`backend.capture.flow.crop_flow`).

    Pair mode (default): flow[:, t] is crop_t -> crop_t+1. With p_t the projection of frame t's
    vertices into crop_t coordinates (frame t's own align), the mesh predicts
    u = p_t+1 - p_t, and the observation is flow[:, t] sampled bilinearly at p_t; weight
    vis_t * vis_t+1.
    Accumulated mode: flow[:, k] is the onset -> frame k+1 flow (e.g. the sum of pair flows);
    compares p_t - p_0 with flow[:, t-1] sampled at p_0; weight vis_0 * vis_t.
    Points that project outside the crop get weight 0.
    Per vertex the 2D residual is penalised by Charbonnier sqrt(|d|^2 + eps^2) - eps (eps_px = 0
    is the plain end-point error |d|). Returns the weighted mean, crop pixels.
    """
    b, t, v = verts.shape[:3]
    if flow.shape[1] != t - 1:
        raise ValueError(f"flow has {flow.shape[1]} maps for {t} frames; need T-1")
    p = project_to_crop(verts, intrinsics, align)                                  # (B, T, V, 2)
    vis = vis.to(verts.dtype).detach()
    if accumulated:
        src, dst = p[:, :1].expand(b, t - 1, v, 2), p[:, 1:]
        w = vis[:, :1] * vis[:, 1:]
    else:
        src, dst = p[:, :-1], p[:, 1:]
        w = vis[:, :-1] * vis[:, 1:]
    obs, inside = _sample(flow.reshape(b * (t - 1), *flow.shape[2:]), src.reshape(b * (t - 1), v, 2), crop_size)
    d = (dst - src) - obs.reshape(b, t - 1, v, 2)
    return _wmean(_charbonnier(d, eps_px), w * inside.reshape(b, t - 1, v))


def photometric_loss(verts: torch.Tensor, intrinsics: torch.Tensor, align: torch.Tensor, crops: torch.Tensor,
                     vis: torch.Tensor, crop_size: float = 224, detach_reference: bool = True) -> torch.Tensor:
    """Colour constancy of the skin carried by the mesh: L1, colour units (0..1).

    verts (B, T, V, 3) metres; intrinsics (B, 3); align (B, T, 2, 3); crops (B, T, H, W, 3) float
    0..1 (uint8 0..255 is scaled), each an aligned crop of side ``crop_size`` stored at H x W; vis (B, T, V) visibility.
    Each vertex takes its colour c_0 from crop_0 at its frame-0 projection; at frame t >= 1 the
    colour of crop_t at its frame-t projection should equal c_0. Per vertex the mean over the 3
    channels of |c_t - c_0|, averaged with weight vis_0 * vis_t (visible in both) and inside-crop.

    ``detach_reference`` (default True) stops the gradient through c_0: the onset colour is the
    target, and the onset mesh is anchored by the static fit; letting the gradient through would
    also slide the onset vertices toward whatever later frames show, so both ends drift together.
    """
    b, t, v = verts.shape[:3]
    if crops.dtype == torch.uint8:
        crops = crops.to(verts.dtype) / 255.0           # the dataset stores uint8 crops
    p = project_to_crop(verts, intrinsics, align)
    col, inside = _sample(crops.reshape(b * t, *crops.shape[2:]), p.reshape(b * t, v, 2), crop_size)
    col, inside = col.reshape(b, t, v, -1), inside.reshape(b, t, v)
    ref = col[:, :1].detach() if detach_reference else col[:, :1]
    diff = (col[:, 1:] - ref).abs().mean(-1)                                        # (B, T-1, V)
    vis = vis.to(verts.dtype).detach()
    w = vis[:, :1] * vis[:, 1:] * inside[:, :1] * inside[:, 1:]
    return _wmean(diff, w)


def _quad(x: torch.Tensor, gram: torch.Tensor | None) -> torch.Tensor:
    """x^T G x over the last axis (plain |x|^2 without G)."""
    if gram is None:
        return (x * x).sum(-1)
    return ((x @ gram.to(x.dtype)) * x).sum(-1)


def expression_regularization(expr: torch.Tensor, gram: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over (B, T) of e^T G e: expr (B, T, n); gram (n, n) from :func:`expression_gram` gives
    mm^2 of face displacement; None gives the plain squared norm (coefficient^2)."""
    return _quad(expr, gram).mean()


def expression_consistency_loss(expr: torch.Tensor, ref: torch.Tensor,
                                gram: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over (B, T) of (e - e_ref)^T G (e - e_ref): expr, ref (B, T, n), e.g. ref = the static
    fit. mm^2 with :func:`expression_gram`, coefficient^2 without."""
    return _quad(expr - ref, gram).mean()


def identity_consistency_loss(shape: torch.Tensor, ref: torch.Tensor, gram: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over B of (s - s_ref)^T G (s - s_ref): shape, ref (B, n_shape). mm^2 with
    :func:`identity_gram`, coefficient^2 without."""
    return _quad(shape - ref, gram).mean()


# ----------------------------------------------------------------------------- geometric terms

def laplacian_matrix(faces, n_verts: int, kind: str = "cotangent", verts=None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sparse (V, V) mesh Laplacian L = I - W / rowsum(W), so (L x)_i = x_i - weighted mean of
    the neighbours of i. Units are those of x (a displacement in mm gives mm).

    faces (F, 3) int; n_verts V; verts (V, 3) rest positions (the template), needed for
    ``kind="cotangent"``.
    - "cotangent" (default): w_ij = (cot a_ij + cot b_ij) / 2, the angles opposite edge ij: the
      standard discrete Laplace-Beltrami operator the paper names (Eq. 25). Default because it has
      linear precision: a displacement field that varies linearly over the surface (a cheek
      rising evenly) costs nothing, whereas the uniform Laplacian also penalises such fields
      wherever the mesh is irregular. Row-normalised (not divided by Voronoi area) so it is scale
      free and shares units and weights with the uniform one. Built once on the template: the
      weights are invariant to the head's rigid motion and the refinement is tiny. Negative edge
      weights (non-Delaunay edges, opposite angles summing past 180 degrees) are clamped to 0 so
      each row stays a convex average; a row left with no weight falls back to uniform.
    - "uniform": w_ij = 1 for every edge (umbrella operator); needs no positions.
    Vertices in no face get an all-zero row. Returns a coalesced sparse COO tensor.
    """
    f = faces.cpu().numpy() if isinstance(faces, torch.Tensor) else np.asarray(faces)
    f = f.astype(np.int64)
    i = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])          # edge (i, j) opposite corner k
    j = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    k = np.concatenate([f[:, 2], f[:, 0], f[:, 1]])
    key = np.minimum(i, j) * n_verts + np.maximum(i, j)
    edges, inv = np.unique(key, return_inverse=True)
    ei, ej = edges // n_verts, edges % n_verts
    uni = np.ones(len(edges))
    if kind == "uniform":
        w = uni
    elif kind == "cotangent":
        if verts is None:
            raise ValueError("the cotangent Laplacian needs the rest vertex positions (verts)")
        x = verts.detach().cpu().numpy() if isinstance(verts, torch.Tensor) else np.asarray(verts)
        x = x.astype(np.float64)
        a, b = x[i] - x[k], x[j] - x[k]
        cot = (a * b).sum(1) / np.maximum(np.linalg.norm(np.cross(a, b), axis=1), 1e-20)
        w = np.maximum(np.bincount(inv, 0.5 * cot, len(edges)), 0.0)
    else:
        raise ValueError(f"unknown Laplacian kind {kind!r}; use 'cotangent' or 'uniform'")
    rows, cols = np.concatenate([ei, ej]), np.concatenate([ej, ei])
    ww, uu = np.concatenate([w, w]), np.concatenate([uni, uni])
    rowsum = np.bincount(rows, ww, n_verts)
    empty = rowsum <= 1e-12 * max(rowsum.max(initial=0.0), 1e-300)
    ww = np.where(empty[rows], uu, ww)                       # uniform fallback for weightless rows
    rowsum = np.bincount(rows, ww, n_verts)
    deg = np.bincount(rows, minlength=n_verts) > 0
    vals = -ww / rowsum[rows]
    diag = np.flatnonzero(deg)
    idx = np.stack([np.concatenate([rows, diag]), np.concatenate([cols, diag])])
    val = np.concatenate([vals, np.ones(len(diag))])
    return torch.sparse_coo_tensor(torch.as_tensor(idx), torch.as_tensor(val, dtype=dtype),
                                   (n_verts, n_verts), check_invariants=True).coalesce()


def laplacian_loss(delta: torch.Tensor, lap: torch.Tensor) -> torch.Tensor:
    """Eq. 25: E[|L dV|^2], the mean over (B, T, V) of the squared norm of the Laplacian of the
    displacement. delta (B, T, V, 3) metres; lap (V, V) sparse from :func:`laplacian_matrix`.
    Returns mm^2."""
    b, t, v, _ = delta.shape
    x = (delta * MM).permute(2, 0, 1, 3).reshape(v, -1)                            # (V, B*T*3)
    lx = torch.sparse.mm(lap.to(device=delta.device, dtype=delta.dtype), x).reshape(v, b, t, 3)
    return (lx * lx).sum(-1).mean()


def face_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Unit normals of counter-clockwise triangles: verts (..., V, 3), faces (F, 3) -> (..., F, 3)."""
    tri = verts[..., faces, :]                                                      # (..., F, 3, 3)
    n = torch.linalg.cross(tri[..., 1, :] - tri[..., 0, :], tri[..., 2, :] - tri[..., 0, :])
    return F.normalize(n, dim=-1, eps=1e-20)


def normal_consistency_loss(verts_refined: torch.Tensor, verts_init: torch.Tensor, faces) -> torch.Tensor:
    """Eq. 26: mean over (B, T, faces) of 1 - n_f . n_f0, unit face normals of the refined and of
    the initial mesh. verts_* (B, T, V, 3) metres; faces (F, 3). Unitless, 0 (same) .. 2 (flipped)."""
    faces = torch.as_tensor(faces, device=verts_refined.device, dtype=torch.long)
    n = face_normals(verts_refined, faces)
    n0 = face_normals(verts_init.to(verts_refined.dtype), faces)
    return (1.0 - (n * n0).sum(-1)).mean()


def flow_guided_loss(delta: torch.Tensor, w_attn: torch.Tensor, lambda_flow: float = 0.1) -> torch.Tensor:
    """Eq. 27: E[|dV| M_low] - lambda_flow E[|dV| W_attn], with M_low = (W_attn < 0.5).

    delta (B, T, V, 3) metres (the refinement dV_t); w_attn (B, T, V) attention weights in (0, 1)
    (Eq. 19), treated as constants. Both expectations are means over all (B, T, V). Returns mm.
    The paper's formula exactly: the second term rewards displacement in high-flow regions and is
    unbounded below on its own. It stays bounded because the model's displacement is bounded,
    dV = W_attn * lambda_attn * dV_base (Eq. 21) with a bounded base output, and because the
    reconstruction, Laplacian and normal terms grow faster than this linear reward.
    """
    n = _safe_norm(delta) * MM                                                       # (B, T, V) mm
    w = w_attn.to(n.dtype).detach()
    return (n * (w < 0.5).to(n.dtype)).mean() - lambda_flow * (n * w).mean()


# ----------------------------------------------------------------------------- supervised (synthetic)

def vertex_loss(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean Euclidean (L2, not squared) vertex distance in mm, as in :mod:`backend.training.evaluate`.
    pred, gt (B, T, V, 3) metres; mask (V,) bool/float over vertices (e.g. face regions) or None."""
    err = _safe_norm(pred - gt) * MM                                                 # (B, T, V)
    return err.mean() if mask is None else _wmean(err, mask.to(err.dtype))


def motion_loss(pred: torch.Tensor, gt: torch.Tensor, onset_index: int = 0,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean Euclidean error of the motion from the onset, |(V_t - V_on) - (G_t - G_on)|, in mm.
    pred, gt (B, T, V, 3) metres; averaged over frames t != onset_index (the onset itself is 0 by
    construction) and over vertices (mask (V,) as in :func:`vertex_loss`)."""
    d = (pred - pred[:, onset_index:onset_index + 1]) - (gt - gt[:, onset_index:onset_index + 1])
    keep = [i for i in range(pred.shape[1]) if i != onset_index]
    return vertex_loss(d[:, keep], torch.zeros_like(d[:, keep]), mask)


# ----------------------------------------------------------------------------- total

@dataclass
class LossWeights:
    """Weights of Eq. 23-24, named like the terms passed to :func:`total_loss`.

    Chosen so each term at a typical converged residual adds roughly 0.01-0.3: a starting point
    to tune on synthetic validation clips, not the paper's (unpublished) values.
    """

    flow: float = 1.0        # crop px (EPE): the micro-motion signal; 0.3 px residual -> 0.3
    flow_acc: float = 0.5    # crop px, onset -> t: curbs drift of summed pair motions
    photo: float = 2.0       # colour L1 0..1: 0.03 residual -> 0.06
    lmk: float = 100.0       # (fraction of face scale)^2: 2 px at 90 px -> 0.05; landmarks cannot
                             # see sub-pixel motion, they only keep the head placement honest
    reg: float = 1e-3        # mm^2 of expression displacement: weak prior toward neutral
    exp: float = 0.05        # mm^2 from the static fit's expression
    id: float = 1.0          # mm^2 from the static fit's identity: identity is the fit's job
    vertex: float = 0.0      # mm, synthetic truth only (opt in)
    motion: float = 0.0      # mm, synthetic truth only (opt in)
    geo: float = 1.0         # lambda_geo (Eq. 23)
    lap: float = 10.0        # mm^2
    normal: float = 10.0     # unitless; 1 degree of tilt -> 1.5e-4
    flow_guide: float = 0.1  # mm; Eq. 27's own lambda_flow = 0.1 lives inside flow_guided_loss

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def total_loss(terms: dict[str, torch.Tensor], weights: dict[str, float] | LossWeights
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 23-24: L = sum_rec w_k L_k + lambda_geo (sum_{k in GEO_TERMS} lambda_k L_k).

    terms: scalar tensors by name (any subset of LossWeights' fields except "geo"); weights: a
    dict with a weight for every term given (and "geo" when a geometric term is given), or a
    LossWeights. A term with weight 0 is left out of the sum (a NaN there cannot poison it).
    Returns the total and floats for logging: each term unweighted, plus "rec", "geo", "total".
    """
    w = weights.as_dict() if isinstance(weights, LossWeights) else dict(weights)
    missing = [k for k in terms if k not in w]
    if any(k in GEO_TERMS for k in terms) and "geo" not in w:
        missing.append("geo")
    if missing:
        raise KeyError(f"no weight for loss terms {missing}")
    ref = next(iter(terms.values()))
    rec = ref.new_zeros(())
    geo = ref.new_zeros(())
    for name, value in terms.items():
        if w[name] == 0:
            continue
        if name in GEO_TERMS:
            geo = geo + w[name] * value
        else:
            rec = rec + w[name] * value
    total = rec + w["geo"] * geo if any(k in GEO_TERMS for k in terms) and w["geo"] != 0 else rec
    log = {k: float(v.detach()) for k, v in terms.items()}
    log.update(rec=float(rec.detach()), geo=float(geo.detach()), total=float(total.detach()))
    return total, log
