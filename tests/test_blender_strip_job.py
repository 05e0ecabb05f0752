"""The backend as a child process (microface_blender.core.backend_job, no bpy): command line, cache key,
progress parsing, one-line errors, cancel, against fake backends (fast) and the real one."""
from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import fake_checkout, shared_video
from microface_blender.core import backend_job as bj
from microface_blender.core.paths import addon_version

ROOT = Path(__file__).resolve().parents[1]

_FAKE_CLI = textwrap.dedent('''
    """A stand-in for `python -m backend`: behaves as FAKE_MODE says."""
    import json, os, signal, sys, time

    def emit(**event):
        print(json.dumps(event), flush=True)

    def main():
        args = sys.argv[1:]
        out = args[args.index("-o") + 1]
        with open(os.environ["FAKE_ARGV_LOG"], "w") as fh:
            json.dump({"argv": args, "cwd": os.getcwd(), "pythonpath": os.environ.get("PYTHONPATH")}, fh)
        mode = os.environ.get("FAKE_MODE", "ok")
        print("a library's own chatter on stdout", flush=True)
        emit(event="stage", stage="decode", done=13, total=13)
        emit(event="stage", stage="flow", done=6, total=12)
        if mode == "ok":
            with open(out, "wb") as fh:
                fh.write(b"result")
            emit(event="done", output=out, frames=13, seconds=0.1, warnings=["frames 3-4 had no face; interpolated"])
            return 0
        if mode == "error":
            emit(event="error", message="no face found in any frame of clip.mp4 (frames 0-12)")
            print("error: no face found in any frame of clip.mp4 (frames 0-12)", file=sys.stderr)
            return 2
        if mode == "crash":
            raise RuntimeError("boom\\nsecond line")
        if mode == "silent_zero":
            return 0
        if mode == "noisy":
            for i in range(20000):
                print(f"warning line {i} " + "x" * 40, file=sys.stderr)
            with open(out, "wb") as fh:
                fh.write(b"result")
            emit(event="done", output=out, frames=13, seconds=0.1, warnings=[])
            return 0
        if mode in ("slow", "stubborn"):
            if mode == "stubborn":
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            with open(out + ".partial-write", "wb") as fh:  # a half-written file where the output goes
                fh.write(b"half")
            for i in range(6000):
                emit(event="stage", stage="fit", done=i, total=6000)
                time.sleep(0.01)
        return 0

    sys.exit(main())
''')


@pytest.fixture
def fake(tmp_path):
    """(settings, environ, argv log) for a fake checkout whose backend is _FAKE_CLI."""
    checkout = fake_checkout(tmp_path, _FAKE_CLI, version=addon_version())
    flame = tmp_path / "head.pkl"
    flame.write_bytes(b"not really")
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not really a video")
    log = tmp_path / "argv.json"
    settings = bj.BackendSettings(python=sys.executable, cache_dir=str(tmp_path / "cache"), flame=str(flame),
                                  device="cpu", checkout=str(checkout))
    environ = dict(os.environ, FAKE_ARGV_LOG=str(log), PYTHONHOME="/nonexistent/blender/python")
    return settings, environ, video, log


def _run(fake, mode: str, **kw) -> bj.Job:
    settings, environ, video, _ = fake
    job = bj.start_reconstruction(settings, video, 0, 12, environ=dict(environ, FAKE_MODE=mode), **kw)
    job.wait(timeout=60)
    return job


def test_command_line_and_environment(fake):
    settings, environ, video, log = fake
    cmd = bj.build_command(settings, video, "/c/out.npz", 3, 40)
    assert cmd[:4] == [sys.executable, "-m", "backend", "reconstruct"]
    assert cmd[4:] == [str(video), "-o", "/c/out.npz", "--start", "3", "--end", "40", "--device", "cpu",
                       "--flame", settings.flame, "--exit-with-stdin"]
    s2 = bj.BackendSettings(python="py", cache_dir="c", device="AUTO", fit_only=True, photometric=False, flow="tvl1")
    assert bj.build_command(s2, video, "o.npz", 0, 1)[-7:] == ["--device", "auto", "--flow", "tvl1", "--fit-only",
                                                               "--no-photometric", "--exit-with-stdin"]
    job = _run(fake, "ok")
    seen = json.loads(log.read_text())
    assert seen["cwd"] == settings.checkout and seen["pythonpath"] == settings.checkout  # Blender's PYTHONHOME dropped
    assert seen["argv"][:2] == ["reconstruct", str(video)] and seen["argv"][-3:] == ["--flame", settings.flame,
                                                                                     "--exit-with-stdin"]
    assert job.state == "done"


