"""The Blender extension as shipped: the manifest (checked by Blender's own extension tooling),
`build.py pack`, and a headless install, enable, use and uninstall of the packed zip."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "blender_manifest.toml"


def _bpy_dir() -> Path:
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the bpy module is not installed")
    return Path(list(spec.submodule_search_locations)[0])


@pytest.fixture(scope="module")
def blender_ext():
    """Blender's extension tool (bl_pkg/cli/blender_ext.py), the code behind `blender --command
    extension validate|build`, loaded as a module."""
    path = _bpy_dir() / "5.0/scripts/addons_core/bl_pkg/cli/blender_ext.py"
    spec = importlib.util.spec_from_file_location("blender_ext", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def build():
    spec = importlib.util.spec_from_file_location("microface_build", ROOT / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def packed(build, tmp_path_factory) -> Path:
    return build.pack(tmp_path_factory.mktemp("dist"))


def test_manifest_is_valid_for_blender(blender_ext):
    manifest = blender_ext.pkg_manifest_from_toml_and_validate_all_errors(str(MANIFEST), strict=True)
    assert not isinstance(manifest, list), manifest  # a list holds the errors
    assert manifest.schema_version == "1.0.0" and manifest.id == "microface" and manifest.type == "add-on"
    assert manifest.license == ["SPDX:GPL-3.0-or-later"]
    assert manifest.blender_version_min == "4.2.0"
    assert set(manifest.permissions) == {"files", "network"} and all(manifest.permissions.values())


def test_versions_agree():
    import backend

    manifest = tomllib.loads(MANIFEST.read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert manifest["version"] == project["version"] == backend.__version__


def test_pack_writes_the_extension_zip(packed, blender_ext, build):
    manifest = tomllib.loads(MANIFEST.read_text())
    assert packed.name == f"microface-{manifest['version']}.zip"
    with zipfile.ZipFile(packed) as zf:
        names = zf.namelist()
        for name in ("result", "protocol"):
            assert zf.read(f"core/{name}.py") == (ROOT / "backend" / "contract" / f"{name}.py").read_bytes()
        assert zf.read("blender_manifest.toml") == MANIFEST.read_bytes()
        assert zf.read("weights/microface.pt") == (ROOT / "weights" / "microface.pt").read_bytes()
        contents = {n: zf.read(n) for n in names}
    package = ROOT / "microface_blender"
    modules = [p.relative_to(package).as_posix() for p in package.rglob("*.py") if "__pycache__" not in p.parts]
    backend = [p.relative_to(ROOT).as_posix() for p in (ROOT / "backend").rglob("*.py")
               if "__pycache__" not in p.parts and not {"training", "synthetic"} & set(p.parts)]
    assert sorted(names) == sorted(["blender_manifest.toml", "LICENSE", "core/result.py", "core/protocol.py", *modules,
                                    *backend, "weights/microface.pt", "weights/microface.pt.json",
                                    "weights/microface_expression_basis.npz", "LICENSES/ICT-FaceKit.txt",
                                    "backend_env.json"])
    assert "__init__.py" in names and not any("__pycache__" in n or n.endswith(".pyc") or "/test" in n for n in names)
    # Nothing names the checkout it was packed in (the weights' provenance names its training data).
    for name, data in contents.items():
        assert str(ROOT).encode() not in data, name
    assert json.loads(contents["backend_env.json"]) == build._env_spec()   # Set Up Backend's pinned set
    # Blender's own validation of the archive (what `blender --command extension validate` runs).
    out = subprocess.run([sys.executable, str(_bpy_dir() / "5.0/scripts/addons_core/bl_pkg/cli/blender_ext.py"),
                          "validate", str(packed)], capture_output=True, text=True)
    assert out.returncode == 0 and "Success" in out.stdout, out.stdout + out.stderr


def test_pack_is_atomic_and_reproducible(build, tmp_path, monkeypatch):
    first = build.pack(tmp_path)
    data = first.read_bytes()
    assert build.pack(tmp_path).read_bytes() == data  # same sources, same bytes

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zipfile.ZipFile, "writestr", boom)
    with pytest.raises(OSError):
        build.pack(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [first.name] and first.read_bytes() == data


@pytest.mark.parametrize("args", [["pack", "-o"], ["--", "pack", "-o"]])  # python3 and `blender -b -P` style
def test_build_py_pack_command(tmp_path, args):
    out = subprocess.run([sys.executable, str(ROOT / "build.py"), *args, str(tmp_path)], capture_output=True,
                         text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).parent == tmp_path and Path(out.stdout.strip()).is_file()
    usage = subprocess.run([sys.executable, str(ROOT / "build.py"), "--help"], capture_output=True, text=True)
    assert all(cmd in usage.stdout for cmd in ("reconstruct", "test", "env", "pack"))


_INSTALL_SCRIPT = textwrap.dedent('''
    import json, os, sys
    import bpy

    zip_path, result_path, video, head_model, wheels = sys.argv[1:6]
    out = {}
    PKG = "bl_ext.user_default.microface"

    def registered():
        menu = [f for f in bpy.types.TOPBAR_MT_file_import._dyn_ui_initialize()
                if getattr(f, "__module__", "").startswith(PKG)]
        return {
            "operator": hasattr(bpy.types, "MICROFACE_OT_import_result")
                        and "import_result" in dir(bpy.ops.microface),
            "panel": hasattr(bpy.types, "MICROFACE_PT_main"),
            "strip_operators": all(hasattr(bpy.types, c) for c in ("MICROFACE_OT_reconstruct_strip",
                                                                   "MICROFACE_OT_reconstruct_cancel"))
                               and "reconstruct_strip" in dir(bpy.ops.microface),
            "sequencer_panel": hasattr(bpy.types, "MICROFACE_PT_sequencer"),
            "preferences": PKG in bpy.context.preferences.addons,
            "wm_property": hasattr(bpy.types.WindowManager, "microface_status"),
            "menu": bool(menu),
            "modules": sorted(m for m in sys.modules if m.startswith(PKG)),
        }

    out["install"] = sorted(bpy.ops.extensions.package_install_files(
        filepath=zip_path, repo="user_default", enable_on_install=True))
    out["enabled"] = registered()
    prefs = bpy.context.preferences.addons[PKG].preferences
    out["prefs"] = {"python": prefs.python, "cache_dir": prefs.cache_dir, "device": prefs.device}
    # Set Up Backend offline from a wheel folder that lacks the backend's packages: its check says
    # what is missing, and nothing is kept.
    prefs.wheel_folder = wheels
    try:
        bpy.ops.microface.setup_backend()
        out["setup"] = "finished"
    except RuntimeError as exc:
        out["setup"] = str(exc)
    out["setup_env"] = sorted(os.listdir(os.path.dirname(bpy.utils.extension_path_user(PKG, path="backend-env"))))
    out["python_after_setup"] = prefs.python
    out["import"] = sorted(bpy.ops.microface.import_result(filepath=result_path))
    out["strip_poll"] = [bpy.ops.microface.reconstruct_strip.poll(),
                         sys.modules[PKG + ".ops.strip_ops"].unavailable_reason(bpy.context)]
    # Reconstruct Micro-Expression on a trimmed strip, with the backend the zip carries.
    prefs.head_model, prefs.device = head_model, 'CPU'
    ed = bpy.context.scene.sequence_editor_create()
    strip = ed.strips.new_movie("face", video, 1, 1)
    strip.frame_offset_start, strip.frame_offset_end = 2, strip.frame_duration - 10
    ed.active_strip = strip
    out["reconstruct"] = sorted(bpy.ops.microface.reconstruct_strip('INVOKE_DEFAULT'))
    out["reconstruct_status"] = bpy.context.window_manager.microface_status
    head = bpy.data.objects.get("face_head")
    out["head_frames"] = head.get("microface_frames") if head else None
    out["first_source_frame"] = head.get("microface_first_source_frame") if head else None
    out["checkout"] = str(sys.modules[PKG + ".core.backend_job"].find_checkout(prefs.python))
    out["result_module"] = sys.modules[PKG + ".core.result"].__file__
    out["protocol_module"] = sys.modules[PKG + ".core.protocol"].__file__
    out["objects"] = sorted(o.name for o in bpy.data.objects)
    repo = [r for r in bpy.context.preferences.extensions.repos if r.module == "user_default"][0]
    out["uninstall"] = sorted(bpy.ops.extensions.package_uninstall(repo_directory=repo.directory, pkg_id="microface"))
    out["after"] = registered()
    out["left_in_repo"] = sorted(os.listdir(repo.directory))
    out["cache_left"] = os.path.exists(out["prefs"]["cache_dir"])
    print("RESULT " + json.dumps(out))
''')


@pytest.mark.slow
def test_packed_zip_installs_works_and_uninstalls_cleanly(packed, tmp_path):
    from backend.config import assets_folder
    from backend.head.expression_layer import STAND_IN_FILE
    from backend.head.flame import load_flame
    from backend.contract.result import write_result
    from backend.synthetic.synth_result import synthetic_result
    from conftest import shared_video, tiny_wheel

    result_path = write_result(tmp_path / "clip.npz", synthetic_result(load_flame(), 6, seed=4))
    user = tmp_path / "blender_user"
    # No checkout on any path: the backend interpreter is given, the backend is the zip's own copy.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BLENDER_USER_", "MICROFACE_")) and k != "PYTHONPATH"}
    env["BLENDER_USER_RESOURCES"] = str(user)  # never the real user configuration
    env["MICROFACE_PYTHON"] = str(ROOT / ".venv" / "bin" / "python")
    script = tmp_path / "install.py"
    script.write_text(_INSTALL_SCRIPT)
    video, head_model = shared_video("single_face.mp4"), assets_folder() / STAND_IN_FILE
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    from microface_blender.core.backend_setup import pinned_set

    with zipfile.ZipFile(packed) as zf:
        (tmp_path / "packed").mkdir()
        (tmp_path / "packed" / "backend_env.json").write_bytes(zf.read("backend_env.json"))
    requirements, no_deps = pinned_set(tmp_path / "packed")     # what the installed add-on will ask for
    assert "mediapipe==0.10.21" in no_deps and not any(r.startswith(("pytest", "bpy")) for r in requirements)
    for name in requirements + no_deps:
        tiny_wheel(wheels, *name.split("=="))   # every pinned package, as an empty stand-in: offline, all resolved
    proc = subprocess.run([sys.executable, str(script), str(packed), str(result_path), str(video), str(head_model),
                           str(wheels)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout + proc.stderr
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["install"] == ["FINISHED"]
    enabled = out["enabled"]
    assert enabled["operator"] and enabled["panel"] and enabled["preferences"] and enabled["wm_property"]
    assert enabled["strip_operators"] and enabled["sequencer_panel"]
    assert out["strip_poll"] == [False, "Select a movie strip in the Sequencer"]  # no strip: off, with the reason
    assert enabled["menu"]
    ext_dir = user / "extensions" / "user_default" / "microface"
    assert out["prefs"]["python"] == env["MICROFACE_PYTHON"]
    assert out["setup"].startswith("Error: backend check failed: "), out["setup"]
    assert "import torch: ModuleNotFoundError" not in out["setup"] and "numpy" in out["setup"], out["setup"]
    assert out["setup_env"] == ["cache"] and out["python_after_setup"] == env["MICROFACE_PYTHON"]
    assert Path(out["prefs"]["cache_dir"]).is_relative_to(user) and out["prefs"]["device"] == "AUTO"
    assert not Path(out["prefs"]["cache_dir"]).is_relative_to(ext_dir)  # never the add-on's own folder
    assert out["import"] == ["FINISHED"]
    assert Path(out["result_module"]) == ext_dir / "core" / "result.py"  # the packed copy, not the repo's
    assert Path(out["protocol_module"]) == ext_dir / "core" / "protocol.py"
    assert {"synthetic_4_head", "synthetic_4_rig"} <= set(out["objects"])
    assert out["reconstruct"] == ["FINISHED"], out["reconstruct_status"]
    assert out["head_frames"] == 8     # source frames 2-9 of the trimmed strip
    assert out["checkout"] == str(ext_dir)          # the zip's own backend ran, not the repo's
    assert out["first_source_frame"] == 2
    assert out["uninstall"] == ["FINISHED"]
    assert out["after"] == {"operator": False, "panel": False, "preferences": False, "wm_property": False,
                            "strip_operators": False, "sequencer_panel": False, "menu": False, "modules": []}
    assert out["left_in_repo"] == [".blender_ext"] and not out["cache_left"]
