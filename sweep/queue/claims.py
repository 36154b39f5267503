"""A key's life in the store: its state, its claim, ending a lapsed claim, and the sweep's parent run.

A key's state:
- done:    some attempt FINISHED (diverged and early-stopped runs are finished too)
- running: some attempt RUNNING whose holder still heartbeats within its lease (and, on this host,
           still exists)
- failed:  the latest ended attempt FAILED
- pending: no attempt, only KILLED ones, or RUNNING ones whose lease lapsed

Claiming is create-then-check: a worker creates its RUNNING run, then reads the key's runs from the
store (never from a mirror); it keeps the claim only if no other live claim or finished run is
there, else it deletes its run and tries again later. The claim is a `Lease`: its holder alone
writes the run's outcome.
"""
from __future__ import annotations

import contextlib
import random
from typing import Callable, Iterable, Optional

from . import schema
from .base import DELETED, Query, Store, TrackingError, commit_once
from .lease import Lease, end_run
from .schema import Attempt


def is_live(a: Attempt, now: float, alive: Callable[[str], Optional[bool]]) -> bool:
    """RUNNING, heartbeating within its lease, and its holder not known to be gone."""
    return a.status == "RUNNING" and now - a.heartbeat <= a.lease and alive(a.holder) is not False


def key_state(attempts: Iterable[Attempt], now: float, alive: Callable[[str], Optional[bool]]) -> str:
    attempts = list(attempts)
    if any(a.status == "FINISHED" for a in attempts):
        return schema.DONE
    if any(is_live(a, now, alive) for a in attempts):
        return schema.RUNNING
    ended = [a for a in attempts if a.status in ("FAILED", "KILLED")]
    if ended and max(ended, key=lambda a: a.start_time).status == "FAILED":
        return schema.FAILED
    return schema.PENDING


def by_key(attempts: Iterable[Attempt]) -> dict[str, list[Attempt]]:
    out: dict[str, list[Attempt]] = {}
    for a in attempts:
        out.setdefault(a.key, []).append(a)
    return out


def states(keys: Iterable[str], attempts: Iterable[Attempt], now: float,
           alive: Callable[[str], Optional[bool]]) -> dict[str, str]:
    """The state of every key, from the experiment's attempts."""
    grouped = by_key(attempts)
    return {k: key_state(grouped.get(k, ()), now, alive) for k in keys}


def last_errors(attempts: Iterable[Attempt]) -> dict[str, str]:
    """The error text of each key's latest failed attempt."""
    latest: dict[str, Attempt] = {}
    for a in attempts:
        if a.status == "FAILED" and (a.key not in latest or a.start_time > latest[a.key].start_time):
            latest[a.key] = a
    return {k: a.error for k, a in latest.items()}


def count(state_by_key: dict[str, str]) -> dict[str, int]:
    counts = dict.fromkeys(schema.STATES, 0)
    for state in state_by_key.values():
        counts[state] += 1
    return counts


# --- claims -----------------------------------------------------------------------------------------

def key_attempts(store: Store, experiment_id: str, key: str) -> list[Attempt]:
    """Every attempt at one key, read from the store itself."""
    return [schema.decode(row) for row in store.find(experiment_id, Query(tags=((schema.KEY, key),)))]


