"""Reconstruct Micro-Expression on a movie strip, in headless bpy: the real backend on a trimmed
strip of single_face.mp4 end to end (stepped as the modal operator steps it), keys on the scene
frames where the strip shows each source frame (checked by rendering the sequencer), the matched
camera and its background clip, the operator and undo, and failures that leave bpy.data unchanged.

The backend runs once (about 15 s); every later test finds the result in the module's cache."""
from __future__ import annotations

import copy
import os
import re
import sys
import textwrap
import time
import types
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from conftest import evaluated_vertices, fake_checkout, shared_video  # noqa: E402
from microface_blender.core import backend_job  # noqa: E402
from microface_blender.ops import strip_ops  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ID_COLLECTIONS = ("objects", "meshes", "armatures", "actions", "collections", "shape_keys", "cameras",
                  "movieclips")
# Content at scene frame 20, trimmed to scene frames 23-32: source frames 3-12.
FRAME_START, FIRST, LAST = 20, 3, 12

pytestmark = pytest.mark.usefixtures("registered_addon")   # registered once per module


@pytest.fixture(scope="module")
def video():
    return str(shared_video("single_face.mp4"))


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    py = ROOT / ".venv" / "bin" / "python"
    if not py.is_file():
        pytest.skip("the backend's environment .venv is not built")
    return backend_job.BackendSettings(python=str(py), cache_dir=str(tmp_path_factory.mktemp("cache")), device="cpu")


def _new_scene(video: str, fps: int = 30):
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = fps, 1.0
    ed = scene.sequence_editor_create()
    strip = ed.strips.new_movie("face", video, 1, FRAME_START)
    strip.frame_offset_start = FIRST
    strip.frame_offset_end = strip.frame_duration - (LAST + 1)
    ed.active_strip = strip
    assert (strip.frame_final_start, strip.frame_final_end) == (FRAME_START + FIRST, FRAME_START + LAST + 1)
    return scene, strip


@pytest.fixture
def strip_scene(video):
    return _new_scene(video)


def _counts() -> dict:
    out = {k: len(getattr(bpy.data, k)) for k in ID_COLLECTIONS}
    out["scene_children"] = len(bpy.context.scene.collection.children)
    out["camera"] = bpy.context.scene.camera
    return out


def _key_frames(id_data) -> np.ndarray:
    anim = id_data.animation_data
    fc = anim.action.layers[0].strips[0].channelbag(anim.action_slot).fcurves[0]
    co = np.empty(2 * len(fc.keyframe_points), np.float32)
    fc.keyframe_points.foreach_get("co", co)
    return co[0::2]




def _read(path):
    from backend.contract.result import read_result

    return read_result(path)


# --- end to end ---------------------------------------------------------------------------------

def test_strip_end_to_end_stepped_like_the_modal_operator(strip_scene, settings, video):
    scene, strip = strip_scene
    before = _counts()
    t0 = time.perf_counter()
    run = strip_ops.reconstruct_strip(bpy.context, strip, settings, wait=False)
    assert (run.start_frame, run.end_frame) == (FIRST, LAST) and run.state == "running"
    steps, worst, texts = 0, 0.0, set()
    while True:  # what the modal operator does on each timer tick
        s = time.perf_counter()
        state = run.step()
        worst = max(worst, time.perf_counter() - s)
        texts.add(run.job.progress.text)
        steps += 1
        if state != "running":
            break
        assert _counts() == before  # nothing touches the scene while the child runs
        time.sleep(strip_ops.POLL_INTERVAL)
    assert state == "done", run.job.message
    backend_s = time.perf_counter() - t0
    s = time.perf_counter()
    out = run.apply(bpy.context)
    import_s = time.perf_counter() - s
    print(f"\nstrip operator, single_face source 3-12: backend {backend_s:.1f} s, import {import_s:.2f} s, "
          f"{steps} polls every {strip_ops.POLL_INTERVAL} s, slowest poll {worst * 1e3:.2f} ms")
    assert worst < 0.05  # the UI thread only drains a queue (measured under 1 ms)
    assert any(t.startswith("flow ") for t in texts)
    res = _read(run.job.output)
    np.testing.assert_array_equal(res.frame_indices, np.arange(FIRST, LAST + 1))
    # Keys land on the scene frames where the strip shows those source frames.
    expected = FRAME_START + np.arange(FIRST, LAST + 1)
    np.testing.assert_array_equal(out.scene_frames, expected)
    np.testing.assert_array_equal(_key_frames(out.rig), expected)
    np.testing.assert_array_equal(_key_frames(out.mesh.data.shape_keys), expected)
    assert out.collection.name == "face" and out.rig.name == "face_rig"
    for id_data in (out.collection, out.rig, out.mesh):
        assert id_data["microface_source_clip"] == video and id_data["microface_source_name"] == "single_face.mp4"
        assert id_data["microface_strip"] == "face" and list(id_data["microface_source_range"]) == [FIRST, LAST]
    # The evaluated head at the scene frame of source frame 7 is the backend's vertices for it.
    t = 7 - FIRST
    scene.frame_set(int(expected[t]))
    err = np.abs(evaluated_vertices(out.mesh) - res.vertices[t]).max()
    assert err < 1e-4, err
    assert out.camera is not None and out.camera.parent == out.rig


