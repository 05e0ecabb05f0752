"""The expression layer: one fixed expression basis on FLAME topology that every stage runs on, and
the linear map from it into any FLAME file's own expression space (and jaw).

Every FLAME file (2020, 2023, 2023 Open, the open stand-in) shares the topology, so the network
speaks one basis whatever file the user picks: ICT-FaceKit's 53 ARKit-style expression
displacements (MIT, USC ICT), resampled onto FLAME topology, the basis the shipped weights were
trained with (the stand-in ``microface_ict_flame.pkl`` carries it as its expression columns). A
user's model with another expression space (FLAME's PCA expressions, 50-100 of them) gets the map
once at load, by least squares over the shared vertices; the jaw rotation, linearised at rest,
joins both sides, since FLAME opens the mouth with a joint where ICT has a ``jawOpen`` shape.

ψ below is an expression vector followed by the jaw's axis-angle (3,), as the network packs it.
"""
from __future__ import annotations

import dataclasses
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..contract.atomic import atomic_path
from ..errors import MicroFaceError
from .flame import FlameModel, load_flame

BASIS_FORMAT = "microface-expression-basis"
BASIS_VERSION = 1
BASIS_FILE = "microface_expression_basis.npz"   # shipped beside the weights in the extension zip
STAND_IN_FILE = "microface_ict_flame.pkl"       # the open head model whose expressions are the basis
ATTRIBUTION = ("ARKit-style expression displacements from ICT-FaceKit, Copyright (c) 2020 USC Institute for "
               "Creative Technologies, MIT License; resampled onto FLAME topology (Li et al. 2017)")
_SAME_TOLERANCE_M = 1e-5    # a model whose expressions equal the basis to this is the basis (int16 rounding: ~1e-6)


@dataclass(frozen=True)
class ExpressionBasis:
    """Named expression displacements on FLAME topology: dirs (V, 3, K) metres per unit weight
    (ARKit-style one-sided targets, weights 0..1)."""

    names: tuple[str, ...]
    dirs: np.ndarray
    source: str         # id of the model it was taken from


def basis_of_model(model: FlameModel) -> ExpressionBasis:
    """The basis a model with named ARKit-style expressions carries (the stand-in's)."""
    if not model.expr_named:
        raise MicroFaceError(f"head model {model.path.name} has unnamed (PCA) expressions: it cannot serve as "
                             f"the network's expression basis")
    return ExpressionBasis(tuple(model.expression_names), model.exprdirs.astype(np.float32), model.model_id)


def save_basis(basis: ExpressionBasis, path: str | Path) -> Path:
    """Write ``basis`` compactly and atomically: only the vertices it moves, each shape quantised
    to int16 with its own scale (error at most 1/65534 of the shape's largest displacement)."""
    path = Path(path)
    moving = np.flatnonzero(np.abs(basis.dirs).max((1, 2)) > 0)
    d = basis.dirs[moving].astype(np.float64)                                   # (n, 3, K)
    scale = np.maximum(np.abs(d).max((0, 1)), 1e-30) / 32767.0                  # (K,)
    arrays = {"format": np.array(BASIS_FORMAT), "version": np.array(BASIS_VERSION), "names": np.array(basis.names),
              "n_vertices": np.array(len(basis.dirs)), "vertices": moving.astype(np.int32),
              "quantised": np.round(d / scale).astype(np.int16), "scale": scale,
              "source": np.array(basis.source), "attribution": np.array(ATTRIBUTION)}
    # An .npz written by hand with fixed timestamps: the same basis gives the same bytes (the zip is reproducible).
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", (1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w") as fh:
                np.lib.format.write_array(fh, arr, allow_pickle=False)
    return path


def load_basis(path: str | Path) -> ExpressionBasis:
    """Read a file written by :func:`save_basis` (no pickles). Raises :class:`MicroFaceError`."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["format"]) != BASIS_FORMAT:
                raise MicroFaceError(f"expression basis {path} is not a MicroFace expression basis")
            if int(z["version"]) > BASIS_VERSION:
                raise MicroFaceError(f"expression basis {path} is version {int(z['version'])}; update MicroFace")
            dirs = np.zeros((int(z["n_vertices"]), 3, len(z["names"])), np.float32)
            dirs[z["vertices"]] = (z["quantised"].astype(np.float64) * z["scale"]).astype(np.float32)
            return ExpressionBasis(tuple(str(s) for s in z["names"]), dirs, str(z["source"]))
    except KeyError as exc:
        raise MicroFaceError(f"expression basis {path} lacks array {exc}") from None
    except (ValueError, OSError, IndexError) as exc:
        raise MicroFaceError(f"expression basis {path} is corrupt: {exc}") from None


def find_basis(weights_dir: Path, model: FlameModel, assets_dir: Path | None) -> ExpressionBasis:
    """The basis the weights in ``weights_dir`` speak: the file beside them (the extension zip ships
    it), else the stand-in head model's own expressions (``model`` itself when it is the stand-in,
    else the stand-in in the assets folder or beside ``model``: a development checkout)."""
    beside = weights_dir / BASIS_FILE
    if beside.is_file():
        return load_basis(beside)
    if model.path.name == STAND_IN_FILE and model.expr_named:
        return basis_of_model(model)
    for folder in (assets_dir, model.path.parent):
        if folder is not None and (folder / STAND_IN_FILE).is_file():
            return basis_of_model(load_flame(folder / STAND_IN_FILE, assets_dir))
    raise MicroFaceError(f"the network's expression basis was not found: neither {beside} nor {STAND_IN_FILE} "
                         f"in the assets folder or beside the head model; reinstall the MicroFace extension "
                         f"(its zip carries {BASIS_FILE}) or pass --assets to a folder holding {STAND_IN_FILE}")


def jaw_columns(model: FlameModel) -> np.ndarray:
    """(V, 3, 3) metres per radian: how each vertex moves for a small jaw rotation about each axis
    at the rest head (template, zero pose), by the jaw's skinning weight: w · (e_k × (v - j))."""
    jaw = model.jaw_pose_slice()
    out = np.zeros(model.v_template.shape + (3,), np.float64)
    if jaw.stop == jaw.start:
        return out
    j = jaw.start // 3
    v = model.v_template.astype(np.float64)
    centre = model.j_regressor[j].astype(np.float64) @ v
    w = model.weights[:, j].astype(np.float64)
    for k in range(3):
        axis = np.eye(3)[k]
        out[:, :, k] = w[:, None] * np.cross(axis, v - centre)
    return out


