"""Set Up Backend for real: the whole pinned set, offline from a wheel folder, timed, with its size.

    .venv/bin/python benchmarks/bench_setup_backend.py [--wheels DIR] [--target DIR]

1. ``pip download`` the backend's pinned set (microface_blender/core/backend_setup.py's
   ``pinned_set``: pyproject.toml's without pytest and bpy) into --wheels (skipped for wheels
   already there), as a user preparing an offline install would;
2. run Set Up Backend's own job (``SetupJob``) from that folder alone into --target, as the
   preferences' button does: a virtual environment, the packages, ``python -m backend check``;
3. print the time of each part, the wheel folder's and the environment's size on disk, and the
   check's lines.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from microface_blender.core import backend_setup  # noqa: E402


def disk_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) / 2 ** 20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheels", default="/work/data/microface/backend_wheels")
    ap.add_argument("--target", help="where the environment goes (default: a temporary folder, removed after)")
    args = ap.parse_args()
    req, no_deps = backend_setup.pinned_set(ROOT / "microface_blender")
    wheels = Path(args.wheels)
    wheels.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pip = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q", "-d", str(wheels)]
    subprocess.run(pip + req, check=True)
    subprocess.run(pip + ["--no-deps"] + no_deps, check=True)
    t_download = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(args.target) if args.target else Path(tmp) / backend_setup.SETUP_FOLDER
        request = backend_setup.SetupRequest(base_python=sys.executable, target=target, backend=ROOT,
                                             requirements=tuple(req), no_deps=tuple(no_deps), wheels=str(wheels))
        t1 = time.perf_counter()
        job = backend_setup.SetupJob(request).start()
        times, last = {}, (None, t1)
        while job.poll() == "running":
            step = job.steps[job.step].label if job.steps else ""
            if step != last[0]:
                if last[0] is not None:
                    times[last[0]] = times.get(last[0], 0.0) + time.perf_counter() - last[1]
                last = (step, time.perf_counter())
            time.sleep(0.2)
        if last[0] is not None:
            times[last[0]] = times.get(last[0], 0.0) + time.perf_counter() - last[1]
        total = time.perf_counter() - t1
        print(f"| part | seconds |\n|---|---|\n| pip download of the pinned set (skips wheels already there) | "
              f"{t_download:.0f} |")
        for step, sec in times.items():
            print(f"| {step} | {sec:.0f} |")
        print(f"| Set Up Backend in all, offline | {total:.0f} |")
        print(f"\nstate: {job.state} {job.message}")
        print(f"wheel folder: {disk_mb(wheels):.0f} MB ({len(list(wheels.glob('*.whl')))} wheels); "
              f"environment: {disk_mb(target) if target.exists() else float('nan'):.0f} MB on disk")
        for c in job.checks:
            print(f"- {c['name']}: {'ok' if c['ok'] else 'FAILED'} ({c['detail']})")
    return 0 if job.state == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