def _pixels(scene, cam, points: np.ndarray) -> np.ndarray:
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    w, h = scene.render.resolution_x, scene.render.resolution_y
    uv = np.array([tuple(world_to_camera_view(scene, cam, Vector(p)))[:2] for p in points])
    return np.stack([uv[:, 0] * w - 0.5, (1.0 - uv[:, 1]) * h - 0.5], 1)  # OpenCV pixels, centres at integers


def _project(res, verts: np.ndarray) -> np.ndarray:
    f, cx, cy = (float(v) for v in res.intrinsics)
    return np.stack([cx + f * verts[:, 0] / -verts[:, 2], cy - f * verts[:, 1] / -verts[:, 2]], 1)


def test_camera_projects_the_mesh_onto_the_footage(strip_scene, settings, video):
    scene, strip = strip_scene
    scene.render.resolution_x, scene.render.resolution_y = 100, 100  # to be replaced: the user asked
    out = strip_ops.reconstruct_strip(bpy.context, strip, settings, set_resolution=True)
    res = _read(out.collection["microface_result_path"])
    cam = out.camera
    assert cam.name == "face_camera" and cam.name in out.collection.objects and scene.camera == cam
    assert (scene.render.resolution_x, scene.render.resolution_y) == tuple(res.image_size)
    assert cam.data.sensor_fit == 'HORIZONTAL' and cam.data.sensor_width == 36.0
    assert cam.data.lens == pytest.approx(res.intrinsics[0] / res.image_size[0] * 36.0, rel=1e-6)
    idx = np.arange(0, 5023, 97)
    worst = 0.0
    for t in (0, 5, len(res.frame_indices) - 1):
        scene.frame_set(int(out.scene_frames[t]))
        mw = np.array(out.mesh.matrix_world)
        local = evaluated_vertices(out.mesh)[idx]
        world = local @ mw[:3, :3].T + mw[:3, 3]
        got = _pixels(scene, cam, world)
        worst = max(worst, np.abs(got - _project(res, res.vertices[t][idx])).max())
    print(f"\ncamera projection vs the result's pinhole: max {worst:.4f} px")
    assert worst < 0.5


def test_camera_shift_signs_for_an_off_centre_portrait_camera(tmp_path):
    """A synthetic result with the principal point far from the centre, in a portrait image."""
    from backend.head.flame import load_flame
    from backend.contract.result import write_result
    from backend.synthetic.synth_result import synthetic_result

    from microface_blender.scene import importer

    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    synth = synthetic_result(load_flame(), 3, seed=2)
    synth = copy.copy(synth)
    w, h = 360, 640
    synth.image_size = np.array([w, h], np.int32)
    synth.intrinsics = np.array([700.0, 150.0, 380.0], np.float32)  # left of and below the centre
    path = write_result(tmp_path / "portrait.npz", synth)
    out = importer.import_result(bpy.context, path, camera=importer.CameraOptions(clip="", set_resolution=True))
    assert len(out.camera.data.background_images) == 0  # clip="" asks for none
    scene.frame_set(int(out.scene_frames[0]))  # evaluates the parenting
    mw = np.array(out.mesh.matrix_world)
    local = evaluated_vertices(out.mesh)[::50]
    got = _pixels(scene, out.camera, local @ mw[:3, :3].T + mw[:3, 3])
    err = np.abs(got - _project(synth, synth.vertices[0][::50])).max()
    assert err < 0.5, err


