"""Injected faults: two sweeps at once, an unwritable artifact store, unreadable inputs."""
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from sweep.cli import main
from sweep.queue import schema

from conftest import finished_per_key, training_runs, write_spec

pytestmark = pytest.mark.system  # subprocesses, signals, clusters, store races


def test_two_sweeps_started_together_train_each_run_once(stored):
    spec = write_spec(stored, "experiment: tiny\ndefaults: {epochs: 20}\ngrids:\n  g: {lr: [0.01, 0.02, 0.05, 0.1, 0.2, 0.5]}\n")
    procs = [subprocess.Popen([sys.executable, "-m", "sweep.cli", "run", spec, "--jobs", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    runs = training_runs()
    done = finished_per_key(runs)
    assert len(done) == 6 and set(done.values()) == {1}  # every run FINISHED exactly once
    assert len(runs) == 6  # losing claims are withdrawn: no duplicate, no leftover RUNNING run
    trained = sum(out.count("  done  ") for out in outputs)
    assert trained == 6, outputs


def test_unwritable_artifact_store_fails_the_run_clearly(env):
    uri = os.environ["MLFLOW_TRACKING_URI"]
    blocker = env / "not-a-folder"
    blocker.write_text("a file where the artifact folder should be")  # unwritable even for root
    MlflowClient(uri).create_experiment("tiny", artifact_location=(blocker / "artifacts").as_uri())
    spec = write_spec(env, "experiment: tiny\ndefaults: {epochs: 1}\ngrids:\n  g: {lr: [0.1]}\n")
    result = CliRunner().invoke(main, ["run", spec, "--jobs", "1", "--retries", "0"])
    assert result.exit_code == 1
    assert "cannot store the agent" in result.output
    runs = training_runs()
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "cannot store the agent" in runs[0].data.tags[schema.ERROR]
    status = CliRunner().invoke(main, ["status", spec])
    assert "0 done" in status.output and "1 failed" in status.output


def test_corrupt_tracking_store_is_refused_untouched(env):
    db = env / "mlflow.db"
    db.write_bytes(b"this is not a database" * 100)
    before = db.read_bytes()
    spec = write_spec(env, "experiment: tiny\ngrids:\n  g: {lr: [0.1]}\n")
    for command in (["run", spec], ["status", spec], ["plan", spec], ["best", spec]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2, (command, result.output)
        assert "tracking store" in result.output and "Traceback" not in result.output
    assert db.read_bytes() == before


def test_unreadable_sweep_file(env):
    result = CliRunner().invoke(main, ["run", str(env / "missing.yaml")])
    assert result.exit_code == 2 and "missing.yaml: cannot read sweep file" in result.output
    result = CliRunner().invoke(main, ["run", str(env)])
    assert result.exit_code == 2 and "is a directory" in result.output
    assert not (env / "mlruns").exists() and not (env / "mlflow.db").exists()
