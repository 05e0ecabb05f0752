"""MicroFace for Blender: import fine-grained facial micro-expression reconstructions.

Imports only bpy, the standard library and numpy; never the backend (it runs in its own Python).
``core/`` needs no bpy and is tested as plain numpy; ``scene/`` builds Blender data; ``ops/`` holds
the operators and panels registered here; ``batch.py`` is the headless conversion.
"""
from __future__ import annotations

import bpy
from bpy.props import StringProperty

from .ops import (keyframe_amplify, keyframe_bake, keyframe_clean, keyframe_panel, keyframe_smooth, operators,
                  prefs, strip_ops, ui)

_CLASSES = (
    *prefs.CLASSES,
    operators.MICROFACE_OT_import_result,
    ui.MICROFACE_PT_main,
    keyframe_amplify.MICROFACE_OT_amplify,
    keyframe_smooth.MICROFACE_OT_smooth,
    keyframe_clean.MICROFACE_OT_clean,
    keyframe_bake.MICROFACE_OT_bake,
    keyframe_panel.MICROFACE_PT_keyframe_tools,  # after MICROFACE_PT_main: a sub-panel needs its parent registered
    *strip_ops.CLASSES,
)

# (type, attribute, property) added on register and removed on unregister.
_PROPERTIES = (
    (bpy.types.WindowManager, "microface_status",
     StringProperty(name="MicroFace Status", description="Summary of the last MicroFace import")),
)


def register():
    prefs.set_defaults()
    for cls in _CLASSES:
        bpy.utils.register_class(cls)
    for owner, attr, prop in _PROPERTIES:
        setattr(owner, attr, prop)
    bpy.types.TOPBAR_MT_file_import.append(operators.menu_func_import)


def unregister():
    strip_ops.stop_running()  # a reconstruction in flight: its child, timer and status text
    prefs.stop_setup()        # Set Up Backend in flight: its step and staging folder
    bpy.types.TOPBAR_MT_file_import.remove(operators.menu_func_import)
    for owner, attr, _prop in reversed(_PROPERTIES):
        if hasattr(owner, attr):
            delattr(owner, attr)
    for cls in reversed(_CLASSES):
        bpy.utils.unregister_class(cls)
