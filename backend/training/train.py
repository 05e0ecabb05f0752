"""Training: one reproducible, resumable command.

    python -m backend.training.train --data DIR [DIR ...] [--real DIR] --steps N --out weights/microface.pt

Synthetic windows (truth known) are supervised on the motion from the onset, for the final mesh
and for the DEM's initial mesh, plus the paper's geometric terms (Eq. 24–27). Real windows (no
truth) train with the self-supervised terms: flow reprojection, photometric consistency,
landmarks, expression consistency with the static fit, and the geometric terms.

Every ``--checkpoint-every`` steps the model, optimiser and random states are saved; rerunning the
same command resumes from the checkpoint and gives the same result as an uninterrupted run.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import pick_device
from ..contract.atomic import atomic_path
from ..head.flame import FlameModel, load_flame
from ..head.priors import expression_gram
from ..head.visibility import vertex_visibility
from ..net.dem import window_times
from ..net.network import MicroFaceNet, NetworkConfig, landmark_points, save_weights
from .calibrate import detection_rule
from .dataset import load_samples


@dataclass
class TrainConfig:
    data: list[str] = field(default_factory=list)      # folders of synthetic clip_*.npz
    real: list[str] = field(default_factory=list)      # folders of real_*.npz (self-supervised)
    seeds: tuple[int, int] | None = None                # only synthetic seeds in [lo, hi): a fixed set
    out: str = "weights/microface.pt"
    checkpoint: str = "runs/microface.ckpt"
    steps: int = 1500
    batch: int = 4                  # the paper's batch size
    window: int = 8                 # frames per window, as the paper samples onset..offset
    lr: float = 1e-3                # the paper fine-tunes at 1e-4; from scratch on CPU we start higher
    lr_final: float = 1e-5
    real_every: int = 0             # every k-th step is a real self-supervised batch (0: none)
    checkpoint_every: int = 100
    seed: int = 0
    device: str = "auto"
    amp: bool = True                # bfloat16 autocast of the flow convolutions on a CUDA GPU that has it
    w_motion: float = 1.0           # mm, final mesh motion from onset
    w_motion_init: float = 0.5      # mm, DEM mesh motion from onset
    w_lap: float = 10.0
    w_normal: float = 10.0
    w_flow_guide: float = 0.1
    w_geo: float = 1.0
    model: NetworkConfig = field(default_factory=NetworkConfig)


class Windows:
    """Samples held in memory, cut into windows of T frames at stride 1 or 2 (uniform in time)."""

    def __init__(self, samples: list[dict], flame_model: FlameModel, layer, with_truth: bool):
        from .dataset import gt_vertices

        self.samples = samples
        self.model = flame_model
        if with_truth:
            for s in samples:
                with torch.no_grad():
                    s["_gt_head"] = gt_vertices(s, layer)[1].astype(np.float32)

    def batch(self, rng: np.random.Generator, b: int, t: int, device: torch.device) -> dict[str, torch.Tensor]:
        picks = rng.integers(0, len(self.samples), b)
        n_min = min(len(self.samples[i]["valid"]) for i in picks)
        strides = [s for s in (1, 2) if (t - 1) * s + 1 <= n_min] or [1]
        stride = int(rng.choice(strides))
        t = min(t, n_min)
        out: dict[str, list] = {k: [] for k in ("fit_shape", "fit_expr", "fit_pose", "fit_trans", "flow",
                                                "intrinsics", "image_size", "align", "lmk", "crops", "gt_head")}
        for i in picks:
            s = self.samples[i]
            n = len(s["valid"])
            a = int(rng.integers(0, n - (t - 1) * stride))
            idx = a + stride * np.arange(t)
            flow = s["flow"].astype(np.float32)
            out["flow"].append(np.stack([flow[idx[k]:idx[k + 1]].sum(0) for k in range(t - 1)]))
            out["fit_shape"].append(s["fit_shape"])
            for k in ("fit_expr", "fit_pose", "fit_trans", "align"):
                out[k].append(s[k][idx])
            out["intrinsics"].append(s["intrinsics"])
            out["image_size"].append(s["image_size"])
            out["lmk"].append(landmark_points(self.model, torch.as_tensor(s["lmk_68"][idx]),
                                              torch.as_tensor(s["lmk_mp"][idx])).numpy())
            out["crops"].append(s["crops"][idx])
            if "_gt_head" in s:
                out["gt_head"].append(s["_gt_head"][idx])
        batch = {k: torch.as_tensor(np.stack(v)).to(device) for k, v in out.items() if v}
        batch["crops"] = batch["crops"].float() / 255.0
        batch["times"] = window_times(torch.arange(t) * stride).to(device)
        return batch


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def supervised_terms(net: MicroFaceNet, out: dict, batch: dict, face: torch.Tensor, lap: torch.Tensor) -> dict:
    gt = batch["gt_head"]
    moving = ((gt - gt[:, :1]).norm(dim=-1) > MOVING_MM / 1000.0) & face          # (B, T, V) from the truth
    return {
        "motion": _split_motion_loss(out["vertices_head"], gt, moving, face),
        "motion_init": _split_motion_loss(out["vertices_init_head"], gt, moving, face),
        **geometric_terms(net, out, lap),
    }


MOVING_MM = 0.02  # a face vertex moving more than this from the onset counts as moving


def _split_motion_loss(pred: torch.Tensor, gt: torch.Tensor, moving: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
    """Motion error from the onset, mm: the mean over moving vertices plus the mean over still ones.

    A micro-expression moves a few percent of the face; averaged together, the moving vertices
    would hardly weigh against the still ones and the network would learn to stay still.
    """
    err = ((pred - pred[:, :1]) - (gt - gt[:, :1])).norm(dim=-1) * 1000.0         # (B, T, V)
    still = face & ~moving
    return (err * moving).sum() / moving.sum().clamp_min(1) + (err * still).sum() / still.sum().clamp_min(1)


def geometric_terms(net: MicroFaceNet, out: dict, lap: torch.Tensor) -> dict:
    from . import losses

    if not net.cfg.use_dgmd:
        return {}
    return {
        "lap": losses.laplacian_loss(out["delta_head"], lap),
        "normal": losses.normal_consistency_loss(out["vertices_head"], out["vertices_init_head"], net.flame.faces),
        "flow_guide": losses.flow_guided_loss(out["delta_head"], out["attention"]),
    }


def face_scale_px(lmk: torch.Tensor) -> torch.Tensor:
    """Outer eye corners apart (iBUG 36, 45), median over frames: (B, T, K, 2) -> (B,) pixels."""
    return (lmk[:, :, 36] - lmk[:, :, 45]).norm(dim=-1).median(1).values


def self_supervised_terms(net: MicroFaceNet, out: dict, batch: dict, lap: torch.Tensor, gram: torch.Tensor) -> dict:
    from . import losses
    from ..head.camera import project

    v = out["vertices"]
    b, t, nv, _ = v.shape
    faces = net.flame_model.faces
    size = batch["image_size"].cpu().numpy()
    vis = torch.stack([torch.as_tensor(vertex_visibility(v[i].detach(), faces, batch["intrinsics"][i].cpu(),
                                                                int(size[i, 0]), int(size[i, 1]))) for i in range(b)]).to(v)
    lm = torch.cat([net.flame.landmarks68(v.reshape(b * t, nv, 3)), net.flame.landmarks_mp(v.reshape(b * t, nv, 3))], 1)
    lm_px = project(lm, batch["intrinsics"].repeat_interleave(t, 0)).view(b, t, -1, 2)
    flow_acc = batch["flow"].cumsum(1)
    return {
        "flow": losses.flow_reprojection_loss(v, batch["intrinsics"], batch["align"], batch["flow"], vis),
        "flow_acc": losses.flow_reprojection_loss(v, batch["intrinsics"], batch["align"], flow_acc, vis,
                                                  accumulated=True),
        "photo": losses.photometric_loss(v, batch["intrinsics"], batch["align"], batch["crops"], vis),
        "lmk": losses.landmark_loss(lm_px, batch["lmk"], scale_px=face_scale_px(batch["lmk"])),
        "exp": losses.expression_consistency_loss(out["expr"], batch["fit_expr"], gram),
        **geometric_terms(net, out, lap),
    }


def train(cfg: TrainConfig, log=print) -> Path:
    from . import losses

    device = torch.device(pick_device(cfg.device))
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    flame_model = load_flame()
    net = MicroFaceNet(flame_model, cfg.model).to(device)
    if cfg.amp and device.type == "cuda" and torch.cuda.is_bf16_supported():
        net.set_mixed_precision(torch.bfloat16)
    synth = Windows([s for d in cfg.data for s in load_samples(d, "clip_*.npz", cfg.seeds)], flame_model, net.flame, True)
    real = Windows([s for d in cfg.real for s in load_samples(d, "real_*.npz")], flame_model, net.flame, False) \
        if cfg.real and cfg.real_every else None
    if not synth.samples:
        raise SystemExit(f"no training samples (clip_*.npz) in {cfg.data}")
    face = torch.as_tensor(flame_model.region_labels >= 0, device=device)
    lap = losses.laplacian_matrix(flame_model.faces, len(flame_model.v_template), verts=flame_model.v_template).to(device)
    gram = expression_gram(flame_model, device=device)
    weights = {**losses.LossWeights().as_dict(), "motion": cfg.w_motion, "motion_init": cfg.w_motion_init,
               "lap": cfg.w_lap, "normal": cfg.w_normal, "flow_guide": cfg.w_flow_guide, "geo": cfg.w_geo}
    params = [p for n, p in net.named_parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=cfg.lr_final)
    start = 0
    ckpt = Path(cfg.checkpoint)
    if ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        net.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        rng.bit_generator.state = json.loads(state["numpy_rng"])
        torch.set_rng_state(state["torch_rng"])
        start = int(state["step"])
        log(json.dumps({"event": "resume", "step": start}))
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    history = []
    net.train()
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        is_real = real is not None and cfg.real_every and step % cfg.real_every == cfg.real_every - 1
        src = real if is_real else synth
        batch = src.batch(rng, cfg.batch, cfg.window, device)
        out = net(batch)
        terms = self_supervised_terms(net, out, batch, lap, gram) if is_real else \
            supervised_terms(net, out, batch, face, lap)
        loss, logd = losses.total_loss(terms, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        sched.step()
        history.append(logd)
        if step % 10 == 0 or step == cfg.steps - 1:
            log(json.dumps({"event": "step", "step": step, "kind": "real" if is_real else "synthetic",
                            "lr": sched.get_last_lr()[0], "seconds": round(time.perf_counter() - t0, 3),
                            **{k: round(v, 5) for k, v in logd.items()}}))
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            state = {"model": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                     "numpy_rng": json.dumps(rng.bit_generator.state), "torch_rng": torch.get_rng_state(),
                     "step": step + 1}
            with atomic_path(ckpt) as tmp:
                torch.save(state, tmp)
    out_path = Path(cfg.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tail = history[-50:]
    # the flow recipes the network learned to read; samples made before they were recorded give None
    flows = []
    for s in synth.samples + (real.samples if real else []):
        if s["meta"].get("flow") not in flows:
            flows.append(s["meta"].get("flow"))
    provenance = {
        "command": "python -m backend.training.train " + " ".join(sys.argv[1:]),
        "commit": _git_commit(),
        "seed": cfg.seed,
        "train_config": {k: v for k, v in asdict(cfg).items() if k != "model"},
        "data": {"synthetic_clips": len(synth.samples),
                 "synthetic_seeds": sorted(int(s["meta"]["seed"]) for s in synth.samples),
                 "real_windows": len(real.samples) if real else 0,
                 "recipe": "backend.training.dataset make_synthetic_sample (docs/learned_modules.md)",
                 "flow": flows},
        "head_model": flame_model.model_id,
        "final_losses": {k: float(np.mean([h[k] for h in tail if k in h])) for k in tail[-1]},
    }
    net = net.cpu().eval()
    net.trained_flow = flows[0] if len(flows) == 1 else None
    t0 = time.perf_counter()   # the region rule, on the clips it trained on (backend/training/calibrate.py)
    net.detection = provenance["detection"] = detection_rule(net, synth.samples)
    log(json.dumps({"event": "calibrated", **net.detection, "seconds": round(time.perf_counter() - t0, 1)}))
    save_weights(net, out_path, provenance)
    log(json.dumps({"event": "done", "weights": str(out_path)}))
    return out_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m backend.training.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", nargs="+", required=True, help="folders of synthetic samples (clip_*.npz)")
    ap.add_argument("--real", nargs="*", default=[], help="folders of real windows (real_*.npz)")
    ap.add_argument("--seeds", help="LO:HI, only synthetic clips with seeds in [LO, HI)")
    ap.add_argument("--real-every", type=int, default=0)
    ap.add_argument("--out", default=TrainConfig.out)
    ap.add_argument("--checkpoint", default=TrainConfig.checkpoint)
    ap.add_argument("--steps", type=int, default=TrainConfig.steps)
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    ap.add_argument("--seed", type=int, default=TrainConfig.seed)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-amp", action="store_true", help="float32 throughout on CUDA too")
    ap.add_argument("--no-dem", action="store_true", help="ablation: initial meshes from the static fit")
    ap.add_argument("--no-dgmd", action="store_true", help="ablation: no mesh deformation")
    ap.add_argument("--no-geometry", action="store_true")
    ap.add_argument("--no-landmarks", action="store_true")
    ap.add_argument("--no-motion", action="store_true")
    ap.add_argument("--no-geo-loss", action="store_true")
    ap.add_argument("--no-lap", action="store_true")
    ap.add_argument("--no-normal", action="store_true")
    ap.add_argument("--no-flow-guide", action="store_true")
    a = ap.parse_args(argv)
    mc = NetworkConfig(use_dem=not a.no_dem, use_dgmd=not a.no_dgmd)
    mc.dgmd.use_geometry, mc.dgmd.use_landmarks, mc.dgmd.use_motion = not a.no_geometry, not a.no_landmarks, not a.no_motion
    seeds = tuple(int(x) for x in a.seeds.split(":")) if a.seeds else None
    cfg = TrainConfig(data=a.data, real=a.real, seeds=seeds, real_every=a.real_every, out=a.out, checkpoint=a.checkpoint,
                      steps=a.steps, lr=a.lr, seed=a.seed, device=a.device, amp=not a.no_amp, model=mc)
    if a.no_geo_loss:
        cfg.w_geo = 0.0
    cfg.w_lap *= not a.no_lap
    cfg.w_normal *= not a.no_normal
    cfg.w_flow_guide *= not a.no_flow_guide
    train(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
