"""The durable queue: a run's state is read from the MLflow runs that carry its key.

- done:    some attempt FINISHED (diverged runs are finished too)
- running: some attempt RUNNING whose holder still heartbeats
- failed:  the latest attempt FAILED
- pending: no attempt, or only KILLED ones, or RUNNING ones whose holder stopped heartbeating

Claiming is create-then-check: a worker creates its RUNNING run, then looks at the key's runs; it
keeps the claim only if no other live claim is there, else it deletes its run and tries again
later. A claim whose holder dies stops heartbeating and lapses after LEASE_SECONDS.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Iterable, Optional

from . import tracking
from .tracking import RunRecord

HEARTBEAT_SECONDS = 10.0
LEASE_SECONDS = 60.0
STATES = ("pending", "running", "failed", "done")


def is_live(record: RunRecord, now: float, lease: Optional[float] = None) -> bool:
    return record.status == "RUNNING" and now - record.heartbeat <= (LEASE_SECONDS if lease is None else lease)


def key_state(records: Iterable[RunRecord], now: float, lease: Optional[float] = None) -> str:
    records = list(records)
    if any(r.status == "FINISHED" for r in records):
        return "done"
    if any(is_live(r, now, lease) for r in records):
        return "running"
    ended = [r for r in records if r.status in ("FAILED", "KILLED")]
    if ended and max(ended, key=lambda r: r.start_time).status == "FAILED":
        return "failed"
    return "pending"


def states(keys: Iterable[str], records: Iterable[RunRecord], now: Optional[float] = None) -> dict[str, str]:
    """State of every key, from the experiment's run records."""
    now = time.time() if now is None else now
    by_key: dict[str, list[RunRecord]] = {}
    for r in records:
        by_key.setdefault(r.key, []).append(r)
    return {k: key_state(by_key.get(k, []), now) for k in keys}


@dataclass(frozen=True)
class QueueRead:
    states: dict            # key -> state
    records: list           # the experiment's RunRecords ([] when nothing is tracked yet)


def read_states(spec, runs, uri: Optional[str]) -> QueueRead:
    """Each planned run's state, read without writing anything (all pending when there is no store)."""
    uri = tracking.store_uri(uri)
    experiment_id = tracking.find_experiment(uri, spec.experiment) if tracking.store_exists(uri) else None
    records = tracking.run_records(uri, experiment_id) if experiment_id else []
    return QueueRead(states([r.key for r in runs], records), records)


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


def claim(uri: str, experiment_id: str, parent_id: str, planned, sweep_name: str, session: str,
          attempt: int, tries: int = 20) -> Optional[str]:
    """Create this worker's run for `planned` and return its id, or None if the key is done or held.

    A claim stands only if it is the one live claim of its key once it is in the store; when two
    claimants see each other, both withdraw and try again after a random pause (never two winners).
    """
    for _ in range(tries):
        before = tracking.run_records(uri, experiment_id, planned.key)
        # A RUNNING run of our own session is an orphan: the engine re-ran a job whose worker died.
        others = [r for r in before if not (r.session == session and r.status == "RUNNING")]
        if key_state(others, time.time()) in ("done", "running"):
            return None
        for stale in before:  # a holder that died: its run can no longer pass for in flight
            if stale.status == "RUNNING" and (stale.session == session or not is_live(stale, time.time())):
                tracking.end_run(uri, stale.run_id, "KILLED", "claim lapsed: its process stopped heartbeating")
        run_id = tracking.create_training_run(uri, experiment_id, parent_id, planned.name, planned.key,
                                              planned.grids, sweep_name, session, attempt)
        now = time.time()
        after = tracking.run_records(uri, experiment_id, planned.key)
        rivals = [r for r in after if r.run_id != run_id and (is_live(r, now) or r.status == "FINISHED")]
        if not rivals:
            return run_id
        tracking.delete_run(uri, run_id)
        time.sleep(random.uniform(0.05, 0.5))
    return None
