"""Frames per second per pipeline stage, and peak memory, on a real clip.

    .venv/bin/python benchmarks/bench_pipeline.py [VIDEO] [--device auto|cpu|cuda] [--flow dis|tvl1] [--supersample K]

Prints one table. Stage times come from the pipeline's own timings (the same code users run).
"""
from __future__ import annotations

import argparse
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_VIDEO = ROOT.parent / "shared" / "videos" / "single_face.mp4"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("video", nargs="?", default=str(DEFAULT_VIDEO))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--flow", choices=("dis", "tvl1"), help="default: FlowConfig's")
    ap.add_argument("--supersample", type=int, help="flow crop side / aligned crop side (default: FlowConfig's)")
    ap.add_argument("--start", type=int)
    ap.add_argument("--end", type=int)
    args = ap.parse_args()

    import torch

    from backend.config import ReconstructConfig
    from backend.pipeline import reconstruct

    cfg = ReconstructConfig(device=args.device)
    if args.flow:
        cfg.flow.method = args.flow
    if args.supersample is not None:   # 0 must reach aligned_flow's error, not mean "default"
        cfg.flow.supersample = args.supersample
    cfg.video.start, cfg.video.end = args.start, args.end
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        _, res = reconstruct(args.video, Path(tmp) / "bench.npz", cfg)
        total = time.perf_counter() - t0
    n = res.n_frames
    timings = res.meta["timings"]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"clip {Path(args.video).name}: {n} frames, {int(res.image_size[0])}x{int(res.image_size[1])} px,"
          f" device {res.meta['device']}, flow {cfg.flow.method} x{cfg.flow.supersample}, torch {torch.__version__}, {platform.processor() or platform.machine()},"
          f" {torch.get_num_threads()} threads")
    print(f"{'stage':<12}{'seconds':>10}{'frames/s':>12}")
    for stage in ("load_model", "decode", "landmarks", "align", "flow", "fit", "reader", "network", "write"):
        s = timings.get(stage, float("nan"))
        frames = n - 1 if stage == "flow" else n
        fps = frames / s if stage not in ("load_model", "write") and s > 0 else float("nan")
        print(f"{stage:<12}{s:>10.2f}{fps:>12.1f}")
    print(f"{'total':<12}{total:>10.2f}{n / total:>12.1f}")
    print(f"peak RSS {peak_mb:.0f} MiB" + (f", peak CUDA {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
                                          if torch.cuda.is_available() else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
