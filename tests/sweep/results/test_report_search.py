"""`sweep report` and `sweep status` on a store of known runs with searches and early stopping."""
import math
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from scipy import stats as scipy_stats

from sweep import queue, tracking
from sweep.adaptive.search import best_so_far, importance, slot_key
from sweep.cli import main
from sweep.queue import Index, schema
from sweep.results import fetch_results
from sweep.results.analysis import analyse, best_so_far_table, drawn_runs
from sweep.results.words import schedule_note, search_conclusions, stopping_conclusions
from sweep.spec import PlannedRun, expand, run_name, trial_config
from sweep.tracking.mlflow_store import MlflowStore

from conftest import log_run, new_store

SPEC = """
experiment: searched
defaults: {epochs: 4}
grids:
  sched: {schedule: [fixed, exponential, cosine], early_stop: {type: median, min_epochs: 1}}
  sched_plain: {schedule: [fixed, cosine], momentum: 0.5}
  width: {width: [16, 32]}
searches:
  tpe:
    method: tpe
    trials: 8
    seed: 3
    space:
      lr: {distribution: log_uniform_values, min: 0.001, max: 1.0}
      width: {distribution: int_uniform, min: 16, max: 128}
      activation: [relu, tanh]
    early_stop: {type: asha, min_epochs: 1, reduction_factor: 2}
  seeded:
    method: random
    trials: 4
    space: {lr: [0.01, 0.1], seed: [1, 2]}
"""
# trial -> (sampled settings, test error after each epoch; fewer than 4 epochs: stopped early)
TPE = {0: ({"lr": 0.01, "width": 32, "activation": "relu"}, [0.30, 0.20, 0.15, 0.10]),
       1: ({"lr": 0.5, "width": 64, "activation": "tanh"}, [0.40, 0.35]),
       2: ({"lr": 0.05, "width": 100, "activation": "relu"}, [0.25, 0.12, 0.08, 0.06]),
       3: ({"lr": 0.002, "width": 20, "activation": "tanh"}, [0.50]),
       4: ({"lr": 0.03, "width": 50, "activation": "relu"}, [0.20, 0.10, 0.07, 0.07]),
       6: ({"lr": 0.1, "width": 128, "activation": "tanh"}, [0.22, 0.11, 0.09, 0.08])}
DUPLICATE = (5, 2)      # trial 5 had trial 2's settings: not trained, it records trial 2's run
RUNNING = (7, {"lr": 0.2, "width": 40, "activation": "relu"})
SEEDED = {0: ({"lr": 0.01, "seed": 1}, 0.05), 1: ({"lr": 0.1, "seed": 1}, 0.04),
          2: ({"lr": 0.01, "seed": 2}, 0.06), 3: ({"lr": 0.1, "seed": 2}, 0.045)}
SCHED = {"fixed": [0.30, 0.20, 0.15, 0.12], "exponential": [0.25, 0.15, 0.11, 0.10], "cosine": [0.35, 0.30]}


def trial_run(spec, search, number, sampled) -> PlannedRun:
    config = trial_config(spec, spec.searches[search], sampled)
    return PlannedRun(config, slot_key(spec, spec.searches[search], number),
                      f"{search}-{number}-{run_name(config)}", (), search, number)


