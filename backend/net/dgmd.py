"""Dynamic-Guided Mesh Deformation (paper IV-B): refine the initial meshes with local cues.

Per frame (batched over frames N = B·T):
- geometry: a graph convolution over the initial mesh (Eq. 8–9);
- landmarks: FAN-68 ⊕ MediaPipe points lifted to 3D with the camera (Eq. 10), as residuals against
  the initial mesh's own embedded points, spread to nearby vertices;
- motion: a CNN with spatial attention over the flow (Eq. 11), read at each region's projected
  centroid in a 5×5 patch (the accelerated region correspondence, Eq. 12–13);
- fusion MLP (Eq. 14), GCN with the symmetric-normalised adjacency (Eq. 15–16), output MLP (Eq. 17);
- motion-attentive refinement (Eq. 18–21) and the final mesh (Eq. 22).

The mesh is handled in head space (the head's rigid motion removed), so the network sees the
same face whatever the head pose; the displacement is rotated back into camera space.
The flow given is accumulated from the onset to frame t (docs/learned_modules.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..head.camera import project
from ..head.flame import FlameModel
from .dem import mixed_precision

PATCH = 5               # pixels per side of the region patch (Eq. 13, 18)
LAMBDA_ATTN = 0.02      # Eq. 21, metres per unit of the output MLP
HEAD_SCALE = 0.1        # metres -> network units for vertex coordinates


@dataclass
class DGMDConfig:
    geo: int = 32           # geometric feature channels
    motion: int = 32        # motion feature channels
    local: int = 32         # fused local feature channels
    hidden: int = 64        # deformation GCN width
    gcn_layers: int = 3
    landmark_sigma_mm: float = 12.0
    use_geometry: bool = True
    use_landmarks: bool = True
    use_motion: bool = True


def normalized_adjacency(faces: np.ndarray, n_verts: int) -> torch.Tensor:
    """D̃^-1/2 (A + I) D̃^-1/2 of the mesh graph (Eq. 16), sparse (V, V) float32."""
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e = np.concatenate([e, e[:, ::-1], np.repeat(np.arange(n_verts)[:, None], 2, 1)])
    e = np.unique(e, axis=0)
    deg = np.bincount(e[:, 0], minlength=n_verts).astype(np.float64)
    val = 1.0 / np.sqrt(deg[e[:, 0]] * deg[e[:, 1]])
    return torch.sparse_coo_tensor(torch.as_tensor(e.T.copy()), torch.as_tensor(val, dtype=torch.float32),
                                   (n_verts, n_verts), check_invariants=True).coalesce()


class GraphConv(nn.Module):
    """X' = σ(Â X W) (Eq. 16). x (N, V, C_in) -> (N, V, C_out)."""

    def __init__(self, cin: int, cout: int, act: bool = True):
        super().__init__()
        self.lin = nn.Linear(cin, cout)
        self.act = act

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        n, v, _ = x.shape
        h = self.lin(x)                                          # apply W first: fewer channels to spread
        h = torch.sparse.mm(adj, h.permute(1, 0, 2).reshape(v, -1)).reshape(v, n, -1).permute(1, 0, 2)
        return F.relu(h) if self.act else h


