"""Accuracy metrics against known ground truth (synthetic clips), shared by tests and benchmarks.

Two kinds of error, both in millimetres over the 8 face regions:
- geometry: the per-frame vertices against the truth, in camera space and after a per-frame rigid
  alignment (which removes the monocular depth/scale ambiguity of the head placement);
- micro-motion: the motion relative to the onset frame, (V_t - V_onset), against the true motion,
  in head space, separately for the regions that truly move and those that do not.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..head.regions import active_regions, region_motion


def rigid_align(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Rotate and translate ``src`` (N, 3) onto ``dst`` (N, 3) in the least-squares sense (Kabsch)."""
    ms, md = src.mean(0), dst.mean(0)
    u, _, vt = np.linalg.svd((src - ms).T @ (dst - md))
    d = np.sign(np.linalg.det(u @ vt))
    r = u @ np.diag([1.0, 1.0, d]) @ vt
    return (src - ms) @ r + md


def region_peak_motion(head: np.ndarray, labels: np.ndarray, n_regions: int, onset: int, offset: int) -> np.ndarray:
    """Per region, the largest mean |V_t - V_onset| over onset..offset. head (T, V, 3) m -> (R,) mm."""
    return region_motion(head[onset:offset + 1], labels, n_regions).max(0)


def region_truth(active: list[str], region_names: tuple[str, ...]) -> np.ndarray:
    """(R,) bool: the regions named in ``active``."""
    return np.isin(np.arange(len(region_names)), [region_names.index(r) for r in active])


@dataclass
class Metrics:
    face_error_mm: float            # median over frames of the mean face-vertex error, camera space
    face_error_aligned_mm: float    # the same after a per-frame rigid alignment
    motion_error_active_mm: float   # mean |(V_t - V_on) - (G_t - G_on)| over active regions, onset..offset
    true_motion_active_mm: float    # mean |G_t - G_on| over the same vertices and frames
    recovered_fraction: float       # 1 - motion_error_active / true_motion_active
    invented_still_mm: float        # mean |(V_t - V_on) - (G_t - G_on)| over still regions, onset..offset
    jitter_pre_onset_mm: float      # mean |V_t+1 - V_t| over face vertices before onset (truth is still)
    region_accuracy: float          # share of the 8 regions whose active/still call matches the truth
    region_accuracy_calibrated: float  # the same, called by a calibrated rule (NaN when none was given)

    def as_dict(self) -> dict[str, float]:
        return {k: round(float(v), 4) for k, v in asdict(self).items()}


def micro_metrics(pred_cam: np.ndarray, gt_cam: np.ndarray, pred_head: np.ndarray, gt_head: np.ndarray,
                  region_labels: np.ndarray, region_names: tuple[str, ...], active_regions_: list[str],
                  onset: int, offset: int, detection: tuple[float, ...] | None = None) -> Metrics:
    """All arrays (T, V, 3) metres; ``onset``/``offset`` index frames of the clip. Regions are
    called active by the truth's rule and, given ``detection`` (fraction, floor_mm[, noise_factor]),
    by that too."""
    face = region_labels >= 0
    active = np.isin(region_labels, [region_names.index(r) for r in active_regions_])
    still = face & ~active
    mm = 1000.0
    err_cam = np.linalg.norm(pred_cam[:, face] - gt_cam[:, face], axis=-1).mean(1) * mm
    err_al = np.array([np.linalg.norm(rigid_align(p[face], g[face]) - g[face], axis=-1).mean()
                       for p, g in zip(pred_cam, gt_cam)]) * mm
    win = slice(onset, offset + 1)
    d_pred = pred_head[win] - pred_head[onset]
    d_gt = gt_head[win] - gt_head[onset]
    err = np.linalg.norm(d_pred - d_gt, axis=-1) * mm
    true = np.linalg.norm(d_gt, axis=-1) * mm
    err_active = float(err[:, active].mean()) if active.any() else float("nan")
    true_active = float(true[:, active].mean()) if active.any() else float("nan")
    pre = pred_head[: max(onset, 2)][:, face]
    jitter = float(np.linalg.norm(np.diff(pre, axis=0), axis=-1).mean() * mm)
    n_regions = len(region_names)
    peak = region_peak_motion(pred_head, region_labels, n_regions, onset, offset)
    truth = region_truth(active_regions_, region_names)
    calibrated = float((active_regions(peak, *detection) == truth).mean()) if detection else float("nan")
    return Metrics(
        face_error_mm=float(np.median(err_cam)), face_error_aligned_mm=float(np.median(err_al)),
        motion_error_active_mm=err_active, true_motion_active_mm=true_active,
        recovered_fraction=1.0 - err_active / true_active if true_active > 0 else float("nan"),
        invented_still_mm=float(err[:, still].mean()), jitter_pre_onset_mm=jitter,
        region_accuracy=float((active_regions(peak) == truth).mean()), region_accuracy_calibrated=calibrated,
    )


def method_meshes(sample: dict, layer, nets: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each method's (camera, head-space) meshes (T, V, 3) metres on one sample (backend/training/dataset.py layout).

    Methods: "fit only" (the static landmark fit), and for each named network its final meshes;
    the network called "full" also gives "DEM only" (its initial meshes, before the deformation).
    """
    import torch

    from ..config import ReconstructConfig
    from ..head.flame import head_space
    from ..net.apply import apply_network

    drift_sigma = ReconstructConfig().drift_sigma_s * float(sample["meta"]["fps"])
    with torch.no_grad():
        v, _ = layer(torch.as_tensor(sample["fit_shape"]), torch.as_tensor(sample["fit_expr"]),
                     torch.as_tensor(sample["fit_pose"]), torch.as_tensor(sample["fit_trans"]))
    preds = {"fit only": (v.numpy(), head_space(layer, sample["fit_shape"], sample["fit_expr"], sample["fit_pose"]))}
    for name, net in nets.items():
        r = apply_network(net, sample, drift_sigma=drift_sigma)
        if name == "full":
            preds["DEM only"] = (r.vertices_init, r.vertices_init_head)
        preds[name] = (r.vertices, r.vertices_head)
    return preds


def compare_methods(sample: dict, flame_model, layer, nets: dict,
                    detection: dict[str, tuple[float, ...]] | None = None) -> dict[str, Metrics]:
    """Metrics of each method of :func:`method_meshes` on one synthetic sample with truth;
    ``detection`` gives a method its calibrated region rule (:func:`calibrate_detection`)."""
    from .dataset import gt_vertices

    meta, detection = sample["meta"], detection or {}
    gt_cam, gt_head = gt_vertices(sample, layer)
    return {name: micro_metrics(cam, gt_cam, head, gt_head, flame_model.region_labels, flame_model.region_names,
                                meta["active_regions"], int(meta["onset"]), int(meta["offset"]), detection.get(name))
            for name, (cam, head) in method_meshes(sample, layer, nets).items()}
