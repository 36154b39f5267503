"""A run's life under faults, each injected from outside as a user or the system would: a suspended
holder, a run that kills its worker, a resume right after a crash, a second live sweep, a closed
stdout, the main process killed alone, SIGTERM and SIGHUP. Every test ends with every key FINISHED
exactly once (or, for the crashing run, FAILED with its reason) and nothing left RUNNING."""
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from sweep.cli import main
from sweep.queue import schema
from sweep.spec import expand, load_spec

from conftest import (
    DROWSY,
    SLEEPY,
    assert_each_key_finished_once,
    finish,
    holder_pid,
    store_runs,
    sweep_process,
    training_runs,
    wait_until,
    write_spec,
)

pytestmark = pytest.mark.system  # subprocesses, signals, clusters, store races

# Runs of about 2.5 s each (SLEEPY: 0.5 s an epoch, sleeping; DROWSY: 1 s), 4 runs, 2 workers.
SLOW = """
experiment: tiny
defaults: {epochs: 5}
grids:
  g: {lr: [0.01, 0.02, 0.03, 0.05]}
"""


def keys_of(spec):
    return {r.key for r in expand(load_spec(spec))}


def running():
    return [r for r in store_runs() if r.info.status == "RUNNING"]


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return open(f"/proc/{pid}/stat").read().split(")")[1].split()[0] != "Z"


def assert_a_resume_completes(spec):
    """`sweep run` again, here: it exits 0 and every run of the sweep is FINISHED exactly once."""
    again = CliRunner().invoke(main, ["run", spec, "--jobs", "2"])
    assert again.exit_code == 0, again.output
    assert_each_key_finished_once(training_runs(), keys_of(spec))


def parent_status():
    uri = os.environ["MLFLOW_TRACKING_URI"]
    experiment = MlflowClient(uri).get_experiment_by_name("tiny").experiment_id
    return MlflowClient(uri).search_runs([experiment], schema.PARENT_RUNS)[0].info.status


def stop_between_writes(pid: int, group: bool, db: Path) -> None:
    """SIGSTOP `pid` (its whole group with `group`) at a moment when it holds no lock on the SQLite store:
    a process stopped inside a transaction blocks every other writer (SQLite's lock, not the queue's),
    and those give up after MLflow's 20 s with "database is locked"."""
    send = os.killpg if group else os.kill
    for _ in range(50):
        send(pid, signal.SIGSTOP)
        time.sleep(0.2)  # the signal has reached every process of the group
        probe = sqlite3.connect(db, timeout=0.1, isolation_level=None)
        try:
            probe.execute("BEGIN EXCLUSIVE")
            probe.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            send(pid, signal.SIGCONT)
            time.sleep(0.05)
        finally:
            probe.close()
    raise AssertionError("the sweep never let go of the store's lock")


def finished() -> int:
    return sum(r.info.status == "FINISHED" for r in store_runs())


def test_a_sweep_ends_when_its_runs_are_done_whatever_a_status_beside_it_read(stored):
    """`sweep status` syncs the mirror that the sweep reads too. It once moved a cursor that every
    process shared: runs that had ended more than the mirror's 10 s margin before the last one were
    then never seen by the sweep, which dispatched them again and again, and never ended. Here the
    sweep reads nothing while its round lasts (the longest run keeps it open): the short runs end 13 s
    before the long one, and a status reads them all before the sweep does."""
    spec = write_spec(stored, "experiment: tiny\ngrids:\n  long: {epochs: [30]}\n"
                              "  short: {epochs: [2], lr: [0.01, 0.02]}\n  longest: {epochs: [50], lr: [0.03]}\n")
    proc = sweep_process("run", spec, "--jobs", 2, "--engine", "solo", faults=SLEEPY)
    wait_until(lambda: finished() == 3, timeout=120)          # long and short: longest is still training
    status = CliRunner().invoke(main, ["status", spec])      # reads (and mirrors) the runs that ended
    assert status.exit_code == 0 and "3 done" in status.output and "1 running" in status.output, status.output
    out = finish(proc, 120)
    assert proc.returncode == 0, out
    assert "  skip  " not in out, out                        # nothing dispatched again
    assert_each_key_finished_once(training_runs(), keys_of(spec))
    assert parent_status() == "FINISHED"


