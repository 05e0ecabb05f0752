"""How much of a synthetic micro-expression the optical flow can see: the ceiling of any flow-driven model.

    .venv/bin/python experiments/flow_signal.py [--data DIR] [--limit N]
    .venv/bin/python experiments/flow_signal.py --render [--limit N] [--only TEXT]

On held-out clips with known truth, in 224-crop pixels, at the apex frame:
- micro: the true crop displacement due to the micro-expression alone, i.e. the true vertices
  minus the same head with the onset expression, onset jaw and no off-basis field, both projected
  through each frame's own alignment;
- flow: the stored flow (the network's input) accumulated from the onset, sampled at the onset
  projection of each vertex, minus the true displacement without the micro-expression (the head's
  rigid motion, removed exactly as no method could);
- error = |flow - micro| per vertex, in the active regions and in the still ones (where micro is 0,
  so it is the flow's own noise); gain = <flow, micro> / <micro, micro> over the active vertices
  with the larger half of the motion (1 = the flow reads the motion at full size).

Then the ceiling: linear readers that turn that flow into expression and jaw motion by regularised
least squares through the true head's projection (ground-truth linearisation at the apex, rigid
motion removed exactly, visible face vertices only), scored by backend.training.evaluate on onset..offset
like the network. Each reader knows more than any real method could:
- per frame: one solve per frame;
- known profile: one solve for the apex with the true temporal profile, so all frames average;
- profile + regions: as above, using only the expression components that act mostly (> 30 % of
  their energy) on the truly active regions;
- per frame, true crop motion: the per-frame reader given the true micro displacement instead of
  the flow, i.e. the limit set by the expression basis and the projection alone.
The prior's weight lambda is chosen per reader as the best on the mean recovered share (also oracle).

``--render`` re-renders the held-out seeds under changed recipes and flows (the first recipe's
256 px renders, TV-L1, no supersampling; no sensor noise or light drift; no head sway; 1024 px
renders and a 4x flow crop; all of the better ones at once) through the same frontend and reports
the same figures, to show which lever moves the ceiling.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LAMBDAS = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
READERS = ("per frame", "known profile", "profile + regions", "per frame, true crop motion")
ENERGY_SHARE = 0.3          # "acts mostly on the active regions"

# name: (SyntheticSpec changes, FlowConfig changes), relative to the recipe
_SMALL = {"width": 256, "height": 256, "texture_size": 512}
_LARGE = {"width": 1024, "height": 1024, "texture_size": 2048}
_CLEAN = {"noise_std": 0.0, "light_direction_drift_deg": 0.0, "light_intensity_drift": 0.0}
RENDER_VARIANTS = {
    "recipe (512 px renders, DIS on a 2x crop)": ({}, {}),
    "TV-L1 on a 2x crop": ({}, {"method": "tvl1"}),
    "DIS on the 224 crop": ({}, {"supersample": 1}),
    "DIS on a 4x crop": ({}, {"supersample": 4}),
    "no sensor noise, no light drift": (_CLEAN, {}),
    "no head sway": ({"jitter_scale": 0.0}, {}),
    "first recipe (256 px renders, TV-L1 on the 224 crop)": (_SMALL, {"method": "tvl1", "supersample": 1}),
    "256 px renders, DIS on a 2x crop": (_SMALL, {}),
    "1024 px renders, DIS on a 2x crop": (_LARGE, {}),
    "1024 px renders, DIS on a 4x crop": (_LARGE, {"supersample": 4}),
    "every lever: 1024 px, 4x crop, clean camera, no head sway": ({**_LARGE, **_CLEAN, "jitter_scale": 0.0},
                                                                  {"supersample": 4}),
}


def _crop_px(sample: dict, layer) -> np.ndarray:
    """The true vertices of ``sample`` projected into each frame's crop: (T, V, 2) 224-crop px."""
    import torch

    from backend.training.dataset import gt_vertices
    from backend.training.losses import project_to_crop

    cam = torch.as_tensor(gt_vertices(sample, layer)[0][None], dtype=torch.float64)
    return project_to_crop(cam, torch.as_tensor(sample["intrinsics"][None], dtype=torch.float64),
                           torch.as_tensor(sample["align"][None], dtype=torch.float64))[0].numpy()


def _still_face(sample: dict, model) -> dict:
    """The same clip without the micro-expression: onset expression and jaw, no off-basis field."""
    out = dict(sample)
    out["gt_expr"] = np.repeat(sample["gt_expr"][:1], len(sample["gt_expr"]), 0)
    out["gt_profile"] = np.zeros_like(sample["gt_profile"])
    pose, jaw = sample["gt_pose"].copy(), model.jaw_pose_slice()
    pose[:, jaw] = pose[:1, jaw]
    out["gt_pose"] = pose
    return out


