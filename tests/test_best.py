import pandas as pd
import pytest

from mnist_core import RunConfig
from sweep import tracking
from sweep.best import best_by, finished_runs, tidy_runs
from sweep.spec import run_key, run_name


def _log(uri, experiment, parent, config, test_error, status="FINISHED", diverged=False):
    run_id = tracking.create_training_run(uri, experiment, parent, run_name(config), run_key(config),
                                          ("g",), "s", "sess", 1)
    tracking.log_params(uri, run_id, config.as_params())
    tracking.log_metrics(uri, run_id, {"test_error": test_error + 0.1, "train_error": 0.5}, step=1)
    tracking.log_metrics(uri, run_id, {"test_error": test_error, "train_error": test_error / 2}, step=2)
    if status == "FINISHED":
        tracking.finish_run(uri, run_id, diverged)
    else:
        tracking.end_run(uri, run_id, status, "boom")
    return run_id


@pytest.fixture(scope="module")
def known_store(tmp_path_factory):
    uri = tracking.resolve_tracking_uri(f"sqlite:///{tmp_path_factory.mktemp('best')}/mlflow.db")
    experiment = tracking.ensure_experiment(uri, "known")
    parent = tracking.parent_run(uri, experiment, "s", {})
    ids = {}
    for act, lr, err in [("relu", 0.01, 0.05), ("relu", 0.1, 0.03), ("relu", 1.0, 0.20),
                         ("tanh", 0.01, 0.06), ("tanh", 0.1, 0.04)]:
        ids[(act, lr)] = _log(uri, experiment, parent, RunConfig(activation=act, lr=lr), err)
    _log(uri, experiment, parent, RunConfig(activation="tanh", lr=1.0), 0.01, status="FAILED")
    _log(uri, experiment, parent, RunConfig(activation="tanh", lr=0.3), 0.001, diverged=True)
    return uri, experiment, ids


def test_best_lr_per_activation(known_store):
    uri, experiment, ids = known_store
    runs = finished_runs(tidy_runs(tracking.runs_frame(uri, experiment)))
    table = best_by(runs, ["activation"])
    assert list(table["activation"]) == ["relu", "tanh"]
    assert list(table["lr"]) == [0.1, 0.1]
    assert list(table["test_error"]) == pytest.approx([0.03, 0.04])  # the final epoch's value
    assert list(table["train_error"]) == pytest.approx([0.015, 0.02])
    assert list(table["run_id"]) == [ids[("relu", 0.1)], ids[("tanh", 0.1)]]
    assert table["agent_uri"].str.endswith("/mnist_agent.pt").all()
    assert list(table.columns[:2]) == ["activation", "lr"] and "epochs" in table.columns


def test_failed_and_diverged_runs_are_ignored(known_store):
    uri, experiment, _ = known_store
    runs = tidy_runs(tracking.runs_frame(uri, experiment))
    assert (runs["status"] == "FAILED").sum() == 1 and runs["diverged"].sum() == 1
    table = best_by(finished_runs(runs), ["activation"])
    assert table.loc[table["activation"] == "tanh", "test_error"].item() == pytest.approx(0.04)


def test_group_by_two_settings_and_narrow_by_keys(known_store):
    uri, experiment, _ = known_store
    runs = finished_runs(tidy_runs(tracking.runs_frame(uri, experiment)))
    assert len(best_by(runs, ["activation", "lr"])) == 5
    only = finished_runs(tidy_runs(tracking.runs_frame(uri, experiment)),
                         keys=[run_key(RunConfig(activation="relu", lr=1.0))])
    assert best_by(only, ["activation"])["lr"].tolist() == [1.0]
    with pytest.raises(ValueError, match="not a setting"):
        best_by(runs, ["colour"])


def test_duplicate_finished_runs_of_a_key_count_once():
    frame = pd.DataFrame({"key": ["a", "a", "b"], "status": ["FINISHED"] * 3, "end_time": [1, 2, 1],
                          "grids": ["g", "g", "g"], "run_id": ["x", "y", "z"]})
    assert sorted(finished_runs(frame)["run_id"]) == ["y", "z"]
