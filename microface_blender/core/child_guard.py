"""Run a command so that it never outlives whoever started it (standard library only).

    python child_guard.py COMMAND [ARG...]

The command runs in its own process group with this process's stdout and stderr. It is stopped,
with all its children (pip's build steps), when this process gets SIGTERM, SIGINT or SIGHUP, or when
its standard input closes: the parent holds that pipe, so even a parent killed by SIGKILL takes
the command with it. Exits with the command's status. Used for Set Up Backend's steps
(backend_setup.py), which, unlike the backend, cannot watch their own stdin.
"""
import os
import signal
import subprocess
import sys
import threading


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        if os.name == "nt":
            proc.terminate()
        else:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        if os.name == "nt":
            proc.kill()
        else:
            os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: child_guard.py COMMAND [ARG...]", file=sys.stderr)
        return 2
    kwargs = {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)} if os.name == "nt" \
        else {"start_new_session": True}
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, **kwargs)

    def on_signal(signum, _frame):
        _stop(proc)
        os._exit(128 + signum)

    for name in ("SIGTERM", "SIGINT", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), on_signal)

    def watch_stdin():
        try:
            while os.read(sys.stdin.fileno(), 65536):
                pass
        except (OSError, ValueError):
            pass
        _stop(proc)

    threading.Thread(target=watch_stdin, daemon=True).start()
    return proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
