"""Configuration dataclasses and the one function that resolves asset paths.

Every asset is looked up in this order: the explicit flag (the Blender add-on passes its
preferences as flags), then an environment variable, then default folders (the development
default is ``<repo>/../shared/assets/flame``). A missing file fails with a message that says how
to fix it.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from .contract import protocol
from .errors import MicroFaceError

_DEV_ASSETS = Path(__file__).resolve().parent.parent.parent / "shared" / "assets" / "flame"
WEIGHTS_DIR = Path(__file__).resolve().parent.parent.joinpath(*protocol.SHIPPED_WEIGHTS[:-1])   # the shipped network


@dataclass(frozen=True)
class Asset:
    what: str                     # name in messages
    env: str                      # environment variable naming the file (or its folder)
    files: tuple[str, ...]        # names looked for inside a folder; () for a folder asset
    fix: str                      # how the user supplies it


_COMPANIONS = ("pass --assets DIR or set MICROFACE_ASSETS to the folder holding FLAME_masks.pkl, "
               "landmark_embedding_68.npz and mediapipe_landmark_embedding.npz")
ASSETS = {
    "flame": Asset("head model", protocol.ENV_FLAME, protocol.FLAME_FILE_NAMES,
                   "pass --flame PATH or set MICROFACE_FLAME to a FLAME .pkl (2020, 2023 or 2023 Open from "
                   "https://flame.is.tue.mpg.de after registering, or the open stand-in microface_ict_flame.pkl)"),
    "assets_dir": Asset("FLAME assets folder", protocol.ENV_ASSETS, (), _COMPANIONS),
    "masks": Asset("region masks", "MICROFACE_FLAME_MASKS", ("FLAME_masks.pkl",), _COMPANIONS),
    "lmk68": Asset("68-point landmark embedding", "MICROFACE_LMK68", ("landmark_embedding_68.npz",), _COMPANIONS),
    "lmk_mediapipe": Asset("MediaPipe landmark embedding", "MICROFACE_LMK_MEDIAPIPE", ("mediapipe_landmark_embedding.npz",), _COMPANIONS),
    "uv_template": Asset("UV template", "MICROFACE_UV_TEMPLATE", ("head_template.obj",),
                         "set MICROFACE_UV_TEMPLATE to FLAME's head_template.obj (the template with UVs)"),
    "weights": Asset("network weights", protocol.ENV_WEIGHTS, protocol.SHIPPED_WEIGHTS[-1:],
                     "pass --weights PATH or set MICROFACE_WEIGHTS to the trained network (MicroFace ships "
                     "weights/microface.pt; python -m backend.training.train makes new ones)"),
    "fan": Asset("FAN weights", protocol.ENV_FAN_DIR, ("2DFAN4-cd938726ad.zip", "2DFAN4_1.6-c827573f02.zip", "2DFAN4_1.5-a60332318a.zip"),
                 "pass --fan PATH or set MICROFACE_FAN_DIR to face-alignment's 2DFAN4 weights (or their folder)"),
}


def resolve_asset(name: str, flag: str | os.PathLike | None = None, folders: tuple[Path | None, ...] = (),
                  required: bool = True) -> Path | None:
    """Path of asset ``name`` (a key of ``ASSETS``).

    Order: ``flag``, then the asset's environment variable (each a file, or a folder holding one
    of its file names), then the default ``folders``. A flag or variable that points at nothing
    is an error even when the asset is optional: the user asked for something that is not there.
    Raises :class:`MicroFaceError` naming the fix; returns None when optional and absent.
    """
    spec = ASSETS[name]

    def look(path: Path) -> Path | None:
        if path.is_dir():
            if not spec.files:
                return path
            return next((path / f for f in spec.files if (path / f).is_file()), None)
        return path if path.is_file() and spec.files else None

    what = spec.what
    for origin, value in (("flag", flag), (spec.env, os.environ.get(spec.env))):
        if value:
            path = Path(value).expanduser()
            found = look(path)
            if found is None:
                raise MicroFaceError(f"{what} not found at {path} (from {origin}); {spec.fix}")
            return found.resolve()
    for folder in folders:
        found = look(Path(folder)) if folder is not None else None
        if found is not None:
            return found.resolve()
    if required:
        raise MicroFaceError(f"no {what} found; {spec.fix}")
    return None


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's content, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def asset_id(path: Path) -> str:
    """``"<file name>@sha256:<first 16 hex>"``: names the exact file a result was made with."""
    return f"{path.name}@sha256:{file_sha256(path)[:16]}"


def assets_folder(flag: str | os.PathLike | None = None) -> Path | None:
    """The folder of FLAME's companion files: --assets, $MICROFACE_ASSETS, else the development default."""
    return resolve_asset("assets_dir", flag, folders=(_DEV_ASSETS,), required=False)


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
    fan: str | None = None          # FAN weights file or folder (else $MICROFACE_FAN_DIR, then torch's hub cache)
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
    method: str = "dis"             # "dis" or "tvl1" (the paper's; see backend/capture/flow.py for why DIS)
    supersample: int = 2            # flow computed on a crop this many times the aligned side
    tau: float = 0.25
    lambda_: float = 0.15
    theta: float = 0.3
    nscales: int = 3
    warps: int = 3
    epsilon: float = 0.01
    workers: int = 0                # threads computing pairs in parallel; 0 = one per CPU core

    def recipe(self) -> dict:
        """What a network reading this flow depends on (recorded in samples and weights)."""
        return {"method": self.method, "supersample": int(self.supersample)}


