"""The MicroFace sidebar panel in the 3D viewport."""

import bpy

from ..scene.importer import PROP_PREFIX
from .strip_ops import draw_reconstruct

# (custom property, label, format) shown for the active MicroFace object.
_INFO = (
    ("source_name", "Clip", "{}"),
    ("fps", "Source fps", "{:g}"),
    ("frames", "Frames", "{}"),
    ("active_regions", "Active regions", "{}"),
    ("model_id", "Head model", "{}"),
    ("expression_span", "Basis span error", "{}"),
    ("detail_keys", "Detail keys", "{}"),
    ("detail_max_error_mm", "Detail max error", "{:.3f} mm"),
    ("backend_version", "Backend", "{}"),
)


class MICROFACE_PT_main(bpy.types.Panel):
    bl_label = "MicroFace"
    bl_idname = "MICROFACE_PT_main"
    bl_space_type = 'VIEW_3D'
    bl_region_type = 'UI'
    bl_category = "MicroFace"

    def draw(self, context):
        layout = self.layout
        layout.operator("microface.import_result", icon='IMPORT')
        draw_reconstruct(layout, context)  # the active movie strip of the sequencer
        status = context.window_manager.microface_status
        if status:
            layout.label(text=status)
        obj = context.active_object
        if obj is not None and PROP_PREFIX + "frames" not in obj and obj.parent is not None:
            obj = obj.parent
        if obj is None or PROP_PREFIX + "frames" not in obj:
            return
        col = layout.column(align=True)
        for key, label, fmt in _INFO:
            if PROP_PREFIX + key in obj:
                row = col.row()
                row.label(text=label)
                row.label(text=fmt.format(obj[PROP_PREFIX + key]))
