"""Held-out synthetic micro-expressions: fit-only baseline vs DEM only vs the full model.

    .venv/bin/python benchmarks/bench_learned.py --weights weights/microface.pt --data /work/data/microface/heldout
        [--calibrate /work/data/microface/train] [--ablation NAME=PATH ...] [--limit N] [--per-clip]

Held-out clips come from `python -m backend.training.dataset synth DIR --seeds 900000:900040` (seeds never
used in training). Each clip runs as one window from its first frame; metrics are
backend/training/evaluate.py's, averaged over clips: micro-motion error in the active regions and invented
motion in the still ones (mm), the share of true motion recovered, region detection accuracy,
and jitter before the onset. Regions are called active by the truth's own rule and, with
``--calibrate DIR``, also by each method's rule calibrated on the training clips in DIR
(backend.training.calibrate), which knows each method's noise floor.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLUMNS = ("recovered_fraction", "motion_error_active_mm", "true_motion_active_mm", "invented_still_mm",
           "region_accuracy", "region_accuracy_calibrated", "jitter_pre_onset_mm", "face_error_aligned_mm")
GOALS = "goals: recovered >= 0.60, invented <= 0.10 mm, region accuracy >= 0.90, jitter <= 0.05 mm"


def calibrate(nets: dict, paths: list[Path], flame_model, layer) -> dict[str, tuple[float, float, float]]:
    """Per method, the (fraction, floor_mm) region rule that detects best on the clips ``paths``."""
    from backend.training.calibrate import region_peaks
    from backend.training.dataset import load_sample
    from backend.head.regions import calibrate_detection

    peaks, truth = region_peaks([load_sample(p) for p in paths], layer, nets)
    return {name: calibrate_detection(p, truth) for name, p in peaks.items()}


def clip_metrics(nets: dict, samples: list[dict], flame_model, layer,
                 detection: dict[str, tuple[float, float]] | None = None) -> dict[str, list[dict]]:
    """Per method, one metrics dict per sample (see backend.training.evaluate.compare_methods)."""
    from backend.training.evaluate import compare_methods

    rows: dict[str, list[dict]] = {}
    for s in samples:
        for name, m in compare_methods(s, flame_model, layer, nets, detection).items():
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
    cols = [k for k in COLUMNS if not all(np.isnan(row[k]) for row in table.values())]
    print(f"held-out synthetic clips: {n}")
    print("| method | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row[k]:.3f}" for k in cols) + " |")
    print(GOALS)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default=str(ROOT / "weights" / "microface.pt"))
    ap.add_argument("--data", default="/work/data/microface/heldout")
    ap.add_argument("--ablation", nargs="*", default=[], metavar="NAME=PATH", help="more trained variants")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--per-clip", action="store_true", help="also the full model against the fit, clip by clip")
    ap.add_argument("--calibrate", metavar="DIR", help="training clips on which to calibrate each method's region rule")
    args = ap.parse_args()

    from backend.training.dataset import load_sample
    from backend.head.flame import FlameLayer, load_flame
    from backend.net.network import load_weights

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
    detection = None
    if args.calibrate:
        detection = calibrate(nets, sorted(Path(args.calibrate).glob("clip_*.npz")), flame_model, layer)
        for name, (fraction, floor, _) in detection.items():
            print(f"{name}: regions called active at >= {fraction:.2f} of the largest and >= {floor:.2f} mm")
    rows = clip_metrics(nets, samples, flame_model, layer, detection)
    print_table(means(rows), len(samples))
    if args.per_clip:
        print_wins(rows, [int(s["meta"]["seed"]) for s in samples])
    return 0


if __name__ == "__main__":
    sys.exit(main())
