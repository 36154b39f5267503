"""Run a sweep: read the queue, dispatch what is left in rounds, isolate crashes, wait for runs held
elsewhere, sum up.

A run's life belongs to the queue (claim, lease, finish); the runner only decides what to dispatch
next and ends the runs whose holder is gone (never one whose holder still heartbeats). It reaches
the store, the clock and the workers only through a `queue.Store`, its `Host` and a `Pool`, so that
the simulation in tests/queue drives this very loop.

Every loop here ends. A round either settles some run (done, failed, lost) or comes back with every
claim refused, because the store holds those runs done or held elsewhere; the view is then synced
with those runs read from the store, so that they are not dispatched again unless their state moves
back (a holder that died or lapsed); and after `STALLS` such rounds in a row the sweep gives up and
says so. Waiting for runs held elsewhere ends when their holders finish or their leases lapse.
"""
from __future__ import annotations

import signal
import uuid
from dataclasses import dataclass, field
from typing import Optional, Protocol

from mnist_core.config import DEFAULT_CHUNK_SIZE, group_key

from . import queue
from .devices import available_cores, default_jobs, gpu_count, threads_per_worker
from .dispatch import BACKENDS, JoblibPool, backend_session, is_remote_backend
from .early_stop import groups_of, rule_for
from .errors import SettingsError, SweepError
from .queue import Store, schema
from .search import ask, free_slots, slot_key, trials_in_store
from .spec import PlannedRun, SweepSpec, expand, run_key, select
from .store import is_local, open_store
from .worker import Job, Outcome

ENGINES = ("auto", "solo", "fused")
POLL_SECONDS = 2.0
STALLS = 5      # rounds in a row in which every claim was refused, before the sweep gives up
INCOMPLETE = 3  # exit status: runs are held by another process and this one did not wait for them
HELD = "held by another process"
COUNTED = ("done", "diverged", "stopped", "duplicate", "failed", "skipped", "lost")  # what the parent run counts


@dataclass(frozen=True)
class Settings:
    jobs: Optional[int] = None
    retries: int = 1
    data_dir: Optional[str] = None
    device: str = "auto"
    backend: str = "loky"
    address: Optional[str] = None       # dask scheduler or ray cluster address
    engine: str = "auto"                # solo, fused or auto (fuse groups of two or more)
    chunk_size: int = DEFAULT_CHUNK_SIZE
    wait: bool = True                   # wait for runs held by another live process, then train what they leave
    lease_seconds: float = schema.DEFAULT_LEASE_SECONDS


def check_settings(settings: Settings, store: str) -> None:
    """Refuse settings that cannot work, before anything is written."""
    if settings.engine not in ENGINES:
        raise SettingsError(f"unknown engine {settings.engine!r}; choose one of {', '.join(ENGINES)}")
    if settings.backend not in BACKENDS:
        raise SettingsError(f"unknown backend {settings.backend!r}; choose one of {', '.join(BACKENDS)}")
    if settings.lease_seconds < 6:
        raise SettingsError(f"lease of {settings.lease_seconds:g} s is too short: give at least 6 s")
    if is_remote_backend(settings.backend) and is_local(store):
        raise SettingsError(
            f"the {settings.backend} backend runs workers that cannot write the local store {store}. "
            f"Start a tracking server that they can reach, e.g.\n"
            f"  mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlruns/mlflow.db "
            f"--artifacts-destination ./mlruns/artifacts\n"
            f"(--host: an address the workers reach; a PostgreSQL URI for a team), then pass "
            f"--tracking-uri http://HOST:5000 or set MLFLOW_TRACKING_URI.")


def expected_cost(run: PlannedRun) -> float:
    """Relative cost of a run: epochs x weights (the arithmetic of a pass scales with them)."""
    c = run.config
    return c.epochs * (784 * c.width + (c.depth - 1) * c.width * c.width + 10 * c.width)


