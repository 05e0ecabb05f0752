"""Add-on preferences: the head model, the backend's interpreter (or Set Up Backend, which makes
one: core/backend_setup.py), its device and the cache folder."""
import os
import sys
import tempfile
from pathlib import Path

import bpy
from bpy.props import EnumProperty, StringProperty

from ..core import backend_job, backend_setup
from ..core.paths import PACKAGE_DIR, PYTHON_HINT, find_backend_python

# The add-on is the package above ops/: "microface_blender" in the repo, "bl_ext.<repo>.microface" once installed.
ADDON_ID = __package__.rpartition(".")[0]


def default_cache_dir() -> str:
    """The extension's own user folder (kept across updates, removed on uninstall); a temp folder
    when running from the repo, where there is no extension folder."""
    try:
        return bpy.utils.extension_path_user(ADDON_ID, path="cache", create=True)
    except ValueError:
        return os.path.join(tempfile.gettempdir(), "microface-cache")


def setup_env_dir() -> Path | None:
    """Where Set Up Backend puts the backend's environment: the extension's user folder; None when
    running from the repo (there ``python3 build.py env`` makes the checkout's .venv)."""
    try:
        return Path(bpy.utils.extension_path_user(ADDON_ID, path=backend_setup.SETUP_FOLDER))
    except ValueError:
        return None


# Properties are built outside the class body: string literals inside annotations read as
# forward references to linters (pyflakes), and two defaults are only known at register time.
def _python_prop(default: str = ""):
    return StringProperty(name="Backend Python", subtype='FILE_PATH', default=default,
                          description="Python interpreter of the MicroFace backend (the checkout's .venv/bin/python)")


def _cache_prop(default: str = ""):
    return StringProperty(name="Cache Folder", subtype='DIR_PATH', default=default,
                          description="Where reconstructions of sequencer strips are kept")


_HEAD_MODEL = StringProperty(
    name="Head Model", subtype='FILE_PATH',
    description="FLAME-format .pkl head model for the backend (empty: $MICROFACE_FLAME, else the open stand-in)")
_DEVICE = EnumProperty(
    name="Device", default='AUTO',
    items=(('AUTO', "Auto", "CUDA when present, else CPU"),
           ('CPU', "CPU", "Run the backend on the CPU"),
           ('CUDA', "CUDA", "Run the backend on an NVIDIA GPU")))
_PYTHON = _python_prop()
_CACHE = _cache_prop()
_WHEELS = StringProperty(
    name="Wheel Folder", subtype='DIR_PATH',
    description="Optional: a folder of wheels of the backend's pinned packages (made with `pip download`) to "
                "set the backend up offline; empty installs from the package index")


class MicroFacePreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    head_model: _HEAD_MODEL
    python: _PYTHON
    device: _DEVICE
    cache_dir: _CACHE
    wheel_folder: _WHEELS

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "head_model")
        box = layout.box()
        box.prop(self, "python")
        job = _SETUP.job
        if job is not None:
            label, share = job.progress
            row = box.row()
            row.label(text=f"{label}: {100 * share:.0f} %", icon='TIME')
            row.operator("microface.setup_backend_cancel", text="Cancel", icon='CANCEL')
        else:
            row = box.row()
            row.operator("microface.setup_backend", icon='CONSOLE')
            row.prop(self, "wheel_folder", text="")
            if _SETUP.message:
                box.label(text=_SETUP.message, icon='ERROR' if _SETUP.failed else 'CHECKMARK')
            elif not self.python:
                box.label(text="No backend found: press Set Up Backend, or " + PYTHON_HINT, icon='INFO')
        layout.prop(self, "device")
        layout.prop(self, "cache_dir")


def set_defaults() -> None:
    """Fill the defaults that depend on where the add-on lives (called from register, not at import)."""
    env = setup_env_dir()
    MicroFacePreferences.__annotations__["python"] = _python_prop(find_backend_python(setups=(env,) if env else ()))
    MicroFacePreferences.__annotations__["cache_dir"] = _cache_prop(default_cache_dir())


def get(context) -> MicroFacePreferences | None:
    """The preferences, or None when the add-on runs unregistered as an add-on (tests, scripts)."""
    addon = context.preferences.addons.get(ADDON_ID)
    return addon.preferences if addon else None


# --- Set Up Backend -------------------------------------------------------------------------------

class _SetupRun:
    job: backend_setup.SetupJob | None = None
    timer = None
    message: str = ""       # how the last setup ended, shown under the button
    failed: bool = False


_SETUP = _SetupRun()


def _redraw_preferences() -> None:
    wm = bpy.context.window_manager
    for window in wm.windows if wm is not None else ():
        for area in window.screen.areas:
            if area.type == 'PREFERENCES':
                area.tag_redraw()


