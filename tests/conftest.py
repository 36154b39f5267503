"""Shared fixtures: tiny MNIST files in the real IDX format, written by the tests themselves."""
from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

REAL_DATA = os.environ.get("MNIST_DATA")
ROOT = Path(__file__).resolve().parent.parent  # the repository
if str(ROOT) not in sys.path:  # before tests/ (where pytest puts this folder): tests/sweep is no package
    sys.path.insert(0, str(ROOT))


def schema():
    """sweep.queue.schema, the stored run's vocabulary (imported once ROOT is on the path)."""
    from sweep.queue import schema

    return schema


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: magic (0, 0, type 0x08 = ubyte, ndim), big-endian int32 dims, then the bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def tiny_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable fake digits: label k lights a bar in row band k, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    images = rng.integers(0, 60, size=(n, 28, 28))
    for i, k in enumerate(labels):
        images[i, 2 + 2 * k: 4 + 2 * k, 4:24] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


def make_mnist_dir(root: Path, n_train: int = 320, n_test: int = 160, flat: bool = False) -> Path:
    raw = root if flat else root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = tiny_digits(n, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return make_mnist_dir(tmp_path_factory.mktemp("tiny_mnist"))


@pytest.fixture(scope="session")
def tiny_data(tiny_dir):
    from mnist_core.data import load_mnist

    return load_mnist(tiny_dir, "cpu", download=False)


@pytest.fixture(scope="session")
def tiny_data64(tiny_dir):
    """The tiny set in float64, for proofs that two code paths compute the same mathematics."""
    import torch

    from mnist_core.data import load_mnist

    return load_mnist(tiny_dir, "cpu", download=False, dtype=torch.float64)


# Tests that compare numbers pin torch's thread count (some tests change it, e.g. the CLI's
# --threads): to $OMP_NUM_THREADS, so running the suite at 1, 2 and 4 threads tries each.
PINNED_THREADS = int(os.environ.get("OMP_NUM_THREADS") or 1)


@pytest.fixture
def pinned_threads():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(PINNED_THREADS)
    yield PINNED_THREADS
    torch.set_num_threads(before)


def relative_gap(a, b) -> float:
    """Largest relative difference, ||a - b|| / ||b||, over the tensors of two state dicts."""
    return max(((a[name] - b[name]).norm() / b[name].norm()).item() for name in b)


@pytest.fixture
def real_data_dir():
    if not REAL_DATA:
        pytest.skip("MNIST_DATA is not set: the integration tests need the real MNIST files")
    return REAL_DATA


# Helpers of the end-to-end sweep tests: a working folder with tiny data and its own store.
@pytest.fixture
def env(tmp_path, tiny_dir, monkeypatch):
    """A working folder with tiny data, its store to be (no store yet)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MNIST_DATA", str(tiny_dir))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")  # the default store, said
    return tmp_path


@pytest.fixture(scope="session")
def template_store(tmp_path_factory) -> Path:
    """One empty store, made once: making a store runs MLflow's migrations (about a second)."""
    from sweep.tracking.location import open_store

    folder = tmp_path_factory.mktemp("template")
    open_store(f"sqlite:///{folder}/mlflow.db")
    return folder / "mlflow.db"


@pytest.fixture
def stored(env, template_store):
    """`env` with its (empty) store made, as after a first command: a copy of the template."""
    shutil.copy(template_store, env / "mlflow.db")
    return env


# A run's epochs made to last this long by sleeping (see faults/sitecustomize.py): runs hold their
# leases for seconds without keeping the 2 cores busy.
SLEEPY = {"epoch_sleep": 0.5}
DROWSY = {"epoch_sleep": 1.0}


def write_spec(folder, body, name="s.yaml"):
    path = folder / name
    path.write_text(body)
    return str(path)


def training_runs(experiment="tiny"):
    from mlflow import MlflowClient

    from sweep import tracking

    uri = os.environ["MLFLOW_TRACKING_URI"]
    experiment_id = tracking.find_experiment(uri, experiment)
    return MlflowClient(uri).search_runs([experiment_id], schema().TRAINING_RUNS, max_results=1000)


def finished_per_key(runs):
    return Counter(r.data.tags[schema().KEY] for r in runs if r.info.status == "FINISHED")



FAULTS = Path(__file__).parent / "faults"
_STARTED: list = []  # the sweep_process groups of the running test


@pytest.fixture(autouse=True)
def _no_sweep_left_behind():
    """A test that fails half way may leave a sweep it started stopped or running: end its group."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            for signum in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, signum)
                except ProcessLookupError:
                    break
            proc.wait()


def sweep_process(*args, faults=None, stdout=subprocess.PIPE, started=True) -> subprocess.Popen:
    """`python -m sweep.cli ARGS` in a process group of its own (as a shell runs a job), with the
    test's environment; `faults` (see faults/sitecustomize.py) are injected into it and its workers.
    With `started`, returns once it has said what it will train (its store exists by then); what it
    printed so far is kept as `.first_line`."""
    env = dict(os.environ)
    if faults is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FAULTS), env.get("PYTHONPATH")]))
        env["SWEEP_TEST_FAULTS"] = json.dumps(faults)
    proc = subprocess.Popen([sys.executable, "-m", "sweep.cli", *map(str, args)], stdout=stdout,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    _STARTED.append(proc)
    proc.first_line = ""
    while started and stdout == subprocess.PIPE:  # up to the line saying what it will train
        line = proc.stdout.readline()
        proc.first_line += line
        if not line or " to train" in line:
            break
    return proc


def store_runs(experiment="tiny"):
    """The experiment's training runs, or [] while the store or the experiment does not exist."""
    uri = os.environ["MLFLOW_TRACKING_URI"]
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return []  # reading would create it, racing the sweep that is creating it
    try:
        return training_runs(experiment)
    except Exception:
        return []


def wait_until(predicate, timeout=60.0, every=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")


def holder_pid(run) -> int:
    return int(run.data.tags[schema().HOLDER].split(":")[1])


def assert_each_key_finished_once(runs, keys):
    """Every key FINISHED exactly once, nothing left RUNNING, no finished run carrying an error."""
    assert finished_per_key(runs) == Counter({k: 1 for k in keys}), finished_per_key(runs)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert not [r for r in runs if r.info.status == "FINISHED" and r.data.tags.get(schema().ERROR)]


def finish(proc, timeout=300) -> str:
    """Wait for a `sweep_process` to end; its whole output."""
    return proc.first_line + proc.communicate(timeout=timeout)[0]


# Stores of known runs, written the way a worker writes them: claimed, logged through the lease, finished.
def new_store(folder, spec_text, name="s.yaml"):
    from sweep import queue, tracking
    from sweep.spec import parse_spec
    from sweep.tracking.location import open_store
    from sweep.tracking.mlflow_store import MlflowStore

    path = folder / name
    path.write_text(spec_text)
    spec = parse_spec(spec_text, str(path))
    uri = open_store(f"sqlite:///{folder}/mlflow.db")
    experiment_id = tracking.ensure_experiment(uri, spec.experiment)
    parent = queue.parent_run(MlflowStore(uri), experiment_id, spec.name, {})
    return spec, uri, experiment_id, parent


def log_run(uri, experiment_id, parent, run, sweep_name, test_error, *, train_error=None, val_error=None,
            status="FINISHED", diverged=False, pruned=False, epochs_completed=None, agent=None):
    """One training run with known numbers: per-epoch metrics (the last epoch's are the values
    given, earlier ones 0.5 / epoch), the summary, the agent (a placeholder file unless given), its end."""
    import math
    import tempfile

    from sweep import queue
    from sweep.tracking.mlflow_store import MlflowStore

    lease = queue.claim(MlflowStore(uri), experiment_id, parent, run, sweep_name, "test-session")
    lease.log_params(run.config.as_params())
    epochs = run.config.epochs if epochs_completed is None else epochs_completed
    for epoch in range(1, epochs + 1):
        last = epoch == epochs
        early = 0.5 / epoch
        metrics = {"test_error": test_error if last else early,
                   "train_error": (train_error if train_error is not None else test_error / 2) if last else early / 2,
                   "test_loss": 0.1, "train_loss": 0.1, "lr": run.config.lr}
        if val_error is not None:
            metrics.update(val_error=val_error if last else early, val_loss=0.2)
        lease.log_epoch(metrics, epoch)
    summary = {"epochs_completed": float(epochs), "final_test_error": test_error, "training_seconds": 1.0,
               "best_test_error": test_error if math.isnan(test_error) else min(test_error, 0.5 / max(epochs - 1, 1))}
    if val_error is not None:
        summary.update(final_val_error=val_error, best_val_error=val_error)
    if status != "FINISHED":
        lease.log_epoch(summary, epochs)
        (lease.fail if status == "FAILED" else lease.kill)("RuntimeError: boom")
        return lease.run_id
    with tempfile.TemporaryDirectory() as tmp:
        if agent is None:
            agent = Path(tmp) / "mnist_agent.pt"
            agent.write_bytes(b"a placeholder: these tests never load it")
        assert lease.finish(summary, epochs, agent, diverged, stopped=pruned)
    return lease.run_id


@pytest.fixture
def immutable():
    """chattr +i: unwritable even for root (which ignores permission bits); undone afterwards."""
    made = []

    def make(path: Path):
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available here")
        made.append(path)
    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)])
