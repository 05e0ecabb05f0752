"""The paper's Table II here: drop each main component, each DGMD feature and each loss in turn.

    .venv/bin/python experiments/ablations.py --train --steps 300     # train missing variants
    .venv/bin/python experiments/ablations.py --steps 300 --limit 20  # table only

Every variant, "full" included, is trained by ``python -m backend.training.train`` with the same data,
seed and step count (so the rows compare with each other, not with the shipped 2000-step weights)
into ``runs/ablation/<steps>/<name>.pt``; training is resumable, so an interrupted run picks up
where it stopped. The metrics are bench_learned's on the held-out synthetic clips.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_learned import evaluate, print_table  # noqa: E402

# name -> backend.training.train flags; grouped as in the paper's Table II
VARIANTS = {
    "full": [],
    "w/o DEM": ["--no-dem"],
    "w/o DGMD": ["--no-dgmd"],
    "w/o geometry feature": ["--no-geometry"],
    "w/o landmark feature": ["--no-landmarks"],
    "w/o motion feature": ["--no-motion"],
    "w/o geometric losses": ["--no-geo-loss"],
    "w/o Laplacian loss": ["--no-lap"],
    "w/o normal loss": ["--no-normal"],
    "w/o flow-guided loss": ["--no-flow-guide"],
}


def slug(name: str) -> str:
    return name.replace("w/o ", "no_").replace(" ", "_").replace("-", "_")


def train_variant(name: str, flags: list[str], args, folder: Path) -> Path:
    out = folder / f"{slug(name)}.pt"
    if out.exists():
        return out
    cmd = [sys.executable, "-m", "backend.training.train", "--data", args.train_data, "--seeds", args.seeds,
           "--real", args.real, "--real-every", "8", "--steps", str(args.steps),
           "--out", str(out), "--checkpoint", str(folder / f"{slug(name)}.ckpt"), *flags]
    print("[train]", name, " ".join(cmd[1:]), flush=True)
    with open(folder / f"{slug(name)}.log", "a") as log:
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--train", action="store_true", help="train the variants whose weights are missing")
    ap.add_argument("--only", nargs="*", help="variant names (default: all)")
    ap.add_argument("--train-data", default="/work/data/microface/train")
    ap.add_argument("--seeds", default="0:300")
    ap.add_argument("--real", default="/work/data/microface/real")
    ap.add_argument("--data", default="/work/data/microface/heldout", help="held-out clips")
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()

    folder = ROOT / "runs" / "ablation" / str(args.steps)
    folder.mkdir(parents=True, exist_ok=True)
    names = args.only or list(VARIANTS)
    if args.train:
        for name in names:
            train_variant(name, VARIANTS[name], args, folder)

    from backend.training.dataset import load_sample
    from backend.head.flame import FlameLayer, load_flame
    from backend.net.network import load_weights

    flame_model = load_flame()
    nets = {n: load_weights(folder / f"{slug(n)}.pt", flame_model) for n in names
            if (folder / f"{slug(n)}.pt").exists()}
    if not nets:
        raise SystemExit(f"no trained variants in {folder}; run with --train")
    paths = sorted(Path(args.data).glob("clip_*.npz"))[: args.limit or None]
    samples = [load_sample(p) for p in paths]
    print(f"variants trained {args.steps} steps each")
    print_table(evaluate(nets, samples, flame_model, FlameLayer(flame_model)), len(samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
