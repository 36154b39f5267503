"""The runs that adaptive seeds want now, as the store holds the finished ones.

A reader of the mirror (queue.index) with its own cursor: each `read()` applies what changed since
its last read, whoever wrote it, then replays the rule (seeds.allocate) over every finished run's
value. Runs of grids that keep their own seeds, and search trials, are always wanted.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

from ..queue import Store, schema
from ..queue.index import Cursor, Index
from ..spec import SweepSpec, expand, select
from .seeds import Allocation, allocate, grid_questions

METRICS = ("val_error", "test_error")


class WantedRuns:
    def __init__(self, spec: SweepSpec, store: Optional[Store], experiment_id: str, grids: Iterable[str] = (),
                 index: Optional[Index] = None):
        grid_names, _ = select(spec, list(grids))
        self.rule = spec.adaptive
        self.questions = grid_questions(spec, grid_names) if self.rule else []
        asked = {k for q in self.questions for keys in q.settings.values() for k in keys}
        fixed = {r.key for g in grid_names if "seed" in spec.grids[g] for r in expand(spec, [g])}
        self.adaptive = asked - fixed     # the runs the rule decides on (a grid with its own seeds wants its own)
        self.metric = {r.key: schema.objective(r.config.validation) for r in expand(spec, grid_names) if r.key in asked}
        self.index = index or Index(store, experiment_id, spec.experiment)
        self.cursor: Optional[Cursor] = None
        self.finished: dict = {}            # run_id -> (key, end time, value) of each FINISHED run of an adaptive grid
        self.allocation = Allocation(set(), complete=not self.rule)

    def read(self, sync: bool = False) -> Allocation:
        """The allocation as the mirror holds the store now (synced first when `sync`)."""
        if not self.rule:
            return self.allocation
        if sync:
            self.index.sync()
        changes = self.index.changes(self.cursor, tags=(schema.KEY, schema.DIVERGED, schema.PRUNED),
                                     metrics=METRICS)
        before = dict(self.finished)
        if changes.reset:
            self.finished = {}
        for run_id in changes.gone:
            self.finished.pop(run_id, None)
        for run_id, status, start, end, name, _, key, diverged, pruned, *values in changes.rows:
            run = schema.attempt(run_id, status, start, end, name, {schema.KEY: key, schema.DIVERGED: diverged,
                                                                   schema.PRUNED: pruned})
            if run.status != "FINISHED" or run.key not in self.metric:
                self.finished.pop(run_id, None)
                continue
            value = dict(zip(METRICS, values)).get(self.metric[run.key])
            ranked = run.outcome == "done" and value is not None
            self.finished[run_id] = (run.key, run.end_time or 0, float(value) if ranked else math.nan)
        self.cursor = changes.cursor
        if self.finished == before and self.allocation.questions:
            return self.allocation  # no run finished or went since the last read: the same allocation
        values = {}
        for key, _, value in sorted(self.finished.values(), key=lambda f: f[1], reverse=True):
            values[key] = value  # a key finished twice (never, by the queue's rules): its first result
        self.allocation = allocate(self.rule, self.questions, values)
        return self.allocation

    def wants(self, key: str) -> bool:
        """As of the last read: a run of an adaptive grid that the rule wants, or any other run."""
        return key not in self.adaptive or key in self.allocation.wanted

    def spared(self, keys: Iterable[str]) -> list:
        """Of `keys`, those not finished that the rule will not want: none until no finished result
        can change it. (A run finished before, e.g. under fixed seeds, is done, never spared.)"""
        if not self.allocation.complete:
            return []
        done = {key for key, _, _ in self.finished.values()}
        return [k for k in keys if not self.wants(k) and k not in done]

    def later(self, keys: Iterable[str]) -> list:
        """Of `keys`, those not finished that the rule does not want yet but may want later."""
        if self.allocation.complete:
            return []
        done = {key for key, _, _ in self.finished.values()}
        return [k for k in keys if not self.wants(k) and k not in done]
