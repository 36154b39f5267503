"""The change feed: a mirror of an experiment's training runs, read by each reader from its own cursor.

The store stays the only source of truth: this is a cache beside it (an SQLite file next to a local
store, under ~/.cache for a tracking server) that can be deleted at any time and is rebuilt. A sync
asks the store only for what changed: the runs that ended since the last sync (by end time, with a
margin for writers' clocks), the runs RUNNING now or at the last sync, and the runs deleted or
restored. Any process may sync; whatever a sync writes gets the experiment's next sequence number.

A reader keeps its own `Cursor` (the mirror's generation and the last sequence number it applied)
and asks `changes(cursor)` for every row written and every run dropped since, whoever synced: no
process can move another's cursor, so none can hide a change from another. A sync never replaces a
row with an older state of the run (a slower sync that read the store earlier), so rows only move
forward. When the file cannot be used (a read-only folder, a lock held too long by a stopped
process) the index goes on in a private in-memory database, rebuilt from the store: slower, as right.

Each run is kept whole (its tags, params and metrics as JSON), and the fields that readers ask for by
name in columns of their own as well, so that reading tens of thousands of runs decodes no JSON.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from . import schema
from .base import Query, RunRow, Store

SLACK_MS = 10_000  # writers' clocks may disagree by this much; runs ending that close to a sync are read again
VERSION = 5
BUSY_SECONDS = 10  # a lock held longer than this (a stopped process): go on without the file
BASE = ("run_id", "status", "start_time", "end_time", "name", "artifact_uri")
_COLUMNS = (*BASE, "tags", "params", "metrics")
_PARTS = {"tags": "t", "params": "p", "metrics": "m"}  # a field column: "t.NAME", "p.NAME" or "m.NAME"
_CHUNK = 500  # run ids per SQL statement


def index_path(uri: str) -> Path:
    """Where the mirror of a tracking store's runs lives: beside a local store, else in the user's cache."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):].split("?")[0])
        return db.with_name(db.name + ".sweep-index")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mnist-sweep"
    return cache / f"index-{hashlib.sha256(uri.encode()).hexdigest()[:16]}.sqlite"


@dataclass(frozen=True)
class Cursor:
    """How far one reader has read the feed."""
    generation: str     # the mirror's identity: a rebuilt mirror has a new one
    seq: int            # the last sequence number applied


@dataclass(frozen=True)
class Changes:
    rows: list          # tuples: the BASE columns, then the fields asked for
    gone: frozenset     # run ids dropped (deleted in the store)
    cursor: Cursor      # where the reader is now
    reset: bool         # the reader's view starts again from `rows` alone (a first read, or a new mirror)


