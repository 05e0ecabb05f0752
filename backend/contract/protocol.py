"""The backend's command-line protocol: how the Blender add-on (or any caller) runs the backend
and reads what it says. Standard library only, and self-contained: ``build.py pack`` copies this
file into the extension (``core/protocol.py``), so both halves speak from one definition.
Documented in docs/backend_protocol.md.

    python -m backend reconstruct VIDEO -o OUT.npz [--start N] [--end N] [--fps F] [--device D]
        [--flame PKL] [--fit-only] [--no-photometric] [--flow dis|tvl1] [--exit-with-stdin]

stdout carries one JSON object per line (:func:`encode_event`); lines that are not events
(a library's own prints) are to be skipped (:func:`decode_event`). The stream always ends with
a ``done`` or an ``error`` event, and the exit status says the same (:data:`EXIT_OK`, ...).
"""
from __future__ import annotations

import json
import signal
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

# Bump only when the meaning of an existing flag, event field or exit status changes; new optional
# flags and event fields keep it.
PROTOCOL_VERSION = 1

# Events: {"event": STAGE, "stage": "landmarks", "done": 40, "total": 72},
# {"event": DONE, "output": "/abs/out.npz", "frames": 72, "seconds": 21.4, "warnings": [...]},
# {"event": ERROR, "message": "..."} (one line for the user).
STAGE, DONE, ERROR = "stage", "done", "error"

EXIT_OK = 0
EXIT_INTERNAL = 1           # a bug, reported in one line ("internal error: ...")
EXIT_BAD_INPUT = 2          # bad input or setup: the message names the problem and its fix
EXIT_INTERRUPTED = 130      # Ctrl-C (SIGINT)
EXIT_SIGNAL_BASE = 128      # 128 + N: stopped by signal N (SIGTERM, SIGHUP)

# Environment variables the backend reads (each a file, or a folder holding one of its names).
ENV_FLAME = "MICROFACE_FLAME"           # the head model (.pkl)
ENV_ASSETS = "MICROFACE_ASSETS"         # folder of FLAME's companion files
ENV_WEIGHTS = "MICROFACE_WEIGHTS"       # the trained network
ENV_FAN_DIR = "MICROFACE_FAN_DIR"       # FAN 68-point weights
ENV_PYTHON = "MICROFACE_PYTHON"         # read by the add-on: the backend's interpreter

SHIPPED_WEIGHTS = ("weights", "microface.pt")   # in the checkout
FLAME_FILE_NAMES = ("generic_model.pkl", "flame2023.pkl", "microface_ict_flame.pkl")   # looked for in a folder
RESULT_SUFFIX = ".npz"


@dataclass(frozen=True)
class ReconstructRequest:
    """One ``reconstruct`` run as the add-on asks for it; None and False leave the backend's default."""

    video: str
    output: str
    start: int | None = None        # first source frame, inclusive
    end: int | None = None          # last source frame, inclusive
    fps: float | None = None        # the clip's frame rate, overriding the container's
    device: str | None = None       # "auto", "cpu" or "cuda[:N]"
    flame: str | None = None        # head model .pkl
    fit_only: bool = False          # the static landmark fit only (its old name --no-refine is read for one more release)
    no_photometric: bool = False
    flow: str | None = None         # "dis" or "tvl1"
    exit_with_stdin: bool = True    # stop when the caller, holding stdin open, dies
    extra: tuple[str, ...] = field(default_factory=tuple)   # further flags, passed as they are


def reconstruct_argv(python: str, request: ReconstructRequest) -> list[str]:
    """The child's argv for ``request``, run with the interpreter ``python``."""
    r = request
    cmd = [python, "-m", "backend", "reconstruct", r.video, "-o", r.output]
    for flag, value in (("--start", r.start), ("--end", r.end), ("--fps", r.fps), ("--device", r.device),
                        ("--flame", r.flame), ("--flow", r.flow)):
        if value is not None:
            cmd += [flag, str(int(value)) if flag in ("--start", "--end") else str(value)]
    for flag, on in (("--fit-only", r.fit_only), ("--no-photometric", r.no_photometric),
                     ("--exit-with-stdin", r.exit_with_stdin)):
        if on:
            cmd.append(flag)
    return cmd + list(r.extra)


def stage_event(stage: str, done: int, total: int) -> dict:
    return {"event": STAGE, "stage": stage, "done": int(done), "total": int(total)}


def done_event(output, frames: int | None = None, seconds: float | None = None,
               warnings: list[str] | None = None) -> dict:
    """``output`` a path, or a list of paths (the overlay's PNGs)."""
    event = {"event": DONE, "output": output}
    if frames is not None:
        event.update(frames=int(frames), seconds=round(float(seconds or 0.0), 2), warnings=list(warnings or []))
    return event


def error_event(message: str) -> dict:
    return {"event": ERROR, "message": message}


def encode_event(event: dict) -> str:
    """One stdout line (with its newline)."""
    return json.dumps(event) + "\n"


def decode_event(line: str) -> dict | None:
    """The event on one stdout line, or None for a line that is not one."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and event.get("event") in (STAGE, DONE, ERROR) else None


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: unwinds like Ctrl-C, so partial files are removed, children
    stopped and the event stream ends with ``error``; ``code`` is the exit status, 128 + N."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.code = EXIT_SIGNAL_BASE + signum


@contextmanager
def termination_unwinds() -> Iterator[None]:
    """Within it, SIGTERM and SIGHUP raise :class:`Terminated` in the main thread (elsewhere, an
    embedding caller's thread, the signals stay as they were)."""
    def raise_terminated(signum, _frame):
        raise Terminated(signum)

    previous = {}
    try:
        for s in (getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)):
            previous[s] = signal.signal(s, raise_terminated)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