def claim(store: Store, experiment_id: str, parent_id: str, planned, sweep_name: str, session: str,
          attempt: int = 1, lease_seconds: float = schema.DEFAULT_LEASE_SECONDS, tries: int = 20) -> Optional[Lease]:
    """A lease on `planned`'s run for this process, or None if the key is done or held by a live claim.

    A claim stands only if it is the one live claim of its key once it is in the store; when two
    claimants see each other, both withdraw and try again after a random pause (never two winners).
    """
    host = store.host
    for _ in range(tries):
        before = key_attempts(store, experiment_id, planned.key)
        if key_state(before, host.now(), host.alive) in (schema.DONE, schema.RUNNING):
            return None
        for stale in before:  # a holder that died or stopped beating: its run can no longer pass for in flight
            if stale.status == "RUNNING":
                gone = "is gone" if host.alive(stale.holder) is False else "stopped heartbeating"
                if end_attempt(store, experiment_id, stale.run_id, "KILLED",
                               f"claim lapsed: its holder {stale.holder} {gone}") == "FINISHED":
                    return None  # its holder had committed the finish before it stopped
        now = host.now()
        tags = schema.claim_tags(parent_run_id=parent_id, key=planned.key, grids=planned.grids, sweep=sweep_name,
                                 session=session, attempt=attempt, holder=host.me(), now=now, lease=lease_seconds,
                                 search=planned.search, trial=planned.trial)
        run_id = store.create_run(experiment_id, planned.name, tags)
        after = key_attempts(store, experiment_id, planned.key)
        mine = next((a for a in after if a.run_id == run_id), None)
        rivals = [a for a in after
                  if a.run_id != run_id and (a.status == "FINISHED" or is_live(a, host.now(), host.alive))]
        lease = Lease(store, experiment_id, run_id, planned.key, planned.name, lease_seconds, confirmed=now)
        if mine is not None and mine.status == "RUNNING" and not rivals and lease.held_in_time():
            return lease
        if mine is not None and mine.status == "RUNNING":  # withdrawn (unless another claimant ended it meanwhile)
            store.delete_run(run_id)
        host.sleep(random.uniform(0.05, 0.5))
    return None


def end_attempt(store: Store, experiment_id: str, run_id: str, status: str, error: str) -> str:
    """End a run whose holder is gone or lapsed (never one whose holder still heartbeats): as `status`,
    or as its holder committed before it stopped (lease.end_run); the status it ended with (DELETED:
    a withdrawn claim, nothing to end)."""
    return end_run(store, experiment_id, run_id, status, error)


def session_attempts(store: Store, experiment_id: str, session: str, status: str = "RUNNING") -> list[Attempt]:
    return [schema.decode(row) for row in store.find(experiment_id, Query(tags=((schema.SESSION, session),),
                                                                          status=status))]


# --- the sweep's parent run ---------------------------------------------------------------------------

def find_parent(store: Store, experiment_id: str, sweep_name: str) -> Optional[Attempt]:
    """The sweep's parent run (one kept: see parent_run), or None."""
    parents = (schema.decode(row) for row in _parents(store, experiment_id, sweep_name))
    return next((p for p in parents if not p.provisional), None)


def tidy_parent(store: Store, experiment_id: str, sweep_name: str) -> Optional[Attempt]:
    """find_parent, for a writer: the abandoned candidates withdrawn and deleted on the way."""
    return next((p for p in _present(store, experiment_id, sweep_name) if not p.provisional), None)


def _parents(store: Store, experiment_id: str, sweep_name: str) -> list:
    return store.find(experiment_id, Query(tags=((schema.KIND, schema.PARENT), (schema.SWEEP, sweep_name)),
                                           oldest_first=True))


CANDIDATE_SECONDS = 10.0  # a candidate parent run this old, whose creator cannot be seen, was abandoned