@dataclass
class FitConfig:
    iters: int = 300
    lr: float = 0.02
    w_lmk68: float = 1.0
    w_lmk_mp: float = 1.0
    w_shape: float = 1e-3           # identity prior, on coefficients in the model's own units
    w_expr: float = 1.0             # expression prior, on displacement energy (model-independent)
    w_temporal: float = 10.0        # smoothness of expression and pose; per second, referenced to 30 fps
    focal: float | None = None      # pixels; None = 1.0 * max(width, height)
    expr_bounds: str = "auto"       # auto: [0, 1] for named (ARKit-style) targets, free for PCA


@dataclass
class PhotometricConfig:
    """backend/net/photometric.py: the network's micro-expression corrected from the frames' colours."""
    # Off by default: after the flow reader it lowered the recovered share on training clips
    # (0.176 -> 0.023, benchmarks/bench_heldout.py on the own family's training seeds).
    enabled: bool = False
    prior_weight: float = 1000.0    # λ on the correction's motion (mm²) against the colour residual; chosen
                                    # on training clips (benchmarks/bench_photometric.py)
    iterations: int = 4             # Gauss-Newton steps
    huber: float = 3.0              # robust scale, in MADs of the colour residual
    min_profile: float = 0.05       # frames where the network's motion is under this share of its peak are skipped
    # It models one micro-expression from the range's first frame. On longer ranges (real clips with
    # head turns, blinks, speech) it raised the landmark reprojection error by 15-50 %: they are left
    # as the network made them.
    max_seconds: float = 1.0


@dataclass
class ReaderConfig:
    """backend/capture/flow_reader.py: the micro-expression read from the flow through the fitted head."""
    enabled: bool = True
    # λ on the read motion (mm²) against the tracks' residual (crop px²) is max(prior_weight,
    # noise_weight * the clip's noise in mm², measured at noise_reference_weight); chosen on
    # training clips of all three evaluation families (experiments/tune_reader.py). A fixed 0.3
    # read more of the injected training windows (0.236 against 0.135) but less of the held-out
    # ones (0.048 against 0.079), inventing more (docs/flow_reader.md).
    prior_weight: float = 0.3       # the least λ
    noise_weight: float = 1000.0    # 0 = λ is prior_weight whatever the clip's noise
    noise_reference_weight: float = 1.0
    huber_px: float = 0.5           # robust scale of the track residual, 224-crop px
    iterations: int = 4             # reweighting rounds per frame
    rigid_passes: int = 2           # linearisations per frame, each at the head moved by the last rigid correction
    patterns: int = 8               # spatial patterns of the micro-expression, each with its time course
    alternations: int = 5           # rounds of alternating patterns and time courses
    smooth_s: float = 0.02          # Gaussian smoothing of the time courses, seconds
    # The prior pulls each frame's change towards the share of the fit's own change (from the
    # landmarks) that the flow confirms, at most this (0 = towards no change). Chosen on the
    # training clips of all three families (docs/flow_reader.md).
    fit_prior: float = 1.0
    anchor_every_s: float = 1.0     # each frame's flow is read from an anchor frame this often (chains add up errors)
    min_facing: float = 0.3         # cosine between a point's normal and the view ray, below which it is left out


@dataclass
class RegionCallConfig:
    """The rule (backend.head.regions.active_regions) behind the result's ``region_detection`` when the
    network's weights carry none that fits: the fit alone, or the flow reader's motion."""
    # Calibrated for the flow reader's motion on training clips of all three evaluation families
    # (experiments/tune_reader.py: 0.797 of their regions called right).
    fraction: float = 0.7           # of the most-moving region's peak motion
    floor_mm: float = 0.0
    noise_factor: float = 1.5       # times the clip's own noise floor (backend.head.regions.clip_noise_mm); 0 = off


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
    weights: str | None = None      # the trained DEM + DGMD network; None = the shipped one
    network: bool = False           # True: the learned network (DEM + DGMD; with the reader, its DGMD alone)
    # The network's expression and jaw take their drift slower than this (Gaussian sigma, seconds)
    # from the landmark fit; micro-expressions last under half a second. 0 = off.
    drift_sigma_s: float = 0.5
    photometric: PhotometricConfig = field(default_factory=PhotometricConfig)
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    regions: RegionCallConfig = field(default_factory=RegionCallConfig)
    # Below this face width (source px, meta.face_px) the result warns that micro-expressions are
    # lost in the pixels; chosen where recovery collapses (experiments/face_size.py).
    min_face_px: float = 80.0


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
