"""What the MLflow UI reads: the data each run was measured on, the registered model linked to its
run, and `sweep ui`'s page (model-training mode, the runs ranked by final test error). No browser
here: scripts/mlflow_ui_check.py looks at the UI itself."""
import hashlib
import json
import os
import shutil
import socket
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from mlflow import MlflowClient
from mlflow.entities import LoggedModelStatus

from mnist_core import RunConfig, load_agent, save_agent, train
from mnist_core.data import VALIDATION_SEED, describe_mnist
from sweep import tracking
from sweep.cli import main
from sweep.queue import schema
from sweep.spec import expand
from sweep.tracking.registry import register_agent

from conftest import log_run, new_store, training_runs, write_spec

TINY_SWEEP = """
experiment: tiny
defaults: {epochs: 1}
grids:
  lr: {lr: [0.1, 0.3]}
  held_out: {validation: [40]}
"""


def sha8(*paths) -> str:
    """What the digest of a whole file pair must be: SHA-256 over their bytes, as MLflow shows 8 digits."""
    return hashlib.sha256(b"".join(Path(p).read_bytes() for p in paths)).hexdigest()[:8]


@pytest.mark.system
def test_every_run_names_the_data_it_was_measured_on_without_a_copy(env, tiny_dir):
    result = CliRunner().invoke(main, ["run", write_spec(env, TINY_SWEEP), "--jobs", "2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    raw = tiny_dir / "MNIST" / "raw"
    train_digest = sha8(raw / "train-images-idx3-ubyte", raw / "train-labels-idx1-ubyte")
    test_digest = sha8(raw / "t10k-images-idx3-ubyte", raw / "t10k-labels-idx1-ubyte")
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = training_runs()
    assert len(runs) == 3
    for run in runs:
        inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
        contexts = {name: [(t.key, t.value) for t in d.tags] for name, d in inputs.items()}
        held_out = run.data.params["validation"] == "40"
        assert contexts == {"mnist-train": [("mlflow.data.context", "training")],
                            **({"mnist-validation": [("mlflow.data.context", "validation")]} if held_out else {}),
                            "mnist-test": [("mlflow.data.context", "test")]}
        for d in inputs.values():
            assert d.dataset.source_type == "local" and json.loads(d.dataset.source) == {"uri": str(raw)}
            assert d.dataset.schema is None and len(d.dataset.profile) < 400  # a description, no images
        profile = {name: json.loads(d.dataset.profile) for name, d in inputs.items()}
        assert inputs["mnist-test"].dataset.digest == test_digest and profile["mnist-test"]["images"] == 160
        if held_out:
            train_part, held = inputs["mnist-train"].dataset.digest, inputs["mnist-validation"].dataset.digest
            assert len({train_part, held, train_digest}) == 3  # other images than the whole set, and each other's
            assert (profile["mnist-train"]["images"], profile["mnist-validation"]["images"]) == (280, 40)
            assert str(VALIDATION_SEED) in profile["mnist-validation"]["split"]
        else:
            assert inputs["mnist-train"].dataset.digest == train_digest and profile["mnist-train"]["images"] == 320
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["mnist_agent.pt"]


def test_a_digest_follows_the_files_bytes(tmp_path, tiny_dir):
    copy = Path(shutil.copytree(tiny_dir, tmp_path / "copy"))
    before = describe_mnist(copy, validation=40)
    assert before == describe_mnist(copy, validation=40) and before[2] == describe_mnist(copy)[1]
    labels = copy / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    data = bytearray(labels.read_bytes())
    data[-1] = (data[-1] + 1) % 10
    labels.write_bytes(bytes(data))
    os.utime(labels, ns=(1, 1))  # a new mtime, whatever the file system's clock resolution
    after = describe_mnist(copy, validation=40)
    assert [p.digest != q.digest for p, q in zip(before, after)] == [True, True, False]  # the test set is unchanged
    with pytest.raises(ValueError, match="validation 320 must be less than the 320 training images"):
        describe_mnist(copy, validation=320)


@pytest.fixture(scope="module")
def registered(tmp_path_factory, tiny_data):
    """A store with one finished training run, and its agent registered as 'tiny-model'."""
    tmp_path = tmp_path_factory.mktemp("registered")
    spec, uri, experiment_id, parent = new_store(tmp_path, "experiment: tiny\ngrids: {g: {epochs: [1]}}\n")
    run = expand(spec)[0]
    agent = save_agent(tmp_path / "mnist_agent.pt", train(RunConfig(epochs=1, lr=0.1), tiny_data).model,
                       run.config, {"final_test_error": 0.25})
    run_id = log_run(uri, experiment_id, parent, run, spec.name, 0.25, agent=agent)
    before = MlflowClient(uri).get_run(run_id)
    pixels = ((tiny_data.test_x[:5] * 0.3081 + 0.1307) * 255).round().numpy()
    version = register_agent(uri, run_id, "tiny-model", pixels)
    return uri, experiment_id, run_id, before, version, pixels, agent


def test_the_registered_model_is_linked_to_its_run_as_the_ui_reads_it(registered):
    uri, experiment_id, run_id, before, version, pixels, agent = registered
    client = MlflowClient(uri)
    # the runs table's Models column: the experiment's logged models, by their source run
    logged = client.search_logged_models(experiment_ids=[experiment_id])
    assert [(m.source_run_id, m.status) for m in logged] == [(run_id, LoggedModelStatus.READY)]
    model_id = logged[0].model_id
    # the model's params: what the run was trained with, not how the queue ended it
    assert schema.ENDED in before.data.params
    assert logged[0].params == {k: v for k, v in before.data.params.items() if k != schema.ENDED}
    # the run page and the Models column's registered versions: the versions made from the run
    versions = client.search_model_versions(f"run_id = '{run_id}'")
    assert [(v.name, str(v.version), v.source) for v in versions] == [("tiny-model", version, f"models:/{model_id}")]
    assert versions[0].description == f"The agent of run {before.info.run_name} ({run_id}): final test error 25.00%"
    assert str(client.get_model_version_by_alias("tiny-model", "champion").version) == version  # NAME@champion
    after = client.get_run(run_id)
    assert [o.model_id for o in after.outputs.model_outputs] == [model_id]
    # registering does not reopen the run: a run RUNNING again would pass for unfinished to the queue
    assert (after.info.status, after.info.end_time) == (before.info.status, before.info.end_time)
    assert after.data.metrics == before.data.metrics and len(client.get_metric_history(run_id, "test_error")) == 1


def test_the_registered_version_predicts_what_the_agent_predicts(registered, monkeypatch):
    uri, _, _, _, version, pixels, agent = registered
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # where models:/ looks, for this test only
    model = mlflow.pyfunc.load_model("models:/tiny-model@champion")
    served = model.predict(pd.DataFrame(pixels, columns=[f"pixel_{i}" for i in range(784)]))
    images = torch.tensor((pixels.astype(np.float32) / 255.0 - 0.1307) / 0.3081)
    assert served["digit"].tolist() == load_agent(agent)(images).argmax(1).tolist()


# `sweep ui`: a stand-in for `mlflow ui` that answers one request to /health (or gives up after 3 s),
# writes the arguments it was started with and exits.
FAKE_MLFLOW = """#!{python}
import http.server, sys
open({record!r}, "w").write(" ".join(sys.argv[1:]))
port = int(sys.argv[sys.argv.index("--port") + 1])
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"OK")
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", port), Health)
server.timeout = 3
server.handle_request()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ui_store(tmp_path, monkeypatch):
    """A store holding experiment 'tiny' (as `sweep run` makes it), a fake `mlflow`, and a browser that records."""
    spec, uri, experiment_id, _ = new_store(tmp_path, "experiment: tiny\ngrids: {g: {lr: [0.1]}}\n")
    return (spec, uri, experiment_id, tmp_path, fake_ui(tmp_path, monkeypatch))


def fake_ui(tmp_path, monkeypatch) -> list:
    """A fake `mlflow` (FAKE_MLFLOW) and a browser that records the addresses it is asked to open."""
    fake = tmp_path / "mlflow"
    fake.write_text(FAKE_MLFLOW.format(python=sys.executable, record=str(tmp_path / "server-args")))
    fake.chmod(0o755)
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: str(fake) if name == "mlflow" else None)
    opened = []
    monkeypatch.setattr("webbrowser.open", lambda url, *args, **kwargs: opened.append(url) or True)
    for name in ("BROWSER", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    return opened


def test_sweep_ui_shows_the_best_agent_of_each_question_as_a_model_of_its_run(tmp_path, tiny_data, monkeypatch):
    from sweep.queue.schema import QUESTION

    spec, uri, experiment_id, parent = new_store(
        tmp_path, "experiment: q\ndefaults: {epochs: 1}\ngrids:\n  a: {lr: [0.1, 0.2]}\n  b: {lr: [0.3]}\n")
    model = train(RunConfig(epochs=1, lr=0.1), tiny_data).model
    error = {0.1: 0.3, 0.2: 0.2, 0.3: 0.25}
    run_of = {}
    for run in expand(spec):
        agent = save_agent(tmp_path / run.key / "mnist_agent.pt", model, run.config, {})
        run_of[run.config.lr] = log_run(uri, experiment_id, parent, run, spec.name, error[run.config.lr], agent=agent)
    fake_ui(tmp_path, monkeypatch)
    client = MlflowClient(uri)

    def show():
        result = CliRunner().invoke(main, ["ui", spec.path, "--tracking-uri", uri, "--port", str(free_port()),
                                           "--no-browser"])
        assert result.exit_code == 0, result.output
        models = client.search_logged_models(experiment_ids=[experiment_id])
        return result.output, {m.tags[QUESTION]: (m.source_run_id, m.model_id) for m in models}

    output, models = show()
    assert "logged the best agent of a, b as a model of its run" in output
    assert {q: run for q, (run, _) in models.items()} == {"a": run_of[0.2], "b": run_of[0.3]}
    assert [o.model_id for o in client.get_run(run_of[0.2]).outputs.model_outputs] == [models["a"][1]]
    served = mlflow.pyfunc.load_model(client.get_logged_model(models["a"][1]).artifact_location)  # MLflow serves it
    blank = pd.DataFrame(np.zeros((1, 784), dtype=np.float32), columns=[f"pixel_{i}" for i in range(784)])
    assert list(served.predict(blank)) == ["digit", *[f"p{d}" for d in range(10)]]

    again, same = show()  # logged once per winner
    assert "logged the best agent" not in again and same == models

    client.delete_run(run_of[0.2])  # another run wins question a: its model replaces the old one
    later, now = show()
    assert "logged the best agent of a as a model" in later
    assert now["a"][0] == run_of[0.1] and now["b"] == models["b"] and now["a"][1] != models["a"][1]


def test_sweep_ui_prints_and_opens_the_runs_ranked_as_sweep_best_ranks_them(ui_store, monkeypatch):
    spec, uri, experiment_id, folder, opened = ui_store
    monkeypatch.setenv("DISPLAY", ":0")
    port = free_port()
    result = CliRunner().invoke(main, ["ui", spec.path, "--tracking-uri", uri, "--port", str(port)])
    assert result.exit_code == 0, result.output
    url = (f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs"
           f"?workflowType=machine_learning&viewStateShareKey=sweep-runs")
    assert url in result.output.splitlines()[1] and opened == [url]
    assert (folder / "server-args").read_text() == (f"ui --backend-store-uri {uri} --host 127.0.0.1 --port {port} "
                                                    f"--uvicorn-opts --no-access-log")
    tags = MlflowClient(uri).get_experiment(experiment_id).tags
    assert tags[schema.EXPERIMENT_KIND] == schema.MODEL_TRAINING
    view = json.loads(tags[schema.VIEW_TAG])
    state = json.loads(view["state"])
    assert view["name"] == "Sweep: ranked by final_val_error"  # no run holds no images out
    assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`final_val_error`", True)
    settings = [f"params.`{s}`" for s in ("activation", "lr", "depth", "width", "schedule", "seed")]
    assert {"metrics.`final_test_error`", "metrics.`final_val_error`", "attributes.`Dataset`",
            "attributes.`Models`", *settings} <= set(state["selectedColumns"])
    assert state["columnOrder"][2:4] == ["metrics.`final_val_error`", "metrics.`final_test_error`"]
    assert all(state["columnWidths"][c] > 0 for c in settings) and state["columnWidths"]["attributes.`Run Name`"] >= 250


def test_the_view_ranks_by_test_error_once_a_run_holds_no_images_out(ui_store):
    spec, uri, experiment_id, folder, _ = ui_store
    from sweep import queue
    from sweep.tracking.mlflow_store import MlflowStore

    parent = queue.parent_run(MlflowStore(uri), experiment_id, spec.name, {})
    log_run(uri, experiment_id, parent, expand(spec)[0], spec.name, 0.2)  # validation 0: no val error
    assert tracking.ensure_runs_view(uri, experiment_id) == "final_test_error"
    state = json.loads(json.loads(MlflowClient(uri).get_experiment(experiment_id).tags[tracking.VIEW_TAG])["state"])
    assert state["orderByKey"] == "metrics.`final_test_error`"


@pytest.mark.system
def test_sweep_ui_stopped_by_sigterm_stops_its_server(ui_store, tmp_path):
    import signal
    import subprocess
    import time

    spec, uri, _, folder, _ = ui_store
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "server-pid"
    (bin_dir / "mlflow").write_text(f"#!{sys.executable}\nimport os, time\n"
                                    f"open({str(record)!r}, 'w').write(str(os.getpid()))\ntime.sleep(600)\n")
    (bin_dir / "mlflow").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen([sys.executable, "-m", "sweep.cli", "ui", spec.path, "--tracking-uri", uri,
                             "--no-browser", "--port", str(free_port())], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not record.exists() or not record.read_text():
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    server = int(record.read_text())
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "interrupted", (out, err)
    with pytest.raises(ProcessLookupError):
        os.kill(server, 0)  # ended and reaped: not left running behind the command


def test_sweep_ui_without_a_display_only_prints_and_gives_an_old_experiment_its_view(ui_store):
    spec, uri, experiment_id, folder, opened = ui_store
    client = MlflowClient(uri)
    client.delete_experiment_tag(experiment_id, tracking.VIEW_TAG)  # an experiment made before the view existed
    port = free_port()
    result = CliRunner().invoke(main, ["ui", spec.path, "--tracking-uri", uri, "--port", str(port)])
    assert result.exit_code == 0, result.output
    assert tracking.runs_page(f"http://127.0.0.1:{port}", experiment_id) in result.output and opened == []
    view = json.loads(client.get_experiment(experiment_id).tags[tracking.VIEW_TAG])
    expected = json.loads(tracking.runs_view())
    assert (view["name"], view["state"]) == (expected["name"], expected["state"])

    mine = json.dumps({"name": "mine", "createdAt": 1, "updatedAt": 1, "state": "{}"})
    client.set_experiment_tag(experiment_id, tracking.VIEW_TAG, mine)  # a user changed the view: it stays
    result = CliRunner().invoke(main, ["ui", spec.path, "--tracking-uri", uri, "--port", str(free_port()),
                                       "--no-browser"])
    assert result.exit_code == 0 and client.get_experiment(experiment_id).tags[tracking.VIEW_TAG] == mine


def test_sweep_ui_on_a_store_without_the_experiment_opens_the_experiment_list(ui_store):
    spec, uri, _, folder, opened = ui_store
    port = free_port()
    result = CliRunner().invoke(main, ["ui", "--experiment", "elsewhere", "--tracking-uri", uri, "--port", str(port)])
    assert result.exit_code == 0, result.output
    assert "no experiment 'elsewhere'" in result.output and f"  http://127.0.0.1:{port}\n" in result.output