@dataclass(frozen=True)
class ExpressionMap:
    """The linear map from the basis' ψ (K expressions ⊕ jaw) to a model's ψ (its n ⊕ jaw).

    - matrix (n + 3, K + 3): the least-squares map of the displacements.
    - span_error_mm (K,): per basis shape at weight 1, the rms over the face's vertices of the
      displacement the model's expressions and jaw cannot make.
    - identity: the model's expressions are the basis; the map is not applied.
    """

    names: tuple[str, ...]
    matrix: np.ndarray
    span_error_mm: np.ndarray
    identity: bool

    def to_model(self, expr: np.ndarray, pose: np.ndarray, jaw: slice) -> tuple[np.ndarray, np.ndarray]:
        """The basis' expr (T, K) and pose (T, 3J) as the model's expr (T, n) and pose (its jaw mapped)."""
        psi = np.concatenate([np.asarray(expr, np.float64), np.asarray(pose, np.float64)[..., jaw]], -1)
        out = psi @ self.matrix.T
        n = self.matrix.shape[0] - (jaw.stop - jaw.start)
        pose = np.array(pose, copy=True)
        pose[..., jaw] = out[..., n:].astype(pose.dtype)
        return out[..., :n].astype(np.asarray(expr).dtype), pose

    def meta(self) -> dict:
        """The result's ``meta.expression_layer`` (docs/result_format.md)."""
        worst = int(np.argmax(self.span_error_mm))
        return {"basis": f"ICT-FaceKit ARKit-style, {len(self.names)} shapes", "identity": self.identity,
                "span_error_mm": round(float(self.span_error_mm.mean()), 4),
                "span_error_max_mm": round(float(self.span_error_mm[worst]), 4),
                "worst": self.names[worst] if round(float(self.span_error_mm[worst]), 4) > 0 else None}


def _least_squares(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """argmin_X |a X - b|² with a tiny ridge per column of ``a`` (scale-free), for collinear
    columns such as a file's jaw-like expression beside the jaw joint."""
    gram = a.T @ a
    return np.linalg.solve(gram + 1e-9 * np.diag(np.maximum(np.diag(gram), 1e-30)), a.T @ b)


def expression_map(model: FlameModel, basis: ExpressionBasis) -> ExpressionMap:
    """The map between ``model``'s expression space and ``basis``, on their shared topology."""
    if basis.dirs.shape[0] != model.v_template.shape[0]:
        raise MicroFaceError(f"head model {model.path.name} has {model.v_template.shape[0]} vertices; the network's "
                             f"expression basis is on {basis.dirs.shape[0]} (FLAME topology)")
    n, k = model.n_expr, len(basis.names)
    jaw = jaw_columns(model).reshape(-1, 3)
    if model.exprdirs.shape == basis.dirs.shape and \
            np.abs(model.exprdirs - basis.dirs).max() < _SAME_TOLERANCE_M:
        return ExpressionMap(basis.names, np.eye(k + 3), np.zeros(k), True)
    own = np.concatenate([model.exprdirs.reshape(-1, n).astype(np.float64), jaw], 1)       # (3V, n + 3)
    theirs = np.concatenate([basis.dirs.reshape(-1, k).astype(np.float64), jaw], 1)        # (3V, K + 3)
    matrix = _least_squares(own, theirs)
    face = np.repeat(model.region_labels >= 0, 3)
    residual = (theirs[:, :k] - own @ matrix[:, :k])[face].reshape(-1, 3, k)
    span = np.sqrt((residual ** 2).sum(1).mean(0)) * 1000.0
    return ExpressionMap(basis.names, matrix, span, False)


def basis_head(model: FlameModel, basis: ExpressionBasis) -> FlameModel:
    """``model`` with the basis as its expressions: its own identity, template, joints and skinning."""
    return dataclasses.replace(model, exprdirs=basis.dirs.astype(np.float32), expression_names=list(basis.names),
                               expr_named=True)


def working_model(model: FlameModel, weights_dir: Path, assets_dir: Path | None) -> tuple[FlameModel, ExpressionMap]:
    """The head every stage runs on for the user's ``model`` (the fit, the reader, the network, the
    photometric stage), and the map of its ψ back to ``model``'s own: ``model`` itself when its
    expressions are the basis, else :func:`basis_head`. One basis everywhere: what the stages were
    tuned and trained on, whatever FLAME file the user has."""
    basis = find_basis(weights_dir, model, assets_dir)
    emap = expression_map(model, basis)
    return (model if emap.identity else basis_head(model, basis)), emap
