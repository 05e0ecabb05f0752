"""Headless batch: clips (or folders of clips) to ``.blend`` files and, on request, FBX, glTF, Alembic.

    blender -b -P build.py -- INPUT... -o OUTDIR [options]
    python3 build.py INPUT... -o OUTDIR [options]        (the bpy module in the project's .venv)

For each clip: the backend runs as a child process (``<python> -m backend reconstruct CLIP -o
X.npz``: it needs torch, which Blender's Python lacks), then, in this process, a fresh empty scene
gets :func:`.scene.importer.import_result` and is saved as ``OUTDIR/<stem>.blend``; the exports go through
Blender's own exporters. Every output is written under a temporary name inside OUTDIR and renamed
into place only once all of the clip's outputs exist, so a file that exists is complete and from
one run. A rerun skips a clip whose requested outputs all exist (``--force`` redoes it).

One line per clip on stdout (``ok``, ``skip`` or ``FAILED <clip>: <reason>``), then a total.
Exit codes: 0 when every clip is done or skipped, 1 when any failed, 2 for bad usage or setup.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import bpy

from .core import livelink, paths
from .core.contract import contract_module
from .core.backend_job import protocol, remove_stale_staging, staging_folder
from .scene.importer import PROP_PREFIX, ImportFailed, import_result

# Suffixes taken from a folder (case-insensitive, not recursive); a file named directly is always tried.
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".mts",
                            ".m2ts", ".mxf", ".ogv", ".flv"})
# Export option -> (file suffix, label in the summary, exporter operator, its add-on or "" when built in).
EXPORTS = {
    "fbx": (".fbx", "fbx", "export_scene.fbx", "io_scene_fbx"),
    "gltf": (".glb", "glb", "export_scene.gltf", "io_scene_gltf2"),
    "abc": (".abc", "abc", "wm.alembic_export", ""),
}


class UsageError(Exception):
    """Bad command line or setup: one line, exit code 2, nothing was converted."""


STAGING_PREFIX = ".microface-"   # a clip's staging folder in OUTDIR: .microface-<stem>-<pid>-<random>


class ClipFailed(Exception):
    """This clip could not be converted: ``str(err)`` is one line; the batch goes on."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


@dataclass
class Options:
    inputs: list[Path]
    out_dir: Path
    exports: tuple[str, ...] = ()        # keys of EXPORTS, in EXPORTS order
    backend: dict = field(default_factory=dict)  # protocol.ReconstructRequest fields besides video and output
    force: bool = False
    keep_result: bool = False
    livelink: bool = False               # also <stem>_livelink.csv (core/livelink.py)
    verbose: bool = False
    python: str = ""                     # the backend's interpreter
    backend_root: Path | None = None     # the checkout holding backend/ (its PYTHONPATH and cwd)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage block
        raise UsageError(f"{message} (see --help)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="build.py [batch]", description="Convert clips or folders of clips into .blend files "
                "(and FBX, glTF, Alembic) with the MicroFace backend and importer.")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="video clip, or a folder of clips (not recursive)")
    p.add_argument("-o", "--output-dir", metavar="OUTDIR", help="folder for the outputs (created; its parent must exist)")
    p.add_argument("--start", type=int, help="first source frame (onset), inclusive")
    p.add_argument("--end", type=int, help="last source frame (offset), inclusive")
    p.add_argument("--fps", type=float, help="override the clip's frame rate (high-speed footage stored at 25/30 fps)")
    p.add_argument("--device", help="backend device: auto (default), cpu or cuda[:N]")
    p.add_argument("--flame", help="FLAME-format .pkl head model (else $MICROFACE_FLAME, else the open stand-in)")
    p.add_argument("--fit-only", "--no-refine", dest="fit_only", action="store_true",
                   help="the static landmark fit only, without the flow reader (--no-refine: its old name)")
    p.add_argument("--no-photometric", action="store_true",
                   help="skip the photometric refinement of the network's output from the frames' colours")
    p.add_argument("--fbx", action="store_true", help="also write <stem>.fbx (armature, skin, shape-key animation)")
    p.add_argument("--gltf", action="store_true", help="also write <stem>.glb (skin and morph-target animation)")
    p.add_argument("--abc", action="store_true", help="also write <stem>.abc (the evaluated mesh per frame)")
    p.add_argument("--livelink", action="store_true",
                   help="also write <stem>_livelink.csv: the ARKit-52 curves and head and eye rotations as a Live "
                        "Link Face take (what Unreal and MetaHuman import)")
    p.add_argument("--keep-result", action="store_true", help="keep the backend's result as <stem>.npz beside "
                   "the .blend (and reuse it on a rerun instead of running the backend again)")
    p.add_argument("--force", action="store_true", help="redo clips whose outputs already exist")
    p.add_argument("-v", "--verbose", action="store_true", help="print each clip's stage times")
    p.add_argument("--python", help="the backend's Python (default: the checkout's .venv/bin/python)")
    return p