class MotionCNN(nn.Module):
    """CNN_motion with spatial attention (Eq. 11): flow (N, S, S, 2) crop px -> (N, C, S/4, S/4)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(2, 16, 3, padding=1, bias=False), nn.SiLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.SiLU(),
            nn.Conv2d(32, channels, 3, stride=2, padding=1, bias=False), nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.SiLU())
        self.attn = nn.Conv2d(channels, 1, 7, padding=3)
        self.autocast_dtype: torch.dtype | None = None   # see MicroFaceNet.set_mixed_precision

    def forward(self, flow: torch.Tensor) -> torch.Tensor:
        x = flow.permute(0, 3, 1, 2)
        with mixed_precision(x, self.autocast_dtype):
            x = self.body(x)
            x = x * torch.sigmoid(self.attn(x))
        return x.float()


def region_centroids(verts_cam: torch.Tensor, labels: torch.Tensor, n_regions: int, intrinsics: torch.Tensor,
                     align: torch.Tensor) -> torch.Tensor:
    """Eq. 12: each region's centroid of projected vertices, in 224-crop pixels.

    verts_cam (N, V, 3) m; labels (V,) region index or -1; intrinsics (N, 3); align (N, 2, 3) source
    px -> crop px. Returns (N, R, 2).
    """
    uv = project(verts_cam, intrinsics)                                   # (N, V, 2) source px
    uv = torch.einsum("nij,nvj->nvi", align[:, :, :2], uv) + align[:, None, :, 2]
    onehot = F.one_hot(labels.clamp_min(0), n_regions).to(uv) * (labels >= 0)[:, None].to(uv)
    return torch.einsum("nvc,vr->nrc", uv, onehot) / onehot.sum(0)[None, :, None]


def patch_mean(fmap: torch.Tensor, centres: torch.Tensor, patch: int = PATCH) -> torch.Tensor:
    """Eq. 13/18: mean of the ``patch``×``patch`` pixel square of ``fmap`` around each centre.

    fmap (N, C, H, W); centres (N, R, 2) x, y in pixels of ``fmap`` (centres at integers), rounded to
    the nearest pixel and clipped so the square lies inside. Only R·patch² pixels are read: this
    is what makes the region correspondence cheap. Returns (N, R, C).
    """
    n, c, h, w = fmap.shape
    half = patch // 2
    cx = centres[..., 0].detach().round().clamp(half, w - 1 - (patch - 1 - half)).long()
    cy = centres[..., 1].detach().round().clamp(half, h - 1 - (patch - 1 - half)).long()
    off = torch.arange(patch, device=fmap.device) - half
    ys = (cy[..., None, None] + off[:, None]).expand(-1, -1, patch, patch)      # (N, R, p, p)
    xs = (cx[..., None, None] + off[None, :]).expand(-1, -1, patch, patch)
    flat = (ys * w + xs).reshape(n, -1)                                         # (N, R·p²)
    vals = fmap.reshape(n, c, h * w).gather(2, flat[:, None].expand(n, c, flat.shape[1]))
    return vals.view(n, c, centres.shape[1], patch * patch).mean(-1).permute(0, 2, 1)


def to_map_pixels(centres: torch.Tensor, map_size: int, crop_size: int = 224) -> torch.Tensor:
    """Crop pixels -> pixels of a map of side ``map_size`` covering the crop (centres at integers)."""
    s = map_size / crop_size
    return (centres + 0.5) * s - 0.5


def region_flow_intensity(flow: torch.Tensor, centres: torch.Tensor, crop_size: int = 224) -> torch.Tensor:
    """Eq. 18: mean flow magnitude in the 5×5 patch (pixels of the flow map) at each region centroid.

    flow (N, S, S, 2) in crop pixels, covering the crop; centres (N, R, 2) in crop pixels.
    Returns (N, R) crop pixels.
    """
    mag = flow.norm(dim=-1)[:, None]                                            # (N, 1, S, S)
    return patch_mean(mag, to_map_pixels(centres, flow.shape[2], crop_size))[..., 0]


def attention_weights(intensity: torch.Tensor) -> torch.Tensor:
    """Eq. 19–20: sigmoid((I − τ) / (τ + 1e-4)), τ = μ + 0.5σ over the regions of each frame.

    intensity (..., R) -> (..., R) in (0, 1). σ is the population standard deviation.
    """
    tau = intensity.mean(-1, keepdim=True) + 0.5 * intensity.std(-1, unbiased=False, keepdim=True)
    return torch.sigmoid((intensity - tau) / (tau + 1e-4))


def lift_landmarks(px: torch.Tensor, ref_cam: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Eq. 10, Π⁻¹: 2D points back-projected at the depth of the mesh's own embedded points.

    px (N, K, 2) source pixels; ref_cam (N, K, 3) metres; intrinsics (N, 3). Returns (N, K, 3) metres.
    """
    f, cx, cy = intrinsics[:, 0:1], intrinsics[:, 1:2], intrinsics[:, 2:3]
    depth = (-ref_cam[..., 2]).clamp_min(1e-6)
    x = (px[..., 0] - cx) / f * depth
    y = -(px[..., 1] - cy) / f * depth
    return torch.stack([x, y, -depth], -1)


