"""Apply the trained network to one processed clip: the whole range as one window, onset first.

Input is a clip in the training-sample layout (docs/learned_modules.md): the pipeline builds it
for videos, the benchmarks read held-out samples from disk. The per-frame mesh deformation
runs in chunks so long clips fit in memory.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .dem import window_times
from .network import MicroFaceNet, landmark_points


@dataclass(frozen=True)
class ClipMeshes:
    """Expression, jaw and meshes of every frame of one processed clip, frame 0 the onset.

    Made by :func:`apply_network` (the network) or :func:`parametric_meshes` (the flow reader's
    ψ without it); backend/net/photometric.py returns a corrected copy. T frames, V vertices,
    R face regions; every array is float32 numpy.

    - expr (T, n_expr): FLAME expression coefficients (unitless).
    - pose (T, 3J): axis-angle radians per joint, the fit's pose with the jaw read from the flow.
    - vertices (T, V, 3): camera-space metres, the final meshes (after the mesh deformation).
    - vertices_init (T, V, 3): camera-space metres, FLAME of expr and pose with the fit's identity
      and translation, before the mesh deformation.
    - vertices_head, vertices_init_head (T, V, 3): head-space metres (without the global and neck
      rotation and the translation), final and initial.
    - intensity (T, R): region flow accumulated from the onset, 224-crop pixels (Eq. 18); network only.
    - attention_region (T, R): region attention in (0, 1) (Eq. 19-20); network only.

    Without the network, the final meshes are the initial ones and intensity and attention_region
    are None.
    """

    expr: np.ndarray
    pose: np.ndarray
    vertices: np.ndarray
    vertices_init: np.ndarray
    vertices_head: np.ndarray
    vertices_init_head: np.ndarray
    intensity: np.ndarray | None = None
    attention_region: np.ndarray | None = None


def drift_from_fit(psi: np.ndarray, fit_psi: np.ndarray, frame_indices: np.ndarray, sigma: float,
                  rows: int = 1024) -> np.ndarray:
    """``psi`` (T, P) with its drift slower than ``sigma`` source frames replaced by ``fit_psi``'s.

    Returns psi + G * (fit_psi - psi), G a Gaussian kernel smoother over the frame numbers (T,),
    normalised per frame: a constant offset goes exactly, a linear drift away from the ends, and
    motion much faster than ``sigma`` stays psi's. Memory grows with T * sigma, not T^2.
    """
    f = np.asarray(frame_indices, np.float64)
    diff = np.asarray(fit_psi, np.float64) - psi
    out = np.array(psi, np.float64)
    reach = 4.0 * sigma
    for s in range(0, len(f), rows):
        at = f[s:s + rows]
        lo, hi = np.searchsorted(f, at[0] - reach), np.searchsorted(f, at[-1] + reach, side="right")
        d = at[:, None] - f[None, lo:hi]
        w = np.where(np.abs(d) <= reach, np.exp(-0.5 * (d / sigma) ** 2), 0.0)   # each row's own 4 sigma
        out[s:s + rows] += w @ diff[lo:hi] / w.sum(1, keepdims=True)
    return out.astype(np.asarray(psi).dtype)


def apply_network(net: MicroFaceNet, sample: dict, frame_indices: np.ndarray | None = None,
                  drift_sigma: float = 0.0, chunk: int = 48,
                  psi: tuple[np.ndarray, np.ndarray] | None = None) -> ClipMeshes:
    """Run DEM -> FLAME -> DGMD on every frame of ``sample``.

    ``psi`` (expr (T, n), pose (T, 3J)): expression and jaw read elsewhere (backend/capture/flow_reader.py)
    that the mesh deformation refines instead of the DEM's.

    ``frame_indices`` (T,) source frame numbers set the time axis (default 0..T-1).
    ``drift_sigma`` > 0: the DEM's expression and jaw take their drift slower than this many
    source frames from the landmark fit (:func:`drift_from_fit`) before the mesh deformation. The
    ODE integrates the flow from the onset, so over a long clip its small errors add up; the fit
    tracks slow motion well, and micro-expressions are faster than half a second.
    Returns every field of :class:`ClipMeshes`, the jaw in pose from the DEM (or ``psi``).
    """
    dev = next(net.parameters()).device
    t_count = len(sample["valid"])
    f = np.arange(t_count) if frame_indices is None else np.asarray(frame_indices)
    as_t = lambda a: torch.as_tensor(np.asarray(a, np.float32), device=dev)  # noqa: E731
    flow = as_t(sample["flow"])[None]
    times = window_times(torch.as_tensor(f)).to(dev)
    lmk = landmark_points(net.flame_model, as_t(sample["lmk_68"]), as_t(sample["lmk_mp"]))[None]
    batch = {"fit_shape": as_t(sample["fit_shape"])[None], "fit_expr": as_t(sample["fit_expr"])[None],
             "fit_pose": as_t(sample["fit_pose"])[None], "fit_trans": as_t(sample["fit_trans"])[None],
             "flow": flow, "times": times, "intrinsics": as_t(sample["intrinsics"])[None],
             "align": as_t(sample["align"])[None], "lmk": lmk}
    net.eval()
    with torch.no_grad():
        if psi is None:
            dem = net(batch, expr_only=True)
            expr, pose = dem["expr"], dem["pose"]
        else:
            expr, pose = as_t(psi[0])[None], as_t(psi[1])[None]
        if drift_sigma > 0:
            psi = drift_from_fit(net.pack_psi(expr, pose)[0].cpu().numpy(),
                                 net.pack_psi(batch["fit_expr"], batch["fit_pose"])[0].cpu().numpy(), f, drift_sigma)
            expr, pose = net.unpack_psi(torch.as_tensor(psi, device=dev)[None], pose)
        outs = []
        flow_acc = torch.cat([torch.zeros_like(flow[:, :1]), flow.cumsum(1)], 1)
        for s in range(0, t_count, chunk):
            sl = slice(s, min(s + chunk, t_count))
            part = {k: (v[:, sl] if k in ("fit_expr", "fit_pose", "fit_trans", "align", "lmk") else v)
                    for k, v in batch.items()}
            part["fit_expr"], part["fit_pose"] = expr[:, sl], pose[:, sl]
            part["flow_acc"] = flow_acc[:, sl]
            outs.append(net(part, given_expr=True))
    keys = ("vertices", "vertices_init", "vertices_head", "vertices_init_head", "intensity", "attention_region")
    joined = {k: torch.cat([o[k] for o in outs], 1)[0].cpu().numpy().astype(np.float32) for k in keys}
    return ClipMeshes(expr=expr[0].cpu().numpy().astype(np.float32), pose=pose[0].cpu().numpy().astype(np.float32),
                      **joined)


def parametric_meshes(model, fit, expr: np.ndarray, pose: np.ndarray, frame_indices: np.ndarray,
                      drift_sigma: float = 0.0) -> ClipMeshes:
    """The head with the fit's identity and rigid motion and the expression ``expr`` (T, n) and
    jaw of ``pose`` (T, 3J) read without the network (backend/capture/flow_reader.py), as
    :class:`ClipMeshes` with no deformation (final meshes = initial ones, no intensity or attention).
    Its drift slower than ``drift_sigma`` source frames comes from the fit, as for the network."""
    from ..head.flame import FlameLayer, head_space

    jaw = model.jaw_pose_slice()
    if drift_sigma > 0:
        pack = lambda e, p: np.concatenate([e, p[:, jaw]], 1)  # noqa: E731  (ψ as MicroFaceNet.pack_psi packs it)
        psi = drift_from_fit(pack(expr, pose), pack(fit.expr, fit.pose), frame_indices, drift_sigma)
        expr, pose = psi[:, :model.n_expr], np.array(pose, copy=True)
        pose[:, jaw] = psi[:, model.n_expr:]
    layer = FlameLayer(model)
    f32 = lambda a: torch.as_tensor(np.asarray(a, np.float32))  # noqa: E731
    with torch.no_grad():
        cam, _ = layer(f32(fit.shape)[None].expand(len(expr), -1), f32(expr), f32(pose), f32(fit.trans))
    head = head_space(layer, fit.shape, expr, pose).astype(np.float32)
    cam = cam.numpy().astype(np.float32)
    return ClipMeshes(expr=np.asarray(expr, np.float32), pose=np.asarray(pose, np.float32), vertices=cam,
                      vertices_init=cam, vertices_head=head, vertices_init_head=head)
