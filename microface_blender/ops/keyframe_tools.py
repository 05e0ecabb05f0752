"""Keyframe editing tools for an imported MicroFace head: amplify, smooth, clean and bake.

Each is an undoable operator on the active MicroFace head or rig: it reads the keys of the
head's shape-key action and the rig's action in bulk (``foreach_get``), computes with
:mod:`..core.keyframe_math`, and writes them back in bulk (``foreach_set``; ``keyframe_points.add`` when
the number of keys changes). The keys stay ordinary F-curves in the same layered actions, so the
Graph Editor and Dope Sheet edit them as before.
"""

import math
import re

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty

from ..core import keyframe_math as km
from ..scene.anim import action_fcurves
from ..scene.importer import BONE_REGIONS, DETAIL_PREFIX, KEY_REGIONS, PROP_PREFIX

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


class _Channels:
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

def _keys(fc) -> tuple[np.ndarray, np.ndarray]:
    """(times (N,), values (N,)) float64 of an F-curve's keys."""
    n = len(fc.keyframe_points)
    co = np.empty(2 * n, np.float32)
    fc.keyframe_points.foreach_get("co", co)
    return co[0::2].astype(np.float64), co[1::2].astype(np.float64)


def _set_values(fc, values: np.ndarray, affine=None) -> None:
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
_KEY_ATTRS = (("co", np.float32, 2), ("handle_left", np.float32, 2), ("handle_right", np.float32, 2),
              ("handle_left_type", np.int32, 1), ("handle_right_type", np.int32, 1),
              ("interpolation", np.int32, 1), ("easing", np.int32, 1), ("type", np.int32, 1),
              ("back", np.float32, 1), ("amplitude", np.float32, 1), ("period", np.float32, 1),
              ("select_control_point", bool, 1), ("select_left_handle", bool, 1),
              ("select_right_handle", bool, 1))


def _read_all(fc) -> dict:
    """Every attribute of every key, (N, width) arrays by attribute name."""
    n = len(fc.keyframe_points)
    out = {}
    for attr, dtype, width in _KEY_ATTRS:
        a = np.empty(n * width, dtype)
        fc.keyframe_points.foreach_get(attr, a)
        out[attr] = a.reshape(n, width)
    return out


def _write_all(fc, attrs: dict) -> None:
    """Replace the curve's keys by ``attrs`` (as from :func:`_read_all`, any number of keys)."""
    points = fc.keyframe_points
    n = len(attrs["co"])
    if len(points) != n:
        points.clear()
        points.add(n)
    for attr, _dtype, _width in _KEY_ATTRS:  # types before positions would not matter: update() runs last
        points.foreach_set(attr, attrs[attr].ravel())
    fc.update()


def _enum_value(attr: str, item: str) -> int:
    return bpy.types.Keyframe.bl_rna.properties[attr].enum_items[item].value


def _fit_slider(head, name: str, values: np.ndarray) -> int:
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


def _group_keys(curves):
    """(times (N,), values (N, C)) when every curve of a bone group has keys at the same frames;
    None otherwise (the group is then edited curve by curve)."""
    if any(fc is None for fc in curves):
        return None
    data = [_keys(fc) for fc in curves]
    t0 = data[0][0]
    if any(len(t) != len(t0) or not np.array_equal(t, t0) for t, _v in data):
        return None
    return t0, np.stack([v for _t, v in data], 1)


def _evaluate(curves, frames: np.ndarray) -> np.ndarray:
    """(M, C) values of the curves at ``frames`` (M,), from their own interpolation."""
    return np.array([[fc.evaluate(float(f)) for fc in curves] for f in frames], np.float64).reshape(len(frames), -1)


# --- shared operator pieces ----------------------------------------------------------------------

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


class _HeadTool:
    """Poll and target lookup shared by the tools."""

    @classmethod
    def poll(cls, context):
        if find_head(context.active_object)[1] is None:
            cls.poll_message_set("Select an imported MicroFace head or its rig")
            return False
        return True

    def _target(self, context):
        rig, head = find_head(context.active_object)
        ch = _Channels(rig, head)
        if not ch.all():
            self.report({'ERROR'}, f"{head.name} has no keys to edit (was its animation removed?)")
            return rig, head, None
        return rig, head, ch