def parse_args(argv: list[str]) -> Options:
    """Options from the command line; raises :class:`UsageError` (one line) on bad usage."""
    a = _parser().parse_args(argv)
    if not a.inputs:
        raise UsageError("no input clips or folders given (see --help)")
    if not a.output_dir:
        raise UsageError("no output folder given: -o OUTDIR")
    out = Path(a.output_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise UsageError(f"output folder {out} is a file")
    if not out.parent.is_dir():
        raise UsageError(f"the parent of the output folder {out} does not exist")
    if a.start is not None and a.end is not None and a.end < a.start:
        raise UsageError(f"--end {a.end} is before --start {a.start}")
    if a.fps is not None and not (a.fps > 0 and math.isfinite(a.fps)):
        raise UsageError(f"--fps must be a positive number, not {a.fps}")
    backend = dict(start=a.start, end=a.end, fps=a.fps, device=a.device, fit_only=a.fit_only,
                   no_photometric=a.no_photometric)
    if a.flame:
        flame = Path(a.flame).expanduser().absolute()
        if not flame.is_file():
            raise UsageError(f"head model {flame} does not exist")
        backend["flame"] = str(flame)
    return Options(inputs=[Path(p).expanduser().absolute() for p in a.inputs], out_dir=out,
                   exports=tuple(k for k in EXPORTS if getattr(a, k)), backend=backend,
                   force=a.force, keep_result=a.keep_result, livelink=a.livelink, verbose=a.verbose,
                   python=a.python or "")


def find_clips(inputs: list[Path]) -> list[Path]:
    """The clips to convert, in order: files as given, folders' video files sorted by name.
    Raises :class:`UsageError` for a missing input, a folder without clips, or two clips that would
    write the same outputs (same file stem)."""
    clips = []
    for path in inputs:
        if path.is_dir():
            found = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES),
                           key=lambda p: p.name)
            if not found:
                raise UsageError(f"no video files ({', '.join(sorted(VIDEO_SUFFIXES))}) in {path}")
            clips += found
        elif path.is_file():
            clips.append(path)
        else:
            raise UsageError(f"input {path} does not exist")
    seen = {}
    for clip in clips:
        other = seen.setdefault(clip.stem, clip)
        if other != clip:
            raise UsageError(f"{other} and {clip} would write the same outputs ({clip.stem}.blend); "
                             "convert them into different folders")
    return list(dict.fromkeys(clips))  # a clip named twice is converted once


def outputs(opts: Options, clip: Path) -> dict[str, Path]:
    """Output kind ('blend', export keys, 'npz' with --keep-result) -> final path in OUTDIR."""
    out = {"blend": opts.out_dir / f"{clip.stem}.blend"}
    for key in opts.exports:
        out[key] = opts.out_dir / f"{clip.stem}{EXPORTS[key][0]}"
    if opts.livelink:
        out["livelink"] = opts.out_dir / f"{clip.stem}_livelink.csv"
    if opts.keep_result:
        out["npz"] = opts.out_dir / f"{clip.stem}.npz"
    return out


def backend_command(opts: Options, clip: Path, npz: Path) -> list[str]:
    return protocol.reconstruct_argv(opts.python, protocol.ReconstructRequest(str(clip), str(npz), **opts.backend))


