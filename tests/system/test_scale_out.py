"""Scale-out for real on this machine: an MLflow tracking server on 127.0.0.1 and a dask (and ray)
cluster on loopback, running a small sweep on tiny IDX data."""
import os
import time
from collections import Counter

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from mnist_core import load_agent
from sweep.cli import main
from sweep.queue import schema

from servers import free_port, mlflow_server

pytestmark = pytest.mark.system  # subprocesses, signals, clusters, store races

SPEC = "experiment: {name}\ndefaults: {{epochs: 2}}\ngrids:\n  g: {{lr: [0.05, 0.1, 0.2], width: [16, 32]}}\n"


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("server")
    with mlflow_server(f"sqlite:///{folder}/mlflow.db", folder / "artifacts") as url:
        yield url


def check_sweep_arrived(url, experiment, tmp_path):
    client = MlflowClient(url)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], schema.TRAINING_RUNS)
    assert len(runs) == 6 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        for metric in ("train_loss", "train_error", "test_loss", "test_error", "lr"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == [1, 2]
        agent = load_agent(client.download_artifacts(run.info.run_id, "mnist_agent.pt", str(tmp_path)))
        assert agent.config.lr == float(run.data.params["lr"])
    best = CliRunner().invoke(main, ["best", "--experiment", experiment, "--by", "width", "--format", "csv",
                                     "--tracking-uri", url])
    assert best.exit_code == 0, best.output
    assert len(best.output.splitlines()) == 3


def test_dask_cluster_through_a_tracking_server(tracking_server, tiny_dir, tmp_path):
    from dask.distributed import LocalCluster

    spec = tmp_path / "dask.yaml"
    spec.write_text(SPEC.format(name="on-dask"))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        result = CliRunner().invoke(main, ["run", str(spec), "--backend", "dask", "--address",
                                           cluster.scheduler_address, "--tracking-uri", tracking_server,
                                           "--data-dir", str(tiny_dir)])
    assert result.exit_code == 0, result.output
    assert "summary: 6 done, 0 diverged, 0 failed" in result.output
    check_sweep_arrived(tracking_server, "on-dask", tmp_path)


def test_ray_through_a_tracking_server(tracking_server, tiny_dir, tmp_path):
    pytest.importorskip("ray")
    spec = tmp_path / "ray.yaml"
    spec.write_text(SPEC.format(name="on-ray"))
    result = CliRunner().invoke(main, ["run", str(spec), "--backend", "ray", "--jobs", "2",
                                       "--tracking-uri", tracking_server, "--data-dir", str(tiny_dir)])
    assert result.exit_code == 0, result.output
    assert "summary: 6 done, 0 diverged, 0 failed" in result.output
    check_sweep_arrived(tracking_server, "on-ray", tmp_path)


def test_remote_backend_refuses_a_local_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "s.yaml").write_text(SPEC.format(name="x"))
    result = CliRunner().invoke(main, ["run", "s.yaml", "--backend", "dask", "--address", "tcp://127.0.0.1:1"])
    assert result.exit_code == 2
    assert "mlflow server --host" in result.output and "--tracking-uri http://" in result.output
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()


def test_unreachable_scheduler_is_a_clear_error(tracking_server, tmp_path):
    (tmp_path / "s.yaml").write_text(SPEC.format(name="nowhere"))
    result = CliRunner().invoke(main, ["run", str(tmp_path / "s.yaml"), "--backend", "dask", "--address",
                                       f"tcp://127.0.0.1:{free_port()}", "--tracking-uri", tracking_server])
    assert result.exit_code == 2 and "cannot reach the dask scheduler" in result.output


def test_a_dask_worker_killed_mid_round_costs_only_its_run(tracking_server, tiny_dir, tmp_path, monkeypatch):
    """A dask worker dies under its run while the other worker's task goes on: the survivor finishes
    its run (nobody ends a run whose holder beats), dask hands the dead worker's job to a new worker,
    whose claim sees the holder gone and trains that run again: every key once."""
    import signal
    import threading

    from dask.distributed import LocalCluster

    spec = tmp_path / "killed.yaml"
    spec.write_text("experiment: dask-killed\ndefaults: {epochs: 40, width: 64}\n"
                    "grids:\n  g: {lr: [0.01, 0.02, 0.05, 0.1]}\n")
    client = MlflowClient(tracking_server)
    killed = []

    def kill_the_first_holder():
        while not killed:
            exp = client.get_experiment_by_name("dask-killed")
            running = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING' and "
                                         + schema.TRAINING_RUNS) if exp else []
            if len(running) >= 2:
                os.kill(int(running[0].data.tags[schema.HOLDER].split(":")[1]), signal.SIGKILL)
                killed.append(running[0].data.tags[schema.KEY])
            time.sleep(0.05)

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        killer = threading.Thread(target=kill_the_first_holder, daemon=True)
        killer.start()
        result = CliRunner().invoke(main, ["run", str(spec), "--backend", "dask", "--address",
                                           cluster.scheduler_address, "--tracking-uri", tracking_server,
                                           "--data-dir", str(tiny_dir), "--engine", "solo"])
        killer.join(timeout=5)
    assert killed and result.exit_code == 0, result.output
    exp = client.get_experiment_by_name("dask-killed")
    runs = client.search_runs([exp.experiment_id], schema.TRAINING_RUNS)
    finished = Counter(r.data.tags[schema.KEY] for r in runs if r.info.status == "FINISHED")
    assert len(finished) == 4 and set(finished.values()) == {1}  # every key once: the survivor's run too
    assert not [r for r in runs if r.info.status == "RUNNING"]
    lost = [r for r in runs if r.data.tags[schema.KEY] == killed[0] and r.info.status != "FINISHED"]
    assert len(lost) == 1 and lost[0].info.status == "KILLED" and "is gone" in lost[0].data.tags[schema.ERROR]
