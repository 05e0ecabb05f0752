"""Set Up Backend (microface_blender/core/backend_setup.py), without Blender: real environments
made from a local wheel folder (offline), the real ``python -m backend check`` saying what is
missing, and failures and cancels that leave nothing behind. The full pinned set is installed by
benchmarks/bench_setup_backend.py (minutes, gigabytes), not here."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import tiny_wheel
from microface_blender.core import backend_setup as bs
from microface_blender.core.paths import env_python

ROOT = Path(__file__).resolve().parents[1]


def _request(tmp_path: Path, **kw) -> bs.SetupRequest:
    wheels = tmp_path / "wheels"
    tiny_wheel(wheels, "mfdummy", "0.1")
    args = dict(base_python=sys.executable, target=tmp_path / "user" / bs.SETUP_FOLDER, backend=ROOT,
                requirements=("mfdummy==0.1",), wheels=str(wheels))
    return bs.SetupRequest(**{**args, **kw})


def _leftovers(req: bs.SetupRequest) -> list[str]:
    return sorted(p.name for p in req.target.parent.iterdir() if p.name.startswith("."))


def _check_printing(name: str) -> tuple[str, ...]:
    event = json.dumps({"event": "stage", "stage": "check", "done": 1, "total": 1, "name": name, "ok": True,
                        "detail": "42"})
    return ("-c", f"import mfdummy; assert mfdummy.VALUE == 42; print({event!r})")


def test_the_pinned_set_is_the_checkouts_without_the_test_suites_needs():
    req, no_deps = bs.pinned_set(ROOT / "microface_blender")
    assert "mediapipe==0.10.21" in no_deps and any(r.startswith("torch==") for r in req)
    assert not any(r.startswith(("pytest", "bpy")) for r in req)


def test_a_packed_pinned_set_comes_first(tmp_path):
    (tmp_path / bs.ENV_FILE).write_text(json.dumps({"requirements": ["a==1"], "no_deps": ["b==2"]}))
    assert bs.pinned_set(tmp_path) == (["a==1"], ["b==2"])
    (tmp_path / bs.ENV_FILE).write_text("{broken")
    with pytest.raises(bs.SetupError, match="pinned package list .* reinstall MicroFace"):
        bs.pinned_set(tmp_path)


@pytest.mark.parametrize("change, message", [
    ({"wheels": "/nonexistent/wheels"}, "wheel folder not found: /nonexistent/wheels"),
    ({"base_python": "/nonexistent/python"}, "no Python to build the environment from"),
    ({"backend": Path("/nonexistent")}, "no backend to check at /nonexistent"),
])
def test_problems_known_up_front_start_nothing(tmp_path, change, message):
    job = bs.SetupJob(_request(tmp_path, **change)).start()
    assert job.state == "error" and message in job.message
    assert not (tmp_path / "user").exists() or not _leftovers(job.request)


@pytest.mark.slow
def test_an_environment_is_built_offline_from_a_wheel_folder_checked_and_moved_into_place(tmp_path):
    req = _request(tmp_path, check=_check_printing("import mfdummy"))
    job = bs.SetupJob(req).start()
    seen = set()
    while job.poll() == "running":
        seen.add(job.progress[0])
        time.sleep(0.05)
    assert job.state == "done", job.message
    assert job.python == str(env_python(req.target)) and Path(job.python).is_file()
    assert {"Creating the environment", "Checking the backend"} <= seen
    assert job.checks == [{"name": "import mfdummy", "ok": True, "detail": "42"}]
    out = subprocess.run([job.python, "-c", "import mfdummy; print(mfdummy.VALUE)"], capture_output=True, text=True)
    assert out.stdout.strip() == "42"
    assert _leftovers(req) == []


@pytest.mark.slow
def test_the_real_backend_check_names_what_is_missing_and_nothing_is_kept(tmp_path):
    req = _request(tmp_path)   # an environment with mfdummy alone: no numpy, no torch
    old = req.target / "marker"
    old.parent.mkdir(parents=True)
    old.write_text("the environment that worked before")
    job = bs.SetupJob(req).start()
    assert job.wait(timeout=300) == "error"
    assert job.message.startswith("backend check failed: "), job.message
    assert "import torch: ModuleNotFoundError" in job.message and "import numpy" in job.message
    assert old.read_text() == "the environment that worked before"   # kept: the new one did not work
    assert _leftovers(req) == []


@pytest.mark.slow
def test_a_missing_package_is_pips_own_error_in_one_line(tmp_path):
    req = _request(tmp_path, requirements=("mfdummy==0.1", "nothere==1.0"))
    job = bs.SetupJob(req).start()
    assert job.wait(timeout=300) == "error"
    assert job.message.startswith("Installing packages failed: ") and "nothere==1.0" in job.message, job.message
    assert not req.target.exists() and _leftovers(req) == []


@pytest.mark.slow
def test_cancel_stops_the_step_and_its_children_and_removes_the_staging(tmp_path):
    marker = f"mf-setup-{uuid.uuid4().hex}"
    req = _request(tmp_path, check=("-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', "
                                          f"'import time; time.sleep(120)  # {marker}'])"))
    job = bs.SetupJob(req).start()
    while job.poll() == "running" and job.progress[0] != "Checking the backend":
        time.sleep(0.05)
    deadline = time.time() + 60
    while subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode != 0 and time.time() < deadline:
        time.sleep(0.1)   # the grandchild is up
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0
    job.cancel()
    assert job.state == "cancelled"
    time.sleep(0.5)
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode != 0   # no orphan
    assert not req.target.exists() and _leftovers(req) == []


@pytest.mark.slow
def test_a_killed_parent_takes_the_step_with_it(tmp_path):
    # Blender killed by SIGKILL mid-setup: the guarded step sees its stdin close and stops.
    marker = f"mf-setup-{uuid.uuid4().hex}"
    req = _request(tmp_path, check=("-c", f"import time; time.sleep(120)  # {marker}"))
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from pathlib import Path\n"
        "from microface_blender.core import backend_setup as bs\n"
        f"req = bs.SetupRequest(base_python=sys.executable, target=Path({str(req.target)!r}), backend=Path({str(ROOT)!r}), "
        f"requirements={req.requirements!r}, wheels={req.wheels!r}, check={req.check!r})\n"
        "bs.SetupJob(req).start().wait()\n")
    parent = subprocess.Popen([sys.executable, str(script)])
    deadline = time.time() + 120
    while subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode != 0 and time.time() < deadline:
        time.sleep(0.1)
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0
    parent.kill()
    parent.wait()
    deadline = time.time() + 15
    while subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0 and time.time() < deadline:
        time.sleep(0.1)
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode != 0
