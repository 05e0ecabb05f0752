"""The keyframe tools on an imported head, in headless bpy: amplify (exact on the keys, about 2x on
the evaluated mesh, per region), onset-keeping smoothing, cleaning within tolerance, baking."""
from __future__ import annotations

import copy

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from conftest import evaluated_vertices  # noqa: E402
from backend.contract.result import write_result  # noqa: E402
from microface_blender.ops import keyframe_amplify, keyframe_bake, keyframe_clean, keyframe_smooth  # noqa: E402
from microface_blender.ops.keyframe_channels import Channels, find_head  # noqa: E402
from microface_blender.scene import importer  # noqa: E402
from microface_blender.core import keyframe_math as km  # noqa: E402

T = 40
EXPR = 53

pytestmark = pytest.mark.usefixtures("registered_addon")   # registered once per module


@pytest.fixture
def head(result_path):
    bpy.ops.wm.read_homefile(use_empty=True)
    bpy.context.scene.frame_start = 1
    out = importer.import_result(bpy.context, result_path)
    assert bpy.context.view_layer.objects.active == out.rig
    return out


def _bag(id_data):
    anim = id_data.animation_data
    return anim.action.layers[0].strips[0].channelbag(anim.action_slot)


def _keys(fc):
    co = np.empty(2 * len(fc.keyframe_points), np.float32)
    fc.keyframe_points.foreach_get("co", co)
    return co[0::2].copy(), co[1::2].copy()


def _key_curves(out):
    """{shape key name: fcurve}."""
    return {fc.data_path[len('key_blocks["'):-len('"].value')]: fc for fc in _bag(out.mesh.data.shape_keys).fcurves}


def _quat_curves(out, bone):
    path = f'pose.bones["{bone}"].rotation_quaternion'
    curves = sorted((fc for fc in _bag(out.rig).fcurves if fc.data_path == path), key=lambda fc: fc.array_index)
    return np.stack([_keys(fc)[1] for fc in curves], 1).astype(np.float64)


def _snapshot(out):
    """Every key's co and handles of both actions, and the shape keys' slider ranges."""
    snap = {}
    for id_data in (out.rig, out.mesh.data.shape_keys):
        for fc in _bag(id_data).fcurves:
            for attr in ("co", "handle_left", "handle_right"):
                a = np.empty(2 * len(fc.keyframe_points), np.float32)
                fc.keyframe_points.foreach_get(attr, a)
                snap[(fc.data_path, fc.array_index, attr)] = a.tobytes()
    for kb in out.mesh.data.shape_keys.key_blocks:
        snap[kb.name] = (kb.slider_min, kb.slider_max)
    return snap




def _frames(out) -> list[int]:
    return [int(f) for f in out.scene_frames]


def test_tools_are_registered_with_a_sub_panel_and_need_a_microface_head(head):
    tools = {"amplify": keyframe_amplify, "smooth": keyframe_smooth, "clean": keyframe_clean, "bake": keyframe_bake}
    for name, module in tools.items():
        op = getattr(bpy.ops.microface, name)
        assert op.poll()
        assert {'REGISTER', 'UNDO'} <= set(getattr(module, f"MICROFACE_OT_{name}").bl_options)
    assert bpy.types.MICROFACE_PT_keyframe_tools.bl_parent_id == "MICROFACE_PT_main"
    bpy.context.view_layer.objects.active = head.mesh  # the head works as well as the rig
    assert bpy.ops.microface.amplify.poll()
    other = bpy.data.objects.new("plain", bpy.data.meshes.new("plain"))
    bpy.context.scene.collection.objects.link(other)
    bpy.context.view_layer.objects.active = other
    assert not bpy.ops.microface.amplify.poll()
    with pytest.raises(RuntimeError, match="Select an imported MicroFace head"):
        bpy.ops.microface.smooth()


