"""What the keyframe tools share as undoable operators: the poll, the target (the active head
or rig and its channels), and the channel and onset options. Each tool is a module of its own
(keyframe_amplify, keyframe_smooth, keyframe_clean, keyframe_bake) and computes with
:mod:`..core.keyframe_math`.
"""

from bpy.props import BoolProperty, EnumProperty, FloatProperty

from ..scene.importer import PROP_PREFIX
from .keyframe_channels import Channels, find_head

_ONSET = EnumProperty(
    name="Onset", default='FIRST',
    items=(('FIRST', "First Frame", "The first imported frame is the onset (the backend's reference)"),
           ('CURRENT', "Current Frame", "The scene's current frame is the onset"),
           ('FRAME', "Frame", "The frame given below is the onset")),
    description="Frame whose pose counts as 'no motion'")
_ONSET_FRAME = FloatProperty(name="Onset Frame", default=1.0, description="Onset frame, when Onset is Frame")
_EXPRESSIONS = BoolProperty(name="Expressions", default=True, description="Edit the expression shape keys")
_DETAILS = BoolProperty(name="Micro-Detail", default=True, description="Edit the micro-detail shape keys")
_BONES = BoolProperty(name="Bones", default=True, description="Edit the bones' keys")


class HeadTool:
    """Poll and target lookup shared by the tools."""

    @classmethod
    def poll(cls, context):
        if find_head(context.active_object)[1] is None:
            cls.poll_message_set("Select an imported MicroFace head or its rig")
            return False
        return True

    def _target(self, context):
        rig, head = find_head(context.active_object)
        ch = Channels(rig, head)
        if not ch.all():
            self.report({'ERROR'}, f"{head.name} has no keys to edit (was its animation removed?)")
            return rig, head, None
        return rig, head, ch


class ChannelTool(HeadTool):
    """Which channels a tool edits (Blender registers annotations inherited from mixins)."""

    expressions: _EXPRESSIONS
    detail_keys: _DETAILS
    bones: _BONES

    def _wants_key(self, is_detail: bool) -> bool:
        return self.detail_keys if is_detail else self.expressions

    def _draw_channels(self, layout) -> None:
        row = layout.row(align=True)
        row.prop(self, "expressions", toggle=True)
        row.prop(self, "detail_keys", toggle=True)
        row.prop(self, "bones", toggle=True)


class OnsetTool(ChannelTool):
    """A tool that measures motion from an onset."""

    onset: _ONSET
    onset_frame: _ONSET_FRAME

    def _onset(self, context, head) -> float:
        if self.onset == 'CURRENT':
            return context.scene.frame_current + context.scene.frame_subframe
        if self.onset == 'FRAME':
            return float(self.onset_frame)
        return float(head.get(PROP_PREFIX + "first_scene_frame", context.scene.frame_start))

    def _draw_common(self, layout) -> None:
        layout.prop(self, "onset")
        if self.onset == 'FRAME':
            layout.prop(self, "onset_frame")
        self._draw_channels(layout)
