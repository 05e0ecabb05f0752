"""Shared fixtures: paths to the real clips and assets beside the repo, and small video writers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
VIDEOS = SHARED / "videos"


def shared_video(name: str) -> Path:
    path = VIDEOS / name
    if not path.exists():
        pytest.skip(f"real clip {path} is not present (it lives in ../shared/videos beside the repo)")
    return path


def write_video(path: Path, frames: np.ndarray, fps: float = 30.0) -> Path:
    """Write (T, H, W, 3) uint8 RGB frames to an mp4 with OpenCV. Returns ``path``."""
    import cv2

    h, w = frames.shape[1:3]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert vw.isOpened(), "OpenCV cannot write mp4 here"
    for f in frames:
        vw.write(np.ascontiguousarray(f[..., ::-1]))
    vw.release()
    return path


def tiny_wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel of distribution ``name`` whose module (the name with "-" as "_")
    holds VALUE = 42: enough for pip to install offline from ``folder``."""
    import base64
    import hashlib
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    module = name.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    files = {f"{module}/__init__.py": "VALUE = 42\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=').decode()},"
              f"{len(text.encode())}" for path, text in files.items()]
    files[f"{info}/RECORD"] = "\n".join(record + [f"{info}/RECORD,,"]) + "\n"
    whl = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return whl


def evaluated_vertices(obj, world: bool = False) -> np.ndarray:
    """(V, 3) float64 metres: the depsgraph-evaluated mesh of a Blender object (shape keys and
    armature applied), in its local space, or in world space with ``world``."""
    import bpy

    ev = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    me = ev.to_mesh()
    co = np.empty(3 * len(me.vertices), np.float64)
    me.vertices.foreach_get("co", co)
    m = np.array(ev.matrix_world)
    ev.to_mesh_clear()
    co = co.reshape(-1, 3)
    return co @ m[:3, :3].T + m[:3, 3] if world else co


@pytest.fixture(scope="module")
def registered_addon():
    """The add-on registered from the repo for a test module, unregistered after it."""
    import microface_blender

    microface_blender.register()
    yield microface_blender
    microface_blender.unregister()


@pytest.fixture(scope="session")
def head_model():
    """The head model (the stand-in in ../shared/assets unless configured), loaded once."""
    from backend.head.flame import load_flame

    return load_flame()


def fake_checkout(root: Path, main_py: str, version: str = "") -> Path:
    """A checkout at ``root/checkout`` whose ``python -m backend`` runs ``main_py`` (for the
    add-on's child-process tests). Returns the checkout folder."""
    checkout = root / "checkout"
    (checkout / "backend").mkdir(parents=True)
    (checkout / "backend" / "__init__.py").write_text(f'__version__ = "{version}"\n' if version else "")
    (checkout / "backend" / "cli.py").write_text("")
    (checkout / "backend" / "__main__.py").write_text(main_py)
    return checkout


@pytest.fixture(scope="module")
def synth(head_model, request):
    """A synthetic result of the requesting module's ``T`` frames at source frames 100, 102, ...
    (keys every second scene frame), with smooth detail fields and 2 um noise."""
    from backend.synthetic.synth_result import synthetic_result

    return synthetic_result(head_model, request.module.T, seed=11, first_frame=100, frame_step=2, noise_mm=0.002)


@pytest.fixture(scope="module")
def result_path(synth, tmp_path_factory):
    """The requesting module's ``synth`` result, written to a file once per module."""
    from backend.contract.result import write_result

    return write_result(tmp_path_factory.mktemp("res") / "clip.npz", synth)
