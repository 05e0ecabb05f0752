"""Minimal Wavefront OBJ reader for triangle meshes with UVs (``v``, ``vt``, ``f``).

UV seams give one vertex several UVs, so UVs are indexed per triangle corner: ``face_uvs`` is
(F, 3, 2). Polygons with more than three corners are split into a fan. Materials, normals,
groups and objects are ignored.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MicroFaceError


@dataclass
class ObjMesh:
    """A triangle mesh as read from an OBJ file."""

    vertices: np.ndarray                   # (V, 3) float64, file units
    faces: np.ndarray                      # (F, 3) int64, 0-based vertex indices
    uvs: np.ndarray                        # (T, 2) float64, OBJ convention: v = 0 at the image bottom
    face_uv_indices: np.ndarray | None     # (F, 3) int64 into ``uvs``, None when faces carry no UVs

    @property
    def face_uvs(self) -> np.ndarray:
        """(F, 3, 2) UV of each triangle corner. Raises when the file has no per-corner UVs."""
        if self.face_uv_indices is None:
            raise MicroFaceError("OBJ mesh has no texture coordinates on its faces")
        return self.uvs[self.face_uv_indices]


def _index(token: str, count: int, line_no: int, path: Path) -> int:
    """OBJ index (1-based, negative = from the end) -> 0-based."""
    i = int(token)
    j = i - 1 if i > 0 else count + i
    if i == 0 or not 0 <= j < count:
        raise MicroFaceError(f"{path}:{line_no}: index {i} out of range (1..{count})")
    return j


def read_obj(path: str | Path) -> ObjMesh:
    """Read ``v``, ``vt`` and ``f`` records (``f a``, ``f a/b``, ``f a/b/c``, ``f a//c``).

    Every face must either carry UVs on all corners or on none. Raises :class:`MicroFaceError`
    with the file and line number on malformed input.
    """
    path = Path(path)
    verts: list[list[float]] = []
    uvs: list[list[float]] = []
    faces: list[tuple[int, int, int]] = []
    face_uv: list[tuple[int, int, int]] = []
    n_without_uv = 0
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise MicroFaceError(f"cannot read OBJ {path}: {exc}") from None
    for line_no, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        tag = parts[0]
        try:
            if tag == "v":
                verts.append([float(x) for x in parts[1:4]])
                if len(verts[-1]) != 3:
                    raise ValueError("vertex needs 3 coordinates")
            elif tag == "vt":
                uv = [float(x) for x in parts[1:3]]
                uvs.append(uv if len(uv) == 2 else uv + [0.0])
            elif tag == "f":
                corners = [c.split("/") for c in parts[1:]]
                if len(corners) < 3:
                    raise ValueError("face needs at least 3 corners")
                vi = [_index(c[0], len(verts), line_no, path) for c in corners]
                has_uv = [len(c) > 1 and c[1] != "" for c in corners]
                if any(has_uv) and not all(has_uv):
                    raise ValueError("face mixes corners with and without UVs")
                ti = [_index(c[1], len(uvs), line_no, path) for c in corners] if all(has_uv) else None
                n_without_uv += ti is None
                for k in range(1, len(vi) - 1):  # fan triangulation
                    faces.append((vi[0], vi[k], vi[k + 1]))
                    if ti is not None:
                        face_uv.append((ti[0], ti[k], ti[k + 1]))
        except ValueError as exc:
            raise MicroFaceError(f"{path}:{line_no}: malformed '{tag}' record: {exc}") from None
    if not faces:
        raise MicroFaceError(f"OBJ {path} has no faces")
    if n_without_uv and face_uv:
        raise MicroFaceError(f"OBJ {path}: some faces have UVs and {n_without_uv} do not")
    return ObjMesh(
        vertices=np.asarray(verts, np.float64).reshape(-1, 3),
        faces=np.asarray(faces, np.int64),
        uvs=np.asarray(uvs, np.float64).reshape(-1, 2),
        face_uv_indices=np.asarray(face_uv, np.int64) if face_uv else None,
    )
