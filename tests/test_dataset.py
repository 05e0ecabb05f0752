"""Training samples (backend/training/dataset.py): the recipe, the file format, truth vertices, flow units,
atomic writes, real-window cutting and the resumable CLI."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from backend.training import dataset
from backend.capture.align import to_crop
from backend.head.camera import project_np
from backend.config import ReconstructConfig
from backend.training.dataset import (GT_KEYS, SAMPLE_KEYS, draw_synthetic_spec, gt_vertices, load_sample,
                             make_real_samples, make_synthetic_sample, real_windows, write_sample)
from backend.head.flame import FlameLayer, load_flame
from backend.head.regions import REGION_NAMES
from backend.head.render import vertex_normals
from backend.synthetic.synth import generate

from conftest import shared_video

# A mouth movement strong enough (2 mm peak, about 1.7 px in the crop) that the flow's scale is
# measurable on one clip; everything else is seed 101's draw.
SEED = 101
OVERRIDES = dict(regions=("mouth",), peak_mm=2.0)


@pytest.fixture(scope="module")
def model():
    return load_flame()


@pytest.fixture(scope="module")
def synth_sample(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    spec = dataclasses.replace(draw_synthetic_spec(SEED), **OVERRIDES)
    path = make_synthetic_sample(SEED, model, out, spec=spec)
    assert path is not None and path == out / "clip_000101.npz"
    return path, spec


# ----------------------------------------------------------------------------- the recipe

def test_recipe_ranges_and_determinism():
    specs = [draw_synthetic_spec(s) for s in range(2000)]
    assert draw_synthetic_spec(7) == draw_synthetic_spec(7)
    assert draw_synthetic_spec(7) != draw_synthetic_spec(8)
    for sp in specs:
        assert 12 <= sp.n_frames <= 16
        assert 2 <= sp.onset <= 3                              # pre-onset frames
        assert 1 <= sp.n_frames - 1 - sp.offset <= 3           # frames after the offset
        assert sp.onset < sp.apex < sp.offset
        assert 0.15 - 1e-9 <= sp.duration_s <= 0.45 + 1e-9
        assert 100 <= sp.capture_fps <= 200 and sp.stride >= 1
        assert sp.fps == pytest.approx(sp.capture_fps / sp.stride)
        assert 1 <= len(sp.regions) <= 2 and set(sp.regions) <= set(REGION_NAMES)
        assert len(set(sp.regions)) == len(sp.regions)
        assert 0.3 <= sp.peak_mm <= 3.0
        assert abs(sp.yaw_deg) <= 20 and abs(sp.pitch_deg) <= 10 and abs(sp.roll_deg) <= 5
        assert 0.5 <= sp.jitter_scale <= 2.0 and 1 <= sp.noise_std <= 4 and 0 <= sp.off_basis_mm <= 0.5
    # The draws cover their ranges rather than collapsing onto a few values.
    durations = np.array([sp.duration_s for sp in specs])
    assert durations.min() < 0.17 and durations.max() > 0.43
    assert {sp.n_frames for sp in specs} == set(range(12, 17))
    assert {r for sp in specs for r in sp.regions} == set(REGION_NAMES)
    peaks = np.log([sp.peak_mm for sp in specs])
    assert abs(np.median(peaks) - np.log(np.sqrt(0.3 * 3.0))) < 0.1   # log-uniform: median at the geometric mean


# ----------------------------------------------------------------------------- one synthetic sample

@pytest.mark.slow
def test_synthetic_sample_format(synth_sample, model):
    path, spec = synth_sample
    s = load_sample(path)
    n, e, p, k, v = spec.n_frames, model.n_expr, 3 * model.n_joints, model.n_shape, len(model.v_template)
    expected = {
        "crops": ((n, 112, 112, 3), np.uint8), "flow": ((n - 1, 112, 112, 2), np.float16),
        "align": ((n, 2, 3), np.float32), "intrinsics": ((3,), np.float32), "image_size": ((2,), np.int32),
        "lmk_mp": ((n, 478, 2), np.float32), "lmk_68": ((n, 68, 2), np.float32), "valid": ((n,), np.bool_),
        "fit_shape": ((k,), np.float32), "fit_expr": ((n, e), np.float32), "fit_pose": ((n, p), np.float32),
        "fit_trans": ((n, 3), np.float32),
        "gt_shape": ((k,), np.float32), "gt_expr": ((n, e), np.float32), "gt_pose": ((n, p), np.float32),
        "gt_trans": ((n, 3), np.float32), "gt_offbasis": ((v, 3), np.float32), "gt_profile": ((n,), np.float32),
    }
    assert set(s) == set(expected) | {"meta"} == set(SAMPLE_KEYS) | set(GT_KEYS) | {"meta"}
    for key, (shape, dtype) in expected.items():
        assert s[key].shape == shape and s[key].dtype == dtype, (key, s[key].shape, s[key].dtype)
    with np.load(path, allow_pickle=False) as z:
        assert z["meta"].dtype == np.uint8
    meta = s["meta"]
    assert meta["kind"] == "synthetic" and meta["seed"] == SEED
    assert meta["fps"] == pytest.approx(spec.capture_fps / spec.stride)
    assert (meta["capture_fps"], meta["stride"]) == (spec.capture_fps, spec.stride)
    assert (meta["onset"], meta["apex"], meta["offset"]) == (spec.onset, spec.apex, spec.offset)
    assert meta["requested_regions"] == ["mouth"] and "mouth" in meta["active_regions"]
    assert meta["peak_mm"] == 2.0
    assert s["valid"].all()
    assert s["image_size"].tolist() == [spec.width, spec.height] == [512, 512]
    assert s["intrinsics"].tolist() == pytest.approx([1.5 * 512, 255.5, 255.5])   # the synthetic camera
    # The profile rises from 0 before the onset to 1 at the apex and is 0 again after the offset.
    prof = s["gt_profile"]
    assert prof[:spec.onset + 1].max() == 0 and prof[spec.apex] == 1 and prof[spec.offset:].max() == 0
    # Crops are the face: MediaPipe points land inside the 224 crop, around its centre.
    crop_pts = to_crop(s["lmk_mp"], s["align"])
    assert crop_pts.min() > 0 and crop_pts.max() < 224
    assert np.abs(crop_pts.mean((0, 1)) - 111.5).max() < 25
    assert s["crops"].std() > 20
    # The static fit reprojects onto the landmarks it was given (pixels).
    assert meta["fit_reproj_px"] < 1.0
    assert np.median(np.linalg.norm(s["lmk_68"] - s["lmk_68"][:1], axis=-1)) < 3


@pytest.mark.slow
def test_gt_vertices_reproduce_synth(synth_sample, model):
    path, spec = synth_sample
    s = load_sample(path)
    clip = generate(spec.synth_config(), model)
    for dtype, tol in ((torch.float64, 1e-6), (torch.float32, 1e-6)):
        cam, head = gt_vertices(s, FlameLayer(model, dtype=dtype))
        assert cam.dtype == head.dtype == np.float32
        assert np.abs(cam - clip.vertices).max() < tol, dtype
        assert np.abs(head - clip.vertices_head).max() < tol, dtype
    # The off-basis part matters at this tolerance: without it the truth is off by its peak.
    assert np.abs(s["gt_offbasis"]).max() > 1e-5


def _sample_flow(flow112: np.ndarray, pts224: np.ndarray) -> np.ndarray:
    """Bilinear flow (224-crop px) at 224-crop pixel positions from the 2x2-pooled 112 grid."""
    g = ((pts224 - 0.5) / 2.0).astype(np.float32)   # pooled pixel j is centred on 224 px 2j + 0.5
    return cv2.remap(flow112.astype(np.float32), g[:, None, 0].copy(), g[:, None, 1].copy(), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)[:, 0]


@pytest.mark.slow
def test_flow_is_in_224_crop_pixels(synth_sample, model):
    """Flow summed from onset to apex along the true vertex paths against the true displacement,
    both in 224-crop pixels (projection then the stored alignment).

    Measured on seed 101 (mouth, 2 mm, 1.7 px true motion) with the default flow (DIS on a 2x crop
    of a 512 px render): least-squares gain over the visible face 0.995, median along-motion ratio
    in the moving region 0.85 (TV-L1 on the 224 crop of a 256 px render: 0.98 and 1.00). Over 24
    other clips that TV-L1 gain was 0.32-1.08 (faint motion is under-read), so this checks the
    unit, not the flow's accuracy: half-resolution units would read 0.5, unpooled-but-halved 2.
    """
    path, _ = synth_sample
    s = load_sample(path)
    meta = s["meta"]
    on, ap = meta["onset"], meta["apex"]
    cam, _ = gt_vertices(s, FlameLayer(model, dtype=torch.float64))
    crop = to_crop(project_np(cam.astype(np.float64), s["intrinsics"]), s["align"])
    normals = vertex_normals(cam[on].astype(np.float64), model.faces)
    visible = (normals * -cam[on]).sum(1) > 0.2 * np.linalg.norm(cam[on], axis=1)
    face = (model.region_labels >= 0) & visible & ~model.eyeball_mask()
    acc = sum(_sample_flow(s["flow"][t], crop[t][face]) for t in range(on, ap))
    true = crop[ap][face] - crop[on][face]
    gain = float((acc * true).sum() / (true ** 2).sum())
    moving = np.isin(model.region_labels[face], [model.region_names.index(r) for r in meta["active_regions"]])
    mag = np.linalg.norm(true, axis=1)
    sel = moving & (mag >= 0.5 * mag[moving].max())
    along = (acc[sel] * true[sel] / mag[sel, None]).sum(1)
    ratio = float(np.median(along) / np.median(mag[sel]))
    print(f"gain {gain:.3f} ratio {ratio:.3f} true motion {np.median(mag[sel]):.2f} px")
    assert np.median(mag[sel]) > 1.0
    assert 0.75 < gain < 1.3
    assert 0.75 < ratio < 1.3


# ----------------------------------------------------------------------------- writing

def _tiny_arrays(n: int = 3, kind: str = "real") -> tuple[dict, dict]:
    f32 = np.float32
    arrays = {
        "crops": np.zeros((n, 112, 112, 3), np.uint8), "flow": np.zeros((n - 1, 112, 112, 2), np.float16),
        "align": np.zeros((n, 2, 3), f32), "intrinsics": np.ones(3, f32), "image_size": np.array([64, 48], np.int32),
        "lmk_mp": np.zeros((n, 478, 2), f32), "lmk_68": np.zeros((n, 68, 2), f32), "valid": np.ones(n, bool),
        "fit_shape": np.zeros(4, f32), "fit_expr": np.zeros((n, 5), f32), "fit_pose": np.zeros((n, 15), f32),
        "fit_trans": np.zeros((n, 3), f32),
    }
    meta = {k: None for k in dataset.META_KEYS if k not in ("format", "version")}
    meta.update(kind=kind, fps=30.0, source="test")
    return arrays, meta


def test_write_is_atomic(tmp_path, monkeypatch):
    arrays, meta = _tiny_arrays()
    path = tmp_path / "real_x_00000_x1.npz"
    write_sample(path, arrays, meta)
    before = path.read_bytes()
    assert load_sample(path)["meta"]["format"] == "microface-sample"

    def broken(fh, **kw):  # dies half-way through the write
        fh.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(dataset.np, "savez_compressed", broken)
    with pytest.raises(OSError, match="disk full"):
        write_sample(tmp_path / "real_y_00000_x1.npz", arrays, meta)
    with pytest.raises(OSError, match="disk full"):
        write_sample(path, arrays, meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]   # no partial file, no temp file
    assert path.read_bytes() == before                                  # the old file is untouched


@pytest.mark.parametrize("change", ["dtype", "frames", "missing", "gt_on_real", "nan"])
def test_write_refuses_a_broken_sample(tmp_path, change):
    arrays, meta = _tiny_arrays()
    if change == "dtype":
        arrays["flow"] = arrays["flow"].astype(np.float32)
    elif change == "frames":
        arrays["lmk_mp"] = arrays["lmk_mp"][:2]
    elif change == "missing":
        del arrays["valid"]
    elif change == "gt_on_real":
        arrays["gt_profile"] = np.zeros(3, np.float32)
    else:
        arrays["fit_expr"][1, 2] = np.nan
    with pytest.raises(ValueError):
        write_sample(tmp_path / "s.npz", arrays, meta)
    assert list(tmp_path.iterdir()) == []


def test_synthetic_needs_its_truth(tmp_path):
    arrays, meta = _tiny_arrays(kind="synthetic")
    with pytest.raises(ValueError, match="gt_shape"):
        write_sample(tmp_path / "clip_000000.npz", arrays, meta)


def test_low_detection_rate_skips_the_sample(tmp_path, model, monkeypatch, caplog):
    class Rendered:
        frames = np.zeros((10, 8, 8, 3), np.uint8)
        fps, intrinsics = 40.0, np.array([12.0, 3.5, 3.5])

    monkeypatch.setattr(dataset, "_render", lambda spec, model: (Rendered(), spec.peak_mm))
    valid = np.array([True] * 8 + [False] * 2)          # 80% < 90%
    monkeypatch.setattr(dataset, "process_frames", lambda *a, **k: {"valid": valid})
    assert make_synthetic_sample(3, model, tmp_path) is None
    assert list(tmp_path.iterdir()) == []
    assert "seed 3 skipped" in caplog.text and "8/10" in caplog.text


# ----------------------------------------------------------------------------- real windows

def test_real_windows_cutting():
    t = 60
    valid = np.ones(t, bool)
    valid[21] = False                         # one lost frame
    cuts = np.zeros(t, bool)
    cuts[45] = True                           # a new shot starts at 45
    wins = real_windows(valid, cuts, window=16, strides=(1, 2, 4), min_frames=12)
    by_stride = {s: [w for w in wins if w[1] - w[0] == s] for s in (1, 2, 4)}
    for w in wins:
        s = w[1] - w[0]
        assert 12 <= len(w) <= 16 and (np.diff(w) == s).all()
        assert valid[w].all()
        assert not cuts[w[0] + 1:w[-1] + 1].any()          # inside one shot
    for s, ws in by_stride.items():
        for a, b in zip(ws, ws[1:]):
            assert b[0] > a[-1]                             # no overlap at one stride
    # Stride 1: 0-15, then 16-20 is too short before the lost frame, 22-37, 38-44 is too short
    # before the cut, and 45-59 after it.
    assert [(w[0], w[-1]) for w in by_stride[1]] == [(0, 15), (22, 37), (45, 59)]
    # Strides 2 and 4 step over the odd lost frame; 12 frames at stride 4 span 44 frames, just
    # inside the first shot.
    assert [(w[0], w[-1]) for w in by_stride[2]] == [(0, 30)]
    assert [(w[0], w[-1], len(w)) for w in by_stride[4]] == [(0, 44, 12)]


@pytest.mark.slow
def test_real_samples_from_single_face(tmp_path, model):
    video = shared_video("single_face.mp4")
    cfg = ReconstructConfig(device="cpu")
    cfg.video.end = 31                 # 32 frames: two windows at stride 1, one at stride 2
    cfg.fit.iters = 60
    paths = make_real_samples(video, model, tmp_path, window=16, strides=(1, 2), cfg=cfg)
    assert [p.name for p in paths] == ["real_single_face_00000_x1.npz", "real_single_face_00016_x1.npz",
                                       "real_single_face_00000_x2.npz"]
    for p in paths:
        s = load_sample(p)
        meta = s["meta"]
        n = len(s["valid"])
        assert s["valid"].all() and 12 <= n <= 16
        assert not set(s) & set(GT_KEYS)
        assert s["crops"].shape == (n, 112, 112, 3) and s["flow"].shape == (n - 1, 112, 112, 2)
        assert s["flow"].dtype == np.float16 and s["lmk_mp"].dtype == np.float32
        assert meta["kind"] == "real" and meta["source"] == "single_face.mp4"
        assert meta["fps"] == pytest.approx(30.0 / meta["stride"]) and meta["capture_fps"] == pytest.approx(30.0)
        assert meta["source_frames"] == list(range(meta["source_frames"][0], meta["source_frames"][0]
                                                   + meta["stride"] * n, meta["stride"]))
        assert s["image_size"].tolist() == [640, 360]
        # Source pixels: the landmarks sit on the 640x360 frame and map into the crop.
        crop_pts = to_crop(s["lmk_mp"], s["align"])
        assert crop_pts.min() > 0 and crop_pts.max() < 224
        assert s["intrinsics"].tolist() == pytest.approx([640.0, 319.5, 179.5])
    # Resumable: a second run keeps the files and writes nothing new.
    mtimes = [p.stat().st_mtime_ns for p in paths]
    assert make_real_samples(video, model, tmp_path, window=16, strides=(1, 2), cfg=cfg) == paths
    assert [p.stat().st_mtime_ns for p in paths] == mtimes


# ----------------------------------------------------------------------------- CLI

@pytest.mark.slow
def test_cli_skips_existing_samples(synth_sample, capsys):
    path, _ = synth_sample
    before = path.stat().st_mtime_ns
    assert dataset.main(["synth", str(path.parent), "--seeds", f"{SEED}:{SEED + 1}", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "1 already done, 0 to make" in out and "0 written" in out
    assert path.stat().st_mtime_ns == before
    (Path(path.parent) / "clip_000102.skip").write_text("MediaPipe kept 3/12 frames\n")
    dataset.main(["synth", str(path.parent), "--seeds", "101,102", "--workers", "1"])
    assert "2 already done, 0 to make" in capsys.readouterr().out
