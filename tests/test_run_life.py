"""A run's life under faults, each injected from outside as a user or the system would: a suspended
holder, a run that kills its worker, a resume right after a crash, a second live sweep, a closed
stdout, the main process killed alone, SIGTERM and SIGHUP. Every test ends with every key FINISHED
exactly once (or, for the crashing run, FAILED with its reason) and nothing left RUNNING."""
import os
import signal
import threading
import time

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from sweep.cli import main
from sweep.spec import expand, load_spec
from sweep.queue import schema

from conftest import (assert_each_key_finished_once, finish, holder_pid, store_runs, sweep_process, training_runs,
                      wait_until, write_spec)

# Runs of a few seconds each on the tiny data (4 runs, 2 workers).
SLOW = """
experiment: tiny
defaults: {epochs: 150, width: 256}
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


def parent_status():
    uri = os.environ["MLFLOW_TRACKING_URI"]
    experiment = MlflowClient(uri).get_experiment_by_name("tiny").experiment_id
    return MlflowClient(uri).search_runs([experiment], schema.PARENT_RUNS)[0].info.status


def test_a_suspended_holder_never_finishes_a_run_another_sweep_took_over(env):
    spec = write_spec(env, SLOW)
    a = sweep_process("run", spec, "--jobs", 2, "--engine", "solo", "--lease", 6)
    held = wait_until(lambda: len(running()) == 2 and running(), timeout=120)
    os.killpg(a.pid, signal.SIGSTOP)                       # Ctrl-Z stops the whole job
    time.sleep(7)                                          # past the 6 s lease
    b = sweep_process("run", spec, "--jobs", 2, "--engine", "solo", "--lease", 6)
    out_b = finish(b, 300)
    assert b.returncode == 0, out_b
    os.killpg(a.pid, signal.SIGCONT)
    out_a = finish(a, 300)
    assert a.returncode == 0, out_a
    assert out_a.count("  LOST  ") == 2, out_a            # it says the runs it held were taken over
    runs = training_runs()
    assert_each_key_finished_once(runs, keys_of(spec))
    for run in runs:
        if run.info.run_id in {r.info.run_id for r in held}:
            assert run.info.status == "KILLED" and "lapsed" in run.data.tags[schema.ERROR]
    assert parent_status() == "FINISHED"


def test_a_run_that_kills_its_worker_fails_alone_and_every_other_run_trains(env):
    spec = write_spec(env, "experiment: tiny\ndefaults: {epochs: 60, width: 128}\n"
                           "grids:\n  g: {lr: [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08]}\n")
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
            time.sleep(0.02)

    proc = sweep_process("run", spec, "--jobs", 2, "--engine", "solo", "--retries", 1)
    killer = threading.Thread(target=oom_killer, daemon=True)
    killer.start()
    try:
        out = finish(proc, 400)
    finally:
        stop.set()
        killer.join()
    assert proc.returncode == 1, out
    assert "7 done, 0 diverged, 1 failed" in out, out
    runs = training_runs()
    assert_each_key_finished_once([r for r in runs if r.data.tags[schema.KEY] != bad], set(runs_by_lr.values()) - {bad})
    mine = [r for r in runs if r.data.tags[schema.KEY] == bad]
    assert {r.info.status for r in mine} <= {"FAILED", "KILLED"}
    assert [r for r in mine if r.info.status == "FAILED" and "worker process died" in r.data.tags[schema.ERROR]]
    innocent_failures = [r for r in runs if r.data.tags[schema.KEY] != bad and r.info.status == "FAILED"]
    assert not innocent_failures  # sharing a pool with the culprit costs a retry alone, never a failure
    assert not running()


def test_a_resume_right_after_the_whole_sweep_was_killed_trains_the_rest_at_once(env):
    spec = write_spec(env, SLOW)
    a = sweep_process("run", spec, "--jobs", 2, "--engine", "solo")     # lease 60 s
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


def test_no_wait_exits_3_while_another_live_sweep_holds_runs(env):
    spec = write_spec(env, SLOW.replace("0.01, 0.02, 0.03, 0.05", "0.01, 0.02"))
    a = sweep_process("run", spec, "--jobs", 2, "--engine", "solo")
    wait_until(lambda: len(running()) == 2, timeout=120)
    result = CliRunner().invoke(main, ["run", spec, "--no-wait"])
    assert result.exit_code == 3, result.output
    assert "nothing to train: 0 of 2 runs already done, 2 held by another process" in result.output
    assert "incomplete: 2 run(s) not done" in result.output and "held by another process" in result.output
    out = finish(a, 300)
    assert a.returncode == 0, out
    assert_each_key_finished_once(training_runs(), keys_of(spec))
    assert parent_status() == "FINISHED"


def test_a_closed_stdout_ends_the_sweep_quietly_and_a_resume_completes_it(env):
    spec = write_spec(env, SLOW)
    proc = sweep_process("run", spec, "--jobs", 2, "--engine", "solo")  # reads the first line: `| head -1`
    assert "runs to train" in proc.first_line
    wait_until(lambda: len(running()) == 2, timeout=120)
    proc.stdout.close()
    assert proc.wait(timeout=120) == 141
    assert not running()
    assert not [r for r in store_runs() if r.info.status == "FAILED"]  # a closed pipe is nobody's failure
    again = sweep_process("run", spec, "--jobs", 2)
    out = finish(again, 300)
    assert again.returncode == 0, out
    assert_each_key_finished_once(training_runs(), keys_of(spec))


def test_killing_the_main_process_alone_stops_its_workers_and_ends_their_runs(env):
    spec = write_spec(env, SLOW)
    proc = sweep_process("run", spec, "--jobs", 2, "--engine", "solo")
    holders = {holder_pid(r) for r in wait_until(lambda: len(running()) == 2 and running(), timeout=120)}
    os.kill(proc.pid, signal.SIGKILL)                                  # the main process only
    finish(proc)
    wait_until(lambda: not any(alive(pid) for pid in holders), timeout=15)
    wait_until(lambda: not running(), timeout=15)
    killed = [r for r in store_runs() if r.info.status == "KILLED"]
    assert len(killed) == 2 and all("sweep process" in r.data.tags[schema.ERROR] for r in killed)
    assert parent_status() == "KILLED"
    again = sweep_process("run", spec, "--jobs", 2)
    out = finish(again, 300)
    assert again.returncode == 0, out
    assert_each_key_finished_once(training_runs(), keys_of(spec))


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_end_the_runs_in_flight_and_a_resume_completes(env, signum, code):
    spec = write_spec(env, SLOW)
    proc = sweep_process("run", spec, "--jobs", 2, "--engine", "solo")
    wait_until(lambda: len(running()) == 2, timeout=120)
    proc.send_signal(signum)                                           # the main process only
    out = finish(proc, 60)
    assert proc.returncode == code, out
    assert "Traceback" not in out and f"interrupted by {signal.Signals(signum).name}" in out
    assert not running()
    assert parent_status() == "KILLED"
    again = sweep_process("run", spec, "--jobs", 2)
    out = finish(again, 300)
    assert again.returncode == 0, out
    assert_each_key_finished_once(training_runs(), keys_of(spec))
