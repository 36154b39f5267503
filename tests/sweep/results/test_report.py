"""`sweep report` on a store whose runs are known, and model registration round trips."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from scipy import stats as scipy_stats

from mnist_core import RunConfig, load_agent, save_agent, train
from sweep import tracking
from sweep.cli import main
from sweep.queue import schema
from sweep.spec import expand

from conftest import log_run, new_store

SPEC = """
experiment: known
defaults: {epochs: 3}
grids:
  lr_by_activation: {activation: [relu, tanh], lr: [0.01, 0.1, 1.0]}
  depth: {depth: [1, 2, 3]}
  schedule: {schedule: [fixed, cosine]}
"""
# final test errors the fake runs report; tanh at lr 1.0 diverged, depth 3 never ran
ERRORS = {("relu", 0.01, 2, "fixed"): 0.050, ("relu", 0.1, 2, "fixed"): 0.030, ("relu", 1.0, 2, "fixed"): 0.200,
          ("tanh", 0.01, 2, "fixed"): 0.060, ("tanh", 0.1, 2, "fixed"): 0.035,
          ("relu", 0.03, 1, "fixed"): 0.045, ("relu", 0.03, 2, "fixed"): 0.040, ("relu", 0.03, 2, "cosine"): 0.038}


@pytest.fixture(scope="module")
def known(tmp_path_factory, tiny_data):
    folder = tmp_path_factory.mktemp("report")
    spec, uri, experiment, parent = new_store(folder, SPEC, "known.yaml")
    spec_path = Path(spec.path)
    agent_model = train(RunConfig(epochs=1, lr=0.1), tiny_data).model
    for run in expand(spec):
        c = run.config
        key = (c.activation, c.lr, c.depth, c.schedule)
        if c.depth == 3:
            continue  # missing
        diverged = key == ("tanh", 1.0, 2, "fixed")
        final = float("nan") if diverged else ERRORS[key]
        agent = save_agent(folder / run.key / "mnist_agent.pt", agent_model, c, {"final_test_error": final})
        log_run(uri, experiment, parent, run, spec.name, final, diverged=diverged, agent=agent)
    return spec_path, uri, folder


def test_status_says_how_many_of_the_done_runs_diverged_as_the_report_does(known):
    spec_path, uri, _ = known
    status = CliRunner().invoke(main, ["status", str(spec_path), "--tracking-uri", uri])
    assert status.exit_code == 0, status.output
    assert "experiment 'known': 10 runs: 1 pending, 0 running, 0 failed, 9 done (1 diverged)" in status.output


def test_report_outputs_numbers_missing_and_diverged(known):
    spec_path, uri, folder = known
    out = folder / "out"
    result = CliRunner().invoke(main, ["report", str(spec_path), "--out", str(out), "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    assert {"report.md", "report.html", "report.pdf", "lr_by_activation_error_vs_lr.png",
            "depth_error_vs_depth.png", "schedule_curves.png", "schedule_error_vs_schedule.png",
            "lr_by_activation_best_curves.png", "lr_by_activation_train_error_vs_lr.png"} <= names
    assert not [n for n in os.listdir(folder) if n.startswith(".out-")]  # the temporary folder is gone
    md = (out / "report.md").read_text()
    assert "Lowest test error: relu at lr 0.1, 3.00% (n = 1)." in md
    assert ("The runs are MLPs 784 -> 1, 2 hidden layers of 50 units -> 10 (relu, tanh; log-softmax output), "
            "trained by SGD (momentum 0) on the negative log-likelihood with mini-batches of 64 for 3 epochs, at "
            "learning rates 0.01, 0.03, 0.1, 1 (schedule cosine, fixed); trained on all 60,000 training images (no "
            "validation split); the train error after each epoch is measured on a fixed sample of 10,000 of the images "
            "trained on; the test error is measured on the 10,000 test images. Up to 1 seed(s) per setting "
            "(the seed sets the initial weights and the data order); 9 finished runs.") in md  # depth 3 never ran
    assert ("Against the closest rival, tanh at its best lr 0.1 (3.50%), no test: n = 1 per setting: no interval "
            "can be given.") in md
    assert "Best learning rate per activation: relu at lr 0.1: 3.00% (n = 1); tanh at lr 0.1: 3.50% (n = 1)." in md
    assert "Lowest test error at depth 2: 4.00% (n = 1); highest at depth 1: 4.50% (n = 1), 0.50 points apart." in md
    assert "Lowest test error at cosine: 3.80% (n = 1); highest at fixed: 4.00% (n = 1), 0.20 points apart." in md
    assert "percentage points better" not in md and "wins" not in md  # no comparison without its test
    setup = md.split("## Setup")[1].split("\n## ")[0]
    assert "| lr_by_activation | activation, lr | relu, tanh " in setup and "| depth " in setup
    assert "Machine and time: trained on an unrecorded device of host " in setup  # the test runs log no device
    assert "by 1 worker process " in setup and "every run trained alone (the solo engine)" in setup
    conclusions = md.split("\n## ")[-1]  # the report ends with them, after the missing runs
    assert conclusions.startswith("Conclusions: the homework's questions")
    answers = [line.split(".")[0] for line in conclusions.splitlines() if line.startswith("**")]
    assert answers == ["**Activation", "**Learning rate", "**Depth", "**Width", "**Schedule"]
    assert "**Width.** Not asked: no grid of this sweep varies width." in conclusions
    assert ("**Learning rate.** The best learning rate depends on the network it trains: over the 2 settings the "
            "grids pair it with, lr 0.1 was best for 2; 0 of these 2 choices are decided.") in conclusions
    assert "Diverged: lr 1 for tanh." in conclusions
    assert "Diverged (loss became NaN or infinite; not plotted as errors): tanh-lr1-d2-w50-e3." in md
    assert "relu-lr0.03-d3-w50-e3" in md.split("## Missing runs")[1].split("## Conclusions")[0]
    assert "1 of 3 runs has no finished result yet." in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 6 and "<table" in html
    assert (out / "report.pdf").read_bytes()[:5] == b"%PDF-"
    parent = MlflowClient(uri).search_runs([tracking.find_experiment(uri, "known")], schema.PARENT_RUNS)[0]
    logged = {a.path for a in MlflowClient(uri).list_artifacts(parent.info.run_id, "report")}
    assert "report/report.html" in logged and "report/report.pdf" in logged


SEEDED = """
experiment: seeded
defaults: {epochs: 2}
seeds: [1, 2]
grids:
  lr_by_depth: {depth: [1, 2], lr: [0.01, 0.1]}
  width: {width: [16, 32]}
