"""The expression layer (backend/head/expression_layer.py): any FLAME file speaks the network's basis.

The constructed files (benchmarks/flame_variants.py) stand for official ones, which cannot be had
here: official layout without the stand-in's extra keys, 100 components (a rotated, rescaled span
of the stand-in's expressions plus fields it lacks) and 50 (a projection that misses three
directions). Bounds are from the measurement in each test's comment (2026-12-06)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.config import WEIGHTS_DIR, assets_folder, resolve_asset
from backend.errors import MicroFaceError
from backend.head.expression_layer import (BASIS_FILE, basis_of_model, expression_map, find_basis,
                                           load_basis, save_basis, working_model)
from backend.head.flame import FlameLayer, load_flame
from benchmarks.flame_variants import known_expression, map_error_mm, write_variant
from conftest import shared_video


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flame_variants")
    return {k: load_flame(write_variant(k, folder / f"{k}.pkl")) for k in ("flame100", "flame50")}


@pytest.fixture(scope="module")
def basis(head_model):
    return basis_of_model(head_model)


def test_the_basis_file_round_trips_compactly(tmp_path, basis):
    path = save_basis(basis, tmp_path / BASIS_FILE)
    back = load_basis(path)
    assert back.names == basis.names and back.source == basis.source
    # int16 per shape: at most half a step of 1/32767 of each shape's largest displacement
    step = np.abs(basis.dirs).max((0, 1)) / 32767
    assert (np.abs(back.dirs - basis.dirs).max((0, 1)) <= 0.51 * step + 1e-9).all()
    assert path.stat().st_size < 1_000_000   # measured 0.60 MB: it travels with the weights


def test_a_corrupt_basis_file_is_one_clear_error(tmp_path):
    bad = tmp_path / BASIS_FILE
    bad.write_bytes(b"not an npz" * 10)
    with pytest.raises(MicroFaceError, match="expression basis .* corrupt"):
        load_basis(bad)


def test_the_stand_in_is_the_basis(head_model, basis):
    m = expression_map(head_model, basis)
    assert m.identity and m.meta()["span_error_mm"] == 0.0


def test_a_rotated_rescaled_100_component_model_recovers_a_known_expression(variants, basis):
    model = variants["flame100"]
    assert model.n_expr == 100 and not model.expr_named   # no names key, official layout
    m = expression_map(model, basis)
    assert not m.identity
    assert m.span_error_mm.max() < 1e-3                 # measured 0.0000 mm: it spans the basis
    err = map_error_mm(model, basis, *known_expression(model, len(basis.names)))
    assert err.max() < 0.001                            # measured 1.5e-5 mm (float32 rounding)


def test_a_50_component_model_reports_what_it_cannot_span(variants, basis):
    model = variants["flame50"]
    m = expression_map(model, basis)
    meta = m.meta()
    assert 0.01 < meta["span_error_mm"] < 0.2          # measured 0.055 mm (max 0.135, eyeSquint_L)
    assert meta["worst"] in basis.names
    err = map_error_mm(model, basis, *known_expression(model, len(basis.names)))[:, model.region_labels >= 0]
    assert err.mean() < 0.1                             # measured 0.036 mm (max 0.35)


def test_the_basis_comes_from_beside_the_weights_else_from_the_stand_in(tmp_path, variants, basis, head_model):
    assert find_basis(tmp_path, head_model, None).source == basis.source              # the stand-in itself
    assert find_basis(tmp_path, variants["flame100"], assets_folder()).names == basis.names
    with pytest.raises(MicroFaceError, match=f"expression basis was not found.*{BASIS_FILE}"):
        find_basis(tmp_path, variants["flame100"], tmp_path)
    save_basis(basis, tmp_path / BASIS_FILE)
    assert find_basis(tmp_path, variants["flame100"], tmp_path).names == basis.names


def test_the_shipped_weights_run_on_any_flame_files_working_model(variants, head_model):
    from backend.net.network import load_weights

    shipped = resolve_asset("weights", folders=(WEIGHTS_DIR,))
    assert working_model(head_model, WEIGHTS_DIR, assets_folder())[0] is head_model   # the stand-in: as it is
    for variant in variants.values():
        model, emap = working_model(variant, WEIGHTS_DIR, assets_folder())
        assert not emap.identity and model.n_expr == 53 and model.n_shape == variant.n_shape
        assert np.array_equal(model.v_template, variant.v_template)    # the user's head, the basis' expressions
        assert load_weights(shipped, model).flame_model is model
        with pytest.raises(MicroFaceError, match="trained for 53 expressions"):
            load_weights(shipped, variant)


@pytest.mark.slow
# bound_mm: mean face error of FLAME of the result's own coefficients against its meshes, measured
# 0.0000005 mm (flame100) and 0.090 mm (flame50) on these 13 frames
@pytest.mark.parametrize("kind, n_expr, span_mm, bound_mm", [("flame100", 100, 0.0, 0.001), ("flame50", 50, 0.055, 0.2)])
def test_the_learned_reconstruction_runs_on_a_constructed_flame_file(tmp_path, variants, kind, n_expr, span_mm,
                                                                     bound_mm):
    from backend.cli import main
    from backend.contract.result import read_result

    out = tmp_path / "r.npz"
    video = shared_video("single_face.mp4")
    assert main(["reconstruct", str(video), "-o", str(out), "--end", "12", "--network", "--quiet",
                 "--flame", str(variants[kind].path)]) == 0
    res = read_result(out)
    assert res.meta["refined"] and res.expr.shape == (13, n_expr) and res.rig_expr_dirs.shape[0] == n_expr
    assert res.meta["head_model"]["n_expr"] == n_expr and res.meta["expression_layer"]["identity"] is False
    assert res.meta["expression_layer"]["span_error_mm"] == pytest.approx(span_mm, abs=1e-3)
    # FLAME of the file's own coefficients is the meshes, up to what the file cannot span.
    f32 = lambda a: torch.as_tensor(np.asarray(a, np.float32))  # noqa: E731
    with torch.no_grad():
        own, _ = FlameLayer(variants[kind])(f32(res.shape)[None].expand(13, -1), f32(res.expr), f32(res.pose),
                                           f32(res.trans))
    face = variants[kind].region_labels >= 0
    err = np.linalg.norm(own.numpy() - res.vertices_init, axis=2)[:, face] * 1000
    assert err.mean() < bound_mm
