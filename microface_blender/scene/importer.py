"""Build a rigged, animated FLAME head in the scene from a MicroFace result file.

Everything lands in a new collection named after the clip:
- ``<name>_rig``: an armature with one bone per joint (global, neck, jaw, eye_L, eye_R for FLAME),
  keyed per frame from ``pose`` (quaternions) and ``trans`` (root location). It is the root of the
  import and stands the head upright in Blender's z-up world (+90 degrees about X); in its local
  space, coordinates are the result's camera space (metres, camera at the origin looking down -z).
  When the result has ``region_motion``, the rig also keys one custom property per face region,
  ``microface_motion_<region>`` (mm), for the Graph Editor.
- ``<name>_head``: the mesh, identity baked into the Basis, one shape key per expression keyed
  with ``expr[t]``, and "micro-detail" shape keys for what the rig does not reproduce, skinned
  to the armature by the model's weights. At frame t its evaluated vertices are ``vertices[t]``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import bpy
import numpy as np

from ..core import keyframe_math, rigdata
from ..core.detail import DEFAULT_MAX_KEYS, DEFAULT_TOLERANCE
from ..core.frame_map import FrameMap, resolve_frame_map
from ..core.contract import contract_module
from .anim import ActionWriter
from .camera import CameraOptions, add_camera

DETAIL_PREFIX = "detail_"
PROP_PREFIX = "microface_"
# On the head: shape key name -> its share of displacement energy in each of the 8 face regions
# (only when the result has rig_region_labels). On the rig: bone name -> the region whose gain
# amplifies it ("" for rigid head motion). The keyframe tools read both.
KEY_REGIONS = PROP_PREFIX + "key_regions"
BONE_REGIONS = PROP_PREFIX + "bone_regions"
# On the rig, keyed per frame (when the result has region_motion): each region's mean motion from the
# first frame in mm, the rigid head motion taken out, so the Graph Editor shows where and when the face moved.
MOTION_PREFIX = PROP_PREFIX + "motion_"


class ImportFailed(Exception):
    """The result cannot be imported. ``str(err)`` is one line for the user; nothing was left behind."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


@dataclass
class Imported:
    """What :func:`import_result` made."""

    collection: bpy.types.Collection
    rig: bpy.types.Object                 # the armature object, root of the import
    mesh: bpy.types.Object                # the head
    scene_frames: np.ndarray              # (T,) float64 scene frame of each result frame
    n_expression_keys: int
    n_detail_keys: int
    detail_max_error: float               # metres, worst per-vertex error of the micro-detail keys
    detail_mean_error: float              # metres
    timings: dict = field(default_factory=dict)  # stage -> seconds
    camera: bpy.types.Object | None = None  # the matched camera, when asked for


def _props(res, path: Path, rig: rigdata.RigData, frames: np.ndarray) -> dict:
    meta = res.meta
    d = rig.detail
    return {
        "source_clip": str(meta["source"].get("path", "")),
        "source_name": str(meta["source"].get("name", "")),
        "fps": float(meta["fps"]),
        "model_id": str(meta["head_model"]["id"]),
        "backend_version": str(meta["backend_version"]),
        "format_version": int(meta["version"]),
        "result_path": str(path),
        "frames": int(len(frames)),
        "first_source_frame": int(res.frame_indices[0]),
        "first_scene_frame": float(frames[0]),
        "detail_keys": int(d.n_keys),
        "detail_max_error_mm": float(d.max_error * 1e3),
        "detail_mean_error_mm": float(d.mean_error * 1e3),
        "rig_residual_max_mm": float(d.residual_max * 1e3),
        # the regions the backend's calibrated rule calls active; absent without a rule
        **({"active_regions": ", ".join(meta["region_detection"]["active"]) or "none"}
           if "region_detection" in meta else {}),
        # how much of the network's expression basis a user's own FLAME file cannot make
        **({"expression_span": _span_text(meta["expression_layer"])}
           if not meta.get("expression_layer", {}).get("identity", True) else {}),
    }


