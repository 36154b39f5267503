"""One job in a worker process: claim its runs, pick a device, train (alone or fused), log, save agents.

The job restores all the process state it needs (threads, device, tracking URI) from its
arguments; it relies on nothing inherited from the parent.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import traceback
from dataclasses import dataclass
from typing import Optional

from mnist_core import AGENT_FILENAME, load_mnist, resolve_device, save_agent, train
from mnist_core.fused import train_fused

from . import queue, tracking
from .devices import GpuPool, gpu_count
from .spec import PlannedRun

# Fault injection for the tests: $SWEEP_TEST_HOOKS names a JSON file {"crash": [...], "fail": [...]}
# of run keys ("KEY" for every attempt, "KEY@N" for attempt N only). A crash is os._exit mid-run.
HOOKS_ENV = "SWEEP_TEST_HOOKS"


@dataclass(frozen=True)
class Job:
    runs: tuple                         # PlannedRun; several of one shape train fused
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    sweep_name: str
    session: str
    attempt: int = 1
    data_dir: Optional[str] = None
    device: str = "auto"
    threads: int = 1
    gpus: Optional[int] = None          # GPUs of the worker's host; None: count them there
    gpu_lock_dir: Optional[str] = None  # where that host's GPU slot locks live (tests)
    fused: bool = False                 # train even a single run through the fused engine


@dataclass(frozen=True)
class Outcome:
    key: str
    name: str
    status: str              # done, diverged, failed, skipped (done or held elsewhere)
    run_id: str = ""
    test_error: float = float("nan")
    seconds: float = 0.0
    error: str = ""


class _Heartbeat:
    """Refreshes the run's heartbeat tag from a thread, so the claim stays live while training."""

    def __init__(self, uri: str, run_ids: list, every: float = queue.HEARTBEAT_SECONDS):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(uri, run_ids, every), daemon=True)

    def _loop(self, uri, run_ids, every):
        while not self._stop.wait(every):
            for run_id in run_ids:
                with contextlib.suppress(Exception):  # a missed beat only shortens the lease
                    tracking.beat(uri, run_id)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _test_hooks(key: str, attempt: int) -> None:
    path = os.environ.get(HOOKS_ENV)
    if not path or not os.path.exists(path):
        return
    with open(path) as f:
        hooks = json.load(f)
    hit = {key, f"{key}@{attempt}"}
    if hit & set(hooks.get("crash", ())):
        os._exit(3)
    if hit & set(hooks.get("fail", ())):
        raise RuntimeError(f"injected failure for run {key}, attempt {attempt}")


@contextlib.contextmanager
def _device_for(job: Job):
    """With two or more GPUs on this host and device auto, hold one GPU to this run alone."""
    gpus = gpu_count() if job.gpus is None else job.gpus
    if gpus >= 2 and job.device == "auto":
        with GpuPool(gpus, job.gpu_lock_dir).acquire() as index:
            yield f"cuda:{index}"
    else:
        yield job.device


def execute(job: Job) -> list[Outcome]:
    """Train the job's runs: one alone, or several of one shape fused into one batched model."""
    import torch

    torch.set_num_threads(job.threads)
    uri = job.tracking_uri
    outcomes, claimed = [], []
    for planned in job.runs:
        run_id = queue.claim(uri, job.experiment_id, job.parent_run_id, planned, job.sweep_name,
                             job.session, job.attempt)
        if run_id is None:
            outcomes.append(Outcome(planned.key, planned.name, "skipped"))
        else:
            claimed.append((planned, run_id))
    if not claimed:
        return outcomes
    run_ids = [run_id for _, run_id in claimed]
    ended: set[str] = set()
    try:
        with _Heartbeat(uri, run_ids), _device_for(job) as device_name:
            device = resolve_device(device_name)
            for planned, run_id in claimed:
                tracking.log_params(uri, run_id, {**planned.config.as_params(), "device": device.type})
            data = load_mnist(job.data_dir, device)
            for planned, _ in claimed:
                _test_hooks(planned.key, job.attempt)
            configs = [planned.config for planned, _ in claimed]

            def log_epoch(i, record):
                tracking.log_metrics(uri, run_ids[i], record.metrics(), step=record.epoch)

            if len(configs) == 1 and not job.fused:
                results = [train(configs[0], data, device, on_epoch=lambda r: log_epoch(0, r))]
            else:
                results = train_fused(configs, data, device, on_epoch=log_epoch)
        for (planned, run_id), result in zip(claimed, results):
            outcomes.append(_finish(uri, planned, run_id, result))
            ended.add(run_id)
        return outcomes
    except KeyboardInterrupt:
        for run_id in set(run_ids) - ended:
            with contextlib.suppress(Exception):
                tracking.end_run(uri, run_id, "KILLED", "interrupted")
        raise
    except BaseException as exc:
        return outcomes + [_failed(uri, planned, run_id, exc) for planned, run_id in claimed if run_id not in ended]


def _failed(uri: str, planned: PlannedRun, run_id: str, exc: BaseException) -> Outcome:
    """Mark the run FAILED, keeping the error and its traceback, and say so."""
    with contextlib.suppress(Exception):
        tracking.end_run(uri, run_id, "FAILED", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}")
    return Outcome(planned.key, planned.name, "failed", run_id, error=f"{type(exc).__name__}: {exc}")


def _finish(uri: str, planned: PlannedRun, run_id: str, result) -> Outcome:
    """Log a trained run's summary and agent and mark it FINISHED; a failure here fails this run only."""
    try:
        summary = result.summary()
        tracking.log_metrics(uri, run_id, summary, step=len(result.history))
        with tempfile.TemporaryDirectory() as tmp:
            agent = save_agent(os.path.join(tmp, AGENT_FILENAME), result.model, planned.config, summary)
            try:
                tracking.log_artifact(uri, run_id, agent)
            except Exception as exc:
                raise RuntimeError(f"cannot store the agent in the run's artifacts: {exc}") from exc
        tracking.finish_run(uri, run_id, result.diverged)
    except Exception as exc:
        return _failed(uri, planned, run_id, exc)
    final = result.final.test_error if result.final else float("nan")
    return Outcome(planned.key, planned.name, "diverged" if result.diverged else "done",
                   run_id, final, result.seconds)