def test_a_local_worker_trains_and_tracks_its_runs_without_importing_mlflow(stored):
    """Its store requests are made by the sweep's process (sweep.tracking.relay): the worker's start-up
    is torch and MNIST, as `python -m mnist_core`'s, not MLflow's too."""
    spec = write_spec(stored, "experiment: tiny\ngrids:\n  g: {epochs: [1], lr: [0.01, 0.02, 0.03]}\n")
    marks = stored / "imports"
    marks.mkdir()
    proc = sweep_process("run", spec, "--jobs", 2, "--engine", "solo", faults={"imports": str(marks)})
    out = finish(proc, 120)
    assert proc.returncode == 0, out
    said = {mark.name: mark.read_text() for mark in marks.iterdir()}
    assert said and set(said.values()) == {""}, said  # no worker had MLflow, nor SQLAlchemy, loaded
    assert str(proc.pid) not in said
    assert_each_key_finished_once(training_runs(), keys_of(spec))


def test_a_suspended_holder_never_finishes_a_run_another_sweep_took_over_and_ends_at_once(stored):
    spec = write_spec(stored, SLOW.replace("0.01, 0.02, 0.03, 0.05", "0.01, 0.02, 0.03, 0.05, 0.07, 0.1"))
    a = sweep_process("run", spec, "--jobs", 2, "--engine", "solo", "--lease", 6, faults=DROWSY)
    held = wait_until(lambda: len(running()) == 2 and running(), timeout=120)
    stop_between_writes(a.pid, True, stored / "mlflow.db")  # Ctrl-Z stops the whole job
    time.sleep(7)                                          # past the 6 s lease
    b = sweep_process("run", spec, "--jobs", 2, "--engine", "solo", "--lease", 6, faults=DROWSY)
    out_b = finish(b, 300)                                 # its runs end over 15 s, more than the mirror's margin
    assert b.returncode == 0, out_b
    os.killpg(a.pid, signal.SIGCONT)
    continued = time.time()
    out_a = finish(a, 300)
    assert a.returncode == 0, out_a
    assert time.time() - continued < 30, out_a             # every run is done: it ends, whatever it held
    assert out_a.count("  LOST  ") == 2, out_a            # it says the runs it held were taken over
    runs = training_runs()
    assert_each_key_finished_once(runs, keys_of(spec))
    for run in runs:
        if run.info.run_id in {r.info.run_id for r in held}:
            assert run.info.status == "KILLED" and "lapsed" in run.data.tags[schema.ERROR]
    assert parent_status() == "FINISHED"
    again = CliRunner().invoke(main, ["run", spec])
    assert again.exit_code == 0 and "nothing to train: 6 of 6 runs already done" in again.output
    assert parent_status() == "FINISHED"


