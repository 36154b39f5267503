"""A local mirror of an experiment's training runs, so that no command reads every run again.

The MLflow store stays the only source of truth: this is a cache beside it (an SQLite file next to
a local store, or under ~/.cache for a tracking server) that can be deleted at any time and is
rebuilt from the store. A sync asks the store only for what changed: the runs that ended since the
last sync (by end time, with a margin for writers' clocks), the runs still RUNNING, the ones that
were RUNNING at the last sync, and the finished runs deleted or restored since. Claims never trust
it: they read their key's runs from the store, so a stale mirror can delay an answer, never train a
run twice.

Each run is kept whole (its tags, params and metrics as JSON), and the fields that readers ask for
by name (Index.table) in columns of their own as well, so that reading tens of thousands of runs
decodes no JSON.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Optional

from . import tracking
from .lease import KIND
from .tracking import RunRow

TRAINING = f"tags.`{KIND}` = 'train'"
SLACK_MS = 10_000  # writers' clocks may disagree by this much; runs ending that close to a sync are read again
VERSION = 4
BASE = ("run_id", "status", "start_time", "end_time", "name", "artifact_uri")
_COLUMNS = (*BASE, "tags", "params", "metrics")
_PARTS = {"tags": "t", "params": "p", "metrics": "m"}  # a field column: "t.NAME", "p.NAME" or "m.NAME"


def index_path(uri: str) -> Path:
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return db.with_name(db.name + ".sweep-index")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mnist-sweep"
    return cache / f"index-{hashlib.sha256(uri.encode()).hexdigest()[:16]}.sqlite"


class Index:
    """The training runs of one experiment, as last read from the store."""

    def __init__(self, uri: str, experiment_id: str, path: Optional[Path] = None, experiment: str = ""):
        self.uri, self.experiment_id, self.experiment = uri, experiment_id, experiment
        self.path = Path(path) if path else index_path(uri)
        self.synced_at = 0.0

    @classmethod
    def last_read(cls, uri: str, experiment: str) -> Optional["Index"]:
        """The index of an experiment as the last sync left it, found by name without asking the
        store (nor importing MLflow); None when it was never read."""
        path = index_path(uri)
        if not path.exists():
            return None
        try:
            with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
                found = db.execute("select experiment_id, synced_at from meta where experiment = ?"
                                   " order by synced_at desc", (experiment,)).fetchone()
        except sqlite3.DatabaseError:
            return None
        if found is None:
            return None
        index = cls(uri, found[0], path, experiment)
        index.synced_at = found[1]
        return index

    def sync(self) -> tuple[list[RunRow], set]:
        """Bring the mirror up to date with the store; returns the rows read and the run ids dropped."""
        started = time.time()
        try:
            changes = self._sync(started)
        except sqlite3.DatabaseError:  # a damaged cache is no loss: start again from the store
            self.path.unlink(missing_ok=True)
            changes = self._sync(started)
        self.synced_at = started
        return changes

    def rows(self, status: Optional[str] = None) -> list[RunRow]:
        with closing(self._connect()) as db:  # (only reads: no store, no MLflow)
            query = f"select {', '.join(_COLUMNS)} from runs where experiment_id = ?"
            args = [self.experiment_id]
            if status:
                query += " and status = ?"
                args.append(status)
            return [_row(r) for r in db.execute(query, args)]

    def table(self, tags=(), params=(), metrics=()) -> list[tuple]:
        """Every run as a tuple: the BASE columns, then the values of the named tags, params and
        metrics (None where a run has none; a NaN metric reads as None too). No JSON is decoded:
        each field asked for has a column of its own, added (and filled) the first time it is asked
        for and kept up to date by every sync after."""
        wanted = [*(("tags", n) for n in tags), *(("params", n) for n in params), *(("metrics", n) for n in metrics)]
        with closing(self._connect()) as db:
            if set(wanted) - set(_fields(db)):
                db.execute("begin immediate")  # no sync may insert rows between the new columns and their filling
                have = set(_fields(db))
                _add_fields(db, [w for w in dict.fromkeys(wanted) if w not in have])
                db.commit()
            columns = ", ".join((*BASE, *(_field(part, name) for part, name in wanted)))
            return db.execute(f"select {columns} from runs where experiment_id = ?", (self.experiment_id,)).fetchall()

    def _sync(self, started: float) -> tuple[list[RunRow], set]:
        with closing(self._connect()) as db:
            meta = db.execute("select synced_end, deleted, experiment from meta where experiment_id = ?",
                              (self.experiment_id,)).fetchone()
            if meta is None:
                fresh = self._search(TRAINING)
                deleted: set = set()
                vanished = set()
            else:
                synced_end, deleted = meta[0], set(json.loads(meta[1]))
                fresh = _training(self._search(f"attributes.end_time > {synced_end - SLACK_MS}")
                                  + self._search("attributes.status = 'RUNNING'"))
                seen = {row.run_id for row in fresh}
                was_running = [r for (r,) in db.execute(
                    "select run_id from runs where experiment_id = ? and status = 'RUNNING'", (self.experiment_id,))]
                gone = [r for r in was_running if r not in seen]
                fresh += self._by_id(gone)  # ended with an odd clock, or deleted (a withdrawn claim)
                vanished = {r for r in gone if r not in {row.run_id for row in fresh}}
            deleted_now = _training(self._search("attributes.status != 'RUNNING'", view="deleted"))
            now_deleted = {row.run_id for row in deleted_now}
            fresh += self._by_id(sorted(deleted - now_deleted))   # restored since the last sync
            dropped = vanished | now_deleted | {row.run_id for row in fresh if row.deleted}
            db.execute("begin immediate")  # the field columns cannot change until this sync is written
            _drop(db, dropped)
            live = [row for row in fresh if not row.deleted]
            fields = _fields(db)
            columns = (*_COLUMNS, *(_field(part, name) for part, name in fields))
            db.executemany(f"insert or replace into runs (experiment_id, {', '.join(columns)}) "
                           f"values (?, {', '.join('?' for _ in columns)})",
                           [(self.experiment_id, *_values(row), *_field_values(row, fields)) for row in live])
            ends = [row.end_time for row in live if row.end_time] + [meta[0] if meta else 0]
            self.experiment = self.experiment or (meta[2] if meta else "")
            db.execute("insert or replace into meta (experiment_id, experiment, synced_end, synced_at, deleted) "
                       "values (?, ?, ?, ?, ?)", (self.experiment_id, self.experiment, max(ends), started,
                                                  json.dumps(sorted(now_deleted))))
            db.commit()
        return live, dropped

    def _search(self, query: str, view: str = "active") -> list[RunRow]:
        return tracking.search(self.uri, self.experiment_id, query, view=view)

    def _by_id(self, run_ids: list) -> list[RunRow]:
        rows = []
        for start in range(0, len(run_ids), 100):
            ids = ",".join(f"'{r}'" for r in run_ids[start:start + 100])
            rows += self._search(f"attributes.run_id IN ({ids})", view="all")
        return rows

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30)
        version = db.execute("pragma user_version").fetchone()[0]
        if version != VERSION:
            db.executescript("drop table if exists runs; drop table if exists meta;")
            db.execute(f"create table runs (experiment_id text, {', '.join(_COLUMNS)}, primary key (run_id))")
            db.execute("create index runs_experiment on runs (experiment_id, status)")
            db.execute("create table meta (experiment_id text primary key, experiment text, synced_end integer, "
                       "synced_at real, deleted text)")
            db.execute(f"pragma user_version = {VERSION}")
            db.commit()
        return db


def _training(rows: list[RunRow]) -> list[RunRow]:
    """The training runs among `rows`. The sync's searches filter on attributes alone and leave this
    to Python: a filter on a tag makes the store look up every run's tags (MLflow keeps no index on
    tag values), which would cost each sync time in proportion to all the runs, not to what changed."""
    return [row for row in rows if row.tags.get(KIND) == "train"]


def _drop(db: sqlite3.Connection, run_ids) -> None:
    db.executemany("delete from runs where run_id = ?", [(r,) for r in run_ids])


def _values(row: RunRow) -> tuple:
    return (row.run_id, row.status, row.start_time, row.end_time, row.name, row.artifact_uri,
            json.dumps(row.tags), json.dumps(row.params), json.dumps(row.metrics))


def _field(part: str, name: str) -> str:
    """The quoted column of a field; declared without a type, so that SQLite stores each value as given."""
    return '"' + f"{_PARTS[part]}.{name}".replace('"', '""') + '"'


def _fields(db: sqlite3.Connection) -> list[tuple]:
    """The (part, name) of every field column the index keeps."""
    parts = {letter: part for part, letter in _PARTS.items()}
    return [(parts[column[0]], column[2:]) for (_, column, *_) in db.execute("pragma table_info(runs)")
            if column[:2] in ("t.", "p.", "m.")]


def _field_values(row: RunRow, fields) -> list:
    return [getattr(row, part).get(name) for part, name in fields]


def _add_fields(db: sqlite3.Connection, fields: list) -> None:
    """New field columns, filled from the runs already mirrored."""
    for part, name in fields:
        db.execute(f"alter table runs add column {_field(part, name)}")
    filled = [(*_field_values(_row((run_id, None, None, None, None, None, *blobs)), fields), run_id)
              for run_id, *blobs in db.execute("select run_id, tags, params, metrics from runs")]
    db.executemany(f"update runs set {', '.join(f'{_field(p, n)} = ?' for p, n in fields)} where run_id = ?", filled)


def _row(values) -> RunRow:
    run_id, status, start, end, name, artifact_uri, tags, params, metrics = values
    return RunRow(run_id, status, start, end, name, artifact_uri, json.loads(tags), json.loads(params),
                  json.loads(metrics))
