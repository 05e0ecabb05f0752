"""Configuration dataclasses and the one function that resolves asset paths.

Every asset is looked up in this order: the explicit flag (the Blender add-on passes its
preferences as flags), then an environment variable, then the development default
``<repo>/../shared/assets/flame``. A missing file fails with a message that says how to fix it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import MicroFaceError

_DEV_ASSETS = Path(__file__).resolve().parent.parent.parent / "shared" / "assets" / "flame"

# name -> (environment variable, file name inside the assets folder)
ASSETS = {
    "flame": ("MICROFACE_FLAME", "microface_ict_flame.pkl"),
    "assets_dir": ("MICROFACE_ASSETS", ""),
    "masks": ("MICROFACE_FLAME_MASKS", "FLAME_masks.pkl"),
    "lmk68": ("MICROFACE_LMK68", "landmark_embedding_68.npz"),
    "lmk_mediapipe": ("MICROFACE_LMK_MEDIAPIPE", "mediapipe_landmark_embedding.npz"),
    "fan_weights": ("MICROFACE_FAN_DIR", ""),
}

_FIX = {
    "flame": "pass --flame PATH or set MICROFACE_FLAME to a FLAME .pkl (2020, 2023 or 2023 Open from "
    "https://flame.is.tue.mpg.de after registering, or the open stand-in microface_ict_flame.pkl)",
    "assets_dir": "pass --assets DIR or set MICROFACE_ASSETS to the folder holding FLAME_masks.pkl, "
    "landmark_embedding_68.npz and mediapipe_landmark_embedding.npz",
}


def resolve_asset(name: str, flag: str | os.PathLike | None = None, assets_dir: str | os.PathLike | None = None,
                  required: bool = True) -> Path | None:
    """Path of asset ``name`` (a key of ``ASSETS``): flag, then environment, then default.

    Companion files (masks, embeddings) default to ``assets_dir`` (itself resolved the same way).
    Raises :class:`MicroFaceError` naming the fix when ``required`` and nothing exists.
    """
    env_var, file_name = ASSETS[name]
    candidates: list[tuple[str, Path]] = []
    if flag:
        candidates.append(("flag", Path(flag).expanduser()))
    if os.environ.get(env_var):
        candidates.append((env_var, Path(os.environ[env_var]).expanduser()))
    if name != "assets_dir" and file_name:
        base = resolve_asset("assets_dir", assets_dir, required=False)
        if base is not None:
            candidates.append(("assets folder", base / file_name))
    elif name == "assets_dir":
        candidates.append(("default", _DEV_ASSETS))
    for origin, path in candidates:
        if path.exists():
            return path.resolve()
        if origin != "default" and origin != "assets folder":
            raise MicroFaceError(f"{name.replace('_', ' ')} not found: {path} (from {origin}); "
                                 + _FIX.get(name, _FIX["assets_dir"]))
    if required:
        raise MicroFaceError(f"no {name.replace('_', ' ')} file found; " + _FIX.get(name, _FIX["assets_dir"]))
    return None


@dataclass
class VideoConfig:
    start: int | None = None      # first source frame (inclusive); None = clip start
    end: int | None = None        # last source frame (inclusive); None = clip end
    fps: float | None = None      # override the container's frame rate
    max_side: int = 1280          # frames larger than this are downscaled for detection


@dataclass
class LandmarkConfig:
    face_index: int | None = None   # which face when several: None = the largest summed over the frames it
                                    # is seen in; k = the k-th largest (0 = largest) in the first frame showing
                                    # k+1 faces. Either way that face is then tracked.
    min_confidence: float = 0.5
    use_fan: str = "auto"           # auto: FAN when its weights are present locally; "on": require them; "off": never
    max_faces: int = 4              # faces MediaPipe looks for per frame
    # Tracking: a detection continues the track if its centre moved at most track_max_jump face sizes
    # per frame since the track was last seen (capped at 2 face sizes) and its size changed at most
    # track_max_scale times. Shot cuts end every track.
    track_max_jump: float = 0.5
    track_max_scale: float = 1.5
    cut_threshold: float = 0.3      # Bhattacharyya distance of consecutive HSV histograms marking a cut
    # Occlusion: MediaPipe keeps a plausible face under a hand, so hands are detected and a frame is
    # occluded when at least this fraction of the face's mesh points lie inside a hand's outline.
    detect_hands: bool = True
    hand_occlusion_fraction: float = 0.03
    occlusion_pad_frames: int = 1   # hands are detected a frame late when entering or leaving
    # Glitches: median distance of the mesh points to their prediction from the neighbouring frames
    # (within outlier_window frames), in face sizes, above which a frame is an outlier. Real clips
    # without glitches measured at most 0.021.
    outlier_window: int = 3
    outlier_threshold: float = 0.04


@dataclass
class AlignConfig:
    size: int = 224                 # aligned crop side, pixels
    scale: float = 1.8              # crop side / eye-to-chin length (brows to chin fit with margin)
    smooth_sigma: float = 2.0       # temporal Gaussian on the similarity parameters, frames


@dataclass
class FlowConfig:
    method: str = "tvl1"            # "tvl1" (paper) or "dis" (fast preview)
    tau: float = 0.25
    lambda_: float = 0.15
    theta: float = 0.3
    nscales: int = 3
    warps: int = 3
    epsilon: float = 0.01
    workers: int = 0                # threads computing pairs in parallel; 0 = one per CPU core


@dataclass
class FitConfig:
    iters: int = 300
    lr: float = 0.02
    w_lmk68: float = 1.0
    w_lmk_mp: float = 1.0
    w_shape: float = 1e-3           # identity prior, on coefficients in the model's own units
    w_expr: float = 1.0             # expression prior, on displacement energy (model-independent)
    w_temporal: float = 10.0        # smoothness of expression and pose over frames
    w_anchor: float = 1.0           # onset anchor for the head pose
    focal: float | None = None      # pixels; None = 1.0 * max(width, height)
    expr_bounds: str = "auto"       # auto: [0, 1] for named (ARKit-style) targets, free for PCA


@dataclass
class ReconstructConfig:
    video: VideoConfig = field(default_factory=VideoConfig)
    landmarks: LandmarkConfig = field(default_factory=LandmarkConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    device: str = "auto"
    flame: str | None = None
    assets: str | None = None


def pick_device(name: str = "auto") -> str:
    """``auto`` picks CUDA when present, else CPU."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MicroFaceError(f"--device {name} requested but CUDA is not available; use --device cpu or auto")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise MicroFaceError(f"unknown device {name!r}; use auto, cpu or cuda")
    return name
