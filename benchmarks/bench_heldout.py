"""Micro-expression recovery on three families of held-out footage, through the product's CLI.

    .venv/bin/python benchmarks/bench_heldout.py [--family own,render,injected] [--method fit,network,...]
        [--data /work/data/microface/families] [--limit N] [--per-clip] [--fresh] [--flame PATH]

The families (benchmarks/families/): ``own`` the project's synthetic recipe at its capture rate,
``render`` heads rendered by Blender Cycles, ``injected`` real footage with a known micro-expression
warped in. Make them first:

    .venv/bin/python benchmarks/families/own.py --seeds 900000:900010
    .venv/bin/python benchmarks/families/render.py --seeds 910000:910008
    .venv/bin/python benchmarks/families/injected.py

Every clip and method runs ``python -m backend reconstruct VIDEO -o OUT.npz --fps F [--focal f]``
plus the method's flags, as a user would, and is scored from the result file alone: its head-space
meshes (the result's parameters through FLAME with the head's rigid motion removed, plus its mesh
offsets rotated into head space) against the clip's true micro-motion, by backend.training.evaluate's
metrics over onset..offset. An injected clip is scored as reconstruct(warped) - reconstruct(original).

Columns: recovered share of the true motion in the active regions (1 - error / true motion),
active error (mm), invented motion in the still regions (mm), region call accuracy (the result's
own ``meta.region_detection`` against the truth; "-" when the result has none), jitter before the
onset (mm; "-" for injected, whose difference is 0 there by construction), and the correlation of
predicted and true motion in the active regions (cosine over vertices and frames: a scale-free
check of direction). ``--ceiling`` adds the pixel oracle of bench_pixel_ceiling.py run on each
family's own clips (it knows the true head, rigid motion and profile). Results are cached under --runs, keyed by the method's flags and a hash of
the backend's code and weights, so a rerun after a change recomputes only what changed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.families import FAMILIES, FamilyClip, family_clips  # noqa: E402


@dataclass(frozen=True)
class Method:
    flags: tuple[str, ...]
    meshes: str = "vertices"        # which result meshes: "vertices" or "vertices_init"


METHODS = {
    "fit": Method(("--fit-only",)),
    "reader": Method(("--reader",)),
    "reader + photometric": Method(("--reader", "--photometric")),
    "reader + DGMD": Method(("--reader", "--network")),
    "DEM": Method(("--network", "--no-reader"), "vertices_init"),
    "network": Method(("--network", "--no-reader")),
    "network + photometric (0.4.0's product)": Method(("--network", "--no-reader", "--photometric")),
    "product (defaults)": Method(()),
}
DEFAULT_METHODS = ("fit", "network + photometric (0.4.0's product)", "reader")
CEILING_LAMBDAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0, 1000.0)   # the oracle's prior weights
COLUMNS = ("recovered", "active error", "invented, still", "region call", "jitter before onset", "correlation")


def code_hash() -> str:
    """What a result depends on besides its flags: the backend's sources and the shipped weights."""
    h = hashlib.sha256()
    for p in sorted((ROOT / "backend").rglob("*.py")) + [ROOT / "weights" / "microface.pt"]:
        h.update(p.relative_to(ROOT).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def reconstruct(video: Path, clip: FamilyClip, method: Method, runs: Path, fresh: bool,
                flame: str | None = None) -> Path:
    """The result file of ``video`` under ``method`` (with the head model ``flame``, None = the
    default), made by the product's CLI (cached)."""
    flags = list(method.flags) + ["--fps", f"{clip.fps:g}"] + (["--focal", f"{clip.focal:g}"] if clip.focal else [])
    flags += ["--flame", str(Path(flame).resolve())] if flame else []
    key = hashlib.sha256(json.dumps([str(video), flags, code_hash()]).encode()).hexdigest()[:16]
    out = runs / clip.folder.parent.name / clip.name / f"{video.stem}-{key}.npz"
    if out.exists() and not fresh:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "backend", "reconstruct", str(video), "-o", str(out), "--quiet", *flags]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return out


