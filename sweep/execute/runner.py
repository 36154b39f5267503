"""Run a sweep: read the queue, dispatch what is left in rounds, isolate crashes, wait for runs held
elsewhere, sum up.

A run's life belongs to the queue (claim, lease, finish); the runner only decides what to dispatch
next and ends the runs whose holder is gone (never one whose holder still heartbeats). It reaches
the store, the clock and the workers only through a `queue.Store`, its `Host` and a `Pool`, so that
the simulation in tests/sweep/queue drives this very loop.

Every loop here ends. A round either settles some run (done, failed, lost) or comes back with every
claim refused, because the store holds those runs done or held elsewhere; the view is then synced
with those runs read from the store, so that they are not dispatched again unless their state moves
back (a holder that died or lapsed); and after `STALLS` such rounds in a row the sweep gives up and
says so. Waiting for runs held elsewhere ends when their holders finish or their leases lapse.
"""
from __future__ import annotations

import signal
import sqlite3
import uuid
from typing import Optional, Protocol

from .. import queue
from ..adaptive.early_stop import groups_of, rule_for
from ..adaptive.search import slot_key
from ..adaptive.wanted import WantedRuns
from ..errors import SweepError
from ..interrupts import signum_of
from ..queue import Store, schema
from ..spec import PlannedRun, SweepSpec, expand, select
from ..tracking.location import open_store, store_uri
from .accounting import SweepInterrupted, SweepSummary, parent_status, settle
from .devices import available_cores, default_jobs, gpu_count, threads_per_worker
from .dispatch import JoblibPool, backend_session, is_remote_backend
from .jobs import plan_jobs
from .settings import Settings, check_settings
from .trials import TrialSource
from .worker import Job, Outcome

POLL_SECONDS = 2.0
STALLS = 5  # rounds in a row in which every claim was refused, before the sweep gives up


class Progress:
    """What a sweep reports as it goes; the CLI prints it, tests may record it. Every hook is optional."""

    def start(self, summary: SweepSummary) -> None: ...
    def outcome(self, outcome: Outcome) -> None: ...
    def waiting(self, runs: int, until: float, why: str) -> None: ...
    def more(self, runs: int) -> None: ...   # adaptive seeds want `runs` runs more than it set out to train


class Pool(Protocol):
    """Where jobs run: `round(jobs, n_jobs)` iterates each run's Outcome as it arrives, and says in
    `.crash` why it ended early (a worker process that died). dispatch.JoblibPool is the real one."""

    def round(self, jobs: list[Job], n_jobs: int): ...


def run_sweep(spec: SweepSpec, uri: str, settings: Settings = Settings(), grids=(),
              progress: Optional[Progress] = None) -> SweepSummary:
    """Train every run of the sweep's grids and searches (or of those named in `grids`) that is not
    done in the tracking store at `uri`, and nothing else."""
    from ..tracking.mlflow_store import MlflowStore

    planned = len(expand(spec, grids))  # an unknown grid or search, or too many runs, is refused before any write
    check_settings(settings, uri)
    uri = store_uri(uri)
    with backend_session(settings.backend, settings.address):  # an unreachable cluster fails before any write
        pool = JoblibPool(settings.backend)
        try:
            if _work_left_as_last_read(spec, grids, uri):
                trials = sum(spec.searches[name].trials for name in select(spec, grids)[1])
                jobs = settings.jobs or default_jobs(gpu_count(), available_cores())
                pool.start(max(1, min(jobs, planned + trials)), settings.data_dir, settings.device)
            return Sweep(spec, MlflowStore(open_store(uri)), settings, grids, progress, pool).run()
        finally:
            pool.close()


def _work_left_as_last_read(spec: SweepSpec, grids, uri: str) -> bool:
    """Whether the store's mirror, as its last sync left it (read without the store, nor MLflow),
    holds a run of the sweep not done, or cannot tell: the workers are then started before the store
    is read. A sweep found done is told so without starting them."""
    if spec.searches or spec.adaptive:
        return True
    try:
        index = queue.Index.last_read(queue.index_path(uri), spec.experiment)
        if index is None:
            return True
        read = queue.last_read_states(index, [r.key for r in expand(spec, grids)])
    except (OSError, sqlite3.Error):
        return True
    return any(state != schema.DONE for state in read.states.values())


