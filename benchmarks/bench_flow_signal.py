"""How much of a synthetic micro-expression the TV-L1 flow can see: the ceiling of any flow-driven model.

    .venv/bin/python benchmarks/bench_flow_signal.py [--data DIR] [--limit N]

On held-out clips with known truth, at the apex frame, in 224-crop pixels:
- micro: the true crop displacement due to the micro-expression alone, i.e. the true vertices
  minus the same head with the onset expression, onset jaw and no off-basis field, both projected
  through each frame's own alignment;
- flow: the stored flow (the network's input) accumulated from the onset, sampled at the onset
  projection of each vertex, minus the true displacement without the micro-expression (the head's
  rigid motion, removed exactly as no method could);
- error = |flow - micro| per vertex, in the active regions and in the still ones (where micro is 0,
  so it is the flow's own noise); gain = <flow, micro> / <micro, micro> over the active vertices
  with the larger half of the motion (1 = the flow reads the motion at full size).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def clip_signal(sample: dict, model, layer) -> dict[str, float]:
    import torch

    from backend.dataset import gt_vertices
    from backend.losses import _sample, project_to_crop

    meta = sample["meta"]
    apex = int(meta["apex"])
    jaw = slice(3 * model.joint_names.index("jaw"), 3 * model.joint_names.index("jaw") + 3)
    still_face = dict(sample)
    still_face["gt_expr"] = np.repeat(sample["gt_expr"][:1], len(sample["gt_expr"]), 0)
    still_face["gt_profile"] = np.zeros_like(sample["gt_profile"])
    pose = sample["gt_pose"].copy()
    pose[:, jaw] = pose[:1, jaw]
    still_face["gt_pose"] = pose

    def crop_px(s: dict) -> np.ndarray:
        cam = torch.as_tensor(gt_vertices(s, layer)[0][None], dtype=torch.float64)
        return project_to_crop(cam, torch.as_tensor(s["intrinsics"][None], dtype=torch.float64),
                               torch.as_tensor(s["align"][None], dtype=torch.float64))[0].numpy()

    moving, rigid = crop_px(sample), crop_px(still_face)
    micro = (moving[apex] - moving[0]) - (rigid[apex] - rigid[0])
    acc = sample["flow"].astype(np.float64)[:apex].sum(0)                       # (S, S, 2), 224-crop px
    s = acc.shape[0]
    seen = _sample(torch.as_tensor(acc[None]), torch.as_tensor(moving[0][None] * s / 224.0), s)[0][0].numpy()
    flow = seen - (rigid[apex] - rigid[0])
    labels = model.region_labels
    active = np.isin(labels, [model.region_names.index(r) for r in meta["active_regions"]])
    still = (labels >= 0) & ~active
    mag = np.linalg.norm(micro, axis=1)
    big = active & (mag >= np.median(mag[active]))
    err = np.linalg.norm(flow - micro, axis=1)
    return {"peak_mm": float(meta["peak_mm"]), "micro_active_px": float(mag[active].mean()),
            "error_active_px": float(err[active].mean()), "noise_still_px": float(err[still].mean()),
            "gain": float((flow[big] * micro[big]).sum() / (micro[big] ** 2).sum())}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/work/data/microface/heldout")
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()

    from backend.dataset import load_sample
    from backend.flame import FlameLayer, load_flame

    model = load_flame()
    layer = FlameLayer(model)
    rows = [clip_signal(load_sample(p), model, layer)
            for p in sorted(Path(args.data).glob("clip_*.npz"))[: args.limit or None]]
    cols = list(rows[0])
    print(f"held-out clips: {len(rows)}, apex frame, 224-crop pixels")
    print("| statistic | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name, fn in (("mean", np.mean), ("median", np.median)):
        print(f"| {name} | " + " | ".join(f"{fn([r[c] for r in rows]):.3f}" for c in cols) + " |")
    snr = np.array([r["micro_active_px"] / r["noise_still_px"] for r in rows])
    print(f"clips whose mean micro-motion exceeds the flow noise: {(snr > 1).sum()} of {len(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
