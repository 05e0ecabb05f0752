"""How much of a synthetic micro-expression the pixels themselves hold: an oracle that reads them.

    .venv/bin/python benchmarks/bench_pixel_ceiling.py [--limit N] [--seed0 S] [--only TEXT]

experiments/flow_signal.py bounds every reader of the optical flow. This bounds a model-based reader of
the pixels, i.e. what a photometric refinement stage (analysis by synthesis) could reach at best.
It is given more than any real method has:
- the true identity, camera, onset expression and rigid head motion of every frame;
- the true temporal profile, so a single apex change ψ of expression and jaw is solved from all
  frames onset..offset at once (the strongest pooling over time);
- the expression motion linearised at the truth (exact to first order at these amplitudes).

Every face point visible at the onset (face vertices and face-triangle centroids) carries its
onset-frame colour. The unknowns are ψ and a gain and bias per frame and channel (the light
drifts). Gauss-Newton on the Huber-weighted colour residual, bilinear samples of the frames and
their gradients, prior λ ψᵀBψ with B the Gram of ψ's motion in mm per face vertex; λ is chosen per
variant as the best on the mean (oracle too). Scored by backend.training.evaluate.micro_metrics over
onset..offset, like the network and experiments/flow_signal.py's readers.

Variants re-render the held-out seeds:
- recipe: the frames after the mp4 round trip, as the frontend sees them;
- no mp4 round trip;
- clean camera: no mp4, no sensor noise, no light drift;
- every captured frame: the recipe at stride 1 (all the high-speed frames, not the stored ones);
- 1024 px renders (a face about 460 px wide instead of 230), with the mp4 and with a clean camera.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LAMBDAS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
ITERATIONS = 4
HUBER = 3.0                     # robust scale, in MADs of the residual
MIN_SCALE = 0.5                 # ... at least half a grey level (an injected clip equals its original off the face)
_CLEAN = {"noise_std": 0.0, "light_direction_drift_deg": 0.0, "light_intensity_drift": 0.0}
_LARGE = {"width": 1024, "height": 1024, "texture_size": 2048}
# name: (SyntheticSpec changes, mp4 round trip, every captured frame)
VARIANTS = {
    "recipe (mp4 round trip)": ({}, True, False),
    "no mp4 round trip": ({}, False, False),
    "clean camera (no mp4, noise or light drift)": (_CLEAN, False, False),
    "every captured frame (stride 1, mp4)": ({}, True, True),
    "1024 px renders (mp4 round trip)": (_LARGE, True, False),
    "1024 px renders, clean camera": ({**_LARGE, **_CLEAN}, False, False),
}


def full_rate(spec):
    """``spec`` rendered at its capture rate: every captured frame, the same onset, apex and offset times."""
    k = spec.stride
    return dataclasses.replace(spec, stride=1, n_frames=(spec.n_frames - 1) * k + 1, onset=spec.onset * k,
                               apex=spec.apex * k, offset=spec.offset * k)


def mp4_round_trip(clip) -> np.ndarray:
    """The clip's frames written as the dataset writes them and decoded as the frontend decodes them."""
    from backend.synthetic.synth import write_video
    from backend.capture.video import read_clip

    with tempfile.TemporaryDirectory(prefix="microface_pixels_") as tmp:
        return read_clip(write_video(clip, Path(tmp) / "clip.mp4"), min_frames=1).frames


@dataclass
class PixelTruth:
    """What the oracle is given: the true head (FLAME parameters without the off-basis bump, and the
    true camera-space and head-space meshes (T, V, 3) m), the camera, the profile and the timing."""

    shape: np.ndarray
    expr: np.ndarray
    pose: np.ndarray
    trans: np.ndarray
    intrinsics: np.ndarray
    width: int
    height: int
    profile: np.ndarray
    onset: int
    offset: int
    active_regions: list
    gt_cam: np.ndarray
    gt_head: np.ndarray
    base_expr: np.ndarray | None = None   # (T, n) the expression without the micro-expression; None: the onset's

    @classmethod
    def of_synth_clip(cls, clip, layer) -> "PixelTruth":
        from backend.training.dataset import gt_vertices, truth_arrays

        gt_cam, gt_head = gt_vertices(truth_arrays(clip), layer)
        return cls(clip.shape, clip.expr, clip.pose, clip.trans, clip.intrinsics, clip.width, clip.height,
                   clip.profile, clip.onset, clip.offset, list(clip.active_regions), gt_cam, gt_head)

    @classmethod
    def of_family_clip(cls, clip, width: int, height: int) -> "PixelTruth":
        """A benchmarks.families clip that records its head's parameters (``clip.params``)."""
        p = clip.params
        return cls(p["shape"], p["expr"], p["pose"], p["trans"], clip.intrinsics, width, height, clip.profile,
                   clip.onset, clip.offset, clip.active_regions, clip.vertices_cam, clip.motion_head,
                   p.get("expr_base"))


