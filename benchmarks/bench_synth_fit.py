"""Accuracy of the fit-only baseline on synthetic micro-expression clips with known ground truth.

    .venv/bin/python benchmarks/bench_synth_fit.py [--seeds 100 101 102] [--flow dis]

Each clip is rendered, written to mp4, run through the same pipeline users run (decode,
landmarks, alignment, flow, fit), and compared with the truth (backend/training/evaluate.py).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REGION_SETS = (("mouth",), ("left_eye",), ("forehead",), ("right_cheek", "mouth"), ("nose",))


def run_clip(seed: int, regions: tuple[str, ...], flow: str = "dis", model=None, layer=None, tmp: Path | None = None,
             fit_overrides: dict | None = None, **synth_overrides):
    """Render one clip, reconstruct it through the pipeline, return (Metrics, SynthClip, Result)."""
    from backend.config import ReconstructConfig
    from backend.training.evaluate import micro_metrics
    from backend.head.flame import head_space
    from backend.pipeline import reconstruct
    from backend.synthetic.synth import MicroExpressionSpec, SynthConfig, generate, write_video

    cfg = SynthConfig(seed=seed, micro=MicroExpressionSpec(regions=regions), **synth_overrides)
    clip = generate(cfg, model)
    video = write_video(clip, tmp / f"synth_{seed}.mp4")
    rc = ReconstructConfig(device="cpu")  # the static fit alone: no network, no reader
    rc.reader.enabled = False
    rc.flow.method = flow
    rc.video.fps = clip.fps
    rc.fit.focal = float(clip.intrinsics[0])
    for k, v in (fit_overrides or {}).items():
        setattr(rc.fit, k, v)
    _, res = reconstruct(video, tmp / f"synth_{seed}.npz", rc)
    pred_head = head_space(layer, res.shape, res.expr, res.pose)
    m = micro_metrics(res.vertices, clip.vertices, pred_head, clip.vertices_head, model.region_labels,
                      model.region_names, clip.active_regions, clip.onset, clip.offset)
    return m, clip, res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102, 103, 104])
    ap.add_argument("--flow", default="dis", choices=("tvl1", "dis"))
    ap.add_argument("--fit", nargs="*", default=[], metavar="NAME=VALUE", help="FitConfig overrides")
    args = ap.parse_args()
    fit_overrides = {k: float(v) for k, v in (a.split("=") for a in args.fit)}

    from backend.head.flame import FlameLayer, load_flame

    model = load_flame()
    layer = FlameLayer(model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, seed in enumerate(args.seeds):
            regions = REGION_SETS[i % len(REGION_SETS)]
            t0 = time.perf_counter()
            m, clip, res = run_clip(seed, regions, args.flow, model, layer, Path(tmp), fit_overrides)
            d = m.as_dict()
            rows.append(d)
            print(f"seed {seed} regions {'+'.join(regions)} (active: {','.join(clip.active_regions)}) "
                  f"reproj {np.median(res.fit_error_px):.2f}px  {time.perf_counter() - t0:.1f}s")
            print("   " + "  ".join(f"{k}={v}" for k, v in d.items()))
    keys = rows[0].keys()
    print("mean over clips: " + "  ".join(f"{k}={np.mean([r[k] for r in rows]):.3f}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