def _frame_distance(img: np.ndarray, frames: list[np.ndarray]) -> np.ndarray:
    return np.array([np.abs(img - f).mean() for f in frames])


@pytest.fixture(scope="module")
def decoded(video):
    import cv2

    cap = cv2.VideoCapture(video)
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(cv2.resize(f, (160, 90), interpolation=cv2.INTER_AREA).astype(np.float32))
    return frames


def _render_png(scene, path: Path) -> np.ndarray:
    import cv2

    scene.render.filepath = str(path)
    scene.render.image_settings.file_format = 'PNG'
    bpy.ops.render.render(write_still=True)
    return cv2.resize(cv2.imread(str(path)), (160, 90), interpolation=cv2.INTER_AREA).astype(np.float32)


def _shown_by_sequencer(scene, frame: int, tmp_path: Path, decoded) -> int:
    """The source frame the sequencer shows at ``frame``, by rendering it and matching the decoded frames."""
    scene.frame_set(frame)
    return int(np.argmin(_frame_distance(_render_png(scene, tmp_path / f"vse_{frame}.png"), decoded)))


def _shown_by_clip(scene, clip, frame: int, tmp_path: Path, decoded) -> int:
    """The frame the movie clip (the camera's background) shows at scene ``frame``, through the
    compositor's Movie Clip node, which maps scene to clip frames as the background does."""
    ng = scene.compositing_node_group
    if ng is None:
        ng = bpy.data.node_groups.new("clip_check", 'CompositorNodeTree')
        ng.interface.new_socket("Image", in_out='OUTPUT', socket_type='NodeSocketColor')
        node = ng.nodes.new('CompositorNodeMovieClip')
        ng.links.new(node.outputs["Image"], ng.nodes.new('NodeGroupOutput').inputs[0])
        scene.compositing_node_group = ng
    ng.nodes["Movie Clip"].clip = clip
    seq = scene.render.use_sequencer
    scene.render.use_sequencer, scene.render.use_compositing = False, True
    try:
        scene.frame_set(frame)
        return int(np.argmin(_frame_distance(_render_png(scene, tmp_path / f"clip_{frame}.png"), decoded)))
    finally:
        scene.render.use_sequencer, scene.render.use_compositing = seq, False