def result_head(path: Path, layer, meshes: str = "vertices") -> tuple[np.ndarray, np.ndarray, dict]:
    """A result file's (camera (T, V, 3), head-space (T, V, 3)) meshes in metres, and its meta.

    Head space: FLAME of the result's shape, expression and pose with the head's rigid motion
    (global and neck rotation, translation) zeroed, plus the result's mesh offsets beyond its
    parameters, rotated back by the head's rotation in that frame."""
    import torch

    from backend.head.flame import head_space
    from backend.net.photometric import frame_rotations
    from backend.contract.result import read_result

    res = read_result(path)
    f32 = dict(dtype=torch.float32)
    with torch.no_grad():
        cam, _ = layer(torch.as_tensor(res.shape, **f32), torch.as_tensor(res.expr, **f32),
                       torch.as_tensor(res.pose, **f32), torch.as_tensor(res.trans, **f32))
    cam = cam.numpy().astype(np.float64)
    head = head_space(layer, res.shape, res.expr, res.pose).astype(np.float64)
    mesh = np.asarray(getattr(res, meshes), np.float64)
    face = layer.model.region_labels >= 0
    rot = frame_rotations(head[:, face], cam[:, face])                          # (T, 3, 3) head -> camera
    return mesh, head + np.einsum("tvi,tij->tvj", mesh - cam, rot), res.meta


def correlation(pred: np.ndarray, true: np.ndarray, active: np.ndarray, onset: int, offset: int) -> float:
    """Cosine of predicted and true motion from the onset over the active vertices, onset..offset."""
    p = (pred[onset:offset + 1] - pred[onset])[:, active].ravel()
    g = (true[onset:offset + 1] - true[onset])[:, active].ravel()
    den = np.linalg.norm(p) * np.linalg.norm(g)
    return float(p @ g / den) if den > 0 else float("nan")


def score(clip: FamilyClip, method: Method, layer, runs: Path, fresh: bool, flame: str | None = None) -> dict[str, float]:
    """``clip``'s metrics under ``method``; ``layer`` is FLAME of the head model ``flame`` the results used."""
    from backend.training.evaluate import micro_metrics, region_truth

    model = layer.model
    cam, head, meta = result_head(reconstruct(clip.video_path, clip, method, runs, fresh, flame), layer,
                                  method.meshes)
    if clip.reference_path is not None:
        _, ref_head, _ = result_head(reconstruct(clip.reference_path, clip, method, runs, fresh, flame), layer,
                                     method.meshes)
        head = head - ref_head
    true = clip.motion_head.astype(np.float64)
    m = micro_metrics(cam, clip.vertices_cam, head, true, model.region_labels, model.region_names,
                      clip.active_regions, clip.onset, clip.offset)
    active = np.isin(model.region_labels, [model.region_names.index(r) for r in clip.active_regions])
    detection = meta.get("region_detection")
    call = float("nan")
    if detection:
        called = region_truth(list(detection["active"]), model.region_names)
        call = float((called == region_truth(clip.active_regions, model.region_names)).mean())
    return {"recovered": m.recovered_fraction, "active error": m.motion_error_active_mm,
            "true motion": m.true_motion_active_mm, "invented, still": m.invented_still_mm, "region call": call,
            "jitter before onset": m.jitter_pre_onset_mm if clip.reference_path is None else float("nan"),
            "correlation": correlation(head, true, active, clip.onset, clip.offset),
            "face px": float(meta.get("face_px", float("nan")))}   # of the video's own result


