"""The head model's own priors: metrics of how far its coefficients move the face.

Shared by the static fit, the flow reader and training, so each weighs a change of expression or
identity by the millimetres it moves the face, which suits PCA and 0..1 (ARKit-style) bases alike.
"""
from __future__ import annotations

import numpy as np
import torch

MM = 1000.0     # millimetres per metre


def _blendshape_gram(model, dirs: np.ndarray, dtype: torch.dtype, device) -> torch.Tensor:
    face_v = np.flatnonzero(model.region_labels >= 0)
    bd = dirs[face_v].astype(np.float64) * MM
    return torch.as_tensor(np.einsum("vck,vcl->kl", bd, bd) / len(face_v), dtype=dtype, device=device)


def expression_gram(model, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> torch.Tensor:
    """(n_expr, n_expr) metric G with e^T G e = mean squared displacement (mm^2) that expression
    coefficients e cause over the face vertices (region_labels >= 0). The same matrix as the
    static fit's expression prior (backend/capture/fit.py), so it suits PCA and 0..1 blendshapes alike."""
    return _blendshape_gram(model, model.exprdirs, dtype, device)


def identity_gram(model, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> torch.Tensor:
    """(n_shape, n_shape) metric like :func:`expression_gram`, for the identity (shape) basis."""
    return _blendshape_gram(model, model.shapedirs, dtype, device)