def test_a_run_that_kills_its_worker_fails_alone_and_every_other_run_trains(stored):
    spec = write_spec(stored, "experiment: tiny\ndefaults: {epochs: 3}\ngrids:\n  g: {lr: [0.01, 0.02, 0.03, 0.04]}\n")
    runs_by_lr = {r.config.lr: r.key for r in expand(load_spec(spec))}
    bad = runs_by_lr[0.03]
    stop = threading.Event()

    def oom_killer():  # as the kernel would: the worker holding `bad` dies whenever it trains it
        while not stop.is_set():
            for run in running():
                if run.data.tags[schema.KEY] == bad:
                    try:
                        os.kill(holder_pid(run), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            time.sleep(0.2)  # an epoch sleeps 0.5 s: the run is caught in its first

    proc = sweep_process("run", spec, "--jobs", 2, "--engine", "solo", "--retries", 1, faults=SLEEPY)
    killer = threading.Thread(target=oom_killer, daemon=True)
    killer.start()
    try:
        out = finish(proc, 400)
    finally:
        stop.set()
        killer.join()
    assert proc.returncode == 1, out
    assert "3 done, 0 diverged, 1 failed" in out, out
    runs = training_runs()
    assert_each_key_finished_once([r for r in runs if r.data.tags[schema.KEY] != bad], set(runs_by_lr.values()) - {bad})
    mine = [r for r in runs if r.data.tags[schema.KEY] == bad]
    assert {r.info.status for r in mine} <= {"FAILED", "KILLED"}
    assert [r for r in mine if r.info.status == "FAILED" and "worker process died" in r.data.tags[schema.ERROR]]
    innocent_failures = [r for r in runs if r.data.tags[schema.KEY] != bad and r.info.status == "FAILED"]
    assert not innocent_failures  # sharing a pool with the culprit costs a retry alone, never a failure
    assert not running()


def test_a_resume_right_after_the_whole_sweep_was_killed_trains_the_rest_at_once(stored):
    spec = write_spec(stored, SLOW)
    a = sweep_process("run", spec, "--jobs", 2, "--engine", "solo", faults=SLEEPY)     # lease 60 s
    wait_until(lambda: len(running()) == 2, timeout=120)
    os.killpg(a.pid, signal.SIGKILL)                                   # the whole job, workers too
    finish(a)
    started = time.time()
    b = sweep_process("run", spec, "--jobs", 2, "--engine", "solo")
    out = finish(b, 300)
    assert b.returncode == 0, out
    assert "4 of 4 runs to train (0 already done)" in out             # dead holders: no lease to wait out
    assert time.time() - started < 55
    assert_each_key_finished_once(training_runs(), keys_of(spec))
    assert parent_status() == "FINISHED"


def test_no_wait_exits_3_while_another_live_sweep_holds_runs(stored):
    spec = write_spec(stored, SLOW.replace("0.01, 0.02, 0.03, 0.05", "0.01, 0.02"))
    a = sweep_process("run", spec, "--jobs", 2, "--engine", "solo", faults=DROWSY)
    wait_until(lambda: len(running()) == 2, timeout=120)
    result = CliRunner().invoke(main, ["run", spec, "--no-wait"])
    assert result.exit_code == 3, result.output
    assert "nothing to train: 0 of 2 runs already done, 2 held by another process" in result.output
    assert "incomplete: 2 run(s) not done" in result.output and "held by another process" in result.output
    out = finish(a, 300)
    assert a.returncode == 0, out
    assert_each_key_finished_once(training_runs(), keys_of(spec))
    assert parent_status() == "FINISHED"


def test_a_closed_stdout_ends_the_sweep_quietly_and_a_resume_completes_it(stored):
    spec = write_spec(stored, SLOW)
    proc = sweep_process("run", spec, "--jobs", 2, "--engine", "solo", faults=SLEEPY)  # `| head -1`: one line read
    assert "runs to train" in proc.first_line
    wait_until(lambda: len(running()) == 2, timeout=120)
    proc.stdout.close()
    assert proc.wait(timeout=120) == 141
    assert not running()
    assert not [r for r in store_runs() if r.info.status == "FAILED"]  # a closed pipe is nobody's failure
    assert_a_resume_completes(spec)


def test_killing_the_main_process_alone_stops_its_workers_and_ends_their_runs(stored):
    spec = write_spec(stored, SLOW)
    proc = sweep_process("run", spec, "--jobs", 2, "--engine", "solo", faults=SLEEPY)
    holders = {holder_pid(r) for r in wait_until(lambda: len(running()) == 2 and running(), timeout=120)}
    os.kill(proc.pid, signal.SIGKILL)                                  # the main process only
    finish(proc)
    wait_until(lambda: not any(alive(pid) for pid in holders), timeout=15)
    wait_until(lambda: not running(), timeout=15)
    killed = [r for r in store_runs() if r.info.status == "KILLED"]
    assert len(killed) == 2 and all("sweep process" in r.data.tags[schema.ERROR] for r in killed)
    assert parent_status() == "KILLED"
    assert_a_resume_completes(spec)


@pytest.mark.parametrize("signum,code,group", [(signal.SIGTERM, 143, False), (signal.SIGHUP, 129, True)],
                         ids=["SIGTERM", "SIGHUP to the process group"])  # Ctrl-C: test_sweep_run.py
def test_sigterm_and_sighup_end_the_runs_in_flight_and_a_resume_completes(stored, signum, code, group):
    spec = write_spec(stored, SLOW)
    proc = sweep_process("run", spec, "--jobs", 2, "--engine", "solo", faults=SLEEPY)
    wait_until(lambda: len(running()) == 2, timeout=120)
    if group:  # a terminal that hangs up: the sweep, its workers and loky's resource tracker
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)                                       # the main process only
    out = finish(proc, 60)  # to the end of its output: what any process of the group still printed
    assert proc.returncode == code, out
    assert "Traceback" not in out and "Error" not in out and f"interrupted by {signal.Signals(signum).name}" in out
    assert not running()
    assert parent_status() == "KILLED"
    assert_a_resume_completes(spec)