def log_curve(uri, experiment_id, parent, run, sweep_name, curve, *, curve_tag=True):
    """A run the way a worker writes it: per-epoch metrics with its curve tag so far (left out
    with `curve_tag=False`, as older runs have none); stopped early (pruned) when the curve is
    shorter than its epochs. Returns its run id and final metrics."""
    lease = queue.claim(MlflowStore(uri), experiment_id, parent, run, sweep_name, "test-session")
    lease.log_params(run.config.as_params())
    for epoch, error in enumerate(curve, 1):
        metrics = {"test_error": error, "train_error": error / 2, "test_loss": 0.1, "train_loss": 0.1,
                   "lr": run.config.lr}
        lease.log_epoch(metrics, epoch, tags=schema.curve(curve[:epoch]) if curve_tag else None)
    summary = {"epochs_completed": float(len(curve)), "final_test_error": curve[-1], "training_seconds": 1.0,
               "best_test_error": min(curve)}
    with tempfile.TemporaryDirectory() as tmp:
        agent = Path(tmp) / "mnist_agent.pt"
        agent.write_bytes(b"a placeholder: these tests never load it")
        assert lease.finish(summary, len(curve), agent, False, len(curve) < run.config.epochs)
    return lease.run_id, {**summary, "test_error": curve[-1], "train_error": curve[-1] / 2}


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    folder = tmp_path_factory.mktemp("searched")
    spec, uri, experiment_id, parent = new_store(folder, SPEC, "searched.yaml")
    write = lambda run, curve, **kw: log_curve(uri, experiment_id, parent, run, spec.name, curve, **kw)  # noqa: E731
    ids, finals = {}, {}
    for number, (sampled, curve) in TPE.items():
        ids[number], finals[number] = write(trial_run(spec, "tpe", number, sampled), curve)
    number, original = DUPLICATE
    lease = queue.claim(MlflowStore(uri), experiment_id, parent, trial_run(spec, "tpe", number, TPE[original][0]),
                        spec.name, "test-session")
    lease.log_params(trial_config(spec, spec.searches["tpe"], TPE[original][0]).as_params())
    assert lease.finish(finals[original], 4, None, False, False,
                        tags={schema.DUPLICATE_OF: ids[original], **schema.curve(TPE[original][1])})
    running = queue.claim(MlflowStore(uri), experiment_id, parent, trial_run(spec, "tpe", RUNNING[0], RUNNING[1]),
                          spec.name, "test-session", lease_seconds=3600)  # held for the whole module
    running.log_params(trial_config(spec, spec.searches["tpe"], RUNNING[1]).as_params())
    running.beat()
    for number, (sampled, error) in SEEDED.items():
        write(trial_run(spec, "seeded", number, sampled), [0.3, 0.2, 0.1, error])
    grid = {(r.grids, r.config.schedule, r.config.width): r for r in expand(spec)}
    for schedule, curve in SCHED.items():  # the stopped cosine run has no curve tag: its history stands in
        ids[schedule] = write(grid[(("sched",), schedule, 50)], curve, curve_tag=schedule != "cosine")[0]
    for schedule in ("fixed", "cosine"):
        ids[f"plain-{schedule}"] = log_run(uri, experiment_id, parent, grid[(("sched_plain",), schedule, 50)],
                                           spec.name, 0.09)
    log_run(uri, experiment_id, parent, grid[(("width",), "fixed", 16)], spec.name, 0.11)  # width 32: not yet
    return folder, spec, uri, ids


@pytest.fixture(scope="module")
def analysed(searched):
    _, spec, uri, _ = searched
    return analyse(fetch_results(spec, uri, histories=drawn_runs))


def test_best_so_far_ignores_trials_without_a_result():
    nan = math.nan
    out = best_so_far([nan, 0.1, nan, 0.06, 0.07])
    assert math.isnan(out[0]) and out[1:] == [0.1, 0.1, 0.06, 0.06]


def test_fetch_results_reads_curves_and_trials_from_the_one_read(searched, monkeypatch):
    _, spec, uri, ids = searched
    calls = []
    for owner, name in ((Index, "sync"), (MlflowStore, "find_experiment"), (queue, "find_parent"),
                        (tracking, "metric_history")):
        original = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *a, _f=original, _n=name: calls.append((_n, a)) or _f(*a))
    results = fetch_results(spec, uri, histories=drawn_runs)
    assert [n for n, _ in calls].count("sync") == 1  # curves and trials come from the same read of the runs
    assert [n for n, _ in calls].count("find_experiment") == 1 and [n for n, _ in calls].count("find_parent") == 1
    # histories: the best run per schedule of the two schedule grids, and the stopped run that has no curve
    read = {a[1] for n, a in calls if n == "metric_history"}
    assert read == {ids["fixed"], ids["exponential"], ids["cosine"], ids["plain-fixed"], ids["plain-cosine"]}
    assert results.searches == ("tpe", "seeded")
    assert results.curves[ids[2]] == (0.25, 0.12, 0.08, 0.06) and ids["cosine"] not in results.curves
    assert sorted(results.trials["tpe"]) == [0, 1, 2, 3, 4, 5, 6, 7]
    states = {n: t.state for n, t in results.trials["tpe"].items()}
    assert states == {0: "done", 1: "stopped", 2: "done", 3: "stopped", 4: "done", 5: "done", 6: "done",
                      7: "running"}
    assert results.trials["tpe"][5].value == 0.06  # a duplicate counts with its original's result
    tpe = results.grid_runs("tpe").set_index("trial")
    assert list(tpe["outcome"]) == ["done", "stopped", "done", "stopped", "done", "duplicate", "done", "missing"]
    assert tpe.loc[7, "state"] == "running"


