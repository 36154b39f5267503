"""fetch_results: a sweep's runs read from the store once, with every planned run's outcome."""
import math

import pandas as pd
import pytest
from mlflow import MlflowClient

from sweep import results as results_module
from sweep import tracking
from sweep.results import COLUMNS, PRUNED, fetch_results
from sweep.spec import SpecError, expand, parse_spec


def log_run(uri, experiment_id, parent, run, sweep_name, test_error, *, train_error=None, val_error=None,
            status="FINISHED", diverged=False, pruned=False, epochs_completed=None):
    """Log one training run through sweep.tracking as a worker would: params, per-epoch metrics
    (the last epoch's are the values given), the summary metrics and its end."""
    run_id = tracking.create_training_run(uri, experiment_id, parent, run.name, run.key, run.grids, sweep_name, "s", 1)
    tracking.log_params(uri, run_id, run.config.as_params())
    epochs = run.config.epochs if epochs_completed is None else epochs_completed
    for epoch in range(1, epochs + 1):
        last = epoch == epochs
        early = 0.5 / epoch
        metrics = {"test_error": test_error if last else early,
                   "train_error": (train_error if train_error is not None else test_error / 2) if last else early / 2,
                   "test_loss": 0.1, "train_loss": 0.1, "lr": run.config.lr}
        if val_error is not None:
            metrics.update(val_error=val_error if last else early, val_loss=0.2)
        tracking.log_metrics(uri, run_id, metrics, step=epoch)
    summary = {"epochs_completed": float(epochs), "final_test_error": test_error, "training_seconds": 1.0,
               "best_test_error": test_error if math.isnan(test_error) else min(test_error, 0.5 / max(epochs - 1, 1))}
    if val_error is not None:
        summary.update(final_val_error=val_error, best_val_error=val_error)
    tracking.log_metrics(uri, run_id, summary, step=epochs)
    if pruned:
        MlflowClient(uri).set_tag(run_id, PRUNED, "true")
    if status == "FINISHED":
        tracking.finish_run(uri, run_id, diverged)
    else:
        tracking.end_run(uri, run_id, status, "RuntimeError: boom")
    return run_id


def new_store(folder, spec_text, name="s.yaml"):
    path = folder / name
    path.write_text(spec_text)
    spec = parse_spec(spec_text, str(path))
    uri = tracking.resolve_tracking_uri(f"sqlite:///{folder}/mlruns/mlflow.db")
    experiment_id = tracking.ensure_experiment(uri, spec.experiment)
    parent = tracking.parent_run(uri, experiment_id, spec.name, {})
    return spec, uri, experiment_id, parent


