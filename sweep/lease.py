"""A lease: the right to write one run's outcome, held by one process while it heartbeats.

The holder is the only writer of its run. It refreshes the run's heartbeat tag at least every
`seconds / 6`; a run whose heartbeat is older than its lease (the `sweep.lease` tag), or whose
holder process is known to be gone, may be ended and taken over by another claimant. So a holder
that cannot renew in time (suspended, or cut off from the store) gives the lease up itself: it
never marks the run FINISHED, logs nothing more into it, and its training stops at the next epoch.
Metrics are buffered and written with the heartbeat: one request per beat, not one per epoch.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Optional

from . import tracking

LEASE_SECONDS = 60.0

# Tags of a training run (the queue's schema; see queue.py).
KIND, KEY, GRIDS, SWEEP, SEARCH = "sweep.kind", "sweep.key", "sweep.grids", "sweep.name", "sweep.search"
SESSION, ATTEMPT, HOLDER, HEARTBEAT, LEASE = (
    "sweep.session", "sweep.attempt", "sweep.holder", "sweep.heartbeat", "sweep.lease")
DIVERGED, PRUNED, ERROR = "sweep.diverged", "sweep.pruned", "sweep.error"
TRIAL, DUPLICATE_OF = "sweep.trial", "sweep.duplicate_of"
CURVE = "sweep.curve"  # the objective after each epoch, as JSON: what early stopping compares
OWNER = "sweep.owner"  # on the parent run: the sweep process that last started it

_MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch request


def _start_ticks(pid: int) -> Optional[str]:
    """When the process started (clock ticks since boot, from /proc), or None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else fields[19]  # a zombie has exited already