class _ChannelTool(_HeadTool):
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


class _OnsetTool(_ChannelTool):
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


# --- amplify -------------------------------------------------------------------------------------

_GAIN = FloatProperty(name="Gain", default=1.5, min=-10.0, max=50.0, soft_min=0.0, soft_max=5.0,
                      description="Scale of the face's motion relative to the onset (1 leaves it, 2 doubles it); "
                                  "rigid head motion is never scaled")


def _region_gain(index: int):
    return FloatProperty(name=km.REGION_NAMES[index].replace("_", " ").title(), default=1.0, min=-10.0,
                         max=50.0, soft_min=0.0, soft_max=5.0,
                         description="Extra gain for motion in this face region (multiplies Gain)")


class MICROFACE_OT_amplify(_OnsetTool, bpy.types.Operator):
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
            _t, w = _keys(fc)
            new = km.amplify(w, w_on, gain)
            _set_values(fc, new, affine=lambda h, w_on=w_on, gain=gain: km.amplify(h, w_on, gain))
            clipped += _fit_slider(head, name, new)
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
            group = _group_keys(curves)
            if group is not None:
                new = km.amplify_rotations(group[1], q_on, gain)
                for c, fc in enumerate(curves):
                    _set_values(fc, new[:, c])
            else:  # keys at different frames per component: amplify the whole rotation at each key
                news = []
                for c, fc in enumerate(curves):
                    t, _w = _keys(fc)
                    news.append(km.amplify_rotations(_evaluate(curves, t), q_on, gain)[:, c])
                for fc, new in zip(curves, news):
                    _set_values(fc, new)
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


# --- smooth --------------------------------------------------------------------------------------

_SIGMA = FloatProperty(name="Width (frames)", default=2.0, min=0.05, max=100.0, soft_max=10.0,
                       description="Standard deviation of the Gaussian smoothing kernel, in scene frames")
_DEGREE = IntProperty(
    name="Order", default=2, min=1, max=3,
    description="Order of the local polynomial: 2 keeps peaks at their height (like Savitzky-Golay), 1 removes "
                "more noise for the same width")
_TIMING = EnumProperty(
    name="Keep Timing", default='FACE',
    items=(('FACE', "Face", "Keep the onset, apex and offset of the whole face's motion (the same frames on every "
                            "channel) and never smooth across them"),
           ('CHANNEL', "Each Channel", "Keep each channel's own onset, apex and offset keys"),
           ('NONE', "Onset Only", "Keep only the onset key; smooth everything else")),
    description="Which keys time the micro-expression and are kept as they are")
_THRESHOLD = FloatProperty(
    name="Motion Threshold", default=0.2, min=0.0, max=1.0, subtype='FACTOR',
    description="A swing counts as a motion (whose onset/apex/offset are kept) when it exceeds this fraction "
                "of the motion's range (and many times its noise)")
_NOISE_FACTOR = 8.0  # a swing must also exceed this many noise deviations: pure noise (range ~5-7 sd) has no motion


def _key_deltas(head, names=None) -> dict:
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


def _face_events(head, ch, onset: float, threshold: float) -> np.ndarray:
    """Frames of the face's onset/apex/offset: turning points of the RMS vertex motion relative to
    onset that all shape keys together make (rigid head motion left out)."""
    curves = [(fc, name) for fc, name, _d in ch.keys if len(fc.keyframe_points)]
    if not curves:
        return np.zeros(0)
    data = [_keys(fc) for fc, _n in curves]
    times = np.unique(np.concatenate([t for t, _w in data]))
    weights = np.stack([np.interp(times, t, w) for t, w in data], 1)           # (M, K)
    deltas = _key_deltas(head, {name for _fc, name in curves})
    gram = km.key_gram(np.stack([deltas[name] for _fc, name in curves]))
    i_on = int(np.argmin(np.abs(times - onset)))
    motion = km.motion_magnitude(weights, weights[i_on], gram)
    return times[km.timing_keys(motion, threshold, _NOISE_FACTOR)]


