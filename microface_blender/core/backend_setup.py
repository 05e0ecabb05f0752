"""Set Up Backend: a Python environment for the backend, made in the extension's user folder (no bpy).

The backend needs torch, MediaPipe, OpenCV and the rest, which do not belong in Blender's own
Python. This makes a virtual environment from Blender's interpreter, installs the pinned set the
extension carries (``backend_env.json``, written by ``build.py pack``; in a checkout, pyproject.toml's)
from the package index or from a local folder of wheels (offline), and runs ``python -m backend
check`` in it (imports and a tiny forward pass of each model). It is built in a staging folder
beside the target and moved into place only when the check passes: a failed or cancelled setup
leaves nothing, and an existing environment stays until the new one works.

Each step runs under child_guard.py, so it stops with Blender, however Blender ends.
"""
from __future__ import annotations

import collections
import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .backend_job import child_env, remove_stale_staging, staging_folder
from .contract import contract_module
from .paths import env_python

protocol = contract_module("protocol")   # backend/contract/protocol.py: the check's events

ENV_FILE = "backend_env.json"         # in the extension zip: {"requirements": [...], "no_deps": [...]}
SETUP_FOLDER = "backend-env"          # under the extension's user folder
_GUARD = Path(__file__).with_name("child_guard.py")
_DEV_ONLY = ("pytest", "bpy")         # the checkout's test-suite needs, not the backend's
_COLLECTING = re.compile(r"^\s*(?:Collecting|Processing|Requirement already satisfied:)\s+(\S+)")


class SetupError(Exception):
    """A setup that cannot start: one line naming the problem and its fix."""


