"""Run a sweep: read the queue from the store, dispatch what is left, retry failures, sum up."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Callable, Optional

from mnist_core.fused import DEFAULT_CHUNK_SIZE, group_key

from . import queue, tracking
from .devices import available_cores, default_jobs, gpu_count, threads_per_worker
from .errors import SettingsError
from .dispatch import backend_session, dispatch, is_remote_backend
from .spec import PlannedRun, SweepSpec, expand
from .worker import Job, Outcome

ENGINES = ("auto", "solo", "fused")


def plan_jobs(runs: list[PlannedRun], engine: str = "auto", chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[tuple]:
    """Runs per job: alone (solo), or same-shape groups in chunks of at most `chunk_size` (fused)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "solo" or chunk_size < 2:
        return [(r,) for r in runs]
    groups: dict[tuple, list[PlannedRun]] = {}
    for run in runs:
        groups.setdefault(group_key(run.config), []).append(run)
    jobs = []
    for members in groups.values():
        n_chunks = -(-len(members) // chunk_size)
        base, extra = divmod(len(members), n_chunks)  # near-equal chunks, none over chunk_size
        start = 0
        for i in range(n_chunks):
            size = base + (i < extra)
            jobs.append(tuple(members[start:start + size]))
            start += size
    return sorted(jobs, key=len, reverse=True)  # big jobs first, so workers finish together


def check_remote_store(backend: str, store: str) -> None:
    """Workers on other machines cannot write a local SQLite file: a remote backend needs a server."""
    if is_remote_backend(backend) and not tracking.is_remote(store):
        raise SettingsError(
            f"the {backend} backend runs workers that cannot write the local store {store}. "
            f"Start a tracking server that they can reach, e.g.\n"
            f"  mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlruns/mlflow.db "
            f"--artifacts-destination ./mlruns/artifacts\n"
            f"(--host: an address the workers reach; a PostgreSQL URI for a team), then pass "
            f"--tracking-uri http://HOST:5000 or set MLFLOW_TRACKING_URI.")


class SweepInterrupted(Exception):
    """Ctrl-C: dispatching stopped and the runs in flight were marked KILLED."""


@dataclass
class SweepSummary:
    total: int                      # runs in the (grid-filtered) sweep
    already_done: int               # finished before this command started
    to_train: int                   # what this command set out to train
    outcomes: dict = field(default_factory=dict)   # key -> final Outcome of this command
    held_elsewhere: int = 0         # running in another live process
    crashes: list = field(default_factory=list)    # what joblib said when a worker died
    jobs: int = 0
    threads: int = 0
    experiment_id: str = ""
    parent_run_id: str = ""

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes.values())

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes.values() if o.status == "failed"]


@dataclass(frozen=True)
class Settings:
    jobs: Optional[int] = None
    retries: int = 1
    data_dir: Optional[str] = None
    device: str = "auto"
    backend: str = "loky"
    address: Optional[str] = None       # dask scheduler or ray cluster address
    gpus: Optional[int] = None          # injectable GPU count (tests fake several)
    gpu_lock_dir: Optional[str] = None
    engine: str = "auto"                # solo, fused or auto (fuse groups of two or more)
    chunk_size: int = DEFAULT_CHUNK_SIZE


def _todo(runs: list[PlannedRun], records, session: str, retries: int) -> list[PlannedRun]:
    state = queue.states([r.key for r in runs], records)
    tries = {}
    for rec in records:
        if rec.session == session and rec.status == "FAILED":
            tries[rec.key] = tries.get(rec.key, 0) + 1
    return [r for r in runs if state[r.key] in ("pending", "failed") and tries.get(r.key, 0) <= retries]


