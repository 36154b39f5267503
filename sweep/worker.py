"""One job in a worker process: claim its runs, train them (alone or fused) under their leases, finish.

The job restores all the process state it needs (threads, device, tracking URI) from its
arguments; it relies on nothing inherited from the parent.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import traceback
from dataclasses import dataclass
from typing import Optional

from . import queue, tracking
from .devices import GpuPool, gpu_count
from .early_stop import Judge, objective
from .lease import CURVE, LEASE_SECONDS, KeepAlive, Lease, holder_alive, this_holder


@dataclass(frozen=True)
class Job:
    runs: tuple                         # PlannedRun; several of one shape train fused
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    sweep_name: str
    session: str
    owner: str                          # the sweep process (lease.this_holder()); workers stop when it is gone
    attempt: int = 1
    data_dir: Optional[str] = None
    device: str = "auto"
    threads: int = 1
    gpus: Optional[int] = None          # GPUs of the worker's host; None: count them there
    gpu_lock_dir: Optional[str] = None  # where that host's GPU slot locks live (tests)
    fused: bool = False                 # train even a single run through the fused engine
    lease_seconds: float = LEASE_SECONDS
    judging: tuple = ()                 # per run: (the grids/search it is judged in, early_stop.Rule)


@dataclass(frozen=True)
class Outcome:
    key: str
    name: str
    status: str              # done, diverged, pruned (stopped early), failed, skipped (done or held
                             # elsewhere), lost (taken over)
    run_id: str = ""
    test_error: float = float("nan")
    seconds: float = 0.0
    error: str = ""


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
    """Claim the job's runs, train the claimed ones (one alone, several of one shape fused), finish them."""
    import torch

    if holder_alive(job.owner) is False:
        return []  # the sweep that queued this job is gone: leave its runs to the next one
    torch.set_num_threads(job.threads)
    holder = this_holder()
    outcomes, leases, planned_of, judging = [], [], {}, {}
    try:
        for i, planned in enumerate(job.runs):
            lease = queue.claim(job.tracking_uri, job.experiment_id, job.parent_run_id, planned, job.sweep_name,
                                job.session, holder, job.attempt, job.lease_seconds)
            if lease is None:
                outcomes.append(Outcome(planned.key, planned.name, "skipped"))
            else:
                leases.append(lease)
                planned_of[lease.run_id] = planned
                judging[lease.run_id] = job.judging[i] if job.judging else (frozenset(), None)
    except BaseException as exc:  # the store failed mid-claim: the runs claimed so far are pending again
        if isinstance(exc, KeyboardInterrupt):
            tracking.release_interrupted_reads(exc)
        for lease in leases:
            with contextlib.suppress(Exception):
                lease.kill(f"not trained: claiming the other runs of its job failed ({type(exc).__name__})")
        raise
    if not leases:
        return outcomes
    judge = Judge(job.tracking_uri, job.experiment_id, judging,
                  {run_id: planned.config for run_id, planned in planned_of.items()})
    try:
        with KeepAlive(leases, job.owner, job.parent_run_id):  # beating the leases still to finish too
            results = _train(job, leases, planned_of, judge)
            return outcomes + [_finish(lease, planned_of[lease.run_id], result, lease.run_id in judge.stopped)
                               for lease, result in zip(leases, results)]
    except KeyboardInterrupt as exc:
        tracking.release_interrupted_reads(exc)
        for lease in leases:
            with contextlib.suppress(Exception):
                lease.kill("interrupted")
        raise
    except Exception as exc:
        return outcomes + [_failed(lease, planned_of[lease.run_id], exc) for lease in leases]


def _train(job: Job, leases: list[Lease], planned_of: dict, judge: Judge):
    from mnist_core import load_mnist, resolve_device, train
    from mnist_core.data import describe_mnist
    from mnist_core.fused import train_fused

    with _device_for(job) as device_name:
        device = resolve_device(device_name)
        configs = [planned_of[lease.run_id].config for lease in leases]
        for lease, config in zip(leases, configs):
            lease.log_params({**config.as_params(), "device": device.type})
        data = load_mnist(job.data_dir, device)
        for lease, config in zip(leases, configs):  # what each run trains, validates and is tested on
            tracking.log_inputs(job.tracking_uri, lease.run_id, describe_mnist(job.data_dir, config.validation))
        judged = any(rule for _, rule in judge.members.values())

        def log_epoch(i, record):  # False stops this run: its lease is lost
            metric = objective(configs[i])
            curve = judge.record(leases[i].run_id, getattr(record, metric))
            return leases[i].log_epoch(record.metrics(), record.epoch, flush=judged,
                                       tags={CURVE: json.dumps([round(v, 6) for v in curve])})

        def stop_early(records):  # after every epoch: those that early stopping takes out
            epoch = next(iter(records.values())).epoch
            stopping = judge.stops(epoch, [leases[i].run_id for i in records])
            return [i for i in records if leases[i].run_id in stopping]

        if len(configs) == 1 and not job.fused:
            def solo_epoch(record):
                return log_epoch(0, record) is not False and not stop_early({0: record})

            return [train(configs[0], data, device, on_epoch=solo_epoch)]
        return train_fused(configs, data, device, on_epoch=log_epoch, on_group=stop_early if judged else None)


def _failed(lease: Lease, planned, exc: BaseException) -> Outcome:
    """Mark the run FAILED (if it is still ours), keeping the error and its traceback, and say so."""
    with contextlib.suppress(Exception):
        lease.fail(f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}")
    if lease.lost:
        return Outcome(planned.key, planned.name, "lost", lease.run_id, error=lease.lost)
    return Outcome(planned.key, planned.name, "failed", lease.run_id, error=f"{type(exc).__name__}: {exc}")


def _finish(lease: Lease, planned, result, pruned: bool) -> Outcome:
    """Log a trained run's summary and agent and mark it FINISHED (stopped early when `pruned`); a
    failure here fails this run only."""
    from mnist_core import AGENT_FILENAME, save_agent

    if not lease.held:
        return Outcome(planned.key, planned.name, "lost", lease.run_id, error=lease.lost)
    try:
        summary = result.summary()
        with tempfile.TemporaryDirectory() as tmp:
            agent = save_agent(os.path.join(tmp, AGENT_FILENAME), result.model, planned.config, summary)
            finished = lease.finish(summary, len(result.history), agent, result.diverged, pruned)
    except Exception as exc:
        return _failed(lease, planned, exc)
    if not finished:
        return Outcome(planned.key, planned.name, "lost", lease.run_id, error=lease.lost)
    final = result.final.test_error if result.final else float("nan")
    status = "diverged" if result.diverged else "pruned" if pruned else "done"
    return Outcome(planned.key, planned.name, status, lease.run_id, final, result.seconds)