@pytest.mark.parametrize("scene_fps", [30, 60])
def test_keys_and_background_match_what_the_strip_shows(settings, video, decoded, tmp_path, scene_fps):
    """Render the sequencer at the key frames: it shows the source frame keyed there. At 60 fps the
    strip is added as Add > Movie does by default (its playback rate adjusted to real time)."""
    if scene_fps == 30:
        scene, strip = _new_scene(video)
    else:
        bpy.ops.wm.read_homefile(use_empty=True)
        scene = bpy.context.scene
        scene.render.fps, scene.render.fps_base = 60, 1.0
        scene.render.resolution_x, scene.render.resolution_y = 640, 360  # before: Add > Movie fits to it
        scene.sequence_editor_create()
        win = bpy.context.window
        area = win.screen.areas[0]
        area.type = 'SEQUENCE_EDITOR'
        region = next(r for r in area.regions if r.type == 'WINDOW')
        bpy.context.workspace.sequencer_scene = scene
        with bpy.context.temp_override(window=win, area=area, region=region, scene=scene):
            # move_strips=False: the interactive placement crashes without a real window.
            bpy.ops.sequencer.movie_strip_add(filepath=video, directory=os.path.dirname(video),
                                              files=[{"name": os.path.basename(video)}], frame_start=FRAME_START,
                                              channel=1, adjust_playback_rate=True, use_framerate=False, sound=False,
                                              move_strips=False, set_view_transform=False)
        strip = scene.sequence_editor.active_strip
        assert strip.frame_duration == 144  # 72 frames at 30 fps, in real time at 60 fps
        strip.frame_offset_start, strip.frame_offset_end = 2 * FIRST, 144 - 2 * LAST - 1
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 640, 360, 100
    scene.view_settings.view_transform = 'Standard'  # the footage's own colours
    scene.render.engine = 'CYCLES'  # should anything 3D get rendered: EEVEE has no GPU context headless
    scene.cycles.samples = 1
    out = strip_ops.reconstruct_strip(bpy.context, strip, settings)  # same source frames: from the cache
    step = scene_fps // 30  # scene frames per source frame
    np.testing.assert_array_equal(out.scene_frames, FRAME_START + step * np.arange(FIRST, LAST + 1))
    clip = out.camera.data.background_images[0].clip
    assert os.path.samefile(clip.filepath, video)
    for t in (0, 4, 9):
        frame = int(out.scene_frames[t])
        assert _shown_by_sequencer(scene, frame, tmp_path, decoded) == FIRST + t
        if scene_fps == 30:  # the background clip plays one frame per scene frame
            assert _shown_by_clip(scene, clip, frame, tmp_path, decoded) == FIRST + t
    assert out.camera["microface_clip_matches"] == (scene_fps == 30)


# --- the operator -------------------------------------------------------------------------------

@pytest.fixture
def preferences(registered_addon):
    """The add-on's preferences (register() alone, as in these tests, makes no add-on entry)."""
    addons = bpy.context.preferences.addons
    entry = addons.new()
    entry.module = registered_addon.__name__
    yield entry.preferences
    addons.remove(entry)


def test_operator_runs_synchronously_headless_and_undoes_in_one_step(strip_scene, settings, preferences):
    scene, strip = strip_scene
    p = preferences
    p.python, p.cache_dir, p.device = settings.python, settings.cache_dir, 'CPU'
    assert bpy.ops.microface.reconstruct_strip.poll()
    bpy.ops.ed.undo_push(message="before")
    before = _counts()
    assert bpy.ops.microface.reconstruct_strip('INVOKE_DEFAULT') == {'FINISHED'}  # -b: no modal loop
    assert "face_rig" in bpy.data.objects and "face_camera" in bpy.data.objects
    status = bpy.context.window_manager.microface_status
    assert "Reconstructed face (source frames 3-12) from the cache" in status
    assert "; active regions: " in status   # the backend's call, from the shipped weights' rule
    bpy.ops.ed.undo()
    assert _counts() == {**before, "camera": None}
    assert "face_rig" not in bpy.data.objects


def test_set_up_backend_from_a_checkout_says_what_to_do_instead(preferences):
    # Running from the repo there is no extension user folder: the checkout's .venv is the way.
    before = preferences.python
    with pytest.raises(RuntimeError, match="Set Up Backend is for the installed extension.*python3 build.py env"):
        bpy.ops.microface.setup_backend()
    assert preferences.python == before


def test_button_is_off_with_the_reason_when_the_backend_is_missing(strip_scene, preferences):
    scene, strip = strip_scene
    preferences.python = ""
    assert not bpy.ops.microface.reconstruct_strip.poll()
    assert strip_ops.unavailable_reason(bpy.context) == backend_job.BACKEND_NOT_FOUND
    scene.sequence_editor.active_strip = None
    assert strip_ops.unavailable_reason(bpy.context) == strip_ops.SELECT_STRIP
    assert not bpy.ops.microface.reconstruct_cancel.poll()


_FAKE = textwrap.dedent('''
    import json, os, sys, time
    args = sys.argv[1:]
    out = args[args.index("-o") + 1]
    print(json.dumps({"event": "stage", "stage": "flow", "done": 3, "total": 12}), flush=True)
    mode = os.environ["FAKE_MODE"]
    if mode == "error":
        print(json.dumps({"event": "error", "message": "no face found in any frame (frames 3-12)"}), flush=True)
        sys.exit(2)
    if mode == "garbage":
        open(out, "wb").write(b"not a result file")
        print(json.dumps({"event": "done", "output": out}), flush=True)
        sys.exit(0)
    time.sleep(60)
''')