"""
# (val_error, test_error) per (depth, lr), seeds 1 and 2; the width grid has not run yet
SEEDED_ERRORS = {(1, 0.01): [(0.020, 0.030), (0.022, 0.031)], (1, 0.1): [(0.025, 0.025), (0.027, 0.026)],
                 (2, 0.01): [(0.030, 0.035), (0.034, 0.036)], (2, 0.1): [(0.024, 0.028), (0.025, 0.029)]}


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seeded")
    spec, uri, experiment_id, parent = new_store(folder, SEEDED, "seeded.yaml")
    for run in expand(spec, ["lr_by_depth"]):
        val_error, test_error = SEEDED_ERRORS[(run.config.depth, run.config.lr)][run.config.seed - 1]
        log_run(uri, experiment_id, parent, run, spec.name, test_error, val_error=val_error)
    return folder, uri


def test_report_over_seeds_ranks_by_validation_with_intervals_and_tests(seeded):
    folder, uri = seeded
    out = folder / "reports" / "seeded"
    result = CliRunner().invoke(main, ["report", str(folder / "seeded.yaml"), "--out", str(out), "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    md = (out / "report.md").read_text()
    assert "Settings are ranked by validation error (val_error)" in md
    low, high = scipy_stats.t.interval(0.95, 1, loc=0.021, scale=scipy_stats.sem([0.020, 0.022]))
    assert f"Lowest validation error: depth 1 at lr 0.01, 2.10% (95% CI {100 * low:.2f} to {100 * high:.2f}%, n = 2)." in md
    p = scipy_stats.ttest_ind([0.020, 0.022], [0.024, 0.025], equal_var=False).pvalue
    assert (f"Against the closest rival, depth 2 at its best lr 0.1 (2.45%), not decided at n = 2: depth 1 and "
            f"depth 2 are not distinguishable at n = 2 (p = {p:.2f}); a seed of depth 1 beats one of depth 2 with "
            f"probability 1.00 (95% CI 1.00 to 1.00); at the gap and spread seen, about ") in md
    assert "Best learning rate per depth: depth 1 at lr 0.01: 2.10% (n = 2); depth 2 at lr 0.1: 2.45% (n = 2)." in md
    table = md.split("Each depth at its best learning rate")[1].split("![")[0]
    assert "| 3.05% " in table  # the test error of depth 1 at lr 0.01 is shown, though it did not choose
    grid = md.split("## Grid 'width'")[1]
    assert "No finished runs yet: nothing to compare (4 runs planned)." in grid
    assert "4 of 4 runs have no finished result yet." in grid
    names = {p.name for p in out.iterdir()}
    assert {"lr_by_depth_error_vs_lr.png", "lr_by_depth_best_curves.png"} <= names
    assert not any(n.startswith("width") for n in names)
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 3


def test_report_of_a_sweep_with_no_finished_run(tmp_path):
    from test_results import new_store

    _, uri, _, _ = new_store(tmp_path, SEEDED.replace("seeded", "unstarted"), "unstarted.yaml")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["report", str(tmp_path / "unstarted.yaml"), "--out", str(out),
                                       "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    md = (out / "report.md").read_text()
    assert md.count("No finished runs yet") == 2 and "12 planned runs: 0 done" in md
    assert "## Setup\n\nNo run has finished yet." in md and "Machine and time: no run has finished yet." in md
    assert "| lr_by_depth | depth, lr " in md and "| 0 of 8 " in md  # what each grid would train
    assert "**Depth.** Grid 'lr_by_depth' varies it but has no finished run yet." in md
    assert "12 runs have no finished result" in md and not list(out.glob("*.png"))


def test_a_failed_report_leaves_nothing_behind(seeded, tmp_path, monkeypatch):
    from sweep.results import report

    folder, uri = seeded

    def broken(blocks, path):
        raise RuntimeError("the PDF renderer broke")

    monkeypatch.setattr(report, "render_pdf", broken)
    out = tmp_path / "reports" / "seeded"
    result = CliRunner().invoke(main, ["report", str(folder / "seeded.yaml"), "--out", str(out), "--tracking-uri", uri])
    assert result.exit_code != 0 and "the PDF renderer broke" in str(result.exception)
    assert not (tmp_path / "reports").exists()

    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    result = CliRunner().invoke(main, ["report", str(folder / "seeded.yaml"), "--out", str(out), "--tracking-uri", uri])
    assert result.exit_code != 0 and sorted(os.listdir(tmp_path / "reports")) == ["seeded"]
    assert os.listdir(out) == ["notes.txt"]


@pytest.mark.system
def test_best_skips_the_diverged_run_and_registers_a_servable_model(known, tiny_data, tmp_path, monkeypatch):
    spec_path, uri, folder = known
    result = CliRunner().invoke(main, ["best", str(spec_path), "--grid", "lr_by_activation", "--format", "csv",
                                       "--tracking-uri", uri, "--register", "mnist-known"])
    assert result.exit_code == 0, result.output
    rows = result.stdout.splitlines()
    assert rows[0].startswith("activation,lr,test_error") and rows[1].startswith("relu,0.1") and rows[2].startswith("tanh,0.1")
    row = dict(zip(rows[0].split(","), rows[1].split(",")))
    assert (row["n"], row["p_value"], row["distinguishable"]) == ("1", "", "")  # n = 1: no p, no verdict
    table = CliRunner().invoke(main, ["best", str(spec_path), "--grid", "lr_by_activation", "--tracking-uri", uri])
    assert "n = 1 per setting: no interval can be given" in table.stdout
    versions = MlflowClient(uri).search_model_versions("name = 'mnist-known'")
    assert len(versions) == 1
    model = MlflowClient(uri).get_registered_model("mnist-known")
    assert model.name == "mnist-known"

    pixels = ((tiny_data.test_x[:6] * 0.3081 + 0.1307) * 255).round().numpy()
    request = {"dataframe_split": {"columns": [f"pixel_{i}" for i in range(784)], "data": pixels.tolist()}}
    (tmp_path / "input.json").write_text(json.dumps(request))
    mlflow_bin = os.path.join(os.path.dirname(sys.executable), "mlflow")
    proc = subprocess.run([mlflow_bin, "models", "predict", "-m", "models:/mnist-known/1", "-i",
                           str(tmp_path / "input.json"), "-t", "json", "--env-manager", "local",
                           "-o", str(tmp_path / "out.json")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 0, proc.stderr[-2000:]
    served = [row["digit"] for row in json.loads((tmp_path / "out.json").read_text())["predictions"]]
    run_id = rows[1].split(",")[-2]
    agent = load_agent(MlflowClient(uri).download_artifacts(run_id, "mnist_agent.pt", str(tmp_path)))
    images = (torch_tensor(pixels) / 255.0 - 0.1307) / 0.3081
    assert served == agent(images).argmax(1).tolist()
    assert np.isclose(sum(json.loads((tmp_path / "out.json").read_text())["predictions"][0][f"p{d}"]
                          for d in range(10)), 1.0, atol=1e-4)

    # the commands `--register` prints, run as printed in an empty folder with nothing set
    printed = result.stderr.split("to predict with it:\n")[1].strip().splitlines()
    assert [line.split()[0] for line in printed] == ["export", "mlflow", "mlflow"]
    assert "-m models:/mnist-known@champion " in printed[-1]
    shell = tmp_path / "shell"
    shell.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    done = subprocess.run(["bash", "-ec", "\n".join(printed)], cwd=shell, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(json.loads(done.stdout.strip().splitlines()[-1])["predictions"]) == 3  # the three example images

    # from the sweep's folder, where the store is ./mlflow.db, MLflow's own commands need nothing set
    monkeypatch.chdir(folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    again = CliRunner().invoke(main, ["best", spec_path.name, "--grid", "lr_by_activation",
                                      "--register", "mnist-known"])
    assert again.exit_code == 0, again.output
    printed = again.stdout.split("to predict with it:\n")[1].strip().splitlines()
    assert [line.split()[:2] for line in printed] == [["mlflow", "artifacts"], ["mlflow", "models"]]
    runs = len(MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("known").experiment_id]))
    count = "python -c 'import mlflow; print(len(mlflow.search_runs(experiment_names=[\"known\"])))'"
    done = subprocess.run(["bash", "-ec", "\n".join([*printed, "echo", count])], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout.strip().splitlines()
    assert len(json.loads(out[-2])["predictions"]) == 3 and out[-1] == str(runs)
    assert str(MlflowClient(uri).get_model_version_by_alias("mnist-known", "champion").version) == "2"


def torch_tensor(array):
    import torch

    return torch.tensor(array, dtype=torch.float32)


def test_report_without_a_store_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "s.yaml").write_text(SPEC)
    result = CliRunner().invoke(main, ["report", "s.yaml"])
    assert result.exit_code == 2 and "run `sweep run s.yaml` first" in result.output