def run_backend(opts: Options, clip: Path, npz: Path) -> list[str]:
    """Run the backend on ``clip`` into ``npz`` (the strip operator's :class:`backend_job.Job`,
    waited on) and return its warnings. Its progress is shown on stderr when that is a terminal.
    Raises :class:`ClipFailed` with the backend's one-line error."""
    from .core.backend_job import Job, child_env

    root = opts.backend_root or Path.cwd()
    job = Job(command=backend_command(opts, clip, npz), cwd=root, output=npz, env=child_env(root), reuse=False)
    show = sys.stderr.isatty()
    try:
        job.start()
        while job.running:
            time.sleep(0.05)
            job.poll()
            if show and job.running:
                print(f"\r  {clip.name}: {job.progress.text}\033[K", end="", file=sys.stderr, flush=True)
    except BaseException:  # Ctrl-C or a bug here: never leave the child running
        job.cancel()
        raise
    finally:
        if show:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
    if job.state != "done":
        raise ClipFailed(job.message or "the backend failed")
    return job.warnings


def _flush_all() -> None:
    """Flush Python's and C's stdio buffers (Blender's C code prints through the latter)."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):  # no C library to reach (Windows): Python's flush must do
        pass


@contextmanager
def _quiet(log_path: Path):
    """Send this process's stdout and stderr (file descriptors 1 and 2: Blender's C code and its
    exporters print there) to ``log_path`` meanwhile, so the batch's output stays one line per clip."""
    _flush_all()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(log_path, "a", encoding="utf-8", errors="replace") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            # Python-level writers too, for when sys.stdout is not file descriptor 1 (an embedding, pytest).
            py_streams = sys.stdout, sys.stderr
            sys.stdout = sys.stderr = log
            try:
                yield
            finally:
                _flush_all()  # what was printed meanwhile goes to the log, not out after it
                sys.stdout, sys.stderr = py_streams
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for fd in saved:
            os.close(fd)


def _set_scene_rate(scene, fps: float) -> None:
    """The scene plays at the clip's rate (so exports keep real time): integer fps, fractional base."""
    base = min(32767, max(1, round(fps)))
    scene.render.fps = base
    scene.render.fps_base = base / fps


def build_scene(npz: Path, name: str):
    """A fresh empty scene holding the import of ``npz``; returns the :class:`.scene.importer.Imported`.
    Its frame range is the import's, its frame rate the clip's."""
    # Factory startup data, not the user's startup file: the same scene settings (units, rate) on
    # every machine. The preferences, and so the enabled exporters, stay as they are.
    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
    scene = bpy.context.scene
    scene.frame_start = 1
    imp = import_result(bpy.context, npz, name=name)
    scene.frame_start = math.floor(imp.scene_frames[0])
    scene.frame_end = math.ceil(imp.scene_frames[-1])
    _set_scene_rate(scene, float(imp.rig[PROP_PREFIX + "fps"]))
    scene.frame_set(scene.frame_start)
    return imp


def _written(tmp: Path, suffix: str) -> Path:
    """Where an exporter wrote ``tmp``: some append their extension to a path that lacks it."""
    if tmp.is_file():
        return tmp
    alt = tmp.with_name(tmp.name + suffix)
    if alt.is_file():
        return alt
    raise ClipFailed(f"the exporter wrote no {tmp.name}")


def _select_only(objects) -> None:
    view_layer = bpy.context.view_layer
    for obj in view_layer.objects:
        obj.select_set(obj in objects)
    view_layer.objects.active = objects[0]


def export(kind: str, imp, path: Path) -> Path:
    """Export the imported rig and head (only those) to ``path`` with Blender's exporter for ``kind``
    (a key of EXPORTS); return the file written."""
    scene = bpy.context.scene
    _select_only([imp.rig, imp.mesh])
    if kind == "fbx":
        bpy.ops.export_scene.fbx(
            filepath=str(path), use_selection=True, object_types={'ARMATURE', 'MESH'},
            use_mesh_modifiers=False,       # applying the armature modifier would drop the shape keys
            add_leaf_bones=False, armature_nodetype='NULL',
            bake_anim=True, bake_anim_use_all_bones=True, bake_anim_use_nla_strips=False,
            bake_anim_use_all_actions=False,   # one take: the scene's frame range, not every action in the file
            bake_anim_force_startend_keying=True, bake_anim_step=1.0,
            bake_anim_simplify_factor=0.0)     # a key on every frame: simplifying would smooth micro-motion away
    elif kind == "gltf":
        bpy.ops.export_scene.gltf(
            filepath=str(path), export_format='GLB', use_selection=True, export_apply=False,
            export_animations=True, export_force_sampling=True, export_frame_step=1,
            # One glTF animation driving bones and morph weights together: with one per action,
            # Blender's glTF importer plays the first and mutes the rest.
            export_animation_mode='ACTIVE_ACTIONS', export_nla_strips_merged_animation_name=imp.collection.name,
            export_skins=True, export_morph=True, export_morph_normal=True, export_morph_animation=True)
    elif kind == "abc":
        # The evaluated mesh at every frame of the import (skinning, shape keys and all), under the rig's transform.
        bpy.ops.wm.alembic_export(filepath=str(path), selected=True, start=scene.frame_start, end=scene.frame_end,
                                  flatten=False, as_background_job=False)
    else:
        raise ValueError(kind)
    return _written(path, EXPORTS[kind][0])


