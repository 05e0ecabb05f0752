"""The backend's layout: subpackages whose imports point one way (README, "Layout").

Every import statement of every backend module, at the top or inside a function, is read with
``ast`` and resolved to the backend module it names, so a lazy import cannot hide a wrong way.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BACKEND = ROOT / "backend"
SHIPPED = ("contract", "head", "capture", "net")         # what the product runs
OFFLINE = ("synthetic", "training")                     # what makes data and weights
TOP_LEVEL = {"__init__", "__main__", "cli", "pipeline", "config", "errors", "overlay"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (``from x import y`` also counts x.y)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def backend_modules() -> list[Path]:
    return sorted(p for p in BACKEND.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_backend_module_has_a_place():
    """The top level holds the entry points and configuration only; everything else is in a subpackage."""
    flat = {p.stem for p in BACKEND.glob("*.py")} - TOP_LEVEL
    assert not flat, f"backend/{sorted(flat)} belong in one of {SHIPPED + OFFLINE}"
    subpackages = {p.name for p in BACKEND.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert subpackages == set(SHIPPED + OFFLINE)
    assert all((BACKEND / s / "__init__.py").is_file() for s in subpackages)


def shipped_modules() -> list[Path]:
    return [p for p in backend_modules()
            if p.parent == BACKEND or p.relative_to(BACKEND).parts[0] in SHIPPED]


@pytest.mark.parametrize("path", shipped_modules(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_shipped_pipeline_never_imports_training_or_synthetic_code(path):
    wrong = sorted(n for n in imports(path) if n.split(".")[:2] in [["backend", o] for o in OFFLINE])
    assert not wrong, f"{path.relative_to(ROOT)} imports {wrong}"


@pytest.mark.parametrize("path", sorted((BACKEND / "contract").glob("*.py")), ids=lambda p: p.name)
def test_contract_needs_numpy_and_the_standard_library_only(path):
    """The add-on reads the result file with this code: no torch, no OpenCV, no other backend module."""
    stdlib = sys.stdlib_module_names
    other = sorted(n for n in imports(path)
                   if n.split(".")[0] not in stdlib and n.split(".")[0] != "numpy" and not n.startswith("backend.contract"))
    assert not other, f"backend/contract/{path.name} imports {other}"


def test_backend_never_imports_bpy():
    users = [p.relative_to(ROOT).as_posix() for p in backend_modules()
             if any(n.split(".")[0] in ("bpy", "bmesh", "mathutils") for n in imports(p))]
    assert not users


def test_import_reader_resolves_relative_imports():
    """The checker itself, on a module whose answer is known."""
    found = imports(BACKEND / "capture" / "fit.py")
    assert {"backend.head.camera", "backend.config", "backend.head.priors.expression_gram"} <= found


@pytest.mark.parametrize("path", backend_modules(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_backend_module_imports(path):
    """Relative imports resolve after a move (importing does no work, so this is cheap)."""
    import importlib

    if path.stem != "__main__":
        importlib.import_module(module_name(path))