def this_holder() -> str:
    """This process, as `host:pid:start`, so that a claimant on this host can tell it is gone."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or ''}"


def holder_alive(holder: str) -> Optional[bool]:
    """Whether the process named by `holder` still runs: None when it is on another host (unknown)."""
    try:
        host, pid, start = holder.rsplit(":", 2)
        pid = int(pid)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    if start:
        return _start_ticks(pid) == start
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class Lease:
    """One claimed run. Thread-safe: the training thread logs epochs, a keep-alive thread beats."""

    def __init__(self, uri: str, experiment_id: str, run_id: str, key: str, name: str,
                 seconds: float = LEASE_SECONDS):
        self.uri, self.experiment_id, self.run_id = uri, experiment_id, run_id
        self.key, self.name, self.seconds = key, name, seconds
        self.confirmed = time.time()   # the heartbeat the store holds (written at the claim)
        self.lost = ""                 # why the lease was lost; empty while held
        self.ended = False
        self._metrics: list[tuple] = []
        self._params: dict = {}
        self._tags: dict = {}
        self._lock = threading.RLock()

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
            if flush or time.time() - self.confirmed >= self.beat_every:
                self.beat()
            return self.held

    def beat(self) -> bool:
        """Write the heartbeat with whatever is buffered. False (and the lease given up) when too late."""
        with self._lock:
            if not self.held:
                return False
            if not self._fresh():
                self._give_up(f"lease lapsed: no heartbeat for {time.time() - self.confirmed:.0f} s "
                              f"(process suspended, or the store out of reach)")
                return False
            now = time.time()
            self._write(tags={HEARTBEAT: f"{now:.3f}"})
            self.confirmed = now
            return True

    def lose(self, why: str) -> None:
        """Another process ended the run: stop writing to it."""
        with self._lock:
            if self.held:
                self.lost = why

    def finish(self, metrics: dict, step: int, agent: Optional[Path], diverged: bool, pruned: bool,
               tags: Optional[dict] = None) -> bool:
        """Log the final metrics, tags and agent, then mark the run FINISHED, unless the lease was lost."""
        with self._lock:
            self._metrics += [(k, v, step) for k, v in metrics.items()]
            self._tags.update({DIVERGED: str(diverged).lower(), PRUNED: str(pruned).lower(), **(tags or {})})
            if not self.beat():  # one request: the heartbeat with everything buffered and the final numbers
                return False
            try:
                if agent is not None:
                    tracking.log_artifact(self.uri, self.run_id, agent)
            except tracking.TrackingError as exc:
                raise RuntimeError(f"cannot store the agent in the run's artifacts: {exc}") from exc
            if not self._fresh():  # storing the agent outlasted the lease: someone may own the run now
                self._give_up("lease lapsed while the agent was being stored")
                return False
            tracking.set_status(self.uri, self.run_id, "FINISHED")
            self.ended = True
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
            if self._fresh():
                self._write(tags={ERROR: error[-7900:]})  # tags hold up to 8000 characters
                tracking.set_status(self.uri, self.run_id, status)

    def _fresh(self) -> bool:
        # Give up a beat before the lease ends, so no claimant can have taken the run over yet.
        return time.time() - self.confirmed < self.seconds - self.beat_every

    def _give_up(self, why: str) -> None:
        self.lost = why
        try:  # the run may be taken over already; if not, it is pending again for whoever comes next
            tracking.log_batch(self.uri, self.run_id, tags={ERROR: why})
            tracking.set_status(self.uri, self.run_id, "KILLED")
        except tracking.TrackingError:
            pass

    def _write(self, tags: dict) -> None:
        metrics, self._metrics = self._metrics, []
        params, self._params = self._params, {}
        tags, self._tags = {**self._tags, **tags}, {}
        sent = 0
        try:
            for sent in range(0, max(len(metrics), 1), _MAX_BATCH):
                tracking.log_batch(self.uri, self.run_id, metrics[sent:sent + _MAX_BATCH], params, tags)
                params, tags = {}, {}
        except Exception:  # what was not written goes with the next beat
            self._metrics = metrics[sent:] + self._metrics
            self._params, self._tags = {**params, **self._params}, {**tags, **self._tags}
            raise


class KeepAlive:
    """While a job trains: beat every lease in time, notice runs ended by others, and stop when the
    sweep process that started this worker is gone (ending the leases, so nothing is left RUNNING)."""

    def __init__(self, leases: list[Lease], owner: str, parent_run_id: str = "", check_every: float = 1.0):
        self.leases, self.owner, self.parent_run_id, self.check_every = leases, owner, parent_run_id, check_every
        self._parent = os.getppid()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sweep-keepalive", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _loop(self):
        last_check = time.time()
        while not self._stop.wait(self.check_every):
            if holder_alive(self.owner) is False:
                self._owner_gone()
                return
            held = [lease for lease in self.leases if lease.held]
            for lease in held:
                if time.time() - lease.confirmed >= lease.beat_every:
                    try:
                        lease.beat()
                    except tracking.TrackingError:
                        pass  # a missed beat only shortens the lease; lapsing is handled by beat()
            if held and time.time() - last_check >= min(lease.beat_every for lease in held):
                last_check = time.time()
                self._notice_ended(held)

    def _notice_ended(self, held: list[Lease]) -> None:
        ids = {lease.run_id: lease for lease in held}
        quoted = ",".join(f"'{run_id}'" for run_id in ids)
        try:
            rows = tracking.search(held[0].uri, held[0].experiment_id, f"attributes.run_id IN ({quoted})",
                                   view="all")
        except Exception:
            return
        seen = {row.run_id: row for row in rows}
        for run_id, lease in ids.items():
            row = seen.get(run_id)
            if row is None or row.deleted or row.status != "RUNNING":
                why = row.tags.get(ERROR, "") if row is not None else ""
                state = "deleted" if row is None or row.deleted else row.status
                lease.lose(f"run ended by another process ({state}"
                           f"{': ' + why.splitlines()[0] if why else ''})")

    def _owner_gone(self):
        why = f"the sweep process that started this worker is gone ({self.owner})"
        for lease in self.leases:
            try:
                lease.kill(why)
            except Exception:
                pass
        try:  # and the sweep's parent run, unless another sweep process has started it since
            uri, experiment = self.leases[0].uri, self.leases[0].experiment_id
            parent = tracking.search(uri, experiment, f"attributes.run_id = '{self.parent_run_id}'")
            if parent and parent[0].status == "RUNNING" and parent[0].tags.get(OWNER) == self.owner:
                tracking.log_batch(uri, self.parent_run_id, tags={"sweep.outcome": why})
                tracking.set_status(uri, self.parent_run_id, "KILLED")
        except Exception:
            pass
        if f":{self._parent}:" in self.owner:
            os._exit(1)  # a worker process that sweep started (loky): nothing is left for it to do
