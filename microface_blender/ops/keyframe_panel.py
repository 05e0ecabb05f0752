"""The Keyframe Tools sub-panel of the MicroFace sidebar: a button for each tool."""

import bpy

from .keyframe_amplify import MICROFACE_OT_amplify
from .keyframe_bake import MICROFACE_OT_bake
from .keyframe_channels import find_head
from .keyframe_clean import MICROFACE_OT_clean
from .keyframe_smooth import MICROFACE_OT_smooth


class MICROFACE_PT_keyframe_tools(bpy.types.Panel):
    bl_label = "Keyframe Tools"
    bl_idname = "MICROFACE_PT_keyframe_tools"
    bl_space_type = 'VIEW_3D'
    bl_region_type = 'UI'
    bl_category = "MicroFace"
    bl_parent_id = "MICROFACE_PT_main"

    @classmethod
    def poll(cls, context):
        return find_head(context.active_object)[1] is not None

    def draw(self, context):
        col = self.layout.column(align=True)
        col.operator(MICROFACE_OT_amplify.bl_idname, icon='FULLSCREEN_ENTER')
        col.operator(MICROFACE_OT_smooth.bl_idname, icon='SMOOTHCURVE')
        col.operator(MICROFACE_OT_clean.bl_idname, icon='BRUSH_DATA')
        col.operator(MICROFACE_OT_bake.bl_idname, icon='KEYINGSET')
