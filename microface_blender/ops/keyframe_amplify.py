"""Amplify Micro-Expression: scale every key's motion relative to the onset, globally and per
face region; rigid head motion is never scaled."""

import bpy
import numpy as np
from bpy.props import FloatProperty

from ..core import keyframe_math as km
from ..scene.importer import BONE_REGIONS, KEY_REGIONS
from .keyframe_channels import fit_slider, group_keys, read_keys, set_values
from .keyframe_operator import OnsetTool

_GAIN = FloatProperty(name="Gain", default=1.5, min=-10.0, max=50.0, soft_min=0.0, soft_max=5.0,
                      description="Scale of the face's motion relative to the onset (1 leaves it, 2 doubles it); "
                                  "rigid head motion is never scaled")


def _region_gain(index: int):
    return FloatProperty(name=km.REGION_NAMES[index].replace("_", " ").title(), default=1.0, min=-10.0,
                         max=50.0, soft_min=0.0, soft_max=5.0,
                         description="Extra gain for motion in this face region (multiplies Gain)")


def _evaluate(curves, frames: np.ndarray) -> np.ndarray:
    """(M, C) values of the curves at ``frames`` (M,), from their own interpolation."""
    return np.array([[fc.evaluate(float(f)) for fc in curves] for f in frames], np.float64).reshape(len(frames), -1)


class MICROFACE_OT_amplify(OnsetTool, bpy.types.Operator):
    """Exaggerate or tone down the micro-expression: scale every key's motion relative to the onset,
    globally and per face region"""

    bl_idname = "microface.amplify"
    bl_label = "Amplify Micro-Expression"
    bl_options = {'REGISTER', 'UNDO'}

    gain: _GAIN
    gain_left_eye: _region_gain(0)
    gain_right_eye: _region_gain(1)
    gain_nose: _region_gain(2)
    gain_mouth: _region_gain(3)
    gain_left_cheek: _region_gain(4)
    gain_right_cheek: _region_gain(5)
    gain_forehead: _region_gain(6)
    gain_chin: _region_gain(7)

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "gain")
        box = layout.box()
        box.label(text="Region Gains")
        grid = box.grid_flow(columns=2, even_columns=True, align=True)
        for region in km.REGION_NAMES:
            grid.prop(self, f"gain_{region}")
        self._draw_common(layout)

    def execute(self, context):
        rig, head, ch = self._target(context)
        if ch is None:
            return {'CANCELLED'}
        onset = self._onset(context, head)
        region_gains = np.array([getattr(self, f"gain_{r}") for r in km.REGION_NAMES], np.float64)
        uniform = bool(np.all(region_gains == region_gains[0]))
        shares = head.get(KEY_REGIONS)
        changed = clipped = unmapped = 0
        for fc, name, is_detail in ch.keys:
            if not self._wants_key(is_detail):
                continue
            share = shares.get(name) if shares is not None else None
            if share is not None:
                gain = float(km.key_gains(np.asarray(share, np.float64)[None], self.gain, region_gains)[0])
            else:
                unmapped += not uniform  # region gains need the import's region table
                gain = self.gain * (float(region_gains[0]) if uniform else 1.0)
            if gain == 1.0 or len(fc.keyframe_points) == 0:
                continue  # exactly untouched
            w_on = fc.evaluate(onset)
            _t, w = read_keys(fc)
            new = km.amplify(w, w_on, gain)
            set_values(fc, new, affine=lambda h, w_on=w_on, gain=gain: km.amplify(h, w_on, gain))
            clipped += fit_slider(head, name, new)
            changed += 1
        regions = rig.get(BONE_REGIONS, {}) if rig is not None else {}
        for bone, curves in ch.rotations.items() if self.bones else ():
            region = regions.get(bone, "")
            if not region or region not in km.REGION_NAMES:
                continue  # rigid head motion (global, neck) is never amplified
            gain = self.gain * float(region_gains[km.REGION_NAMES.index(region)])
            if gain == 1.0 or any(fc is None for fc in curves):
                continue
            q_on = _evaluate(curves, np.array([onset]))[0]
            group = group_keys(curves)
            if group is not None:
                new = km.amplify_rotations(group[1], q_on, gain)
                for c, fc in enumerate(curves):
                    set_values(fc, new[:, c])
            else:  # keys at different frames per component: amplify the whole rotation at each key
                news = []
                for c, fc in enumerate(curves):
                    t, _w = read_keys(fc)
                    news.append(km.amplify_rotations(_evaluate(curves, t), q_on, gain)[:, c])
                for fc, new in zip(curves, news):
                    set_values(fc, new)
            changed += 4
        if changed == 0:
            self.report({'INFO'}, "All gains are 1: nothing to change")
            return {'FINISHED'}
        notes = []
        if unmapped:
            notes.append(f"{unmapped} shape keys have no region data (re-import with a current backend for "
                         "per-region gains) and took the global gain")
        if clipped:
            notes.append(f"{clipped} key values exceed Blender's +-10 shape key range and are clipped")
        msg = f"Amplified {changed} channels about frame {onset:g}" + ("; " + "; ".join(notes) if notes else "")
        self.report({'WARNING'} if notes else {'INFO'}, msg)
        return {'FINISHED'}
