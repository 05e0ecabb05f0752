"""Render the imported head through its matched camera (Workbench, headless) over the source frames.

    .venv/bin/python benchmarks/render_check.py RESULT.npz [--frames 0 36 71] [-o DIR]

Imports RESULT with the add-on's importer and matched camera, renders each result frame with a
transparent film, and writes DIR/overlay_<t>.png: the source frame with the shaded head blended
over it at 60 %. A head that sits on the face, eyes, lips and ears included, is the check.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("result")
    ap.add_argument("--frames", type=int, nargs="+", default=[0])
    ap.add_argument("-o", "--out", default="out/render_check")
    args = ap.parse_args()

    import bpy
    import cv2
    import numpy as np

    import microface_blender
    from backend.contract.result import read_result
    from microface_blender.scene import importer
    from microface_blender.scene.camera import CameraOptions

    res = read_result(args.result)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    microface_blender.register()
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    imp = importer.import_result(bpy.context, args.result, camera=CameraOptions(clip="", set_resolution=True))
    scene.camera = imp.camera
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.render.film_transparent = True
    scene.render.resolution_percentage = 100
    video = cv2.VideoCapture(str(res.meta["source"]["path"]))
    for t in args.frames:
        scene.frame_set(int(round(imp.scene_frames[t])))
        head_png = out_dir / f"head_{t:04d}.png"
        scene.render.filepath = str(head_png)
        bpy.ops.render.render(write_still=True)
        video.set(cv2.CAP_PROP_POS_FRAMES, int(res.frame_indices[t]))
        ok, frame = video.read()
        if not ok:
            raise SystemExit(f"error: cannot read source frame {int(res.frame_indices[t])}")
        head = cv2.imread(str(head_png), cv2.IMREAD_UNCHANGED)
        alpha = head[..., 3:4].astype(np.float32) / 255.0 * 0.6
        cv2.imwrite(str(out_dir / f"overlay_{t:04d}.png"), (frame * (1 - alpha) + head[..., :3] * alpha).astype(np.uint8))
        print(out_dir / f"overlay_{t:04d}.png")
    microface_blender.unregister()
    return 0


if __name__ == "__main__":
    sys.exit(main())
