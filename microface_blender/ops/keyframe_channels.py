"""The keys the keyframe tools edit on an imported MicroFace head: finding the head and its rig,
their channels by kind, and bulk key access.

Keys of the head's shape-key action and the rig's action are read in bulk (``foreach_get``) and
written back in bulk (``foreach_set``; ``keyframe_points.add`` when the number of keys changes).
The keys stay ordinary F-curves in the same layered actions, so the Graph Editor and Dope Sheet
edit them as before.
"""

import math
import re

import bpy
import numpy as np

from ..scene.anim import action_fcurves
from ..scene.importer import DETAIL_PREFIX, PROP_PREFIX

_MARK = PROP_PREFIX + "frames"  # every imported rig and head carries it
_KEY_PATH = re.compile(r'^key_blocks\["((?:[^"\\]|\\.)*)"\]\.value$')
_BONE_PATH = re.compile(r'^pose\.bones\["((?:[^"\\]|\\.)*)"\]\.(rotation_quaternion|location)$')
_SLIDER_LIMIT = 10.0  # Blender caps shape-key slider ranges at +-10


# --- finding the head and its channels -----------------------------------------------------------

def find_head(obj):
    """(rig, head) of the MicroFace import that ``obj`` (its rig or its head) belongs to. The head
    is None when ``obj`` is not part of an import or the head has no shape keys; the rig may be None
    (deleted) while the head is usable."""
    if obj is None or _MARK not in obj:
        return None, None
    if obj.type == 'ARMATURE':
        rig = obj
        head = next((c for c in obj.children if c.type == 'MESH' and _MARK in c), None)
    elif obj.type == 'MESH':
        head = obj
        parent = obj.parent
        rig = parent if parent is not None and parent.type == 'ARMATURE' and _MARK in parent else None
    else:
        return None, None
    if head is not None and head.data.shape_keys is None:
        head = None
    return rig, head


def _unescape(name: str) -> str:
    return re.sub(r'\\(.)', r'\1', name)


class Channels:
    """The head's shape-key curves and the rig's bone curves, by kind."""

    def __init__(self, rig, head):
        self.keys = []         # (fcurve, key name, is detail key)
        self.rotations = {}    # bone -> [fcurve or None] * 4 (w, x, y, z)
        self.locations = {}    # bone -> [fcurve or None] * 3
        self.other = []        # curves the tools do not interpret (baked only)
        for fc in action_fcurves(head.data.shape_keys):
            m = _KEY_PATH.match(fc.data_path)
            if m:
                name = _unescape(m.group(1))
                self.keys.append((fc, name, name.startswith(DETAIL_PREFIX)))
            else:
                self.other.append(fc)
        for fc in action_fcurves(rig) if rig is not None else ():
            m = _BONE_PATH.match(fc.data_path)
            if m:
                table = self.rotations if m.group(2) == "rotation_quaternion" else self.locations
                slots = table.setdefault(_unescape(m.group(1)), [None] * (4 if table is self.rotations else 3))
                if fc.array_index < len(slots):
                    slots[fc.array_index] = fc
                    continue
            self.other.append(fc)

    def all(self) -> list:
        groups = list(self.rotations.values()) + list(self.locations.values())
        return [fc for fc, _n, _d in self.keys] + [fc for g in groups for fc in g if fc is not None] + self.other


# --- bulk key access -----------------------------------------------------------------------------

def read_keys(fc) -> tuple[np.ndarray, np.ndarray]:
    """(times (N,), values (N,)) float64 of an F-curve's keys."""
    n = len(fc.keyframe_points)
    co = np.empty(2 * n, np.float32)
    fc.keyframe_points.foreach_get("co", co)
    return co[0::2].astype(np.float64), co[1::2].astype(np.float64)