def _span_text(layer: dict) -> str:
    worst = f" ({layer['worst']})" if layer.get("worst") else ""
    return f"{layer['span_error_mm']:.3f} mm mean, {layer['span_error_max_mm']:.3f} mm max{worst}"


def _build_armature(context, name: str, rig: rigdata.RigData, collection) -> tuple[bpy.types.Object, list[str]]:
    arm = bpy.data.armatures.new(f"{name}_rig")
    obj = bpy.data.objects.new(f"{name}_rig", arm)
    collection.objects.link(obj)
    obj.rotation_mode = 'XYZ'
    obj.rotation_euler = (math.pi / 2, 0.0, 0.0)  # camera space is y-up; Blender's world is z-up
    arm.display_type = 'STICK'
    obj.show_in_front = True
    size = float(np.ptp(rig.rest, 0).max())
    view_layer = context.view_layer
    view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode='EDIT')  # bones can only be made in edit mode
    try:
        bones = []
        for j, joint_name in enumerate(rig.joint_names):
            eb = arm.edit_bones.new(joint_name)
            # Along +y with zero roll, a bone's rest frame is the armature's axes, so the result's
            # axis-angles are the pose bones' rotations as they are.
            head = rig.joints[j]
            eb.head = head
            eb.tail = head + (0.0, size * (0.15 if rig.parents[j] < 0 else 0.06), 0.0)
            eb.roll = 0.0
            eb.use_connect = False
            if rig.parents[j] >= 0:
                eb.parent = bones[rig.parents[j]]
            bones.append(eb)
        names = [eb.name for eb in bones]  # Blender renames duplicates
    finally:
        bpy.ops.object.mode_set(mode='OBJECT')
    for pb in obj.pose.bones:
        pb.rotation_mode = 'QUATERNION'
    return obj, names


def _build_mesh(name: str, rig: rigdata.RigData, bone_names: list[str], rig_obj, collection) -> bpy.types.Object:
    me = bpy.data.meshes.new(f"{name}_head")
    n_v, n_f = len(rig.rest), len(rig.faces)
    me.vertices.add(n_v)
    me.vertices.foreach_set("co", rig.rest.ravel())
    me.loops.add(3 * n_f)
    me.loops.foreach_set("vertex_index", rig.faces.ravel())
    me.polygons.add(n_f)
    me.polygons.foreach_set("loop_start", np.arange(0, 3 * n_f, 3, dtype=np.int32))
    me.update(calc_edges=True)
    me.shade_smooth()
    obj = bpy.data.objects.new(f"{name}_head", me)
    collection.objects.link(obj)
    obj.parent = rig_obj  # identity parent inverse: the mesh's local space is the rig's

    for j, bone in enumerate(bone_names):
        vg = obj.vertex_groups.new(name=bone)
        w = rig.weights[:, j]
        nz = np.flatnonzero(w > 0)
        # One call per distinct weight (most FLAME vertices have weight 1 on one joint).
        values, inverse = np.unique(w[nz], return_inverse=True)
        for k, value in enumerate(values):
            vg.add(nz[inverse == k].tolist(), float(value), 'REPLACE')
    mod = obj.modifiers.new("Armature", 'ARMATURE')
    mod.object = rig_obj
    mod.use_vertex_groups = True
    mod.use_deform_preserve_volume = False  # linear blend skinning, as FLAME
    return obj