def write_livelink(npz: Path, path: Path) -> Path:
    """The result's ARKit-52 curves and rotations as a Live Link Face take at ``path``; raises
    :class:`ClipFailed` for a result without them."""
    res = contract_module("result").read_result(npz)
    fps = float(res.meta["fps"])
    try:
        text = livelink.format_take(livelink.take_from_result(res), fps, float(res.frame_indices[0]) / fps)
    except livelink.LiveLinkError as exc:
        raise ClipFailed(str(exc)) from None
    path.write_text(text, encoding="utf-8")
    return path


def _check_exporters(kinds) -> None:
    for key in kinds:
        op_name, addon = EXPORTS[key][2], EXPORTS[key][3]
        module, name = op_name.split(".")
        try:
            getattr(getattr(bpy.ops, module), name).get_rna_type()
        except (AttributeError, KeyError):
            hint = f"; enable the add-on {addon} in Preferences > Add-ons" if addon else " in this Blender build"
            raise UsageError(f"Blender's {key} exporter ({op_name}) is not available{hint}") from None


@dataclass
class ClipReport:
    clip: Path
    status: str                     # "ok", "skip" or "FAILED"
    message: str = ""               # the one-line reason of a failure
    frames: int = 0
    seconds: float = 0.0
    stages: dict = field(default_factory=dict)   # stage -> seconds
    outputs: dict = field(default_factory=dict)  # kind -> final path
    active_regions: str = ""        # the regions the backend called active, "" when it had no rule
    warnings: list = field(default_factory=list)  # the backend's messages for the user