class Sweep:
    """One `sweep run` of `spec`'s runs (of `grids`, when given) on `store`, its jobs run by `pool`."""

    def __init__(self, spec: SweepSpec, store: Store, settings: Settings = Settings(), grids=(),
                 progress: Optional[Progress] = None, pool: Optional[Pool] = None):
        _, search_names = select(spec, grids)
        self.spec, self.store, self.host, self.grids = spec, store, store.host, tuple(grids)
        self.planned = expand(spec, grids)
        self.settings, self.progress, self.pool = settings, progress or Progress(), pool or JoblibPool(settings.backend)
        self.experiment_id = store.ensure_experiment(spec.experiment)
        self.session, self.owner = uuid.uuid4().hex, self.host.me()
        self.view = queue.QueueView(store, self.experiment_id, spec.experiment)
        self.wanted = WantedRuns(spec, store, self.experiment_id, grids, self.view.index)
        self.every_wanted = (WantedRuns(spec, store, self.experiment_id, (), self.view.index) if self.grids
                             else self.wanted)  # the parent run is FINISHED only when the whole sweep is
        self.trials = TrialSource(spec, [spec.searches[name] for name in search_names], self.view, self.session,
                                  settings.retries, self._claim, self._record)
        self.summary = SweepSummary(total=len(self.planned) + sum(s.trials for s in self.trials.searches),
                                    experiment_id=self.experiment_id, adaptive=bool(spec.adaptive))
        cores = available_cores()
        self.summary.jobs = settings.jobs or default_jobs(gpu_count(), cores)
        self.summary.threads = threads_per_worker(self.summary.jobs, cores)
        self.remote = is_remote_backend(settings.backend)
        self._grids_of: Optional[dict] = None      # key -> every grid of the whole sweep it belongs to
        self._unfinished, self._reopened = list(self.planned), self.view.reopened  # narrowed as runs finish
        self._progressed = False

    def run(self) -> SweepSummary:
        s = self.summary
        self.view.refresh()
        state = self.view.states(self._keys())
        todo = self.todo(refresh=False)
        s.already_done = sum(v == schema.DONE for v in state.values())
        s.spared = len(self.wanted.spared(r.key for r in self.planned))
        s.held_elsewhere = sum(v == schema.RUNNING for v in state.values())
        s.to_train = len(todo) + sum(len(self.trials.free(search)) for search in self.trials.searches)
        self.todo_keys = {r.key for r in todo}
        if 0 < s.to_train < s.jobs and not (self.settings.jobs or self.remote or self.spec.adaptive
                                             or self.trials.searches):
            s.jobs = s.to_train  # fewer runs than workers (and no more to come): each worker gets more threads
            s.threads = threads_per_worker(s.jobs, available_cores())
        self.progress.start(s)
        if not s.to_train and (not s.held_elsewhere or not self.settings.wait):
            self._settle()
            self._finish_a_done_parent()
            return s
        s.parent_run_id = queue.parent_run(self.store, self.experiment_id, self.spec.name, {
            "spec": self.spec.path, "experiment": self.spec.experiment,
            "grids": ",".join(self.grids or [*self.spec.grids, *self.spec.searches]), "runs": s.total})
        try:
            self._loop()
        except KeyboardInterrupt as exc:
            signum = signum_of(exc)
            self.store.after_interrupt(exc)
            name = signal.Signals(signum).name
            try:
                self._stop(f"interrupted ({name})")
            except SweepError as err:  # the interrupt still decides the exit status
                raise SweepInterrupted(f"interrupted by {name}", 128 + signum, str(err)) from None
            raise SweepInterrupted(f"interrupted by {name}", 128 + signum) from None
        except BrokenPipeError:
            self._stop("stopped: the output pipe was closed")
            raise
        except Exception as exc:  # the store failing under us, a bug: nothing is left RUNNING for it
            self._stop(f"stopped by an error: {type(exc).__name__}: {exc}")
            raise
        self._settle()
        self._end_parent()
        return s

    # --- rounds ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        attempt, crashes, stalls = 0, 0, 0
        while True:
            todo = self.todo()
            more = [r.key for r in todo if r.key not in self.todo_keys] if self.spec.adaptive else []
            if more:  # adaptive seeds: a question is still open after the last round
                self.todo_keys.update(more)
                self.summary.to_train += len(more)
                self.progress.more(len(more))
            jobs = plan_jobs(todo, self.settings.engine, self.settings.chunk_size, self.summary.jobs)
            asked = self.trials.ask(max(0, self.summary.jobs - len(jobs)), todo) if self.trials.searches else []
            if asked:
                todo += asked
                jobs = plan_jobs(todo, self.settings.engine, self.settings.chunk_size, self.summary.jobs)
            if todo:
                attempt += 1
                round_ = self._dispatch(jobs, attempt)
                orphans = self._settle_orphans(f"its worker process died ({round_.crash})", "KILLED")
                if round_.crash:
                    self.summary.crashes.append(round_.crash)
                    if orphans:
                        self._isolate(orphans, attempt)
                    elif not self._progressed:
                        crashes += 1
                        if crashes > self.settings.retries:
                            return  # the pool dies before any run starts: what is left is reported
                elif not self._progressed:  # every claim was refused: the store has those runs done or held
                    stalls += 1
                    if stalls >= STALLS:
                        self.summary.stalled = (f"{stalls} rounds in a row found every run they were sent done or "
                                                f"held elsewhere, though this process saw them pending")
                        return
                    self.view.index.sync(keys=[r.key for r in todo])
                else:
                    stalls = 0
                continue
            held = self.view.live(self._keys())  # as the view has just been read
            if not held or not self.settings.wait:
                return
            self.progress.waiting(len(held), max(a.lease_until for a in held), "held by another process")
            self.host.sleep(POLL_SECONDS)

    def _dispatch(self, jobs: list[tuple], attempt: int, n_jobs: Optional[int] = None, solo: bool = False):
        s = self.settings
        work = [Job(runs=group, store=self.store, experiment_id=self.experiment_id,
                    parent_run_id=self.summary.parent_run_id, sweep_name=self.spec.name, session=self.session,
                    owner=self.owner, attempt=attempt, data_dir=s.data_dir, device=s.device,
                    threads=1 if self.remote else self.summary.threads, fused=s.engine == "fused" and not solo,
                    lease_seconds=s.lease_seconds, judging=tuple(self._judging(run) for run in group))
                for group in jobs]
        if n_jobs is None:
            n_jobs = s.jobs or (-1 if self.remote else self.summary.jobs)
            n_jobs = n_jobs if n_jobs == -1 else min(n_jobs, len(work))
        round_ = self.pool.round(work, n_jobs)
        self._progressed = False
        for outcome in round_:
            self._record(outcome)
        return round_

    def _judging(self, run: PlannedRun) -> tuple:
        """The grids (all the sweep's, not only those selected) or search a run is judged in, and its rule."""
        if self._grids_of is None:
            self._grids_of = {r.key: r.grids for r in expand(self.spec)}
        grids = () if run.search else self._grids_of.get(run.key, run.grids)
        return groups_of(grids, run.search), rule_for(self.spec, grids, run.search)

    def _claim(self, trial: PlannedRun):
        return queue.claim(self.store, self.experiment_id, self.summary.parent_run_id, trial, self.spec.name,
                           self.session, lease_seconds=self.settings.lease_seconds)

    def _record(self, outcome: Outcome) -> None:
        if outcome.status != "skipped":
            self._progressed = True
        elif outcome.key in self.summary.outcomes:
            return
        self.summary.outcomes[outcome.key] = outcome
        self.progress.outcome(outcome)

    def _isolate(self, keys: list[str], attempt: int) -> None:
        """Runs that were training when a worker died: each alone, so that only the one that kills
        its worker fails (the others had only shared its pool)."""
        planned = {**{r.key: r for r in self.planned}, **self.trials.asked}
        for key in dict.fromkeys(keys):
            for _ in range(self.settings.retries + 1):
                if key not in planned or self.view.refresh().states([key])[key] not in (schema.PENDING, schema.FAILED):
                    break
                round_ = self._dispatch([(planned[key],)], attempt, n_jobs=1, solo=True)
                if not round_.crash:
                    break
                self.summary.crashes.append(round_.crash)
                self._settle_orphans(f"its worker process died while it trained alone ({round_.crash})", "FAILED")

    def _settle_orphans(self, why: str, status: str) -> list[str]:
        """This session's runs still RUNNING after a round: wait while their holders live (a remote
        worker that goes on), end those whose holder is gone, and return their keys."""
        orphaned = []
        while True:
            mine = queue.session_attempts(self.store, self.experiment_id, self.session)
            now = self.host.now()
            live = [a for a in mine if queue.is_live(a, now, self.host.alive)]
            for a in mine:
                if a not in live and queue.end_attempt(self.store, self.experiment_id, a.run_id, status,
                                                       why) != "FINISHED":
                    orphaned.append(a.key)
            if not live:
                return orphaned
            self.progress.waiting(len(live), max(a.lease_until for a in live), "still held by this sweep's workers")
            self.host.sleep(0.2 if all(self.host.alive(a.holder) is not None for a in live) else POLL_SECONDS)

    # --- reading the queue ------------------------------------------------------------------------

    def _keys(self) -> list[str]:
        """The queue keys of the selected grid runs and of every slot of the selected searches."""
        return [r.key for r in self.planned] + self.trials.keys()

    def todo(self, refresh: bool = True) -> list[PlannedRun]:
        """Grid runs to train now (a failed one while retries are left; with adaptive seeds, those
        the rule wants as the finished runs stand)."""
        if refresh:
            self.view.refresh()
        self.wanted.read()
        if self.view.reopened != self._reopened:  # a finished run deleted, or the mirror rebuilt: look at all
            self._unfinished, self._reopened = list(self.planned), self.view.reopened
        # a key once done stays done: each call looks at the runs not finished, not at the whole sweep
        self._unfinished = [r for r in self._unfinished if not self.view.done(r.key)]
        state = self.view.states([r.key for r in self._unfinished])
        return [r for r in self._unfinished if state[r.key] in (schema.PENDING, schema.FAILED)
                and self.wanted.wants(r.key) and self.view.failures(r.key, self.session) <= self.settings.retries]

    # --- the end ------------------------------------------------------------------------------------

    def _settle(self) -> None:
        """What became of the runs it set out to train, and why the others are not done."""
        self.view.refresh()
        self._end_lapsed_of_done_keys()
        self.wanted.read()
        self.summary.spared = len(self.wanted.spared(r.key for r in self.planned))
        settle(self.summary, self.view, {**{r.key: r.name for r in self.planned if self.wanted.wants(r.key)},
                                         **self.trials.names()}, self.session, self.todo_keys)

    def _end_lapsed_of_done_keys(self) -> None:
        """Attempts left RUNNING by a holder that died or lapsed (say, killed between its claim's create
        and check), at keys another attempt has done: no claim will come to end them, so this sweep
        does, once the store itself says they are still lapsed."""
        def lapsed(a):
            return a.status == "RUNNING" and not queue.is_live(a, self.host.now(), self.host.alive)

        for key in self._keys():
            if self.view.done(key) and any(lapsed(a) for a in self.view.attempts(key)):
                for a in queue.key_attempts(self.store, self.experiment_id, key):
                    if lapsed(a):
                        queue.end_attempt(self.store, self.experiment_id, a.run_id, "KILLED",
                                          "claim lapsed: its key was done by another run")

    def _parent_status(self) -> tuple[str, str]:
        """From the view as last read: FINISHED only when every run of the whole sweep is done."""
        slots = [slot_key(self.spec, search, n) for search in self.spec.searches.values() for n in range(search.trials)]
        self.every_wanted.read()
        every = self.view.states([r.key for r in expand(self.spec) if self.every_wanted.wants(r.key)] + slots)
        return parent_status(every, len(self.summary.failed))

    def _end_parent(self, status: str = "", note: str = "") -> None:
        if not status:
            status, note = self._parent_status()
        queue.end_parent(self.store, self.experiment_id, self.summary.parent_run_id, status, self.summary.counts(),
                         note)

    def _finish_a_done_parent(self) -> None:
        """A sweep found done whose parent run was left KILLED (stopped after its last run finished)."""
        parent = queue.tidy_parent(self.store, self.experiment_id, self.spec.name)
        if parent is not None and parent.status != "FINISHED" and self._parent_status()[0] == "FINISHED":
            self.summary.parent_run_id = parent.run_id
            self._end_parent("FINISHED")

    def _stop(self, reason: str) -> None:
        """After Ctrl-C, a signal or a closed stdout: end the runs whose workers are gone, then the parent.
        The pool stops this round's workers; a remote worker that goes on keeps its runs."""
        deadline = self.host.now() + 10
        while True:
            mine = queue.session_attempts(self.store, self.experiment_id, self.session)
            now = self.host.now()
            gone = [a for a in mine if not queue.is_live(a, now, self.host.alive)]
            for a in gone:
                queue.end_attempt(self.store, self.experiment_id, a.run_id, "KILLED", reason)
            if len(gone) == len(mine) or self.host.now() > deadline:
                break
            self.host.sleep(0.2)
        if self.summary.parent_run_id:
            self.view.refresh()
            status, note = self._parent_status()
            self._end_parent("FINISHED" if status == "FINISHED" else "KILLED", note and f"{reason}; {note}")
