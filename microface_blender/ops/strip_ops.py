"""Reconstruct Micro-Expression on the active movie strip.

The backend runs as a child process (:mod:`..core.backend_job`) on the strip's visible source frames
(:mod:`..core.strip_map`); the modal operator polls it from a window timer every ``POLL_INTERVAL``
seconds, so Blender stays responsive, and imports the result on the main thread in one undo step
with keys on the scene frames where the strip shows each source frame. Esc or the panel's Cancel
stops the child and leaves the scene as it was. Under ``-b`` (no event loop) and when redone from
the Adjust Last Operation panel the same steps run synchronously.
"""
from __future__ import annotations

import os
import traceback

import bpy
from bpy.props import BoolProperty

from ..core import backend_job
from ..core.paths import find_backend_python
from ..core.strip_map import StripMapError, StripTiming, strip_timing
from ..scene.camera import CameraOptions
from ..scene.importer import PROP_PREFIX, ImportFailed, import_result
from . import prefs

POLL_INTERVAL = 0.1  # seconds between looks at the child's progress (a queue drain: microseconds)
SELECT_STRIP = "Select a movie strip in the Sequencer"


class ReconstructFailed(Exception):
    """Reconstruction or import failed. ``str(err)`` is one line for the user; the scene is unchanged."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


# --- the strip ----------------------------------------------------------------------------------

def sequencer_scene(context):
    """The scene whose sequencer the user sees (Blender 5.0's ``context.sequencer_scene``), else the
    context's scene."""
    return getattr(context, "sequencer_scene", None) or context.scene


def active_movie_strip(context):
    """The active strip of the sequencer scene when it is a movie strip, else None."""
    ed = sequencer_scene(context).sequence_editor
    strip = ed.active_strip if ed is not None else None
    return strip if strip is not None and strip.type == 'MOVIE' else None


def strip_video(strip) -> str:
    """Absolute path of the strip's movie."""
    return os.path.normpath(bpy.path.abspath(strip.filepath, library=strip.id_data.library))


def _movie_frames(path: str) -> int | None:
    """The movie's frame count, read with Blender's own decoder (the one the strip uses). Loads a
    movie clip only when none is loaded for the file, and removes it again."""
    clip = next((c for c in bpy.data.movieclips if os.path.normpath(bpy.path.abspath(c.filepath)) == path), None)
    if clip is not None:
        return int(clip.frame_duration) or None
    try:
        clip = bpy.data.movieclips.load(path, check_existing=False)
    except RuntimeError:
        return None
    try:
        return int(clip.frame_duration) or None
    finally:
        bpy.data.movieclips.remove(clip)


def timing_of(scene, strip) -> StripTiming:
    """The strip's :class:`StripTiming` in ``scene`` (see :mod:`..core.strip_map`). Raises StripMapError."""
    scene_fps = scene.render.fps / scene.render.fps_base
    movie_fps = float(getattr(strip, "fps", 0.0)) or scene_fps
    n_keys = len(strip.retiming_keys) if hasattr(strip, "retiming_keys") else 0
    kwargs = dict(frame_start=strip.frame_start, final_start=strip.frame_final_start, final_end=strip.frame_final_end,
                  frame_duration=strip.frame_duration, movie_fps=movie_fps, scene_fps=scene_fps,
                  animation_offset_start=strip.animation_offset_start, animation_offset_end=strip.animation_offset_end,
                  n_retiming_keys=n_keys, reversed_frames=bool(getattr(strip, "use_reverse_frames", False)))
    try:
        return strip_timing(**kwargs)
    except StripMapError:
        if n_keys < 2 and abs(movie_fps - scene_fps) < 1e-9:
            raise
    # The rate is not plain 1: the movie's length tells which it is.
    return strip_timing(**kwargs, movie_frames=_movie_frames(strip_video(strip)))


# --- settings and why the button is off ---------------------------------------------------------

def settings_from_context(context) -> backend_job.BackendSettings:
    """The backend settings from the add-on preferences (defaults when it runs unregistered)."""
    p = prefs.get(context)
    if p is None:
        return backend_job.BackendSettings(python=find_backend_python(), cache_dir=prefs.default_cache_dir())
    ab = bpy.path.abspath
    return backend_job.BackendSettings(python=ab(p.python) if p.python else "", flame=ab(p.head_model) if p.head_model else "",
                                       device=p.device.lower(), cache_dir=ab(p.cache_dir) if p.cache_dir else "")


def unavailable_reason(context, settings: backend_job.BackendSettings | None = None) -> str | None:
    """None when Reconstruct can run, else one line saying why not and what to do."""
    if _RUN.run is not None:
        return "A reconstruction is running"
    strip = active_movie_strip(context)
    if strip is None:
        return SELECT_STRIP
    if not os.path.isfile(strip_video(strip)):
        return f"Movie not found: {strip_video(strip)}"
    if strip.frame_final_duration < 1:
        return "The strip shows no frames"
    return backend_job.check_setup(settings or settings_from_context(context))


# --- one run ------------------------------------------------------------------------------------

class StripRun:
    """One reconstruction of a movie strip: start the child, :meth:`step` it (from a timer or a wait
    loop), then :meth:`apply` the result to the scene on the main thread.

    Holds names, never Blender references, between steps: the user may edit anything meanwhile.
    """

    def __init__(self, context, strip, settings: backend_job.BackendSettings, *, camera: bool = True,
                 set_resolution: bool = False, use_cache: bool = True, interpolation: str = 'LINEAR'):
        scene = sequencer_scene(context)
        self.scene_name, self.strip_name = scene.name, strip.name
        self.video = strip_video(strip)
        try:
            self.timing = timing_of(scene, strip)
            self.start_frame, self.end_frame = self.timing.source_range()
        except StripMapError as exc:
            raise ReconstructFailed(f"{strip.name}: {exc}") from None
        self.camera, self.set_resolution, self.interpolation = camera, set_resolution, interpolation
        self.job = backend_job.start_reconstruction(settings, self.video, self.start_frame, self.end_frame,
                                                    use_cache=use_cache)

    @property
    def state(self) -> str:
        return self.job.state

    def step(self) -> str:
        """Take the child's new progress lines (never blocks); returns the job's state."""
        self.job.poll()
        return self.job.state

    def wait(self) -> str:
        return self.job.wait()

    def cancel(self) -> None:
        self.job.cancel()

    @property
    def status(self) -> str:
        """``"single_face.mp4: flow 30/71 (12 s)"``."""
        return f"{self.strip_name}: {self.job.progress.text} ({self.job.elapsed:.0f} s)"

    def _mapping(self) -> StripTiming:
        """The strip's timing now (it may have moved while the backend ran), else as it was."""
        scene = bpy.data.scenes.get(self.scene_name)
        ed = scene.sequence_editor if scene is not None else None
        strips = (getattr(ed, "strips_all", None) or ed.sequences_all) if ed is not None else None  # 4.4 renamed it
        strip = strips.get(self.strip_name) if strips is not None else None
        if strip is not None and strip.type == 'MOVIE' and strip_video(strip) == self.video:
            try:
                return timing_of(scene, strip)
            except StripMapError:
                pass
        return self.timing

    def apply(self, context):
        """Import the finished result into ``context.scene`` (one step; nothing is left on failure).
        Returns :class:`importer.Imported`; raises ReconstructFailed."""
        if self.job.state != "done":
            raise ReconstructFailed(self.job.message or f"the reconstruction is {self.job.state}")
        timing = self._mapping()
        cam = CameraOptions(clip=self.video, set_resolution=self.set_resolution) if self.camera else False
        try:
            out = import_result(context, self.job.output, frame_map=timing.scene_frames, name=self.strip_name,
                                interpolation=self.interpolation, camera=cam)
        except ImportFailed as exc:
            raise ReconstructFailed(str(exc)) from None
        for id_data in (out.collection, out.rig, out.mesh):
            id_data[PROP_PREFIX + "strip"] = self.strip_name
            id_data[PROP_PREFIX + "source_range"] = [self.start_frame, self.end_frame]
        return out


def reconstruct_strip(context, strip, settings: backend_job.BackendSettings | None = None, *, wait: bool = True,
                      **options):
    """Reconstruct ``strip``'s visible frames and import them. With ``wait`` (``-b``, scripts) it
    blocks and returns :class:`importer.Imported`; else it returns the started :class:`StripRun`
    for the caller to step. ``options``: camera, set_resolution, use_cache, interpolation.
    Raises ReconstructFailed (one line) with the scene unchanged."""
    settings = settings or settings_from_context(context)
    run = StripRun(context, strip, settings, **options)
    if not wait:
        return run
    if run.wait() != "done":
        raise ReconstructFailed(run.job.message)
    return run.apply(context)


def _summary(run: StripRun, out) -> str:
    where = "from the cache" if run.job.cached else f"in {run.job.elapsed:.1f} s"
    active = out.rig.get(PROP_PREFIX + "active_regions")
    return (f"Reconstructed {run.strip_name} (source frames {run.start_frame}-{run.end_frame}) {where}: "
            f"{len(out.scene_frames)} frames, scene {out.scene_frames[0]:g}-{out.scene_frames[-1]:g}"
            + (f"; active regions: {active}" if active else ""))


# --- the running job, shared with the panels ----------------------------------------------------

class _Running:
    """The one reconstruction in flight (panels draw it; Cancel and unregister stop it)."""

    run: StripRun | None = None
    timer = None
    wm = None
    workspace = None


_RUN = _Running()


def _redraw() -> None:
    wm = bpy.context.window_manager
    for window in wm.windows if wm is not None else ():
        for area in window.screen.areas:
            if area.type in ('SEQUENCE_EDITOR', 'VIEW_3D'):
                area.tag_redraw()


def _set_status(text: str | None) -> None:
    ws = _RUN.workspace
    if ws is not None:
        try:
            ws.status_text_set(text)
        except ReferenceError:  # the workspace was deleted meanwhile
            _RUN.workspace = None


def _end_run() -> None:
    """Forget the running job: timer, status text, redraw (the child is already stopped)."""
    if _RUN.timer is not None:
        try:
            _RUN.wm.event_timer_remove(_RUN.timer)
        except (ReferenceError, ValueError, RuntimeError):
            pass
    _set_status(None)
    _RUN.run = _RUN.timer = _RUN.wm = _RUN.workspace = None
    _redraw()


def stop_running() -> None:
    """Cancel any reconstruction in flight (unregister, file load)."""
    if _RUN.run is not None:
        _RUN.run.cancel()
    _end_run()


# --- operators ----------------------------------------------------------------------------------

def synchronous(context) -> bool:
    """No event loop to poll from (``-b``, or no window): run to the end in one call."""
    return bpy.app.background or context.window is None


_CAMERA = BoolProperty(name="Add Camera", default=True,
                       description="Add a camera matched to the reconstruction, with the clip as its background")
_RESOLUTION = BoolProperty(name="Set Resolution", default=False,
                           description="Set the scene's render size to the clip's, so the camera view matches it")
_USE_CACHE = BoolProperty(name="Use Cache", default=True,
                          description="Reuse a finished reconstruction of the same frames and settings")


class MICROFACE_OT_reconstruct_strip(bpy.types.Operator):
    """Reconstruct the facial micro-expression in the active movie strip's visible frames as a rigged, keyframed FLAME head"""

    bl_idname = "microface.reconstruct_strip"
    bl_label = "Reconstruct Micro-Expression"
    bl_options = {'REGISTER', 'UNDO'}

    add_camera: _CAMERA
    set_resolution: _RESOLUTION
    use_cache: _USE_CACHE

    @classmethod
    def poll(cls, context):
        reason = unavailable_reason(context)
        if reason:
            cls.poll_message_set(reason)
        return reason is None

    def _start(self, context) -> StripRun | None:
        try:
            return StripRun(context, active_movie_strip(context), settings_from_context(context),
                            camera=self.add_camera, set_resolution=self.set_resolution, use_cache=self.use_cache)
        except ReconstructFailed as exc:
            self.report({'ERROR'}, str(exc))
            return None

    def _finish(self, context, run: StripRun) -> set:
        """Apply a finished run, or report why it did not finish. One line either way."""
        if run.state == "cancelled":
            context.window_manager.microface_status = f"Cancelled {run.strip_name}"
            self.report({'WARNING'}, f"Reconstruction of {run.strip_name} cancelled")
            return {'CANCELLED'}
        try:
            out = run.apply(context)
        except ReconstructFailed as exc:
            context.window_manager.microface_status = f"Failed: {exc}"
            self.report({'ERROR'}, f"MicroFace: {exc}")
            return {'CANCELLED'}
        except Exception as exc:  # a bug: still one line for the user, the trace for the console
            traceback.print_exc()
            self.report({'ERROR'}, f"MicroFace import failed: {type(exc).__name__}: {' '.join(str(exc).split())}")
            return {'CANCELLED'}
        summary = _summary(run, out)
        for warning in run.job.warnings:
            self.report({'WARNING'}, f"{run.strip_name}: {warning}")
        if out.camera is not None and not out.camera.get(PROP_PREFIX + "clip_matches", True):
            self.report({'WARNING'}, f"{out.camera.name}: its background plays one clip frame per scene frame, "
                        "so it lines up with the keys only when the scene runs at the clip's frame rate")
        context.window_manager.microface_status = summary
        self.report({'INFO'}, summary)
        if bpy.app.background:
            # With a UI, Blender pushes the undo step when the operator finishes; under -b it does
            # not (measured with bpy 5.0), so the import is pushed here as one step.
            bpy.ops.ed.undo_push(message=self.bl_label)
        return {'FINISHED'}

    def execute(self, context):
        # Synchronous: under -b, from scripts, and on redo (a finished result comes from the cache).
        run = self._start(context)
        if run is None:
            return {'CANCELLED'}
        run.wait()
        return self._finish(context, run)

    def invoke(self, context, event):
        if synchronous(context):
            return self.execute(context)
        run = self._start(context)
        if run is None:
            return {'CANCELLED'}
        if run.state != "running":  # from the cache, or it could not start
            return self._finish(context, run)
        wm = context.window_manager
        _RUN.run, _RUN.wm, _RUN.workspace = run, wm, context.workspace
        _RUN.timer = wm.event_timer_add(POLL_INTERVAL, window=context.window)
        wm.modal_handler_add(self)
        _set_status(f"MicroFace: {run.status} | Esc: cancel")
        _redraw()
        return {'RUNNING_MODAL'}

    def modal(self, context, event):
        run = _RUN.run
        if run is None:  # stopped from outside (unregister)
            return {'CANCELLED'}
        if event.type == 'ESC' and event.value == 'PRESS':
            run.cancel()
        elif event.type != 'TIMER' or event.timer != _RUN.timer:
            return {'PASS_THROUGH'}
        try:
            if run.step() == "running":
                _set_status(f"MicroFace: {run.status} | Esc: cancel")
                _redraw()
                return {'PASS_THROUGH'}
        except Exception as exc:  # a bug: never leave a child running or the button disabled
            traceback.print_exc()
            stop_running()
            self.report({'ERROR'}, f"MicroFace: {type(exc).__name__}: {' '.join(str(exc).split())}")
            return {'CANCELLED'}
        _end_run()
        return self._finish(context, run)

    def cancel(self, context):
        # Blender removes the handler (file load, quit): stop the child too.
        stop_running()


class MICROFACE_OT_reconstruct_cancel(bpy.types.Operator):
    """Stop the running reconstruction; the scene stays as it was"""

    bl_idname = "microface.reconstruct_cancel"
    bl_label = "Cancel Reconstruction"
    bl_options = {'INTERNAL'}

    @classmethod
    def poll(cls, context):
        return _RUN.run is not None

    def execute(self, context):
        _RUN.run.cancel()  # the modal operator sees it on its next tick and cleans up
        return {'FINISHED'}


# --- panels -------------------------------------------------------------------------------------

def _wrap(text: str, width: int = 42) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return lines + ([line] if line else [])


def draw_reconstruct(layout, context) -> None:
    """The Reconstruct button, the strip it works on, its progress and why it is off."""
    run = _RUN.run
    if run is not None:
        col = layout.column(align=True)
        col.progress(factor=run.job.progress.fraction, type='BAR', text=run.status)
        col.operator(MICROFACE_OT_reconstruct_cancel.bl_idname, text="Cancel", icon='CANCEL')
        return
    layout.operator(MICROFACE_OT_reconstruct_strip.bl_idname, icon='SEQUENCE')
    reason = unavailable_reason(context)
    strip = active_movie_strip(context)
    if strip is not None:
        layout.label(text=f"{strip.name}: frames {strip.frame_final_start}-{strip.frame_final_end - 1}",
                     icon='FILE_MOVIE')
    if reason:
        col = layout.column(align=True)
        for i, line in enumerate(_wrap(reason)):
            col.label(text=line, icon='ERROR' if i == 0 else 'BLANK1')


class MICROFACE_PT_sequencer(bpy.types.Panel):
    bl_label = "MicroFace"
    bl_idname = "MICROFACE_PT_sequencer"
    bl_space_type = 'SEQUENCE_EDITOR'
    bl_region_type = 'UI'
    bl_category = "MicroFace"

    def draw(self, context):
        draw_reconstruct(self.layout, context)
        status = context.window_manager.microface_status
        if status:
            for line in _wrap(status):
                self.layout.label(text=line)


CLASSES = (MICROFACE_OT_reconstruct_strip, MICROFACE_OT_reconstruct_cancel, MICROFACE_PT_sequencer)