def pinned_set(package_dir: Path) -> tuple[list[str], list[str]]:
    """(requirements, no_deps) the backend needs: the extension's ``backend_env.json``, else the
    checkout's pyproject.toml ([tool.microface.env], without the test-suite's own needs)."""
    packed = package_dir / ENV_FILE
    try:
        if packed.is_file():
            spec = json.loads(packed.read_text(encoding="utf-8"))
        else:
            import tomllib

            with open(package_dir.parent / "pyproject.toml", "rb") as fh:
                spec = tomllib.load(fh)["tool"]["microface"]["env"]
        req, no_deps = list(spec["requirements"]), list(spec["no_deps"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SetupError(f"the backend's pinned package list is missing or damaged ({exc}); reinstall MicroFace") from None
    return [r for r in req if r.split("==")[0] not in _DEV_ONLY], no_deps


@dataclass(frozen=True)
class SetupRequest:
    base_python: str                  # makes the environment (Blender's own interpreter)
    target: Path                      # the environment's folder once it works
    backend: Path                     # the folder holding backend/ that the check imports
    requirements: tuple[str, ...]
    no_deps: tuple[str, ...] = ()
    wheels: str = ""                  # a local folder of wheels: install offline from it alone
    check: tuple[str, ...] = ("-m", "backend", "check")   # run by the new environment's python


@dataclass(frozen=True)
class Step:
    label: str
    args: tuple[str, ...]             # after the interpreter; "{python}" is the new environment's
    packages: int = 0                 # how many packages it installs (for progress)
    use_base: bool = False            # run by the base interpreter, not the new one


def plan(req: SetupRequest) -> list[Step]:
    """The steps of a setup, in order."""
    source = ("--no-index", "--find-links", str(Path(req.wheels).expanduser())) if req.wheels else ()
    pip = ("-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--progress-bar", "off", *source)
    steps = [Step("Creating the environment", ("-m", "venv", "{staging}"), use_base=True),
             Step("Installing packages", (*pip, *req.requirements), len(req.requirements))]
    if req.no_deps:
        steps.append(Step("Installing packages", (*pip, "--no-deps", *req.no_deps), len(req.no_deps)))
    steps.append(Step("Checking the backend", tuple(req.check)))
    return steps


def validate(req: SetupRequest) -> None:
    """Problems known before anything runs, as :class:`SetupError`."""
    if not req.base_python or not Path(req.base_python).is_file():
        raise SetupError(f"no Python to build the environment from (looked for {req.base_python or 'none'})")
    if req.wheels and not Path(req.wheels).expanduser().is_dir():
        raise SetupError(f"wheel folder not found: {req.wheels}")
    if not (req.backend / "backend" / "__init__.py").is_file():
        raise SetupError(f"no backend to check at {req.backend}; reinstall MicroFace")
    if not req.requirements:
        raise SetupError("the backend's pinned package list is empty; reinstall MicroFace")


@dataclass
class SetupJob:
    """One setup. ``state``: "new", "running", "done" (``python`` is the new interpreter), "error"
    (``message`` is one line: what failed) or "cancelled". Poll from one thread (Blender's main)."""

    request: SetupRequest
    state: str = "new"
    message: str = ""
    step: int = 0                     # index into ``steps``
    installed: int = 0                # packages seen by the current install step
    python: str = ""
    checks: list = field(default_factory=list)       # the backend check's results, as it reported them
    steps: list = field(default_factory=list)
    _proc: subprocess.Popen | None = None
    _lines: queue.Queue = field(default_factory=queue.Queue)
    _tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=30))
    _staging: Path | None = None

    def start(self) -> "SetupJob":
        try:
            validate(self.request)
            self.request.target.parent.mkdir(parents=True, exist_ok=True)
        except SetupError as exc:
            return self._fail(str(exc))
        except OSError as exc:
            return self._fail(f"cannot write {self.request.target.parent}: {exc.strerror or exc}")
        prefix = f".{self.request.target.name}-staging"
        remove_stale_staging(self.request.target.parent, prefix)   # left by a Blender killed mid-setup
        try:
            self._staging = staging_folder(self.request.target.parent, prefix)
        except OSError as exc:
            return self._fail(f"cannot write {self.request.target.parent}: {exc.strerror or exc}")
        self.steps, self.state = plan(self.request), "running"
        self._launch()
        return self

    @property
    def progress(self) -> tuple[str, float]:
        """(what it is doing, overall share done 0..1)."""
        if self.state != "running" or not self.steps:
            return self.state, 1.0 if self.state == "done" else 0.0
        s = self.steps[self.step]
        part = min(self.installed / s.packages, 1.0) if s.packages else 0.0
        label = f"{s.label} ({self.installed}/{s.packages})" if s.packages else s.label
        return label, (self.step + part) / len(self.steps)

    def _launch(self) -> None:
        s = self.steps[self.step]
        py = self.request.base_python if s.use_base else str(env_python(self._staging))
        args = [a.replace("{staging}", str(self._staging)) for a in s.args]
        env = child_env(self.request.backend)   # Blender's Python variables out, the backend importable
        env.pop("PIP_REQUIRE_VIRTUALENV", None)
        env["PIP_NO_INPUT"] = "1"
        kwargs = {"creationflags": getattr(subprocess, "CREATE_NO_WINDOW", 0)} if os.name == "nt" \
            else {"start_new_session": True}
        self.installed = 0
        try:
            # stdin: a pipe only this process holds; child_guard stops the step when it closes.
            self._proc = subprocess.Popen([self.request.base_python, str(_GUARD), py, *args],
                                          cwd=str(self.request.target.parent), env=env, stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                          encoding="utf-8", errors="replace", bufsize=1, **kwargs)
        except OSError as exc:
            self._cleanup()
            self._fail(f"cannot start {s.label.lower()}: {exc.strerror or exc}")
            return
        threading.Thread(target=self._read, args=(self._proc.stdout,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self._lines.put(line.rstrip())
        self._lines.put(None)

    def poll(self) -> str:
        """Take the output since the last call, advance to the next step when one ends; returns ``state``."""
        if self.state != "running":
            return self.state
        ended = False
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                ended = True
                continue
            if line.strip():
                self._tail.append(line)
            if _COLLECTING.match(line):
                self.installed += 1
            event = protocol.decode_event(line)   # the backend check's own events; None for other lines
            if event is not None and event.get("stage") == "check":
                self.checks.append({k: event.get(k) for k in ("name", "ok", "detail")})
        if ended:
            self._step_ended(self._proc.wait())
        return self.state

    def _step_ended(self, rc: int) -> None:
        s = self.steps[self.step]
        if rc != 0:
            self._cleanup()
            # the check names what failed itself ("backend check failed: import torch: ...")
            self._fail(self._why(rc) if s.args == self.request.check else f"{s.label} failed: {self._why(rc)}")
            return
        self.step += 1
        if self.step < len(self.steps):
            self._launch()
            return
        try:
            old = self.request.target.with_name(f".{self.request.target.name}-old-{os.getpid()}")
            if self.request.target.exists():
                os.replace(self.request.target, old)
            os.replace(self._staging, self.request.target)
            shutil.rmtree(old, ignore_errors=True)
        except OSError as exc:
            self._cleanup()
            self._fail(f"cannot move the environment into {self.request.target}: {exc.strerror or exc}")
            return
        self._staging = None
        self.python, self.state = str(env_python(self.request.target)), "done"

    def _why(self, rc: int) -> str:
        """One line: the last ``error:`` (the check's) or ``ERROR:`` (pip's) line, else the last line."""
        lines = list(self._tail)
        hit = next((ln for ln in reversed(lines) if ln.startswith(("error:", "ERROR:"))), None)
        if hit:
            return " ".join(hit.split(":", 1)[1].split())[:400]
        return " ".join(lines[-1].split())[:400] if lines else f"exit code {rc}"

    def wait(self, timeout: float | None = None, interval: float = 0.1) -> str:
        """Poll until it ends (or ``timeout`` seconds); for ``-b`` and scripts."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        while self.poll() == "running" and (deadline is None or time.perf_counter() < deadline):
            time.sleep(interval)
        return self.state

    def cancel(self) -> None:
        """Stop the running step (and its children) and remove the staging folder."""
        if self.state != "running":
            return
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()           # child_guard stops the step's whole process group
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._cleanup()
        self.state, self.message = "cancelled", "Set Up Backend cancelled"

    def _cleanup(self) -> None:
        if self._proc is not None and self._proc.stdin:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None

    def _fail(self, message: str) -> "SetupJob":
        self.state, self.message = "error", " ".join(message.split())[:500]
        return self