class MICROFACE_OT_smooth(_OnsetTool, bpy.types.Operator):
    """Smooth the keys in time (zero phase) while keeping the onset key and the micro-expression's
    onset, apex and offset keys, never smoothing across them"""

    bl_idname = "microface.smooth"
    bl_label = "Smooth Keys"
    bl_options = {'REGISTER', 'UNDO'}

    sigma: _SIGMA
    degree: _DEGREE
    timing: _TIMING
    threshold: _THRESHOLD

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "sigma")
        layout.prop(self, "degree")
        layout.prop(self, "timing")
        if self.timing != 'NONE':
            layout.prop(self, "threshold")
        self._draw_common(layout)

    def _smooth(self, t: np.ndarray, values: np.ndarray, onset: float, events: np.ndarray,
                signal) -> tuple[np.ndarray, int]:
        """Smoothed (N,) or (N, C) values and the number of keys kept as they are."""
        i_on = int(np.argmin(np.abs(t - onset)))
        anchors = {i_on}
        if self.timing == 'FACE':
            anchors.update(km.snap_to_keys(t, events).tolist())
        elif self.timing == 'CHANNEL':
            anchors.update(km.timing_keys(signal(values, i_on), self.threshold, _NOISE_FACTOR).tolist())
        return km.smooth_keys(t, values, self.sigma, sorted(anchors), self.degree), len(anchors)

    def execute(self, context):
        rig, head, ch = self._target(context)
        if ch is None:
            return {'CANCELLED'}
        onset = self._onset(context, head)
        events = _face_events(head, ch, onset, self.threshold) if self.timing == 'FACE' else np.zeros(0)
        scalar = lambda v, _i: v  # noqa: E731 - a single curve's motion is its value
        magnitude = lambda v, i: np.linalg.norm(v - v[i], axis=1)  # noqa: E731 - a bone's, its size
        changed = kept = 0
        ratios = []  # per channel: jitter after / before (units differ between channels; ratios do not)

        def measure(t, old, new):
            j = km.jitter(t, old)
            if j > 0:
                ratios.append(km.jitter(t, new) / j)

        for fc, name, is_detail in ch.keys:
            if not self._wants_key(is_detail) or len(fc.keyframe_points) < 3:
                continue
            t, w = _keys(fc)
            new, k = self._smooth(t, w, onset, events, scalar)
            _set_values(fc, new)
            _fit_slider(head, name, new)
            measure(t, w, new)
            changed, kept = changed + 1, kept + k
        groups = [*ch.rotations.values(), *ch.locations.values()] if self.bones else []
        for curves in groups:
            group = _group_keys(curves)
            if group is not None and len(group[0]) >= 3:
                t, v = group  # one set of kept keys for the whole bone channel
                new, k = self._smooth(t, v, onset, events, magnitude)
                for c, fc in enumerate(curves):
                    _set_values(fc, new[:, c])
                measure(t, v, new)
                changed, kept = changed + len(curves), kept + k
                continue
            for fc in curves:
                if fc is None or len(fc.keyframe_points) < 3:
                    continue
                t, w = _keys(fc)
                new, k = self._smooth(t, w, onset, events, scalar)
                _set_values(fc, new)
                measure(t, w, new)
                changed, kept = changed + 1, kept + k
        if changed == 0:
            self.report({'WARNING'}, "No channel has 3 or more keys to smooth")
            return {'CANCELLED'}
        drop = int(round(100.0 * (1.0 - float(np.median(ratios))))) if ratios else 0
        jitter = f"{drop} % less" if drop >= 0 else f"{-drop} % more"
        shown = ", ".join(f"{f:g}" for f in events[:8]) + (", ..." if len(events) > 8 else "")
        timing = f", {len(events)} face onset/apex/offset frames: {shown}" if len(events) else ""
        self.report({'INFO'}, f"Smoothed {changed} channels (width {self.sigma:g} frames; {kept} keys kept{timing}); "
                              f"median key-to-key jitter {jitter}")
        return {'FINISHED'}