def flow_minus_rigid(sample: dict, model, layer) -> tuple[np.ndarray, np.ndarray]:
    """(observed, micro), each (T, V, 2) 224-crop px from the onset: the accumulated flow sampled at
    the onset projection minus the true rigid displacement, and the true micro displacement."""
    import torch

    from backend.training.losses import _sample

    moving, rigid = _crop_px(sample, layer), _crop_px(_still_face(sample, model), layer)
    flow = sample["flow"].astype(np.float64)
    acc = np.concatenate([np.zeros_like(flow[:1]), flow.cumsum(0)])               # (T, S, S, 2)
    s = acc.shape[1]
    at = torch.as_tensor(np.repeat(moving[:1], len(acc), 0) * s / 224.0)
    seen = _sample(torch.as_tensor(acc), at, s)[0].numpy()
    return seen - (rigid - rigid[:1]), (moving - moving[:1]) - (rigid - rigid[:1])


def clip_signal(sample: dict, model, observed: np.ndarray, micro: np.ndarray) -> dict[str, float]:
    """The apex statistics of the module docstring."""
    meta = sample["meta"]
    apex = int(meta["apex"])
    labels = model.region_labels
    active = np.isin(labels, [model.region_names.index(r) for r in meta["active_regions"]])
    still = (labels >= 0) & ~active
    mag = np.linalg.norm(micro[apex], axis=1)
    big = active & (mag >= np.median(mag[active]))
    err = np.linalg.norm(observed[apex] - micro[apex], axis=1)
    f, m = observed[apex][big], micro[apex][big]
    return {"peak_mm": float(meta["peak_mm"]), "micro_active_px": float(mag[active].mean()),
            "error_active_px": float(err[active].mean()), "noise_still_px": float(err[still].mean()),
            "gain": float((f * m).sum() / (m ** 2).sum())}


def ceiling(sample: dict, model, layer, observed: np.ndarray, micro: np.ndarray) -> dict[tuple[str, float], object]:
    """backend.training.evaluate Metrics of each oracle linear reader (module docstring) per prior weight."""
    import torch
    from torch.func import jacfwd

    from backend.training.dataset import gt_vertices
    from backend.training.evaluate import micro_metrics
    from backend.head.visibility import vertex_visibility
    from backend.training.losses import project_to_crop

    meta = sample["meta"]
    apex, onset, offset = int(meta["apex"]), int(meta["onset"]), int(meta["offset"])
    labels, jaw = model.region_labels, model.jaw_pose_slice()
    f64 = lambda k: torch.as_tensor(sample[k], dtype=torch.float64)  # noqa: E731
    shape, expr, pose, trans = f64("gt_shape"), f64("gt_expr"), f64("gt_pose"), f64("gt_trans")
    intr, align = f64("intrinsics")[None], f64("align")[None, apex:apex + 1]
    n = expr.shape[1]
    psi0 = torch.cat([expr[0], pose[0, jaw]])

    def crop_at_apex(psi):
        p = pose[apex].clone()
        p[jaw] = psi[n:]
        v, _ = layer(shape[None], psi[None, :n], p[None], trans[apex][None])
        return project_to_crop(v[None], intr, align)[0, 0]

    def head(psi):
        p = torch.zeros_like(pose[0])
        p[jaw] = psi[n:]
        return layer(shape[None], psi[None, :n], p[None])[0][0]

    gt_cam, gt_head = gt_vertices(sample, layer)
    w, h = (int(x) for x in sample["image_size"])
    face = labels >= 0
    seen = face & vertex_visibility(gt_cam[[0, apex]], model.faces, sample["intrinsics"], w, h).all(0)
    jac = jacfwd(crop_at_apex)(psi0)[seen].reshape(-1, psi0.numel())                     # (2V', P) px
    jac_head = jacfwd(head)(psi0)                                                       # (V, 3, P) m
    basis_mm = jac_head[face].reshape(-1, psi0.numel()) * 1000.0
    obs = torch.as_tensor(observed[:, seen].reshape(len(observed), -1))                 # (T, 2V')
    true_px = torch.as_tensor(micro[:, seen].reshape(len(micro), -1))
    profile = torch.as_tensor(sample["gt_profile"], dtype=torch.float64)
    active = np.isin(labels, [model.region_names.index(r) for r in meta["active_regions"]])
    energy = jac_head.norm(dim=1) ** 2
    regional = energy[active].sum(0) / energy[face].sum(0).clamp_min(1e-30) > ENERGY_SHARE
    gram_j, gram_b = jac.T @ jac / seen.sum(), basis_mm.T @ basis_mm / face.sum()
    rhs = obs @ jac / seen.sum()                                                         # (T, P)
    rhs_true = true_px @ jac / seen.sum()

    wsum, rhs_profile, keep = (profile ** 2).sum(), profile @ rhs, regional.nonzero()[:, 0]
    out = {}
    for lam in LAMBDAS:
        a = gram_j + lam * gram_b
        per_frame = torch.linalg.solve(a, rhs.T).T                                       # (T, P)
        a_profile = wsum * gram_j + lam * gram_b
        apex_psi = torch.linalg.solve(a_profile, rhs_profile)
        regional_psi = torch.zeros_like(apex_psi)
        if len(keep):
            regional_psi[keep] = torch.linalg.solve(a_profile[keep][:, keep], rhs_profile[keep])
        from_truth = torch.linalg.solve(a, rhs_true.T).T
        for reader, psi in zip(READERS, (per_frame, profile[:, None] * apex_psi,
                                         profile[:, None] * regional_psi, from_truth)):
            pred = gt_head[0][None] + torch.einsum("vcp,tp->tvc", jac_head, psi).numpy()
            out[(reader, lam)] = micro_metrics(gt_cam, gt_cam, pred, gt_head, labels, model.region_names,
                                               meta["active_regions"], onset, offset)
    return out


