"""fetch_results: a sweep's runs read from the store once, with every planned run's outcome."""
import math

import pandas as pd
import pytest

from sweep import queue, tracking
from sweep.queue import Index, schema
from sweep.results import fetch as results_module
from sweep.results import words
from sweep.results.analysis import GridView, unstable_runs
from sweep.results.fetch import COLUMNS, fetch_results
from sweep.spec import SpecError, expand
from sweep.tracking.mlflow_store import MlflowStore

from conftest import log_run, new_store

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

    monkeypatch.setattr(tracking, "search", lambda *a, **k: pytest.fail("the store was read"))
    with pytest.raises(SpecError, match="no grid named 'dept'.*did you mean 'depth'"):
        fetch_results(spec, uri, grids=["dept"])


def test_the_experiment_is_read_once_and_histories_in_the_same_step(store, monkeypatch):
    spec, uri, _, _, ids = store
    calls = []
    for owner, name in ((Index, "sync"), (tracking, "metric_history"), (MlflowStore, "find_experiment"),
                        (queue, "find_parent")):
        original = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    seen = []
    results = fetch_results(spec, uri, histories=lambda r: seen.append(r) or [ids["relu2s2"], ids["relu2s2"]])
    assert calls.count("sync") == 1  # the experiment's runs: what changed since the index last read them
    assert calls.count("find_experiment") == 1 and calls.count("find_parent") == 1
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


def test_store_rows_are_typed_and_decoded():
    tags = {schema.KEY: "k", schema.CURVE: "[0.5, null]", schema.PRUNED: schema.flag(True)}
    table = [("a", "FINISHED", 1_000, 2_000, "r", "file:///x", *(tags.get(n) for n in results_module.TAGS),
              *({"depth": "3", "lr": "0.1", "activation": "tanh"}.get(n) for n in results_module.PARAMS),
              *({"test_error": 0.02}.get(n) for n in results_module.STORE_METRICS))]
    rows = results_module.store_frame(table)
    assert rows.loc[0, "depth"] == 3 and rows.loc[0, "lr"] == 0.1 and rows.loc[0, "activation"] == "tanh"
    assert rows.loc[0, "agent_uri"] == "file:///x/mnist_agent.pt" and rows.loc[0, "stopped"]
    assert rows.loc[0, "metrics.test_error"] == 0.02 and rows.loc[0, "start_time"] == 1_000
    assert rows.loc[0, "curve"][0] == 0.5 and math.isnan(rows.loc[0, "curve"][1])


def test_curves_are_decoded_whatever_the_tag_holds():
    assert schema.decode_curve("[0.5, 0.25]") == (0.5, 0.25)
    assert schema.decode_curve(schema.encode_curve([0.5, float("nan")]))[0] == 0.5
    assert schema.decode_curve("edited by hand") == () and schema.decode_curve("[]") == () and schema.decode_curve(None) == ()


def test_a_run_whose_error_spiked_in_its_last_epochs_is_called_unstable_and_a_steep_fall_is_not():
    runs = pd.DataFrame({"name": ["spike", "falling", "stuck", "short", "diverged"],
                         "run_id": ["a", "b", "c", "d", "e"], "outcome": ["done"] * 4 + ["diverged"]})
    curves = {"a": (0.05, 0.029, 0.027, 0.1067, 0.0271),   # the relu at lr 0.1: 12% at epoch 9, 2.5% at 10
              "b": (0.9, 0.5, 0.25, 0.03),                 # still learning fast: no rise at all
              "c": (0.81, 0.80, 0.78, 0.90),               # learns nothing; its 12-point rise is small beside 90%
              "d": (0.5, 0.9),                              # fewer epochs than the window
              "e": (0.1, 0.5, 0.05)}
    found = unstable_runs(runs, curves)
    assert list(found["name"]) == ["spike"] and found.iloc[0]["last"] == (0.027, 0.1067, 0.0271)
    view = GridView("g", "table", ["lr"], runs.assign(seed=1), unstable=found)
    assert words.unstable_conclusions(view) == ["Unstable at the end, 1 run (the ranked error rose, within a run's last 3 epochs, by more than "
                    "where the run ended, so its final-epoch number may be luck; the error after each of those "
                    "epochs): spike (2.70%, 10.67%, 2.71%)."]