def test_progress_done_and_the_cache(fake):
    settings, environ, video, _ = fake
    env = dict(environ, FAKE_MODE="ok")
    job = bj.start_reconstruction(settings, video, 0, 12, environ=env)
    assert job.state == "running" and job.progress.text == "starting"
    events = []
    while job.running:
        events += job.poll()
        time.sleep(0.01)
    assert [e["event"] for e in events] == ["stage", "stage", "done"]  # the chatter line is skipped
    assert job.progress.text == "flow 6/12" and job.progress.fraction == 0.5
    assert job.state == "done" and not job.cached and job.output.read_bytes() == b"result"
    assert job.warnings == ["frames 3-4 had no face; interpolated"]
    assert job.output.parent == Path(settings.cache_dir) and job.output.name.startswith("clip_0-12_")
    assert sorted(p.name for p in job.output.parent.iterdir()) == [job.output.name]  # staging folder gone
    # A rerun reuses the finished result without starting anything.
    again = bj.start_reconstruction(settings, video, 0, 12, environ=dict(env, FAKE_MODE="error"))
    assert again.state == "done" and again.cached and again.output == job.output
    # ... unless told not to.
    fresh = bj.start_reconstruction(settings, video, 0, 12, environ=env, use_cache=False)
    assert fresh.state == "running" and fresh.wait(timeout=60) == "done" and not fresh.cached


def test_cache_key_follows_clip_range_and_settings(fake, tmp_path):
    settings, environ, video, _ = fake
    key = bj.cache_key(video, 0, 12, settings, environ)
    assert key == bj.cache_key(video, 0, 12, settings, environ) and len(key) == 16
    assert bj.cache_key(video, 0, 13, settings, environ) != key
    assert bj.cache_key(video, 1, 12, settings, environ) != key
    assert bj.cache_key(video, 0, 12, bj.BackendSettings(**{**settings.__dict__, "fit_only": True}), environ) != key
    assert bj.cache_key(video, 0, 12, bj.BackendSettings(**{**settings.__dict__, "photometric": False}), environ) != key
    # The device does not change the result, so it does not change the key.
    assert bj.cache_key(video, 0, 12, bj.BackendSettings(**{**settings.__dict__, "device": "cuda"}), environ) == key
    other = tmp_path / "other.pkl"
    other.write_bytes(b"x")
    assert bj.cache_key(video, 0, 12, bj.BackendSettings(**{**settings.__dict__, "flame": str(other)}), environ) != key
    os.utime(video, ns=(1, 1))  # the clip changed (mtime)
    key2 = bj.cache_key(video, 0, 12, settings, environ)
    assert key2 != key
    video.write_bytes(b"a longer content than before")
    os.utime(video, ns=(1, 1))
    assert bj.cache_key(video, 0, 12, settings, environ) != key2  # size


def test_backend_error_is_its_own_one_line_message(fake):
    job = _run(fake, "error")
    assert job.state == "error" and job.returncode == 2
    assert job.message == "no face found in any frame of clip.mp4 (frames 0-12)"
    assert not any(Path(fake[0].cache_dir).iterdir())  # no result, no staging folder


def test_crash_without_an_error_event_gives_one_line(fake):
    job = _run(fake, "crash")
    assert job.state == "error" and job.returncode == 1
    assert job.message == "the backend stopped (exit code 1): RuntimeError: boom" and "\n" not in job.message
    job = _run(fake, "silent_zero")
    assert job.state == "error" and job.message == "the backend stopped (exit code 0): no result was written"
    assert not any(Path(fake[0].cache_dir).iterdir())


def test_a_chatty_child_never_blocks_on_its_pipes(fake):
    job = _run(fake, "noisy")
    assert job.state == "done"


@pytest.mark.parametrize("mode, grace", [("slow", 2.0), ("stubborn", 0.5)])
def test_cancel_stops_the_child_and_leaves_no_file(fake, mode, grace):
    settings, environ, video, _ = fake
    job = bj.start_reconstruction(settings, video, 0, 12, environ=dict(environ, FAKE_MODE=mode))
    while job.running and job.progress.stage != "fit":
        job.poll()
        time.sleep(0.01)
    assert job.running and any(Path(settings.cache_dir).iterdir())  # the child is writing
    t0 = time.perf_counter()
    job.cancel(grace=grace)
    latency = time.perf_counter() - t0
    assert job.state == "cancelled" and job._proc.poll() is not None
    assert latency < grace + 1.0 if mode == "stubborn" else latency < 1.0
    assert list(Path(settings.cache_dir).iterdir()) == []  # no result, no partial file, no folder
    job.cancel()  # again: nothing happens
    assert job.poll() == [] or job.state == "cancelled"


def test_a_killed_sessions_partial_folders_are_removed_by_the_next_job(fake):
    # Blender killed outright leaves its job's .partial folder in the cache; a running Blender's
    # (a live process id) and folders this module did not name stay.
    cache = Path(fake[0].cache_dir)
    cache.mkdir()
    dead = cache / ".clip_0-12_abc-4194305-xyz.partial"         # above Linux's largest process id
    alive = cache / f".clip_0-12_abc-{os.getpid()}-xyz.partial"
    foreign = cache / ".clip.olderformat.partial"
    for p in (dead, alive, foreign):
        p.mkdir()
    assert _run(fake, "ok").state == "done"
    assert not dead.exists() and alive.is_dir() and foreign.is_dir()


