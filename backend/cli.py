"""Command line: ``python -m backend reconstruct VIDEO -o OUT.npz [options]``,
``python -m backend overlay OUT.npz VIDEO -o DIR`` to check a result by eye, and
``python -m backend check`` to check the environment (backend/environment_check.py).

Progress goes to stdout as JSON lines, one event per line, and the exit status says how the run
ended: the protocol in backend/contract/protocol.py (docs/backend_protocol.md). Errors also print
one line ``error: ...`` on stderr. No traceback unless ``--debug``. The stream always ends with
``done`` or ``error``.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback

from .contract import protocol
from .errors import MicroFaceError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m backend", description="MicroFace backend")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("reconstruct", help="reconstruct a clip into a result file (.npz)")
    r.add_argument("video", help="input video file")
    r.add_argument("-o", "--output", required=True, help="result file to write (.npz)")
    r.add_argument("--start", type=int, help="first source frame (onset), inclusive")
    r.add_argument("--end", type=int, help="last source frame (offset), inclusive")
    r.add_argument("--fps", type=float, help="override the container's frame rate")
    r.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    r.add_argument("--flame", help="FLAME .pkl (else $MICROFACE_FLAME, else the development default)")
    r.add_argument("--assets", help="folder with FLAME_masks.pkl and the landmark embeddings (else $MICROFACE_ASSETS)")
    r.add_argument("--weights", help="trained network (else $MICROFACE_WEIGHTS, else the shipped weights/microface.pt)")
    r.add_argument("--fit-only", "--no-refine", dest="fit_only", action="store_true",
                   help="the static landmark fit only, without the flow reader or the network (the tracking baseline; --no-refine, its old name, works for one release)")
    r.add_argument("--network", action="store_true",
                   help="also run the learned network: its mesh deformation on the reader's motion, or with "
                   "--no-reader the whole DEM + DGMD")
    r.add_argument("--fan", help="FAN 68-point weights (2DFAN4 .zip) or their folder (else $MICROFACE_FAN_DIR, "
                   "else torch's hub cache; without them the 68 points come from the fitted mesh)")
    r.add_argument("--face-index", type=int, help="which face when several are visible: 0 = largest (default)")
    r.add_argument("--flow", choices=("dis", "tvl1"),
                   help="optical flow: DIS (default; the shipped weights were trained on it) or TV-L1 (the paper's)")
    r.add_argument("--drift-sigma", type=float, metavar="SECONDS",
                   help="the network's expression drift slower than this is taken from the landmark fit "
                   "(Gaussian sigma; default 0.5, 0 = off)")
    pg = r.add_mutually_exclusive_group()
    pg.add_argument("--photometric", dest="photometric", action="store_true", default=None,
                    help="correct the micro-expression from the frames' colours on ranges of at most 1 s (off by default)")
    pg.add_argument("--no-photometric", dest="photometric", action="store_false", help="without it (the default)")
    r.add_argument("--photometric-weight", type=float, metavar="LAMBDA",
                   help="prior weight of the photometric refinement: larger trusts the network more (default 1000)")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--reader", dest="reader", action="store_true", default=None,
                   help="read the micro-expression from the flow through the fitted head (backend/capture/flow_reader.py)")
    g.add_argument("--no-reader", dest="reader", action="store_false", help="without the flow reader")
    r.add_argument("--reader-weight", type=float, metavar="LAMBDA",
                   help="the flow reader's prior weight, fixed: larger reads less motion (default: set from the "
                        "clip's own noise, ReaderConfig)")
    r.add_argument("--iters", type=int, help="fit iterations")
    r.add_argument("--focal", type=float, help="camera focal length in source pixels (default: max(width, height))")
    r.add_argument("--quiet", action="store_true", help="no progress lines, only the final one")
    r.add_argument("--exit-with-stdin", action="store_true",
                   help="stop, as on SIGTERM, when standard input closes: a parent that holds it open and "
                        "dies, even by SIGKILL, takes the run with it")
    r.add_argument("--debug", action="store_true", help="show tracebacks for internal errors")
    c = sub.add_parser("check", help="check that this interpreter can run the backend: imports and a tiny "
                                     "forward pass of each model (what the add-on's Set Up Backend runs)")
    c.add_argument("--weights", help="trained network (else $MICROFACE_WEIGHTS, else the shipped weights/microface.pt)")
    c.add_argument("--debug", action="store_true", help="show tracebacks for internal errors")
    o = sub.add_parser("overlay", help="draw a result's meshes over its source frames, as PNGs")
    o.add_argument("result", help="result file (.npz)")
    o.add_argument("video", help="the video the result was made from")
    o.add_argument("-o", "--output", required=True, help="folder for the PNGs")
    o.add_argument("--frames", type=int, nargs="*", help="source frame numbers (default: first, middle, last)")
    o.add_argument("--debug", action="store_true", help="show tracebacks for internal errors")
    return p


def _emit(event: dict) -> None:
    sys.stdout.write(protocol.encode_event(event))
    sys.stdout.flush()


def _fail(message: str, code: int) -> int:
    _emit(protocol.error_event(message))
    print(f"error: {message}", file=sys.stderr)
    return code


def _check(weights: str | None) -> int:
    from .config import WEIGHTS_DIR, resolve_asset
    from .environment_check import run_checks

    checks = run_checks(resolve_asset("weights", weights, folders=(WEIGHTS_DIR,)))
    for i, c in enumerate(checks):
        _emit({**protocol.stage_event("check", i + 1, len(checks)), "name": c.name, "ok": c.ok, "detail": c.detail})
    failed = [c for c in checks if not c.ok]
    if failed:
        return _fail("backend check failed: " + "; ".join(f"{c.name}: {c.detail}" for c in failed),
                     protocol.EXIT_BAD_INPUT)
    _emit(protocol.done_event(""))
    return protocol.EXIT_OK


_RETERMINATE_S = 5.0   # how long an interrupt may go unanswered before it is sent again


def main(argv: list[str] | None = None) -> int:
    import threading

    args = _parser().parse_args(argv)
    ended = threading.Event()
    try:
        with protocol.termination_unwinds():
            return _main(args, ended)
    finally:
        ended.set()


def _watch_stdin(ended) -> None:
    """Block until standard input closes, then interrupt the main thread as SIGTERM would, again
    every few seconds until ``ended`` (a threading.Event) is set: a C extension that imports a
    module can print the interrupt raised there and carry on, and the run must still stop."""
    import _thread

    try:
        fd = sys.stdin.fileno()
        # os.read, not sys.stdin: a daemon thread blocked in the buffered reader aborts the
        # interpreter at its exit (it cannot take the buffer's lock).
        while os.read(fd, 65536):
            pass
    except (OSError, ValueError):
        pass
    while not ended.is_set():
        _thread.interrupt_main(signal.SIGTERM)
        ended.wait(_RETERMINATE_S)


def _main(args: argparse.Namespace, ended) -> int:
    try:
        if getattr(args, "exit_with_stdin", False):
            import threading

            threading.Thread(target=_watch_stdin, args=(ended,), name="microface-stdin", daemon=True).start()
        if args.command == "check":
            return _check(args.weights)
        if args.command == "overlay":
            from .overlay import overlay_frames

            paths = overlay_frames(args.result, args.video, args.output, args.frames)
            _emit(protocol.done_event([str(p) for p in paths]))
            return protocol.EXIT_OK
        from .config import ReconstructConfig
        from .pipeline import reconstruct

        cfg = ReconstructConfig(device=args.device, flame=args.flame, assets=args.assets, weights=args.weights,
                                network=args.network and not args.fit_only)
        cfg.video.start, cfg.video.end, cfg.video.fps = args.start, args.end, args.fps
        cfg.landmarks.face_index = args.face_index
        cfg.landmarks.fan = args.fan
        if args.flow:
            cfg.flow.method = args.flow
        if args.drift_sigma is not None:
            cfg.drift_sigma_s = args.drift_sigma
        if args.photometric is not None:
            cfg.photometric.enabled = args.photometric
        if args.photometric_weight is not None:
            cfg.photometric.prior_weight = args.photometric_weight
        if args.reader is not None:
            cfg.reader.enabled = args.reader
        if args.fit_only:
            cfg.reader.enabled = False
        if args.reader_weight is not None:
            cfg.reader.prior_weight, cfg.reader.noise_weight = args.reader_weight, 0.0
        if args.iters is not None:
            cfg.fit.iters = args.iters
        cfg.fit.focal = args.focal
        last = {}

        def progress(stage: str, done: int, total: int) -> None:
            # Throttle to about 10 lines per stage.
            step = max(1, total // 10)
            if not args.quiet and (done == total or done - last.get(stage, -step) >= step):
                last[stage] = done
                _emit(protocol.stage_event(stage, done, total))

        t0 = time.perf_counter()
        out, result = reconstruct(args.video, args.output, cfg, progress)
        _emit(protocol.done_event(str(out), result.n_frames, time.perf_counter() - t0,
                                  result.meta.get("warnings", [])))
        return protocol.EXIT_OK
    except MicroFaceError as exc:
        return _fail(str(exc), exc.code)
    except protocol.Terminated as exc:
        return _fail(f"terminated by {exc}", exc.code)
    except KeyboardInterrupt:
        return _fail("interrupted", protocol.EXIT_INTERRUPTED)
    except Exception as exc:  # a bug, not bad input: still one line for the user
        if args.debug:
            traceback.print_exc()
        msg = " ".join(f"internal error: {type(exc).__name__}: {exc}".split())
        return _fail(msg + " (rerun with --debug for details)", protocol.EXIT_INTERNAL)
