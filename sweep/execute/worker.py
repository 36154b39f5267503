"""One job in a worker process: claim its runs, train them (alone or fused) under their leases, finish.

The job restores all the process state it needs (threads, device, the store) from its arguments;
it relies on nothing inherited from the parent. Training is a function of the job (`train_runs`, with
torch); everything around it (claims, leases, finishing) is the queue's.
"""
from __future__ import annotations

import contextlib
import gc
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .. import queue
from ..adaptive.early_stop import Judge
from ..queue import KeepAlive, Lease, Store, schema
from .devices import GpuPool, gpu_count


@dataclass(frozen=True)
class Job:
    runs: tuple                         # PlannedRun; several of one shape train fused
    store: Store                        # where the runs are tracked (each process opens it as its own host)
    experiment_id: str
    parent_run_id: str
    sweep_name: str
    session: str
    owner: str                          # the sweep process (Host.me()); workers stop when it is gone
    attempt: int = 1
    data_dir: Optional[str] = None
    device: str = "auto"
    threads: int = 1
    fused: bool = False                 # train even a single run through the fused engine
    lease_seconds: float = schema.DEFAULT_LEASE_SECONDS
    judging: tuple = ()                 # per run: (the grids/search it is judged in, early_stop.Rule)


@dataclass(frozen=True)
class Outcome:
    key: str
    name: str
    status: str              # one of schema.OUTCOMES but "missing"
    run_id: str = ""
    test_error: float = float("nan")
    seconds: float = 0.0
    error: str = ""
    together: int = 1        # runs trained as one fused model with it (then `seconds` is the group's)


@dataclass(frozen=True)
class Trained:
    """What training gave one run."""
    summary: dict                        # the final metrics, as logged at its end
    epochs: int                          # epochs completed
    diverged: bool
    test_error: float                    # the final test error (NaN without one)
    seconds: float                       # its share of the training time
    save_agent: Callable[[Path], Path]   # writes its agent file into a folder, returns the file


# How a job's claimed runs are trained: (job, leases, planned run of each lease's run id, judge) ->
# one Trained per lease, in order; each epoch goes through its lease (a lost lease stops that run).
Train = Callable[[Job, list, dict, Judge], list]


def execute(job: Job, train: Optional[Train] = None) -> list[Outcome]:
    """Claim the job's runs, train the claimed ones (one alone, several of one shape fused), finish them."""
    _first_job_taken()
    store = job.store
    if store.host.alive(job.owner) is False:
        return []  # the sweep that queued this job is gone: leave its runs to the next one
    outcomes, leases, planned_of, judging = [], [], {}, {}
    try:
        for i, planned in enumerate(job.runs):
            lease = queue.claim(store, job.experiment_id, job.parent_run_id, planned, job.sweep_name, job.session,
                                job.attempt, job.lease_seconds)
            if lease is None:
                outcomes.append(Outcome(planned.key, planned.name, "skipped"))
            else:
                leases.append(lease)
                planned_of[lease.run_id] = planned
                judging[lease.run_id] = job.judging[i] if job.judging else (frozenset(), None)
    except BaseException as exc:  # the store failed mid-claim: the runs claimed so far are pending again
        if isinstance(exc, KeyboardInterrupt):
            store.after_interrupt(exc)
        for lease in leases:
            with contextlib.suppress(queue.TrackingError):
                lease.kill(f"not trained: claiming the other runs of its job failed ({type(exc).__name__})")
        raise
    if not leases:
        return outcomes
    judge = Judge(store, job.experiment_id, judging, {run_id: p.config for run_id, p in planned_of.items()})
    try:
        with KeepAlive(store, leases, job.owner, job.parent_run_id):  # beating the leases still to finish too
            results = (train or train_runs)(job, leases, planned_of, judge)
            return outcomes + [_finish(lease, planned_of[lease.run_id], result, lease.run_id in judge.stopped,
                                       len(results)) for lease, result in zip(leases, results)]
    except KeyboardInterrupt as exc:
        store.after_interrupt(exc)
        for lease in leases:
            with contextlib.suppress(queue.TrackingError):
                lease.kill("interrupted")
        raise
    except Exception as exc:
        return outcomes + [_failed(lease, planned_of[lease.run_id], exc) for lease in leases]


GATE_SECONDS = 30.0  # the longest a worker beyond the first round's jobs waits for a warm one to take its job
_job_taken = None    # in a warmed worker: released as it takes its first job, letting the others go


