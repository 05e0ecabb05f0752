"""The Blender importer, in headless bpy: exactness of the evaluated mesh, the scene it builds,
bulk layered-action keys, frame maps, and clean refusals that leave nothing behind."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from conftest import evaluated_vertices  # noqa: E402
from backend.contract.result import RIG_ARRAYS, write_result  # noqa: E402
from microface_blender.scene import importer  # noqa: E402

T = 30
ID_COLLECTIONS = ("objects", "meshes", "armatures", "actions", "collections", "shape_keys")

pytestmark = pytest.mark.usefixtures("registered_addon")   # registered once per module


@pytest.fixture
def scene():
    bpy.ops.wm.read_homefile(use_empty=True)
    sc = bpy.context.scene
    sc.frame_start = 1
    return sc


def _counts() -> dict:
    out = {k: len(getattr(bpy.data, k)) for k in ID_COLLECTIONS}
    out["scene_children"] = len(bpy.context.scene.collection.children)
    return out




def test_evaluated_mesh_equals_the_result_at_every_frame(scene, synth, result_path):
    out = importer.import_result(bpy.context, result_path)
    np.testing.assert_array_equal(out.scene_frames, 1 + (synth.frame_indices - 100))
    errs = []
    for t in range(T):
        scene.frame_set(int(out.scene_frames[t]))
        # The mesh is parented to the rig with an identity: its local space is the rig's, which is
        # the result's camera space.
        errs.append(np.sqrt(((evaluated_vertices(out.mesh) - synth.vertices[t]) ** 2).sum(1)).max())
    err = max(errs)
    print(f"exactness: max {err * 1e3:.4f} mm over {T} frames; {out.n_detail_keys} detail keys, PCA max "
          f"{out.detail_max_error * 1e3:.4f} mm, mean {out.detail_mean_error * 1e3:.5f} mm")
    assert out.detail_max_error <= 5e-5
    assert err <= out.detail_max_error + 2e-6  # the rig itself adds only float32 rounding
    assert err <= 1e-4


def test_scene_layout(scene, synth, result_path):
    out = importer.import_result(bpy.context, result_path)
    coll = out.collection
    assert coll.name == "synthetic_11" and coll.name in scene.collection.children
    assert set(coll.objects) == {out.rig, out.mesh}
    assert out.rig.type == 'ARMATURE' and out.mesh.parent == out.rig
    assert [b.name for b in out.rig.data.bones] == synth.meta["joint_names"]
    assert [b.parent.name if b.parent else None for b in out.rig.data.bones] == [None, "global", "neck", "neck",
                                                                                  "neck"]
    for j, bone in enumerate(out.rig.data.bones):
        np.testing.assert_allclose(bone.head_local, synth.rig_joints[j], atol=1e-7)
        np.testing.assert_allclose(np.array(bone.matrix_local)[:3, :3], np.eye(3), atol=1e-6)
    # Upright: camera-space +y (up) is world +z.
    np.testing.assert_allclose(np.array(out.rig.matrix_world)[:3, :3], [[1, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-6)
    mesh = out.mesh.data
    assert len(mesh.vertices) == 5023 and len(mesh.polygons) == len(synth.faces)
    loops = np.empty(3 * len(mesh.polygons), np.int32)
    mesh.loops.foreach_get("vertex_index", loops)
    np.testing.assert_array_equal(loops.reshape(-1, 3), synth.faces)
    keys = mesh.shape_keys.key_blocks
    names = [k.name for k in keys]
    assert names[0] == "Basis" and names[1:1 + 53] == synth.meta["expression_names"]
    assert names[54:] == [f"detail_{k:02d}" for k in range(out.n_detail_keys)]
    basis = np.empty(3 * 5023, np.float32)
    keys["Basis"].points.foreach_get("co", basis)
    np.testing.assert_array_equal(basis.reshape(-1, 3), synth.rig_rest_vertices)  # identity baked in
    assert [g.name for g in out.mesh.vertex_groups] == synth.meta["joint_names"]
    weights = np.zeros((5023, 5), np.float32)
    for v in mesh.vertices:
        for g in v.groups:
            weights[v.index, g.group] = g.weight
    np.testing.assert_array_equal(weights, synth.rig_skin_weights)
    mod = out.mesh.modifiers["Armature"]
    assert mod.type == 'ARMATURE' and mod.object == out.rig
    for id_data in (coll, out.rig, out.mesh):
        assert id_data["microface_fps"] == 200.0
        assert id_data["microface_model_id"] == synth.meta["head_model"]["id"]
        assert id_data["microface_format_version"] == 1
        assert id_data["microface_backend_version"] == synth.meta["backend_version"]
        assert id_data["microface_source_clip"] == "synthetic://seed11"
        assert id_data["microface_result_path"] == str(result_path)
        assert id_data["microface_detail_keys"] == out.n_detail_keys
        assert id_data["microface_detail_max_error_mm"] == pytest.approx(out.detail_max_error * 1e3)
        assert id_data["microface_active_regions"] == ", ".join(synth.meta["region_detection"]["active"])
    assert synth.meta["region_detection"]["active"]


def test_a_foreign_flame_files_span_error_is_shown(scene, synth, tmp_path):
    # A result made with a user's FLAME file through the network's expression basis
    # (backend/head/expression_layer.py) says what the file cannot make; the stand-in's says nothing.
    res = copy.copy(synth)
    res.meta = dict(synth.meta, expression_layer={"basis": "ICT-FaceKit ARKit-style, 53 shapes", "identity": False,
                                                  "span_error_mm": 0.055, "span_error_max_mm": 0.1346,
                                                  "worst": "eyeSquint_L"})
    out = importer.import_result(bpy.context, write_result(tmp_path / "foreign.npz", res), name="foreign")
    assert out.rig["microface_expression_span"] == "0.055 mm mean, 0.135 mm max (eyeSquint_L)"
    res.meta = dict(synth.meta, expression_layer=dict(res.meta["expression_layer"], identity=True))
    out = importer.import_result(bpy.context, write_result(tmp_path / "own.npz", res), name="own")
    assert "microface_expression_span" not in out.rig


def test_keys_live_in_layered_actions_one_per_frame(scene, synth, result_path):
    out = importer.import_result(bpy.context, result_path, name="take")
    assert out.collection.name == "take"
    for id_data, id_type, n_curves in ((out.rig, 'OBJECT', 5 * 4 + 3 + 8),
                                       (out.mesh.data.shape_keys, 'KEY', 53 + out.n_detail_keys)):
        anim = id_data.animation_data
        action, slot = anim.action, anim.action_slot
        assert slot is not None and slot.target_id_type == id_type
        bag = action.layers[0].strips[0].channelbag(slot)
        assert len(bag.fcurves) == n_curves
        for fc in bag.fcurves:
            co = np.empty(2 * T, np.float32)
            fc.keyframe_points.foreach_get("co", co)
            np.testing.assert_array_equal(co[0::2], out.scene_frames)
            assert {k.interpolation for k in fc.keyframe_points} == {'LINEAR'}
    # Values at a frame: shape keys follow expr[t], the root bone carries trans[t].
    t = 7
    scene.frame_set(int(out.scene_frames[t]))
    keys = out.mesh.data.shape_keys.key_blocks
    got = np.array([keys[n].value for n in synth.meta["expression_names"]])
    np.testing.assert_allclose(got, synth.expr[t], atol=1e-6)
    np.testing.assert_allclose(out.rig.pose.bones["global"].location, synth.trans[t], atol=1e-6)
    # and one custom property per region carries its motion in mm
    got = [out.rig[importer.MOTION_PREFIX + r] for r in synth.meta["region_names"]]
    np.testing.assert_allclose(got, synth.region_motion[t], atol=1e-6)
    assert synth.region_motion[t].max() > 0.1


def test_custom_frame_map_places_keys_on_subframes(scene, result_path):
    frames = 10 + 0.125 * np.arange(T)   # 200 fps source in a 25 fps scene
    out = importer.import_result(bpy.context, result_path, frame_map=frames, select=False)
    fc = out.mesh.data.shape_keys.animation_data.action.layers[0].strips[0].channelbag(
        out.mesh.data.shape_keys.animation_data.action_slot).fcurves[0]
    co = np.empty(2 * T, np.float32)
    fc.keyframe_points.foreach_get("co", co)
    np.testing.assert_allclose(co[0::2], frames)
    assert out.collection["microface_first_scene_frame"] == 10.0


def test_operator_imports_in_one_step_and_sets_the_frame_range(scene, result_path):
    before = _counts()
    assert bpy.ops.microface.import_result(filepath=str(result_path)) == {'FINISHED'}
    after = _counts()
    assert after["objects"] == before["objects"] + 2 and after["actions"] == before["actions"] + 2
    assert (scene.frame_start, scene.frame_end) == (1, 1 + 2 * (T - 1))
    assert "synthetic_11" in bpy.context.window_manager.microface_status


def _write_bad(tmp_path: Path, kind: str, synth, result_path: Path) -> Path:
    path = tmp_path / f"{kind}.npz"
    if kind == "missing":
        return path
    if kind == "truncated":
        path.write_bytes(result_path.read_bytes()[:100_000])
    elif kind == "text":
        path.write_text("not a result")
    elif kind in ("foreign", "newer"):
        with np.load(result_path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays["meta"].tobytes())
        meta.update({"format": "something-else"} if kind == "foreign" else {"version": 2})
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        np.savez(path, **arrays)
    elif kind == "no_rig":
        old = copy.copy(synth)
        for k in RIG_ARRAYS:
            setattr(old, k, None)
        write_result(path, old)
    return path


@pytest.mark.parametrize("kind, message", [
    ("missing", "does not exist"),
    ("truncated", "damaged or truncated"),
    ("text", "is not a MicroFace result"),
    ("foreign", "is not a MicroFace result"),
    ("newer", "update the MicroFace add-on"),
    ("no_rig", "has no rig data .* run the MicroFace backend on the clip again"),
])
def test_bad_files_are_refused_in_one_line_leaving_nothing(scene, tmp_path, synth, result_path, kind, message):
    path = _write_bad(tmp_path, kind, synth, result_path)
    before = _counts()
    with pytest.raises(importer.ImportFailed, match=message) as info:
        importer.import_result(bpy.context, path)
    assert "\n" not in str(info.value)
    assert _counts() == before
    # The operator reports it as an error and cancels (bpy raises the report as RuntimeError).
    with pytest.raises(RuntimeError, match=message):
        bpy.ops.microface.import_result(filepath=str(path))
    assert _counts() == before


def test_a_failure_midway_removes_everything_made_so_far(scene, result_path, monkeypatch):
    before = _counts()
    active = bpy.context.view_layer.objects.active

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(importer, "_animate", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        importer.import_result(bpy.context, result_path)
    assert _counts() == before
    with pytest.raises(RuntimeError, match="MicroFace import failed: RuntimeError: disk full"):
        bpy.ops.microface.import_result(filepath=str(result_path))
    assert _counts() == before
    assert bpy.context.view_layer.objects.active == active


def test_single_frame_result(scene, head_model, tmp_path):
    from backend.synthetic.synth_result import synthetic_result

    res = synthetic_result(head_model, 1, seed=2, first_frame=40)
    out = importer.import_result(bpy.context, write_result(tmp_path / "one.npz", res))
    scene.frame_set(1)
    assert np.sqrt(((evaluated_vertices(out.mesh) - res.vertices[0]) ** 2).sum(1)).max() <= 1e-4
