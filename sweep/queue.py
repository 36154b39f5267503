"""The durable queue: a run's whole life, read from and written to the MLflow runs that carry its key.

A key's state:
- done:    some attempt FINISHED (diverged and early-stopped runs are finished too)
- running: some attempt RUNNING whose holder still heartbeats within its lease (and, on this host,
           still exists)
- failed:  the latest ended attempt FAILED
- pending: no attempt, only KILLED ones, or RUNNING ones whose lease lapsed

Claiming is create-then-check: a worker creates its RUNNING run, then reads the key's runs; it keeps
the claim only if no other live claim or finished run is there, else it deletes its run and tries
again later. The claim is a `Lease` (lease.py): its holder alone writes the run's outcome.
"""
from __future__ import annotations

import random
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from . import tracking
from .index import Index
from .store import store_exists, store_uri
from .lease import (ATTEMPT, DIVERGED, ERROR, GRIDS, HEARTBEAT, HOLDER, KEY, KIND, LEASE, LEASE_SECONDS,
                    OWNER, PRUNED, SEARCH, SESSION, SWEEP, TRIAL, Lease, holder_alive)
from .tracking import RunRow

STATES = ("pending", "running", "failed", "done")
QUEUE_TAGS = (KEY, HEARTBEAT, SESSION, ERROR, DIVERGED, HOLDER, LEASE, PRUNED, SEARCH)  # what a RunRecord is made of
PARENT_RUN_ID = "mlflow.parentRunId"


@dataclass(frozen=True)
class RunRecord:
    """One attempt at a key, as the queue sees it."""
    run_id: str
    key: str
    status: str
    start_time: int          # ms since the epoch
    heartbeat: float         # s since the epoch, 0 when none
    session: str
    error: str = ""
    diverged: bool = False
    holder: str = ""
    lease: float = LEASE_SECONDS
    pruned: bool = False
    search: str = ""

    @property
    def lease_until(self) -> float:
        return self.heartbeat + self.lease


def record(row: RunRow) -> RunRecord:
    return _record(row.run_id, row.status, row.start_time, *(row.tags.get(tag) for tag in QUEUE_TAGS))


def _record(run_id, status, start_time, key, heartbeat, session, error, diverged, holder, lease, pruned,
            search) -> RunRecord:
    """From a run's id, status, start and the values of QUEUE_TAGS (None where absent)."""
    return RunRecord(run_id, key or "", status, start_time or 0, float(heartbeat or 0), session or "", error or "",
                     diverged == "true", holder or "", float(lease or LEASE_SECONDS), pruned == "true", search or "")


def is_live(r: RunRecord, now: float, alive=holder_alive) -> bool:
    """RUNNING, heartbeating within its lease, and its holder not known to be gone."""
    return r.status == "RUNNING" and now - r.heartbeat <= r.lease and alive(r.holder) is not False


def key_state(records: Iterable[RunRecord], now: float, alive=holder_alive) -> str:
    records = list(records)
    if any(r.status == "FINISHED" for r in records):
        return "done"
    if any(is_live(r, now, alive) for r in records):
        return "running"
    ended = [r for r in records if r.status in ("FAILED", "KILLED")]
    if ended and max(ended, key=lambda r: r.start_time).status == "FAILED":
        return "failed"
    return "pending"


def by_key(records: Iterable[RunRecord]) -> dict[str, list[RunRecord]]:
    out: dict[str, list[RunRecord]] = {}
    for r in records:
        out.setdefault(r.key, []).append(r)
    return out


def states(keys: Iterable[str], records: Iterable[RunRecord], now: Optional[float] = None,
           alive=holder_alive) -> dict[str, str]:
    """State of every key, from the experiment's run records."""
    now = time.time() if now is None else now
    grouped = by_key(records)
    return {k: key_state(grouped.get(k, ()), now, alive) for k in keys}


def last_errors(records: Iterable[RunRecord]) -> dict[str, str]:
    """The error text of each key's latest failed attempt."""
    latest: dict[str, RunRecord] = {}
    for r in records:
        if r.status == "FAILED" and (r.key not in latest or r.start_time > latest[r.key].start_time):
            latest[r.key] = r
    return {k: r.error for k, r in latest.items()}


def count(state_by_key: dict[str, str]) -> dict[str, int]:
    counts = dict.fromkeys(STATES, 0)
    for state in state_by_key.values():
        counts[state] += 1
    return counts


