"""Prepare what benchmarks/gpu_check.sh needs on a bare CUDA machine, in ``.gpu/`` (git-ignored).

    .venv/bin/python benchmarks/gpu_prepare.py [--train /work/data/microface/train] [--samples 4]

The lent machine has Python 3.12 with torch, OpenCV (headless) and scipy, no ``../shared`` and no
internet; what travels with the working tree must stay under 64 MiB. So ``.gpu/`` holds:
- ``assets/``: the head model with only its used blendshape columns, in float32 (same geometry,
  9 MB instead of 48), and the masks and landmark embeddings beside it;
- ``videos/single_face.mp4`` for the pipeline benchmark;
- ``train/``: a few stored training samples for the timed training run;
- ``wheels/``: mediapipe 0.10.21 for CPython 3.12 (the machine lacks it), fetched by pip.
"""
from __future__ import annotations

import argparse
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"
COMPANIONS = ("FLAME_masks.pkl", "landmark_embedding_68.npz", "landmark_embedding.npy",
              "mediapipe_landmark_embedding.npz", "head_template.obj")


def trimmed_model(src: Path, dst: Path) -> None:
    """The stand-in with the identity and expression columns it uses, float32, as a plain pickle."""
    from backend.head import safe_pickle

    d = dict(safe_pickle.load(src))
    n_shape, n_expr = int(d["n_shape"]), int(d["n_expr"])
    s0, e0 = int(d.get("shape_offset", 0)), int(d["expr_offset"])
    dirs = d["shapedirs"]
    d["shapedirs"] = np.concatenate([dirs[:, :, s0:s0 + n_shape], dirs[:, :, e0:e0 + n_expr]], 2).astype(np.float32)
    d["shape_offset"], d["expr_offset"] = 0, n_shape
    for k in ("v_template", "posedirs", "weights", "J_regressor", "J"):
        d[k] = np.asarray(d[k], np.float32)
    with open(dst, "wb") as fh:
        pickle.dump(d, fh, protocol=2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", default="/work/data/microface/train")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--out", default=str(ROOT / ".gpu"))
    args = ap.parse_args()
    out = Path(args.out)
    for sub in ("assets", "videos", "train", "wheels"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    flame = SHARED / "assets" / "flame"
    trimmed_model(flame / "microface_ict_flame.pkl", out / "assets" / "microface_ict_flame.pkl")
    for name in COMPANIONS:
        shutil.copy2(flame / name, out / "assets" / name)
    shutil.copy2(SHARED / "videos" / "single_face.mp4", out / "videos" / "single_face.mp4")
    samples = sorted(Path(args.train).glob("clip_*.npz"))[: args.samples]
    if not samples:
        raise SystemExit(f"no training samples in {args.train}: make some with python -m backend.training.dataset synth")
    for p in samples:
        shutil.copy2(p, out / "train" / p.name)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                    "-d", str(out / "wheels"), "mediapipe==0.10.21"], check=True)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {size / 2 ** 20:.1f} MiB (the working tree that travels must stay under 64 MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
