"""A Ctrl-C can arrive anywhere inside MLflow and SQLAlchemy. Raised there, it can leave a commit
half-done and this process holding an SQLite lock (its next write then fails after 20 s: "database is
locked"), or come out as another error (an AssertionError from SQLAlchemy's commit, a store error:
exit 2 instead of 130). `tracking` defers it to the end of the store call; a second Ctrl-C acts at
once, and must still come out as KeyboardInterrupt and leave the store writable."""
import os
import signal
import sqlite3
import sys

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from sweep import tracking
from sweep.tracking.location import open_store

pytestmark = pytest.mark.system  # subprocesses, signals, clusters, store races

SECOND_POINTS = 6  # moments of a call at which a Ctrl-C is followed by a second one


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("interrupts")
    uri = open_store(f"sqlite:///{tmp_path}/mlflow.db")
    experiment_id = tracking.ensure_experiment(uri, "e")
    runs = [tracking.create_run(uri, experiment_id, f"r{i}", {"k": str(i)}) for i in range(5)]
    for run_id in runs:
        tracking.log_batch(uri, run_id, metrics=[("m", 0.5, 0)], params={"p": "1"})
    return uri, experiment_id, runs, tmp_path / "mlflow.db"


def locked(path) -> bool:
    """Whether some connection holds a lock on the SQLite file (another connection cannot write)."""
    with sqlite3.connect(path, timeout=0.05) as db:
        try:
            db.execute("BEGIN EXCLUSIVE")
            db.rollback()
            return False
        except sqlite3.OperationalError:
            return True


def line_events(call) -> int:
    """How many trace events `call` takes, once warm (the first call also compiles queries)."""
    call()
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        count += 1
        return tracer

    sys.settrace(tracer)
    try:
        call()
    finally:
        sys.settrace(None)
    return count


def interrupted_at(call, moments=frozenset()):
    """Run `call`, sending this process SIGINT (as Ctrl-C does) at each of its trace events
    `moments`; what came out (None when nothing did)."""
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        count += 1
        if count in moments:
            os.kill(os.getpid(), signal.SIGINT)
        return tracer

    sys.settrace(tracer)
    try:
        call()
    except BaseException as exc:  # noqa: B036 - what came out is the subject of the test
        return exc
    finally:
        sys.settrace(None)
    return None


@pytest.fixture
def ctrl_c_raises():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def calls_of(store):
    uri, experiment_id, runs, _ = store
    return {"read": lambda: tracking.search(uri, experiment_id, ""), "write": written(store, "x")[0]}


@pytest.fixture
def sigterm_raises():
    from sweep.interrupts import signals_stop

    with signals_stop():  # SIGTERM and SIGHUP raise as `sweep run` has them raise
        yield


def written(store, label):
    """A write that labels run 0, and a check that it landed whole."""
    uri, _, runs, _ = store

    def write():
        tracking.log_batch(uri, runs[0], metrics=[("m", 0.25, 1)], tags={"t": label})

    def landed():
        return tracking.client(uri).get_run(runs[0]).data.tags.get("t") == label
    return write, landed


@pytest.mark.parametrize("moment", ["after_cursor_execute", "commit"])
@pytest.mark.parametrize("sent", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_as_sqlalchemy_executes_or_commits_acts_when_the_store_call_is_done(
        store, ctrl_c_raises, sigterm_raises, moment, sent):
    uri, experiment_id, runs, path = store
    for what in ("read", "write", "end a run"):
        for nth in range(1, 8):  # the nth such moment of the call
            write, landed = written(store, f"{what} {nth}")
            call, done = {"read": (lambda: tracking.search(uri, experiment_id, ""), lambda: True),
                          "write": (write, landed),
                          "end a run": (lambda: tracking.set_status(uri, runs[1], "KILLED"),
                                        lambda: tracking.client(uri).get_run(runs[1]).info.status == "KILLED")}[what]
            tracking.set_status(uri, runs[1], "RUNNING")
            seen = 0

            def interrupt(*args, **kwargs):
                nonlocal seen
                seen += 1
                if seen == nth:
                    os.kill(os.getpid(), sent)

            event.listen(Engine, moment, interrupt)
            try:
                came_out = interrupted_at(call)
            finally:
                event.remove(Engine, moment, interrupt)
            if seen < nth:
                break  # the call has fewer such moments
            assert isinstance(came_out, KeyboardInterrupt), f"{what}, {moment} {nth}: {came_out!r}"
            assert getattr(came_out, "signum", signal.SIGINT) == sent
            del came_out
            assert not locked(path), f"a signal at {what}'s {moment} {nth} left this process holding a lock"
            assert done(), f"{what} was interrupted at its {moment} {nth} instead of being done whole"


def test_a_store_error_while_an_interrupt_is_handled_is_a_store_error(store):
    uri, experiment_id, runs, path = store
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        with pytest.raises(tracking.TrackingError):
            tracking.set_status(uri, "no-such-run", "KILLED")


def test_the_handlers_are_put_back_after_each_store_call(store, ctrl_c_raises, sigterm_raises):
    uri, experiment_id, runs, path = store
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    tracking.search(uri, experiment_id, "")
    with pytest.raises(tracking.TrackingError):
        tracking.set_status(uri, "no-such-run", "KILLED")
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_second_ctrl_c_acts_inside_the_store_call(store, ctrl_c_raises):
    uri, experiment_id, runs, path = store
    write, landed = written(store, "second")
    executed = 0

    def count(*args, **kwargs):
        nonlocal executed
        executed += 1
        if executed in (1, 2):
            os.kill(os.getpid(), signal.SIGINT)

    event.listen(Engine, "after_cursor_execute", count)
    try:
        came_out = interrupted_at(write)
    finally:
        event.remove(Engine, "after_cursor_execute", count)
    assert isinstance(came_out, KeyboardInterrupt)
    assert executed == 2 and not landed()  # stopped at the second Ctrl-C, not after the write
    del came_out
    assert not locked(path)


@pytest.mark.parametrize("what", ["read", "write"])
def test_a_second_ctrl_c_anywhere_in_a_call_is_a_ctrl_c_and_leaves_the_store_writable(store, ctrl_c_raises, what):
    uri, experiment_id, runs, path = store
    call = calls_of(store)[what]
    total = line_events(call)
    for moment in range(1, total * 9 // 10, max(1, total // SECOND_POINTS)):
        came_out = interrupted_at(call, {moment, moment + 20})
        if came_out is None:
            continue
        assert isinstance(came_out, KeyboardInterrupt), f"moment {moment} of {total}: {came_out!r}"
        del came_out
        assert not locked(path), f"a Ctrl-C at moment {moment} of {total} left this process holding a lock"
    tracking.set_status(uri, runs[1], "KILLED")  # and MLflow itself still writes
