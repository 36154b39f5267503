"""Ctrl-C, SIGTERM and SIGHUP: every rule about them, in one place. The CLI installs the handlers
(`entry`, each command, `sweep run`); the tracking layer asks to hold them off while a store call is
in hand. Only the standard library: the program owns Ctrl-C from its first moment.

- While the program starts and while it shuts down, Ctrl-C ends it at once: one line, exit 130.
- While a command runs, Ctrl-C raises KeyboardInterrupt, so that the command can clean up (a sweep
  marks its runs in flight KILLED); under `sweep run`, SIGTERM and SIGHUP raise `Stopped`, a
  KeyboardInterrupt that carries its signal (the exit status is 128 + the signal).
- During a call to a local store, they wait for the call to return, then act (`deferred`); a second
  one acts at once. After one, `release` lets go of what an interrupted read still holds.
"""
from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import threading
from typing import Optional

INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled as Ctrl-C is (the signal decides the exit status)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def signum_of(interrupt: KeyboardInterrupt) -> int:
    return getattr(interrupt, "signum", signal.SIGINT)


def exit_interrupted(signum=None, frame=None) -> None:
    """Ctrl-C while nothing needs cleaning up (start-up, option parsing, shutdown): stop now."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.write(2, b"interrupted\n")
    os._exit(INTERRUPTED)


def interrupt_command(signum, frame) -> None:
    """Ctrl-C while a command runs: KeyboardInterrupt, so that the command can clean up. While a
    module is loading the program stops at once instead: there C extensions (numpy's) swallow the
    exception and stay half-loaded, to fail later."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            exit_interrupted()
        frame = frame.f_back
    raise KeyboardInterrupt


def exit_on_ignored_interrupt(unraisable) -> None:
    """A Ctrl-C that lands in a finaliser or callback cannot reach the command: stop now."""
    if issubclass(unraisable.exc_type, KeyboardInterrupt):
        exit_interrupted()
    sys.__unraisablehook__(unraisable)


@contextlib.contextmanager
def signals_stop():
    """SIGTERM and SIGHUP raise `Stopped` (in `sweep run`, which ends its runs on them)."""
    def stop(signum, frame):
        raise Stopped(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


_INTERRUPTS = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]
_deferred: Optional[dict] = None  # while a store call defers interrupts: the handlers it replaced
_pending: list[int] = []          # the signals that arrived meanwhile


def _defer(signum, frame):
    if _pending:  # asked twice: act now
        _pending.clear()
        _deferred[signum](signum, frame)
    else:
        _pending.append(signum)


@contextlib.contextmanager
def deferred(protect: bool = True):
    """Ctrl-C, SIGTERM and SIGHUP wait for the call in hand to return, then act (when `protect`: the
    tracking layer asks for it around calls to a local store, where an interrupt raised inside MLflow
    or SQLAlchemy can leave a commit half-done and this process holding an SQLite lock, or come out
    as another error; a server's requests stay interruptible: they may retry for minutes). A second
    signal acts as soon as Python runs again."""
    global _deferred
    if _deferred is not None or not protect or threading.current_thread() is not threading.main_thread():
        yield  # deferred by an outer call already; or nothing to protect; or not where signals are handled
        return
    _deferred, replaced = {}, {}
    try:
        for signum in _INTERRUPTS:
            handler = signal.getsignal(signum)
            if callable(handler):  # a Python handler (which raises); the default and SIG_IGN act as they are
                _deferred[signum] = handler
                replaced[signum] = signal.signal(signum, _defer)
        yield
    finally:
        late = _restore(replaced)
        _deferred, pending = None, list(_pending)
        _pending.clear()
        if late is not None:
            raise late
        if pending:
            replaced[pending[0]](pending[0], None)


def _restore(handlers: dict) -> Optional[BaseException]:
    """Put the handlers back, all of them even when one of them fires meanwhile (what it raised is returned)."""
    raised = None
    for signum, handler in handlers.items():
        while signal.getsignal(signum) is not handler:
            try:
                signal.signal(signum, handler)
            except BaseException as exc:  # noqa: B036 - a restored handler raised: keep restoring
                raised = raised or exc
    return raised


def behind(exc: BaseException, handled: Optional[BaseException]) -> Optional[KeyboardInterrupt]:
    """The Ctrl-C (or SIGTERM/SIGHUP) that a library turned into another error while handling it
    (one inside SQLAlchemy's commit comes out as an AssertionError wrapped by MLflow); not one that
    the caller was already handling."""
    before = _chain(handled) if handled is not None else []
    return next((error for error in _chain(exc) if isinstance(error, KeyboardInterrupt)
                 and all(error is not old for old in before)), None)


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the errors it was raised from or while handling."""
    chain = []
    while exc is not None and all(exc is not seen for seen in chain):
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def release(exc: BaseException) -> None:
    """Call before writing after a Ctrl-C or signal. One that landed inside a store read leaves that
    read's cursor open in the traceback's frames, and on SQLite an open cursor holds a lock: this
    process's own writes would then wait for it (MLflow's busy timeout) and fail ("database is locked")."""
    for error in _chain(exc):
        error.__traceback__ = None
    gc.collect()  # the frames sit in reference cycles