def run_sweep(spec: SweepSpec, tracking_uri: str, settings: Settings = Settings(), grids=(),
              on_start: Optional[Callable[[SweepSummary], None]] = None,
              on_outcome: Optional[Callable[[Outcome], None]] = None) -> SweepSummary:
    runs = expand(spec, grids)
    experiment_id = tracking.ensure_experiment(tracking_uri, spec.experiment)
    records = tracking.run_records(tracking_uri, experiment_id)
    state = queue.states([r.key for r in runs], records)
    session = uuid.uuid4().hex
    todo = _todo(runs, records, session, settings.retries)
    summary = SweepSummary(total=len(runs), already_done=sum(s == "done" for s in state.values()),
                           to_train=len(todo), held_elsewhere=sum(s == "running" for s in state.values()),
                           experiment_id=experiment_id)
    gpus = gpu_count() if settings.gpus is None else settings.gpus
    cores = available_cores()
    summary.jobs = settings.jobs or default_jobs(gpus, cores)
    summary.threads = threads_per_worker(summary.jobs, cores)
    if on_start is not None:
        on_start(summary)
    if not todo:
        return summary
    summary.parent_run_id = tracking.parent_run(tracking_uri, experiment_id, spec.name, {
        "spec": spec.path, "experiment": spec.experiment, "grids": ",".join(grids or spec.grids),
        "runs": len(runs)})
    planned_todo = list(todo)
    remote = is_remote_backend(settings.backend)
    try:
        with backend_session(settings.backend, settings.address):
            for attempt in range(1, settings.retries + 2):
                jobs = [Job(runs=group, tracking_uri=tracking_uri, experiment_id=experiment_id,
                            parent_run_id=summary.parent_run_id, sweep_name=spec.name, session=session,
                            attempt=attempt, data_dir=settings.data_dir, device=settings.device,
                            threads=1 if remote else summary.threads, gpus=settings.gpus,
                            gpu_lock_dir=settings.gpu_lock_dir, fused=settings.engine == "fused")
                        for group in plan_jobs(todo, settings.engine, settings.chunk_size)]
                n_jobs = settings.jobs or (-1 if remote else summary.jobs)
                _, crash = dispatch(jobs, n_jobs if n_jobs == -1 else min(n_jobs, len(jobs)), settings.backend,
                                    lambda o: _record(summary, o, on_outcome))
                if crash:
                    summary.crashes.append(crash)
                # Every job of the round has returned or died: a run of ours still RUNNING lost its worker.
                _end_session_runs(tracking_uri, experiment_id, session, "FAILED",
                                  f"worker process died abruptly ({crash or 'no outcome'})")
                todo = _todo(runs, tracking.run_records(tracking_uri, experiment_id), session, settings.retries)
                if not todo:
                    break
        _settle(summary, planned_todo, tracking.run_records(tracking_uri, experiment_id))
    except KeyboardInterrupt:
        _end_session_runs(tracking_uri, experiment_id, session, "KILLED", "interrupted (Ctrl-C)")
        tracking.end_parent(tracking_uri, summary.parent_run_id, "KILLED", _counts(summary))
        raise SweepInterrupted() from None
    tracking.end_parent(tracking_uri, summary.parent_run_id, "FAILED" if summary.failed else "FINISHED",
                        _counts(summary))
    return summary


def _record(summary: SweepSummary, outcome: Outcome, on_outcome) -> None:
    if outcome.status == "skipped" and outcome.key in summary.outcomes:
        return
    summary.outcomes[outcome.key] = outcome
    if on_outcome is not None:
        on_outcome(outcome)


def _settle(summary: SweepSummary, runs: list[PlannedRun], records) -> None:
    """Runs still not done after the last attempt failed for good, with their last error."""
    state = queue.states([r.key for r in runs], records)
    errors = queue.last_errors(records)
    for run in runs:
        known = summary.outcomes.get(run.key)
        if state[run.key] in ("pending", "failed") and (known is None or known.status != "failed"):
            error = errors.get(run.key, "").splitlines()
            summary.outcomes[run.key] = Outcome(run.key, run.name, "failed",
                                                error=error[0] if error else "no outcome: its worker process died")


def _counts(summary: SweepSummary) -> dict:
    return {s: summary.count(s) for s in ("done", "diverged", "failed", "skipped")}


def _end_session_runs(uri: str, experiment_id: str, session: str, status: str, error: str) -> None:
    for rec in tracking.run_records(uri, experiment_id):
        if rec.session == session and rec.status == "RUNNING":
            tracking.end_run(uri, rec.run_id, status, error)