SPEC = """
experiment: results
defaults: {epochs: 3}
seeds: [1, 2]
grids:
  act: {activation: [relu, tanh]}
  depth: {depth: [1, 2]}
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    spec, uri, experiment_id, parent = new_store(tmp_path_factory.mktemp("results"), SPEC)
    runs = {(r.config.activation, r.config.depth, r.config.seed): r for r in expand(spec)}
    ids = {}
    log = lambda key, *args, **kw: log_run(uri, experiment_id, parent, runs[key], spec.name, *args, **kw)  # noqa: E731
    log(("relu", 2, 1), 0.9, status="FAILED")                      # an attempt that failed, then
    ids["relu2s1"] = log(("relu", 2, 1), 0.031, train_error=0.012)  # the one that finished
    ids["relu2s2"] = log(("relu", 2, 2), 0.033, val_error=0.035)
    ids["tanh2s1"] = log(("tanh", 2, 1), float("nan"), diverged=True)
    ids["tanh2s2"] = log(("tanh", 2, 2), 0.2, pruned=True, epochs_completed=1)
    log(("relu", 1, 1), 0.9, status="FAILED")                      # only failed: outcome failed
    return spec, uri, experiment_id, parent, ids                    # relu d1 seed 2: never ran


def _row(results, activation, depth, seed):
    runs = results.runs
    return runs[(runs["activation"] == activation) & (runs["depth"] == depth) & (runs["seed"] == seed)].iloc[0]


def test_every_planned_run_with_its_outcome_state_and_final_metrics(store):
    spec, uri, experiment_id, parent, ids = store
    results = fetch_results(spec, uri)
    assert list(results.runs.columns) == COLUMNS and len(results.runs) == 6
    assert results.experiment == "results" and results.experiment_id == experiment_id
    assert results.parent_run_id == parent and results.grids == ("act", "depth") and results.histories == {}
    expected = {("relu", 2, 1): ("done", "done"), ("relu", 2, 2): ("done", "done"),
                ("tanh", 2, 1): ("diverged", "done"), ("tanh", 2, 2): ("stopped", "done"),
                ("relu", 1, 1): ("failed", "failed"), ("relu", 1, 2): ("missing", "pending")}
    for (activation, depth, seed), (outcome, state) in expected.items():
        row = _row(results, activation, depth, seed)
        assert (row["outcome"], row["state"]) == (outcome, state), (activation, depth, seed)
    done = _row(results, "relu", 2, 1)
    assert done["run_id"] == ids["relu2s1"] and done["grids"] == "act,depth" and done["name"] == "relu-lr0.03-d2-w50-e3"
    assert (done["test_error"], done["train_error"], done["epochs_completed"]) == (0.031, 0.012, 3.0)
    assert done["agent_uri"].endswith(f"{ids['relu2s1']}/artifacts/mnist_agent.pt")
    assert math.isnan(done["val_error"])
    with_val = _row(results, "relu", 2, 2)
    assert (with_val["val_error"], with_val["final_val_error"], with_val["val_loss"]) == (0.035, 0.035, 0.2)
    stopped = _row(results, "tanh", 2, 2)
    assert stopped["run_id"] == ids["tanh2s2"] and stopped["epochs_completed"] == 1.0
    assert pd.isna(_row(results, "relu", 1, 2)["run_id"]) and pd.isna(_row(results, "relu", 1, 1)["run_id"])


def test_a_grid_narrows_the_runs_and_an_unknown_grid_fails_before_the_store_is_read(store, monkeypatch):
    spec, uri, *_ = store
    results = fetch_results(spec, uri, grids=["depth"])
    assert results.grids == ("depth",) and len(results.runs) == 4
    assert set(results.runs["grids"]) == {"depth"}  # membership within the selection only
    assert len(results.grid_runs("depth")) == 4 and results.grid_runs("act").empty

    monkeypatch.setattr(tracking, "runs_frame", lambda *a: pytest.fail("the store was read"))
    with pytest.raises(SpecError, match="no grid named 'dept'.*did you mean 'depth'"):
        fetch_results(spec, uri, grids=["dept"])


def test_the_experiment_is_read_once_and_histories_in_the_same_step(store, monkeypatch):
    spec, uri, _, _, ids = store
    calls = []
    for name in ("runs_frame", "run_records", "metric_history", "find_experiment", "find_parent_run"):
        original = getattr(tracking, name)
        monkeypatch.setattr(tracking, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    seen = []
    results = fetch_results(spec, uri, histories=lambda r: seen.append(r) or [ids["relu2s2"], ids["relu2s2"]])
    assert calls.count("runs_frame") == 1 and "run_records" not in calls
    assert calls.count("find_experiment") == 1 and calls.count("find_parent_run") == 1
    assert seen[0].histories == {} and len(seen[0].runs) == 6  # the selector sees the runs, not yet histories
    history = results.histories[ids["relu2s2"]]
    assert list(results.histories) == [ids["relu2s2"]] and list(history.index) == [1, 2, 3]
    assert set(history.columns) == {"train_loss", "train_error", "test_loss", "test_error", "val_loss", "val_error", "lr"}
    assert history.loc[3, "val_error"] == 0.035 and history.loc[1, "test_error"] == 0.5
    assert calls.count("metric_history") == 7  # one per per-epoch metric the run logged


def test_without_a_spec_the_runs_are_the_keys_found(store):
    _, uri, _, _, ids = store
    results = fetch_results(None, uri, experiment="results")
    assert results.spec is None and results.parent_run_id is None and len(results.runs) == 5
    assert sorted(results.runs["outcome"]) == ["diverged", "done", "done", "failed", "stopped"]
    assert set(results.runs["run_id"].dropna()) == {ids["relu2s1"], ids["relu2s2"], ids["tanh2s1"], ids["tanh2s2"]}
    assert results.runs["depth"].dtype.kind == "i" or set(results.runs["depth"]) == {1, 2}
    narrowed = fetch_results(None, uri, grids=["act"], experiment="results")
    assert len(narrowed.runs) == 4 and set(narrowed.runs["depth"]) == {2}


def test_a_missing_experiment_and_an_empty_one(store, tmp_path):
    spec, uri, *_ = store
    with pytest.raises(tracking.TrackingError, match="no experiment 'nothing-here'"):
        fetch_results(None, uri, experiment="nothing-here")
    empty_spec, empty_uri, _, _ = new_store(tmp_path, SPEC.replace("results", "empty"))
    results = fetch_results(empty_spec, empty_uri)
    assert len(results.runs) == 6 and set(results.runs["outcome"]) == {"missing"}
    assert set(results.runs["state"]) == {"pending"} and results.runs["test_error"].isna().all()


def test_store_rows_are_typed_from_mlflows_frame():
    frame = pd.DataFrame({"run_id": ["a"], "status": ["FINISHED"], "artifact_uri": ["file:///x"],
                          "start_time": pd.to_datetime([1_000], unit="ms", utc=True),
                          "end_time": pd.to_datetime([2_000], unit="ms", utc=True),
                          "tags.sweep.key": ["k"], "params.depth": ["3"], "params.lr": ["0.1"],
                          "params.activation": ["tanh"], "metrics.test_error": [0.02]})
    rows = results_module.store_runs(frame)
    assert rows.loc[0, "depth"] == 3 and rows.loc[0, "lr"] == 0.1 and rows.loc[0, "activation"] == "tanh"
    assert rows.loc[0, "agent_uri"] == "file:///x/mnist_agent.pt" and not rows.loc[0, "pruned"]
    assert results_module.run_records(rows)[0].start_time == 1_000
