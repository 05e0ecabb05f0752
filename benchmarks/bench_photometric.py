"""The photometric refinement (backend/net/photometric.py) on re-rendered synthetic clips with truth.

    .venv/bin/python benchmarks/bench_photometric.py [--seeds LO:HI] [--weights W] [--prior 100,300,1000]

Stored samples hold the flow, not the frames, so each seed is rendered again exactly as
``backend.training.dataset synth`` renders it and run through the same frontend (mp4 round trip included),
keeping the decoded frames the frontend saw.
Then, from the frames alone, the shipped network (with the pipeline's drift correction) and the
network followed by the photometric stage at each prior weight, scored by backend.training.evaluate over
onset..offset like bench_learned.py. Choose the prior weight on training seeds (e.g. 0:40), report
it on held-out ones (900000:900040).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLUMNS = ("recovered_fraction", "motion_error_active_mm", "invented_still_mm", "region_accuracy",
           "region_accuracy_calibrated", "jitter_pre_onset_mm")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="900000:900040", help="LO:HI synthetic seeds to render")
    ap.add_argument("--weights", default=str(ROOT / "weights" / "microface.pt"))
    ap.add_argument("--prior", default="300,1000,3000", help="prior weights λ to compare")
    args = ap.parse_args()

    import torch

    from backend.config import PhotometricConfig, ReconstructConfig
    from backend.training.dataset import default_config, draw_synthetic_spec, gt_vertices, rendered_sample
    from backend.training.evaluate import micro_metrics
    from backend.head.flame import FlameLayer, load_flame
    from backend.net.network import load_weights
    from backend.net.photometric import correct_photometric
    from backend.net.apply import apply_network

    torch.set_num_threads(1)
    model = load_flame()
    layer = FlameLayer(model)
    net = load_weights(args.weights, model)
    detection = (net.detection["fraction"], net.detection["floor_mm"]) if net.detection else None
    lo, hi = (int(x) for x in args.seeds.split(":"))
    priors = [float(x) for x in args.prior.split(",")]
    rows, seconds, lengths = [], [], []
    for seed in range(lo, hi):
        sample = rendered_sample(draw_synthetic_spec(seed), model, default_config(), keep_frames=True)
        meta, frames = sample["meta"], sample["frames"]
        lengths.append(len(frames))
        gt_cam, gt_head = gt_vertices(sample, layer)
        refined = apply_network(net, sample, drift_sigma=ReconstructConfig().drift_sigma_s * meta["fps"])

        def score(r):
            return micro_metrics(r.vertices, gt_cam, r.vertices_head, gt_head, model.region_labels,
                                 model.region_names, meta["active_regions"], meta["onset"], meta["offset"], detection)
        row = {"network": score(refined)}
        for prior in priors:
            cfg = dataclasses.replace(PhotometricConfig(), prior_weight=prior)
            t0 = time.perf_counter()
            out, _ = correct_photometric(frames, refined, model, sample["fit_shape"], sample["fit_trans"],
                                        sample["intrinsics"], sample["valid"], cfg)
            seconds.append(time.perf_counter() - t0)
            row[f"+ photometric, λ = {prior:g}"] = score(out)
        rows.append(row)
        print(f"{seed}: " + "  ".join(f"{k.split('= ')[-1]} {m.recovered_fraction:.3f}" for k, m in row.items()),
              flush=True)

    print(f"\n{len(rows)} clips, seeds {lo}:{hi}; photometric stage {np.mean(seconds):.2f} s per clip "
          f"({np.mean(lengths):.0f} frames on average)\n")
    print("| method | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for name in rows[0]:
        print(f"| {name} | " + " | ".join(f"{np.nanmean([getattr(r[name], c) for r in rows]):.3f}"
                                           for c in COLUMNS) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
