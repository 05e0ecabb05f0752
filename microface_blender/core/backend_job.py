"""Running the backend as a child process (standard library only, no bpy).

``python -m backend reconstruct VIDEO -o OUT --start N --end N ...`` runs in the checkout that has
``backend/``, with the preferences' interpreter. A reader thread turns its JSON progress lines
(``{"event": "stage", "stage": "flow", "done": 30, "total": 71}``, then ``done`` or ``error``) into
a queue; the caller (a Blender timer, or a wait loop under ``-b``) drains it with :meth:`Job.poll`
on its own thread, so nothing here touches Blender.

Results are cached: the output's name is keyed by the clip (path, size, mtime), the source range
and the settings that change the result, so rerunning a finished reconstruction reuses it. The
child writes into a private ``.partial`` folder in the cache that is renamed into place only after
a clean exit: a cancelled, failed or killed run leaves no result file, and only that folder (made
by this module) is ever deleted.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .contract import contract_module
from .paths import addon_version, checkout_roots

protocol = contract_module("protocol")   # backend/contract/protocol.py: flags, events, variables

BACKEND_NOT_FOUND = ("Backend not found: press Set Up Backend in Preferences > Add-ons > MicroFace, or run "
                     "`python3 build.py env` in a MicroFace checkout and set Preferences > Backend Python to its "
                     ".venv/bin/python")
_DEVICES = ("auto", "cpu", "cuda")
CANCEL_GRACE = 2.0  # seconds between terminate and kill


@dataclass(frozen=True)
class BackendSettings:
    """How to run the backend (from the add-on's preferences)."""

    python: str                    # the backend's interpreter (a checkout's .venv/bin/python)
    cache_dir: str                 # where results are kept
    flame: str = ""                # FLAME .pkl; "" = the backend's default ($MICROFACE_FLAME, the stand-in)
    device: str = "auto"           # auto | cpu | cuda
    checkout: str = ""             # the folder holding backend/; "" = found from ``python``
    fit_only: bool = False         # True: --fit-only (the static landmark fit, no flow reader)
    photometric: bool = True       # False: --no-photometric (the network's output uncorrected by the frames' colours)
    flow: str = "dis"              # dis | tvl1
    extra_args: tuple[str, ...] = ()


def find_checkout(python: str, candidates: list[Path] | None = None) -> Path | None:
    """The folder whose ``backend/`` the child runs: the add-on's own (:func:`paths.checkout_roots`:
    the extension's packed copy, or the repo it runs from), else the checkout ``python`` lives in
    (``<root>/.venv/bin/python``)."""
    roots = list(candidates if candidates is not None else checkout_roots())
    if python:
        py = Path(python).expanduser()
        roots += [p for p in py.absolute().parents][:4]  # <root>/.venv/bin/python or <root>/.venv/Scripts/python.exe
    for root in roots:
        if (root / "backend" / "__init__.py").is_file() and (root / "backend" / "cli.py").is_file():
            return root
    return None


def _checkout(settings: BackendSettings) -> Path | None:
    return Path(settings.checkout) if settings.checkout else find_checkout(settings.python)


def _default_flame(checkout: Path | None, environ=os.environ) -> Path | None:
    env = environ.get(protocol.ENV_FLAME, "")
    if env:
        path = Path(env).expanduser()
        if path.is_dir():
            return next((path / n for n in protocol.FLAME_FILE_NAMES if (path / n).is_file()), None)
        return path if path.is_file() else None
    if checkout is not None:
        folder = checkout.parent / "shared" / "assets" / "flame"  # the development default
        return next((folder / n for n in protocol.FLAME_FILE_NAMES if (folder / n).is_file()), None)
    return None


def check_setup(settings: BackendSettings, environ=os.environ) -> str | None:
    """None when the backend can be started, else one line saying what is missing and the fix."""
    if not settings.python:
        return BACKEND_NOT_FOUND
    if not Path(settings.python).expanduser().is_file():
        return f"Backend Python not found at {settings.python}. " + BACKEND_NOT_FOUND
    checkout = _checkout(settings)
    if checkout is None or not (checkout / "backend" / "cli.py").is_file():
        return (f"Backend code not found beside {settings.python}: set Preferences > Backend Python to the "
                ".venv/bin/python of a MicroFace checkout")
    backend, addon = _backend_version(checkout), addon_version()
    if backend and addon and backend != addon:
        return (f"The backend at {checkout} is version {backend} and this add-on {addon}: install the matching "
                f"MicroFace zip, or update the checkout")
    if settings.flame:
        if not Path(settings.flame).expanduser().is_file():
            return f"Head model not found at {settings.flame}: set Preferences > Head Model to a FLAME .pkl"
    elif _default_flame(checkout, environ) is None:
        return ("No head model: set Preferences > Head Model to a FLAME .pkl (FLAME 2020/2023 from "
                "flame.is.tue.mpg.de, or the open stand-in microface_ict_flame.pkl)")
    if not settings.cache_dir:
        return "No cache folder: set Preferences > Cache Folder"
    if settings.device.lower() not in _DEVICES:
        return f"Unknown device {settings.device!r}: pick Auto, CPU or CUDA in the preferences"
    return None


def _stat(path: str | Path | None) -> list:
    """[absolute path, size, mtime_ns] of a file, or [path, None, None] when it is absent."""
    if not path:
        return [None, None, None]
    p = Path(path).expanduser().absolute()
    try:
        st = p.stat()
        return [str(p), st.st_size, st.st_mtime_ns]
    except OSError:
        return [str(p), None, None]


def _backend_version(checkout: Path | None) -> str:
    try:
        text = (checkout / "backend" / "__init__.py").read_text(encoding="utf-8")
        m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", text)
        return m.group(1) if m else ""
    except (OSError, TypeError):
        return ""


def cache_key(video: str | Path, start: int, end: int, settings: BackendSettings, environ=os.environ) -> str:
    """16 hex digits that change whenever the result would: the clip (path, size, mtime), the
    range, the head model, the network weights, the backend version and the options. The device is
    left out on purpose: CPU and CUDA give the same result to float precision."""
    checkout = _checkout(settings)
    weights = environ.get(protocol.ENV_WEIGHTS) or (checkout.joinpath(*protocol.SHIPPED_WEIGHTS) if checkout else None)
    flame = settings.flame or _default_flame(checkout, environ)
    blob = json.dumps({
        "video": _stat(video), "start": int(start), "end": int(end),
        "flame": _stat(flame), "weights": _stat(weights), "backend": _backend_version(checkout),
        "checkout": str(checkout), "fit_only": bool(settings.fit_only),
        "photometric": bool(settings.photometric), "flow": settings.flow,
        "extra": list(settings.extra_args), "assets": environ.get(protocol.ENV_ASSETS, ""),
    }, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def cache_path(video: str | Path, start: int, end: int, settings: BackendSettings, environ=os.environ) -> Path:
    """Where the result of this reconstruction is kept: ``<cache>/<clip>_<start>-<end>_<key>.npz``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(video).stem)[:60] or "clip"
    key = cache_key(video, start, end, settings, environ)
    return Path(settings.cache_dir).expanduser().absolute() / f"{stem}_{int(start)}-{int(end)}_{key}.npz"


def staging_folder(parent: Path, name: str, suffix: str = "") -> Path:
    """A new private folder ``<name>-<pid>-<random><suffix>`` in ``parent``: the process id lets
    a later run tell a killed process's leftovers from a running one's (:func:`remove_stale_staging`)."""
    return Path(tempfile.mkdtemp(prefix=f"{name}-{os.getpid()}-", suffix=suffix, dir=parent))


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":
        return True   # no safe liveness check here (os.kill would terminate it): keep the folder
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(parent: Path, start: str, suffix: str = "") -> list[Path]:
    """Remove the :func:`staging_folder` folders in ``parent`` whose names begin with ``start``
    and end with ``suffix`` and whose process no longer runs on this machine (killed outright,
    SIGKILL or power loss). Returns what was removed."""
    removed = []
    for p in parent.glob(f"{start}*{suffix}"):
        parts = p.name[:len(p.name) - len(suffix)].rsplit("-", 2)
        if p.is_dir() and len(parts) == 3 and parts[1].isdigit() and not _pid_alive(int(parts[1])):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def build_command(settings: BackendSettings, video: str | Path, output: str | Path, start: int, end: int) -> list[str]:
    """The child's argv."""
    request = protocol.ReconstructRequest(
        video=str(Path(video).expanduser().absolute()), output=str(output), start=int(start), end=int(end),
        device=settings.device.lower(), flame=str(Path(settings.flame).expanduser().absolute()) if settings.flame else None,
        fit_only=settings.fit_only, no_photometric=not settings.photometric,
        flow=settings.flow if settings.flow != "dis" else None, extra=tuple(settings.extra_args))
    return protocol.reconstruct_argv(str(Path(settings.python).expanduser()), request)


def child_env(checkout: Path, environ=os.environ) -> dict:
    """The child's environment: Blender's, without variables that would point the backend's Python
    at Blender's own library (PYTHONHOME, PYTHONPATH), with the checkout importable and output unbuffered."""
    env = {k: v for k, v in environ.items() if k not in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP")}
    env["PYTHONPATH"] = str(checkout)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass
class Progress:
    stage: str = ""
    done: int = 0
    total: int = 0

    @property
    def text(self) -> str:
        """``"flow 30/71"``; ``"starting"`` before the first line."""
        return f"{self.stage} {self.done}/{self.total}" if self.stage else "starting"

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total > 0 else 0.0


_EOF = object()


@dataclass
class Job:
    """One reconstruction: a child process, or a finished result found in the cache.

    ``state`` is "running", "done" (``output`` holds the result file), "error" (``message`` is one
    line for the user: the child's own error message where it gave one) or "cancelled".
    """

    command: list[str]
    cwd: Path
    output: Path                   # the final result file in the cache
    env: dict | None = None
    reuse: bool = True             # take a finished ``output`` as it is instead of running
    state: str = "new"
    message: str = ""
    cached: bool = False
    progress: Progress = field(default_factory=Progress)
    warnings: list = field(default_factory=list)
    returncode: int | None = None
    started: float = 0.0
    finished: float = 0.0
    _proc: subprocess.Popen | None = None
    _events: queue.Queue = field(default_factory=queue.Queue)
    _stderr: collections.deque = field(default_factory=lambda: collections.deque(maxlen=40))
    _threads: list = field(default_factory=list)
    _staging: Path | None = None
    _final_event: dict | None = None
    _eof: bool = False

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> "Job":
        """Start the child (or, for a cached result, finish at once). Never raises for a child that
        cannot start: the job ends in state "error" with the reason."""
        self.started = time.perf_counter()
        if self.reuse and self.output.is_file():
            self.cached, self.state, self.finished = True, "done", self.started
            return self
        try:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_staging(self.output.parent, ".", ".partial")   # from a Blender killed mid-run
            self._staging = staging_folder(self.output.parent, f".{self.output.stem}", ".partial")
        except OSError as exc:
            return self._fail(f"cannot write the cache folder {self.output.parent}: {exc.strerror or exc}")
        cmd = [str(self._staging / self.output.name) if c == str(self.output) else c for c in self.command]
        kwargs = {}
        if os.name == "nt":
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # a Ctrl-C in Blender's terminal is not meant for the child
        try:
            # stdin: a pipe only this process holds, never written; if Blender or the batch dies,
            # even by SIGKILL, it closes and a backend started with --exit-with-stdin stops.
            self._proc = subprocess.Popen(cmd, cwd=str(self.cwd), env=self.env, stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          encoding="utf-8", errors="replace", bufsize=1, **kwargs)
        except OSError as exc:
            self._remove_staging()
            return self._fail(f"cannot start the backend ({cmd[0]}): {exc.strerror or exc}")
        self.state = "running"
        # Both pipes are drained by threads, so a chatty child never blocks on a full pipe.
        for target, stream in ((self._read_stdout, self._proc.stdout), (self._read_stderr, self._proc.stderr)):
            t = threading.Thread(target=target, args=(stream,), name="microface-backend", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _read_stdout(self, stream) -> None:
        try:
            for line in stream:
                event = protocol.decode_event(line)   # None for a library's own print
                if event is not None:
                    self._events.put(event)
        finally:
            self._events.put(_EOF)

    def _read_stderr(self, stream) -> None:
        for line in stream:
            if line.strip():
                self._stderr.append(line.rstrip())

    def poll(self) -> list[dict]:
        """Take the events that arrived since the last call (never blocks) and update ``progress``
        and ``state``. Call from one thread only (Blender's main thread)."""
        new = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                break
            if event is _EOF:
                self._eof = True
                continue
            new.append(event)
            kind = event.get("event")
            if kind == protocol.STAGE:
                self.progress = Progress(str(event.get("stage", "")), int(event.get("done", 0) or 0),
                                         int(event.get("total", 0) or 0))
            elif kind in (protocol.DONE, protocol.ERROR):
                self._final_event = event
        if self.state == "running" and self._eof and self._proc.poll() is not None:
            self._finish()
        return new

    def _close_stdin(self) -> None:
        try:
            self._proc.stdin.close()
        except (OSError, AttributeError):
            pass

    def _finish(self) -> None:
        self.returncode = self._proc.wait()
        self._close_stdin()
        for t in self._threads:
            t.join(timeout=1.0)  # stderr may trail stdout by a moment
        self.finished = time.perf_counter()
        event = self._final_event or {}
        produced = self._staging / self.output.name if self._staging else None
        try:
            if self.returncode == protocol.EXIT_OK and event.get("event") == protocol.DONE and produced and produced.is_file():
                os.replace(produced, self.output)
                self.warnings = list(event.get("warnings") or [])
                self.state = "done"
            elif event.get("event") == protocol.ERROR:
                self._fail(event.get("message") or "the backend failed")
            else:
                self._fail(self._crash_message())
        except OSError as exc:
            self._fail(f"cannot move the result into the cache: {exc}")
        finally:
            self._remove_staging()

    def _crash_message(self) -> str:
        """One line for a child that died without an error event (a crash, a missing module)."""
        lines = list(self._stderr)
        last = next((ln for ln in reversed(lines) if ln.startswith("error:")), None)
        if last:
            return _one_line(last[len("error:"):])
        rc = self.returncode
        why = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exit code {rc}"
        detail = _one_line(lines[-1]) if lines else ("no result was written" if rc == 0 else "no message")
        tb = max((i for i, ln in enumerate(lines) if ln.startswith("Traceback (most recent call last)")), default=None)
        if tb is not None:  # a Python traceback: its exception line ("ModuleNotFoundError: ...")
            detail = next((_one_line(ln) for ln in lines[tb + 1:] if not ln[:1].isspace()), detail)
        return f"the backend stopped ({why}): {detail}"

    def _fail(self, message: str) -> "Job":
        self.state, self.message = "error", _one_line(message)
        self.finished = self.finished or time.perf_counter()
        return self

    def _remove_staging(self) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def elapsed(self) -> float:
        return (self.finished or time.perf_counter()) - self.started if self.started else 0.0

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> str:
        """Poll until the job ends (or ``timeout`` seconds); returns ``state``. For ``-b`` and scripts."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        self.poll()
        while self.running and (deadline is None or time.perf_counter() < deadline):
            time.sleep(interval)
            self.poll()
        return self.state

    def cancel(self, grace: float = CANCEL_GRACE) -> None:
        """Stop the child: terminate, then kill after ``grace`` seconds. Its partial output is removed;
        state becomes "cancelled". A job that already ended is left as it is."""
        if self.state != "running":
            return
        proc = self._proc
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._close_stdin()
        self.returncode = proc.returncode
        for t in self._threads:
            t.join(timeout=1.0)
        self._remove_staging()
        self.state, self.message = "cancelled", "cancelled"
        self.finished = time.perf_counter()


def start_reconstruction(settings: BackendSettings, video: str | Path, start: int, end: int, *,
                         use_cache: bool = True, environ=os.environ) -> Job:
    """Start reconstructing source frames ``start..end`` (inclusive) of ``video``. The returned job
    is already "done" when the cache holds the result (and ``use_cache``), "error" when the setup is
    incomplete or the child cannot start, else "running"."""
    problem = check_setup(settings, environ)
    output = cache_path(video, start, end, settings, environ) if settings.cache_dir else Path()
    checkout = _checkout(settings)
    job = Job(command=build_command(settings, video, output, start, end) if settings.python else [],
              cwd=checkout or Path.cwd(), output=output,
              env=child_env(checkout, environ) if checkout else None)
    if problem:
        job.started = time.perf_counter()
        return job._fail(problem)
    if not Path(video).expanduser().is_file():
        job.started = time.perf_counter()
        return job._fail(f"clip not found: {video}")
    # Without the cache a fresh run still replaces the kept result only once it is complete.
    job.reuse = use_cache
    return job.start()
