"""Choose the flow reader's settings on TRAINING clips of every family (never the held-out ones).

    .venv/bin/python experiments/tune_reader.py --data /work/data/microface/families_train
        [--family own,render,injected] [--grid "prior_weight=0.3,1,3;patterns=1,2"]

Each clip's frontend (decode, landmarks, alignment, flow, fit) runs once, through the pipeline's
own functions with its defaults; then every reader setting of the grid reads it and is scored
like benchmarks/bench_heldout.py (head-space motion against the truth, onset..offset; injected
clips as warped minus original). Prints mean recovered share, invented still motion, jitter and
correlation per family and setting, the setting with the best mean recovered share over the
families whose invented motion stays at or under the fit's, and the region rule
(backend.head.regions.calibrate_detection) that calls these clips' regions best from that setting's
motion, as the product calls them (peak over the whole range of the video's own result).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_heldout import correlation  # noqa: E402
from benchmarks.families import FAMILIES, FamilyClip, family_clips  # noqa: E402


def frontend(video: Path, clip: FamilyClip, model):
    """The pipeline's Frontend of one video under its defaults (the clip's fps and focal), and the
    reader's anchored flows (the same for every reader setting)."""
    from backend.config import ReconstructConfig
    from backend.capture.landmarks import detect_landmarks
    from backend.pipeline import reader_flow, run_frontend
    from backend.capture.video import read_clip

    cfg = ReconstructConfig(device="cpu")
    cfg.video.fps = clip.fps
    cfg.fit.focal = clip.focal or None
    c = read_clip(video, cfg.video)
    fe = run_frontend(c, detect_landmarks(c, cfg.landmarks), model, cfg)
    return fe, reader_flow(fe, cfg)


def read_head(front, model, reader) -> np.ndarray:
    """Head-space meshes (T, V, 3) of the reader's motion under ``reader`` (a ReaderConfig, drift
    corrected as the pipeline does) on ``front`` (:func:`frontend`'s pair); None = the fit."""
    from backend.config import ReconstructConfig
    from backend.head.flame import FlameLayer, head_space
    from backend.pipeline import read_motion
    from backend.net.apply import parametric_meshes

    fe, flows = front
    fit = fe.fit
    if reader is None:
        return head_space(FlameLayer(model), fit.shape, fit.expr, fit.pose).astype(np.float64)
    cfg = ReconstructConfig(device="cpu", reader=reader)
    r = read_motion(fe, model, cfg, flows=flows)
    meshes = parametric_meshes(model, fit, r.expr, r.pose, fe.clip.frame_indices, cfg.drift_sigma_s * fe.clip.fps)
    return meshes.vertices_head.astype(np.float64)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="/work/data/microface/families_train")
    ap.add_argument("--family", default=",".join(FAMILIES))
    ap.add_argument("--grid", default="prior_weight=0.3,1,3,10;patterns=1,2",
                    help="NAME=V1,V2;NAME=...: ReaderConfig fields and values")
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()

    import torch

    from backend.config import ReaderConfig, RegionCallConfig
    from backend.training.evaluate import micro_metrics, region_truth
    from backend.head.flame import load_flame
    from backend.head.regions import NOISE_FACTORS, active_regions, calibrate_detection, region_motion

    torch.set_num_threads(1)
    model = load_flame()
    axes = [(k, [type(getattr(ReaderConfig(), k))(v) for v in vals.split(",")])
            for k, vals in (item.split("=") for item in args.grid.split(";"))]
    settings = [None] + [dict(zip([a[0] for a in axes], combo)) for combo in itertools.product(*[a[1] for a in axes])]
    table: dict[str, dict[str, list]] = {}
    peaks: dict[str, list] = {}
    truth: dict[str, list] = {}
    for family in args.family.split(","):
        clips = family_clips(args.data, family)[: args.limit or None]
        for clip in clips:
            fronts = [frontend(v, clip, model) for v in filter(None, (clip.video_path, clip.reference_path))]
            active = np.isin(model.region_labels, [model.region_names.index(r) for r in clip.active_regions])
            for s in settings:
                cfg = None if s is None else dataclasses.replace(ReaderConfig(), **s)
                heads = [read_head(f, model, cfg) for f in fronts]
                head = heads[0] - heads[1] if len(heads) == 2 else heads[0]
                m = micro_metrics(head, head, head, clip.motion_head.astype(np.float64), model.region_labels,
                                  model.region_names, clip.active_regions, clip.onset, clip.offset)
                row = (m.recovered_fraction, m.invented_still_mm, m.jitter_pre_onset_mm,
                       correlation(head, clip.motion_head, active, clip.onset, clip.offset))
                table.setdefault(family, {}).setdefault(str(s or "fit"), []).append(row)
                # What the product's region call sees: the video's own motion, peak over the range.
                peaks.setdefault(str(s or "fit"), []).append(region_motion(heads[0], model.region_labels).max(0))
                truth.setdefault(str(s or "fit"), []).append(region_truth(clip.active_regions, model.region_names))
            print(f"{family} {clip.name} done", file=sys.stderr, flush=True)
    for family, rows in table.items():
        print(f"\n## {family} (training clips: {len(next(iter(rows.values())))})")
        print("| setting | recovered | invented, still | jitter before onset | correlation |\n|---|---|---|---|---|")
        for name, vals in rows.items():
            v = np.nanmean(np.array(vals, np.float64), 0)
            print(f"| {name} | {v[0]:.3f} | {v[1]:.3f} mm | {v[2]:.3f} mm | {v[3]:.3f} |")
    names = list(next(iter(table.values())))
    fit_inv = {f: np.mean([r[1] for r in rows["fit"]]) for f, rows in table.items()}
    ok = [n for n in names[1:] if all(np.mean([r[1] for r in table[f][n]]) <= fit_inv[f] for f in table)]
    best = max(ok or names[1:], key=lambda n: np.mean([np.mean([r[0] for r in table[f][n]]) for f in table]))
    print(f"\nbest on the mean recovered share over {', '.join(table)}"
          f"{'' if ok else ' (none keeps invented motion at the fit level)'}: {best}")
    for name in ("fit", best):
        p, t = np.array(peaks[name]), np.array(truth[name])
        rule = calibrate_detection(p, t, NOISE_FACTORS)
        print(f"{name}: region rule (fraction, floor_mm, noise_factor) {rule}, accuracy on these clips "
              f"{(active_regions(p, *rule) == t).mean():.3f} (the default RegionCallConfig: "
              f"{(active_regions(p, *dataclasses.astuple(RegionCallConfig())) == t).mean():.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
