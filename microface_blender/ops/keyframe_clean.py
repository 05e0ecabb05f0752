"""Clean Keys: remove the keys that the remaining keys reproduce within a tolerance in
millimetres of mesh motion per channel."""

import math

import bpy
import numpy as np
from bpy.props import FloatProperty

from ..core import keyframe_math as km
from .keyframe_channels import enum_value, key_deltas, read_all, write_all
from .keyframe_operator import ChannelTool

_TOLERANCE_MM = FloatProperty(
    name="Tolerance (mm)", default=0.01, min=0.0, max=10.0, precision=4, step=0.1,
    description="Largest change, in millimetres at any vertex, that removing keys may cause in each channel "
                "(the changes of several channels can add up)")


def _key_reach(head) -> dict:
    """Shape key name -> metres the key moves its farthest vertex at weight 1."""
    return {name: float(np.sqrt((d * d).sum(1)).max()) for name, d in key_deltas(head).items()}


def _bone_reach(rig, head) -> dict:
    """Bone name -> metres from the bone's head to the farthest vertex it (or a child) moves."""
    me = head.data
    n = len(me.vertices)
    co = np.empty(3 * n, np.float32)
    me.vertices.foreach_get("co", co)
    co = co.reshape(n, 3).astype(np.float64)
    groups = {vg.index: vg.name for vg in head.vertex_groups}
    members = {name: [] for name in groups.values()}
    for v in me.vertices:  # no bulk access to vertex-group weights; once per clean
        for g in v.groups:
            if g.weight > 0 and g.group in groups:
                members[groups[g.group]].append(v.index)
    out = {}
    for bone in rig.data.bones:
        idx = [i for b in (bone, *bone.children_recursive) for i in members.get(b.name, ())]
        d = co[idx] - np.array(bone.head_local) if idx else co - np.array(bone.head_local)
        out[bone.name] = max(float(np.sqrt((d * d).sum(1)).max()), 1e-3)
    return out


def _clean_curve(fc, tolerance: float, linear: int) -> tuple[int, int]:
    """Douglas-Peucker on one curve, checked against its own interpolation. Returns (before, after)."""
    attrs = read_all(fc)
    n = len(attrs["co"])
    if n < 3:
        return n, n
    t, y = attrs["co"][:, 0].astype(np.float64), attrs["co"][:, 1].astype(np.float64)
    keep = km.simplify(t, y, tolerance)
    all_linear = bool(np.all(attrs["interpolation"][:-1] == linear))
    if keep.all():
        return n, n
    while True:
        write_all(fc, {k: a[keep] for k, a in attrs.items()})
        if all_linear:  # the simplification's own guarantee holds for straight segments
            return n, int(keep.sum())
        # Bezier or constant segments: measure with the curve's own interpolation and add keys back.
        errors = np.abs(np.array([fc.evaluate(float(f)) for f in t]) - y)
        refined = km.restore_missed_keys(keep, errors, tolerance)
        if np.array_equal(refined, keep):
            return n, int(keep.sum())
        keep = refined


class MICROFACE_OT_clean(ChannelTool, bpy.types.Operator):
    """Remove the keys that the remaining keys reproduce within a tolerance (in millimetres of mesh
    motion per channel)"""

    bl_idname = "microface.clean"
    bl_label = "Clean Keys"
    bl_options = {'REGISTER', 'UNDO'}

    tolerance_mm: _TOLERANCE_MM

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "tolerance_mm")
        self._draw_channels(layout)

    def execute(self, context):
        rig, head, ch = self._target(context)
        if ch is None:
            return {'CANCELLED'}
        tol = self.tolerance_mm * 1e-3
        linear = enum_value("interpolation", 'LINEAR')
        work = []  # (fcurve, tolerance in the curve's own units)
        if self.expressions or self.detail_keys:
            reach = _key_reach(head)
            for fc, name, is_detail in ch.keys:
                if self._wants_key(is_detail):
                    r = reach.get(name, 0.0)
                    work.append((fc, tol / r if r > 0 else math.inf))
        if self.bones and rig is not None:
            lever = _bone_reach(rig, head) if ch.rotations else {}
            for bone, curves in ch.rotations.items():
                # A quaternion component off by d turns the bone by about 2d radians.
                work += [(fc, tol / (2.0 * lever.get(bone, 1.0))) for fc in curves if fc is not None]
            for curves in ch.locations.values():
                work += [(fc, tol) for fc in curves if fc is not None]
        before = after = 0
        for fc, tolerance in work:
            b, a = _clean_curve(fc, tolerance, linear)
            before, after = before + b, after + a
        if before == 0:
            self.report({'WARNING'}, "No keys to clean")
            return {'CANCELLED'}
        self.report({'INFO'}, f"Cleaned {len(work)} channels: {before} -> {after} keys "
                              f"({100.0 * (before - after) / before:.0f} % fewer) within {self.tolerance_mm:g} mm")
        return {'FINISHED'}