class DynamicGuidedDeformation(nn.Module):
    """The whole of IV-B. See :meth:`forward` for inputs."""

    def __init__(self, model: FlameModel, cfg: DGMDConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or DGMDConfig()
        v = model.v_template.astype(np.float64)
        self.n_regions = len(model.region_names)
        self.register_buffer("adj", normalized_adjacency(model.faces, len(v)), persistent=False)
        self.register_buffer("labels", torch.as_tensor(model.region_labels), persistent=False)
        face = model.region_labels >= 0
        self.register_buffer("centre", torch.as_tensor(v[face].mean(0), dtype=torch.float32), persistent=False)
        # Landmark -> vertex spreading weights on the template (Gaussian in distance, rows sum to 1).
        lmk = np.concatenate([model.embed(v, "68"), model.embed(v, "mp")])
        d2 = ((v[:, None] - lmk[None]) ** 2).sum(-1) * 1e6
        w = np.exp(-d2 / (2 * cfg.landmark_sigma_mm ** 2))
        w[d2 > (3 * cfg.landmark_sigma_mm) ** 2] = 0.0
        w = w / np.maximum(w.sum(1, keepdims=True), 1e-12)
        self.register_buffer("lmk_spread", torch.as_tensor(w, dtype=torch.float32), persistent=False)

        self.geo = nn.ModuleList([GraphConv(3, cfg.geo), GraphConv(cfg.geo, cfg.geo)])         # E_geo
        self.motion_cnn = MotionCNN(cfg.motion)
        self.fusion = nn.Sequential(nn.Linear(cfg.geo + 6 + cfg.motion, cfg.local), nn.SiLU(),
                                    nn.Linear(cfg.local, cfg.local))                            # MLP_fusion
        dims = [3 + cfg.local] + [cfg.hidden] * cfg.gcn_layers
        self.gcn = nn.ModuleList([GraphConv(a, b) for a, b in zip(dims[:-1], dims[1:])])
        self.out = nn.Sequential(nn.Linear(cfg.hidden, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, 3))  # MLP_output
        nn.init.zeros_(self.out[-1].weight)  # start as the identity refinement
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, v_head: torch.Tensor, v_cam: torch.Tensor, rot: torch.Tensor, lmk_px: torch.Tensor,
                lmk_ref_cam: torch.Tensor, intrinsics: torch.Tensor, align: torch.Tensor,
                flow_acc: torch.Tensor) -> dict[str, torch.Tensor]:
        """Refine N frames.

        v_head (N, V, 3) initial mesh in head space, m; v_cam (N, V, 3) the same in camera space;
        rot (N, 3, 3) head -> camera rotation; lmk_px (N, K, 2) observed FAN-68 ⊕ MediaPipe points,
        source px; lmk_ref_cam (N, K, 3) the initial mesh's embedded points for them, camera m;
        intrinsics (N, 3); align (N, 2, 3) source px -> 224-crop px; flow_acc (N, S, S, 2) flow
        from the onset to this frame, 224-crop px.
        Returns delta_head (N, V, 3) m, delta_cam (N, V, 3) m, attention per vertex (N, V),
        region intensity (N, R) crop px, attention per region (N, R), base (N, V, 3).
        """
        cfg = self.cfg
        n, nv, _ = v_head.shape
        x = (v_head - self.centre) / HEAD_SCALE

        feats = []
        if cfg.use_geometry:
            g = x
            for layer in self.geo:
                g = layer(g, self.adj)
            feats.append(g)
        else:
            feats.append(x.new_zeros(n, nv, cfg.geo))

        if cfg.use_landmarks:
            lifted = lift_landmarks(lmk_px, lmk_ref_cam, intrinsics)
            resid = torch.einsum("nji,nkj->nki", rot, lifted - lmk_ref_cam) * 1000.0   # head space, mm
            k68 = 68
            spread = self.lmk_spread
            f68 = torch.einsum("vk,nkc->nvc", spread[:, :k68], resid[:, :k68])
            fmp = torch.einsum("vk,nkc->nvc", spread[:, k68:], resid[:, k68:])
            feats.append(torch.cat([f68, fmp], -1))
        else:
            feats.append(x.new_zeros(n, nv, 6))

        centres = region_centroids(v_cam, self.labels, self.n_regions, intrinsics, align)
        if cfg.use_motion:
            fmap = self.motion_cnn(flow_acc)
            reg = patch_mean(fmap, to_map_pixels(centres, fmap.shape[-1]))   # (N, R, C)
            reg = torch.cat([reg, reg.new_zeros(n, 1, reg.shape[2])], 1)     # row R: outside all regions
            idx = torch.where(self.labels >= 0, self.labels, torch.full_like(self.labels, self.n_regions))
            feats.append(reg[:, idx])
        else:
            feats.append(x.new_zeros(n, nv, cfg.motion))

        local = self.fusion(torch.cat(feats, -1))                            # Eq. 14
        h = torch.cat([x, local], -1)                                        # Eq. 15
        for layer in self.gcn:
            h = layer(h, self.adj)                                           # Eq. 16
        base = self.out(h)                                                   # Eq. 17

        intensity = region_flow_intensity(flow_acc, centres)                 # Eq. 18
        w_region = attention_weights(intensity)                              # Eq. 19–20
        w_vert = torch.where(self.labels >= 0, w_region[:, self.labels.clamp_min(0)], torch.zeros_like(w_region[:, :1]))
        delta = w_vert[..., None] * (LAMBDA_ATTN * base)                     # Eq. 21
        delta_cam = torch.einsum("nij,nvj->nvi", rot, delta)
        return {"delta_head": delta, "delta_cam": delta_cam, "attention": w_vert, "intensity": intensity,
                "attention_region": w_region, "base": base}
