"""Where micro-expression recovery collapses as the face gets smaller in the frame.

    .venv/bin/python experiments/face_size.py [--data /work/data/microface/families_train]
        [--family own,render,injected] [--widths 240,160,110,80,55,40,28] [--limit N]

Each clip of the TRAINING families (benchmarks/families/, the seeds and windows the held-out
benchmark never uses: this run chooses a setting, the small-face bound
``backend.config.ReconstructConfig.min_face_px``) is downscaled with area averaging so that its face spans each
of ``--widths`` pixels (clips already smaller are skipped at that width), written losslessly
(FFV1), and reconstructed by the product's CLI with its default method; the focal length given
scales with the frame. Scored as benchmarks/bench_heldout.py scores it (an injected clip as
reconstruct(warped) - reconstruct(original)), and binned by the face width the result itself
reports (``meta.face_px``).

Face width: the horizontal pixel span of the projected face-region vertices (what
benchmarks/families/render.py draws as ``face_px``), the median over the clip's frames.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_heldout import METHODS, score  # noqa: E402
from benchmarks.families import FamilyClip, family_clips  # noqa: E402

WIDTHS = (240, 160, 110, 80, 55, 40, 28)


def true_face_px(clip: FamilyClip, model) -> float:
    """The clip's face width in source pixels, from its true camera-space meshes."""
    from backend.head.camera import face_width_px

    return face_width_px(clip.vertices_cam, model.region_labels, np.ravel(clip.intrinsics))


def downscale(src: Path, dst: Path, scale: float) -> None:
    """``src`` with every frame resized by ``scale`` (area averaging), written as FFV1 to ``dst``."""
    import cv2

    from backend.contract.atomic import atomic_path

    cap = cv2.VideoCapture(str(src))
    fps = cap.get(cv2.CAP_PROP_FPS)
    ok, frame = cap.read()
    if not ok:
        raise RuntimeError(f"{src}: no frames")
    h, w = frame.shape[:2]
    size = (max(16, round(w * scale)), max(16, round(h * scale)))
    with atomic_path(dst) as tmp:
        out = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"FFV1"), fps, size)
        while ok:
            out.write(cv2.resize(frame, size, interpolation=cv2.INTER_AREA))
            ok, frame = cap.read()
        out.release()
    cap.release()


def scaled_clip(clip: FamilyClip, scale: float, root: Path) -> FamilyClip:
    """``clip`` downscaled by ``scale`` into ``root/<family>/<clip>-<scale>/`` (kept between runs)."""
    folder = root / clip.folder.parent.name / f"{clip.name}-{scale:.4f}"
    folder.mkdir(parents=True, exist_ok=True)
    names = {}
    for kind, path in (("video", clip.video_path), ("reference", clip.reference_path)):
        if path is None:
            continue
        names[kind] = path.stem + ".mkv"
        if not (folder / names[kind]).is_file():
            downscale(path, folder / names[kind], scale)
    return dataclasses.replace(clip, folder=folder, video=names["video"], reference=names.get("reference", ""),
                               focal=clip.focal * scale if clip.focal else 0.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="/work/data/microface/families_train")
    ap.add_argument("--family", default="own,render,injected")
    ap.add_argument("--widths", default=",".join(map(str, WIDTHS)), help="face widths to scale to, pixels")
    ap.add_argument("--limit", type=int, default=0, help="at most this many clips per family")
    ap.add_argument("--work", default="/work/data/microface/face_size", help="downscaled clips and their results")
    args = ap.parse_args()

    from backend.head.flame import FlameLayer, load_flame

    layer = FlameLayer(load_flame())
    widths = [float(w) for w in args.widths.split(",")]
    method = METHODS["product (defaults)"]
    work = Path(args.work)
    rows = []   # (family, target width or 0 for full size, reported face px, recovered, correlation)
    for family in args.family.split(","):
        for clip in family_clips(args.data, family)[: args.limit or None]:
            full = true_face_px(clip, layer.model)
            for w in [0.0] + [w for w in widths if w < full]:
                c = clip if not w else scaled_clip(clip, w / full, work)
                try:
                    s = score(c, method, layer, work / "runs", False)
                except RuntimeError as exc:   # the product refused the clip (no face found at this size)
                    print(f"  {family} {clip.name} {w:.0f} px: {exc}", flush=True)
                    rows.append((family, w, float("nan"), float("nan"), float("nan")))
                    continue
                px = s["face px"]
                rows.append((family, w, px, s["recovered"], s["correlation"]))
                print(f"  {family} {clip.name}: {w or full:.0f} px (reported {px:.0f}), recovered "
                      f"{s['recovered']:.3f}, correlation {s['correlation']:.3f}", flush=True)

    print("\n| face scaled to | face width reported (mean px) | family | clips | recovered | correlation |")
    print("|---|---|---|---|---|---|")
    for family in args.family.split(","):
        for w in [0.0] + widths:
            sel = np.array([r[2:] for r in rows if r[0] == family and r[1] == w], np.float64).reshape(-1, 3)
            if not len(sel):
                continue
            refused = int(np.isnan(sel[:, 0]).sum())
            mean = np.nanmean(sel, 0) if refused < len(sel) else np.full(3, np.nan)
            print(f"| {'full size' if not w else f'{w:g} px'} | {mean[0]:.0f} | {family} | {len(sel)}"
                  f"{f' ({refused} refused)' if refused else ''} | {mean[1]:.3f} | {mean[2]:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
