"""A local worker's warm-up, run as it starts while the sweep's process opens the store: what it
loads for the first job, and what it never does (import MLflow, open or create the store, raise)."""
import os
import shutil
import subprocess
import sys

from conftest import ROOT

WARM = """
import gc, shutil, sys
from sweep.execute.worker import warm_up
data, device = sys.argv[1:]
warm_up(data, device)
# what loky's full collection after the first task would look at, against what the warm-up froze
print(f"{len(gc.get_objects())} to collect, {gc.get_freeze_count()} frozen", file=sys.stderr)
print(gc.get_freeze_count() > 100 * len(gc.get_objects()))
print(",".join(m for m in ("mlflow", "mlflow.store.tracking.sqlalchemy_store", "torch", "mnist_core.fused")
               if m in sys.modules))
shutil.rmtree(data, ignore_errors=True)  # what it loaded is in memory: the job reads no file
from mnist_core import load_mnist
print(len(load_mnist(data, "cpu").train_x))
"""


def warm_up_in_a_new_process(data, device="cpu", cwd=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", WARM, str(data), device], env=env, capture_output=True,
                          text=True, timeout=300, cwd=cwd)
    return done.returncode, done.stdout.splitlines(), done.stderr


def test_a_worker_loads_torch_the_trainer_and_mnist_never_mlflow_nor_the_store(tmp_path, tiny_dir):
    data = shutil.copytree(tiny_dir, tmp_path / "data")
    (tmp_path / "here").mkdir()
    code, out, err = warm_up_in_a_new_process(data, cwd=tmp_path / "here")
    assert code == 0, err
    # its store requests go through the sweep's process (tracking.relay): MLflow is not for a worker
    assert out == ["True", "torch,mnist_core.fused", "320"], err
    assert not list((tmp_path / "here").iterdir())  # nothing made where it runs: no store, no mlruns


def test_what_fails_in_a_warm_up_is_left_to_the_job(tmp_path, tiny_dir):
    for data, device in ((tmp_path / "no-data", "cpu"), (shutil.copytree(tiny_dir, tmp_path / "d"), "cuda:7")):
        code, out, err = warm_up_in_a_new_process(data, device)
        assert out[1:2] == ["torch,mnist_core.fused"], err
        assert code != 0  # the data was not loaded: the job reads the files, and fails on what the warm-up met


GATED = """
import multiprocessing, socket, sys, threading, time
from sweep.execute.worker import Job, execute, warm_up
from sweep.queue import MemoryStore
data, first = sys.argv[1:]
warmers, taken = multiprocessing.Semaphore(1 if first == "yes" else 0), multiprocessing.Semaphore(0)
if first == "yes":  # a slot of the first round: it warms up, and lets the others go once it takes a job
    warm_up(data, "cpu", warmers, taken)
    print("torch" in sys.modules, taken.acquire(timeout=0))
    gone = f"{socket.gethostname()}:999999999:1.00"  # the sweep that sent the job has ended: nothing to do
    execute(Job(runs=(), store=MemoryStore("index"), experiment_id="0", parent_run_id="", sweep_name="s",
                session="s", owner=gone))
    print(taken.acquire(timeout=0))
else:  # no slot left: it loads nothing, and waits until a warm worker has taken a job
    threading.Timer(1.0, taken.release).start()
    start = time.time()
    warm_up(data, "cpu", warmers, taken)
    print("torch" in sys.modules, time.time() - start >= 1.0, taken.acquire(timeout=0))
"""


def test_the_first_rounds_jobs_land_on_warm_workers_and_the_others_wait_for_them(tmp_path, tiny_dir):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    said = {}
    for first in ("yes", "no"):
        done = subprocess.run([sys.executable, "-c", GATED, str(tiny_dir), first],
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        said[first] = done.stdout.split()
    assert said == {"yes": ["True", "False", "True"],     # warm; no job yet; its first job lets the others go
                    "no": ["False", "True", "True"]}      # cold; waited for that; and passed it on