def test_the_importer_records_where_each_key_and_bone_acts(head, synth):
    shares = head.mesh[importer.KEY_REGIONS]
    assert len(shares) == EXPR + head.n_detail_keys
    table = np.array([shares[n] for n in synth.meta["expression_names"]])
    np.testing.assert_allclose(table.sum(1)[table.sum(1) > 0], 1.0, atol=1e-9)
    assert km.REGION_NAMES[int(np.argmax(shares["jawOpen"]))] in ("mouth", "chin")
    assert km.REGION_NAMES[int(np.argmax(shares["eyeBlink_L"]))] == "left_eye"
    assert dict(head.rig[importer.BONE_REGIONS]) == {"global": "", "neck": "", "jaw": "mouth",
                                                      "left_eye": "left_eye", "right_eye": "right_eye"}


def test_gain_one_is_exactly_the_identity(head):
    before = _snapshot(head)
    assert bpy.ops.microface.amplify(gain=1.0) == {'FINISHED'}
    assert _snapshot(head) == before


def test_amplify_doubles_every_keys_motion_about_its_onset(head):
    curves = _key_curves(head)
    before = {n: _keys(fc)[1].astype(np.float64) for n, fc in curves.items()}
    jaw, glob = _quat_curves(head, "jaw"), _quat_curves(head, "global")
    assert bpy.ops.microface.amplify(gain=2.0) == {'FINISHED'}
    for name, fc in curves.items():
        w = before[name]
        expected = (w[0] + 2.0 * (w - w[0])).astype(np.float32)    # onset: the first imported frame
        np.testing.assert_array_equal(_keys(fc)[1], expected, err_msg=name)
        kb = head.mesh.data.shape_keys.key_blocks[name]
        assert kb.slider_min <= expected.min() and expected.max() <= kb.slider_max, name  # never clamped
    new_jaw = _quat_curves(head, "jaw")
    np.testing.assert_allclose(km.rotation_angles(new_jaw, new_jaw[0]), 2 * km.rotation_angles(jaw, jaw[0]),
                               atol=2e-6)
    np.testing.assert_array_equal(_quat_curves(head, "global"), glob)   # rigid head motion untouched


def _relative_motion(out, frames, bones_still=("global", "neck")) -> np.ndarray:
    """(T, V) per-vertex distance from the onset frame's evaluated mesh, with the head's rigid
    motion (global and neck) switched off so that only the face moves."""
    for fc in _bag(out.rig).fcurves:
        if any(f'"{b}"' in fc.data_path for b in bones_still):
            fc.mute = True
    for b in bones_still:
        out.rig.pose.bones[b].rotation_quaternion = (1, 0, 0, 0)
        out.rig.pose.bones[b].location = (0, 0, 0)
    meshes = []
    for f in frames:
        bpy.context.scene.frame_set(f)
        meshes.append(evaluated_vertices(out.mesh))
    meshes = np.array(meshes)
    return np.linalg.norm(meshes - meshes[0], axis=2)


def test_amplify_doubles_the_evaluated_motion_in_the_active_region(head, synth):
    frames = _frames(head)
    before = _relative_motion(head, frames)
    labels = synth.rig_region_labels
    per_region = [before[:, labels == r].mean() for r in range(8)]
    active = int(np.argmax(per_region))
    assert bpy.ops.microface.amplify(gain=2.0) == {'FINISHED'}
    after = _relative_motion(head, frames)
    sel = labels == active
    ratio = after[:, sel].sum() / before[:, sel].sum()
    face = labels >= 0
    ratio_face = after[:, face].sum() / before[:, face].sum()
    print(f"amplify x2: evaluated motion relative to onset x{ratio:.3f} in the most active region "
          f"({km.REGION_NAMES[active]}, mean {per_region[active] * 1e3:.2f} mm), x{ratio_face:.3f} over the face")
    assert 1.9 < ratio < 2.1 and 1.9 < ratio_face < 2.1


