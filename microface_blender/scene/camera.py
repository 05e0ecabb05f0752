"""A camera matched to the reconstruction, with the clip as its background.

The rig's local space is the result's camera space (metres, camera at the origin looking down -z,
+y up), which is exactly an unrotated Blender camera: parented to the rig with an identity
transform, the camera sees the head where the source camera saw it, and the footage behind it
lines up with the mesh.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import bpy
import numpy as np

SENSOR_WIDTH = 36.0  # mm; any width works, the lens is scaled to it


@dataclass
class CameraOptions:
    """What :func:`add_camera` adds (``import_result(..., camera=CameraOptions(...))``)."""

    clip: str | None = None        # movie for the background; None: the result's source clip, "": none
    set_resolution: bool = False   # set the scene's render size to the clip's (else leave it alone)
    make_active: bool = True       # make it the scene camera when the scene has none


def lens_from_intrinsics(intrinsics, image_size) -> dict:
    """Blender camera settings for a pinhole ``intrinsics`` (f, cx, cy) in source pixels (pixel
    centres at integers, +v down) and ``image_size`` (width, height) in pixels.

    The lens is f / width * 36 mm on a 36 mm sensor fitted horizontally; the shifts move the image
    centre ((w - 1) / 2, (h - 1) / 2) onto the principal point, in units of the image width.
    """
    f, cx, cy = (float(v) for v in intrinsics)
    w, h = (float(v) for v in image_size)
    return {"sensor_fit": 'HORIZONTAL', "sensor_width": SENSOR_WIDTH, "lens": f / w * SENSOR_WIDTH,
            "shift_x": ((w - 1.0) / 2.0 - cx) / w, "shift_y": (cy - (h - 1.0) / 2.0) / w}


def _clip_path(res, options: CameraOptions) -> str:
    if options.clip is not None:
        return options.clip
    path = str(res.meta.get("source", {}).get("path", ""))
    return path if path and os.path.isfile(path) else ""


def add_camera(context, name: str, res, rig_obj, collection, frames: np.ndarray, created: list,
               options: CameraOptions) -> bpy.types.Object:
    """Add ``<name>_camera`` to ``collection``, parented to ``rig_obj``, for result ``res``.

    frames: (T,) scene frame of each result frame. The background clip is offset so that scene
    frame ``frames[0]`` shows source frame ``frame_indices[0]`` and plays one source frame per
    scene frame (exact when the result's keys are one scene frame apart; with other rates it drifts,
    see the ``microface_clip_matches`` property). Every datablock made is appended to ``created``
    at once, so the caller can remove them if anything fails.
    """
    data = bpy.data.cameras.new(f"{name}_camera")
    created.append(data)
    obj = bpy.data.objects.new(f"{name}_camera", data)
    created.append(obj)
    collection.objects.link(obj)
    obj.parent = rig_obj  # identity parent inverse: the camera sits at the rig's origin, unrotated
    for key, value in lens_from_intrinsics(res.intrinsics, res.image_size).items():
        setattr(data, key, value)
    data.clip_start = 0.01  # the head is tens of centimetres away

    clip_path = _clip_path(res, options)
    fi = np.asarray(res.frame_indices, np.int64)
    steps = np.diff(np.asarray(frames, np.float64)) / np.maximum(np.diff(fi), 1) if len(fi) > 1 else np.ones(1)
    one_to_one = bool(np.allclose(steps, 1.0, atol=1e-6))
    clip_start = int(round(float(frames[0]))) - int(fi[0])  # scene frame F shows source F - frame_start
    if clip_path:
        clip = bpy.data.movieclips.load(clip_path, check_existing=False)  # our own: its offset is ours
        created.append(clip)
        clip.frame_start = clip_start
        clip.frame_offset = 0
        bg = data.background_images.new()
        bg.source = 'MOVIE_CLIP'
        bg.clip = clip
        bg.frame_method = 'FIT'
        bg.alpha = 1.0
        data.show_background_images = True
        obj["microface_clip"] = clip_path
        obj["microface_clip_frame_start"] = clip_start
        obj["microface_clip_matches"] = one_to_one
    scene = context.scene
    if options.set_resolution:
        scene.render.resolution_x, scene.render.resolution_y = (int(v) for v in res.image_size)
        scene.render.resolution_percentage = 100
        scene.render.pixel_aspect_x = scene.render.pixel_aspect_y = 1.0
    if options.make_active and scene.camera is None:
        scene.camera = obj
    return obj
