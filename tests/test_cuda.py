"""The torch stages on a CUDA GPU give what they give on the CPU (skipped without CUDA).

benchmarks/gpu_check.sh runs these on a CUDA machine. Without one, the same code paths run on the
CPU in the other tests (device="cpu"; autocast in test_learned.test_mixed_precision_...).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.head.camera import default_intrinsics, project_np

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


def test_auto_device_picks_cuda():
    from backend.config import pick_device

    assert pick_device("auto") == "cuda"


def test_network_on_cuda_equals_cpu(head_model):
    from backend.net.dem import window_times
    from backend.net.network import MicroFaceNet

    torch.manual_seed(1)
    net = MicroFaceNet(head_model)
    for p in (net.dem.motion.head[-1].weight, net.dgmd.out[-1].weight):
        torch.nn.init.normal_(p, std=0.05)
    b, t = 1, 5
    pose = torch.zeros(b, t, 3 * head_model.n_joints)
    trans = torch.tensor([0.0, 0.0, -0.5]).expand(b, t, 3)
    expr = torch.rand(b, t, head_model.n_expr) * 0.1
    batch = {"fit_shape": torch.zeros(b, head_model.n_shape), "fit_expr": expr, "fit_pose": pose, "fit_trans": trans,
             "flow": torch.randn(b, t - 1, 112, 112, 2), "times": window_times(torch.arange(t)),
             "intrinsics": torch.tensor([[500.0, 128.0, 128.0]]),
             "align": torch.tensor([[1.0, 0.0, -16.0], [0.0, 1.0, -16.0]]).expand(b, t, 2, 3),
             "lmk": torch.rand(b, t, 68 + len(head_model.mp_indices), 2) * 256}
    with torch.no_grad():
        ref = net.eval()(batch)["vertices"]
        gpu = net.to("cuda")({k: v.to("cuda") for k, v in batch.items()})["vertices"].cpu()
        net.set_mixed_precision(torch.bfloat16)
        amp = net({k: v.to("cuda") for k, v in batch.items()})["vertices"].cpu()
    assert (gpu - ref).norm(dim=-1).max() < 1e-6          # metres: a micrometre
    assert (amp - ref).norm(dim=-1).max() < 1e-5          # bfloat16 flow convolutions: 0.01 mm


def test_fit_on_cuda_equals_cpu(head_model):
    from backend.config import FitConfig
    from backend.capture.fit import fit_sequence
    from backend.head.flame import FlameLayer

    t, w, h = 6, 640, 480
    layer = FlameLayer(head_model, dtype=torch.float64)
    pose = torch.zeros(t, 3 * head_model.n_joints, dtype=torch.float64)
    pose[:, 1] = torch.linspace(0.0, 0.1, t)
    trans = torch.tensor([0.0, 0.0, -0.6], dtype=torch.float64).expand(t, 3)
    with torch.no_grad():
        v, _ = layer(torch.zeros(t, head_model.n_shape, dtype=torch.float64),
                     torch.zeros(t, head_model.n_expr, dtype=torch.float64), pose, trans)
    mp = np.zeros((t, 478, 2))
    mp[:, head_model.mp_indices] = project_np(head_model.embed(v.numpy(), "mp"), default_intrinsics(w, h))
    fits = [fit_sequence(head_model, mp, np.ones(t, bool), (w, h), 30.0, FitConfig(iters=100), device=d)
            for d in ("cpu", "cuda")]
    assert np.abs(fits[0].vertices - fits[1].vertices).max() < 5e-5   # 0.05 mm after 100 Adam steps