def plan_jobs(runs: list[PlannedRun], engine: str = "auto", chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[tuple]:
    """Runs per job, the most expensive jobs first so that the slowest does not start last:
    each run alone (solo), or same-shape groups in chunks of at most `chunk_size` (fused)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "solo" or chunk_size < 2:
        jobs = [(r,) for r in runs]
    else:
        groups: dict[tuple, list[PlannedRun]] = {}
        for run in runs:
            groups.setdefault(group_key(run.config), []).append(run)
        jobs = []
        for members in groups.values():
            n_chunks = -(-len(members) // chunk_size)
            base, extra = divmod(len(members), n_chunks)  # near-equal chunks, none over chunk_size
            start = 0
            for i in range(n_chunks):
                size = base + (i < extra)
                jobs.append(tuple(members[start:start + size]))
                start += size
    return sorted(jobs, key=lambda job: sum(expected_cost(r) for r in job), reverse=True)


class Progress:
    """What a sweep reports as it goes; the CLI prints it, tests may record it. Every hook is optional."""

    def start(self, summary: "SweepSummary") -> None: ...
    def outcome(self, outcome: Outcome) -> None: ...
    def waiting(self, runs: int, until: float, why: str) -> None: ...


class Pool(Protocol):
    """Where jobs run: `round(jobs, n_jobs)` iterates each run's Outcome as it arrives, and says in
    `.crash` why it ended early (a worker process that died). dispatch.JoblibPool is the real one."""

    def round(self, jobs: list[Job], n_jobs: int): ...


class SweepInterrupted(Exception):
    """Ctrl-C, SIGTERM, SIGHUP or a closed stdout: dispatching stopped, the runs in flight were ended
    (or, when the store refused that, `unended` says why; their leases lapse instead)."""

    def __init__(self, reason: str, exit_code: int, unended: str = ""):
        super().__init__(reason)
        self.exit_code, self.unended = exit_code, unended


@dataclass
class SweepSummary:
    total: int = 0                  # runs in the (grid-filtered) sweep
    already_done: int = 0           # finished before this command started
    to_train: int = 0               # what this command set out to train
    held_elsewhere: int = 0         # running in another live process at the start
    outcomes: dict = field(default_factory=dict)   # key -> final Outcome of this command
    crashes: list = field(default_factory=list)    # what joblib said when a worker died
    not_done: list = field(default_factory=list)   # (name, why) of runs left unfinished at the end
    stalled: str = ""               # why dispatching gave up while runs were left
    jobs: int = 0
    threads: int = 0
    experiment_id: str = ""
    parent_run_id: str = ""

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes.values())

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes.values() if o.status == "failed"]

    @property
    def exit_code(self) -> int:
        if self.failed or self.stalled or any(why != HELD for _, why in self.not_done):
            return 1  # runs failed, or could not be trained at all (a worker pool that kept dying)
        return INCOMPLETE if self.not_done else 0


def exit_status(error: Optional[BaseException], summary: Optional[SweepSummary] = None) -> int:
    """The exit status of `sweep run` that ended with `summary`, or with `error`."""
    if error is None:
        return summary.exit_code
    if isinstance(error, SweepInterrupted):
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        return 128 + getattr(error, "signum", signal.SIGINT)
    if isinstance(error, SweepError):
        return error.exit_code
    raise error


def run_sweep(spec: SweepSpec, uri: str, settings: Settings = Settings(), grids=(),
              progress: Optional[Progress] = None) -> SweepSummary:
    """Train every run of the sweep's grids and searches (or of those named in `grids`) that is not
    done in the tracking store at `uri`, and nothing else."""
    from .queue.mlflow_store import MlflowStore

    expand(spec, grids)  # an unknown grid or search, or too many runs, is refused before anything is written
    check_settings(settings, uri)
    with backend_session(settings.backend, settings.address):  # an unreachable cluster fails before any write
        pool = JoblibPool(settings.backend)
        try:
            return Sweep(spec, MlflowStore(open_store(uri)), settings, grids, progress, pool).run()
        finally:
            pool.close()


class Sweep:
    """One `sweep run` of `spec`'s runs (of `grids`, when given) on `store`, its jobs run by `pool`."""

    def __init__(self, spec: SweepSpec, store: Store, settings: Settings = Settings(), grids=(),
                 progress: Optional[Progress] = None, pool: Optional[Pool] = None):
        _, search_names = select(spec, grids)
        self.spec, self.store, self.host, self.grids = spec, store, store.host, tuple(grids)
        self.planned = expand(spec, grids)
        self.searches = [spec.searches[name] for name in search_names]
        self.settings, self.progress, self.pool = settings, progress or Progress(), pool or JoblibPool(settings.backend)
        self.experiment_id = store.ensure_experiment(spec.experiment)
        self.session, self.owner = uuid.uuid4().hex, self.host.me()
        self.view = queue.QueueView(store, self.experiment_id, spec.experiment)
        self.summary = SweepSummary(total=len(self.planned) + sum(s.trials for s in self.searches),
                                    experiment_id=self.experiment_id)
        cores = available_cores()
        self.summary.jobs = settings.jobs or default_jobs(gpu_count(), cores)
        self.summary.threads = threads_per_worker(self.summary.jobs, cores)
        self.remote = is_remote_backend(settings.backend)
        self.trials: dict[str, PlannedRun] = {}   # search trials asked by this process, by slot key
        self._grids_of: Optional[dict] = None      # key -> every grid of the whole sweep it belongs to
        self._progressed = False

    def run(self) -> SweepSummary:
        s = self.summary
        self.view.refresh()
        state = self.view.states(self._keys())
        todo = self._todo(refresh=False)
        s.already_done = sum(v == schema.DONE for v in state.values())
        s.held_elsewhere = sum(v == schema.RUNNING for v in state.values())
        s.to_train = len(todo) + sum(len(self._free(search)) for search in self.searches)
        self.todo_keys = {r.key for r in todo}
        self.progress.start(s)
        if not s.to_train and (not s.held_elsewhere or not self.settings.wait):
            self._left_over()
            self._finish_a_done_parent()
            return s
        s.parent_run_id = queue.parent_run(self.store, self.experiment_id, self.spec.name, {
            "spec": self.spec.path, "experiment": self.spec.experiment,
            "grids": ",".join(self.grids or [*self.spec.grids, *self.spec.searches]), "runs": s.total})
        try:
            self._loop()
        except KeyboardInterrupt as exc:
            signum = getattr(exc, "signum", signal.SIGINT)
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
        self._left_over()
        self._end_parent()
        return s

    # --- rounds ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        attempt, crashes, stalls = 0, 0, 0
        while True:
            todo = self._todo()
            jobs = plan_jobs(todo, self.settings.engine, self.settings.chunk_size)
            asked = self._ask(max(0, self.summary.jobs - len(jobs)), todo)
            if asked:
                todo += asked
                jobs = plan_jobs(todo, self.settings.engine, self.settings.chunk_size)
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
            held = self._held()
            if not held or not self.settings.wait:
                return
            self.progress.waiting(len(held), max(a.lease_until for a in held), HELD)
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
        grids = () if run.search else self._memberships().get(run.key, run.grids)
        return groups_of(grids, run.search), rule_for(self.spec, grids, run.search)

    def _memberships(self) -> dict:
        if self._grids_of is None:
            self._grids_of = {r.key: r.grids for r in expand(self.spec)}
        return self._grids_of

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
        planned = {**{r.key: r for r in self.planned}, **self.trials}
        for key in dict.fromkeys(keys):
            for _ in range(self.settings.retries + 1):
                if key not in planned or self._state(key) not in (schema.PENDING, schema.FAILED):
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
                if a not in live:
                    queue.end_attempt(self.store, a.run_id, status, why)
                    orphaned.append(a.key)
            if not live:
                return orphaned
            self.progress.waiting(len(live), max(a.lease_until for a in live), "still held by this sweep's workers")
            self.host.sleep(0.2 if all(self.host.alive(a.holder) is not None for a in live) else POLL_SECONDS)

    # --- reading the queue ------------------------------------------------------------------------

    def _keys(self, searches=None) -> list[str]:
        """The queue keys of the selected grid runs (unless `searches` is given) and of every slot
        of the selected searches."""
        grid_keys = [r.key for r in self.planned] if searches is None else []
        return grid_keys + [slot_key(self.spec, search, n)
                            for search in (self.searches if searches is None else searches) for n in range(search.trials)]

    def _state(self, key: str) -> str:
        self.view.refresh()
        return self.view.states([key])[key]

    def _todo(self, refresh: bool = True) -> list[PlannedRun]:
        """Grid runs to train now (a failed one while retries are left)."""
        if refresh:
            self.view.refresh()
        state = self.view.states([r.key for r in self.planned])
        retries = self.settings.retries
        return [r for r in self.planned if state[r.key] in (schema.PENDING, schema.FAILED)
                and self.view.failures(r.key, self.session) <= retries]

    def _free(self, search) -> list[int]:
        slots = free_slots(self.spec, search, self.view.states(self._keys([search])))
        return [n for n in slots if self.view.failures(slot_key(self.spec, search, n), self.session)
                <= self.settings.retries]

    def _ask(self, free_workers: int, pending: list[PlannedRun] = ()) -> list[PlannedRun]:
        """New trials of each search, as many as there are free workers (at least one when only
        searches are left). A trial whose settings a finished run has already is not trained again:
        its slot records that run's result, and another trial is asked in its place. One whose
        settings a grid run about to train has waits for that run, to be a duplicate of it then."""
        asked = []
        waiting = {run_key(r.config) for r in pending}
        for search in self.searches:
            wanted = max(1, free_workers)
            for _ in range(search.trials):  # each pass fills at least one slot or asks what is wanted
                free = self._free(search)
                if not free or wanted <= 0:
                    break
                rows = [row for row in self.view.index.rows() if schema.decode(row).search == search.name]
                states = self.view.states([schema.decode(row).key for row in rows])
                trials = trials_in_store(search, rows, states)
                fresh = [t for t in ask(self.spec, search, trials, free, wanted) if not self._fill_with_finished(t)]
                if any(run_key(t.config) in waiting for t in fresh):
                    break  # the sampler wants what a grid run is about to give: ask again after it
                self.trials.update((t.key, t) for t in fresh)
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
            if run.key == key or (run.search and not run.duplicate_of and _config_key(row.params) == key):
                same.append((run, row))
        if not same:
            return False
        original, row = same[0]
        lease = queue.claim(self.store, self.experiment_id, self.summary.parent_run_id, trial, self.spec.name,
                            self.session, lease_seconds=self.settings.lease_seconds)
        if lease is not None:
            lease.log_params({**trial.config.as_params(), "device": row.params.get("device", "")})
            if lease.finish(row.metrics, int(row.metrics.get("epochs_completed", 0)), None, original.diverged,
                            original.stopped, tags=schema.duplicate(original)):
                self._record(Outcome(trial.key, trial.name, "duplicate", lease.run_id,
                                     row.metrics.get("test_error", float("nan")),
                                     error=f"same settings as run {original.run_id}: not trained again"))
        return True

    def _held(self) -> list[schema.Attempt]:
        """Runs of this sweep held by a live process now, as the view last read them."""
        return self.view.live(self._keys())

    # --- the end ------------------------------------------------------------------------------------

    def _left_over(self) -> None:
        """Runs not done at the end: failed for good, or why they are not done."""
        s = self.summary
        self.view.refresh()
        names = {r.key: r.name for r in self.planned}
        names.update({slot_key(self.spec, search, n): f"{search.name} trial {n}"
                      for search in self.searches for n in range(search.trials)})
        state = self.view.states(list(names))
        errors = queue.last_errors(self.view.attempts())
        for key, name in names.items():
            known = s.outcomes.get(key)
            if state[key] == schema.DONE:
                if key in self.todo_keys and (known is None or known.status == "lost"):
                    mine = [a for a in self.view.attempts(key) if a.status == "FINISHED" and a.session == self.session]
                    status = mine[0].outcome if mine else "skipped"  # a worker the round had given up on finished it
                    s.outcomes[key] = Outcome(key, name, status, mine[0].run_id if mine else "")
            elif state[key] == schema.FAILED and self.view.failures(key, self.session):
                error = (errors.get(key) or "failed").splitlines()[0]
                s.outcomes[key] = Outcome(key, name, "failed", error=error)
            elif state[key] == schema.RUNNING:
                s.not_done.append((name, HELD))
            elif s.parent_run_id:
                s.not_done.append((name, f"not trained: the worker pool failed ({s.crashes[-1]})" if s.crashes
                                   else "not trained"))

    def _parent_status(self, refresh: bool = True) -> tuple[str, str]:
        """FINISHED only when every run of the whole sweep (every grid run, every search's trials) is done."""
        slots = [slot_key(self.spec, search, n) for search in self.spec.searches.values() for n in range(search.trials)]
        if refresh:
            self.view.refresh()
        every = self.view.states([r.key for r in expand(self.spec)] + slots)
        missing = sum(v != schema.DONE for v in every.values())
        if not missing:
            return "FINISHED", ""
        if self.summary.failed:
            return "FAILED", f"{len(self.summary.failed)} runs failed"
        if any(v == schema.RUNNING for v in every.values()):
            return "RUNNING", f"{missing} of {len(every)} runs not done; others are training them"
        return "KILLED", f"incomplete: {missing} of {len(every)} runs not done"

    def _end_parent(self, status: str = "", note: str = "") -> None:
        if not status:
            status, note = self._parent_status(refresh=False)  # the view _left_over has just read
        counts = {k: self.summary.count(k) for k in COUNTED}
        queue.end_parent(self.store, self.experiment_id, self.summary.parent_run_id, status, counts, note)

    def _finish_a_done_parent(self) -> None:
        """A sweep found done whose parent run was left KILLED (stopped after its last run finished)."""
        parent = queue.find_parent(self.store, self.experiment_id, self.spec.name)
        if parent is not None and parent.status != "FINISHED" and self._parent_status(refresh=False)[0] == "FINISHED":
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
                queue.end_attempt(self.store, a.run_id, "KILLED", reason)
            if len(gone) == len(mine) or self.host.now() > deadline:
                break
            self.host.sleep(0.2)
        if self.summary.parent_run_id:
            status, note = self._parent_status()
            self._end_parent("FINISHED" if status == "FINISHED" else "KILLED", note and f"{reason}; {note}")


def _config_key(params: dict) -> str:
    """The settings key of a run, from its logged params ("" when they are not a run's settings)."""
    from mnist_core.config import RunConfig

    try:
        return run_key(RunConfig(**schema.settings(params)))
    except (TypeError, ValueError):
        return ""