def warm_up(data_dir: Optional[str], device: str, warmers=None, taken=None) -> None:
    """Run in each local worker process as it starts (loky's initializer), while the sweep's process
    opens the store: load what every job needs, torch, the trainer and MNIST on the job's device, so
    that the first job starts at once. Not MLflow: on a local store a worker's requests are made by
    the sweep's process (tracking.relay), and a server's client is made by the first request. With
    `warmers`, a semaphore with a slot per job of the first round, a worker beyond them loads nothing
    and waits (up to GATE_SECONDS) until a warmed one takes a job (`taken`): the jobs land on warm
    workers, and one that no job needs takes no core from them. Whatever fails is left for the job to
    report; an interrupt ends the warm-up quietly (the sweep stops its workers)."""
    global _job_taken
    try:
        if warmers is not None and not warmers.acquire(block=False):
            if taken.acquire(timeout=GATE_SECONDS):
                taken.release()  # and on to the next one waiting
            return
        _job_taken = taken
        import mnist_core.fused  # noqa: F401
        from mnist_core import load_mnist, resolve_device

        if not (device == "auto" and gpu_count() >= 2):  # else each job is given its GPU as it starts
            load_mnist(data_dir, resolve_device(device))  # as the job loads it: then it is in memory
        # loky collects garbage after a worker's first task, to measure the worker's size: a full
        # collection over every object torch and numpy made as they loaded, before the first job
        # could start (docs/benchmarks.md). Those objects live as long as the worker: frozen, no
        # collection looks at them again.
        gc.freeze()
    except (Exception, KeyboardInterrupt):
        pass


def _first_job_taken() -> None:
    global _job_taken
    if _job_taken is not None:
        _job_taken.release()
        _job_taken = None


@contextlib.contextmanager
def _device_for(job: Job):
    """With two or more GPUs on this host and device auto, hold one GPU to this run alone."""
    gpus = gpu_count()
    if gpus >= 2 and job.device == "auto":
        with GpuPool(gpus).acquire() as index:
            yield f"cuda:{index}"
    else:
        yield job.device


def train_runs(job: Job, leases: list[Lease], planned_of: dict, judge: Judge) -> list[Trained]:
    """Train the leases' runs with mnist_core: one alone, several of one shape as one fused model."""
    import torch

    from mnist_core import load_mnist, resolve_device, save_agent, train
    from mnist_core.data import describe_mnist
    from mnist_core.fused import train_fused

    torch.set_num_threads(job.threads)
    with _device_for(job) as device_name:
        device = resolve_device(device_name)
        configs = [planned_of[lease.run_id].config for lease in leases]
        for lease, config in zip(leases, configs):
            lease.log_params({**config.as_params(), "device": device.type})
        data = load_mnist(job.data_dir, device)
        for lease, config in zip(leases, configs):  # what each run trains, validates and is tested on
            job.store.log_inputs(lease.run_id, describe_mnist(job.data_dir, config.validation,
                                                                   config.train_eval))
        judged = any(rule for _, rule in judge.members.values())

        def log_epoch(i, record):  # False stops this run: its lease is lost
            curve = judge.record(leases[i].run_id, getattr(record, schema.objective(configs[i].validation)))
            return leases[i].log_epoch(record.metrics(), record.epoch, flush=judged, tags=schema.curve(curve))

        def stop_early(records):  # after every epoch: those that early stopping takes out
            epoch = next(iter(records.values())).epoch
            stopping = judge.stops(epoch, [leases[i].run_id for i in records])
            return [i for i in records if leases[i].run_id in stopping]

        if len(configs) == 1 and not job.fused:
            def solo_epoch(record):
                return log_epoch(0, record) is not False and not stop_early({0: record})

            results = [train(configs[0], data, device, on_epoch=solo_epoch)]
        else:
            results = train_fused(configs, data, device, on_epoch=log_epoch, on_group=stop_early if judged else None)

    def trained(result):
        summary = result.summary()
        return Trained(summary, len(result.history), result.diverged,
                       result.final.test_error if result.final else float("nan"), result.seconds,
                       lambda folder: save_agent(folder, result.model, result.config, summary))
    return [trained(result) for result in results]


def _failed(lease: Lease, planned, exc: BaseException) -> Outcome:
    """Mark the run FAILED (if it is still ours), keeping the error and its traceback, and say so."""
    with contextlib.suppress(queue.TrackingError):
        lease.fail(f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}")
    if lease.lost:
        return Outcome(planned.key, planned.name, "lost", lease.run_id, error=lease.lost)
    return Outcome(planned.key, planned.name, "failed", lease.run_id, error=f"{type(exc).__name__}: {exc}")


def _finish(lease: Lease, planned, result: Trained, stopped: bool, together: int = 1) -> Outcome:
    """Log a trained run's summary and agent and mark it FINISHED (stopped early when `stopped`); a
    failure here fails this run only. `together`: the runs trained with it as one model."""
    if not lease.held:
        return Outcome(planned.key, planned.name, "lost", lease.run_id, error=lease.lost)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            agent = result.save_agent(Path(tmp))
            finished = lease.finish(result.summary, result.epochs, agent, result.diverged, stopped)
    except Exception as exc:
        return _failed(lease, planned, exc)
    if not finished:
        return Outcome(planned.key, planned.name, "lost", lease.run_id, error=lease.lost)
    status = "diverged" if result.diverged else "stopped" if stopped else "done"
    return Outcome(planned.key, planned.name, status, lease.run_id, result.test_error, result.seconds,
                   together=together)