class Index:
    """The training runs of one experiment, as last read from the store."""

    def __init__(self, store: Optional[Store], experiment_id: str, experiment: str = "",
                 path: Optional[Path] = None):
        self.store, self.experiment_id, self.experiment = store, experiment_id, experiment
        self.path = Path(path) if path else store.index_path
        self.synced_at = 0.0
        self._private: Optional[sqlite3.Connection] = None   # once the file cannot be used
        self._file: Optional[tuple] = None                     # (connection, the file's identity)

    @classmethod
    def last_read(cls, path: Path, experiment: str) -> Optional["Index"]:
        """The index of an experiment as the last sync left it, found by name without asking the
        store (nor importing MLflow); None when it was never read."""
        if not Path(path).exists():
            return None
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_SECONDS)) as db:
                found = db.execute("select experiment_id, synced_at from meta where experiment = ?"
                                   " order by synced_at desc", (experiment,)).fetchone()
        except sqlite3.DatabaseError:
            return None
        if found is None:
            return None
        index = cls(None, found[0], experiment, path)
        index.synced_at = found[1]
        return index

    # --- reading ------------------------------------------------------------------------------------

    def changes(self, cursor: Optional[Cursor] = None, tags=(), params=(), metrics=()) -> Changes:
        """The rows written and the runs dropped since `cursor` (everything when None or when the
        mirror was rebuilt since), each row with the values of the named fields (None where absent)."""
        return self._fallible(self._changes, cursor, tags, params, metrics)

    def _changes(self, cursor, tags, params, metrics) -> Changes:
        wanted = [*(("tags", n) for n in tags), *(("params", n) for n in params), *(("metrics", n) for n in metrics)]
        with self._db() as db:
            if set(wanted) - set(_fields(db)):
                db.execute("begin immediate")  # no sync may insert rows between the new columns and their filling
                have = set(_fields(db))
                _add_fields(db, [w for w in dict.fromkeys(wanted) if w not in have])
                db.commit()
            db.execute("begin")  # one snapshot: the rows, the tombstones and the sequence number agree
            try:
                generation = db.execute("select generation from about").fetchone()[0]
                seq = (db.execute("select seq from meta where experiment_id = ?", (self.experiment_id,)).fetchone()
                       or (0,))[0]
                reset = cursor is None or cursor.generation != generation
                since = -1 if reset else cursor.seq
                columns = ", ".join((*BASE, *(_field(part, name) for part, name in wanted)))
                rows = db.execute(f"select {columns} from runs where experiment_id = ? and seq > ?",
                                  (self.experiment_id, since)).fetchall()
                gone = frozenset(r for (r,) in db.execute(
                    "select run_id from gone where experiment_id = ? and seq > ?", (self.experiment_id, since)))
            finally:
                db.rollback()
        return Changes(rows, frozenset() if reset else gone, Cursor(generation, seq), reset)

    def table(self, tags=(), params=(), metrics=()) -> list[tuple]:
        """Every run as a tuple: the BASE columns, then the values of the named tags, params and
        metrics (None where a run has none; a NaN metric reads as None too), without decoding JSON."""
        return self.changes(None, tags, params, metrics).rows

    def rows(self, status: Optional[str] = None) -> list[RunRow]:
        return self._fallible(self._rows, status)

    def _rows(self, status: Optional[str]) -> list[RunRow]:
        with self._db() as db:
            query = f"select {', '.join(_COLUMNS)} from runs where experiment_id = ?"
            args = [self.experiment_id]
            if status:
                query += " and status = ?"
                args.append(status)
            return [_row(r) for r in db.execute(query, args)]

    def _close(self) -> None:
        if self._file is not None:
            self._file[0].close()
            self._file = None

    # --- syncing ------------------------------------------------------------------------------------

    def sync(self, keys=()) -> None:
        """Bring the mirror up to date with the store; read the runs of `keys` again whatever their
        end times say (a writer's clock that was far behind can hide an ended run from a sync)."""
        started = self.store.host.now()
        self._fallible(self._sync, started, tuple(keys))
        self.synced_at = started

    def _fallible(self, read, *args):
        """`read(*args)` on the file; again in a private database when the file is unusable."""
        try:
            return read(*args)
        except sqlite3.DatabaseError as exc:
            if self._private is not None:
                raise
            damaged = not isinstance(exc, sqlite3.OperationalError)  # else locked too long, read-only, disk full
            if damaged:
                self._close()
                with contextlib.suppress(OSError):  # a damaged cache is no loss: start again from the store
                    self.path.unlink()
            if not damaged or self.path.exists():
                self._close()
                self._private = _connect(":memory:")
            if read != self._sync and self.store is not None:  # the new mirror starts empty: fill it first
                self._sync(self.store.host.now(), ())
            return read(*args)

    def _sync(self, started: float, keys: tuple) -> None:
        with self._db() as db:
            meta = db.execute("select synced_end, deleted from meta where experiment_id = ?",
                              (self.experiment_id,)).fetchone()
            if meta is None:
                fresh = self._find(Query(tags=((schema.KIND, schema.TRAIN),)))
                vanished: set = set()
                deleted: set = set()
            else:
                synced_end, deleted = meta[0], set(json.loads(meta[1]))
                fresh = _training(self._find(Query(ended_after=synced_end - SLACK_MS))
                                  + self._find(Query(status="RUNNING")))
                seen = {row.run_id for row in fresh}
                was_running = [r for (r,) in db.execute(
                    "select run_id from runs where experiment_id = ? and status = 'RUNNING'", (self.experiment_id,))]
                gone = [r for r in was_running if r not in seen]
                fresh += self._by_id(gone)  # ended with an odd clock, or deleted (a withdrawn claim)
                vanished = set(gone) - {row.run_id for row in fresh}
            for key in keys:
                fresh += self._find(Query(tags=((schema.KEY, key),), view="all"))
            now_deleted = {row.run_id for row in _training(self._find(Query(not_status="RUNNING", view="deleted")))}
            fresh += self._by_id(sorted(deleted - now_deleted))   # restored since the last sync
            live = {row.run_id: row for row in fresh if not row.deleted}
            dropped = (vanished | now_deleted | {row.run_id for row in fresh if row.deleted}) - set(live)
            self._write(db, list(live.values()), dropped, now_deleted, started)

    def _write(self, db: sqlite3.Connection, live: list, dropped: set, now_deleted: set, started: float) -> None:
        """Write what the store showed: each row newer than the mirror's, each run dropped, under the
        experiment's next sequence number. A first look without the write lock: nothing new, nothing written."""
        for locked in (False, True):
            if locked:
                db.execute("begin immediate")  # the field columns cannot change until this sync is written
            meta = db.execute("select synced_end, deleted, seq, experiment from meta where experiment_id = ?",
                              (self.experiment_id,)).fetchone()
            synced_end, was_deleted, seq, experiment = meta or (0, "[]", 0, "")
            held = _held(db, [row.run_id for row in live])
            newer = []
            for row in live:
                digest, version = _digest(row), _version(row)
                known = held.get(row.run_id)
                if known is None or (known[0] != digest and version >= known[1]):  # never back to an older state
                    newer.append((row, digest, version))
            removed = _present(db, dropped)
            deleted = (set(json.loads(was_deleted)) | now_deleted) - {row.run_id for row in live}
            end = max([synced_end, *(row.end_time for row in live if row.end_time)])
            if not locked and meta and not newer and not removed and deleted == set(json.loads(was_deleted)) \
                    and end == synced_end:
                return
        if newer or removed:
            seq += 1
        fields = _fields(db)
        columns = (*_COLUMNS, *(_field(part, name) for part, name in fields))
        db.executemany(f"insert or replace into runs (experiment_id, seq, digest, ended, end_ms, beat, "
                       f"{', '.join(columns)}) values (?, ?, ?, ?, ?, ?, {', '.join('?' for _ in columns)})",
                       [(self.experiment_id, seq, digest, *version, *_values(row), *_field_values(row, fields))
                        for row, digest, version in newer])
        db.executemany("delete from gone where run_id = ?", [(row.run_id,) for row, _, _ in newer])
        db.executemany("delete from runs where run_id = ?", [(r,) for r in removed])
        db.executemany("insert into gone (experiment_id, run_id, seq) values (?, ?, ?)",
                       [(self.experiment_id, r, seq) for r in removed])
        self.experiment = self.experiment or experiment
        db.execute("insert or replace into meta (experiment_id, experiment, synced_end, synced_at, deleted, seq) "
                   "values (?, ?, ?, ?, ?, ?)",
                   (self.experiment_id, self.experiment, end, started, json.dumps(sorted(deleted)), seq))
        db.commit()

    def _find(self, query: Query) -> list[RunRow]:
        return self.store.find(self.experiment_id, query)

    def _by_id(self, run_ids: list) -> list[RunRow]:
        return self._find(Query(run_ids=tuple(run_ids), view="all")) if run_ids else []

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """The mirror's database: the file, opened once and again whenever the file was replaced (a
        damaged one deleted by another process); or the private one."""
        if self._private is not None:
            yield self._private
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            identity = _identity(self.path)
            if self._file is None or identity is None or identity != self._file[1]:
                if self._file is not None:
                    self._file[0].close()
                self._file = None
                db = _connect(self.path)
                self._file = (db, _identity(self.path))
        except (OSError, sqlite3.OperationalError) as exc:  # a folder or file that cannot be written
            raise sqlite3.OperationalError(f"the mirror {self.path} cannot be used: {exc}") from exc  # see _fallible
        try:
            yield self._file[0]
        except BaseException:
            if self._file is not None and self._file[0].in_transaction:
                self._file[0].rollback()
            raise