def evaluate_clip(sample: dict, model, layer) -> tuple[dict, dict]:
    observed, micro = flow_minus_rigid(sample, model, layer)
    return clip_signal(sample, model, observed, micro), ceiling(sample, model, layer, observed, micro)


def render_sample(seed: int, changes: dict, flow_changes: dict, model) -> dict | None:
    """Held-out seed ``seed`` re-rendered with ``changes`` to its recipe and run through the frontend
    (mp4 round trip included) with ``flow_changes`` to the flow config, in the stored layout. None
    when the frontend drops it."""
    from backend.training.dataset import default_config, draw_synthetic_spec, rendered_sample
    from backend.errors import MicroFaceError

    cfg = default_config()
    cfg.flow = dataclasses.replace(cfg.flow, **flow_changes)
    try:
        return rendered_sample(dataclasses.replace(draw_synthetic_spec(seed), **changes), model, cfg)
    except MicroFaceError:
        return None


def report(title: str, rows: list[tuple[dict, dict]]) -> None:
    signal = [r[0] for r in rows]
    cols = list(signal[0])
    print(f"\n## {title}: {len(rows)} clips\napex frame, 224-crop pixels")
    print("| statistic | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name, fn in (("mean", np.mean), ("median", np.median)):
        print(f"| {name} | " + " | ".join(f"{fn([r[c] for r in signal]):.3f}" for c in cols) + " |")
    snr = np.array([r["micro_active_px"] / r["noise_still_px"] for r in signal])
    print(f"clips whose mean micro-motion exceeds the flow noise: {(snr > 1).sum()} of {len(rows)}")
    print("\noracle linear readers, onset..offset (backend.training.evaluate; best lambda per reader)")
    print("| reader | lambda | recovered share (mean / median) | invented, still | region accuracy |")
    print("|---|---|---|---|---|")
    for reader in READERS:
        def col(lam, key):
            return np.array([getattr(r[1][(reader, lam)], key) for r in rows])
        lam = max(LAMBDAS, key=lambda x: col(x, "recovered_fraction").mean())
        rec = col(lam, "recovered_fraction")
        print(f"| {reader} | {lam:g} | {rec.mean():.3f} / {np.median(rec):.3f} | "
              f"{col(lam, 'invented_still_mm').mean():.3f} mm | {col(lam, 'region_accuracy').mean():.3f} |")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/work/data/microface/heldout")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--render", action="store_true", help="re-render the held-out seeds under RENDER_VARIANTS")
    ap.add_argument("--seed0", type=int, default=900000, help="first held-out seed for --render")
    ap.add_argument("--only", default="", help="with --render: only the variants whose name contains this")
    args = ap.parse_args()

    import torch

    from backend.training.dataset import load_sample
    from backend.head.flame import FlameLayer, load_flame

    torch.set_num_threads(1)
    model = load_flame()
    layer = FlameLayer(model).double()
    if not args.render:
        rows = [evaluate_clip(load_sample(p), model, layer)
                for p in sorted(Path(args.data).glob("clip_*.npz"))[: args.limit or None]]
        report(f"stored held-out clips ({args.data})", rows)
        return 0
    for title, (changes, flow_changes) in RENDER_VARIANTS.items():
        if args.only not in title:
            continue
        rows = []
        for seed in range(args.seed0, args.seed0 + (args.limit or 10)):
            sample = render_sample(seed, changes, flow_changes, model)
            if sample is not None:
                rows.append(evaluate_clip(sample, model, layer))
        report(title, rows)
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
