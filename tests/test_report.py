"""`sweep report` on a store whose runs are known, and model registration round trips."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from mnist_core import RunConfig, load_agent, save_agent, train
from sweep import tracking
from sweep.cli import main
from sweep.spec import expand, parse_spec

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
    spec_path = folder / "known.yaml"
    spec_path.write_text(SPEC)
    spec = parse_spec(SPEC, str(spec_path))
    uri = tracking.resolve_tracking_uri(f"sqlite:///{folder}/mlruns/mlflow.db")
    experiment = tracking.ensure_experiment(uri, "known")
    parent = tracking.parent_run(uri, experiment, spec.name, {})
    agent_model = train(RunConfig(epochs=1, lr=0.1), tiny_data).model
    for run in expand(spec):
        c = run.config
        key = (c.activation, c.lr, c.depth, c.schedule)
        if c.depth == 3:
            continue  # missing
        run_id = tracking.create_training_run(uri, experiment, parent, run.name, run.key, run.grids, spec.name, "s", 1)
        tracking.log_params(uri, run_id, c.as_params())
        diverged = key == ("tanh", 1.0, 2, "fixed")
        final = float("nan") if diverged else ERRORS[key]
        for epoch in range(1, 4):
            error = final if epoch == 3 else 0.5 / epoch
            tracking.log_metrics(uri, run_id, {"test_error": error, "train_error": error / 2, "lr": c.lr,
                                               "test_loss": 0.1, "train_loss": 0.1}, step=epoch)
        agent = save_agent(folder / run.key / "mnist_agent.pt", agent_model, c, {"final_test_error": final})
        tracking.log_artifact(uri, run_id, agent)
        tracking.finish_run(uri, run_id, diverged)
    return spec_path, uri, folder


def test_report_outputs_numbers_missing_and_diverged(known):
    spec_path, uri, folder = known
    out = folder / "out"
    result = CliRunner().invoke(main, ["report", str(spec_path), "--out", str(out), "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    assert {"report.md", "report.html", "report.pdf", "lr_by_activation_error_vs_lr.png",
            "depth_error_vs_depth.png", "schedule_curves.png", "best_per_activation_curves.png"} <= names
    md = (out / "report.md").read_text()
    assert "Best activation: relu at lr 0.1, test error 3.00%, 0.50 percentage points better than tanh (3.50% at lr 0.1)." in md
    assert "Best learning rate per activation: relu 0.1 (3.00%); tanh 0.1 (3.50%)." in md
    assert "Best depth: 2 (test error 4.00%); worst: 1 (4.50%)" in md
    assert "Best schedule: cosine (test error 3.80%); worst: fixed (4.00%)" in md
    assert "Diverged (loss became NaN or infinite; not plotted as errors): tanh-lr1-d2-w50-e3." in md
    assert "relu-lr0.03-d3-w50-e3" in md.split("## Missing runs")[1]
    assert "1 of 3 runs have no finished result yet." in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "<table" in html
    assert (out / "report.pdf").read_bytes()[:5] == b"%PDF-"
    parent = MlflowClient(uri).search_runs([tracking.find_experiment(uri, "known")], "tags.`sweep.kind` = 'parent'")[0]
    logged = {a.path for a in MlflowClient(uri).list_artifacts(parent.info.run_id, "report")}
    assert "report/report.html" in logged and "report/report.pdf" in logged


def test_best_skips_the_diverged_run_and_registers_a_servable_model(known, tiny_data, tmp_path):
    spec_path, uri, folder = known
    result = CliRunner().invoke(main, ["best", str(spec_path), "--grid", "lr_by_activation", "--format", "csv",
                                       "--tracking-uri", uri, "--register", "mnist-known"])
    assert result.exit_code == 0, result.output
    rows = result.output.splitlines()
    assert rows[0].startswith("activation,lr") and rows[1].startswith("relu,0.1") and rows[2].startswith("tanh,0.1")
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


def torch_tensor(array):
    import torch

    return torch.tensor(array, dtype=torch.float32)


def test_report_without_a_store_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "s.yaml").write_text(SPEC)
    result = CliRunner().invoke(main, ["report", "s.yaml"])
    assert result.exit_code == 2 and "run `sweep run s.yaml` first" in result.output
