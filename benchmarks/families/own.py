"""The ``own`` family: the project's synthetic recipe, as the product meets it.

    .venv/bin/python benchmarks/families/own.py --out /work/data/microface/families --seeds 900000:900010

Each seed's recipe (backend.training.dataset.draw_synthetic_spec: regions, peak, head angles, sway, noise,
light drift) is rendered by backend.synthetic.synth at its capture rate, every frame (stride 1), not as the
stride-sampled training window, and written as the recipe's mp4 (mp4v). Held-out seeds are
900000 and up, the same ones as the stored held-out windows; training uses seeds below 900000.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.families import FamilyClip, new_clip_folder, save_clip  # noqa: E402

HELDOUT_SEED0 = 900000


def capture_rate_spec(seed: int):
    """The recipe of ``seed`` at its capture rate: every captured frame instead of every stride-th."""
    from backend.training.dataset import draw_synthetic_spec

    spec = draw_synthetic_spec(seed)
    s = spec.stride
    return dataclasses.replace(spec, stride=1, n_frames=(spec.n_frames - 1) * s + 1, onset=spec.onset * s,
                               apex=spec.apex * s, offset=spec.offset * s)


def make_clip(seed: int, model, out_root: Path) -> Path | None:
    """Render seed ``seed`` into ``out_root/own/<seed>/`` (skipped when it exists)."""
    from backend.training.dataset import _render
    from backend.synthetic.synth import write_video

    final = out_root / "own" / str(seed)
    if (final / "clip.npz").exists():
        return None
    spec = capture_rate_spec(seed)
    t0 = time.perf_counter()
    clip, peak = _render(spec, model)
    with new_clip_folder(final) as tmp:
        write_video(clip, tmp / "video.mp4")
        save_clip(FamilyClip(
            folder=tmp, video="video.mp4", fps=clip.fps, focal=float(clip.intrinsics[0]), onset=clip.onset,
            apex=clip.apex, offset=clip.offset, motion_head=clip.vertices_head - clip.vertices_head[:1],
            vertices_cam=clip.vertices, intrinsics=clip.intrinsics, profile=clip.profile,
            active_regions=list(clip.active_regions), peak_mm=peak,
            info={"seed": int(seed), "renderer": "backend.synthetic.synth", "codec": "mp4v", "frames": len(clip.frames),
                  "size": [clip.width, clip.height], "spec": dataclasses.asdict(spec),
                  "seconds": round(time.perf_counter() - t0, 1)},
            params={"shape": clip.shape, "expr": clip.expr, "pose": clip.pose, "trans": clip.trans}))
    return final


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/work/data/microface/families")
    ap.add_argument("--seeds", default=f"{HELDOUT_SEED0}:{HELDOUT_SEED0 + 10}", help="LO:HI")
    args = ap.parse_args()
    from backend.head.flame import load_flame

    model = load_flame()
    lo, hi = (int(x) for x in args.seeds.split(":"))
    for seed in range(lo, hi):
        t = time.perf_counter()
        path = make_clip(seed, model, Path(args.out))
        print(f"seed {seed}: {'exists' if path is None else path} ({time.perf_counter() - t:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