def read_pixels(clip: PixelTruth, frames: np.ndarray, model, layer, reference: np.ndarray | None = None,
                lambdas: tuple[float, ...] = LAMBDAS) -> dict[float, object]:
    """backend.training.evaluate Metrics of the oracle reader (module docstring) per prior weight λ.

    With ``reference`` (T, H, W, 3), the same frames without the micro-expression (the injected
    family's original window), each frame's colours come from the reference frame at the head
    without the micro-expression (``clip.base_expr``) instead of from the onset frame: the oracle
    then reads only what was added, not the footage's own motion."""
    import torch
    from torch.func import jacfwd

    from backend.head.camera import project
    from backend.training.evaluate import micro_metrics
    from backend.head.flame import axis_angle_to_matrix
    from backend.head.visibility import vertex_visibility
    from backend.net.photometric import (gain_bias_jacobian, image_and_gradients, pixel_jacobian,
                                     residual_and_jacobian, sample_image, schur_terms)

    f64 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
    gt_cam, gt_head = np.asarray(clip.gt_cam, np.float64), np.asarray(clip.gt_head, np.float64)
    onset, offset, labels = clip.onset, clip.offset, model.region_labels
    shape, expr, pose, trans, intr = (f64(a) for a in (clip.shape, clip.expr, clip.pose, clip.trans, clip.intrinsics))
    jaw, n = model.jaw_pose_slice(), expr.shape[1]
    psi0 = torch.cat([expr[onset], pose[onset, jaw]])

    def head(psi):
        p = torch.zeros_like(pose[0])
        p[jaw] = psi[n:]
        return layer(shape[None], psi[None, :n], p[None])[0][0]

    jac_head = jacfwd(head)(psi0)                                                 # (V, 3, P) m
    face = labels >= 0
    basis_mm = jac_head[face].reshape(-1, psi0.numel()) * 1000.0
    prior = basis_mm.T @ basis_mm / face.sum()
    seen = face & vertex_visibility(gt_cam[[onset]], model.faces, clip.intrinsics, clip.width, clip.height)[0]
    tri = np.asarray(model.faces)[seen[np.asarray(model.faces)].all(1)]

    def points(v):                                                              # (V, ...) -> (N, ...)
        return torch.cat([v[seen], v[tri].mean(1)])

    frames_t = list(range(onset + 1, offset + 1))
    still_pose = pose[frames_t].clone()
    still_pose[:, jaw] = pose[onset, jaw]
    base = expr[onset][None].expand(len(frames_t), -1) if clip.base_expr is None else f64(clip.base_expr)[frames_t]
    with torch.no_grad():
        x0 = layer(shape[None].expand(len(frames_t), -1), base, still_pose, trans[frames_t])[0]   # (F, V, 3) at ψ0
    rot = axis_angle_to_matrix(pose[frames_t, :3])
    prof = f64(clip.profile)[frames_t]

    with torch.no_grad():
        x_on = layer(shape[None], expr[onset][None], pose[onset][None], trans[onset][None])[0][0]
        template = sample_image(image_and_gradients(frames[onset])[0], project(points(x_on), intr))    # (N, 3)
        n_psi = psi0.numel()
        per_frame = []
        for i, t in enumerate(frames_t):
            x = points(x0[i])
            moves = points(torch.einsum("ij,vjp->vip", rot[i], jac_head))       # (N, 3, P) camera m per ψ
            own = template if reference is None else sample_image(image_and_gradients(reference[t])[0], project(x, intr))
            per_frame.append((project(x, intr), pixel_jacobian(x, intr) @ moves * prof[i], image_and_gradients(frames[t]),
                              own, gain_bias_jacobian(own)))

        out = {}
        for lam in lambdas:
            psi = torch.zeros(n_psi, dtype=torch.float64)
            for _ in range(ITERATIONS):
                hess, grad = lam * prior, lam * prior @ psi
                for px0, jac_px, maps, own, own_gain_bias in per_frame:
                    res, jp = residual_and_jacobian(maps, px0 + jac_px @ psi, jac_px, own)
                    h, g, _ = schur_terms(res, jp, own_gain_bias, HUBER, MIN_SCALE)
                    hess, grad = hess + h, grad + g
                psi = psi - torch.linalg.solve(hess, grad)
            pred = gt_head[onset][None] + torch.einsum("vcp,t,p->tvc", jac_head, f64(clip.profile), psi).numpy()
            out[lam] = micro_metrics(gt_cam, gt_cam, pred, gt_head, labels, model.region_names,
                                     list(clip.active_regions), onset, offset)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=10, help="held-out seeds to render per variant")
    ap.add_argument("--seed0", type=int, default=900000, help="first held-out seed")
    ap.add_argument("--only", default="", help="only the variants whose name contains this")
    args = ap.parse_args()

    import torch

    from backend.training.dataset import _render, draw_synthetic_spec
    from backend.head.flame import FlameLayer, load_flame

    torch.set_num_threads(2)
    model = load_flame()
    layer = FlameLayer(model).double()
    print("| variant | clips | lambda | recovered share (mean / median) | invented, still | region accuracy |")
    print("|---|---|---|---|---|---|")
    for name, (changes, mp4, every_frame) in VARIANTS.items():
        if args.only not in name:
            continue
        rows = []
        for seed in range(args.seed0, args.seed0 + args.limit):
            spec = dataclasses.replace(draw_synthetic_spec(seed), **changes)
            clip, _ = _render(full_rate(spec) if every_frame else spec, model)
            rows.append(read_pixels(PixelTruth.of_synth_clip(clip, layer), mp4_round_trip(clip) if mp4 else clip.frames,
                                    model, layer))

        def col(lam, key):
            return np.array([getattr(r[lam], key) for r in rows])
        lam = max(LAMBDAS, key=lambda x: col(x, "recovered_fraction").mean())
        rec = col(lam, "recovered_fraction")
        print(f"| {name} | {len(rows)} | {lam:g} | {rec.mean():.3f} / {np.median(rec):.3f} | "
              f"{col(lam, 'invented_still_mm').mean():.3f} mm | {col(lam, 'region_accuracy').mean():.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
