"""Calibrate a network's region detection on synthetic clips with truth, and store the rule in its weights.

A region is called active when its peak motion from the onset is at least a fraction of the
most-moving region's and above a floor (backend/head/regions.py). Each method has its own noise, so
the best (fraction, floor) is chosen where the truth is known: on the training clips, never on
the held-out ones. Training does this at its end; for weights trained before, run

    .venv/bin/python -m backend.training.calibrate --weights weights/microface.pt --data /work/data/microface/train --seeds 0:300

The pipeline applies the stored rule to every refined result (the result's meta region_detection).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def region_peaks(samples: list[dict], layer, nets: dict) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each method's (N, R) peak region motion in mm over onset..offset of the N ``samples``
    (methods of :func:`backend.training.evaluate.method_meshes`) and the truth's (N, R) active regions."""
    from .evaluate import method_meshes, region_peak_motion, region_truth

    peaks: dict[str, list[np.ndarray]] = {}
    truth = []
    model = layer.model
    for s in samples:
        meta = s["meta"]
        truth.append(region_truth(meta["active_regions"], model.region_names))
        for name, (_, head) in method_meshes(s, layer, nets).items():
            peaks.setdefault(name, []).append(region_peak_motion(head, model.region_labels, len(model.region_names),
                                                                 int(meta["onset"]), int(meta["offset"])))
    return {name: np.array(p) for name, p in peaks.items()}, np.array(truth)


def detection_rule(net, samples: list[dict]) -> dict:
    """The region rule that calls the truth of ``samples`` (synthetic, with truth) best from the
    network's final meshes: {"fraction", "floor_mm", "noise_factor", "accuracy" (share of regions
    called right), "clips"}."""
    from ..head.regions import NOISE_FACTORS, active_regions, calibrate_detection

    peaks, truth = region_peaks(samples, net.flame, {"net": net})
    rule = calibrate_detection(peaks["net"], truth, NOISE_FACTORS)
    accuracy = float((active_regions(peaks["net"], *rule) == truth).mean())
    return {"fraction": float(rule[0]), "floor_mm": float(rule[1]), "noise_factor": float(rule[2]),
            "accuracy": round(accuracy, 4), "clips": len(samples)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m backend.training.calibrate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True, help="weights file to calibrate; rewritten in place")
    ap.add_argument("--data", nargs="+", required=True, help="folders of synthetic training samples (clip_*.npz)")
    ap.add_argument("--seeds", help="LO:HI, only clips with seeds in [LO, HI) (the ones it trained on)")
    a = ap.parse_args(argv)

    from ..head.flame import load_flame
    from ..net.network import load_weights, save_weights
    from .dataset import load_samples

    path = Path(a.weights)
    net = load_weights(path, load_flame())
    seeds = tuple(int(x) for x in a.seeds.split(":")) if a.seeds else None
    samples = [s for d in a.data for s in load_samples(d, "clip_*.npz", seeds)]
    if not samples:
        raise SystemExit(f"no synthetic samples (clip_*.npz) in {a.data}")
    t0 = time.perf_counter()
    net.detection = detection_rule(net, samples)
    prov_path = path.with_suffix(path.suffix + ".json")
    provenance = json.loads(prov_path.read_text()) if prov_path.is_file() else {}
    provenance["detection"] = {**net.detection, "command": "python -m backend.training.calibrate " + " ".join(sys.argv[1:])}
    save_weights(net, path, provenance)
    print(json.dumps({"event": "calibrated", **net.detection, "seconds": round(time.perf_counter() - t0, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