def _identity(path: Path) -> Optional[tuple]:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _connect(path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=BUSY_SECONDS, isolation_level=None)
    if db.execute("pragma user_version").fetchone()[0] != VERSION:
        db.execute("begin immediate")
        if db.execute("pragma user_version").fetchone()[0] != VERSION:  # another process may have just made it
            for table in ("runs", "meta", "gone", "about"):
                db.execute(f"drop table if exists {table}")
            db.execute(f"create table runs (experiment_id text, seq integer, digest text, ended integer, end_ms "
                       f"integer, beat real, {', '.join(_COLUMNS)}, primary key (run_id))")
            db.execute("create index runs_by_seq on runs (experiment_id, seq)")
            db.execute("create index runs_by_status on runs (experiment_id, status)")
            db.execute("create table gone (experiment_id text, run_id text, seq integer)")
            db.execute("create index gone_by_seq on gone (experiment_id, seq)")
            db.execute("create table meta (experiment_id text primary key, experiment text, synced_end integer, "
                       "synced_at real, deleted text, seq integer)")
            db.execute("create table about (generation text)")
            db.execute("insert into about values (?)", (uuid.uuid4().hex,))
            db.execute(f"pragma user_version = {VERSION}")
        db.commit()
    return db


def _training(rows: list[RunRow]) -> list[RunRow]:
    """The training runs among `rows`. The sync's searches filter on attributes alone and leave this
    to Python: a filter on a tag makes the store look up every run's tags (MLflow keeps no index on
    tag values), which would cost each sync time in proportion to all the runs, not to what changed."""
    return [row for row in rows if row.tags.get(schema.KIND) == schema.TRAIN]