def _add_shape_keys(obj, rig: rigdata.RigData) -> tuple[list, list]:
    """Basis, expression keys and detail keys. Returns (expression keys, detail keys)."""
    basis = obj.shape_key_add(name="Basis", from_mix=False)
    basis.value = 0.0
    obj.data.shape_keys.use_relative = True

    def add(key_name: str, delta: np.ndarray, values: np.ndarray):
        kb = obj.shape_key_add(name=key_name, from_mix=False)
        kb.data.foreach_set("co", (rig.rest + delta).ravel())
        # The value (and its animation) is clamped to the slider range, which Blender caps at +-10.
        kb.slider_min = max(-10.0, min(0.0, math.floor(float(values.min()))))
        kb.slider_max = min(10.0, max(1.0, math.ceil(float(values.max()))))
        kb.value = 0.0  # new shape keys start at 1.0 in Blender 5.0
        return kb

    expr_keys = []
    for k, key_name in enumerate(rig.expr_names):
        values = rig.expr[:, k]
        # Rare out-of-range coefficients: scale the key so its values fit the +-10 slider.
        scale = max(1.0, float(np.abs(values).max()) / 10.0)
        expr_keys.append((add(key_name, rig.expr_dirs[k] * scale, values / scale), values / scale))
    d = rig.detail
    detail_keys = [(add(f"{DETAIL_PREFIX}{k:02d}", d.keys[k], d.weights[:, k]), d.weights[:, k])
                   for k in range(d.n_keys)]
    return expr_keys, detail_keys


def _region_props(res, rig: rigdata.RigData, rig_obj, mesh_obj, key_list) -> None:
    """Where each shape key and bone acts, for per-region editing (see :mod:`..core.keyframe_math`)."""
    names = keyframe_math.bone_regions(rig.joint_names)
    rig_obj[BONE_REGIONS] = {bone.name: region or "" for bone, region in zip(rig_obj.data.bones, names)}
    labels = getattr(res, "rig_region_labels", None)
    if labels is None:  # a file from before the labels: per-region gains are not available
        return
    d = rig.detail
    deltas = np.concatenate([rig.expr_dirs, d.keys]) if d.n_keys else rig.expr_dirs
    shares = keyframe_math.region_shares(deltas, labels)
    mesh_obj[KEY_REGIONS] = {kb.name: share.tolist() for (kb, _values), share in zip(key_list, shares)}


def _animate(name: str, res, rig: rigdata.RigData, rig_obj, bone_names: list[str], mesh_obj, key_list,
             frames: np.ndarray, interpolation: str, created: list) -> None:
    act = ActionWriter(f"{name}_rig", 'OBJECT', f"{name}_rig")
    created.append(act.action)
    esc = bpy.utils.escape_identifier
    for j, bone in enumerate(bone_names):
        path = f'pose.bones["{esc(bone)}"]'
        for i in range(4):
            act.curve(f"{path}.rotation_quaternion", i, frames, rig.quaternions[:, j, i], interpolation, bone)
        if rig.parents[j] < 0:
            for i in range(3):
                act.curve(f"{path}.location", i, frames, rig.root_location[:, i], interpolation, bone)
    motion = getattr(res, "region_motion", None)
    if motion is not None:
        for r, region in enumerate(res.meta["region_names"]):
            prop = MOTION_PREFIX + region
            rig_obj[prop] = 0.0
            rig_obj.id_properties_ui(prop).update(
                min=0.0, soft_max=max(1.0, float(motion.max())), precision=3,
                description=f"Mean motion of the {region.replace('_', ' ')} from the first frame, mm")
            act.curve(f'["{esc(prop)}"]', 0, frames, motion[:, r], interpolation, "region motion (mm)")
    act.assign(rig_obj)

    key = mesh_obj.data.shape_keys
    act = ActionWriter(f"{name}_shapes", 'KEY', key.name)
    created.append(act.action)
    for kb, values in key_list:
        group = "micro-detail" if kb.name.startswith(DETAIL_PREFIX) else "expression"
        act.curve(f'key_blocks["{esc(kb.name)}"].value', 0, frames, values, interpolation, group)
    act.assign(key)


