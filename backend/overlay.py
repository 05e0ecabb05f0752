"""Quality check: the reconstructed head drawn over the source frames it came from, as PNGs.

    python -m backend overlay RESULT.npz VIDEO -o DIR [--frames 0 36 71]

Each PNG shows the source frame, the shaded mesh blended on top, and the detected MediaPipe
points (green: detected, red: interpolated frame). A mesh that sits on the face means the
camera, the pose and the frame mapping in the result file all agree with the video.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .contract.atomic import atomic_path
from .errors import MicroFaceError


def overlay_frames(result_path: str | os.PathLike, video: str | os.PathLike, out_dir: str | os.PathLike,
                   frames: list[int] | None = None, alpha: float = 0.55) -> list[Path]:
    """Write ``<out_dir>/overlay_<source frame>.png`` for source ``frames`` (default: first, middle, last)."""
    import cv2

    from .capture.video import read_clip
    from .config import VideoConfig
    from .contract.result import ResultError, read_result
    from .head.render import Light, render

    try:
        res = read_result(result_path)
    except ResultError as exc:
        raise MicroFaceError(str(exc)) from None
    out = Path(out_dir)
    if not out.is_dir():
        raise MicroFaceError(f"output folder {out} does not exist")
    src = res.frame_indices
    wanted = frames if frames else [int(src[0]), int(src[len(src) // 2]), int(src[-1])]
    missing = [f for f in wanted if f not in set(src.tolist())]
    if missing:
        raise MicroFaceError(f"frames {missing} are not in the result (it covers {int(src[0])}-{int(src[-1])})")
    written = []
    for f in wanted:
        t = int(np.flatnonzero(src == f)[0])
        clip = read_clip(video, VideoConfig(start=f, end=f, max_side=1 << 16), min_frames=1)
        frame = clip.frames[0].astype(np.float32) / 255.0
        h, w = frame.shape[:2]
        if (w, h) != tuple(int(x) for x in res.image_size):
            raise MicroFaceError(f"{Path(video).name} is {w}x{h} but the result was made from a "
                                 f"{int(res.image_size[0])}x{int(res.image_size[1])} video")
        rend = render(res.vertices[t], res.faces, res.intrinsics, w, h,
                      vertex_colors=np.full((res.vertices.shape[1], 3), (0.55, 0.75, 1.0), np.float32),
                      light=Light())
        mask = (rend.face_index >= 0)[..., None]
        img = np.where(mask, (1 - alpha) * frame + alpha * rend.image, frame)
        img = (np.clip(img, 0, 1) * 255).astype(np.uint8)[..., ::-1].copy()
        colour = (0, 220, 0) if res.valid[t] else (0, 0, 255)
        for x, y in res.landmarks_mp[t]:
            cv2.circle(img, (int(round(x)), int(round(y))), 1, colour, -1)
        cv2.putText(img, f"frame {f}  {'' if res.valid[t] else 'interpolated'}", (8, 20),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        path = out / f"overlay_{f:06d}.png"
        with atomic_path(path) as tmp:
            if not cv2.imwrite(str(tmp), img):
                raise MicroFaceError(f"cannot write {path}")
        written.append(path)
    return written
