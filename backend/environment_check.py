"""``python -m backend check``: is this interpreter a working MicroFace backend?

What the add-on's Set Up Backend runs on the environment it made, before it keeps it: every
library the pipeline imports, at a version it works with, and a tiny forward pass of each learned
or bundled model (the shipped network's motion encoder and ODE fusion on a still clip, MediaPipe's
face mesh on a blank frame, OpenCV's DIS flow). Each check says exactly what failed.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# (module, what the pipeline needs of it); versions are the pinned set's (pyproject.toml).
_IMPORTS = (("numpy", "numpy < 2 (bpy and mediapipe need it)"), ("scipy", ""), ("torch", ""),
            ("torchdiffeq", "the DEM's ODE"), ("cv2", "OpenCV contrib: DIS and TV-L1 flow"),
            ("mediapipe", "face mesh with its bundled models"), ("face_alignment", "FAN 68 points"))


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str          # the version or figure when ok, what failed when not


def _numpy_version() -> str:
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        raise RuntimeError(f"numpy {numpy.__version__} is installed; the backend needs numpy < 2")
    return numpy.__version__


def _network_forward(weights: Path) -> str:
    """The shipped network's DEM (motion encoder + ODE fusion) on a still 4-frame clip."""
    import torch

    from .net.dem import DynamicEncodedModule, window_times
    from .net.network import config_from_json, read_payload

    payload = read_payload(weights)
    cfg = config_from_json(payload["config"])
    n_psi = int(payload["n_expr"]) + 3    # expressions and the jaw
    dem = DynamicEncodedModule(n_psi, width=cfg.dem_width, latent=cfg.dem_latent)
    dem.load_state_dict({k[4:]: v for k, v in payload["state"].items() if k.startswith("dem.")})
    with torch.no_grad():
        psi, _ = dem(torch.zeros(1, n_psi), torch.zeros(1, 3, 112, 112, 2), window_times(torch.arange(4)))
    if not torch.isfinite(psi).all():
        raise RuntimeError("the network's forward pass gave non-finite values")
    return f"DEM forward {tuple(psi.shape)} on torch {torch.__version__}"


def _face_mesh() -> str:
    import mediapipe as mp
    import numpy as np

    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True) as mesh:
        mesh.process(np.zeros((64, 64, 3), np.uint8))
    return f"face mesh ran (mediapipe {mp.__version__})"


def _flow() -> str:
    import cv2
    import numpy as np

    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    frame = np.zeros((32, 32), np.uint8)
    dis.calc(frame, frame, None)
    if not hasattr(cv2, "optflow"):
        raise RuntimeError("cv2 has no optflow module: install opencv-contrib-python, not opencv-python")
    return f"DIS flow ran (OpenCV {cv2.__version__}, contrib)"


def run_checks(weights: Path) -> list[Check]:
    """Every check, in order; a failed import skips the checks that need it."""
    out: list[Check] = []

    def attempt(name: str, fn: Callable[[], str]) -> bool:
        try:
            out.append(Check(name, True, fn()))
        except Exception as exc:   # what failed, in one line, whatever it was
            out.append(Check(name, False, f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]))
        return out[-1].ok

    imported = {}
    for module, need in _IMPORTS:
        imported[module] = attempt(f"import {module}", lambda m=module: str(getattr(
            importlib.import_module(m), "__version__", "ok")) + (f" ({need})" if need else ""))
    if imported["numpy"]:
        attempt("numpy version", _numpy_version)
    if imported["torch"] and imported["torchdiffeq"]:
        attempt("network forward pass", lambda: _network_forward(weights))
    if imported["mediapipe"]:
        attempt("face mesh", _face_mesh)
    if imported["cv2"]:
        attempt("optical flow", _flow)
    return out
