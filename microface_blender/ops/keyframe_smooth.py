"""Smooth Keys: a zero-phase fit in time that keeps the onset key and the micro-expression's
onset, apex and offset keys, never smoothing across them."""

import bpy
import numpy as np
from bpy.props import EnumProperty, FloatProperty, IntProperty

from ..core import keyframe_math as km
from .keyframe_channels import fit_slider, group_keys, key_deltas, read_keys, set_values
from .keyframe_operator import OnsetTool

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


def _face_events(head, ch, onset: float, threshold: float) -> np.ndarray:
    """Frames of the face's onset/apex/offset: turning points of the RMS vertex motion relative to
    onset that all shape keys together make (rigid head motion left out)."""
    curves = [(fc, name) for fc, name, _d in ch.keys if len(fc.keyframe_points)]
    if not curves:
        return np.zeros(0)
    data = [read_keys(fc) for fc, _n in curves]
    times = np.unique(np.concatenate([t for t, _w in data]))
    weights = np.stack([np.interp(times, t, w) for t, w in data], 1)           # (M, K)
    deltas = key_deltas(head, {name for _fc, name in curves})
    gram = km.key_gram(np.stack([deltas[name] for _fc, name in curves]))
    i_on = int(np.argmin(np.abs(times - onset)))
    motion = km.motion_magnitude(weights, weights[i_on], gram)
    return times[km.timing_keys(motion, threshold, _NOISE_FACTOR)]


class MICROFACE_OT_smooth(OnsetTool, bpy.types.Operator):
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
            t, w = read_keys(fc)
            new, k = self._smooth(t, w, onset, events, scalar)
            set_values(fc, new)
            fit_slider(head, name, new)
            measure(t, w, new)
            changed, kept = changed + 1, kept + k
        groups = [*ch.rotations.values(), *ch.locations.values()] if self.bones else []
        for curves in groups:
            group = group_keys(curves)
            if group is not None and len(group[0]) >= 3:
                t, v = group  # one set of kept keys for the whole bone channel
                new, k = self._smooth(t, v, onset, events, magnitude)
                for c, fc in enumerate(curves):
                    set_values(fc, new[:, c])
                measure(t, v, new)
                changed, kept = changed + len(curves), kept + k
                continue
            for fc in curves:
                if fc is None or len(fc.keyframe_points) < 3:
                    continue
                t, w = read_keys(fc)
                new, k = self._smooth(t, w, onset, events, scalar)
                set_values(fc, new)
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
