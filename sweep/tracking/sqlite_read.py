"""Reading a local SQLite tracking store with SQL, as MLflow's own search reads it, without MLflow.

Importing MLflow takes one to two seconds, most of what `sweep status` and `sweep best` cost on a
store of a few thousand runs. Their reads (and every search of the queue) are a few SELECTs on the
tables MLflow keeps for runs (runs, tags, params, latest_metrics, experiments), which have kept
their shape since MLflow 1. This module makes those SELECTs with the semantics of MLflow's
SqlAlchemyStore.search_runs: the lifecycle view, `=`, `!=`, `>` and LIKE (SQLite's, as MLflow's
filter gives it, case-sensitive), the order `start_time DESC, run_uuid` (or ascending), latest metrics with NaN
where MLflow stored is_nan. Writes always go through MLflow.

`reader(uri)` gives a reader only for a local store whose tables have those columns; anything else
(another database, a server, a schema it does not know) is read through MLflow. The equivalence
is tested query by query against MLflow's search (tests/sweep/tracking/test_sqlite_read.py).
"""
from __future__ import annotations

import contextlib
import math
import sqlite3
from pathlib import Path
from typing import Optional

from ..queue.base import Query, RunRow, TrackingError
from .location import local_path, reading

COLUMNS = {"experiments": {"experiment_id", "name", "lifecycle_stage"},
           "runs": {"run_uuid", "name", "status", "start_time", "end_time", "lifecycle_stage", "artifact_uri",
                    "experiment_id"},
           "tags": {"key", "value", "run_uuid"}, "params": {"key", "value", "run_uuid"},
           "latest_metrics": {"key", "value", "is_nan", "run_uuid"}}
STAGES = {"active": ("active",), "deleted": ("deleted",), "all": ("active", "deleted")}
TIMEOUT = 30        # seconds to wait for a writer's lock, as MLflow's SQLite engine does
CHUNK = 500         # run ids per statement (SQLite allows 999 variables in older builds)
_known: dict = {}   # path -> whether its tables have the columns read here (checked once per process)


def reader(uri: str) -> Optional["SqliteReader"]:
    """A reader of the local SQLite store at `uri`; None when MLflow must read it."""
    path = local_path(uri)
    if path is None or not path.exists():
        return None
    if path not in _known:
        try:
            with _connection(path) as db:
                _known[path] = all(columns <= {row[1] for row in db.execute(f"pragma table_info({table})")}
                                   for table, columns in COLUMNS.items())
        except sqlite3.Error:
            return None  # not yet a store (MLflow makes its tables on first use), or not readable
    return SqliteReader(path) if _known[path] else None


@contextlib.contextmanager
def _connection(path: Path):
    """A connection for one read: one snapshot of the store, released at once (an interrupted read
    leaves no lock behind). It only reads."""
    try:
        # not read-only: a reader may have to roll back the journal a crashed writer left
        db = reading(path, "rw", timeout=TIMEOUT, isolation_level=None)
    except sqlite3.Error as exc:
        raise TrackingError(f"cannot read the tracking store {path}: {exc}") from None
    try:
        db.execute("pragma case_sensitive_like = true")  # as MLflow sets it on its SQLite connections
        db.execute("begin")  # a deferred transaction: every SELECT of this read sees the same commit
        yield db
    finally:
        db.close()


class SqliteReader:
    def __init__(self, path: Path):
        self.path = path

    def find_experiment(self, name: str) -> tuple[bool, Optional[str]]:
        """(answered, id): the id of the active experiment `name` (None when there is none or it is
        deleted); not answered when several experiments have that name (MLflow's workspaces)."""
        with self._read() as db:
            found = db.execute("select experiment_id, lifecycle_stage from experiments where name = ?",
                               (name,)).fetchall()
        if len(found) > 1:
            return False, None
        return True, (str(found[0][0]) if found and found[0][1] == "active" else None)

    def find(self, experiment_id: str, query: Query) -> list[RunRow]:
        where, args = ["experiment_id = ?"], [int(experiment_id)]
        stages = STAGES[query.view]
        where.append(f"lifecycle_stage in ({', '.join('?' * len(stages))})")
        args += stages
        for name, value in query.tags:
            where.append("run_uuid in (select run_uuid from tags where key = ? and value = ?)")
            args += [name, value]
        for name, text in query.tags_like:
            where.append("run_uuid in (select run_uuid from tags where key = ? and value like ?)")
            args += [name, f"%{text}%"]
        if query.status:
            where.append("status = ?")
            args.append(query.status)
        if query.not_status:
            where.append("status != ?")
            args.append(query.not_status)
        if query.ended_after is not None:
            where.append("end_time > ?")
            args.append(int(query.ended_after))
        order = "start_time asc, run_uuid" if query.oldest_first else "start_time desc, run_uuid"
        sql = (f"select run_uuid, status, start_time, end_time, name, artifact_uri, lifecycle_stage from runs "
               f"where {' and '.join(where)}")
        limit = f" limit {int(query.limit)}" if query.limit is not None else ""
        with self._read() as db:
            if query.run_ids is None:
                runs = db.execute(f"{sql} order by {order}{limit}", args).fetchall()
            else:
                ids = list(dict.fromkeys(query.run_ids))
                runs = [row for start in range(0, len(ids), CHUNK) for row in db.execute(
                    f"{sql} and run_uuid in ({', '.join('?' * len(ids[start:start + CHUNK]))})",
                    args + ids[start:start + CHUNK])]
                runs.sort(key=lambda r: r[0])  # stable sorts: by run_uuid, then by start time
                runs.sort(key=lambda r: r[2] or 0, reverse=not query.oldest_first)
                runs = runs[:query.limit] if query.limit is not None else runs
            tags, params, metrics = self._details(db, [r[0] for r in runs])
        return [RunRow(run_id, status, start or 0, end, name or "", artifact_uri or "", tags.get(run_id, {}),
                       params.get(run_id, {}), metrics.get(run_id, {}), stage == "deleted")
                for run_id, status, start, end, name, artifact_uri, stage in runs]

    def _details(self, db: sqlite3.Connection, run_ids: list) -> tuple[dict, dict, dict]:
        tags: dict = {}
        params: dict = {}
        metrics: dict = {}
        for start in range(0, len(run_ids), CHUNK):
            chunk = run_ids[start:start + CHUNK]
            marks = ", ".join("?" * len(chunk))
            for run_id, key, value in db.execute(f"select run_uuid, key, value from tags where run_uuid in ({marks})",
                                                 chunk):
                tags.setdefault(run_id, {})[key] = value
            for run_id, key, value in db.execute(
                    f"select run_uuid, key, value from params where run_uuid in ({marks})", chunk):
                params.setdefault(run_id, {})[key] = value
            for run_id, key, value, is_nan in db.execute(
                    f"select run_uuid, key, value, is_nan from latest_metrics where run_uuid in ({marks})", chunk):
                metrics.setdefault(run_id, {})[key] = math.nan if is_nan else float(value)
        return tags, params, metrics

    @contextlib.contextmanager
    def _read(self):
        try:
            with _connection(self.path) as db:
                yield db
        except sqlite3.Error as exc:
            raise TrackingError(f"cannot read the tracking store {self.path}: {exc}") from None