@pytest.fixture
def fake_settings(tmp_path):
    checkout = fake_checkout(tmp_path, _FAKE)
    flame = tmp_path / "head.pkl"
    flame.write_bytes(b"x")
    return backend_job.BackendSettings(python=sys.executable, cache_dir=str(tmp_path / "cache"), flame=str(flame),
                                       checkout=str(checkout))


@pytest.mark.parametrize("mode, message", [
    ("error", "no face found in any frame (frames 3-12)"),
    ("garbage", "not a MicroFace result"),
])
def test_a_failing_backend_leaves_bpy_data_unchanged(strip_scene, fake_settings, monkeypatch, mode, message):
    scene, strip = strip_scene
    monkeypatch.setenv("FAKE_MODE", mode)
    before = _counts()
    with pytest.raises(strip_ops.ReconstructFailed, match=re.escape(message)) as info:
        strip_ops.reconstruct_strip(bpy.context, strip, fake_settings)
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)
    assert _counts() == before


def test_a_failure_while_adding_the_camera_removes_the_import_too(strip_scene, settings, monkeypatch):
    from microface_blender.scene import camera

    scene, strip = strip_scene
    before = _counts()

    def boom(*args):
        raise RuntimeError("camera failed")

    monkeypatch.setattr(camera, "lens_from_intrinsics", boom)
    with pytest.raises(RuntimeError, match="camera failed"):
        strip_ops.reconstruct_strip(bpy.context, strip, settings)
    assert _counts() == before


def test_cancel_midway_leaves_the_scene_and_the_cache_as_they_were(strip_scene, fake_settings, monkeypatch):
    scene, strip = strip_scene
    monkeypatch.setenv("FAKE_MODE", "slow")
    before = _counts()
    run = strip_ops.reconstruct_strip(bpy.context, strip, fake_settings, wait=False)
    while run.step() == "running" and run.job.progress.stage != "flow":
        time.sleep(0.02)
    assert run.state == "running" and run.status.startswith("face: flow 3/12")
    run.cancel()
    assert run.step() == "cancelled"
    with pytest.raises(strip_ops.ReconstructFailed, match="cancelled"):
        run.apply(bpy.context)
    assert _counts() == before
    assert list(Path(fake_settings.cache_dir).iterdir()) == []


# --- the modal operator, driven by hand -----------------------------------------------------------
# Headless Blender has no event loop, so the operator's invoke/modal run here against a stand-in
# window manager and workspace, with the same calls the UI would make on each timer tick.

_COPY = textwrap.dedent('''
    import json, os, shutil, sys, time
    args = sys.argv[1:]
    out = args[args.index("-o") + 1]
    for i in range(1, 4):
        print(json.dumps({"event": "stage", "stage": "flow", "done": i, "total": 3}), flush=True)
        time.sleep(0.1)
    if os.environ["FAKE_MODE"] == "copy":
        shutil.copy(os.environ["FAKE_RESULT"], out)
        print(json.dumps({"event": "done", "output": out, "warnings": []}), flush=True)
        sys.exit(0)
    time.sleep(60)
''')


class _FakeWM:
    def __init__(self):
        self.timers, self.handlers, self.microface_status = [], [], ""

    def event_timer_add(self, step, window=None):
        timer = types.SimpleNamespace(time_step=step)
        self.timers.append(timer)
        return timer

    def event_timer_remove(self, timer):
        self.timers.remove(timer)

    def modal_handler_add(self, op):
        self.handlers.append(op)


class _FakeWorkspace:
    def __init__(self):
        self.status = []

    def status_text_set(self, text):
        self.status.append(text)


def _fake_operator():
    op_type = strip_ops.MICROFACE_OT_reconstruct_strip
    op = types.SimpleNamespace(add_camera=True, set_resolution=False, use_cache=True, bl_label=op_type.bl_label,
                               reports=[])
    op.report = lambda kind, message: op.reports.append((next(iter(kind)), message))
    for name in ("_start", "_finish", "execute", "invoke", "modal", "cancel"):
        setattr(op, name, types.MethodType(getattr(op_type, name), op))
    return op