@dataclass(frozen=True)
class QueueRead:
    states: dict            # key -> state
    records: list           # the experiment's RunRecords ([] when nothing is tracked yet)
    synced_at: float = 0.0


class QueueView:
    """The experiment's attempts as last read (through the index: each refresh reads only what
    changed in the store), and the states they give."""

    def __init__(self, uri: str, experiment_id: str, experiment: str = "", index: Optional[Index] = None):
        self.index = index or Index(uri, experiment_id, experiment=experiment)
        self._runs: dict[str, RunRecord] = {}
        self._keyed: dict[str, dict[str, RunRecord]] = {}
        self._done: set = set()   # keys with a FINISHED attempt: done whatever the clock says
        self._loaded = False

    def refresh(self, sync: bool = True) -> "QueueView":
        """Read what changed in the store (or, without `sync`, what the index held at its last sync)."""
        rows, dropped = self.index.sync() if sync else ([], set())
        if not self._loaded:
            records = [_record(run_id, status, start, *tags)
                       for run_id, status, start, _, _, _, *tags in self.index.table(tags=QUEUE_TAGS)]
            self._loaded = True
        else:
            records = [record(row) for row in rows]
        touched = set()
        for run_id in dropped:
            old = self._runs.pop(run_id, None)
            if old is not None:
                self._keyed.get(old.key, {}).pop(run_id, None)
                touched.add(old.key)
        for r in records:
            self._runs[r.run_id] = r
            self._keyed.setdefault(r.key, {})[r.run_id] = r
            touched.add(r.key)
        for key in touched:
            if any(a.status == "FINISHED" for a in self._keyed.get(key, {}).values()):
                self._done.add(key)
            else:
                self._done.discard(key)
        return self

    @property
    def synced_at(self) -> float:
        return self.index.synced_at

    def records(self) -> list[RunRecord]:
        return list(self._runs.values())

    def attempts(self, key: str) -> list[RunRecord]:
        return list(self._keyed.get(key, {}).values())

    def states(self, keys: Iterable[str], now: Optional[float] = None) -> dict[str, str]:
        now = time.time() if now is None else now
        done = self._done  # most keys of a long sweep: no need to look at their attempts again
        return {k: "done" if k in done else key_state(self.attempts(k), now) for k in keys}

    def failures(self, key: str, session: str) -> int:
        return sum(r.session == session and r.status == "FAILED" for r in self.attempts(key))

    def live(self, keys: Iterable[str]) -> list[RunRecord]:
        """The attempts of `keys` held by a live lease now."""
        now = time.time()
        return [r for k in keys for r in self.attempts(k) if is_live(r, now)]


def read_states(spec, runs, uri: Optional[str], sync: bool = True) -> Optional[QueueRead]:
    """Each planned run's state, read without writing to the store (all pending when there is none).
    Without `sync`, as the index last saw them (no store read; None when it never did)."""
    uri = store_uri(uri)
    if not sync:
        index = Index.last_read(uri, spec.experiment)
        if index is None:
            return None
        view = QueueView(uri, index.experiment_id, index=index).refresh(sync=False)
        return QueueRead(view.states([r.key for r in runs], index.synced_at), view.records(), index.synced_at)
    experiment_id = tracking.find_experiment(uri, spec.experiment) if store_exists(uri) else None
    if experiment_id is None:
        return QueueRead(states([r.key for r in runs], []), [])
    view = QueueView(uri, experiment_id, spec.experiment).refresh()
    return QueueRead(view.states([r.key for r in runs], view.synced_at), view.records(), view.synced_at)


# --- claims -----------------------------------------------------------------------------------------

def key_records(uri: str, experiment_id: str, key: str) -> list[RunRecord]:
    """Every attempt at one key, read from the store itself (never from the index)."""
    index_tag_values(uri)
    return [record(row) for row in tracking.search(uri, experiment_id, f"tags.`{KEY}` = '{key}'")]


_TAG_INDEX = "create index if not exists sweep_tags_key_value on tags (key, value)"
_tags_indexed: set = set()


def index_tag_values(uri: str) -> None:
    """Give a local store an index on its tags' values (once per process), so that finding a key's
    runs, a session's or the sweep's parent reads those runs alone. MLflow indexes its tags table
    by (key, run) only: without this, each claim reads the tags of every run in the store, and a
    claim's cost grows with the number of runs (31 ms of SQL per lookup at 10,000 runs, 0.01 ms
    with it). A tracking server's database needs the same index from its administrator (see README)."""
    if uri in _tags_indexed or not uri.startswith("sqlite:///") or not Path(uri[len("sqlite:///"):]).exists():
        return
    try:
        with closing(sqlite3.connect(uri[len("sqlite:///"):], timeout=30)) as db:
            db.execute(_TAG_INDEX)
            db.commit()
    except sqlite3.Error:
        return  # MLflow has not made its tables yet, or the store is read-only: lookups work, only slower
    _tags_indexed.add(uri)


