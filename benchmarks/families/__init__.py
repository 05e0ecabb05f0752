"""Held-out evaluation families: clips with a known micro-motion, stored one folder per clip.

Three families (docs and ``benchmarks/bench_heldout.py``):
- ``own``: the project's synthetic recipe (backend.synthetic.synth), whole clips at their capture rate;
- ``render``: heads rendered by Blender Cycles (``families/render.py``), another image source;
- ``injected``: real footage with a known micro-expression warped in (``families/injected.py``).

A clip folder holds its video file(s) and ``clip.npz`` (loads with ``allow_pickle=False``):

| key | shape, unit | meaning |
|---|---|---|
| ``video`` | str | file name, in the folder, of the clip to reconstruct |
| ``reference`` | str ("" = none) | file name of the same clip without the added motion (injected): the score is reconstruct(video) minus reconstruct(reference) |
| ``fps`` | float | frame rate to pass to ``reconstruct --fps`` |
| ``focal`` | float px (0 = unknown) | the camera's focal length to pass as ``--focal`` |
| ``onset``, ``apex``, ``offset`` | int | frame indices (0 = the file's first frame) |
| ``motion_head`` | (T, V, 3) float32 m | true micro-motion in FLAME head space (rigid head motion removed), relative to frame 0 |
| ``vertices_cam`` | (T, V, 3) float32 m | the true (render) or assumed (injected: fitted + added) camera-space head, for oracle ceilings |
| ``intrinsics`` | (3,) float | f, cx, cy in px of ``vertices_cam``'s camera |
| ``profile`` | (T,) float | the micro-expression's temporal profile, 0 at onset, 1 at apex |
| ``active_regions`` | (k,) str | backend.head.regions names that truly move |
| ``peak_mm`` | float | the expression's peak displacement |
| ``info`` | str | JSON: how the clip was made (seed, renderer, codec, resolution, source window...) |
| ``param_shape``, ``param_expr``, ``param_pose``, ``param_trans`` | (n_shape,), (T, n), (T, 3J), (T, 3) | optional: the FLAME parameters of the moved head in ``vertices_cam`` (without its off-basis bump), for the pixel oracle's linearisation |
| ``param_expr_base`` | (T, n) | optional: the expression without the added micro-expression (injected: the fit's) |
"""
from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

FAMILIES = ("own", "render", "injected")
CLIP_FILE = "clip.npz"


@dataclass
class FamilyClip:
    folder: Path
    video: str
    fps: float
    onset: int
    apex: int
    offset: int
    motion_head: np.ndarray
    vertices_cam: np.ndarray
    intrinsics: np.ndarray
    profile: np.ndarray
    active_regions: list[str]
    peak_mm: float
    reference: str = ""
    focal: float = 0.0
    info: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)     # shape, expr, pose, trans of vertices_cam's head, if known

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def video_path(self) -> Path:
        return self.folder / self.video

    @property
    def reference_path(self) -> Path | None:
        return self.folder / self.reference if self.reference else None


@contextmanager
def new_clip_folder(final: Path) -> Iterator[Path]:
    """A temporary sibling of ``final`` to make a clip in: renamed to ``final`` when the block
    finishes (replacing it), removed when it raises, so a killed run never leaves half a clip.
    Temporary folders a killed run left for the same name are removed first."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        tmp.chmod(0o755)                       # mkdtemp makes 0700
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def save_clip(clip: FamilyClip) -> Path:
    """Write ``clip.folder / clip.npz`` atomically (the video files are the caller's)."""
    from backend.contract.atomic import atomic_path

    clip.folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "video": np.array(clip.video), "reference": np.array(clip.reference), "fps": np.float64(clip.fps),
        "focal": np.float64(clip.focal), "onset": np.int64(clip.onset), "apex": np.int64(clip.apex),
        "offset": np.int64(clip.offset), "motion_head": np.asarray(clip.motion_head, np.float32),
        "vertices_cam": np.asarray(clip.vertices_cam, np.float32),
        "intrinsics": np.asarray(clip.intrinsics, np.float64), "profile": np.asarray(clip.profile, np.float64),
        "active_regions": np.array(list(clip.active_regions), dtype=str), "peak_mm": np.float64(clip.peak_mm),
        "info": np.array(json.dumps(clip.info)),
        **{f"param_{k}": np.asarray(v, np.float64) for k, v in clip.params.items()},
    }
    path = clip.folder / CLIP_FILE
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **arrays)
    return path


def load_clip(folder: str | Path) -> FamilyClip:
    folder = Path(folder)
    with np.load(folder / CLIP_FILE, allow_pickle=False) as z:
        a = {k: z[k] for k in z.files}
    return FamilyClip(
        folder=folder, video=str(a["video"]), reference=str(a["reference"]), fps=float(a["fps"]),
        focal=float(a["focal"]), onset=int(a["onset"]), apex=int(a["apex"]), offset=int(a["offset"]),
        motion_head=a["motion_head"], vertices_cam=a["vertices_cam"], intrinsics=a["intrinsics"],
        profile=a["profile"], active_regions=[str(r) for r in a["active_regions"]], peak_mm=float(a["peak_mm"]),
        info=json.loads(str(a["info"])), params={k[6:]: v for k, v in a.items() if k.startswith("param_")})


def family_clips(root: str | Path, family: str) -> list[FamilyClip]:
    """Every clip of ``family`` under ``root/family``, by folder name."""
    return [load_clip(p.parent) for p in sorted(Path(root, family).glob(f"*/{CLIP_FILE}"))]