def test_setup_problems_are_reported_with_the_fix(fake, tmp_path):
    settings, environ, video, _ = fake
    assert bj.check_setup(settings, environ) is None
    missing = bj.BackendSettings(python="", cache_dir=str(tmp_path))
    msg = bj.check_setup(missing, environ)
    assert msg.startswith("Backend not found: press Set Up Backend") and "Preferences > Backend Python" in msg
    gone = bj.BackendSettings(**{**settings.__dict__, "python": str(tmp_path / "no" / "python")})
    assert bj.check_setup(gone, environ).startswith("Backend Python not found at ")
    job = bj.start_reconstruction(gone, video, 0, 12, environ=environ)
    assert job.state == "error" and job.message.startswith("Backend Python not found")
    no_model = bj.BackendSettings(**{**settings.__dict__, "flame": str(tmp_path / "missing.pkl")})
    assert bj.check_setup(no_model, environ).startswith("Head model not found at ")
    default_model = bj.BackendSettings(**{**settings.__dict__, "flame": ""})  # the fake checkout has no stand-in
    env = {k: v for k, v in environ.items() if k != "MICROFACE_FLAME"}
    assert bj.check_setup(default_model, env).startswith("No head model: set Preferences > Head Model")
    older = fake_checkout(tmp_path / "older", _FAKE_CLI, version="0.1.0")   # weights and code of another release
    stale = bj.BackendSettings(**{**settings.__dict__, "checkout": str(older)})
    assert bj.check_setup(stale, environ) == (f"The backend at {older} is version 0.1.0 and this add-on "
                                              f"{addon_version()}: install the matching MicroFace zip, or update "
                                              f"the checkout")
    no_code = bj.BackendSettings(**{**settings.__dict__, "checkout": str(tmp_path)})
    assert bj.check_setup(no_code, environ).startswith("Backend code not found")
    no_clip = bj.start_reconstruction(settings, tmp_path / "nope.mp4", 0, 12, environ=environ)
    assert no_clip.state == "error" and no_clip.message.startswith("clip not found")


def test_the_checkout_is_found_from_the_interpreter(tmp_path):
    root = tmp_path / "mf"
    (root / "backend").mkdir(parents=True)
    (root / "backend" / "__init__.py").write_text("")
    (root / "backend" / "cli.py").write_text("")
    py = root / ".venv" / "bin" / "python"
    assert bj.find_checkout(str(py), candidates=[]) == root
    assert bj.find_checkout("/usr/bin/python3", candidates=[root]) == root
    assert bj.find_checkout("/usr/bin/python3", candidates=[]) is None
    assert bj.find_checkout(str(ROOT / ".venv" / "bin" / "python")) == ROOT
    packed = tmp_path / "extension"        # the add-on's own packed backend comes before the interpreter's
    (packed / "backend").mkdir(parents=True)
    (packed / "backend" / "__init__.py").write_text("")
    (packed / "backend" / "cli.py").write_text("")
    assert bj.find_checkout(str(py), candidates=[packed]) == packed


# --- the real backend --------------------------------------------------------------------------

def _real_settings(cache: Path) -> bj.BackendSettings:
    py = ROOT / ".venv" / "bin" / "python"
    if not py.is_file():
        pytest.skip("the backend's environment .venv is not built")
    return bj.BackendSettings(python=str(py), cache_dir=str(cache), device="cpu")


def test_real_backend_on_a_short_clip(tmp_path):
    from backend.contract.result import read_result

    video = shared_video("single_face.mp4")
    settings = _real_settings(tmp_path / "cache")
    assert bj.check_setup(settings) is None
    job = bj.start_reconstruction(settings, video, 0, 12)
    stages = []
    while job.running:
        stages += [e["stage"] for e in job.poll() if e["event"] == "stage"]
        time.sleep(0.1)
    assert job.state == "done", job.message
    assert {"decode", "landmarks", "flow", "fit"} <= set(stages)
    res = read_result(job.output)
    assert list(res.frame_indices) == list(range(13)) and res.meta["source"]["path"] == str(video)
    print(f"\nreal backend, single_face frames 0-12: {job.elapsed:.1f} s")
    again = bj.start_reconstruction(settings, video, 0, 12)
    assert again.state == "done" and again.cached and again.output == job.output


def test_real_backend_cancel_midway_leaves_no_file(tmp_path):
    video = shared_video("single_face.mp4")
    cache = tmp_path / "cache"
    job = bj.start_reconstruction(_real_settings(cache), video, 0, 12)
    while job.running and job.progress.stage not in ("landmarks", "flow", "fit_rigid", "fit"):
        job.poll()
        time.sleep(0.05)
    assert job.running, job.message
    t0 = time.perf_counter()
    job.cancel()
    latency = time.perf_counter() - t0
    print(f"\ncancel during {job.progress.text}: {latency * 1e3:.0f} ms")
    assert job.state == "cancelled" and latency < bj.CANCEL_GRACE
    assert list(cache.iterdir()) == []
