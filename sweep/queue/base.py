"""What the queue stands on: a store of runs (`Store`) and the machine it runs on (`Host`).

`Store` is the part of an MLflow tracking store the queue uses: experiments, runs created, written,
ended and deleted, and searched by a structured `Query`. `MlflowStore` (sweep.tracking.mlflow_store) is
the real one; `MemoryStore` (memory.py) keeps MLflow's semantics in memory. `Host` is this process's clock,
threads and view of other processes: `LocalHost` is the real machine. Everything that decides a
run's life (claims, leases, the change feed, the sweep's loop) reaches the world through these two,
so that a simulation can run that code over a simulated store, clock and processes.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

from ..errors import SweepError


class TrackingError(SweepError):
    """The tracking store cannot be reached, read or written."""


@dataclass(frozen=True)
class RunRow:
    """One MLflow run as plain data."""
    run_id: str
    status: str                  # RUNNING, FINISHED, FAILED, KILLED
    start_time: int              # ms since the epoch
    end_time: Optional[int]      # ms, None while running
    name: str
    artifact_uri: str
    tags: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)   # latest value of each metric
    deleted: bool = False


@dataclass(frozen=True)
class Query:
    """Which runs of an experiment: every condition given holds."""
    tags: tuple = ()                     # (name, value): the tag has this value
    tags_like: tuple = ()                # (name, text): the tag's value contains this text
    status: Optional[str] = None
    not_status: Optional[str] = None
    run_ids: Optional[tuple] = None
    ended_after: Optional[int] = None    # end time, ms
    view: str = "active"                 # active, deleted (MLflow's lifecycle) or all
    oldest_first: bool = False           # by start time; else the store's order
    limit: Optional[int] = None


class Store(ABC):
    """A tracking store, as the queue uses it; every failure to use it is a TrackingError."""

    host: "Host"

    @property
    @abstractmethod
    def index_path(self) -> Path:
        """Where the mirror of its runs (queue.index) is kept."""

    @abstractmethod
    def ensure_experiment(self, name: str) -> str: ...

    @abstractmethod
    def find_experiment(self, name: str) -> Optional[str]: ...

    @abstractmethod
    def create_run(self, experiment_id: str, name: str, tags: dict) -> str: ...

    @abstractmethod
    def delete_run(self, run_id: str) -> None: ...

    @abstractmethod
    def write(self, run_id: str, metrics: Iterable[tuple] = (), params: Optional[dict] = None,
              tags: Optional[dict] = None) -> None:
        """One request: metrics as (key, value, step), params and tags as mappings."""

    @abstractmethod
    def set_status(self, run_id: str, status: str) -> None:
        """End a run (FINISHED, FAILED, KILLED: its end time is now) or set it RUNNING again."""

    @abstractmethod
    def log_artifact(self, run_id: str, path: Path) -> None: ...

    @abstractmethod
    def log_inputs(self, run_id: str, parts: Iterable) -> None:
        """The data a run saw (mnist_core.data.DataPart), described, never copied."""

    @abstractmethod
    def find(self, experiment_id: str, query: Query) -> list[RunRow]: ...

    def after_interrupt(self, interrupt: BaseException) -> None:
        """Called after a Ctrl-C or signal, before this process writes again: let go of whatever the
        interrupted call may still hold."""


DELETED = "DELETED"  # what `committed` says of a deleted run without the param: nothing more can be written


def committed(store: Store, experiment_id: str, run_id: str, name: str) -> Optional[str]:
    """The value of the run's param `name`; DELETED for a deleted run without it; else None."""
    found = store.find(experiment_id, Query(run_ids=(run_id,), view="all"))
    value = found[0].params.get(name) if found else None
    return DELETED if value is None and found and found[0].deleted else value


def commit_once(store: Store, experiment_id: str, run_id: str, name: str, value: str,
                params: Optional[dict] = None, tags: Optional[dict] = None) -> str:
    """Log the run's param `name` as `value` (in one request with `params` and `tags`), unless another
    process logged another value first: the value that stands (DELETED for a run deleted meanwhile).
    A param keeps its first value and the store refuses another, in one transaction (MLflow: the
    params table's primary key), so of two processes committing different values exactly one wins,
    and each learns which. The compare-and-set that a clock cannot give: the queue's fence."""
    try:
        store.write(run_id, params={name: value, **(params or {})}, tags=tags)
        return value
    except TrackingError:
        standing = committed(store, experiment_id, run_id, name)
        if standing is None:  # not refused for this param: the store failed
            raise
        return standing


class Host:
    """This process and the machine it runs on, as the queue sees them: the clock, sleeping, the
    threads of this process, and whether another process (a lease's holder) still lives."""

    def __init__(self):
        self._parent = os.getppid()   # the process that started this one, while it lives
        self._me: tuple = ()

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def me(self) -> str:
        """This process as a lease holder, `host:pid:start`, so that a claimant on this host can tell it is gone."""
        if not self._me or self._me[0] != os.getpid():
            self._me = (os.getpid(), _holder(os.getpid()))
        return self._me[1]

    def started_by(self, holder: str) -> bool:
        """Whether `holder` is the process that started this one (a sweep, of its worker process)."""
        host, _, rest = holder.partition(":")
        return host == socket.gethostname() and rest.split(":")[0] == str(self._parent)

    def alive(self, holder: str) -> Optional[bool]:
        """Whether the process named by `holder` still runs: None when that cannot be told from here
        (another host, a holder written in another form, a process this user may not look at)."""
        try:
            host, pid, start = holder.rsplit(":", 2)
            pid, started = int(pid), float(start)
        except ValueError:
            return None
        if host != socket.gethostname() or "." not in start:
            return None
        try:
            now = _start(pid)
        except PermissionError:
            return None
        return bool(now) and _same_start(float(now), started)

    def spawn(self, target: Callable[[], None], name: str):
        """Start `target` in a thread of this process; returns it (`join()`)."""
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        return thread

    def lock(self):
        return threading.RLock()

    def event(self):
        return threading.Event()

    def exit(self, code: int):
        """End this process at once (a worker whose sweep is gone)."""
        os._exit(code)


START_DRIFT = 3600.0  # seconds: how far the clock may have been set between two reads of a process's start


def _same_start(now: float, recorded: float) -> bool:
    """Whether two reads of a process's start time are of one process. Linux counts a start from boot
    and psutil adds the boot time, which the kernel derives from the clock: it moves by whole seconds
    when the clock is set (NTP, a virtual machine's host), so one process reads whole seconds apart,
    its hundredths alike; another process given the same pid would have to match those too."""
    apart = now - recorded
    return abs(apart) <= START_DRIFT and abs(apart - round(apart)) < 0.005


def _holder(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}:{_start(pid)}"


def _start(pid: int) -> str:
    """When a process of this host started (to 1/100 s, as Linux keeps it): empty once it is gone
    (a zombie has exited already; its pid may be another process's by now)."""
    import psutil

    try:
        process = psutil.Process(pid)
        return "" if process.status() == psutil.STATUS_ZOMBIE else f"{process.create_time():.2f}"
    except psutil.NoSuchProcess:
        return ""
    except psutil.AccessDenied:
        raise PermissionError(pid) from None


LOCAL = Host()  # this process; each process (a worker too) has its own