def test_search_conclusions_are_the_runs_numbers(analysed):
    tpe = next(v for v in analysed.searches if v.name == "tpe")
    table = best_so_far_table(tpe)
    assert list(table["best"].iloc[:7]) == [0.10, 0.10, 0.06, 0.06, 0.06, 0.06, 0.06]
    assert list(table.loc[table["at_stop"].notna(), "trial"]) == [1, 3]
    lines = search_conclusions(tpe)
    assert lines[0] == "7 of 8 trials done (2 stopped early, 1 duplicate), 1 running."
    assert lines[1] == "Trials are ranked by test error (test_error): they hold no validation split."
    assert lines[2] == "Best trial: 2 (lr 0.05, width 100, relu): test error 6.00% (n = 1)."
    assert lines[3] == ("Best test error so far, by trial number: 10.00% from trial 0, 6.00% from trial 2 (none better "
                        "in the 4 finished trials after it).")
    assert set(tpe.importance) == {"lr", "width", "activation"}
    assert math.isclose(sum(tpe.importance.values()), 1.0)
    assert lines[4] == ("Importance of each sampled setting for the test error (Optuna's fANOVA on the 5 complete "
                        "trials, summing to 1): " + ", ".join(f"{k} {v:.2f}" for k, v in tpe.importance.items()) + ".")
    assert list(tpe.importance.values()) == sorted(tpe.importance.values(), reverse=True)
    assert "Stopped early (left out of the best; the sampler counts them as pruned): trials 1, 3." in lines
    assert any(line.startswith("Duplicates") and line.endswith("trial 5.") for line in lines)


def test_importance_is_the_same_each_time(searched, analysed):
    _, spec, uri, _ = searched
    trials = fetch_results(spec, uri).trials["tpe"]
    tpe = next(v for v in analysed.searches if v.name == "tpe")
    assert importance(spec.searches["tpe"], trials) == tpe.importance


def test_the_best_setting_over_seeds_has_its_interval(analysed):
    seeded = next(v for v in analysed.searches if v.name == "seeded")
    lines = search_conclusions(seeded)
    assert lines[0] == "4 of 4 trials done (0 stopped early, 0 duplicates)."
    low, high = scipy_stats.t.interval(0.95, 1, loc=0.0425, scale=scipy_stats.sem([0.04, 0.045]))
    assert lines[2] == (f"Best setting: lr 0.1, test error 4.25% over its 2 seeds (95% CI {100 * low:.2f} to "
                        f"{100 * high:.2f}%, n = 2); its best seed is trial 1 (4.00%).")
    assert seeded.sampled == ["lr", "seed"] and "seeded" not in analysed.stopping


def test_stopping_counts_and_saved_network_epochs(analysed):
    tpe = analysed.stopping["tpe"]
    assert tpe.stop_epochs == {1: 1, 2: 1} and tpe.saved_epochs == 5 and tpe.planned_epochs == 24
    assert stopping_conclusions(tpe) == [
        "Early stopping: asha (about 1 run in 2 goes on at each rung), never before 1 epoch. 2 of 6 finished "
        "runs (1 duplicate, not trained, aside) were stopped (1 after epoch 1; 1 after epoch 2); that saved 5 of 24 network-epochs (21%) against "
        "training every run to its end (one network trained for one epoch counts one)."]
    sched = analysed.stopping["sched"]
    assert sched.stop_epochs == {2: 1} and (sched.saved_epochs, sched.planned_epochs) == (2, 12)
    assert len(sched.curves) == 3 and sched.curves[sched.stopped["run_id"].iloc[0]] == (0.35, 0.30)
    assert set(analysed.stopping) == {"sched", "tpe"}  # no early_stop: no section