def pixel_ceiling(clips: list[FamilyClip], layer) -> tuple[float, dict[str, float]]:
    """The pixel oracle of benchmarks/bench_pixel_ceiling.py on each clip that records its head's
    parameters: it knows the true head, its rigid motion and the temporal profile, and reads one
    apex change of expression and jaw from the clip's decoded frames (an injected clip's frames
    against its original's). Returns (the oracle's best
    prior weight on the family's mean recovered share, the mean metrics there)."""
    from benchmarks.bench_pixel_ceiling import PixelTruth, read_pixels
    from backend.config import VideoConfig
    from backend.head.flame import FlameLayer
    from backend.capture.video import read_clip

    model = layer.model
    layer64 = FlameLayer(model).double()
    rows = []
    for c in clips:
        if not c.params:
            continue
        decode = lambda p: read_clip(p, VideoConfig(fps=c.fps, max_side=100000)).frames  # noqa: E731
        frames = decode(c.video_path)
        reference = decode(c.reference_path) if c.reference_path is not None else None
        truth = PixelTruth.of_family_clip(c, frames.shape[2], frames.shape[1])
        rows.append(read_pixels(truth, frames, model, layer64, reference, CEILING_LAMBDAS))
    if not rows:
        return float("nan"), {}
    lam = max(CEILING_LAMBDAS, key=lambda x: np.mean([r[x].recovered_fraction for r in rows]))
    keys = {"recovered": "recovered_fraction", "active error": "motion_error_active_mm",
            "invented, still": "invented_still_mm"}
    return lam, {k: float(np.mean([getattr(r[lam], v) for r in rows])) for k, v in keys.items()} | {"clips": len(rows)}


def _fmt(v: float, unit: str = "") -> str:
    return "-" if not np.isfinite(v) else f"{v:.3f}{unit}"


def print_family(family: str, clips: list[FamilyClip], table: dict[str, list[dict]], per_clip: bool,
                 ceiling: tuple[float, dict] | None = None) -> None:
    true = np.mean([r["true motion"] for r in next(iter(table.values()))])
    print(f"\n## {family}: {len(clips)} clips (true motion in the active regions {true:.3f} mm)")
    print("| method | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for name, rows in table.items():
        cells = []
        for c in COLUMNS:
            vals = np.array([r[c] for r in rows], np.float64)
            mean = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
            cells.append(_fmt(mean, " mm" if c in ("active error", "invented, still", "jitter before onset") else ""))
        print(f"| {name} | " + " | ".join(cells) + " |")
    if ceiling and ceiling[1]:
        lam, c = ceiling
        print(f"| pixel oracle (true head, rigid motion and profile; λ {lam:g}; {c['clips']} clips) | "
              f"{c['recovered']:.3f} | {c['active error']:.3f} mm | {c['invented, still']:.3f} mm | - | - | - |")
    if per_clip:
        print("\nper clip, recovered share: | clip | " + " | ".join(table) + " |")
        for i, c in enumerate(clips):
            print(f"| {c.name} | " + " | ".join(_fmt(rows[i]["recovered"]) for rows in table.values()) + " |")
    sys.stdout.flush()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", default=",".join(FAMILIES), help="comma-separated: " + ", ".join(FAMILIES))
    ap.add_argument("--method", default=",".join(DEFAULT_METHODS), help="comma-separated: " + ", ".join(METHODS))
    ap.add_argument("--data", default="/work/data/microface/families")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "heldout"), help="cache of result files")
    ap.add_argument("--limit", type=int, default=0, help="at most this many clips per family")
    ap.add_argument("--per-clip", action="store_true")
    ap.add_argument("--fresh", action="store_true", help="reconstruct again even when a cached result exists")
    ap.add_argument("--ceiling", action="store_true", help="also the pixel oracle's ceiling per family")
    ap.add_argument("--flame", help="reconstruct with this head model (e.g. benchmarks/flame_variants.py's); "
                                    "the clips' truth is head-space motion, whatever the model")
    args = ap.parse_args()

    from backend.head.flame import FlameLayer, load_flame

    methods = [m.strip() for m in args.method.split(",")]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown method {unknown}; choose from {list(METHODS)}")
    layer = FlameLayer(load_flame(args.flame))
    clip_layer = FlameLayer(load_flame()) if args.flame else layer   # the model the clips' parameters are in
    for family in (f.strip() for f in args.family.split(",")):
        clips = family_clips(args.data, family)[: args.limit or None]
        if not clips:
            print(f"\n## {family}: no clips under {Path(args.data) / family} (see the module docstring)")
            continue
        table = {m: [score(c, METHODS[m], layer, Path(args.runs), args.fresh, args.flame) for c in clips]
                 for m in methods}
        print_family(family, clips, table, args.per_clip, pixel_ceiling(clips, clip_layer) if args.ceiling else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