def test_ctrl_c_while_the_workers_warm_up_leaves_no_process_and_a_resume_completes(env):
    """The workers start (loading MLflow, torch and MNIST) while the sweep's process makes the store:
    a Ctrl-C then ends every process of the sweep at once and leaves no store or a consistent one."""
    spec = write_spec(env, SLOW)
    proc = sweep_process("run", spec, "--jobs", 2, started=False)
    def workers():
        found = []
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                if "LokyProcess" in " ".join(child.cmdline()):
                    found.append(child)
            except psutil.Error:
                pass  # a helper that has just ended
        return found

    def warming_up(worker):
        # What only the warm-up loads (MLflow's SQL layer, torch) is mapped in: the worker runs it.
        # Not earlier: a Ctrl-C in a worker's first fraction of a second, while CPython or loky's
        # bootstrap imports, ends it with their own traceback, before any code of ours runs.
        try:
            return any("sqlalchemy" in m.path or "torch" in m.path for m in worker.memory_maps())
        except psutil.Error:
            return False

    started = wait_until(lambda: (lambda found: found if len(found) >= 2 and all(map(warming_up, found)) else None)(
        workers()), timeout=60, every=0.01)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C at a terminal: the sweep, its workers, loky's tracker
    out = finish(proc, 60)
    assert proc.returncode == 130 and "Traceback" not in out, out
    assert out.strip().splitlines()[-1].startswith("interrupted"), out
    wait_until(lambda: not any(alive(p.pid) for p in started), timeout=15)
    assert not running() and not list(env.glob("mlflow.db.tmp-*"))
    assert_a_resume_completes(spec)


def test_ctrl_c_while_another_process_holds_the_store_locked_is_one_line(stored):
    spec = write_spec(stored, SLOW)
    proc = sweep_process("run", spec, "--jobs", 2, "--engine", "solo", faults=SLEEPY)
    wait_until(lambda: len(running()) == 2, timeout=120)
    locker = sqlite3.connect(stored / "mlflow.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")                    # another process writing, for longer than MLflow waits
    try:
        proc.send_signal(signal.SIGINT)
        out = finish(proc, 120)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert proc.returncode == 130, out
    assert "Traceback" not in out, out
    said = [line for line in out.splitlines() if line.strip()]
    assert len(said) <= 3 and said[-1].startswith("interrupted by SIGINT"), out  # what it trains, then one line
