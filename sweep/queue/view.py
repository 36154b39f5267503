"""A process's view of the queue: every attempt of an experiment, derived from the change feed alone.

A view keeps its own cursor on the feed (queue.index): each refresh syncs the mirror with the store,
then applies every row written and every run dropped since its cursor, whoever wrote them. So a view
is as new as the store was at its last refresh, whatever other processes read or write meanwhile.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

from . import schema
from .base import LOCAL, Store
from .claims import is_live, key_state, states
from .index import Cursor, Index
from .schema import Attempt


class QueueView:
    def __init__(self, store: Optional[Store], experiment_id: str, experiment: str = "", index: Optional[Index] = None):
        self.store = store
        self.host = store.host if store is not None else LOCAL  # (no store: reading what the mirror last saw)
        self.index = index or Index(store, experiment_id, experiment)
        self.cursor: Optional[Cursor] = None
        self._runs: dict[str, Attempt] = {}
        self._keyed: dict[str, dict[str, Attempt]] = {}
        self._done: set = set()   # keys with a FINISHED attempt: done whatever the clock says
        self.reopened = 0         # times a key done lost its finished run (deleted) or the mirror was rebuilt

    def refresh(self, sync: bool = True) -> "QueueView":
        """Read what changed in the store (or, without `sync`, what the mirror held at its last sync)."""
        if sync:
            self.index.sync()
        changes = self.index.changes(self.cursor, tags=schema.QUEUE_TAGS)
        if changes.reset:
            self._runs, self._keyed, self._done = {}, {}, set()
            self.reopened += 1
        touched = set()
        for run_id in changes.gone:
            old = self._runs.pop(run_id, None)
            if old is not None:
                self._keyed.get(old.key, {}).pop(run_id, None)
                touched.add(old.key)
        for run_id, status, start, end, name, _, *values in changes.rows:
            a = schema.attempt(run_id, status, start, end, name, dict(zip(schema.QUEUE_TAGS, values)))
            old = self._runs.get(run_id)
            if old is not None and old.key != a.key:
                self._keyed.get(old.key, {}).pop(run_id, None)
                touched.add(old.key)
            self._runs[run_id] = a
            self._keyed.setdefault(a.key, {})[run_id] = a
            touched.add(a.key)
        for key in touched:
            if any(a.status == "FINISHED" for a in self._keyed.get(key, {}).values()):
                self._done.add(key)
            elif key in self._done:
                self._done.discard(key)
                self.reopened += 1
        self.cursor = changes.cursor
        return self

    @property
    def synced_at(self) -> float:
        return self.index.synced_at

    def attempts(self, key: Optional[str] = None) -> list[Attempt]:
        """Every attempt of the experiment, or of one key."""
        return list(self._runs.values() if key is None else self._keyed.get(key, {}).values())

    def done(self, key: str) -> bool:
        """Whether `key` has a finished run, as last read (until `reopened` changes, it stays done)."""
        return key in self._done

    def states(self, keys: Iterable[str], now: Optional[float] = None) -> dict[str, str]:
        now = self.host.now() if now is None else now
        done = self._done  # most keys of a long sweep: no need to look at their attempts again
        return {k: schema.DONE if k in done else key_state(self.attempts(k), now, self.host.alive) for k in keys}

    def failures(self, key: str, session: str) -> int:
        return sum(a.session == session and a.status == "FAILED" for a in self.attempts(key))

    def live(self, keys: Iterable[str]) -> list[Attempt]:
        """The attempts of `keys` held by a live lease now."""
        now = self.host.now()
        return [a for k in keys for a in self.attempts(k) if is_live(a, now, self.host.alive)]


@dataclass(frozen=True)
class QueueRead:
    states: dict            # key -> state
    attempts: list          # the experiment's attempts ([] when nothing is tracked yet)
    synced_at: float = 0.0


def read_states(store: Optional[Store], experiment: str, keys: list[str]) -> QueueRead:
    """Each key's state, read without writing to the store: all pending when the experiment is not
    there yet."""
    experiment_id = store.find_experiment(experiment)
    if experiment_id is None:
        return QueueRead(states(keys, [], store.host.now(), store.host.alive), [])
    view = QueueView(store, experiment_id, experiment).refresh()
    return QueueRead(view.states(keys), view.attempts(), view.synced_at)


def last_read_states(index: Index, keys: list[str]) -> QueueRead:
    """The same as the mirror last saw them: no store read (nor MLflow import)."""
    view = QueueView(None, index.experiment_id, index=index).refresh(sync=False)
    return QueueRead(view.states(keys, index.synced_at), view.attempts(), index.synced_at)
