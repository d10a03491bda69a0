"""`python -m bitsieve` and the `bitsieve` command. Importing the CLI takes a moment (typer, rich, and
torch for some commands); a Ctrl-C in that moment exits 130 with the same one line as later. Python
swallows a KeyboardInterrupt that lands in a finaliser or an import-lock callback ("Exception ignored"), so
the handler also remembers the signal and the exit code is checked against it."""
import _thread
import signal
import sys
import threading
import time

_seen: list[int] = []
_waiter: threading.Thread | None = None


def _importing(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _raise_after_import():
    """Wait until the main thread has left the import it was in, then deliver the Ctrl-C there."""
    main = threading.main_thread().ident
    while _importing(sys._current_frames().get(main)):
        time.sleep(0.02)
    _thread.interrupt_main(signal.SIGINT)


def _on_sigint(signum, frame):
    """A KeyboardInterrupt raised inside an extension's import (torch's) can abort the interpreter, so a
    Ctrl-C that arrives during an import is delivered as soon as the import is done."""
    _seen.append(signum)
    if _importing(frame):
        global _waiter
        if _waiter is None or not _waiter.is_alive():
            _waiter = threading.Thread(target=_raise_after_import, daemon=True)
            _waiter.start()
        return
    raise KeyboardInterrupt


def _interrupted() -> int:
    print("bitsieve: interrupted", file=sys.stderr)
    return 130


def _unraisable(u):
    if not isinstance(u.exc_value, KeyboardInterrupt):  # a swallowed Ctrl-C is reported by run(), once
        sys.__unraisablehook__(u)


def run() -> int:
    signal.signal(signal.SIGINT, _on_sigint)
    sys.unraisablehook = _unraisable
    try:
        from .cli import main
        if _seen:
            return _interrupted()
    except KeyboardInterrupt:
        return _interrupted()
    rv = main()
    return _interrupted() if _seen and rv == 0 else rv


if __name__ == "__main__":
    sys.exit(run())
