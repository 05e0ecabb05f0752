"""Operators: File > Import > MicroFace result (.npz)."""

import math
import traceback

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty
from bpy_extras.io_utils import ImportHelper

from ..core.detail import DEFAULT_MAX_KEYS, DEFAULT_TOLERANCE


# Built outside the class body: string literals inside annotations read as forward references
# to linters (pyflakes).
_FILTER_GLOB = StringProperty(default="*.npz", options={'HIDDEN'})
_DETAIL_TOLERANCE = FloatProperty(
    name="Detail Tolerance (mm)", default=DEFAULT_TOLERANCE * 1e3, min=0.001, max=5.0, precision=3,
    description="Largest error (mm) allowed for the micro-detail shape keys that carry what the rig misses")
_MAX_DETAIL_KEYS = IntProperty(
    name="Max Detail Keys", default=DEFAULT_MAX_KEYS, min=0, max=256,
    description="At most this many micro-detail shape keys")
_INTERPOLATION = EnumProperty(
    name="Interpolation", default='LINEAR',
    items=(('LINEAR', "Linear", "Straight lines between frames (faithful between keys)"),
           ('BEZIER', "Bezier", "Smooth curves (easier to edit)"),
           ('CONSTANT', "Constant", "Hold each frame")))
_ADD_CAMERA = BoolProperty(
    name="Add Camera", default=False,
    description="Add a camera matched to the reconstruction, with the source clip (when found) as its background")
_SET_FRAME_RANGE = BoolProperty(
    name="Set Frame Range", default=True, description="Fit the scene's frame range to the imported animation")


class MICROFACE_OT_import_result(bpy.types.Operator, ImportHelper):
    """Import a MicroFace result as a rigged FLAME head with keyframed bones and shape keys"""

    bl_idname = "microface.import_result"
    bl_label = "Import MicroFace Result"
    bl_options = {'REGISTER', 'UNDO'}

    filename_ext = ".npz"
    filter_glob: _FILTER_GLOB
    detail_tolerance_mm: _DETAIL_TOLERANCE
    max_detail_keys: _MAX_DETAIL_KEYS
    interpolation: _INTERPOLATION
    set_frame_range: _SET_FRAME_RANGE
    add_camera: _ADD_CAMERA

    def execute(self, context):
        from ..scene.importer import ImportFailed, import_result

        try:
            out = import_result(context, self.filepath, detail_tolerance=self.detail_tolerance_mm * 1e-3,
                                max_detail_keys=self.max_detail_keys, interpolation=self.interpolation,
                                camera=self.add_camera)
        except ImportFailed as exc:
            self.report({'ERROR'}, str(exc))
            return {'CANCELLED'}
        except Exception as exc:  # a bug: still one line for the user, the trace for the console
            traceback.print_exc()
            self.report({'ERROR'}, f"MicroFace import failed: {type(exc).__name__}: {' '.join(str(exc).split())}")
            return {'CANCELLED'}
        if self.set_frame_range:
            context.scene.frame_start = math.floor(out.scene_frames[0])
            context.scene.frame_end = math.ceil(out.scene_frames[-1])
        summary = (f"Imported {out.collection.name}: {len(out.scene_frames)} frames, {out.n_expression_keys} "
                   f"expression and {out.n_detail_keys} detail keys (max error {out.detail_max_error * 1e3:.3f} mm)")
        context.window_manager.microface_status = summary
        self.report({'INFO'}, summary)
        return {'FINISHED'}


def menu_func_import(self, context):
    self.layout.operator(MICROFACE_OT_import_result.bl_idname, text="MicroFace result (.npz)")
