"""The headless batch (build.py -> microface_blender/batch.py): one real run on a real clip beside a
bad one, the .blend it saves, each export re-imported through Blender's own importers and compared
with the result file, reruns, usage errors, and the routing of both command-line styles."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import evaluated_vertices, shared_video

bpy = pytest.importorskip("bpy")

ROOT = Path(__file__).resolve().parents[1]
END = 12  # source frames 0..12: 13 frames keep the backend run to about 12 s on 2 cores
EXPORTS = ("fbx", "glb", "abc")


def _load_build():
    spec = importlib.util.spec_from_file_location("microface_build_batch", ROOT / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build_py(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "build.py"), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    """One real batch, as a user types it (plain Python style): a folder holding the real clip and a
    text file named bad.mp4, all three exports, the result kept for the comparisons below."""
    clip = shared_video("single_face.mp4")
    base = tmp_path_factory.mktemp("batch")
    clips = base / "clips"
    clips.mkdir()
    (clips / "single_face.mp4").symlink_to(clip)  # a link: the clip is never copied
    (clips / "bad.mp4").write_text("not a video\n")
    proc = _build_py("clips", "-o", "out", "--end", END, "--fbx", "--gltf", "--abc", "--keep-result", "-v", cwd=base)
    print(proc.stdout)
    out = base / "out"
    from backend.contract.result import read_result

    res = read_result(out / "single_face.npz") if (out / "single_face.npz").is_file() else None
    return SimpleNamespace(proc=proc, base=base, clips=clips, out=out, res=res)


def test_batch_reports_each_clip_and_fails_honestly(run):
    proc = run.proc
    assert proc.returncode == 1, proc.stdout + proc.stderr  # one clip failed
    lines = proc.stdout.splitlines()
    assert "Traceback" not in proc.stdout + proc.stderr
    # Only summary lines: the exporters' own chatter went to a log, not to the user.
    assert all(ln.startswith(("ok ", "FAILED ", "skip ", "       stages:", "2 clips:")) for ln in lines), lines
    assert [ln for ln in lines if ln.startswith("FAILED")] == [
        "FAILED bad.mp4: bad.mp4 is not a video OpenCV can decode"]
    ok = [ln for ln in lines if ln.startswith("ok ")]
    assert len(ok) == 1 and ok[0].startswith(f"ok     single_face.mp4  {END + 1} frames  ")
    line, active = ok[0].split("  active: ")   # the regions the backend's calibrated rule called active
    assert line.endswith("-> out/single_face.blend [fbx glb abc npz]")
    assert set(active.split(", ")) <= {"left_eye", "right_eye", "nose", "mouth", "left_cheek", "right_cheek",
                                       "forehead", "chin", "none"}
    assert lines[-1].startswith("2 clips: 1 converted, 0 skipped, 1 failed")
    # The four outputs of the good clip, nothing of the bad one, no temporary files left.
    assert sorted(p.name for p in run.out.iterdir()) == sorted(f"single_face.{s}" for s in ("blend", "npz") + EXPORTS)
    assert run.res is not None and len(run.res.vertices) == END + 1
    # The default motion: the flow reader on the fit, without the photometric stage (off by default)
    assert run.res.meta["reader"]["points"] > 1000 and "photometric" not in run.res.meta




def _frames_to_check(n: int) -> list[int]:
    return sorted({0, n // 2, n - 1})


def _keyed_range(id_data) -> tuple[float, float, int]:
    """(first key, last key, most keys on one curve) of the action ``id_data`` plays."""
    ad = id_data.animation_data
    action, slot = ad.action, ad.action_slot
    curves = action.layers[0].strips[0].channelbag(slot).fcurves
    ends = [fc.range() for fc in curves]
    return min(e[0] for e in ends), max(e[1] for e in ends), max(len(fc.keyframe_points) for fc in curves)


@pytest.fixture(scope="session")
def blend(run):
    """What the saved .blend holds: the rig's world matrix (camera space -> Blender world) and the
    worst error of its evaluated head against vertices[t] (metres)."""
    path = run.out / "single_face.blend"
    assert path.is_file(), run.proc.stdout + run.proc.stderr
    bpy.ops.wm.open_mainfile(filepath=str(path))
    scene = bpy.context.scene
    rig, head = bpy.data.objects["single_face_rig"], bpy.data.objects["single_face_head"]
    world = np.array(rig.matrix_world)
    errs = []
    for t in _frames_to_check(len(run.res.vertices)):
        scene.frame_set(1 + t)
        ref = run.res.vertices[t].astype(np.float64) @ world[:3, :3].T + world[:3, 3]
        errs.append(np.linalg.norm(evaluated_vertices(head, world=True) - ref, axis=1).max())
    keys = head.data.shape_keys
    # Plain values only: later tests load other files, which frees these datablocks.
    return SimpleNamespace(scene=(scene.frame_start, scene.frame_end, scene.render.fps / scene.render.fps_base),
                           rig_type=rig.type, parented=head.parent == rig, n_keys=len(keys.key_blocks),
                           rig_range=_keyed_range(rig), keys_range=_keyed_range(keys), world=world, err=max(errs))


def test_blend_holds_the_animated_rig(run, blend):
    n = len(run.res.vertices)
    assert blend.scene == (1, n, pytest.approx(run.res.meta["fps"]))  # the clip's range and rate
    assert blend.rig_type == 'ARMATURE' and blend.parented
    assert blend.rig_range == blend.keys_range == (1.0, float(n), n)
    assert blend.n_keys >= 1 + run.res.meta["head_model"]["n_expr"]
    print(f"blend: max error {blend.err * 1e3:.4f} mm at frames {_frames_to_check(n)}")
    assert blend.err <= 1e-4


@pytest.mark.parametrize("fmt", EXPORTS)
def test_export_reimports_with_the_animation(run, blend, fmt):
    """Each export, read back by Blender's importer into a fresh scene at the clip's rate, moves the
    head as the result file says: the keyed range and the world-space vertices at several frames."""
    res, n = run.res, len(run.res.vertices)
    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
    scene = bpy.context.scene
    scene.render.fps = round(res.meta["fps"])
    path = str(run.out / f"single_face.{fmt}")
    if fmt == "fbx":
        # anim_offset=0: Blender's FBX importer shifts keys by one frame by default.
        assert bpy.ops.import_scene.fbx(filepath=path, anim_offset=0.0) == {'FINISHED'}
    elif fmt == "glb":
        assert bpy.ops.import_scene.gltf(filepath=path) == {'FINISHED'}
    else:
        assert bpy.ops.wm.alembic_import(filepath=path, as_background_job=False) == {'FINISHED'}
    head = max((o for o in scene.objects if o.type == 'MESH'), key=lambda o: len(o.data.vertices))
    assert len(head.data.vertices) == res.vertices.shape[1]
    if fmt == "abc":  # baked meshes: the file's time range becomes the scene's
        assert head.modifiers[0].type == 'MESH_SEQUENCE_CACHE'
        assert (scene.frame_start, scene.frame_end) == (1, n)
    else:  # a skinned, shape-keyed head: a key on every frame, on the bones and on the shape keys
        rig = head.find_armature()
        assert rig is not None and head.data.shape_keys is not None
        assert _keyed_range(rig) == (1.0, float(n), n)
        assert _keyed_range(head.data.shape_keys) == (1.0, float(n), n)
        if fmt == "glb":
            # Blender's glTF importer sets a shape key's slider (its clamp) to 0..1 unless the mesh's
            # default weights go below 0; the file holds the weights unclamped, so widen the range.
            for kb in head.data.shape_keys.key_blocks:
                kb.slider_min, kb.slider_max = -10.0, 10.0
    errs = {}
    for t in _frames_to_check(n):
        scene.frame_set(1 + t)
        ref = res.vertices[t].astype(np.float64) @ blend.world[:3, :3].T + blend.world[:3, 3]
        errs[t] = float(np.linalg.norm(evaluated_vertices(head, world=True) - ref, axis=1).max())
    print(f"{fmt}: max error per frame (mm) {({t: round(e * 1e3, 4) for t, e in errs.items()})}; "
          f".blend {blend.err * 1e3:.4f} mm")
    # Axis conversion and unit scale undone by the importers: the error is the .blend's own (the
    # micro-detail shape keys' tolerance) plus float32 rounding.
    assert max(errs.values()) <= blend.err + 1e-5
    assert max(errs.values()) <= 1e-4


def _backend_pids(out: Path) -> list[int]:
    """Processes running ``backend reconstruct`` into a file under ``out`` (Linux /proc)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "reconstruct" in args and any(str(out) in a for a in args):
            pids.append(int(cmdline.parent.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists() or not hasattr(signal, "SIGHUP"), reason="needs Linux /proc")
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_a_terminated_batch_stops_its_backend_and_leaves_nothing(tmp_path, sig):
    # As `timeout` or a closed terminal does it: the signal reaches only the plain python3 that the
    # user started, which re-executes the batch in the .venv; before, the backend ran on at full CPU
    # and a staging folder stayed in the output folder.
    base = Path(getattr(sys, "_base_executable", "") or "")
    if not base.is_file() or ".venv" in base.parts:
        pytest.skip("no Python outside the .venv to start build.py as a user does")
    out = tmp_path / "out"
    proc = subprocess.Popen([str(base), str(ROOT / "build.py"), str(shared_video("single_face.mp4")), "-o", str(out),
                             "--end", str(END)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not _backend_pids(out) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert _backend_pids(out), "the backend never started"
        proc.send_signal(getattr(signal, sig))
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + getattr(signal, sig)
    assert err.strip().splitlines()[-1] == f"error: terminated by {sig}", err
    deadline = time.monotonic() + 5
    while _backend_pids(out) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _backend_pids(out)
    assert list(out.iterdir()) == []


def test_a_killed_batchs_staging_folder_is_removed_by_the_next_run(batch_module, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    dead = out / ".microface-my-clip-4194305-abc_12"     # above Linux's largest process id: never alive
    alive = out / f".microface-clip-{os.getpid()}-xyz"   # a running batch's
    foreign = out / ".microface-notes"                   # not a staging name: not ours to judge
    for p in (dead, alive, foreign):
        (p / "single_face.partial").mkdir(parents=True)
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video\n")
    batch_module.main([str(bad), "-o", str(out)], python=sys.executable, backend_root=ROOT)
    assert not dead.exists() and alive.is_dir() and foreign.is_dir()


def test_rerun_skips_finished_clips(run):
    stamps = {p.name: p.stat().st_mtime_ns for p in run.out.iterdir()}
    proc = _build_py("--", run.clips / "single_face.mp4", "-o", run.out, "--end", END, "--fbx", "--gltf", "--abc",
                     "--keep-result", cwd=run.base)  # the Blender-style `-- args` spelling
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[0] == "skip   single_face.mp4 (done; --force to redo)"
    assert {p.name: p.stat().st_mtime_ns for p in run.out.iterdir()} == stamps


@pytest.fixture
def batch_module():
    from microface_blender import batch

    return batch


def test_force_redoes_and_a_failed_export_replaces_nothing(run, batch_module, tmp_path, monkeypatch, capsys):
    """In-process, with the backend replaced by a copy of the kept result: --force rebuilds every
    output; an export that fails leaves the earlier outputs as they were and no temporary files."""
    import shutil

    out = tmp_path / "out"
    out.mkdir()
    clip = run.clips / "single_face.mp4"

    def fake_backend(opts, clip_, npz):
        shutil.copyfile(run.out / "single_face.npz", npz)
        return ["the face is 40 px wide"]   # the backend's warnings reach the clip's line

    monkeypatch.setattr(batch_module, "run_backend", fake_backend)
    args = [str(clip), "-o", str(out), "--abc"]

    def files():
        return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()}

    assert batch_module.main(args, python=sys.executable, backend_root=ROOT) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("ok "))
    assert line.endswith("  warning: the face is 40 px wide")
    first = files()
    assert sorted(first) == ["single_face.abc", "single_face.blend"]
    assert batch_module.main(args, python=sys.executable, backend_root=ROOT) == 0  # skipped
    assert files() == first

    def broken(kind, imp, path):
        raise RuntimeError("Error: disk\nfull")

    monkeypatch.setattr(batch_module, "export", broken)
    assert batch_module.main(args + ["--force"], python=sys.executable, backend_root=ROOT) == 1
    assert "FAILED single_face.mp4: Error: disk full\n" in capsys.readouterr().out
    assert files() == first  # nothing replaced, nothing left over
    monkeypatch.undo()
    monkeypatch.setattr(batch_module, "run_backend", fake_backend)
    assert batch_module.main(args + ["--force"], python=sys.executable, backend_root=ROOT) == 0
    again = files()
    assert sorted(again) == sorted(first) and all(again[k][0] != first[k][0] for k in first)  # new files


def test_a_kept_result_is_reused(run, batch_module, tmp_path, monkeypatch, capsys):
    """With --keep-result, a result left by an earlier run is imported again without the backend."""
    import shutil

    out = tmp_path / "out"
    out.mkdir()
    shutil.copyfile(run.out / "single_face.npz", out / "single_face.npz")

    def no_backend(*args):
        raise AssertionError("the backend ran")

    monkeypatch.setattr(batch_module, "run_backend", no_backend)
    args = [str(run.clips / "single_face.mp4"), "-o", str(out), "--keep-result"]
    assert batch_module.main(args, python=sys.executable, backend_root=ROOT) == 0
    assert f"ok     single_face.mp4  {END + 1} frames" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["single_face.blend", "single_face.npz"]


def test_livelink_writes_the_results_arkit_curves_as_a_live_link_face_take(run, batch_module, tmp_path, capsys):
    import shutil

    from microface_blender.core import livelink

    out = tmp_path / "out"
    out.mkdir()
    shutil.copyfile(run.out / "single_face.npz", out / "single_face.npz")   # no backend run needed
    args = [str(run.clips / "single_face.mp4"), "-o", str(out), "--keep-result", "--livelink"]
    assert batch_module.main(args, python=sys.executable, backend_root=ROOT) == 0
    assert "[livelink npz]" in capsys.readouterr().out
    csv_path = out / "single_face_livelink.csv"
    assert sorted(p.name for p in out.iterdir()) == ["single_face.blend", "single_face.npz", csv_path.name]
    lines = csv_path.read_text().splitlines()
    assert lines[0] == ",".join(livelink.HEADER) and len(lines) == END + 2
    assert lines[1].startswith("00:00:00:00.000,61,")                   # source frame 0 at the clip's rate
    take = livelink.read_take(csv_path, float(run.res.meta["fps"]))
    np.testing.assert_allclose(take.weights, run.res.arkit_weights, atol=1e-7)
    np.testing.assert_allclose(take.rotations, livelink.rotation_columns(run.res.head_rotation, run.res.eye_rotation),
                               atol=1e-7)


@pytest.mark.parametrize("args, message", [
    ([], "no input clips or folders given"),
    (["{clip}"], "no output folder given"),
    (["{tmp}/missing.mp4", "-o", "{tmp}/out"], "input .*missing.mp4 does not exist"),
    (["{clip}", "-o", "{tmp}/no/such/out"], "the parent of the output folder .* does not exist"),
    (["{clip}", "-o", "{tmp}/out", "--bogus"], "unrecognized arguments: --bogus"),
    (["{clip}", "-o", "{tmp}/out", "--start", "9", "--end", "3"], "--end 3 is before --start 9"),
    (["{tmp}/docs", "-o", "{tmp}/out"], "no video files"),
    (["{clip}", "{tmp}/other/c.mov", "-o", "{tmp}/out"], "would write the same outputs"),
])
def test_bad_usage_is_one_line_and_exit_2(batch_module, tmp_path, capsys, args, message):
    import re

    clip = tmp_path / "c.mp4"
    clip.write_bytes(b"")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "c.mov").write_bytes(b"")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("")  # a folder without clips
    args = [a.format(tmp=tmp_path, clip=clip) for a in args]
    assert batch_module.main(args, python=sys.executable, backend_root=ROOT) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_both_command_line_styles_route_to_the_same_batch(monkeypatch, tmp_path):
    build = _load_build()
    args = ["clips/", "-o", "out/", "--end", "12", "--fbx"]
    for argv in (["build.py", *args],                                  # python3 build.py ARGS
                 ["blender", "-b", "-P", "build.py", "--", *args],     # blender -b -P build.py -- ARGS
                 ["build.py", "batch", *args]):                        # explicit subcommand
        monkeypatch.setattr(sys, "argv", argv)
        assert build.route(build._script_args()) == ("batch", args)
    assert build.route(["test", "-q"]) == ("test", ["-q"])
    assert build.route(["pack", "-o", "x"]) == ("pack", ["-o", "x"])

    # Inside a Python that has bpy (Blender's, or the .venv's): the batch module runs in-process,
    # with the .venv's python for the backend.
    calls = []
    from microface_blender import batch

    monkeypatch.setattr(batch, "main", lambda a, **kw: calls.append((a, kw)) or 0)
    assert build.main(args) == 0 and build.main(["batch", *args]) == 0
    assert calls == [(args, {"python": str(build.venv_python()), "backend_root": build.ROOT})] * 2

    # Plain python3 outside the .venv: re-executed there, in the caller's working folder.
    monkeypatch.delitem(sys.modules, "bpy")
    monkeypatch.setattr(build, "_in_env", lambda: False)
    reexec = []
    monkeypatch.setattr(build, "_run_in_env", lambda a, cwd=build.ROOT: reexec.append((a, cwd)) or 0)
    assert build.main(args) == 0
    assert reexec == [([str(build.ROOT / "build.py"), "batch", *args], None)]


def test_build_py_stays_import_light():
    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('b', sys.argv[1]); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "print(sorted(k for k in ('bpy', 'numpy', 'torch') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT / "build.py")], capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"})
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
