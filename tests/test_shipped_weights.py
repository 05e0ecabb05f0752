"""The shipped network (weights/microface.pt) against the static-fit baseline on a held-out
synthetic clip (a seed from the held-out range, never used in training), through the same
frontend as training and the pipeline. Margins come from benchmarks/bench_learned.py (docs/accuracy.md)."""
from __future__ import annotations

import json

import pytest

from backend.config import WEIGHTS_DIR, resolve_asset
from backend.training.dataset import load_sample, make_synthetic_sample
from backend.training.evaluate import compare_methods
from backend.head.flame import FlameLayer, load_flame
from backend.net.network import load_weights

HELD_OUT_SEED = 900_014   # held-out range 900000-900039 (docs/accuracy.md); training used seeds 0-299
# On this clip (`benchmarks/bench_learned.py --per-clip`): active-region motion error 0.122 mm (fit)
# vs 0.033 mm (network), invented still-region motion 0.079 vs 0.012 mm, jitter 0.051 vs 0.016 mm.
# Over the 40 held-out clips the network wins on active error in 75% of clips (median margin
# 0.036 mm), on invented motion in 90% (0.023 mm) and on jitter in 95% (0.026 mm); this clip is
# one where it wins on all three. Margins below the measured ones:
MARGIN_ACTIVE_MM = 0.04
MARGIN_STILL_MM = 0.03


def test_shipped_weights_load_safely_with_provenance():
    path = resolve_asset("weights", folders=(WEIGHTS_DIR,))
    prov = json.loads(path.with_suffix(".pt.json").read_text())
    for key in ("command", "commit", "seed", "data", "final_losses", "sha256"):
        assert key in prov, key
    assert max(prov["data"]["synthetic_seeds"]) < 900_000   # held-out seeds never trained on
    net = load_weights(path, load_flame())
    assert not net.training
    # its region rule, calibrated on its training clips (python -m backend.training.calibrate), travels with it
    assert net.detection == {k: v for k, v in prov["detection"].items() if k != "command"}
    assert net.detection["clips"] == len(prov["data"]["synthetic_seeds"])


@pytest.mark.slow
def test_shipped_weights_beat_the_fit_on_a_held_out_clip(tmp_path):
    model = load_flame()
    sample = load_sample(make_synthetic_sample(HELD_OUT_SEED, model, tmp_path))
    net = load_weights(resolve_asset("weights", folders=(WEIGHTS_DIR,)), model)
    # Regions called by the network's own calibrated rule: measured 8 of 8 right on this clip (0.825
    # over the held-out set); the fit, with its best rule (0.75, 0.20 mm, bench_learned --calibrate), 4 of 8.
    rule = (net.detection["fraction"], net.detection["floor_mm"])
    m = compare_methods(sample, model, FlameLayer(model), {"full": net}, {"full": rule, "fit only": (0.75, 0.2)})
    full, fit = m["full"], m["fit only"]
    print({k: v.as_dict() for k, v in m.items()})
    assert full.motion_error_active_mm < fit.motion_error_active_mm - MARGIN_ACTIVE_MM
    assert full.invented_still_mm < fit.invented_still_mm - MARGIN_STILL_MM
    assert full.jitter_pre_onset_mm < fit.jitter_pre_onset_mm
    assert full.region_accuracy_calibrated >= 7 / 8 > fit.region_accuracy_calibrated
