"""A local worker's warm-up, run as it starts while the sweep's process opens the store: what it
loads for the first job, and what it never does (open or create the store, raise)."""
import os
import shutil
import subprocess
import sys

from conftest import ROOT

WARM = """
import shutil, sys
from sweep.execute.worker import warm_up
uri, data, device = sys.argv[1:]
warm_up(uri, data, device)
print(",".join(m for m in ("mlflow", "mlflow.store.tracking.sqlalchemy_store", "torch", "mnist_core.fused")
               if m in sys.modules))
shutil.rmtree(data, ignore_errors=True)  # what it loaded is in memory: the job reads no file
from mnist_core import load_mnist
print(len(load_mnist(data, "cpu", download=False).train_x))
"""


def warm_up_in_a_new_process(uri, data, device="cpu"):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", WARM, uri, str(data), device], env=env, capture_output=True,
                          text=True, timeout=300)
    return done.returncode, done.stdout.splitlines(), done.stderr


def test_a_worker_loads_mlflow_torch_the_trainer_and_mnist_and_never_opens_the_store(tmp_path, tiny_dir):
    data = shutil.copytree(tiny_dir, tmp_path / "data")
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    code, out, err = warm_up_in_a_new_process(uri, data)
    assert code == 0, err
    assert out == ["mlflow,mlflow.store.tracking.sqlalchemy_store,torch,mnist_core.fused", "320"]
    assert not (tmp_path / "store").exists()  # the sweep's process creates the store: never two at once


def test_what_fails_in_a_warm_up_is_left_to_the_job(tmp_path, tiny_dir):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    for data, device in ((tmp_path / "no-data", "cpu"), (shutil.copytree(tiny_dir, tmp_path / "d"), "cuda:7")):
        code, out, err = warm_up_in_a_new_process(uri, data, device)
        assert out[:1] == ["mlflow,mlflow.store.tracking.sqlalchemy_store,torch,mnist_core.fused"], err
        assert code != 0  # the data was not loaded: the job reads the files, and fails on what the warm-up met
        assert not (tmp_path / "no-data").exists()  # nothing downloaded
