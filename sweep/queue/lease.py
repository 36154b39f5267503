"""A lease: the right to write one run's outcome, held by one process while it heartbeats.

The holder is the only writer of its run. It refreshes the run's heartbeat at least every
`seconds / 6`; a run whose heartbeat is older than its lease, or whose holder process is known to
be gone, may be ended and taken over by another claimant. So a holder that cannot renew in time
(suspended, or cut off from the store) gives the lease up itself: it never marks the run FINISHED,
logs nothing more into it, and its training stops at the next epoch. Metrics are buffered and
written with the heartbeat: one request per beat, not one per epoch.

A holder can be suspended between its last look at the clock and its write, so the clock alone
cannot keep a late holder from finishing a run that another process has ended meanwhile. Every
ending is therefore committed before the run's status is set, as the write-once param
schema.ENDED: the store keeps the first value and refuses another, so of a late holder finishing
and a claimant ending its lapsed run exactly one wins, and the other learns it lost.

Every write to a held run carries a heartbeat or ends the run (the commit of its ending comes just
before its status): that is what lets the change feed (queue.index) tell a newer state of a run
from an older one.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

from . import schema
from .base import DELETED, Query, Store, TrackingError, commit_once, committed

_MAX_BATCH = 1000  # MLflow's limit of metrics per request


class Lease:
    """One claimed run. Thread-safe: the training thread logs epochs, a keep-alive thread beats."""

    def __init__(self, store: Store, experiment_id: str, run_id: str, key: str, name: str,
                 seconds: float = schema.DEFAULT_LEASE_SECONDS, confirmed: Optional[float] = None):
        self.store, self.experiment_id, self.run_id = store, experiment_id, run_id
        self.key, self.name, self.seconds = key, name, seconds
        self.confirmed = store.host.now() if confirmed is None else confirmed  # the heartbeat the store holds
        self.lost = ""                 # why the lease was lost; empty while held
        self.ended = False
        self._metrics: list[tuple] = []
        self._params: dict = {}
        self._tags: dict = {}
        self._lock = store.host.lock()

    @property
    def beat_every(self) -> float:
        return self.seconds / 6

    @property
    def held(self) -> bool:
        return not self.lost and not self.ended

    def log_params(self, params: dict) -> None:
        with self._lock:
            self._params.update(params)

    def log_epoch(self, metrics: dict, step: int, flush: bool = False, tags: Optional[dict] = None) -> bool:
        """Buffer an epoch's metrics (and tags); write them now when `flush` or a beat is due.
        False once the lease is lost."""
        with self._lock:
            if not self.held:
                return False
            self._metrics += [(k, v, step) for k, v in metrics.items()]
            self._tags.update(tags or {})
            if flush or self.store.host.now() - self.confirmed >= self.beat_every:
                self.beat()
            return self.held

    def beat(self, params: bool = True) -> bool:
        """Write the heartbeat with whatever is buffered (the params wait for the next write when
        `params` is False). False (and the lease given up) when too late."""
        with self._lock:
            if not self.held:
                return False
            if not self._fresh():
                self._give_up(f"lease lapsed: no heartbeat for {self.store.host.now() - self.confirmed:.0f} s "
                              f"(process suspended, or the store out of reach)")
                return False
            now = self.store.host.now()
            self._write(schema.heartbeat(now), with_params=params)
            self.confirmed = now
            return True

    def lose(self, why: str) -> None:
        """Another process ended the run: stop writing to it."""
        with self._lock:
            if self.held:
                self.lost = why

    def finish(self, metrics: dict, step: int, agent: Optional[Path], diverged: bool, stopped: bool,
               tags: Optional[dict] = None) -> bool:
        """Log the final metrics, tags and agent, commit the run's ending, FINISHED, and set it, unless
        the lease was lost."""
        with self._lock:
            self._metrics += [(k, v, step) for k, v in metrics.items()]
            self._tags.update({**schema.ending(diverged, stopped), **(tags or {})})
            # One request: the heartbeat with the final numbers and whatever is buffered but the params,
            # which go with the ending's commit below: MLflow writes a request's params in one
            # transaction, so there they cost no transaction of their own.
            if not self.beat(params=False):
                return False
            try:
                if agent is not None:
                    self.store.log_artifact(self.run_id, agent)
            except TrackingError as exc:
                raise RuntimeError(f"cannot store the agent in the run's artifacts: {exc}") from exc
            if not self._fresh():  # storing the agent outlasted the lease: someone may own the run now
                self._give_up("lease lapsed while the agent was being stored")
                return False
            # A request of its own: MLflow writes a batch's params before its metrics and tags, each in
            # a transaction of its own, so the ending goes only once the run holds everything it keeps.
            if not self._commit("FINISHED", {}):
                return False
            self.ended = True
            with contextlib.suppress(TrackingError):  # committed: whoever ends the run next gives it this status
                self.store.set_status(self.run_id, "FINISHED")
            return True

    def fail(self, error: str) -> None:
        self._end("FAILED", error)

    def kill(self, reason: str) -> None:
        self._end("KILLED", reason)

    def _end(self, status: str, error: str) -> None:
        with self._lock:
            if not self.held:
                return
            self.ended = True
            if self._fresh() and self._commit(status, schema.error(error)):
                self.store.set_status(self.run_id, status)

    def held_in_time(self) -> bool:
        """Whether its last heartbeat is recent enough that no other claimant can have taken the run over."""
        return self._fresh()

    def _fresh(self) -> bool:
        # Give up a beat before the lease ends, so no claimant can have taken the run over yet.
        return self.store.host.now() - self.confirmed < self.seconds - self.beat_every

    def _give_up(self, why: str) -> None:
        self.lost = why
        try:  # the run may be taken over already; if not, it is pending again for whoever comes next
            if self.store.find(self.experiment_id, Query(run_ids=(self.run_id,), status="RUNNING")):
                end_run(self.store, self.experiment_id, self.run_id, "KILLED", why)
        except TrackingError:
            pass

    def _commit(self, status: str, tags: dict) -> bool:
        """Commit the run's ending as its holder, in one request with everything buffered and `tags`
        (the ending first: the store refuses the whole request when another ending stands); False,
        and the lease lost, when another process committed another ending first."""
        try:
            self._write(tags, schema.ended(status))
            return True
        except TrackingError:
            standing = committed(self.store, self.experiment_id, self.run_id, schema.ENDED)
            if standing is None:  # not refused for its ending: the store failed
                raise
            if standing != status:
                self.lost = f"run ended by another process ({standing})"
            return standing == status

    def _write(self, tags: dict, ending: Optional[dict] = None, with_params: bool = True) -> None:
        """Write what is buffered with `tags` (the buffered params only `with_params`); the `ending`
        params go first, so that nothing is written once another ending was committed."""
        metrics, self._metrics = self._metrics, []
        held, self._params = (self._params, {}) if with_params else ({}, self._params)
        params = {**(ending or {}), **held}
        tags, self._tags = {**self._tags, **tags}, {}
        sent = 0
        try:
            for sent in range(0, max(len(metrics), 1), _MAX_BATCH):
                self.store.write(self.run_id, metrics[sent:sent + _MAX_BATCH], params, tags)
                params, tags = {}, {}
        except Exception:  # what was not written goes with the next beat
            params = {k: v for k, v in params.items() if k not in (ending or {})}
            self._metrics = metrics[sent:] + self._metrics
            self._params, self._tags = {**params, **self._params}, {**tags, **self._tags}
            raise


def commit_ending(store: Store, experiment_id: str, run_id: str, status: str, error: str = "") -> str:
    """Commit how a training run ends (schema.ENDED, with the error's tag): `status`, unless another
    process committed an ending first; that one stands and is returned."""
    return commit_once(store, experiment_id, run_id, schema.ENDED, status,
                       tags=schema.error(error) if error else None)


def end_run(store: Store, experiment_id: str, run_id: str, status: str, error: str = "") -> str:
    """End a training run as `status`, or as the ending another process committed first (a holder
    that committed FINISHED and stopped before setting it); the status it ended with, or DELETED
    for a run deleted meanwhile (a claim its claimant withdrew late)."""
    status = commit_ending(store, experiment_id, run_id, status, error)
    if status == DELETED:
        return status
    try:
        store.set_status(run_id, status)
    except TrackingError:
        if store.find(experiment_id, Query(run_ids=(run_id,), view="deleted")):
            return DELETED
        raise
    return status


class KeepAlive:
    """While a job trains: beat every lease in time, notice runs ended by others, and stop when the
    sweep process that started this worker is gone (ending the leases, so nothing is left RUNNING)."""

    def __init__(self, store: Store, leases: list[Lease], owner: str, parent_run_id: str = "",
                 check_every: float = 1.0):
        self.store, self.leases, self.owner, self.parent_run_id = store, leases, owner, parent_run_id
        self.check_every = check_every
        self._stop = store.host.event()
        self._thread = None

    def __enter__(self):
        self._thread = self.store.host.spawn(self._loop, "sweep-keepalive")
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _loop(self):
        host = self.store.host
        last_check = host.now()
        while not self._stop.wait(self.check_every):
            if host.alive(self.owner) is False:
                self._owner_gone()
                return
            held = [lease for lease in self.leases if lease.held]
            for lease in held:
                if host.now() - lease.confirmed >= lease.beat_every:
                    try:
                        lease.beat()
                    except TrackingError:
                        pass  # a missed beat only shortens the lease; lapsing is handled by beat()
            if held and host.now() - last_check >= min(lease.beat_every for lease in held):
                last_check = host.now()
                self._notice_ended(held)

    def _notice_ended(self, held: list[Lease]) -> None:
        ids = {lease.run_id: lease for lease in held}
        try:
            rows = self.store.find(held[0].experiment_id, Query(run_ids=tuple(ids), view="all"))
        except TrackingError:
            return
        seen = {row.run_id: schema.decode(row) for row in rows}
        for run_id, lease in ids.items():
            run = seen.get(run_id)
            if run is None or run.deleted or run.status != "RUNNING":
                why = run.error.splitlines()[0] if run is not None and run.error else ""
                state = "deleted" if run is None or run.deleted else run.status
                lease.lose(f"run ended by another process ({state}{': ' + why if why else ''})")

    def _owner_gone(self):
        why = f"the sweep process that started this worker is gone ({self.owner})"
        for lease in self.leases:
            try:
                lease.kill(why)
            except TrackingError:
                pass
        if self.parent_run_id:  # and the sweep's parent run, unless another sweep process has started it since
            from .claims import end_orphaned_parent

            try:
                end_orphaned_parent(self.store, self.leases[0].experiment_id, self.parent_run_id, self.owner, why)
            except TrackingError:
                pass
        if self.store.host.started_by(self.owner):  # a worker process of that sweep (loky): nothing is left for it
            self.store.host.exit(1)