def set_values(fc, values: np.ndarray, affine=None) -> None:
    """Give the keys new ``values`` (N,). Handles follow: through ``affine`` (a function of the old
    handle values) when the edit is one, else moved by their key's change."""
    points = fc.keyframe_points
    n = len(points)
    co = np.empty(2 * n, np.float32)
    points.foreach_get("co", co)
    old = co[1::2].astype(np.float64)
    co[1::2] = values
    points.foreach_set("co", co)
    delta = co[1::2].astype(np.float64) - old
    for side in ("handle_left", "handle_right"):
        h = np.empty(2 * n, np.float32)
        points.foreach_get(side, h)
        hy = h[1::2].astype(np.float64)
        h[1::2] = affine(hy) if affine is not None else hy + delta
        points.foreach_set(side, h)
    fc.update()  # auto handles follow the new values


# (attribute, numpy dtype, values per key) of everything a key holds.
KEY_ATTRS = (("co", np.float32, 2), ("handle_left", np.float32, 2), ("handle_right", np.float32, 2),
             ("handle_left_type", np.int32, 1), ("handle_right_type", np.int32, 1),
             ("interpolation", np.int32, 1), ("easing", np.int32, 1), ("type", np.int32, 1),
             ("back", np.float32, 1), ("amplitude", np.float32, 1), ("period", np.float32, 1),
             ("select_control_point", bool, 1), ("select_left_handle", bool, 1),
             ("select_right_handle", bool, 1))


def read_all(fc) -> dict:
    """Every attribute of every key, (N, width) arrays by attribute name."""
    n = len(fc.keyframe_points)
    out = {}
    for attr, dtype, width in KEY_ATTRS:
        a = np.empty(n * width, dtype)
        fc.keyframe_points.foreach_get(attr, a)
        out[attr] = a.reshape(n, width)
    return out


def write_all(fc, attrs: dict) -> None:
    """Replace the curve's keys by ``attrs`` (as from :func:`read_all`, any number of keys)."""
    points = fc.keyframe_points
    n = len(attrs["co"])
    if len(points) != n:
        points.clear()
        points.add(n)
    for attr, _dtype, _width in KEY_ATTRS:  # types before positions would not matter: update() runs last
        points.foreach_set(attr, attrs[attr].ravel())
    fc.update()


def enum_value(attr: str, item: str) -> int:
    return bpy.types.Keyframe.bl_rna.properties[attr].enum_items[item].value


def fit_slider(head, name: str, values: np.ndarray) -> int:
    """Widen a shape key's slider range (which clamps its animation) to hold ``values``. Returns
    how many values lie beyond Blender's +-10 cap and will be clipped."""
    kb = head.data.shape_keys.key_blocks.get(name)
    if kb is None or len(values) == 0:
        return 0
    lo, hi = float(values.min()), float(values.max())
    if lo < kb.slider_min:
        kb.slider_min = max(-_SLIDER_LIMIT, math.floor(lo))
    if hi > kb.slider_max:
        kb.slider_max = min(_SLIDER_LIMIT, math.ceil(hi))
    return int(np.count_nonzero(np.abs(values) > _SLIDER_LIMIT))


def group_keys(curves):
    """(times (N,), values (N, C)) when every curve of a bone group has keys at the same frames;
    None otherwise (the group is then edited curve by curve)."""
    if any(fc is None for fc in curves):
        return None
    data = [read_keys(fc) for fc in curves]
    t0 = data[0][0]
    if any(len(t) != len(t0) or not np.array_equal(t, t0) for t, _v in data):
        return None
    return t0, np.stack([v for _t, v in data], 1)


# --- what the shape keys move --------------------------------------------------------------------

def key_deltas(head, names=None) -> dict:
    """Shape key name -> (V, 3) float64 metres it moves each vertex at weight 1 (from its
    relative key). Only ``names`` when given."""
    keys = head.data.shape_keys.key_blocks
    n = len(head.data.vertices)
    cache = {}

    def co(kb):
        if kb.name not in cache:
            a = np.empty(3 * n, np.float32)
            kb.data.foreach_get("co", a)
            cache[kb.name] = a.reshape(n, 3).astype(np.float64)
        return cache[kb.name]

    out = {}
    for kb in keys:
        if names is not None and kb.name not in names:
            continue
        base = kb.relative_key if kb.relative_key is not None else keys[0]
        out[kb.name] = co(kb) - co(base) if base != kb else np.zeros((n, 3))
    return out
