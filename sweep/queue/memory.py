"""MLflow's tracking semantics in memory: the queue's reference store.

What the queue relies on behaves as in MLflow's SQL store: a run is created RUNNING with its start
time; ending it stamps its end time (by the writer's clock); a deleted run can no longer be written
or ended, and is found only in the deleted view; a param, once logged, keeps its value; a metric's
value is its latest step's. Each call is atomic (MLflow's log_batch is three transactions, params
first: the simulation in tests/sweep/queue, which runs on this store, makes one write of each). Each
process opens its own handle (`on(host)`) over the same runs, with its own clock.
"""
from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from .base import LOCAL, Host, Query, RunRow, Store, TrackingError


@dataclass
class _Run:
    run_id: str
    experiment_id: str
    name: str
    status: str
    start_time: int
    end_time: Optional[int] = None
    tags: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)     # key -> (step, value) of the latest step
    artifacts: list = field(default_factory=list)
    inputs: list = field(default_factory=list)
    deleted: bool = False

    def row(self) -> RunRow:
        return RunRow(self.run_id, self.status, self.start_time, self.end_time, self.name,
                      f"memory://{self.run_id}/artifacts", dict(self.tags), dict(self.params),
                      {k: v for k, (_, v) in self.metrics.items()}, self.deleted)


class _Runs:
    """What every handle shares."""

    def __init__(self):
        self.lock = threading.Lock()
        self.experiments: dict[str, str] = {}   # name -> id
        self.runs: dict[str, _Run] = {}
        self.ids = itertools.count(1)


class MemoryStore(Store):
    def __init__(self, index_path: Path, host: Host = LOCAL, runs: Optional[_Runs] = None):
        self._index_path, self.host = Path(index_path), host
        self._data = runs or _Runs()

    def on(self, host: Host) -> "MemoryStore":
        """A handle on the same runs for another process (its own clock and holder)."""
        return MemoryStore(self._index_path, host, self._data)

    @property
    def index_path(self) -> Path:
        return self._index_path

    def runs(self) -> list[RunRow]:
        """Every run, deleted ones included (for checks over the whole store)."""
        with self._data.lock:
            return [run.row() for run in self._data.runs.values()]

    def run(self, run_id: str) -> Optional[RunRow]:
        """One run, deleted or not; None when there is none."""
        with self._data.lock:
            found = self._data.runs.get(run_id)
            return found.row() if found is not None else None

    def ensure_experiment(self, name: str) -> str:
        with self._data.lock:
            return self._data.experiments.setdefault(name, str(len(self._data.experiments) + 1))

    def find_experiment(self, name: str) -> Optional[str]:
        return self._data.experiments.get(name)

    def create_run(self, experiment_id: str, name: str, tags: dict) -> str:
        with self._data.lock:
            run_id = f"{next(self._data.ids):032x}"
            self._data.runs[run_id] = _Run(run_id, experiment_id, name, "RUNNING", self._ms(), tags=dict(tags))
            return run_id

    def delete_run(self, run_id: str) -> None:
        with self._data.lock:
            self._run(run_id).deleted = True

    def write(self, run_id: str, metrics: Iterable[tuple] = (), params: Optional[dict] = None,
              tags: Optional[dict] = None) -> None:
        with self._data.lock:
            run = self._active(run_id)
            for name, value in (params or {}).items():
                if name in run.params and run.params[name] != str(value):
                    raise TrackingError(f"memory store: param {name!r} of run {run_id} was {run.params[name]!r}, "
                                        f"cannot change it to {str(value)!r}")
            run.params.update({name: str(value) for name, value in (params or {}).items()})
            for name, value, step in metrics:
                if name not in run.metrics or step >= run.metrics[name][0]:
                    run.metrics[name] = (int(step), float(value))
            run.tags.update({name: str(value) for name, value in (tags or {}).items()})

    def set_status(self, run_id: str, status: str) -> None:
        with self._data.lock:
            run = self._active(run_id)
            run.status, run.end_time = status, None if status == "RUNNING" else self._ms()

    def log_artifact(self, run_id: str, path: Path) -> None:
        with self._data.lock:
            self._run(run_id).artifacts.append(Path(path).name)

    def log_inputs(self, run_id: str, parts: Iterable) -> None:
        with self._data.lock:
            self._active(run_id).inputs.extend(parts)

    def find(self, experiment_id: str, query: Query) -> list[RunRow]:
        with self._data.lock:
            found = [run for run in self._data.runs.values() if run.experiment_id == experiment_id
                     and _matches(run, query)]
        found.sort(key=lambda run: (run.start_time, run.run_id), reverse=not query.oldest_first)
        return [run.row() for run in found[:query.limit]]

    def _ms(self) -> int:
        return int(self.host.now() * 1000)

    def _run(self, run_id: str) -> _Run:
        try:
            return self._data.runs[run_id]
        except KeyError:
            raise TrackingError(f"memory store: no run {run_id}") from None

    def _active(self, run_id: str) -> _Run:
        run = self._run(run_id)
        if run.deleted:
            raise TrackingError(f"memory store: run {run_id} is deleted; it must be active to be changed")
        return run


def _matches(run: _Run, q: Query) -> bool:
    if q.view != "all" and run.deleted != (q.view == "deleted"):
        return False
    if q.status is not None and run.status != q.status or q.not_status is not None and run.status == q.not_status:
        return False
    if q.run_ids is not None and run.run_id not in q.run_ids:
        return False
    if q.ended_after is not None and (run.end_time is None or run.end_time <= q.ended_after):
        return False
    return (all(run.tags.get(name) == value for name, value in q.tags)
            and all(text in run.tags.get(name, "") for name, text in q.tags_like))