def parent_run(store: Store, experiment_id: str, sweep_name: str, params: dict) -> str:
    """The sweep's parent run, RUNNING and owned by this process (reused on resume, so that every
    attempt nests under one parent).

    Made as a claim is, create-then-check: a candidate (schema.PROVISIONAL), kept only if no other
    parent run of the sweep is in the store once it is there; else withdrawn, and the store looked
    at again after a random pause (two sweep processes started at once: never two parents). Kept and
    withdrawn are values of the write-once param schema.PARENT_STATE, so a candidate is never both: a
    candidate whose creator is gone or CANDIDATE_SECONDS old, withdrawn by another process as
    abandoned, cannot be kept by a creator that was only slow, nor the other way round. A withdrawn
    candidate is deleted (nothing nests under a parent run before it is kept).
    """
    host, owner = store.host, store.host.me()
    blocked_since = None
    while True:
        kept = [p for p in _present(store, experiment_id, sweep_name, checking="") if not p.provisional]
        if kept:
            store.write(kept[0].run_id, tags=schema.owner(owner))
            store.set_status(kept[0].run_id, "RUNNING")
            return kept[0].run_id
        run_id = store.create_run(experiment_id, f"sweep:{sweep_name}", schema.parent_tags(sweep_name, owner))
        try:
            alone = [p.run_id for p in _present(store, experiment_id, sweep_name, checking=run_id)] == [run_id]
            if alone and commit_once(store, experiment_id, run_id, schema.PARENT_STATE, schema.KEPT, params,
                                     schema.kept()) == schema.KEPT:
                return run_id
        except BaseException as exc:  # interrupted, or the store failed: leave no candidate behind
            if isinstance(exc, KeyboardInterrupt):
                store.after_interrupt(exc)
            with contextlib.suppress(TrackingError):
                if not _withdraw(store, experiment_id, run_id):  # kept just before: no process owns it now
                    end_orphaned_parent(store, experiment_id, run_id, owner, f"stopped as it started ({exc!r})")
            raise
        _withdraw(store, experiment_id, run_id)
        blocked_since = blocked_since or host.now()
        if host.now() - blocked_since > 3 * CANDIDATE_SECONDS:  # longer than any candidate left by another lasts
            raise TrackingError(f"no parent run for sweep {sweep_name!r}: other sweep processes kept making "
                                f"theirs for {3 * CANDIDATE_SECONDS:g} s")
        host.sleep(random.uniform(0.05, 0.5))


def _withdraw(store: Store, experiment_id: str, run_id: str) -> bool:
    """Withdraw a candidate parent run and delete it; False when it was kept (it stays)."""
    standing = commit_once(store, experiment_id, run_id, schema.PARENT_STATE, schema.WITHDRAWN)
    if standing == schema.KEPT:
        return False
    if standing != DELETED:
        store.delete_run(run_id)
    return True


def _present(store: Store, experiment_id: str, sweep_name: str, checking: str = "") -> list[Attempt]:
    """The sweep's parent runs but abandoned candidates (withdrawn already, their creator gone, or
    CANDIDATE_SECONDS old: any but the one this process is `checking`), which are withdrawn and
    deleted; one its creator kept meanwhile stays."""
    host, present = store.host, []
    for row in _parents(store, experiment_id, sweep_name):
        p = schema.decode(row)
        withdrawn = row.params.get(schema.PARENT_STATE) == schema.WITHDRAWN
        mine = p.run_id == checking  # this process's candidate, however long it was stopped
        if p.provisional and (withdrawn or not mine and (host.alive(p.owner) is False
                                                         or host.now() - p.start_time / 1000 > CANDIDATE_SECONDS)):
            if _withdraw(store, experiment_id, p.run_id):
                continue
            p = p._replace(provisional=False)
        present.append(p)
    return present


def end_parent(store: Store, experiment_id: str, run_id: str, status: str, counts: dict, note: str = "") -> None:
    """Record what a `sweep run` did on the parent run and give it `status`. FINISHED (every run of the
    sweep done) is never replaced; any other status is written only by the parent's owner, the sweep
    process that started it last (another one still running the sweep settles it)."""
    found = store.find(experiment_id, Query(run_ids=(run_id,)))
    parent = schema.decode(found[0]) if found else None
    if parent is not None and parent.status == "FINISHED":
        status = "FINISHED"
    elif status != "FINISHED" and parent is not None and parent.owner != store.host.me():
        status = "RUNNING"
    store.write(run_id, metrics=[(f"runs_{k}", v, 0) for k, v in counts.items()],
                tags=schema.note(note) if note and status != "FINISHED" else None)
    if status != "RUNNING":
        store.set_status(run_id, status)


def end_orphaned_parent(store: Store, experiment_id: str, run_id: str, owner: str, why: str) -> None:
    """KILLED, when its owner (a sweep process now gone) was the last to start it and it is RUNNING."""
    found = store.find(experiment_id, Query(run_ids=(run_id,)))
    if found and found[0].status == "RUNNING" and schema.decode(found[0]).owner == owner:
        store.write(run_id, tags=schema.note(why))
        store.set_status(run_id, "KILLED")