@pytest.fixture
def modal(strip_scene, fake_settings, settings, video, monkeypatch):
    """(operator, context, window manager, workspace) with the modal path switched on and the fake
    backend, which copies the real result of source frames 3-12 (FAKE_MODE=copy) or hangs."""
    job = backend_job.start_reconstruction(settings, video, FIRST, LAST)  # cached after the first test
    assert job.wait() == "done", job.message
    (Path(fake_settings.checkout) / "backend" / "__main__.py").write_text(_COPY)
    monkeypatch.setenv("FAKE_RESULT", str(job.output))
    monkeypatch.setattr(strip_ops, "synchronous", lambda context: False)
    monkeypatch.setattr(strip_ops, "settings_from_context", lambda context: fake_settings)
    wm, ws = _FakeWM(), _FakeWorkspace()
    ctx = types.SimpleNamespace(window=object(), window_manager=wm, workspace=ws, scene=bpy.context.scene,
                                view_layer=bpy.context.view_layer, sequencer_scene=None,
                                preferences=bpy.context.preferences)
    yield _fake_operator(), ctx, wm, ws
    strip_ops.stop_running()


def _tick(op, ctx, wm, kind="TIMER"):
    event = types.SimpleNamespace(type=kind, value='PRESS', timer=wm.timers[0] if wm.timers else None)
    return op.modal(ctx, event)


def test_modal_run_polls_on_a_timer_and_imports_when_done(modal, monkeypatch):
    op, ctx, wm, ws = modal
    monkeypatch.setenv("FAKE_MODE", "copy")
    before = _counts()
    assert op.invoke(ctx, None) == {'RUNNING_MODAL'}
    assert [t.time_step for t in wm.timers] == [strip_ops.POLL_INTERVAL] and wm.handlers == [op]
    assert ws.status[-1] == "MicroFace: face: starting (0 s) | Esc: cancel"
    assert strip_ops.unavailable_reason(bpy.context) == "A reconstruction is running"
    assert bpy.ops.microface.reconstruct_cancel.poll()
    assert _tick(op, ctx, wm, "MOUSEMOVE") == {'PASS_THROUGH'}  # the UI keeps working
    ticks = 0
    while (ret := _tick(op, ctx, wm)) == {'PASS_THROUGH'}:
        ticks += 1
        assert _counts() == before
        time.sleep(strip_ops.POLL_INTERVAL)
    assert ret == {'FINISHED'}, op.reports
    assert any(s and "flow" in s for s in ws.status)
    assert ws.status[-1] is None and wm.timers == [] and strip_ops._RUN.run is None  # all cleaned up
    assert "face_rig" in bpy.data.objects and "face_camera" in bpy.data.objects
    assert wm.microface_status.startswith("Reconstructed face (source frames 3-12) in ")
    assert op.reports[-1][0] == 'INFO'


def test_esc_stops_the_child_and_leaves_everything_as_it_was(modal, monkeypatch, fake_settings):
    op, ctx, wm, ws = modal
    monkeypatch.setenv("FAKE_MODE", "hang")
    before = _counts()
    assert op.invoke(ctx, None) == {'RUNNING_MODAL'}
    proc = strip_ops._RUN.run.job._proc
    while strip_ops._RUN.run.job.progress.done < 2:
        assert _tick(op, ctx, wm) == {'PASS_THROUGH'}
        time.sleep(0.05)
    t0 = time.perf_counter()
    assert _tick(op, ctx, wm, "ESC") == {'CANCELLED'}
    latency = time.perf_counter() - t0
    print(f"\nEsc to a stopped child and a clean scene: {latency * 1e3:.0f} ms")
    assert proc.poll() is not None and latency < 1.0
    assert _counts() == before and wm.timers == [] and ws.status[-1] is None
    assert list(Path(fake_settings.cache_dir).iterdir()) == []
    assert op.reports == [('WARNING', "Reconstruction of face cancelled")]


