"""The learned network end to end: static fit -> DEM -> FLAME (M_init) -> DGMD (M_final).

Also the weights file: saving with provenance beside it, and loading with
``torch.load(weights_only=True)``; a missing or corrupt file is a clear error, never random weights.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..config import file_sha256
from ..contract.atomic import atomic_path
from ..errors import MicroFaceError
from ..head.flame import HEAD_MOTION, FlameLayer, FlameModel, axis_angle_to_matrix
from .dem import DynamicEncodedModule
from .dgmd import DGMDConfig, DynamicGuidedDeformation

WEIGHTS_FORMAT = "microface-weights"
WEIGHTS_VERSION = 1


@dataclass
class NetworkConfig:
    use_dem: bool = True
    use_dgmd: bool = True
    dem_width: int = 16
    dem_latent: int = 32
    dgmd: DGMDConfig = field(default_factory=DGMDConfig)


def landmark_points(model: FlameModel, lmk_68: torch.Tensor, lmk_mp: torch.Tensor) -> torch.Tensor:
    """FAN-68 ⊕ the embedded MediaPipe points, in the order DGMD expects. (..., 68 + K, 2)."""
    idx = torch.as_tensor(model.mp_indices, device=lmk_mp.device)
    return torch.cat([lmk_68, lmk_mp[..., idx, :]], -2)


class MicroFaceNet(nn.Module):
    """DEM + FLAME + DGMD. :meth:`forward` takes a batch of windows of T frames."""

    def __init__(self, model: FlameModel, cfg: NetworkConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or NetworkConfig()
        self.flame_model = model
        self.trained_flow: dict | None = None   # the flow recipe it learned to read (load_weights sets it)
        # Its region rule {"fraction", "floor_mm", ...} calibrated on clips with truth (backend/training/calibrate.py)
        self.detection: dict | None = None
        self.flame = FlameLayer(model)
        for b in self.flame.buffers():
            b.requires_grad_(False)
        # ψ is the expression plus the jaw rotation: FLAME moves the mouth with both, and a jaw left to the
        # per-frame landmark fit invents most of the motion (0.01 rad of noise = 0.8 mm at the chin).
        self.jaw = model.jaw_pose_slice()
        self.n_psi = model.n_expr + (self.jaw.stop - self.jaw.start)
        self.dem = DynamicEncodedModule(self.n_psi, width=cfg.dem_width, latent=cfg.dem_latent)
        self.dgmd = DynamicGuidedDeformation(model, cfg.dgmd)

    def set_mixed_precision(self, dtype: torch.dtype | None) -> None:
        """Run the convolutions over flow maps (DEM encoder, DGMD motion CNN) under autocast to
        ``dtype`` (e.g. torch.bfloat16 on a CUDA GPU), the rest in float32; None turns it off."""
        self.dem.motion.autocast_dtype = dtype
        self.dgmd.motion_cnn.autocast_dtype = dtype

    def pack_psi(self, expr: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """ψ (..., n + 3): expression (..., n) ⊕ the jaw rotation of pose (..., 3J)."""
        return torch.cat([expr, pose[..., self.jaw]], -1)

    def unpack_psi(self, psi: torch.Tensor, pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The inverse of :meth:`pack_psi`: (expr (..., n), a copy of pose (..., 3J) with ψ's jaw)."""
        n = psi.shape[-1] - (self.jaw.stop - self.jaw.start)
        pose = pose.clone()
        pose[..., self.jaw] = psi[..., n:]
        return psi[..., :n], pose

    def _flame(self, shape: torch.Tensor, expr: torch.Tensor, pose: torch.Tensor, trans: torch.Tensor):
        b, t = expr.shape[:2]
        shape_bt = shape[:, None].expand(b, t, -1).reshape(b * t, -1)
        e, p, tr = expr.reshape(b * t, -1), pose.reshape(b * t, -1), trans.reshape(b * t, 3)
        v_cam, _ = self.flame(shape_bt, e, p, tr)
        p_head = p.clone()
        p_head[:, HEAD_MOTION] = 0.0
        v_head, _ = self.flame(shape_bt, e, p_head)
        return v_cam, v_head

    def forward(self, batch: dict[str, torch.Tensor], expr_only: bool = False,
                given_expr: bool = False) -> dict[str, torch.Tensor]:
        """batch: fit_shape (B, n_shape), fit_expr (B, T, n), fit_pose (B, T, 3J), fit_trans (B, T, 3),
        flow (B, T-1, S, S, 2) pair flow in 224-crop px, times (T,) in [0, 1], intrinsics (B, 3),
        align (B, T, 2, 3), lmk (B, T, K, 2) FAN-68 ⊕ embedded MediaPipe points in source px.

        Returns expr (B, T, n) and pose (B, T, 3J) (the jaw from the DEM); vertices_init / vertices (B, T, V, 3) camera m; head-space versions;
        delta_head (B, T, V, 3); attention (B, T, V); intensity and attention_region (B, T, R); dpsi.

        For long clips (backend/net/apply.py): ``expr_only`` runs the DEM alone; ``given_expr`` takes
        ``fit_expr`` as the final expressions and ``flow_acc`` (B, T, S, S, 2) as the onset-to-t flow,
        so FLAME and the DGMD can run on a chunk of frames.
        """
        fit_expr, fit_pose = batch["fit_expr"], batch["fit_pose"]
        b, t = fit_expr.shape[:2]
        if given_expr:       # fit_expr and the jaw in fit_pose already hold the DEM's output
            psi = self.pack_psi(fit_expr, fit_pose)
            dpsi = psi.new_zeros(b, max(t - 1, 0), psi.shape[-1])
        elif self.cfg.use_dem:
            psi, dpsi = self.dem(self.pack_psi(fit_expr[:, 0], fit_pose[:, 0]), batch["flow"], batch["times"])
        else:
            psi = self.pack_psi(fit_expr, fit_pose)
            dpsi = psi.new_zeros(b, max(t - 1, 0), psi.shape[-1])
        expr, pose = self.unpack_psi(psi, fit_pose)
        if expr_only:
            return {"expr": expr, "pose": pose, "dpsi": dpsi}
        v_cam, v_head = self._flame(batch["fit_shape"], expr, pose, batch["fit_trans"])
        nv = v_cam.shape[1]
        out = {"expr": expr, "pose": pose, "dpsi": dpsi,
               "vertices_init": v_cam.view(b, t, nv, 3), "vertices_init_head": v_head.view(b, t, nv, 3)}
        if not self.cfg.use_dgmd:
            zeros_r = v_cam.new_zeros(b, t, len(self.flame_model.region_names))
            out.update(vertices=out["vertices_init"], vertices_head=out["vertices_init_head"],
                       delta_head=torch.zeros_like(out["vertices_init"]), attention=v_cam.new_zeros(b, t, nv),
                       intensity=zeros_r, attention_region=zeros_r)
            return out
        flow_acc = batch.get("flow_acc")
        if flow_acc is None:
            flow = batch["flow"]
            flow_acc = torch.cat([torch.zeros_like(flow[:, :1]), flow.cumsum(1)], 1)   # onset -> t
        rot = axis_angle_to_matrix(pose[..., :3]).reshape(b * t, 3, 3)
        lmk_ref = torch.cat([self.flame.landmarks68(v_cam), self.flame.landmarks_mp(v_cam)], 1)
        intr = batch["intrinsics"][:, None].expand(b, t, 3).reshape(b * t, 3)
        d = self.dgmd(v_head, v_cam, rot, batch["lmk"].reshape(b * t, -1, 2), lmk_ref, intr,
                      batch["align"].reshape(b * t, 2, 3), flow_acc.reshape(b * t, *flow_acc.shape[2:]))
        out["vertices"] = (v_cam + d["delta_cam"]).view(b, t, nv, 3)
        out["vertices_head"] = (v_head + d["delta_head"]).view(b, t, nv, 3)
        out["delta_head"] = d["delta_head"].view(b, t, nv, 3)
        out["attention"] = d["attention"].view(b, t, nv)
        out["intensity"] = d["intensity"].view(b, t, -1)
        out["attention_region"] = d["attention_region"].view(b, t, -1)
        return out


