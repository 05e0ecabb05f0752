"""Add-on preferences: the head model, the backend's interpreter, its device and the cache folder."""
import os
import tempfile

import bpy
from bpy.props import EnumProperty, StringProperty

from ..core.paths import PYTHON_HINT, find_backend_python

# The add-on is the package above ops/: "microface_blender" in the repo, "bl_ext.<repo>.microface" once installed.
ADDON_ID = __package__.rpartition(".")[0]


def default_cache_dir() -> str:
    """The extension's own user folder (kept across updates, removed on uninstall); a temp folder
    when running from the repo, where there is no extension folder."""
    try:
        return bpy.utils.extension_path_user(ADDON_ID, path="cache", create=True)
    except ValueError:
        return os.path.join(tempfile.gettempdir(), "microface-cache")


# Properties are built outside the class body: string literals inside annotations read as
# forward references to linters (pyflakes), and two defaults are only known at register time.
def _python_prop(default: str = ""):
    return StringProperty(name="Backend Python", subtype='FILE_PATH', default=default,
                          description="Python interpreter of the MicroFace backend (the checkout's .venv/bin/python)")


def _cache_prop(default: str = ""):
    return StringProperty(name="Cache Folder", subtype='DIR_PATH', default=default,
                          description="Where reconstructions of sequencer strips are kept")


_HEAD_MODEL = StringProperty(
    name="Head Model", subtype='FILE_PATH',
    description="FLAME-format .pkl head model for the backend (empty: $MICROFACE_FLAME, else the open stand-in)")
_DEVICE = EnumProperty(
    name="Device", default='AUTO',
    items=(('AUTO', "Auto", "CUDA when present, else CPU"),
           ('CPU', "CPU", "Run the backend on the CPU"),
           ('CUDA', "CUDA", "Run the backend on an NVIDIA GPU")))
_PYTHON = _python_prop()
_CACHE = _cache_prop()


class MicroFacePreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    head_model: _HEAD_MODEL
    python: _PYTHON
    device: _DEVICE
    cache_dir: _CACHE

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "head_model")
        layout.prop(self, "python")
        if not self.python:
            layout.label(text="No backend found: " + PYTHON_HINT, icon='INFO')
        layout.prop(self, "device")
        layout.prop(self, "cache_dir")


def set_defaults() -> None:
    """Fill the defaults that depend on where the add-on lives (called from register, not at import)."""
    MicroFacePreferences.__annotations__["python"] = _python_prop(find_backend_python())
    MicroFacePreferences.__annotations__["cache_dir"] = _cache_prop(default_cache_dir())


def get(context) -> MicroFacePreferences | None:
    """The preferences, or None when the add-on runs unregistered as an add-on (tests, scripts)."""
    addon = context.preferences.addons.get(ADDON_ID)
    return addon.preferences if addon else None
