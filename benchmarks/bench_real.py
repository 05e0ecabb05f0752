"""Real clips (no ground truth): fit only vs DEM only vs the full model, without and with the
photometric refinement (backend/net/photometric.py), which is forced here onto the whole range (the
pipeline runs it only on ranges of at most PhotometricConfig.max_seconds), and the flow reader
(backend/capture/flow_reader.py) on the fit.

    .venv/bin/python benchmarks/bench_real.py [VIDEO ...] [--end N] [--weights PATH] [--no-network]

Per clip, the frontend runs once (landmarks, alignment, flow, the static fit) and the shipped
network refines its output, so the three methods see the same inputs. Metrics, over frames with
a detected, unoccluded face:
- reprojection: the mesh's MediaPipe-point embedding projected against the detected MediaPipe
  points, mean source pixels, and as % of the outer eye-corner distance;
- still jitter: mean |V_t+1 - V_t| in head space (face vertices, mm) over frame pairs where the
  face does not move: the 90th percentile of the flow magnitude inside the face is below
  STILL_PX crop pixels;
- photometric L1: windows of WINDOW frames, each starting at its own onset; the colour each
  visible vertex picks up in the onset crop against the colour at its projection in frame t,
  0..255 (losses.photometric_loss), averaged over windows whose frames all hold a valid face.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VIDEOS = sorted((ROOT.parent / "shared" / "videos").glob("*.mp4"))
STILL_PX = 0.25
WINDOW = 16


def still_pairs(flow: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(T-1,) bool from pair flow (T-1, S, S, 2) crop px: the face (the crop's central half) is still."""
    s = flow.shape[1]
    c = flow[:, s // 4: 3 * s // 4, s // 4: 3 * s // 4]
    p90 = np.percentile(np.linalg.norm(c, axis=-1).reshape(len(c), -1), 90, axis=1)
    return (p90 < STILL_PX) & valid[:-1] & valid[1:]


def metrics(fe, inputs: dict, verts: np.ndarray, head: np.ndarray, model, good: np.ndarray,
            still: np.ndarray) -> dict[str, float]:
    import torch

    from backend.head.camera import project_np
    from backend.head.visibility import vertex_visibility
    from backend.training.losses import photometric_loss

    lmk = inputs["lmk_mp"][:, model.mp_indices]
    pred = np.stack([project_np(model.embed(v, "mp"), inputs["intrinsics"].astype(np.float64)) for v in verts])
    err = np.linalg.norm(pred - lmk, axis=-1).mean(1)                          # (T,) source px
    eyes = np.linalg.norm(inputs["lmk_68"][:, 36] - inputs["lmk_68"][:, 45], axis=-1)
    face = model.region_labels >= 0
    step = np.linalg.norm(np.diff(head[:, face], axis=0), axis=-1).mean(1) * 1000.0
    clip, fit = fe.clip, fe.fit
    vis = vertex_visibility(verts, model.faces, fit.intrinsics, clip.width, clip.height)
    photo = []
    for a in range(0, len(verts) - WINDOW + 1, WINDOW):
        w = slice(a, a + WINDOW)
        if not good[w].all():
            continue
        as_t = lambda x: torch.as_tensor(np.asarray(x))[None]  # noqa: E731
        photo.append(float(photometric_loss(as_t(verts[w]).float(), as_t(fit.intrinsics).float(),
                                            as_t(fe.alignment.transforms[w]).float(), as_t(fe.alignment.crops[w]),
                                            as_t(vis[w]))) * 255.0)
    return {"reproj_px": float(err[good].mean()), "reproj_pct_eyes": float((err / eyes)[good].mean() * 100),
            "still_jitter_mm": float(step[still].mean()) if still.any() else float("nan"),
            "photo_l1": float(np.mean(photo)) if photo else float("nan")}


def run_clip(video: str, net, model, end: int | None) -> tuple[dict, dict]:
    from backend.config import ReconstructConfig
    from backend.head.flame import FlameLayer, head_space
    from backend.capture.landmarks import detect_landmarks
    from backend.net.photometric import correct_photometric
    from backend.pipeline import network_inputs, read_motion, run_frontend
    from backend.net.apply import parametric_meshes, apply_network
    from backend.capture.video import read_clip

    cfg = ReconstructConfig()
    cfg.video.end = end
    clip = read_clip(video, cfg.video)
    lms = detect_landmarks(clip, cfg.landmarks)
    fe = run_frontend(clip, lms, model, cfg)
    inputs = network_inputs(fe)
    reading = read_motion(fe, model, cfg)
    rd = parametric_meshes(model, fe.fit, reading.expr, reading.pose, clip.frame_indices, cfg.drift_sigma_s * clip.fps)
    good = lms.valid & ~lms.occluded & ~lms.outlier
    still = still_pairs(fe.flow, good)
    fit_head = head_space(FlameLayer(model), fe.fit.shape, fe.fit.expr, fe.fit.pose)
    rows = {"fit only": metrics(fe, inputs, fe.fit.vertices, fit_head, model, good, still),
            "flow reader": metrics(fe, inputs, rd.vertices, rd.vertices_head, model, good, still)}
    seconds = float("nan")
    if net is not None:
        r = apply_network(net, inputs, clip.frame_indices, cfg.drift_sigma_s * clip.fps)
        t0 = time.perf_counter()
        rp, _ = correct_photometric(clip.frames, r, model, fe.fit.shape, fe.fit.trans, fe.fit.intrinsics,
                                    inputs["valid"], cfg.photometric)
        seconds = time.perf_counter() - t0
        rows |= {"DEM only": metrics(fe, inputs, r.vertices_init, r.vertices_init_head, model, good, still),
                 "full": metrics(fe, inputs, r.vertices, r.vertices_head, model, good, still),
                 "full + photometric": metrics(fe, inputs, rp.vertices, rp.vertices_head, model, good, still)}
    info = {"frames": len(good), "good": int(good.sum()), "still_pairs": int(still.sum()), "photometric_s": seconds}
    return rows, info


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("videos", nargs="*", default=[str(v) for v in VIDEOS])
    ap.add_argument("--end", type=int, help="last source frame (a shorter run)")
    ap.add_argument("--weights", default=str(ROOT / "weights" / "microface.pt"))
    ap.add_argument("--no-network", action="store_true", help="the fit and the flow reader only (the default product)")
    args = ap.parse_args()

    from backend.head.flame import load_flame
    from backend.net.network import load_weights

    model = load_flame()
    net = None if args.no_network else load_weights(args.weights, model)
    cols = ("reproj_px", "reproj_pct_eyes", "still_jitter_mm", "photo_l1")
    print("| clip | method | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for video in args.videos:
        rows, info = run_clip(video, net, model, args.end)
        name = (f"{Path(video).stem} ({info['good']}/{info['frames']} frames, {info['still_pairs']} still pairs, "
                f"photometric stage {info['photometric_s']:.1f} s)")
        for method, row in rows.items():
            print(f"| {name} | {method} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
