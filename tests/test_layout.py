"""The layout of the backend and of the Blender add-on: subpackages whose imports point one way
(README, "Layout").

Every import statement of every module, at the top or inside a function, is read with ``ast`` and
resolved to the module it names, so a lazy import cannot hide a wrong way.
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
TOP_LEVEL = {"__init__", "__main__", "cli", "pipeline", "config", "errors", "overlay", "environment_check"}


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


def test_the_contract_modules_the_extension_carries_stand_alone():
    """``build.py pack`` copies these files into the zip by themselves: not even a sibling import."""
    from microface_blender.core.contract import PACKED

    for name in PACKED:
        other = sorted(n for n in imports(BACKEND / "contract" / f"{name}.py")
                       if n.split(".")[0] not in sys.stdlib_module_names and n.split(".")[0] != "numpy")
        assert not other, f"backend/contract/{name}.py imports {other}"


def test_backend_never_imports_benchmarks_or_experiments():
    users = [p.relative_to(ROOT).as_posix() for p in backend_modules()
             if any(n.split(".")[0] in ("benchmarks", "experiments") for n in imports(p))]
    assert not users


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


# --- the Blender add-on ---------------------------------------------------------------------------

ADDON = ROOT / "microface_blender"
ADDON_PARTS = ("core", "scene", "ops")  # each may import those before it, never those after
ADDON_TOP_LEVEL = {"__init__", "batch"}  # registration and the headless batch, which may import any part
BLENDER = {"bpy", "bpy_extras"}


def addon_modules() -> list[Path]:
    return sorted(p for p in ADDON.rglob("*.py") if "__pycache__" not in p.parts)


def addon_imports(path: Path) -> set[str]:
    """The add-on's own modules (and names in them) that ``path`` imports."""
    return {n for n in imports(path) if n.split(".")[0] == ADDON.name}


def test_every_addon_module_has_a_place():
    """What needs no bpy is in core/, what builds Blender data in scene/, operators and panels in ops/."""
    flat = {p.stem for p in ADDON.glob("*.py")} - ADDON_TOP_LEVEL
    assert not flat, f"microface_blender/{sorted(flat)} belong in one of {ADDON_PARTS}"
    subpackages = {p.name for p in ADDON.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert subpackages == set(ADDON_PARTS)
    assert all((ADDON / s / "__init__.py").is_file() for s in subpackages)
    assert all(p.parent.parent == ADDON for p in addon_modules() if p.parent != ADDON)  # no deeper folders


@pytest.mark.parametrize("path", sorted((ADDON / "core").glob("*.py")), ids=lambda p: p.name)
def test_addon_core_needs_numpy_and_the_standard_library_only(path):
    """No bpy or bpy_extras, so core/ runs and is tested without Blender; nothing from scene/ or ops/."""
    stdlib = sys.stdlib_module_names
    other = sorted(n for n in imports(path) if n.split(".")[0] not in stdlib and n.split(".")[0] != "numpy"
                   and not n.startswith(f"{ADDON.name}.core"))
    assert not other, f"microface_blender/core/{path.name} imports {other}"


@pytest.mark.parametrize("path", addon_modules(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_addon_imports_only_blender_numpy_the_standard_library_and_itself(path):
    """Never the backend (it runs in its own Python) nor anything Blender does not ship."""
    allowed = set(sys.stdlib_module_names) | BLENDER | {"numpy", ADDON.name}
    other = sorted(n for n in imports(path) if n.split(".")[0] not in allowed)
    assert not other, f"{path.relative_to(ROOT)} imports {other}"


@pytest.mark.parametrize("path", [p for p in addon_modules() if p.parent != ADDON],
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_addon_imports_point_one_way(path):
    """core <- scene <- ops: a part imports only itself and the parts before it, never the top level."""
    rank = ADDON_PARTS.index(path.parent.name)
    wrong = sorted(n for n in addon_imports(path)
                   if len(n.split(".")) < 2 or n.split(".")[1] not in ADDON_PARTS[: rank + 1])
    assert not wrong, f"{path.relative_to(ROOT)} imports {wrong}"


@pytest.mark.parametrize("path", addon_modules(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_addon_import_names_a_module(path):
    """Each import of the add-on's own code, lazy ones included, names a module or a name in one."""
    def is_module(name: str) -> bool:
        base = ROOT.joinpath(*name.split("."))
        return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()

    missing = sorted(n for n in addon_imports(path) if not is_module(n) and not is_module(n.rpartition(".")[0]))
    assert not missing, f"{path.relative_to(ROOT)} imports {missing}"


def test_import_reader_resolves_the_addons_relative_imports():
    """The checker itself, on add-on modules whose answers are known (one import there is lazy)."""
    assert {"microface_blender.core.backend_job", "microface_blender.ops.prefs",
            "microface_blender.scene.importer.import_result"} <= imports(ADDON / "ops" / "strip_ops.py")
    assert "microface_blender.scene.importer.ImportFailed" in imports(ADDON / "ops" / "operators.py")


@pytest.mark.parametrize("path", addon_modules(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_addon_module_imports(path):
    """Relative imports resolve after a move (the add-on needs Blender's bpy module to import)."""
    import importlib

    pytest.importorskip("bpy")
    importlib.import_module(module_name(path))
