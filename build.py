"""MicroFace headless entry point.

Runs as ``python3 build.py COMMAND ...`` and as ``blender -b -P build.py -- COMMAND ...``.

Commands:
  [batch] INPUT... -o OUTDIR [...]      convert clips or folders of clips to OUTDIR/<stem>.blend
                                        (--fbx --gltf --abc exports; ``batch --help`` lists the options);
                                        the default when the first argument is no other command
  reconstruct VIDEO -o OUT.npz [...]   run the backend on a clip (``python -m backend reconstruct``)
  test [pytest args]                    run the test suite
  env                                   only create or update the local environment
  pack [-o DIR]                         write the Blender extension zip DIR/microface-<version>.zip
                                        (default DIR: dist/): the add-on, its backend, the weights
                                        and the expression basis (made from ../shared/assets)

Every command creates or reuses ``.venv`` beside this file, idempotently: the pinned set in
``pyproject.toml`` ([tool.microface.env]) is installed once and re-installed only when it changes.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
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


def _run_in_env(args: list[str], cwd: Path | None = ROOT) -> int:
    """Run ``.venv``'s python with ``args`` (the checkout on its path); ``cwd=None``: the caller's folder."""
    py = ensure_env()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([str(py), *args], cwd=cwd, env=env)
    # `timeout`, `kill` or a closed terminal signal this process only: pass it on, so the child
    # (the batch, which stops its backend and removes its staging folder) is never orphaned.
    forwarded = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {s: signal.signal(s, lambda signum, _frame: proc.send_signal(signum)) for s in forwarded}
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:
                # Ctrl-C reaches the child too (same process group): let it clean up, then make sure.
                try:
                    return proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.terminate()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _repo_on_path() -> None:
    """Make the checkout importable (``blender -P`` does not put the script's folder on sys.path)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def _in_env() -> bool:
    """True when this interpreter is the project's ``.venv`` (where ``bpy`` is the PyPI module)."""
    return Path(sys.prefix).resolve() == VENV.resolve()


def batch(args: list[str]) -> int:
    """Batch conversion (``microface_blender/batch.py``) in a Python that has bpy: Blender's own
    (``blender -b -P``) or the .venv's, into which plain ``python3`` re-executes this script. The
    backend always runs as a child process with the .venv's python."""
    if "bpy" not in sys.modules and not _in_env():
        # The caller's folder stays the working folder: relative inputs and OUTDIR mean what they said.
        return _run_in_env([str(ROOT / "build.py"), "batch", *args], cwd=None)
    py = ensure_env()
    _repo_on_path()
    from microface_blender import batch as batch_module  # imports bpy: only here, never at the top

    return batch_module.main(args, python=str(py), backend_root=ROOT)


COMMANDS = ("batch", "reconstruct", "test", "env", "pack")


def route(argv: list[str]) -> tuple[str, list[str]]:
    """(command, its arguments); a first argument that names no command starts a batch."""
    if argv and argv[0] in COMMANDS:
        return argv[0], argv[1:]
    return "batch", list(argv)


PACKAGE = ROOT / "microface_blender"
MANIFEST = ROOT / "blender_manifest.toml"
_PACK_SKIP_DIRS = {"__pycache__", "tests"}
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same sources give the same zip
CONTRACT = ("result", "protocol")  # backend/contract/<name>.py -> core/<name>.py (core/contract.py PACKED)
# Development only, never imported by the shipped pipeline (tests/test_layout.py): not packed.
_BACKEND_DEV_ONLY = {"training", "synthetic"}
BACKEND_ENV_FILE = "backend_env.json"   # the pinned set, for the add-on's Set Up Backend (core/backend_setup.py)
_BASIS_SCRIPT = ("import sys; from backend.head.flame import load_flame; "
                 "from backend.head.expression_layer import STAND_IN_FILE, basis_of_model, save_basis; "
                 "from backend.config import assets_folder; "
                 "save_basis(basis_of_model(load_flame(assets_folder() / STAND_IN_FILE)), sys.argv[1])")


def _files_under(folder: Path, skip: set[str] = frozenset()) -> list[Path]:
    """The files of ``folder`` to pack: no caches, tests, hidden or compiled files, nor ``skip`` folders."""
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if (not path.is_file() or any(p in _PACK_SKIP_DIRS or p in skip or p.startswith(".") for p in rel.parts)
                or path.suffix in (".pyc", ".pyo") or rel.name.startswith("test_")):
            continue
        out.append(path)
    return out


def _pack_files() -> list[tuple[str, Path]]:
    """(name in the zip, source) for the extension: manifest and package at the root; backend/contract's
    result.py and protocol.py as the package's core/ modules (the one definition of the result file
    and of the command line, copied, never kept twice); the backend the add-on runs in a child
    process, its shipped weights and the project's licence."""
    files = [("blender_manifest.toml", MANIFEST), ("LICENSE", ROOT / "LICENSE")]
    files += [(p.relative_to(PACKAGE).as_posix(), p) for p in _files_under(PACKAGE)]
    for name in CONTRACT:
        packed = f"core/{name}.py"
        if any(n == packed for n, _ in files):
            raise SystemExit(f"error: {PACKAGE / packed} must not exist: pack copies backend/contract/{name}.py there")
        files.append((packed, ROOT / "backend" / "contract" / f"{name}.py"))
    files += [(p.relative_to(ROOT).as_posix(), p) for p in _files_under(ROOT / "backend", _BACKEND_DEV_ONLY)
              if p.suffix == ".py"]
    weights = ROOT.joinpath("weights", "microface.pt")
    files += [("weights/microface.pt", weights), ("weights/microface.pt.json", weights.with_suffix(".pt.json"))]
    return files


def _generated_files() -> list[tuple[str, bytes]]:
    """Files the zip carries that are made at pack time from ../shared/assets, never committed: the
    network's expression basis (backend/head/expression_layer.py) and its licence, and the pinned set."""
    import tempfile

    _repo_on_path()
    from backend.config import assets_folder

    assets = assets_folder()
    licence = assets.parent / "LICENSE-ICT-FaceKit.txt" if assets is not None else None
    if licence is None or not licence.is_file():
        raise SystemExit("error: pack needs ../shared/assets (the stand-in head model and LICENSE-ICT-FaceKit.txt) "
                         "to write the network's expression basis; set MICROFACE_ASSETS to its flame/ folder")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "basis.npz"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        subprocess.run([str(ensure_env()), "-c", _BASIS_SCRIPT, str(out)], check=True, cwd=ROOT, env=env)
        basis = out.read_bytes()
    return [("weights/microface_expression_basis.npz", basis),
            ("LICENSES/ICT-FaceKit.txt", licence.read_bytes()),
            (BACKEND_ENV_FILE, (json.dumps(_env_spec(), indent=1) + "\n").encode())]


def pack(out_dir: Path) -> Path:
    """Write the installable extension zip into ``out_dir`` atomically; return its path."""
    import tomllib
    import zipfile

    manifest = tomllib.loads(MANIFEST.read_text(encoding="utf-8"))
    with open(ROOT / "pyproject.toml", "rb") as fh:
        project_version = tomllib.load(fh)["project"]["version"]
    if manifest["version"] != project_version:
        raise SystemExit(f"error: blender_manifest.toml version {manifest['version']} differs from "
                         f"pyproject.toml version {project_version}")
    out_dir = Path(out_dir).expanduser().absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    _repo_on_path()
    from backend.contract.atomic import atomic_path  # stdlib only, like this script

    entries = [(name, src.read_bytes()) for name, src in _pack_files()] + _generated_files()
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name, _ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return target


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0 if argv else 2
    cmd, rest = route(argv)
    if cmd == "batch":
        return batch(rest)
    if cmd == "env":
        ensure_env(quiet=False)
        return 0
    if cmd == "reconstruct":
        return _run_in_env(["-m", "backend", "reconstruct", *rest], cwd=None)
    if cmd == "test":
        return _run_in_env(["-m", "pytest", *rest])
    if cmd == "pack":
        import argparse

        ap = argparse.ArgumentParser(prog="build.py pack", description="write the Blender extension zip")
        ap.add_argument("-o", "--output-dir", type=Path, default=ROOT / "dist", help="folder for the zip")
        print(pack(ap.parse_args(rest).output_dir))
        return 0
    raise AssertionError(cmd)  # route() gives only COMMANDS


if __name__ == "__main__":
    sys.exit(main(_script_args()))