def setup_request(context) -> backend_setup.SetupRequest:
    """What Set Up Backend builds, from the preferences; :class:`backend_setup.SetupError` when it cannot."""
    target = setup_env_dir()
    if target is None:
        raise backend_setup.SetupError("Set Up Backend is for the installed extension; in a MicroFace checkout run "
                                       "`python3 build.py env` and pick .venv/bin/python")
    backend = backend_job.find_checkout("") or PACKAGE_DIR     # the zip's own backend (validate names a missing one)
    req, no_deps = backend_setup.pinned_set(PACKAGE_DIR)
    p = get(context)
    wheels = bpy.path.abspath(p.wheel_folder) if p is not None and p.wheel_folder else ""
    # Blender's own interpreter makes the environment: its Python version is the one the wheels are for.
    return backend_setup.SetupRequest(base_python=sys.executable, target=target, backend=backend,
                                      requirements=tuple(req), no_deps=tuple(no_deps), wheels=wheels)


def _end_setup(job: backend_setup.SetupJob, context) -> None:
    wm = context.window_manager
    if _SETUP.timer is not None and wm is not None:
        wm.event_timer_remove(_SETUP.timer)
    _SETUP.job, _SETUP.timer = None, None
    _SETUP.failed = job.state != "done"
    if job.state == "done":
        p = get(context)
        if p is not None:
            p.python = job.python
        _SETUP.message = f"Backend ready: {job.python} ({len(job.checks)} checks passed)"
    else:
        _SETUP.message = job.message or job.state
    _redraw_preferences()


class MICROFACE_OT_setup_backend(bpy.types.Operator):
    bl_idname = "microface.setup_backend"
    bl_label = "Set Up Backend"
    bl_description = ("Create the backend's Python environment in the extension's user folder with its pinned "
                      "packages (from the package index, or offline from the wheel folder), check it, and use it")
    bl_options = {'REGISTER'}   # it changes no Blender data: nothing to undo

    @classmethod
    def poll(cls, context):
        return _SETUP.job is None

    def _start(self, context) -> backend_setup.SetupJob | None:
        try:
            job = backend_setup.SetupJob(setup_request(context)).start()
        except backend_setup.SetupError as exc:
            _SETUP.message, _SETUP.failed = str(exc), True
            self.report({'ERROR'}, _SETUP.message)
            return None
        if job.state != "running":   # refused before anything ran (no wheel folder, ...)
            self._finish(context, job)
            return None
        return job

    def _finish(self, context, job) -> set:
        _end_setup(job, context)
        self.report({'INFO'} if job.state == "done" else {'ERROR'}, _SETUP.message)
        return {'FINISHED'} if job.state == "done" else {'CANCELLED'}

    def execute(self, context):
        # Synchronous under -b and from scripts: no event loop to poll from.
        job = self._start(context)
        if job is None:
            return {'CANCELLED'}
        job.wait()
        return self._finish(context, job)

    def invoke(self, context, event):
        if bpy.app.background or context.window is None:
            return self.execute(context)
        job = self._start(context)
        if job is None:
            return {'CANCELLED'}
        _SETUP.job, _SETUP.message = job, ""
        _SETUP.timer = context.window_manager.event_timer_add(0.25, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {'RUNNING_MODAL'}

    def modal(self, context, event):
        job = _SETUP.job
        if job is None:   # stopped from outside (unregister)
            return {'CANCELLED'}
        if event.type != 'TIMER' or event.timer != _SETUP.timer:
            return {'PASS_THROUGH'}
        if job.poll() == "running":
            _redraw_preferences()
            return {'RUNNING_MODAL'}
        return self._finish(context, job)

    def cancel(self, context):
        # Blender removes the handler (file load, quit): stop the setup too.
        stop_setup()


class MICROFACE_OT_setup_backend_cancel(bpy.types.Operator):
    bl_idname = "microface.setup_backend_cancel"
    bl_label = "Cancel Setup"
    bl_description = "Stop Set Up Backend and remove what it made so far"
    bl_options = {'INTERNAL'}

    @classmethod
    def poll(cls, context):
        return _SETUP.job is not None

    def execute(self, context):
        _SETUP.job.cancel()   # the modal operator sees it on its next tick and cleans up
        return {'FINISHED'}


def stop_setup() -> None:
    """Cancel a setup in flight (unregister)."""
    if _SETUP.job is not None:
        _SETUP.job.cancel()
        _end_setup(_SETUP.job, bpy.context)


CLASSES = (MicroFacePreferences, MICROFACE_OT_setup_backend, MICROFACE_OT_setup_backend_cancel)