def import_result(context, path, *, frame_map: FrameMap = None, name: str | None = None,
                  collection: bpy.types.Collection | None = None, detail_tolerance: float = DEFAULT_TOLERANCE,
                  max_detail_keys: int = DEFAULT_MAX_KEYS, interpolation: str = 'LINEAR',
                  select: bool = True, camera: CameraOptions | bool = False) -> Imported:
    """Import the result file ``path`` into ``context.scene`` in one go.

    frame_map: scene frame of each result frame (see :mod:`..core.frame_map`); by default the first
        frame lands on ``scene.frame_start`` and each source frame takes one scene frame.
    name: the new collection's name (default: the clip's file name without extension).
    collection: where the new collection goes (default: the scene's master collection).
    detail_tolerance (metres), max_detail_keys: bound the micro-detail PCA.
    interpolation: of every key, 'LINEAR' (default), 'CONSTANT' or 'BEZIER'.
    select: select the new objects and make the rig active.
    camera: also add a camera matched to the result, with the clip behind it (True, or
        :class:`.camera.CameraOptions`); it goes too if the import fails.
    Raises :class:`ImportFailed` (one line) on a missing, foreign, damaged or rig-less file; on any
    error every datablock made so far is removed again.
    """
    timings = {}
    t0 = time.perf_counter()
    R = contract_module("result")
    path = Path(path).expanduser().absolute()
    try:
        res = R.read_result(path)
    except R.ResultError as exc:
        raise ImportFailed(str(exc)) from None
    except MemoryError:
        raise ImportFailed(f"result file {path} is too large to load here") from None
    timings["read"] = time.perf_counter() - t0
    t = time.perf_counter()
    try:
        rig = rigdata.rig_from_result(res, str(path), detail_tolerance, max_detail_keys)
        frames = resolve_frame_map(frame_map, res.frame_indices, context.scene.frame_start)
    except ValueError as exc:
        raise ImportFailed(str(exc)) from None
    timings["rig"] = time.perf_counter() - t
    name = name or Path(res.meta["source"].get("name") or path.name).stem or path.stem

    t = time.perf_counter()
    view_layer = context.view_layer
    prev_active = view_layer.objects.active
    if prev_active is not None and prev_active.mode != 'OBJECT':
        bpy.ops.object.mode_set(mode='OBJECT')
    created: list[bpy.types.ID] = []
    cam_obj = None
    try:
        coll = bpy.data.collections.new(name)
        created.append(coll)
        (collection or context.scene.collection).children.link(coll)
        rig_obj, bone_names = _build_armature(context, name, rig, coll)
        created += [rig_obj, rig_obj.data]
        mesh_obj = _build_mesh(name, rig, bone_names, rig_obj, coll)
        created += [mesh_obj, mesh_obj.data]
        expr_keys, detail_keys = _add_shape_keys(mesh_obj, rig)
        timings["build"] = time.perf_counter() - t
        t = time.perf_counter()
        _animate(name, res, rig, rig_obj, bone_names, mesh_obj, expr_keys + detail_keys, frames, interpolation,
                 created)
        timings["animate"] = time.perf_counter() - t
        _region_props(res, rig, rig_obj, mesh_obj, expr_keys + detail_keys)
        props = _props(res, path, rig, frames)
        for id_data in (coll, rig_obj, mesh_obj):
            for key, value in props.items():
                id_data[PROP_PREFIX + key] = value
        if camera:  # last: it may change the scene's resolution and camera
            cam_obj = add_camera(context, name, res, rig_obj, coll, frames, created,
                                 camera if isinstance(camera, CameraOptions) else CameraOptions())
    except BaseException:
        if view_layer.objects.active is not None and view_layer.objects.active.mode != 'OBJECT':
            bpy.ops.object.mode_set(mode='OBJECT')
        view_layer.objects.active = prev_active
        bpy.data.batch_remove([i for i in created if i is not None])
        raise
    if select:
        for obj in view_layer.objects:
            obj.select_set(False)
        rig_obj.select_set(True)
        mesh_obj.select_set(True)
        view_layer.objects.active = rig_obj
    else:
        view_layer.objects.active = prev_active
    timings["total"] = time.perf_counter() - t0
    d = rig.detail
    return Imported(collection=coll, rig=rig_obj, mesh=mesh_obj, scene_frames=frames,
                    n_expression_keys=len(expr_keys), n_detail_keys=d.n_keys, detail_max_error=d.max_error,
                    detail_mean_error=d.mean_error, timings=timings, camera=cam_obj)
