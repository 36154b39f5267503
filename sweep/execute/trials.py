"""Where a sweep's search trials come from: the searches' samplers, asked for as many new trials as
there are free workers, with a trial whose settings a finished run has already recorded as a
duplicate of that run instead of being trained again."""
from __future__ import annotations

from typing import Callable

from mnist_core.config import RunConfig

from .. import queue
from ..adaptive.search import ask, free_slots, slot_key, trials_in_store
from ..queue import schema
from ..spec import PlannedRun, SweepSpec, run_key
from .worker import Outcome


class TrialSource:
    """The selected searches of `spec`, as `view` shows their slots. `claim(trial)` claims a trial's
    slot (a Lease or None); `record(outcome)` reports a duplicate."""

    def __init__(self, spec: SweepSpec, searches: list, view: queue.QueueView, session: str, retries: int,
                 claim: Callable, record: Callable):
        self.spec, self.searches, self.view, self.session, self.retries = spec, searches, view, session, retries
        self.claim, self.record = claim, record
        self.asked: dict[str, PlannedRun] = {}   # the trials asked by this process, by slot key

    def keys(self) -> list[str]:
        """The queue keys of every slot of the searches."""
        return [slot_key(self.spec, search, n) for search in self.searches for n in range(search.trials)]

    def names(self) -> dict:
        return {slot_key(self.spec, search, n): f"{search.name} trial {n}"
                for search in self.searches for n in range(search.trials)}

    def free(self, search) -> list[int]:
        """The slots nobody has done nor holds (a failed one while this session's retries are left)."""
        keys = [slot_key(self.spec, search, n) for n in range(search.trials)]
        slots = free_slots(self.spec, search, self.view.states(keys))
        return [n for n in slots if self.view.failures(slot_key(self.spec, search, n), self.session) <= self.retries]

    def ask(self, free_workers: int, pending: list[PlannedRun] = ()) -> list[PlannedRun]:
        """New trials of each search, as many as there are free workers (at least one when only
        searches are left). A trial whose settings a finished run has already is not trained again:
        its slot records that run's result, and another trial is asked in its place. One whose
        settings a grid run about to train has waits for that run, to be a duplicate of it then."""
        asked = []
        waiting = {run_key(r.config) for r in pending}
        for search in self.searches:
            wanted = max(1, free_workers)
            for _ in range(search.trials):  # each pass fills at least one slot or asks what is wanted
                free = self.free(search)
                if not free or wanted <= 0:
                    break
                rows = [row for row in self.view.index.rows() if schema.decode(row).search == search.name]
                states = self.view.states([schema.decode(row).key for row in rows])
                fresh = [t for t in ask(self.spec, search, trials_in_store(search, rows, states), free, wanted)
                         if not self._fill_with_finished(t)]
                if any(run_key(t.config) in waiting for t in fresh):
                    break  # the sampler wants what a grid run is about to give: ask again after it
                self.asked.update((t.key, t) for t in fresh)
                asked += fresh
                wanted -= len(fresh)
                if fresh:
                    break
                self.view.refresh()
        return asked

    def _fill_with_finished(self, trial: PlannedRun) -> bool:
        """If a finished run has the trial's settings already, its slot records that run's result
        (tagged as a duplicate of it, nothing trained); True when it did."""
        key = run_key(trial.config)
        same = []
        for row in self.view.index.rows("FINISHED"):
            run = schema.decode(row)
            if run.key == key or (run.search and not run.duplicate_of and _settings_key(row.params) == key):
                same.append((run, row))
        if not same:
            return False
        original, row = same[0]
        lease = self.claim(trial)
        if lease is not None:
            lease.log_params({**trial.config.as_params(), "device": row.params.get("device", "")})
            if lease.finish(row.metrics, int(row.metrics.get("epochs_completed", 0)), None, original.diverged,
                            original.stopped, tags=schema.duplicate(original)):
                self.record(Outcome(trial.key, trial.name, "duplicate", lease.run_id,
                                    row.metrics.get("test_error", float("nan")),
                                    error=f"same settings as run {original.run_id}: not trained again"))
        return True


def _settings_key(params: dict) -> str:
    """The settings key of a run, from its logged params ("" when they are not a run's settings)."""
    try:
        return run_key(RunConfig(**schema.settings(params)))
    except (TypeError, ValueError):
        return ""