def save_weights(net: MicroFaceNet, path: str | os.PathLike, provenance: dict) -> Path:
    """Write the trainable weights (float32 state dict) atomically, and ``<path>.json`` beside them,
    with ``net.trained_flow`` (the flow recipe it learned to read) and ``net.detection``."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items() if not k.startswith("flame.")}
    payload = {"format": WEIGHTS_FORMAT, "version": WEIGHTS_VERSION, "config": json.dumps(asdict(net.cfg)),
               "n_expr": net.flame_model.n_expr, "n_vertices": int(net.flame_model.v_template.shape[0]),
               "flow": json.dumps(net.trained_flow), "detection": json.dumps(net.detection), "state": state}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    prov = dict(provenance, sha256=file_sha256(path), config=asdict(net.cfg))
    with atomic_path(path.with_suffix(path.suffix + ".json")) as tmp:
        tmp.write_text(json.dumps(prov, indent=1, sort_keys=True))
    return path


def config_from_json(text: str) -> NetworkConfig:
    raw = json.loads(text)
    return NetworkConfig(**{**raw, "dgmd": DGMDConfig(**raw["dgmd"])})


def read_payload(path: Path, device: str = "cpu") -> dict:
    """The weights file's payload (format, version, config, n_expr, n_vertices, state, ...), read with
    ``weights_only=True``. Raises :class:`MicroFaceError` for a missing, corrupt or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise MicroFaceError(f"weights file {path} not found; pass --weights PATH or reinstall MicroFace")
    try:
        with warnings.catch_warnings():
            # A raw pickle makes torch warn about its protocol before refusing it: the one-line
            # error below says it all.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # unpickling refused, truncated zip, not a torch file...
        raise MicroFaceError(f"weights file {path} is corrupt or not MicroFace weights "
                             f"({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
        raise MicroFaceError(f"weights file {path} is not MicroFace weights")
    if payload.get("version", 0) > WEIGHTS_VERSION:
        raise MicroFaceError(f"weights file {path} is version {payload['version']}; update MicroFace")
    return payload


def load_weights(path: str | os.PathLike, model: FlameModel, device: str = "cpu") -> MicroFaceNet:
    """Build the network for ``model`` and load ``path`` with ``weights_only=True``.

    ``model``'s expressions must be the basis the weights were trained with: for any other FLAME
    file, pass :func:`backend.head.expression_layer.working_model`'s head (the pipeline does).
    Raises :class:`MicroFaceError` for a missing, corrupt or mismatched file.
    """
    path = Path(path)
    payload = read_payload(path, device)
    if payload.get("n_expr") != model.n_expr or payload.get("n_vertices") != model.v_template.shape[0]:
        raise MicroFaceError(f"weights file {path} was trained for {payload.get('n_expr')} expressions and "
                             f"{payload.get('n_vertices')} vertices; the head model {model.path.name} has "
                             f"{model.n_expr} and {model.v_template.shape[0]}")
    net = MicroFaceNet(model, config_from_json(payload["config"]))
    missing, unexpected = net.load_state_dict(payload["state"], strict=False)
    missing = [k for k in missing if not k.startswith("flame.")]
    if missing or unexpected:
        raise MicroFaceError(f"weights file {path} does not match this network "
                             f"(missing {len(missing)}, unexpected {len(unexpected)} tensors)")
    # None in weights from before these were recorded
    net.trained_flow = json.loads(payload.get("flow", "null"))
    net.detection = json.loads(payload.get("detection", "null"))
    return net.to(device).eval()
