"""FLAME-format head models whose expression basis differs from the stand-in's, made from it.

No official FLAME file can be had here, so these stand for one (issue 15). Each keeps the stand-in's
topology, template, identity, joints and skinning, and writes an official file's layout (300
identity then the expression columns, no ``n_expr`` / ``expr_offset`` / names keys):

- ``flame100``: 100 expression components, FLAME 2020's count. The first 53 span the stand-in's
  expressions, rotated by a random orthogonal matrix and rescaled (PCA-like, signed, about 1-10 mm
  per unit); the other 47 are smooth face fields the stand-in's expressions lack.
- ``flame50``: 50 components: a random projection of the stand-in's 53 expressions, so three of
  its directions are missing (the span error is not zero).

    .venv/bin/python benchmarks/flame_variants.py write flame100 OUT.pkl [--seed 0]
    .venv/bin/python benchmarks/flame_variants.py report

``report`` makes both in a temporary folder and prints, per file, how well it spans the network's
expression basis (backend/head/expression_layer.py) and how closely a known expression
(:func:`known_expression`: five basis shapes a frame at weights 0..0.6 and a jaw opening up to
0.08 rad, 20 frames) comes back through it (:func:`map_error_mm`; tests/test_expression_layer.py
asserts the same figures).
"""
from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = ("flame100", "flame50")
_OFFICIAL_KEYS = ("v_template", "f", "posedirs", "weights", "J_regressor", "J", "kintree_table", "bs_style", "bs_type")


def variant_basis(kind: str, standin_expr: np.ndarray, identity: np.ndarray, seed: int = 0) -> np.ndarray:
    """The variant's expression columns (V, 3, n) from the stand-in's (V, 3, 53) and its identity
    modes (V, 3, m), metres per unit coefficient."""
    rng = np.random.default_rng(seed)
    v, _, k = standin_expr.shape
    flat = standin_expr.reshape(-1, k).astype(np.float64)
    if kind == "flame100":
        q, _ = np.linalg.qr(rng.standard_normal((k, k)))
        span = flat @ q * rng.uniform(0.3, 3.0, k)
        # Components the stand-in's expressions lack: identity modes on the face, with their part
        # in the expressions' span removed, about 2 mm rms each.
        extra = identity.reshape(-1, identity.shape[2])[:, : 100 - k].astype(np.float64)
        extra = extra - flat @ np.linalg.lstsq(flat, extra, rcond=None)[0]
        extra *= 0.002 / np.sqrt((extra ** 2).reshape(v, 3, -1).sum(1).mean(0))
        cols = np.concatenate([span, extra], 1)
    elif kind == "flame50":
        cols = flat @ (rng.standard_normal((k, 50)) / np.sqrt(k))
    else:
        raise ValueError(f"unknown variant {kind!r}; choose from {VARIANTS}")
    return cols.reshape(v, 3, -1)


def write_variant(kind: str, out: str | Path, seed: int = 0, flame: str | Path | None = None) -> Path:
    """Write the variant ``kind`` of the stand-in (``flame``, default the configured head model) to
    ``out`` as a plain-numpy FLAME pickle (protocol 4, no extra keys)."""
    from backend.config import assets_folder, resolve_asset
    from backend.head import safe_pickle

    src = resolve_asset("flame", flame, folders=(assets_folder(),))
    d = safe_pickle.load(src)
    sd = np.asarray(d["shapedirs"], np.float64)
    n_shape, off, n_expr = int(d["n_shape"]), int(d["expr_offset"]), int(d["n_expr"])
    expr = variant_basis(kind, sd[:, :, off:off + n_expr], sd[:, :, :n_shape], seed)
    shapedirs = np.zeros(sd.shape[:2] + (300 + expr.shape[2],))
    shapedirs[:, :, :n_shape] = sd[:, :, :n_shape]
    shapedirs[:, :, 300:] = expr
    model = {k: d[k] for k in _OFFICIAL_KEYS if k in d} | {"shapedirs": shapedirs}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as fh:
        pickle.dump(model, fh, protocol=4)
    return out


def known_expression(model, k: int, frames: int = 20, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A known expression: basis weights (T, k), five shapes a frame at 0..0.6, and ``model``'s pose
    (T, 3J) with a jaw opening of up to 0.08 rad."""
    rng = np.random.default_rng(seed)
    weights = np.zeros((frames, k))
    for t in range(frames):
        weights[t, rng.choice(k, 5, replace=False)] = rng.uniform(0, 0.6, 5)
    pose = np.zeros((frames, 3 * model.n_joints))
    pose[:, model.jaw_pose_slice().start] = rng.uniform(0, 0.08, frames)
    return weights, pose


def map_error_mm(model, basis, weights: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """(T, V) mm: how far ``model``'s head with the mapped expression (ExpressionMap.to_model) lies
    from its head with the basis weights ``weights`` (T, K) and ``pose`` (T, 3J), zero identity."""
    import torch

    from backend.head.expression_layer import basis_head, expression_map
    from backend.head.flame import FlameLayer

    expr, own_pose = expression_map(model, basis).to_model(weights, pose, model.jaw_pose_slice())
    f32 = lambda a: torch.as_tensor(np.asarray(a, np.float32))  # noqa: E731
    zeros = f32(np.zeros((len(weights), model.n_shape)))
    with torch.no_grad():
        truth, _ = FlameLayer(basis_head(model, basis))(zeros, f32(weights), f32(pose))
        got, _ = FlameLayer(model)(zeros, f32(expr), f32(own_pose))
    return np.linalg.norm((got - truth).numpy().astype(np.float64), axis=2) * 1000


def report() -> None:
    """Print the table of the module docstring."""
    import tempfile

    from backend.head.expression_layer import basis_of_model, expression_map
    from backend.head.flame import load_flame

    basis = basis_of_model(load_flame())
    print("| file | expressions | span error, mean (max) | known expression through the map: face error mean (max) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in VARIANTS:
            model = load_flame(write_variant(kind, Path(tmp) / f"{kind}.pkl"))
            err = map_error_mm(model, basis, *known_expression(model, len(basis.names)))[:, model.region_labels >= 0]
            meta = expression_map(model, basis).meta()
            print(f"| {kind} | {model.n_expr} | {meta['span_error_mm']:.4f} mm ({meta['span_error_max_mm']:.4f}, "
                  f"{meta['worst'] or '-'}) | {err.mean():.4f} mm ({err.max():.4f}) |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="write one variant")
    w.add_argument("kind", choices=VARIANTS)
    w.add_argument("out")
    w.add_argument("--seed", type=int, default=0)
    sub.add_parser("report", help="print how well each variant spans the network's basis")
    args = ap.parse_args()
    if args.command == "write":
        print(write_variant(args.kind, args.out, args.seed))
    else:
        report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