def _version(row: RunRow) -> tuple:
    """How far a run's life has gone: ended, then its end time, then its holder's last heartbeat.
    Every write to a training run moves one of them forward (see queue.lease)."""
    return row.status != "RUNNING", row.end_time or 0, schema.seconds(row.tags.get(schema.HEARTBEAT))


def _digest(row: RunRow) -> str:
    return hashlib.blake2b(repr(_values(row)).encode(), digest_size=8).hexdigest()


def _held(db: sqlite3.Connection, run_ids: list) -> dict:
    """run_id -> (digest, version) of the runs the mirror holds among `run_ids`."""
    held = {}
    for start in range(0, len(run_ids), _CHUNK):
        chunk = run_ids[start:start + _CHUNK]
        for run_id, digest, ended, end_ms, beat in db.execute(
                f"select run_id, digest, ended, end_ms, beat from runs where run_id in ({','.join('?' * len(chunk))})",
                chunk):
            held[run_id] = (digest, (bool(ended), end_ms or 0, beat or 0.0))
    return held


def _present(db: sqlite3.Connection, run_ids) -> list:
    run_ids = sorted(run_ids)
    return [r for start in range(0, len(run_ids), _CHUNK) for (r,) in db.execute(
        f"select run_id from runs where run_id in ({','.join('?' * len(run_ids[start:start + _CHUNK]))})",
        run_ids[start:start + _CHUNK])]


def _values(row: RunRow) -> tuple:
    return (row.run_id, row.status, row.start_time, row.end_time, row.name, row.artifact_uri,
            json.dumps(row.tags, sort_keys=True), json.dumps(row.params, sort_keys=True),
            json.dumps(row.metrics, sort_keys=True))


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
