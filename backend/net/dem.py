"""Dynamic-Encoded Module (paper IV-A): onset expression + flow-driven dynamics fused by a neural ODE.

    Δψ_t = E_motion({O_t})                                   (Eq. 4)
    ψ_t  = ψ_1 + D(z_t) − D(z_0),  z_t = z_0 + ∫_0^t E_ode(z_0, Δψ_τ, τ, z_τ) dτ,  z_0 = E_latent(ψ_1)   (Eq. 5–6)

Two choices the paper leaves open, made here (docs/learned_modules.md):
- Time τ is normalised to [0, 1] over the window and the encoder reads flow as a rate per unit τ,
  so dense (200 fps) and sparse (8-frame) sampling of the same motion look alike.
- E_ode is linear in Δψ with coefficients from (z_0, z_τ, τ). With no motion the latent does not
  move, so the fusion is exactly the identity (ψ_t = ψ_1); the residual decode keeps ψ at the
  onset exactly ψ_1 instead of D(E(ψ_1)) ≈ ψ_1.
"""
from __future__ import annotations

import torch
from torch import nn

FLOW_SCALE = 8.0  # crop pixels per unit τ that map to ~1: keeps encoder inputs O(1)


class MotionEncoder(nn.Module):
    """E_motion: 3D convolutions over the flow-rate sequence -> one Δψ per frame pair.

    Input (B, P, S, S, 2) rates in 224-crop pixels per unit τ (P = T − 1 pairs, S = 112 or 224).
    Output (B, P, n_expr) expression rates per unit τ. Fully convolutional in time; the spatial
    layout is kept to the end (flattened), since where on the face the flow is says which
    expression moves. No biases and no normalisation: zero flow gives exactly zero Δψ, and the
    magnitude of a faint flow is kept rather than rescaled to unit variance.
    """

    def __init__(self, n_expr: int, width: int = 16, hidden: int = 128, grid: int = 7):
        super().__init__()
        chans = [2, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv3d(cin, cout, (3, 3, 3), stride=(1, 2, 2), padding=1, bias=False), nn.SiLU()]
        self.convs = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool3d((None, grid, grid))
        self.head = nn.Sequential(nn.Linear(chans[-1] * grid * grid, hidden, bias=False), nn.SiLU(),
                                  nn.Linear(hidden, n_expr, bias=False))
        nn.init.zeros_(self.head[-1].weight)  # start from "no motion": the DEM begins as the static fit
        self.autocast_dtype: torch.dtype | None = None   # see MicroFaceNet.set_mixed_precision

    def forward(self, rates: torch.Tensor) -> torch.Tensor:
        b, p = rates.shape[:2]
        x = (rates / FLOW_SCALE).permute(0, 4, 1, 2, 3)          # (B, 2, P, S, S)
        with mixed_precision(x, self.autocast_dtype):
            x = self.pool(self.convs(x))                          # (B, C, P, g, g)
        x = x.float().permute(0, 2, 1, 3, 4).reshape(b, p, -1)
        return self.head(x)


def mixed_precision(x: torch.Tensor, dtype: torch.dtype | None):
    """Autocast on x's device to ``dtype`` (None: off). Only the convolutions over flow maps use it:
    they hold nearly all the FLOPs, while FLAME and the losses need float32 (at 0.5 m from the
    camera bfloat16 resolves only ~2 mm)."""
    return torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


class ResidualODEFusion(nn.Module):
    """E_res: fuse the onset expression with the rates through a neural ODE in a latent space."""

    def __init__(self, n_expr: int, latent: int = 32, hidden: int = 128):
        super().__init__()
        self.n_expr, self.latent = n_expr, latent
        self.encode = nn.Sequential(nn.Linear(n_expr, hidden), nn.SiLU(), nn.Linear(hidden, latent))     # E_latent
        # D_latent; no output bias: it cancels in D(z_t) - D(z_0)
        self.decode = nn.Sequential(nn.Linear(latent, hidden), nn.SiLU(), nn.Linear(hidden, n_expr, bias=False))
        # E_ode's coefficients: a (latent x n_expr) matrix from (z_0, z_τ, τ).
        self.coeff = nn.Sequential(nn.Linear(2 * latent + 1, hidden), nn.SiLU(), nn.Linear(hidden, latent * n_expr))

    def forward(self, psi1: torch.Tensor, dpsi: torch.Tensor, times: torch.Tensor,
                method: str = "rk4") -> torch.Tensor:
        """psi1 (B, n), dpsi (B, P, n) rates on the P intervals of ``times`` (T,) increasing in [0, 1].

        Returns ψ (B, T, n), with ψ[:, 0] = psi1 exactly.
        """
        from torchdiffeq import odeint

        z0 = self.encode(psi1)
        times = times.to(psi1)
        p = dpsi.shape[1]

        def rate_at(tau: torch.Tensor) -> torch.Tensor:
            # Piecewise-constant input: interval k covers (t_k, t_k+1]; solver steps land on the grid.
            k = torch.searchsorted(times, tau.detach().reshape(1) - 1e-6, right=False).clamp(1, p) - 1
            return dpsi[:, int(k)]

        def f(tau: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            inp = torch.cat([z0, z, tau.expand(z.shape[0], 1)], 1)
            m = self.coeff(inp).view(-1, self.latent, self.n_expr)
            return (m @ rate_at(tau)[..., None])[..., 0]

        z = odeint(f, z0, times, method=method).permute(1, 0, 2)  # (B, T, latent), z[:, 0] = z0
        # Subtract the decoded onset row itself, not D(z0) computed apart: rows that are bitwise
        # equal decode bitwise equal, so no motion gives exactly ψ_1.
        d = self.decode(z)
        return psi1[:, None] + (d - d[:, :1])


class DynamicEncodedModule(nn.Module):
    """Static onset expression + motion encoder + residual ODE fusion -> per-frame expressions."""

    def __init__(self, n_expr: int, width: int = 16, latent: int = 32):
        super().__init__()
        self.motion = MotionEncoder(n_expr, width=width)
        self.fusion = ResidualODEFusion(n_expr, latent=latent)

    def forward(self, psi1: torch.Tensor, flow: torch.Tensor, times: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """psi1 (B, n) onset expression; flow (B, P, S, S, 2) pair flow in 224-crop pixels; times (T,) in [0, 1].

        Returns ψ (B, T, n) and the rates Δψ (B, P, n).
        """
        dt = (times[1:] - times[:-1]).to(flow).clamp_min(1e-6)
        rates = flow / dt[None, :, None, None, None]
        dpsi = self.motion(rates)
        return self.fusion(psi1, dpsi, times), dpsi


def window_times(frame_indices: torch.Tensor) -> torch.Tensor:
    """Source frame numbers (T,) -> normalised times (T,) in [0, 1] (0 at the onset)."""
    f = frame_indices.to(torch.float32)
    span = (f[-1] - f[0]).clamp_min(1.0)
    return (f - f[0]) / span