def claim(uri: str, experiment_id: str, parent_id: str, planned, sweep_name: str, session: str,
          holder: str, attempt: int = 1, lease_seconds: float = LEASE_SECONDS, tries: int = 20) -> Optional[Lease]:
    """A lease on `planned`'s run, or None if the key is done or held by a live claim.

    A claim stands only if it is the one live claim of its key once it is in the store; when two
    claimants see each other, both withdraw and try again after a random pause (never two winners).
    """
    for _ in range(tries):
        before = key_records(uri, experiment_id, planned.key)
        if key_state(before, time.time()) in ("done", "running"):
            return None
        for stale in before:  # a holder that died or stopped beating: its run can no longer pass for in flight
            if stale.status == "RUNNING":
                gone = "is gone" if holder_alive(stale.holder) is False else "stopped heartbeating"
                end_attempt(uri, stale.run_id, "KILLED", f"claim lapsed: its holder {stale.holder} {gone}")
        now = time.time()
        tags = {PARENT_RUN_ID: parent_id, KIND: "train", KEY: planned.key, GRIDS: ",".join(planned.grids),
                SWEEP: sweep_name, SESSION: session, ATTEMPT: str(attempt), HOLDER: holder,
                HEARTBEAT: f"{now:.3f}", LEASE: f"{lease_seconds:g}"}
        if planned.search:
            tags.update({SEARCH: planned.search, TRIAL: str(planned.trial)})
        run_id = tracking.create_run(uri, experiment_id, planned.name, tags)
        after = key_records(uri, experiment_id, planned.key)
        rivals = [r for r in after if r.run_id != run_id and (r.status == "FINISHED" or is_live(r, time.time()))]
        if not rivals:
            lease = Lease(uri, experiment_id, run_id, planned.key, planned.name, lease_seconds)
            lease.confirmed = now
            return lease
        tracking.delete_run(uri, run_id)
        time.sleep(random.uniform(0.05, 0.5))
    return None


def end_attempt(uri: str, run_id: str, status: str, error: str) -> None:
    """End a run whose holder is gone or lapsed (never one whose holder still heartbeats)."""
    tracking.log_batch(uri, run_id, tags={ERROR: error[-7900:]})
    tracking.set_status(uri, run_id, status)


def session_runs(uri: str, experiment_id: str, session: str, status: str = "RUNNING") -> list[RunRecord]:
    index_tag_values(uri)
    return [record(row) for row in tracking.search(
        uri, experiment_id, f"tags.`{SESSION}` = '{session}' and attributes.status = '{status}'")]


# --- the sweep's parent run ---------------------------------------------------------------------------

def find_parent(uri: str, experiment_id: str, sweep_name: str) -> Optional[str]:
    index_tag_values(uri)
    found = tracking.search(uri, experiment_id, f"tags.`{KIND}` = 'parent' and tags.`{SWEEP}` = "
                            f"{tracking.quoted(sweep_name)}", max_results=1, order_by=["attributes.start_time ASC"])
    return found[0].run_id if found else None


def parent_run(uri: str, experiment_id: str, sweep_name: str, params: dict, owner: str) -> str:
    """The sweep's parent run, RUNNING and owned by `owner` (reused on resume, so every attempt
    nests under one parent)."""
    run_id = find_parent(uri, experiment_id, sweep_name)
    if run_id:
        tracking.log_batch(uri, run_id, tags={OWNER: owner})
        tracking.set_status(uri, run_id, "RUNNING")
        return run_id
    run_id = tracking.create_run(uri, experiment_id, f"sweep:{sweep_name}",
                                 {KIND: "parent", SWEEP: sweep_name, OWNER: owner})
    tracking.log_batch(uri, run_id, params=params)
    return run_id


def end_parent(uri: str, run_id: str, status: str, counts: dict, note: str = "") -> None:
    tracking.log_batch(uri, run_id, metrics=[(f"runs_{k}", v, 0) for k, v in counts.items()],
                       tags={"sweep.outcome": note} if note else None)
    if status != "RUNNING":
        tracking.set_status(uri, run_id, status)