# --- clean ---------------------------------------------------------------------------------------

_TOLERANCE_MM = FloatProperty(
    name="Tolerance (mm)", default=0.01, min=0.0, max=10.0, precision=4, step=0.1,
    description="Largest change, in millimetres at any vertex, that removing keys may cause in each channel "
                "(the changes of several channels can add up)")


def _key_reach(head) -> dict:
    """Shape key name -> metres the key moves its farthest vertex at weight 1."""
    return {name: float(np.sqrt((d * d).sum(1)).max()) for name, d in _key_deltas(head).items()}


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
    attrs = _read_all(fc)
    n = len(attrs["co"])
    if n < 3:
        return n, n
    t, y = attrs["co"][:, 0].astype(np.float64), attrs["co"][:, 1].astype(np.float64)
    keep = km.simplify(t, y, tolerance)
    all_linear = bool(np.all(attrs["interpolation"][:-1] == linear))
    if keep.all():
        return n, n
    while True:
        _write_all(fc, {k: a[keep] for k, a in attrs.items()})
        if all_linear:  # the simplification's own guarantee holds for straight segments
            return n, int(keep.sum())
        # Bezier or constant segments: measure with the curve's own interpolation and add keys back.
        errors = np.abs(np.array([fc.evaluate(float(f)) for f in t]) - y)
        refined = km.refine(keep, errors, tolerance)
        if np.array_equal(refined, keep):
            return n, int(keep.sum())
        keep = refined


class MICROFACE_OT_clean(_ChannelTool, bpy.types.Operator):
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
        linear = _enum_value("interpolation", 'LINEAR')
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


# --- bake ----------------------------------------------------------------------------------------

_BAKE_RANGE = EnumProperty(
    name="Range", default='KEYS',
    items=(('KEYS', "Keys", "From the first to the last key of the head and rig"),
           ('SCENE', "Scene", "The scene's frame range")),
    description="Frames that get a key")
_STEP = IntProperty(name="Step", default=1, min=1, max=100, description="A key every this many frames")


class MICROFACE_OT_bake(_HeadTool, bpy.types.Operator):
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
        linear = _enum_value("interpolation", 'LINEAR')
        auto = _enum_value("handle_left_type", 'AUTO_CLAMPED')
        keyframe = _enum_value("type", 'KEYFRAME')
        m = len(frames)
        for fc in curves:
            values = np.array([fc.evaluate(float(f)) for f in frames], np.float64)
            while len(fc.modifiers):  # their effect is in the baked values now
                fc.modifiers.remove(fc.modifiers[0])
            co = np.empty((m, 2), np.float32)
            co[:, 0], co[:, 1] = frames, values
            attrs = {attr: np.zeros((m, width), dtype) for attr, dtype, width in _KEY_ATTRS}
            attrs.update(co=co, handle_left=co.copy(), handle_right=co.copy(),
                         handle_left_type=np.full((m, 1), auto, np.int32),
                         handle_right_type=np.full((m, 1), auto, np.int32),
                         interpolation=np.full((m, 1), linear, np.int32), type=np.full((m, 1), keyframe, np.int32),
                         back=np.full((m, 1), 1.70158, np.float32), amplitude=np.full((m, 1), 0.8, np.float32),
                         period=np.full((m, 1), 4.1, np.float32))
            _write_all(fc, attrs)
        self.report({'INFO'}, f"Baked {len(curves)} channels to {m} keys each, frames {frames[0]:g}-{frames[-1]:g}")
        return {'FINISHED'}


# --- panel ---------------------------------------------------------------------------------------

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


CLASSES = (MICROFACE_OT_amplify, MICROFACE_OT_smooth, MICROFACE_OT_clean, MICROFACE_OT_bake,
           MICROFACE_PT_keyframe_tools)