def test_the_panels_cancel_button_and_unregister_stop_the_child(modal, monkeypatch):
    op, ctx, wm, ws = modal
    monkeypatch.setenv("FAKE_MODE", "hang")
    assert op.invoke(ctx, None) == {'RUNNING_MODAL'}
    proc = strip_ops._RUN.run.job._proc
    assert bpy.ops.microface.reconstruct_cancel() == {'FINISHED'}
    assert proc.poll() is not None
    assert _tick(op, ctx, wm) == {'CANCELLED'} and wm.timers == []
    assert op.invoke(ctx, None) == {'RUNNING_MODAL'}  # again, then stopped from outside
    proc = strip_ops._RUN.run.job._proc
    strip_ops.stop_running()
    assert proc.poll() is not None and wm.timers == [] and ws.status[-1] is None
    assert _tick(op, ctx, wm) == {'CANCELLED'}


class _Layout:
    """Records what a panel draws."""

    def __init__(self, log):
        self.log = log

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self.log.append((name, args, kwargs))
            return _Layout(self.log)
        return call


def _drawn(draw, *args) -> list:
    log = []
    draw(_Layout(log), *args)
    return log


def test_preferences_draw_set_up_backend_its_progress_and_how_it_ended(monkeypatch):
    from microface_blender.ops import prefs

    def draw(python=""):
        log = _drawn(lambda layout, context: prefs.MicroFacePreferences.draw(
            types.SimpleNamespace(layout=layout, python=python), context), bpy.context)
        return log, [k.get("text", "") for name, a, k in log if name == "label"]

    monkeypatch.setattr(prefs._SETUP, "message", "")   # no setup has run yet
    log, labels = draw()
    assert ("operator", ("microface.setup_backend",), {"icon": 'CONSOLE'}) in log
    assert any(t.startswith("No backend found: press Set Up Backend") for t in labels)
    monkeypatch.setattr(prefs._SETUP, "job", types.SimpleNamespace(progress=("Installing packages (3/16)", 0.4)))
    log, labels = draw()
    assert "Installing packages (3/16): 40 %" in labels
    assert ("operator", ("microface.setup_backend_cancel",), {"text": "Cancel", "icon": 'CANCEL'}) in log
    monkeypatch.setattr(prefs._SETUP, "job", None)
    monkeypatch.setattr(prefs._SETUP, "message", "backend check failed: import torch: ModuleNotFoundError")
    monkeypatch.setattr(prefs._SETUP, "failed", True)
    log, labels = draw("/some/python")
    assert ("label", (), {"text": "backend check failed: import torch: ModuleNotFoundError", "icon": 'ERROR'}) in log


def test_panels_draw_the_button_the_reason_and_the_progress(strip_scene, preferences, monkeypatch):
    from microface_blender.ops import ui

    scene, strip = strip_scene
    preferences.python = ""
    log = _drawn(strip_ops.draw_reconstruct, bpy.context)
    assert ("operator", ("microface.reconstruct_strip",), {"icon": 'SEQUENCE'}) in log
    labels = " ".join(k.get("text", "") for name, a, k in log if name == "label")
    assert "face: frames 23-32" in labels and "Backend not found: press Set Up Backend" in labels
    for panel in (ui.MICROFACE_PT_main, strip_ops.MICROFACE_PT_sequencer):
        log = _drawn(lambda layout, context: panel.draw(types.SimpleNamespace(layout=layout), context), bpy.context)
        assert any(name == "operator" and a == ("microface.reconstruct_strip",) for name, a, k in log), panel
    job = types.SimpleNamespace(progress=backend_job.Progress("flow", 30, 71))
    monkeypatch.setattr(strip_ops._RUN, "run", types.SimpleNamespace(job=job, status="face: flow 30/71 (4 s)"))
    log = _drawn(strip_ops.draw_reconstruct, bpy.context)
    assert log[1] == ("progress", (), {"factor": 30 / 71, "type": 'BAR', "text": "face: flow 30/71 (4 s)"})
    assert log[2] == ("operator", ("microface.reconstruct_cancel",), {"text": "Cancel", "icon": 'CANCEL'})