def test_a_zero_mouth_gain_removes_the_jaw_motion_and_leaves_the_eyes(head):
    jaw0, eye0 = _quat_curves(head, "jaw"), _quat_curves(head, "left_eye")
    assert km.rotation_angles(jaw0, jaw0[0]).max() > 0.05
    w0 = _keys(_key_curves(head)["jawOpen"])[1].astype(np.float64)
    assert bpy.ops.microface.amplify(gain=1.0, gain_mouth=0.0) == {'FINISHED'}
    jaw = _quat_curves(head, "jaw")
    assert km.rotation_angles(jaw, jaw0[0]).max() < 1e-6
    np.testing.assert_array_equal(_quat_curves(head, "left_eye"), eye0)
    # A key shared by mouth and chin keeps the chin's part of its motion.
    s_mouth = head.mesh[importer.KEY_REGIONS]["jawOpen"][3]
    w = _keys(_key_curves(head)["jawOpen"])[1]
    np.testing.assert_allclose(w - w0[0], (1 - s_mouth) * (w0 - w0[0]), atol=1e-6)


def test_without_region_labels_the_region_gains_reach_only_the_bones(synth, tmp_path):
    old = copy.copy(synth)
    old.rig_region_labels = None
    bpy.ops.wm.read_homefile(use_empty=True)
    out = importer.import_result(bpy.context, write_result(tmp_path / "old.npz", old))
    assert importer.KEY_REGIONS not in out.mesh
    before = _snapshot(out)
    assert bpy.ops.microface.amplify(gain=1.0, gain_mouth=0.0) == {'FINISHED'}
    after = _snapshot(out)
    changed = {k[0] for k in after if isinstance(k, tuple) and after[k] != before[k]}
    assert changed == {'pose.bones["jaw"].rotation_quaternion'}


