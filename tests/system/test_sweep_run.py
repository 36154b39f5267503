"""End to end: `sweep run` through joblib workers into an MLflow store, on tiny IDX data."""
import os
import signal
import time
from collections import Counter

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from mnist_core import load_agent
from sweep.cli import main
from sweep.queue import schema
from sweep.spec import expand, load_spec

from conftest import SLEEPY, finish, finished_per_key, sweep_process, training_runs, write_spec

pytestmark = pytest.mark.system  # subprocesses, signals, clusters, store races

METRICS = {"train_loss", "train_error", "test_loss", "test_error", "lr"}


def sweep(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def check_complete(run, epochs, client):
    assert set(run.data.params) >= {"activation", "depth", "width", "lr", "momentum", "schedule", "epochs",
                                    "batch_size", "seed"}
    for metric in METRICS:
        history = client.get_metric_history(run.info.run_id, metric)
        assert sorted(m.step for m in history) == list(range(1, epochs + 1)), metric
    for metric in ("final_test_error", "best_test_error", "training_seconds"):
        assert metric in run.data.metrics
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["mnist_agent.pt"]


def test_two_worker_sweep_tracks_every_run_once(stored):
    spec = write_spec(stored, """
experiment: tiny
defaults: {epochs: 2, lr: 0.1}
grids:
  act: {activation: [relu, tanh, sigmoid]}
  depth: {depth: [1, 2]}
""")
    result = sweep("run", spec, "--jobs", 2)
    assert result.exit_code == 0, result.output
    assert "4 of 4 runs to train" in result.output and "with 2 worker(s) x 1 thread(s)" in result.output
    assert "summary: 4 done, 0 diverged, 0 failed" in result.output
    assert "sweep best" in result.output and "sweep ui" in result.output
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = training_runs()
    assert len(runs) == 4 and set(finished_per_key(runs).values()) == {1}
    parents = {r.data.tags[schema.PARENT_RUN] for r in runs}
    assert len(parents) == 1 and client.get_run(parents.pop()).info.status == "FINISHED"
    ref = next(r for r in runs if r.info.run_name == "relu-lr0.1-d2-w50-e2")
    assert ref.data.tags[schema.GRIDS] == "act,depth"
    for run in runs:
        check_complete(run, 2, client)
    agent = load_agent(client.download_artifacts(ref.info.run_id, "mnist_agent.pt", str(stored)))
    assert agent.config.lr == 0.1 and agent.metrics["final_test_error"] == ref.data.metrics["test_error"]

    again = sweep("run", spec)
    assert again.exit_code == 0 and "nothing to train: 4 of 4 runs already done" in again.output
    assert len(training_runs()) == 4

    plan = sweep("plan", spec)
    assert "4 runs in experiment 'tiny': 0 pending, 0 running, 0 failed, 4 done" in plan.output
    best = sweep("best", spec, "--by", "activation", "--format", "csv")
    assert best.exit_code == 0 and best.output.splitlines()[0].startswith("activation,lr,depth,test_error")
    assert len(best.output.splitlines()) == 4


def test_four_workers_twelve_runs_lose_nothing(stored):
    spec = write_spec(stored, """
experiment: tiny
defaults: {epochs: 3}
grids:
  g: {lr: [0.01, 0.03, 0.1, 0.3], width: [8, 16, 32]}
""")
    result = sweep("run", spec, "--jobs", 4, "--engine", "solo")  # 12 jobs: four workers log at once
    assert result.exit_code == 0, result.output
    assert "with 4 worker(s)" in result.output
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = training_runs()
    assert len(runs) == 12 and set(finished_per_key(runs).values()) == {1}
    for run in runs:
        check_complete(run, 3, client)


def test_failing_run_is_retried_and_a_hopeless_one_reported(stored):
    spec = write_spec(stored, "experiment: tiny\ndefaults: {epochs: 1}\ngrids:\n  g: {lr: [0.01, 0.1, 0.2]}\n")
    keys = {r.config.lr: r.key for r in expand(load_spec(spec))}
    faults = {"fail_once": [keys[0.01]], "fail": [keys[0.2]], "marks": str(stored)}
    proc = sweep_process("run", spec, "--jobs", 2, "--retries", 1, "--engine", "solo", faults=faults)
    out = finish(proc)
    assert proc.returncode == 1 and "summary: 2 done, 0 diverged, 1 failed" in out, out
    runs = training_runs()
    by_key = Counter((r.data.tags[schema.KEY], r.info.status) for r in runs)
    assert by_key[(keys[0.01], "FAILED")] == 1 and by_key[(keys[0.01], "FINISHED")] == 1
    assert by_key[(keys[0.2], "FAILED")] == 2 and by_key[(keys[0.2], "FINISHED")] == 0
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert all("injected failure" in r.data.tags[schema.ERROR] for r in failed)
    status = sweep("status", spec)
    assert "2 done" in status.output and "1 failed" in status.output
    assert "failed: relu-lr0.2-d2-w50-e1: RuntimeError: injected failure" in status.output

    again = sweep("run", spec)  # the fault is gone: the next run trains only the failed one
    assert again.exit_code == 0 and "1 of 3 runs to train (2 already done)" in again.output
    assert set(finished_per_key(training_runs()).values()) == {1}


def test_diverged_run_is_finished_tagged_and_left_out_of_best(stored):
    spec = write_spec(stored, "experiment: tiny\ndefaults: {epochs: 3}\ngrids:\n  g: {lr: [0.1, 100000000.0]}\n")
    result = sweep("run", spec, "--jobs", 1)
    assert result.exit_code == 0, result.output
    assert "DIVG  relu-lr1e+08-d2-w50-e3" in result.output and "1 done, 1 diverged, 0 failed" in result.output
    diverged = [r for r in training_runs() if schema.is_set(r.data.tags.get(schema.DIVERGED))]
    assert len(diverged) == 1 and diverged[0].info.status == "FINISHED"
    best = sweep("best", spec, "--by", "schedule", "--format", "json")
    assert '"lr":0.1' in best.output.replace(" ", "")


def test_sigint_kills_in_flight_runs_and_a_second_run_resumes(stored):
    spec = write_spec(stored, """
experiment: tiny
defaults: {epochs: 3}
grids:
  g: {lr: [0.01, 0.02, 0.03, 0.05, 0.07, 0.1], width: [64]}
""")
    proc = sweep_process("run", spec, "--jobs", "2", "--engine", "solo", faults=SLEEPY, started=False)
    deadline = time.time() + 120
    while time.time() < deadline and not any(r.info.status == "FINISHED" for r in _runs_if_any()):
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    sent = time.time()
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, out
    assert time.time() - sent < 10
    runs = training_runs()
    assert not [r for r in runs if r.info.status == "RUNNING"]
    done_before = len(finished_per_key(runs))
    assert 1 <= done_before < 6

    result = sweep("run", spec, "--jobs", 2)
    assert result.exit_code == 0, result.output
    assert f"{6 - done_before} of 6 runs to train ({done_before} already done)" in result.output
    runs = training_runs()
    done = finished_per_key(runs)
    assert len(done) == 6 and set(done.values()) == {1}  # every run FINISHED exactly once
    best = sweep("best", spec, "--by", "lr", "--format", "csv")
    assert len(best.output.splitlines()) == 7  # header + one row per run, no duplicates


def _runs_if_any():
    from sweep.tracking.location import store_exists

    try:
        if not store_exists(os.environ["MLFLOW_TRACKING_URI"]):
            return []  # never let this reader's MLflow create the store that the sweep is building
        return training_runs()
    except Exception:
        return []


def test_bad_spec_exits_2_and_writes_nothing(env):
    spec = write_spec(env, "experiment: tiny\ngrids:\n  g: {lr: [0.1, -1]}\n")
    result = CliRunner().invoke(main, ["run", spec])
    assert result.exit_code == 2
    assert "s.yaml: grid 'g', key 'lr', value -1: lr must be > 0" in result.output
    assert not (env / "mlruns").exists() and not (env / "mlflow.db").exists()


def test_missing_data_exits_2_before_tracking(env, tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_DATA", str(tmp_path / "none"))
    spec = write_spec(env, "experiment: tiny\ngrids:\n  g: {lr: [0.1]}\n")
    result = CliRunner().invoke(main, ["run", spec])
    assert result.exit_code == 2 and "train-images-idx3-ubyte" in result.output


def test_an_error_in_the_sweep_process_ends_its_runs_and_parent_and_a_resume_completes(stored, monkeypatch):
    """Not a signal: any exception of the runner (the store failing under it, a bug) leaves nothing RUNNING."""
    from sweep.cli.progress import Printer

    spec = write_spec(stored, "experiment: tiny\ndefaults: {epochs: 60}\ngrids:\n  g: {lr: [0.01, 0.02, 0.03, 0.05]}\n")

    def broken(self, outcome):
        raise RuntimeError("the store went away")
    with monkeypatch.context() as patched:
        patched.setattr(Printer, "outcome", broken)  # the first run's outcome: the sweep process fails
        with pytest.raises(RuntimeError, match="the store went away"):
            sweep("run", spec, "--jobs", 2, "--engine", "solo")
    uri = os.environ["MLFLOW_TRACKING_URI"]
    everything = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("tiny").experiment_id])
    assert [r.info.status for r in everything if r.info.status == "RUNNING"] == []
    parent = [r for r in everything if r.data.tags.get(schema.KIND) == schema.PARENT]
    assert [r.info.status for r in parent] == ["KILLED"]
    assert "the store went away" in parent[0].data.tags.get(schema.NOTE, "")
    again = sweep("run", spec, "--jobs", 2, "--engine", "solo")
    assert again.exit_code == 0, again.output
    assert finished_per_key(training_runs()) == Counter({run.key: 1 for run in expand(load_spec(spec))})


def test_an_interrupt_whose_killed_writes_the_store_refuses_still_exits_with_the_signals_status(stored, monkeypatch):
    from sweep import queue
    from sweep.cli.progress import Printer

    spec = write_spec(stored, "experiment: tiny\ndefaults: {epochs: 2}\ngrids:\n  g: {lr: [0.01, 0.02, 0.03]}\n")

    def ctrl_c(self, outcome):
        raise KeyboardInterrupt

    def refused(*args, **kwargs):
        raise queue.TrackingError("tracking store X: database is locked")
    monkeypatch.setattr(Printer, "outcome", ctrl_c)
    monkeypatch.setattr(queue, "end_parent", refused)
    result = CliRunner().invoke(main, ["run", spec, "--jobs", "1", "--lease", "30"])
    assert result.exit_code == 130, result.output
    assert ("interrupted by SIGINT; the store refused to record the stop (tracking store X: database is locked): "
            "runs left RUNNING are taken over once their leases lapse (within 30 s)") in result.output