def convert_clip(opts: Options, clip: Path) -> ClipReport:
    """Convert one clip; never raises for a bad clip (the report says FAILED), only for Ctrl-C."""
    final = outputs(opts, clip)
    if not opts.force and all(p.is_file() for p in final.values()):
        return ClipReport(clip, "skip", outputs=final)
    t0 = time.perf_counter()
    stages, warnings = {}, []
    work = staging_folder(opts.out_dir, f"{STAGING_PREFIX}{clip.stem}")   # same disk: renames are atomic
    try:
        written = {}  # kind -> temporary file in `work`
        if opts.keep_result and not opts.force and final["npz"].is_file():
            npz = final["npz"]    # a kept result from an earlier run: no need to recompute it
            stages["backend"] = 0.0
        else:
            npz = work / f"{clip.stem}.npz"
            t = time.perf_counter()
            warnings = run_backend(opts, clip, npz)
            stages["backend"] = time.perf_counter() - t
            written["npz"] = npz
        with _quiet(work / "blender.log"):
            t = time.perf_counter()
            imp = build_scene(npz, clip.stem)
            stages["import"] = time.perf_counter() - t
            frames = len(imp.scene_frames)
            active = imp.rig.get(PROP_PREFIX + "active_regions", "")
            t = time.perf_counter()
            blend = work / f"{clip.stem}.blend"
            # copy=True: the session keeps no file path (the next clip starts from a fresh scene);
            # no relative remap: the temporary folder is not where the file ends up.
            bpy.ops.wm.save_as_mainfile(filepath=str(blend), copy=True, relative_remap=False, compress=False,
                                        check_existing=False)
            written["blend"] = _written(blend, ".blend")
            stages["save"] = time.perf_counter() - t
            for key in opts.exports:
                t = time.perf_counter()
                written[key] = export(key, imp, work / f"{clip.stem}{EXPORTS[key][0]}")
                stages[EXPORTS[key][1]] = time.perf_counter() - t
        if opts.livelink:
            written["livelink"] = write_livelink(npz, work / final["livelink"].name)
        # All there: rename into place, the .blend last (a crash in between leaves no finished set).
        for kind in sorted(final, key=lambda k: k == "blend"):
            if kind in written:
                os.replace(written[kind], final[kind])
        return ClipReport(clip, "ok", frames=frames, seconds=time.perf_counter() - t0, stages=stages, outputs=final,
                          active_regions=active, warnings=warnings)
    except (ClipFailed, ImportFailed) as exc:
        return ClipReport(clip, "FAILED", message=str(exc))
    except (RuntimeError, OSError) as exc:  # an exporter or the disk: bpy raises its reports as RuntimeError
        msg = " ".join(str(exc).split()) or type(exc).__name__
        return ClipReport(clip, "FAILED", message=msg)
    except Exception as exc:  # a bug: still one line, and the batch goes on
        return ClipReport(clip, "FAILED", message=f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _shown(path: Path) -> str:
    """``path`` relative to the working folder when it lies below it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def summary_line(rep: ClipReport) -> str:
    """The one line printed for a clip."""
    if rep.status == "FAILED":
        return f"FAILED {rep.clip.name}: {rep.message}"
    if rep.status == "skip":
        return f"skip   {rep.clip.name} (done; --force to redo)"
    extra = [EXPORTS[k][1] for k in EXPORTS if k in rep.outputs] + [k for k in ("livelink", "npz") if k in rep.outputs]
    return (f"ok     {rep.clip.name}  {rep.frames} frames  {rep.seconds:.1f} s  -> {_shown(rep.outputs['blend'])}"
            + (f" [{' '.join(extra)}]" if extra else "")
            + (f"  active: {rep.active_regions}" if rep.active_regions else "")
            + "".join(f"  warning: {w}" for w in rep.warnings))


def run(opts: Options, clips: list[Path], out=None) -> list[ClipReport]:
    """Convert ``clips`` one after another, printing a line for each to ``out`` (default stdout) as it finishes."""
    out = out or sys.stdout
    reports = []
    for clip in clips:
        rep = convert_clip(opts, clip)
        reports.append(rep)
        print(summary_line(rep), file=out, flush=True)
        if opts.verbose and rep.stages:
            print("       stages: " + ", ".join(f"{k} {v:.2f} s" for k, v in rep.stages.items()), file=out, flush=True)
    return reports


def main(argv: list[str], *, python: str | None = None, backend_root: Path | None = None, out=None) -> int:
    """The batch command line. ``python``/``backend_root``: the backend's interpreter and checkout
    (``build.py`` passes its .venv and folder; else ``--python`` or the one the add-on would find)."""
    t0 = time.perf_counter()
    out = out or sys.stdout  # looked up now: callers and tests may have replaced sys.stdout
    try:
        opts = parse_args(argv)
        py = opts.python or python or paths.find_backend_python()
        if not py or not Path(py).is_file():
            raise UsageError(f"no backend Python{' at ' + py if py else ''}: {paths.PYTHON_HINT}")
        opts.python = str(Path(py).absolute())  # the child runs in the checkout's folder
        if backend_root is None:  # the checkout whose .venv this is, when it holds the backend
            parents = Path(opts.python).parents
            root = parents[2] if len(parents) > 2 else None
            backend_root = root if root is not None and (root / "backend" / "__init__.py").is_file() else None
        opts.backend_root = backend_root
        clips = find_clips(opts.inputs)
        _check_exporters(opts.exports)
        opts.out_dir.mkdir(exist_ok=True)
        remove_stale_staging(opts.out_dir, STAGING_PREFIX)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot create the output folder: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    try:
        with protocol.termination_unwinds():
            reports = run(opts, clips, out)
    except protocol.Terminated as exc:
        print(f"error: terminated by {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return protocol.EXIT_INTERRUPTED
    counts = {s: sum(r.status == s for r in reports) for s in ("ok", "skip", "FAILED")}
    print(f"{len(reports)} clip{'s' * (len(reports) != 1)}: {counts['ok']} converted, {counts['skip']} skipped, "
          f"{counts['FAILED']} failed ({time.perf_counter() - t0:.1f} s)", file=out, flush=True)
    return 1 if counts["FAILED"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