def test_the_schedule_caveat_only_where_a_grid_varies_schedule_under_early_stopping(analysed):
    views = {v.name: v for v in analysed.grids}
    assert schedule_note(views["sched"], analysed.stopping["sched"])
    assert not schedule_note(views["sched_plain"], None)               # varies schedule, no early_stop
    assert not schedule_note(views["width"], analysed.stopping["sched"])  # stopping, but schedule fixed


def test_report_of_searches_that_have_not_started(tmp_path):
    spec, uri, _, _ = new_store(tmp_path, SPEC.replace("searched", "unstarted"), "unstarted.yaml")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["report", spec.path, "--out", str(out), "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    md = (out / "report.md").read_text()
    tpe = md.split("## Search 'tpe'")[1].split("## ")[0]
    assert "0 of 8 trials done (0 stopped early, 0 duplicates)." in tpe
    assert "No trial has a final result yet: nothing to compare." in tpe
    assert "No importance yet: it needs at least two complete trials whose results differ." in tpe
    assert "Early stopping: asha (about 1 run in 2 goes on at each rung), never before 1 epoch. No run has " \
           "finished yet." in tpe
    assert not list(out.glob("*.png"))
    status = CliRunner().invoke(main, ["status", spec.path, "--tracking-uri", uri])
    assert "search tpe: 0 of 8 trials done (0 stopped early, 0 duplicates), 0 running" in status.output
    assert "7 runs: 7 pending, 0 running, 0 failed, 0 done (0 stopped early)" in status.output


def test_report_shows_searches_and_early_stopping(searched):
    folder, spec, uri, _ = searched
    out = folder / "out"
    result = CliRunner().invoke(main, ["report", spec.path, "--out", str(out), "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    assert {"tpe_best_so_far.png", "tpe_error_vs_settings.png", "tpe_importance.png", "tpe_stopping.png",
            "seeded_best_so_far.png", "seeded_error_vs_settings.png", "seeded_importance.png",
            "sched_stopping.png"} <= names
    assert not {"width_stopping.png", "sched_plain_stopping.png", "seeded_stopping.png"} & names
    md = (out / "report.md").read_text()
    sections = {part.split("\n")[0]: part for part in md.split("\n## ")[1:]}
    tpe = sections["Search 'tpe': tpe, samples lr, width, activation"]
    assert "7 of 8 trials done (2 stopped early, 1 duplicate), 1 running." in tpe
    assert "saved 5 of 24 network-epochs (21%)" in tpe and "tpe_best_so_far.png" in tpe
    sentence = "Stopping early favours learning-rate schedules that decay early over those that anneal late"
    assert md.count(sentence) == 1 and sentence in sections["Grid 'sched': varies schedule"]
    assert "Stopped per schedule: cosine 1 of 1; exponential 0 of 1; fixed 0 of 1." in md
    assert "saved 2 of 12 network-epochs (17%)" in sections["Grid 'sched': varies schedule"]
    assert "Early stopping" not in sections["Grid 'sched_plain': varies schedule"]
    assert "Early stopping" not in sections["Grid 'width': varies width"]
    assert md.startswith("# Sweep report") and "19 runs (7 planned in grids, 12 trials of searches): " in md
    assert (out / "report.pdf").read_bytes()[:5] == b"%PDF-"


def test_status_counts_stopped_runs_duplicates_and_trials(searched):
    _, spec, uri, _ = searched
    result = CliRunner().invoke(main, ["status", spec.path, "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "experiment 'searched': 7 runs: 1 pending, 0 running, 0 failed, 6 done (1 stopped early)",
        "search tpe: 7 of 8 trials done (2 stopped early, 1 duplicate), 1 running",
        "search seeded: 4 of 4 trials done (0 stopped early, 0 duplicates), 0 running"]
    only = CliRunner().invoke(main, ["status", spec.path, "--grid", "tpe", "--tracking-uri", uri])
    assert only.output.splitlines() == ["search tpe: 7 of 8 trials done (2 stopped early, 1 duplicate), 1 running"]
