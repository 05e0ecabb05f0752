"""Bake Keys: one linear key per frame on every shape-key and bone curve of the head, with the
values the curves have now, for exporters."""

import bpy
import numpy as np
from bpy.props import EnumProperty, IntProperty

from ..core import keyframe_math as km
from .keyframe_channels import KEY_ATTRS, enum_value, write_all
from .keyframe_operator import HeadTool

_BAKE_RANGE = EnumProperty(
    name="Range", default='KEYS',
    items=(('KEYS', "Keys", "From the first to the last key of the head and rig"),
           ('SCENE', "Scene", "The scene's frame range")),
    description="Frames that get a key")
_STEP = IntProperty(name="Step", default=1, min=1, max=100, description="A key every this many frames")


class MICROFACE_OT_bake(HeadTool, bpy.types.Operator):
    """Resample every shape-key and bone curve of the head to one key per scene frame (linear), with
    the values the curves have now (handles and curve modifiers included), for exporters"""

    bl_idname = "microface.bake"
    bl_label = "Bake Keys"
    bl_options = {'REGISTER', 'UNDO'}

    frame_range: _BAKE_RANGE
    step: _STEP

    def execute(self, context):
        _rig, head, ch = self._target(context)
        if ch is None:
            return {'CANCELLED'}
        curves = [fc for fc in ch.all() if len(fc.keyframe_points) or len(fc.modifiers)]
        if self.frame_range == 'SCENE':
            first, last = context.scene.frame_start, context.scene.frame_end
        else:
            ranges = np.array([tuple(fc.range()) for fc in curves if len(fc.keyframe_points)])
            if len(ranges) == 0:
                self.report({'ERROR'}, f"{head.name} has no keys to bake")
                return {'CANCELLED'}
            first, last = float(ranges[:, 0].min()), float(ranges[:, 1].max())
        frames = km.bake_frames(first, last, self.step)
        linear = enum_value("interpolation", 'LINEAR')
        auto = enum_value("handle_left_type", 'AUTO_CLAMPED')
        keyframe = enum_value("type", 'KEYFRAME')
        m = len(frames)
        for fc in curves:
            values = np.array([fc.evaluate(float(f)) for f in frames], np.float64)
            while len(fc.modifiers):  # their effect is in the baked values now
                fc.modifiers.remove(fc.modifiers[0])
            co = np.empty((m, 2), np.float32)
            co[:, 0], co[:, 1] = frames, values
            attrs = {attr: np.zeros((m, width), dtype) for attr, dtype, width in KEY_ATTRS}
            attrs.update(co=co, handle_left=co.copy(), handle_right=co.copy(),
                         handle_left_type=np.full((m, 1), auto, np.int32),
                         handle_right_type=np.full((m, 1), auto, np.int32),
                         interpolation=np.full((m, 1), linear, np.int32), type=np.full((m, 1), keyframe, np.int32),
                         back=np.full((m, 1), 1.70158, np.float32), amplitude=np.full((m, 1), 0.8, np.float32),
                         period=np.full((m, 1), 4.1, np.float32))
            write_all(fc, attrs)
        self.report({'INFO'}, f"Baked {len(curves)} channels to {m} keys each, frames {frames[0]:g}-{frames[-1]:g}")
        return {'FINISHED'}
