"""The queue's store on MLflow: a tracking URI (a local SQLite file, a tracking server, a database),
used through `sweep.tracking`. Picklable: a worker process gets the URI and opens its own client (a
dask or ray worker; a local one's requests go through the sweep's process: relay.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from .. import interrupts, tracking
from ..queue.base import LOCAL, Host, Query, RunRow, Store
from ..queue.index import index_path
from .sqlite_read import reader

_IDS_PER_SEARCH = 100


class MlflowStore(Store):
    def __init__(self, uri: str, host: Host = LOCAL):
        self.uri, self.host = uri, host

    def __repr__(self) -> str:
        return f"MlflowStore({self.uri!r})"

    def __reduce__(self):  # another process opens the URI as its own host
        return MlflowStore, (self.uri,)

    @property
    def index_path(self) -> Path:
        return index_path(self.uri)

    def ensure_experiment(self, name: str) -> str:
        return tracking.ensure_experiment(self.uri, name)

    def find_experiment(self, name: str) -> Optional[str]:
        direct = reader(self.uri)
        if direct is not None:
            answered, experiment_id = direct.find_experiment(name)
            if answered:
                return experiment_id
        return tracking.find_experiment(self.uri, name)

    def create_run(self, experiment_id: str, name: str, tags: dict) -> str:
        return tracking.create_run(self.uri, experiment_id, name, tags, self._ms())

    def delete_run(self, run_id: str) -> None:
        tracking.delete_run(self.uri, run_id)

    def write(self, run_id: str, metrics: Iterable[tuple] = (), params: Optional[dict] = None,
              tags: Optional[dict] = None) -> None:
        tracking.log_batch(self.uri, run_id, metrics, params, tags, self._ms())

    def set_status(self, run_id: str, status: str) -> None:
        tracking.set_status(self.uri, run_id, status, self._ms())

    def log_artifact(self, run_id: str, path: Path) -> None:
        tracking.log_artifact(self.uri, run_id, path)

    def log_inputs(self, run_id: str, parts: Iterable) -> None:
        tracking.log_inputs(self.uri, run_id, parts)

    def find(self, experiment_id: str, query: Query) -> list[RunRow]:
        tracking.index_tag_values(self.uri)  # so that a lookup by tag, or a sync, reads those runs alone
        direct = reader(self.uri)
        if direct is not None:  # a local SQLite store: read with SQL, without importing MLflow
            return direct.find(experiment_id, query)
        order = ["attributes.start_time ASC"] if query.oldest_first else None
        if query.run_ids is None:
            return tracking.search(self.uri, experiment_id, filter_string(query), query.view, query.limit, order)
        ids, rows = list(query.run_ids), []
        for start in range(0, len(ids), _IDS_PER_SEARCH):
            chunk = Query(**{**query.__dict__, "run_ids": tuple(ids[start:start + _IDS_PER_SEARCH])})
            rows += tracking.search(self.uri, experiment_id, filter_string(chunk), query.view, query.limit, order)
        return rows

    def after_interrupt(self, interrupt: BaseException) -> None:
        interrupts.release(interrupt)  # an SQLite read cut short keeps its lock until it is collected

    def _ms(self) -> int:
        """Now by this host's clock: a run's times are its writer's, as MLflow's client sets them."""
        return int(self.host.now() * 1000)


def filter_string(query: Query) -> str:
    """The query as an MLflow search filter."""
    parts = [f"tags.`{name}` = {tracking.quoted(value)}" for name, value in query.tags]
    parts += [f"tags.`{name}` LIKE {tracking.quoted('%' + text + '%')}" for name, text in query.tags_like]
    if query.status:
        parts.append(f"attributes.status = '{query.status}'")
    if query.not_status:
        parts.append(f"attributes.status != '{query.not_status}'")
    if query.ended_after is not None:
        parts.append(f"attributes.end_time > {int(query.ended_after)}")
    if query.run_ids is not None:
        parts.append(f"attributes.run_id IN ({','.join(tracking.quoted(r) for r in query.run_ids) or repr('')})")
    return " and ".join(parts)
