"""MicroFace headless entry point.

Runs as ``python3 build.py COMMAND ...`` and as ``blender -b -P build.py -- COMMAND ...``.

Commands:
  reconstruct VIDEO -o OUT.npz [...]   run the backend on a clip (``python -m backend reconstruct``)
  test [pytest args]                    run the test suite
  env                                   only create or update the local environment

The first two create or reuse ``.venv`` beside this file, idempotently: the pinned set in
``pyproject.toml`` ([tool.microface.env]) is installed once and re-installed only when it changes.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / "microface-env.json"


def _script_args() -> list[str]:
    """Arguments meant for this script, under Blender (after ``--``) or plain Python."""
    argv = sys.argv
    if "--" in argv:
        return argv[argv.index("--") + 1:]
    return argv[1:]


def _env_spec() -> dict:
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as fh:
        spec = tomllib.load(fh)["tool"]["microface"]["env"]
    return {"requirements": list(spec["requirements"]), "no_deps": list(spec["no_deps"])}


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _base_python() -> str:
    """A Python 3.11 to build the venv from (bpy 5.0.1 exists only for CPython 3.11)."""
    if sys.version_info[:2] == (3, 11) and "bpy" not in sys.modules:
        return sys.executable
    for name in ("python3.11", "python3"):
        for folder in os.environ.get("PATH", "").split(os.pathsep):
            cand = Path(folder) / name
            if cand.is_file() and os.access(cand, os.X_OK):
                out = subprocess.run([str(cand), "-c", "import sys;print(sys.version_info[:2]==(3,11))"],
                                     capture_output=True, text=True)
                if out.stdout.strip() == "True":
                    return str(cand)
    raise SystemExit("error: MicroFace needs CPython 3.11 on PATH to build its environment (bpy 5.0.1 is cp311 only)")


def ensure_env(quiet: bool = True) -> Path:
    """Create or update ``.venv`` so that it holds exactly the pinned set; return its python."""
    spec = _env_spec()
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    py = venv_python()
    if py.exists() and STAMP.exists():
        try:
            if json.loads(STAMP.read_text()).get("sha256") == digest:
                return py
        except (OSError, ValueError):
            pass
    print(f"[build] preparing {VENV} (one time, a few minutes)", file=sys.stderr, flush=True)
    if not py.exists():
        subprocess.run([_base_python(), "-m", "venv", str(VENV)], check=True)
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check"] + (["-q"] if quiet else [])
    subprocess.run(pip + spec["requirements"], check=True)
    subprocess.run(pip + ["--no-deps"] + spec["no_deps"], check=True)
    tmp = STAMP.with_suffix(".tmp")
    tmp.write_text(json.dumps({"sha256": digest, **spec}, indent=1))
    os.replace(tmp, STAMP)
    return py


def _run_in_env(args: list[str]) -> int:
    py = ensure_env()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([str(py), *args], cwd=ROOT, env=env).returncode


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "env":
        ensure_env(quiet=False)
        return 0
    if cmd == "reconstruct":
        return _run_in_env(["-m", "backend", "reconstruct", *rest])
    if cmd == "test":
        return _run_in_env(["-m", "pytest", *rest])
    print(f"error: unknown command {cmd!r}; try: reconstruct, test, env", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(_script_args()))
