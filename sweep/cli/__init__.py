"""`sweep`: plan, run, inspect and compare tracked MNIST MLP sweeps.

`entry` is the program (`sweep`, `python -m sweep.cli`); `main` is its click group (in app.py,
loaded on first use), one module per command: each parses its options, calls the packages below it
(it may import any of them) and prints. This module imports only the standard library and sweep.interrupts, so that
`entry` owns Ctrl-C from its first moment (the rules are sweep/interrupts.py's).
"""
from __future__ import annotations

import atexit
import gc
import signal
import sys

from ..interrupts import exit_interrupted, exit_on_ignored_interrupt


def entry() -> None:
    """Run `sweep` with the command line's arguments; ends the process with the command's status.

    While a command's body runs, Ctrl-C is `interrupt_command` (see common.reports_errors); before
    (modules loading, click parsing) and after (thread joins and atexit hooks at shutdown) it is
    `exit_interrupted`."""
    signal.signal(signal.SIGINT, exit_interrupted)
    sys.unraisablehook = exit_on_ignored_interrupt
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
