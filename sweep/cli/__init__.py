"""`sweep`: plan, run, inspect and compare tracked MNIST MLP sweeps.

`entry` is the program (`sweep`, `python -m sweep.cli`); `main` is its click group (in app.py,
loaded on first use). This module imports only the standard library, so that `entry` owns Ctrl-C
from its first moment: a Ctrl-C at any time ends the program with one line and exit status 130.
"""
from __future__ import annotations

import atexit
import gc
import os
import signal
import sys

INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C


def exit_interrupted(signum=None, frame=None) -> None:
    """Ctrl-C while nothing needs cleaning up (start-up, option parsing, shutdown): stop now."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.write(2, b"interrupted\n")
    os._exit(INTERRUPTED)


def interrupt_command(signum, frame) -> None:
    """Ctrl-C while a command runs: KeyboardInterrupt, so that the command can clean up (a sweep
    marks its runs in flight KILLED). While a module is loading the program stops at once instead:
    there C extensions (numpy's) swallow the exception and stay half-loaded, to fail later."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            exit_interrupted()
        frame = frame.f_back
    raise KeyboardInterrupt


def _exit_on_ignored_interrupt(unraisable) -> None:
    """A Ctrl-C that lands in a finaliser or callback cannot reach the command: stop now."""
    if issubclass(unraisable.exc_type, KeyboardInterrupt):
        exit_interrupted()
    sys.__unraisablehook__(unraisable)


def entry() -> None:
    """Run `sweep` with the command line's arguments; ends the process with the command's status.

    While a command's body runs, Ctrl-C is `interrupt_command` (see common.reports_errors); before
    (modules loading, click parsing) and after (thread joins and atexit hooks at shutdown) it is
    `exit_interrupted`."""
    signal.signal(signal.SIGINT, exit_interrupted)
    sys.unraisablehook = _exit_on_ignored_interrupt
    atexit.register(gc.freeze)  # runs last: the interpreter's final collection skips what is loaded
    from .app import main

    try:
        main.main(prog_name="sweep")
    finally:
        _flush_output()
        # CPython remembers a KeyboardInterrupt that left an exec() of a string (dataclasses run
        # one per class they build), even one that was caught, and then ends the process by SIGINT
        # instead of with our exit status; running another such exec() clears that memory.
        exec("")


def _flush_output() -> None:
    """Write out what is buffered now: a Ctrl-C during shutdown exits without flushing."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        from .common import quiet_exit_on_closed_stdout

        quiet_exit_on_closed_stdout()
    except (OSError, ValueError):
        pass


def __getattr__(name):
    if name == "main":
        from .app import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
