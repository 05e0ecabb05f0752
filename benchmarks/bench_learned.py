"""Held-out synthetic micro-expressions: fit-only baseline vs DEM only vs the full model.

    .venv/bin/python benchmarks/bench_learned.py --weights weights/microface.pt --data /work/data/microface/heldout
        [--ablation NAME=PATH ...] [--limit N] [--per-clip]

Held-out clips come from `python -m backend.dataset synth DIR --seeds 900000:900040` (seeds never
used in training). Each clip runs as one window from its first frame; metrics are
backend/evaluate.py's, averaged over clips: micro-motion error in the active regions and invented
motion in the still ones (mm), the share of true motion recovered, region detection accuracy,
and jitter before the onset.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLUMNS = ("recovered_fraction", "motion_error_active_mm", "true_motion_active_mm", "invented_still_mm",
           "region_accuracy", "jitter_pre_onset_mm", "face_error_aligned_mm")
GOALS = "goals: recovered >= 0.60, invented <= 0.10 mm, region accuracy >= 0.90, jitter <= 0.05 mm"


def clip_metrics(nets: dict, samples: list[dict], flame_model, layer) -> dict[str, list[dict]]:
    """Per method, one metrics dict per sample (see backend.evaluate.compare_methods)."""
    from backend.evaluate import compare_methods

    rows: dict[str, list[dict]] = {}
    for s in samples:
        for name, m in compare_methods(s, flame_model, layer, nets).items():
            rows.setdefault(name, []).append(m.as_dict())
    return rows


def means(rows: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    return {name: {k: float(np.mean([r[k] for r in rs])) for k in COLUMNS} for name, rs in rows.items()}


def evaluate(nets: dict, samples: list[dict], flame_model, layer) -> dict[str, dict[str, float]]:
    """Mean metrics per method over ``samples``."""
    return means(clip_metrics(nets, samples, flame_model, layer))


def print_wins(rows: dict[str, list[dict]], seeds: list[int]) -> None:
    """Per clip, the full model against the fit: where tests/test_shipped_weights.py takes its margins."""
    keys = ("motion_error_active_mm", "invented_still_mm", "jitter_pre_onset_mm")
    print("| seed | " + " | ".join(f"{k}: fit / full" for k in keys) + " |")
    print("|---|" + "---|" * len(keys))
    for seed, fit, full in zip(seeds, rows["fit only"], rows["full"]):
        print(f"| {seed} | " + " | ".join(f"{fit[k]:.3f} / {full[k]:.3f}" for k in keys) + " |")
    for k in keys:
        margin = np.array([f[k] - n[k] for f, n in zip(rows["fit only"], rows["full"])])
        print(f"{k}: the full model is lower in {np.mean(margin > 0):.0%} of clips, median margin {np.median(margin):.3f}")


def print_table(table: dict[str, dict[str, float]], n: int) -> None:
    print(f"held-out synthetic clips: {n}")
    print("| method | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row[k]:.3f}" for k in COLUMNS) + " |")
    print(GOALS)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default=str(ROOT / "weights" / "microface.pt"))
    ap.add_argument("--data", default="/work/data/microface/heldout")
    ap.add_argument("--ablation", nargs="*", default=[], metavar="NAME=PATH", help="more trained variants")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--per-clip", action="store_true", help="also the full model against the fit, clip by clip")
    args = ap.parse_args()

    from backend.dataset import load_sample
    from backend.flame import FlameLayer, load_flame
    from backend.model import load_weights

    flame_model = load_flame()
    layer = FlameLayer(flame_model)
    paths = sorted(Path(args.data).glob("clip_*.npz"))
    if args.limit:
        paths = paths[: args.limit]
    samples = [load_sample(p) for p in paths]
    nets = {"full": load_weights(args.weights, flame_model)}
    for spec in args.ablation:
        name, path = spec.split("=", 1)
        nets[name] = load_weights(path, flame_model)
    rows = clip_metrics(nets, samples, flame_model, layer)
    print_table(means(rows), len(samples))
    if args.per_clip:
        print_wins(rows, [int(s["meta"]["seed"]) for s in samples])
    return 0


if __name__ == "__main__":
    sys.exit(main())
