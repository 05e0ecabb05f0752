"""Which vertices of a mesh the camera sees: a z-buffer test on the numpy rasterizer."""
from __future__ import annotations

import numpy as np
import torch

from .camera import project_np
from .render import rasterize, vertex_normals


@torch.no_grad()
def vertex_visibility(verts, faces, intrinsics, width: int, height: int, depth_tol: float = 1e-3):
    """Which vertices the camera sees, per frame (no gradient; numpy z-buffer).

    verts (T, V, 3) camera-space metres (torch or numpy); faces (F, 3) counter-clockwise seen from
    outside; intrinsics (3,) f, cx, cy pixels of an image of ``width`` x ``height``.
    A vertex is visible when it projects inside the image, its area-weighted normal faces the
    camera, and it is not behind the z-buffer of the back-face-culled mesh: its depth is at most
    depth_tol (metres) beyond the farthest of the 4 pixel centres around its projection. (For a
    locally flat visible surface the vertex depth interpolates those 4 depths, so it never exceeds
    their maximum; the tolerance absorbs curvature. Background pixels count as infinitely far.)
    Returns (T, V) bool: a torch tensor on verts' device for torch input, else numpy.
    """
    is_torch = isinstance(verts, torch.Tensor)
    vv = verts.detach().cpu().double().numpy() if is_torch else np.asarray(verts, np.float64)
    ff = faces.cpu().numpy() if isinstance(faces, torch.Tensor) else np.asarray(faces)
    ff = ff.astype(np.int64)
    intr = intrinsics.detach().cpu().double().numpy() if isinstance(intrinsics, torch.Tensor) \
        else np.asarray(intrinsics, np.float64)
    out = np.zeros(vv.shape[:2], bool)
    for i, x in enumerate(vv):
        px = project_np(x, intr)
        depth = -x[:, 2]
        _, _, zbuf = rasterize(px[ff], depth[ff], width, height, cull_backfaces=True)
        facing = (vertex_normals(x, ff) * -x).sum(1) > 0                           # normal . (camera - v)
        inside = (px[:, 0] >= 0) & (px[:, 0] <= width - 1) & (px[:, 1] >= 0) & (px[:, 1] <= height - 1) \
            & (depth > 0)
        u0 = np.clip(np.floor(px[:, 0]), 0, width - 1).astype(np.int64)
        v0 = np.clip(np.floor(px[:, 1]), 0, height - 1).astype(np.int64)
        u1, v1 = np.minimum(u0 + 1, width - 1), np.minimum(v0 + 1, height - 1)
        zmax = np.maximum.reduce([zbuf[v0, u0], zbuf[v0, u1], zbuf[v1, u0], zbuf[v1, u1]])
        out[i] = inside & facing & (depth <= zmax + depth_tol)
    return torch.as_tensor(out, device=verts.device) if is_torch else out