def _noisy_bump(out, name, seed=0):
    """Give one expression key a bump (onset at the first key) plus noise; returns (times, values)."""
    fc = _key_curves(out)[name]
    t, _w = _keys(fc)
    rng = np.random.default_rng(seed)
    w = 0.1 + 0.3 * np.exp(-0.5 * ((t - t[len(t) // 2]) / 12.0) ** 2) + rng.normal(0, 0.01, len(t))
    w[0] = 0.1
    co = np.stack([t, w], 1).astype(np.float32).ravel()
    fc.keyframe_points.foreach_set("co", co)
    fc.update()
    return t.astype(np.float64), w.astype(np.float32).astype(np.float64)


def test_smoothing_keeps_onsets_and_reduces_jitter(head):
    t, w = _noisy_bump(head, "mouthSmile_L")
    curves = _key_curves(head)
    onsets = {n: _keys(fc)[1][0] for n, fc in curves.items()}
    assert bpy.ops.microface.smooth(sigma=3.0) == {'FINISHED'}
    for n, fc in curves.items():
        assert _keys(fc)[1][0] == onsets[n], n                   # the onset frame's value, exactly
    new = _keys(curves["mouthSmile_L"])[1].astype(np.float64)
    j0, j1 = km.jitter(t, w), km.jitter(t, new)
    print(f"smoothing (sigma 3 frames, keys every 2): key-to-key jitter {j0:.5f} -> {j1:.5f} "
          f"({100 * (1 - j1 / j0):.0f} % less)")
    assert j1 < 0.6 * j0
    assert abs(int(np.argmax(new)) - len(t) // 2) <= 2            # the apex stays


def test_smoothing_keeps_the_faces_onset_apex_and_offset_keys(head):
    rig, mesh = find_head(head.rig)
    events = keyframe_smooth._face_events(mesh, Channels(rig, mesh), 1.0, 0.2)
    assert 2 <= len(events) < T // 2
    curves = [fc for id_data in (head.rig, head.mesh.data.shape_keys) for fc in _bag(id_data).fcurves]
    # the regions' measured motion is data, not animation: the tools leave it as it is
    measured = [fc for fc in curves if fc.data_path.startswith(f'["{importer.MOTION_PREFIX}')]
    curves = [fc for fc in curves if fc not in measured]
    assert len(measured) == 8
    measured_before = [_keys(fc) for fc in measured]
    before = [_keys(fc) for fc in curves]
    assert bpy.ops.microface.smooth(sigma=3.0) == {'FINISHED'}
    for fc, (_t, w) in zip(measured, measured_before):
        np.testing.assert_array_equal(_keys(fc)[1], w)
    changed = 0
    for fc, (t, w) in zip(curves, before):
        at = np.isin(t, events)
        assert at.sum() == len(events)
        new = _keys(fc)[1]
        np.testing.assert_array_equal(new[at], w[at], err_msg=fc.data_path)
        changed += not np.array_equal(new, w)
    assert changed > len(curves) // 2


def test_a_step_stays_a_step_at_its_frame_when_each_channel_keeps_its_timing(head):
    fc = _key_curves(head)["browDown_L"]
    t, _w = _keys(fc)
    rng = np.random.default_rng(1)
    step_at = int(np.flatnonzero(t >= 41)[0])
    w = np.where(np.arange(len(t)) >= step_at, 0.4, 0.0) + rng.normal(0, 0.005, len(t))
    w[0] = 0.0
    fc.keyframe_points.foreach_set("co", np.stack([t, w], 1).astype(np.float32).ravel())
    fc.update()
    assert bpy.ops.microface.smooth(sigma=6.0, timing='CHANNEL') == {'FINISHED'}  # 3 keys
    new = _keys(fc)[1]
    assert int(np.argmax(new > 0.2)) == step_at
    assert np.abs(new[:step_at]).max() < 0.02 and np.abs(new[step_at:] - 0.4).max() < 0.02
    for side in (slice(0, step_at), slice(step_at, None)):   # the noise on either side is smoothed
        assert km.jitter(t[side], new[side]) < 0.5 * km.jitter(t[side], w[side])


def test_clean_reduces_keys_within_tolerance_at_every_original_frame(head):
    keys = head.mesh.data.shape_keys.key_blocks
    basis = np.empty(3 * 5023, np.float32)
    keys["Basis"].data.foreach_get("co", basis)
    curves = _key_curves(head)
    before = {n: _keys(fc) for n, fc in curves.items()}
    frames = _frames(head)
    meshes = []
    for f in frames:
        bpy.context.scene.frame_set(f)
        meshes.append(evaluated_vertices(head.mesh))
    n_before = sum(len(fc.keyframe_points) for id_data in (head.rig, head.mesh.data.shape_keys)
                   for fc in _bag(id_data).fcurves)
    tol_mm = 0.01
    assert bpy.ops.microface.clean(tolerance_mm=tol_mm) == {'FINISHED'}
    n_after = sum(len(fc.keyframe_points) for id_data in (head.rig, head.mesh.data.shape_keys)
                  for fc in _bag(id_data).fcurves)
    for name, fc in curves.items():
        co = np.empty(3 * 5023, np.float32)
        keys[name].data.foreach_get("co", co)
        reach = np.linalg.norm((co - basis).reshape(-1, 3), axis=1).max()
        t, w = before[name]
        got = np.array([fc.evaluate(float(f)) for f in t])
        assert np.abs(got - w).max() * reach <= tol_mm * 1e-3 * (1 + 1e-5) + 1e-12, name
    err = []
    for f, ref in zip(frames, meshes):
        bpy.context.scene.frame_set(f)
        err.append(np.linalg.norm(evaluated_vertices(head.mesh) - ref, axis=1).max())
    print(f"clean at {tol_mm} mm per channel: {n_before} -> {n_after} keys ({100 * (1 - n_after / n_before):.0f} % "
          f"fewer); evaluated mesh moves at most {max(err) * 1e3:.4f} mm")
    assert n_after < 0.8 * n_before
    assert max(err) < 0.1e-3


def test_clean_checks_bezier_curves_with_their_own_interpolation(result_path):
    bpy.ops.wm.read_homefile(use_empty=True)
    out = importer.import_result(bpy.context, result_path, interpolation='BEZIER')
    bones = [fc for fc in _bag(out.rig).fcurves if fc.data_path.startswith("pose.bones")]
    before = [(fc, *_keys(fc)) for fc in bones]
    n0 = sum(len(t) for _fc, t, _w in before)
    assert bpy.ops.microface.clean(tolerance_mm=0.01, expressions=False, detail_keys=False) == {'FINISHED'}
    lever = keyframe_clean._bone_reach(out.rig, out.mesh)
    for fc, t, w in before:
        bone = fc.data_path.split('"')[1]
        tol = 1e-5 if fc.data_path.endswith("location") else 1e-5 / (2 * lever[bone])
        got = np.array([fc.evaluate(float(f)) for f in t])
        assert np.abs(got - w).max() <= tol * (1 + 1e-5) + 1e-9, fc.data_path
    assert sum(len(fc.keyframe_points) for fc in bones) < n0


def test_bake_gives_one_key_per_frame_with_the_same_values(head):
    fcs = [fc for id_data in (head.rig, head.mesh.data.shape_keys) for fc in _bag(id_data).fcurves]
    fcs[0].modifiers.new('NOISE').strength = 0.01     # baked in, then removed
    first, last = int(head.scene_frames[0]), int(head.scene_frames[-1])
    frames = np.arange(first, last + 1)
    before = [np.array([fc.evaluate(float(f)) for f in frames]) for fc in fcs]
    bpy.context.scene.frame_set(first + 3)                 # between two imported keys
    mesh_before = evaluated_vertices(head.mesh)
    assert bpy.ops.microface.bake() == {'FINISHED'}
    for fc, values in zip(fcs, before):
        t, w = _keys(fc)
        np.testing.assert_array_equal(t, frames)
        np.testing.assert_array_equal(w, values.astype(np.float32))
        assert len(fc.modifiers) == 0
        assert {k.interpolation for k in fc.keyframe_points} == {'LINEAR'}
    bpy.context.scene.frame_set(first + 3)
    assert np.abs(evaluated_vertices(head.mesh) - mesh_before).max() < 1e-6


def test_a_head_without_keys_is_refused_in_one_line(head):
    head.mesh.data.shape_keys.animation_data_clear()
    head.rig.animation_data_clear()
    with pytest.raises(RuntimeError, match=r"has no keys to edit") as info:
        bpy.ops.microface.clean()
    assert "\n" not in str(info.value).strip()


@pytest.mark.parametrize("tool, kwargs", [("amplify", {"gain": 2.0}), ("smooth", {}), ("clean", {}), ("bake", {})])
def test_each_tool_is_one_undo_step(head, tool, kwargs):
    rig_name, mesh_name = head.rig.name, head.mesh.name
    bpy.ops.ed.undo_push(message="start")        # a fresh file's first step cannot be undone to
    bpy.ops.ed.undo_push(message="imported")
    before = _snapshot(head)
    assert getattr(bpy.ops.microface, tool)(**kwargs) == {'FINISHED'}
    assert _snapshot(head) != before
    bpy.ops.ed.undo()
    # Undo reloads the datablocks: look them up again.
    restored = copy.copy(head)
    restored.rig, restored.mesh = bpy.data.objects[rig_name], bpy.data.objects[mesh_name]
    assert _snapshot(restored) == before


def test_keys_are_read_back_where_each_blender_version_writes_them(head):
    """The tools read F-curves through anim.action_fcurves, which follows ActionWriter: slot
    channelbags from Blender 4.4 (the running 5.0), the action's own list before (the manifest
    admits 4.2), checked on a stand-in of the older API."""
    from types import SimpleNamespace

    from microface_blender.scene.anim import action_fcurves

    keys = head.mesh.data.shape_keys
    layered = action_fcurves(keys)
    assert layered and {fc.data_path for fc in layered} <= {f'key_blocks["{b.name}"].value' for b in keys.key_blocks}
    old = SimpleNamespace(animation_data=SimpleNamespace(action=SimpleNamespace(fcurves=tuple(layered[:3]))))
    assert action_fcurves(old, version=(4, 2, 0)) == layered[:3]
    assert action_fcurves(old, version=(4, 3, 2)) == layered[:3]
    assert action_fcurves(SimpleNamespace(animation_data=None), version=(4, 2, 0)) == []
    assert action_fcurves(head.rig)   # the bones' curves, through the rig's own slot
