"""Where the add-on finds the backend's Python (no bpy)."""
from __future__ import annotations

import functools
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the add-on's folder, above core/
PYTHON_HINT = "run `python3 build.py env` in the MicroFace checkout to create its .venv, then pick .venv/bin/python"


@functools.lru_cache(maxsize=None)   # read once: the panel asks on every redraw
def addon_version(package_dir: Path = PACKAGE_DIR) -> str:
    """The add-on's version from its manifest (in the zip beside the package, in the repo above it); "" if unknown."""
    import tomllib

    for folder in (package_dir, package_dir.parent):
        try:
            return str(tomllib.loads((folder / "blender_manifest.toml").read_text(encoding="utf-8"))["version"])
        except (OSError, ValueError, KeyError):
            continue
    return ""


def env_python(env: Path) -> Path:
    """The interpreter of the virtual environment in folder ``env``."""
    return env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def venv_python(root: Path) -> Path:
    """A checkout's ``.venv`` interpreter (``python3 build.py env`` makes it)."""
    return env_python(root / ".venv")


def checkout_roots(package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """Folders that may hold the backend this add-on runs: its own folder (the extension zip
    carries ``backend/`` and the weights) and the folder above it (running from the repo)."""
    return [package_dir, package_dir.parent]


def find_backend_python(package_dir: Path = PACKAGE_DIR, environ=os.environ, setups: tuple[Path, ...] = ()) -> str:
    """The backend's interpreter: ``$MICROFACE_PYTHON``, else an environment Set Up Backend made (in
    ``setups``), else a checkout's ``.venv`` python, else ""."""
    from .contract import contract_module

    env = environ.get(contract_module("protocol").ENV_PYTHON, "")
    if env and Path(env).is_file():
        return env
    for folder in setups:
        if env_python(folder).is_file():
            return str(env_python(folder))
    for root in checkout_roots(package_dir):
        py = venv_python(root)
        if py.is_file() and (root / "backend" / "__init__.py").is_file():
            return str(py)
    return ""
