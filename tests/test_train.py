"""Training is reproducible and resumable: 4 steps in one go equal 2 steps, a stop, and 2 more;
its region rule is calibrated on its clips and can be calibrated again (backend/training/calibrate.py)."""
from __future__ import annotations

import json

import pytest
import torch

from backend.training.calibrate import main as calibrate_main
from backend.config import FlowConfig
from backend.training.dataset import make_synthetic_sample
from backend.head.flame import load_flame
from backend.net.network import load_weights
from backend.training.train import TrainConfig, train


@pytest.mark.slow
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, monkeypatch):
    model = load_flame()
    data = tmp_path / "data"
    data.mkdir()
    make_synthetic_sample(5, model, data)

    def config(name: str) -> TrainConfig:
        return TrainConfig(data=[str(data)], out=str(tmp_path / f"{name}.pt"), checkpoint=str(tmp_path / f"{name}.ckpt"),
                           steps=4, batch=2, window=6, checkpoint_every=2, device="cpu", seed=3)

    train(config("whole"), log=lambda line: None)

    # the same run, killed during its third step (after the checkpoint at step 2)
    real_step, calls = torch.optim.Adam.step, {"n": 0}

    def step_then_die(self, *a, **kw):
        if calls["n"] == 2:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real_step(self, *a, **kw)

    monkeypatch.setattr(torch.optim.Adam, "step", step_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(config("resumed"), log=lambda line: None)
    monkeypatch.undo()
    assert (tmp_path / "resumed.ckpt").exists() and not (tmp_path / "resumed.pt").exists()
    train(config("resumed"), log=lambda line: None)   # the same command again: resumes at step 2
    a, b = load_weights(tmp_path / "whole.pt", model), load_weights(tmp_path / "resumed.pt", model)
    assert a.trained_flow == FlowConfig().recipe()    # the flow its data was made with, for the pipeline's check
    assert a.detection["clips"] == 1 and a.detection == b.detection   # its region rule, calibrated on its clips
    # Calibrating the saved weights again on the same clips finds the same rule and keeps the tensors.
    assert calibrate_main(["--weights", str(tmp_path / "whole.pt"), "--data", str(data)]) == 0
    again = load_weights(tmp_path / "whole.pt", model)
    assert again.detection == a.detection
    assert json.loads((tmp_path / "whole.pt.json").read_text())["detection"]["clips"] == 1
    torch.testing.assert_close(again.dgmd.out[-1].weight, a.dgmd.out[-1].weight, rtol=0, atol=0)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0, msg=name)
