"""Searches and early stopping through `sweep run`: trials asked of Optuna, trained by the queue,
resumed, shared by two processes, stopped early by the pruning rules, never trained twice."""
import json
import os
import signal
from collections import Counter

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from sweep.cli import main
from sweep.queue import schema

from conftest import SLEEPY, finish, store_runs, sweep_process, training_runs, wait_until, write_spec

pytestmark = pytest.mark.system  # subprocesses, signals, clusters, store races

SEARCH = """
experiment: tiny
defaults: {{epochs: {epochs}, width: 32}}
searches:
  lr_width:
    method: {method}
    trials: {trials}
    seed: 3
    space:
      activation: [relu, tanh]
      lr: {{distribution: log_uniform_values, min: 0.01, max: 0.5}}
      width: {{distribution: int_uniform, min: 8, max: 48}}
"""


def sweep(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def trials_of(runs):
    """FINISHED runs per trial number of the search."""
    return Counter(int(r.data.tags[schema.TRIAL]) for r in runs
                   if r.info.status == "FINISHED" and r.data.tags.get(schema.SEARCH) == "lr_width")


def test_a_search_trains_its_budget_in_its_space_and_answers(stored):
    spec = write_spec(stored, SEARCH.format(method="tpe", trials=6, epochs=2))
    result = sweep("run", spec, "--jobs", 2)
    assert result.exit_code == 0, result.output
    assert "6 of 6 runs to train" in result.output
    runs = training_runs()
    assert trials_of(runs) == Counter(range(6))
    for run in runs:
        params = run.data.params
        assert params["activation"] in ("relu", "tanh") and 0.01 <= float(params["lr"]) <= 0.5
        assert 8 <= int(params["width"]) <= 48 and params["epochs"] == "2"
    again = sweep("run", spec)
    assert again.exit_code == 0 and "nothing to train: 6 of 6 runs already done" in again.output
    plan = sweep("plan", spec)
    assert "search 'lr_width': tpe, 6 trials, sampler seed 3; 6 of 6 trials done" in plan.output
    best = sweep("best", spec, "--by", "activation", "--format", "json")
    rows = json.loads(best.output)
    assert {row["activation"] for row in rows} <= {"relu", "tanh"} and rows


def test_a_resumed_search_trains_exactly_the_remaining_trials(stored):
    spec = write_spec(stored, SEARCH.format(method="random", trials=6, epochs=2))
    proc = sweep_process("run", spec, "--jobs", 2, faults=SLEEPY)  # 2 s a run, sleeping
    wait_until(lambda: sum(r.info.status == "FINISHED" for r in store_runs()) >= 2, timeout=180)
    proc.send_signal(signal.SIGINT)
    output = finish(proc, 60)
    assert proc.returncode == 130, output
    done = trials_of(training_runs())
    assert 2 <= len(done) < 6
    again = sweep("run", spec, "--jobs", 2)
    assert again.exit_code == 0, again.output
    assert f"{6 - len(done)} of 6 runs to train ({len(done)} already done)" in again.output
    assert trials_of(training_runs()) == Counter(range(6))  # every trial once, none twice


def test_two_processes_on_one_search_train_its_budget_once(stored):
    spec = write_spec(stored, SEARCH.format(method="tpe", trials=6, epochs=8))
    procs = [sweep_process("run", spec, "--jobs", 1) for _ in range(2)]
    outputs = [finish(p, 300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert trials_of(training_runs()) == Counter(range(6))
    assert sum(out.count("  done  ") + out.count("  dup   ") for out in outputs) == 6


def test_a_sampled_setting_that_finished_already_is_not_trained_again(stored):
    spec = write_spec(stored, """
experiment: tiny
defaults: {epochs: 2}
grids:
  g: {lr: [0.05]}
searches:
  lr_width:
    method: random
    trials: 6
    seed: 1
    space: {lr: [0.05, 0.1]}
""")
    result = sweep("run", spec, "--jobs", 1)
    assert result.exit_code == 0, result.output
    runs = training_runs()
    assert trials_of(runs) == Counter(range(6))
    trained = Counter(r.data.params["lr"] for r in runs if not r.data.tags.get(schema.DUPLICATE_OF))
    assert trained == Counter({"0.05": 1, "0.1": 1})  # the grid's 0.05 and one 0.1 trial: the rest are duplicates
    duplicates = [r for r in runs if r.data.tags.get(schema.DUPLICATE_OF)]
    assert len(duplicates) == 5 and "already trained (same settings)" in result.output
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    for dup in duplicates:
        original = client.get_run(dup.data.tags[schema.DUPLICATE_OF])
        assert original.data.params["lr"] == dup.data.params["lr"]
        assert dup.data.metrics["test_error"] == original.data.metrics["test_error"]


def test_early_stopped_runs_are_finished_tagged_and_left_out_of_best(stored):
    spec = write_spec(stored, """
experiment: tiny
defaults: {epochs: 9}
grids:
  lrs:
    lr: [0.001, 0.003, 0.01, 0.03, 0.1, 0.3]
    early_stop: {type: asha, min_epochs: 1, reduction_factor: 3}
""")
    result = sweep("run", spec, "--jobs", 2)
    assert result.exit_code == 0, result.output
    runs = training_runs()
    assert len(runs) == 6 and all(r.info.status == "FINISHED" for r in runs)
    stopped = [r for r in runs if schema.is_set(r.data.tags[schema.PRUNED])]
    whole = [r for r in runs if not schema.is_set(r.data.tags[schema.PRUNED])]
    assert stopped and whole and f"{len(stopped)} stopped early" in result.output
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    for run in stopped:  # the epochs it trained, its metrics and its agent are kept
        trained = int(run.data.metrics["epochs_completed"])
        assert trained < 9 and trained in (1, 3)  # the rungs of min_epochs 1, reduction factor 3
        assert [m.step for m in client.get_metric_history(run.info.run_id, "test_error")] == list(range(1, trained + 1))
        assert json.loads(run.data.tags[schema.CURVE]) and len(json.loads(run.data.tags[schema.CURVE])) == trained
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["mnist_agent.pt"]
    best = sweep("best", spec, "--by", "activation")
    assert f"{len(stopped)} run(s) stopped early (pruned) were left out" in best.output
    status = sweep("status", spec)
    assert "6 done" in status.output


def test_early_stopping_by_a_setting_compares_runs_within_each_of_its_values(stored):
    spec = write_spec(stored, """
experiment: tiny
defaults: {epochs: 3}
grids:
  g:
    activation: [relu, sigmoid]
    lr: [0.001, 0.01, 0.1, 0.3]
    early_stop: {type: asha, reduction_factor: 3, by: [activation]}
""")
    result = sweep("run", spec, "--jobs", 2)
    assert result.exit_code == 0, result.output
    runs = training_runs()
    whole = Counter(r.data.params["activation"] for r in runs if not schema.is_set(r.data.tags[schema.PRUNED]))
    stopped = Counter(r.data.params["activation"] for r in runs if schema.is_set(r.data.tags[schema.PRUNED]))
    assert set(whole) == {"relu", "sigmoid"}  # each activation keeps its own best runs going
    assert stopped["relu"] and stopped["sigmoid"]
