"""A deterministic simulation of the queue (FoundationDB's idea): the production code of a sweep (the
runner's loop, the workers' claims, leases and keep-alives, the change feed, `sweep status`'s read)
runs on the in-memory store, in simulated processes whose threads one seeded scheduler interleaves
on a simulated clock. Only the store, the clock, the workers' training and the process boundaries are
simulated. Faults come from the schedule: Ctrl-C and SIGTERM, kills of a sweep or of its workers,
suspensions past the lease, store errors, training that fails.

Every simulated thread is a real thread, but only the one holding the baton runs; it hands the baton
on at each store call, sleep, lock or wait, to a thread the seeded generator picks. So a seed replays
exactly, and a failing schedule prints its seed and its events. With `--store mlflow` the same
schedules run on MLflow's own SQLite store instead of the in-memory one (slower: a handful of them).

    python tests/sweep/queue/simulation.py --schedules 2000       # explore; exit 1 on the first failure
    python tests/sweep/queue/simulation.py --seed 1234 --verbose  # replay one schedule, printing its events
    python tests/sweep/queue/simulation.py --schedules 5 --store mlflow
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Optional

from sweep.adaptive.seeds import allocate, grid_questions
from sweep.adaptive.wanted import WantedRuns
from sweep.execute import Progress, Settings, Sweep, exit_status
from sweep.execute.worker import Outcome, Trained, execute
from sweep.queue import Host, MemoryStore, Query, RunRow, Store, TrackingError, read_states, schema
from sweep.spec import expand, parse_spec
from sweep.tracking.location import open_store
from sweep.tracking.mlflow_store import MlflowStore

STEPS: list = []
EXPERIMENT_ID = "1"       # the in-memory store's first experiment: the sweep's
START = 1_800_000_000.0   # the simulated clock's start, s
MAX_STEPS = 20_000        # a world that has not ended after this many steps is stuck


class Killed(BaseException):
    """The simulated process was killed: its threads unwind and touch nothing more."""


class Failure(AssertionError):
    """An invariant broken, or the world stuck: the message says which."""


class Stuck(BaseException):
    """Raised in every simulated thread once the world has given up (a failure was found)."""


# --- the world ---------------------------------------------------------------------------------------

@dataclasses.dataclass(eq=False)
class Process:
    pid: int
    name: str
    parent: Optional["Process"] = None
    skew: float = 0.0               # its clock runs this far ahead of the world's
    alive: bool = True
    killed: bool = False
    suspended_until: float = 0.0
    interrupt: Optional[int] = None  # a signal waiting to be raised in its main thread
    interrupted: Optional[int] = None
    main: Optional["Actor"] = None
    errors_after: float = float("inf")  # store calls fail (sometimes) from this time on
    failed_calls: int = 0
    calls: int = 0                  # store calls made so far
    stop_at_call: Optional[tuple] = None  # (n, seconds): SIGSTOP just before its n-th store call

    @property
    def holder(self) -> str:
        return f"sim:{self.pid}:1.00"


@dataclasses.dataclass(eq=False)
class Actor:
    process: Process
    name: str
    target: Callable
    go: threading.Semaphore = dataclasses.field(default_factory=lambda: threading.Semaphore(0))
    wake_at: Optional[float] = None                  # ready once the clock is there,
    wake_when: Optional[Callable[[], bool]] = None   # or once this holds (neither: ready now)
    done: bool = False
    error: Optional[BaseException] = None
    thread: Optional[threading.Thread] = None

    def join(self):
        World.now_running().block(until=lambda: self.done)


class World:
    """One schedule: a seeded generator picks which ready thread runs next, and when faults strike."""

    _current: Optional["World"] = None

    def __init__(self, seed: int, folder: Path, verbose: bool = False, store: str = "memory"):
        self.seed, self.rng, self.verbose = seed, random.Random(seed), verbose
        self.now, self.steps = START, 0
        self.actors: list[Actor] = []
        self.processes: dict[int, Process] = {}
        self.faults: list[tuple] = []      # (time, description, action)
        self.events: list[str] = []
        self.current: Optional[Actor] = None
        self.finished = threading.Semaphore(0)
        self.failure: Optional[str] = None
        self.memory = MemoryStore(folder / "index.sqlite") if store == "memory" else MlflowRuns(folder)
        self.pids = iter(range(100, 100_000))

    @classmethod
    def now_running(cls) -> "World":
        return cls._current

    def note(self, text: str) -> None:
        who = f"{self.current.process.name}/{self.current.name}" if self.current else "-"
        line = f"{self.now - START:9.3f}s {who:24} {text}"
        self.events.append(line)
        if self.verbose:
            print(line)

    # processes and threads

    def process(self, name: str, parent: Optional[Process] = None, skew: float = 0.0) -> Process:
        pid = next(self.pids)
        self.processes[pid] = process = Process(pid, name, parent, skew)
        return process

    def spawn(self, process: Process, target: Callable, name: str) -> Actor:
        actor = Actor(process, name, target)
        actor.thread = threading.Thread(target=self._body, args=(actor,), daemon=True)
        self.actors.append(actor)
        actor.thread.start()
        if process.main is None:
            process.main = actor
        return actor

    def store(self, process: Process) -> "SimStore":
        return SimStore(self, process, self.memory.on(SimHost(self, process)))

    def kill(self, process: Process, why: str) -> None:
        if process.alive:
            process.alive, process.killed = False, True
            self.note(f"kill {process.name}: {why}")

    # the baton

    def _body(self, actor: Actor) -> None:
        actor.go.acquire()
        try:
            actor.target()
        except (Killed, Stuck):
            pass
        except BaseException as exc:  # noqa: B036 - what a simulated thread raised is the world's business
            actor.error = exc
        finally:
            actor.done = True
            if actor is actor.process.main or not actor.process.alive:
                self._end_process(actor.process)
            self._hand_on(actor)

    def _end_process(self, process: Process) -> None:
        if process.main is not None and process.main.done:
            process.alive = False

    def run(self, max_steps: int = MAX_STEPS) -> None:
        """Run until every thread has ended (or a failure), from the test's own thread."""
        World._current = self
        self.max_steps = max_steps
        first = self._pick()
        if first is None:
            return
        self.current = first
        first.go.release()
        self.finished.acquire()
        World._current = None
        if self.failure:
            for actor in self.actors:  # unblock the threads still parked, so that they end
                if not actor.done:
                    actor.go.release()
            raise Failure(self.failure)

    def pause(self) -> None:
        """A point where another thread may run (the current one included, if it is ready)."""
        me = self.current
        self._check(me)
        self.steps += 1
        if self.steps > self.max_steps and not self.failure:
            self.fail(f"no end after {self.max_steps} steps: {self._who_is_left()}")
        self.now += self.rng.expovariate(1 / 0.004)   # store calls and computing take time
        self._fire()
        nxt = self._pick()
        if nxt is None:
            self.fail(f"deadlock: {self._who_is_left()}")
        if nxt is not me:
            self.current = nxt
            nxt.go.release()
            me.go.acquire()
        self._check(me)

    def block(self, at: Optional[float] = None, until: Optional[Callable[[], bool]] = None) -> None:
        """Wait (letting others run) until the time `at` or until `until()` holds."""
        me = self.current
        me.wake_at, me.wake_when = at, until
        try:
            self.pause()
            while not self._ready(me):
                self.pause()
        finally:
            me.wake_at, me.wake_when = None, None

    def _hand_on(self, actor: Actor) -> None:
        if self.failure or all(a.done for a in self.actors):
            self.finished.release()
            return
        nxt = self._pick()
        if nxt is None:
            self.failure = self.failure or f"deadlock: {self._who_is_left()}"
            self.finished.release()
            return
        self.current = nxt
        nxt.go.release()

    def fail(self, why: str) -> None:
        self.failure = self.failure or why
        self.finished.release()
        raise Stuck(why)

    def _check(self, actor: Actor) -> None:
        if self.failure:
            raise Stuck(self.failure)
        process = actor.process
        if not process.alive:
            raise Killed()
        if process.interrupt is not None and actor is process.main:
            signum, process.interrupt = process.interrupt, None
            process.interrupted = signum
            self.note(f"{signal.Signals(signum).name} raised")
            error = KeyboardInterrupt()
            error.signum = signum
            raise error

    def _ready(self, actor: Actor) -> bool:
        if actor.done or actor.thread is None:
            return False
        process = actor.process
        if not process.alive:
            return True  # SIGKILL ends a stopped process too: its threads unwind
        if process.suspended_until > self.now:
            return False
        if process.interrupt is not None and actor is process.main:
            return True
        if actor.wake_at is None and actor.wake_when is None:
            return True
        return (actor.wake_at is not None and actor.wake_at <= self.now
                or actor.wake_when is not None and actor.wake_when())

    def _pick(self) -> Optional[Actor]:
        while True:
            ready = [a for a in self.actors if self._ready(a)]
            if ready:
                if self.current in ready and self.rng.random() < 0.5:
                    return self.current  # fewer switches; still every order is possible
                return self.rng.choice(ready)
            times = [t for t, _, _ in self.faults]
            times += [a.wake_at for a in self.actors if not a.done and a.wake_at is not None]
            times += [a.process.suspended_until for a in self.actors if not a.done]
            later = [t for t in times if t > self.now]
            if not later:
                return None
            self.now = min(later)
            self._fire()

    def _fire(self) -> None:
        due = [f for f in self.faults if f[0] <= self.now]
        self.faults = [f for f in self.faults if f[0] > self.now]
        for _, what, action in sorted(due, key=lambda f: f[0]):
            self.note(what)
            action()

    def at(self, when: float, what: str, action: Callable[[], None]) -> None:
        self.faults.append((when, what, action))

    def _who_is_left(self) -> str:
        return ", ".join(f"{a.process.name}/{a.name}" for a in self.actors if not a.done)


class SimHost(Host):
    """A simulated process on the one simulated machine."""

    def __init__(self, world: World, process: Process):
        self.world, self.process = world, process

    def now(self) -> float:
        return self.world.now + self.process.skew

    def sleep(self, seconds: float) -> None:
        self.world.block(at=self.world.now + seconds)

    def me(self) -> str:
        return self.process.holder

    def alive(self, holder: str) -> Optional[bool]:
        host, pid, _ = holder.split(":")
        found = self.world.processes.get(int(pid)) if host == "sim" else None
        return None if found is None else found.alive

    def started_by(self, holder: str) -> bool:
        return self.process.parent is not None and self.process.parent.holder == holder

    def spawn(self, target, name: str):
        return self.world.spawn(self.process, target, name)

    def lock(self):
        return SimLock(self.world)

    def event(self):
        return SimEvent(self.world)

    def exit(self, code: int):
        self.world.kill(self.process, f"exit({code})")
        raise Killed()


class SimLock:
    def __init__(self, world: World):
        self.world, self.owner, self.depth = world, None, 0

    def __enter__(self):
        me = self.world.current
        if self.owner is not None and self.owner is not me:
            self.world.block(until=lambda: self.owner is None)
        self.owner, self.depth = me, self.depth + 1
        return self

    def __exit__(self, *exc):
        self.depth -= 1
        if not self.depth:
            self.owner = None


class SimEvent:
    def __init__(self, world: World):
        self.world, self.flag = world, False

    def set(self):
        self.flag = True

    def is_set(self) -> bool:
        return self.flag

    def wait(self, timeout: float) -> bool:
        self.world.block(at=self.world.now + timeout, until=lambda: self.flag)
        return self.flag


class SimStore(Store):
    """A process's handle on the store: every call is a point where another thread may run, a dead
    process cannot call, a call may fail as the schedule says, and each write is checked."""

    def __init__(self, world: World, process: Process, memory: Store):
        self.world, self.process, self.memory, self.host = world, process, memory, memory.host

    @property
    def index_path(self):
        return self.memory.index_path

    def _call(self, name: str, *args):
        self.process.calls += 1
        if self.process.stop_at_call and self.process.stop_at_call[0] == self.process.calls:
            self.world.note(f"SIGSTOP {self.process.name} for {self.process.stop_at_call[1]:.1f} s, "
                            f"before its store call {self.process.calls} ({name})")
            self.process.suspended_until = self.world.now + self.process.stop_at_call[1]
        self.world.pause()
        if self.world.now >= self.process.errors_after and self.world.rng.random() < 0.15:
            self.process.failed_calls += 1
            self.world.note(f"store error in {name}")
            raise TrackingError(f"simulated: the store did not answer {name}")
        before = self._run(args[0]) if name in ("set_status", "delete_run", "write") else None
        result = getattr(self.memory, name)(*args)
        if before is not None:
            check_change(self.world, self.process, self.world.memory, before, self._run(args[0]), name)
        return result

    def _run(self, run_id):
        return self.world.memory.run(run_id)

    def ensure_experiment(self, name):
        return self._call("ensure_experiment", name)

    def find_experiment(self, name):
        return self._call("find_experiment", name)

    def create_run(self, experiment_id, name, tags):
        return self._call("create_run", experiment_id, name, tags)

    def delete_run(self, run_id):
        return self._call("delete_run", run_id)

    def write(self, run_id, metrics=(), params=None, tags=None):
        # As MLflow's log_batch: the params (refused as a whole when one would change), then the metrics,
        # then the tags, each in a transaction of its own: a process may stop or fail between them.
        parts = [([], params, None), (list(metrics), None, None), ([], None, tags)]
        for part in [part for part in parts if any(part)] or parts[:1]:
            self._call("write", run_id, *part)

    def set_status(self, run_id, status):
        return self._call("set_status", run_id, status)

    def log_artifact(self, run_id, path):
        return self._call("log_artifact", run_id, path)

    def log_inputs(self, run_id, parts):
        return self._call("log_inputs", run_id, parts)

    def find(self, experiment_id, query):
        return self._call("find", experiment_id, query)


class MlflowRuns:
    """MLflow's own store (a local SQLite file) in place of the in-memory one: each simulated process
    opens an MlflowStore on it with its own host, as a real one opens the URI."""

    _template: Optional[Path] = None  # one migrated store per process, copied for each schedule

    def __init__(self, folder: Path):
        if MlflowRuns._template is None:
            MlflowRuns._template = Path(tempfile.mkdtemp()) / "mlflow.db"
            open_store(f"sqlite:///{MlflowRuns._template}")
        shutil.copyfile(MlflowRuns._template, folder / "mlflow.db")
        self.uri = f"sqlite:///{folder}/mlflow.db"
        self.reader = MlflowStore(self.uri)

    @property
    def index_path(self) -> Path:
        return self.reader.index_path

    def on(self, host: Host) -> MlflowStore:
        return MlflowStore(self.uri, host)

    def runs(self) -> list[RunRow]:
        return self.reader.find(EXPERIMENT_ID, Query(view="all"))

    def run(self, run_id: str) -> Optional[RunRow]:
        found = self.reader.find(EXPERIMENT_ID, Query(run_ids=(run_id,), view="all"))
        return found[0] if found else None

    def find(self, experiment_id: str, query: Query) -> list[RunRow]:
        return self.reader.find(experiment_id, query)


# --- invariants --------------------------------------------------------------------------------------

def check_change(world: World, process: Process, memory, before, after, call: str) -> None:
    """After every change of a run's ending, status or lifecycle: a training run's ending is committed
    once (FINISHED only by its holder, while the run was RUNNING: a lost holder never finishes a run),
    its status is set only to its committed ending, FINISHED only from RUNNING, never RUNNING again; it
    is never deleted once FINISHED (only withdrawn claims are), and no key is FINISHED twice."""
    run = schema.decode(after)
    if run.kind != schema.TRAIN or before is None:
        return
    if call == "write":
        ending, was = after.params.get(schema.ENDED), before.params.get(schema.ENDED)
        if ending != was and (was is not None or ending == "FINISHED" and (
                before.status != "RUNNING" or run.holder != process.holder)):
            world.fail(f"{process.name} committed run {run.run_id} ({run.key}) as {ending}: it was {before.status}, "
                       f"held by {run.holder}, committed as {was}")
        return
    if call == "delete_run" and before.status == "FINISHED":
        world.fail(f"{process.name} deleted run {run.run_id} ({run.key}), which had FINISHED")
    if call != "set_status" or before.status == after.status:
        return
    if after.status != after.params.get(schema.ENDED) and after.status != "RUNNING":
        world.fail(f"{process.name} set run {run.run_id} ({run.key}) {after.status}, but its ending was committed as "
                   f"{after.params.get(schema.ENDED)}")
    if after.status == "FINISHED":
        if before.status != "RUNNING":
            world.fail(f"{process.name} finished run {run.run_id} ({run.key}), which was {before.status}")
        if "final_test_error" not in after.metrics:
            world.fail(f"{process.name} finished run {run.run_id} ({run.key}) without its final metrics")
        twice = [r.run_id for r in memory.find(EXPERIMENT_ID, Query(tags=((schema.KEY, run.key),), status="FINISHED"))]
        if len(twice) > 1:
            world.fail(f"key {run.key} FINISHED {len(twice)} times: runs {twice}")
    if after.status == "RUNNING":
        world.fail(f"{process.name} set training run {run.run_id} RUNNING again after {before.status}")


# --- what the simulated processes do ----------------------------------------------------------------

class SimPool:
    """loky, simulated: a round's jobs go to `n_jobs` worker processes of the sweep; a worker that dies
    breaks the round (every worker of it is ended) and the round says so; a consumer that stops early
    (an interrupt) ends the round's workers."""

    def __init__(self, world: World, sweep: Process, plan: "Plan"):
        self.world, self.sweep, self.plan = world, sweep, plan

    def round(self, jobs, n_jobs):
        return SimRound(self, list(jobs), max(1, n_jobs))


class SimRound:
    def __init__(self, pool: SimPool, jobs: list, n_jobs: int):
        self.pool, self.jobs, self.n_jobs = pool, jobs, n_jobs
        self.crash: Optional[str] = None

    def __iter__(self):
        world, outbox, waiting = self.pool.world, [], list(self.jobs)
        workers = []
        for i in range(min(self.n_jobs, len(waiting))):
            process = world.process(f"{self.pool.sweep.name}.w{i}", parent=self.pool.sweep,
                                    skew=self.pool.sweep.skew)
            self.pool.plan.worker_started(world, process)
            store = world.store(process)

            def work(store=store):
                while waiting:
                    job = waiting.pop(0)
                    outbox.extend(execute(dataclasses.replace(job, store=store), train=self.pool.plan.train(world)))
            workers.append(world.spawn(process, work, "main"))

        def broken():
            return [w for w in workers if w.error is not None or w.process.killed]
        try:
            while True:
                world.block(until=lambda: outbox or broken() or all(w.done for w in workers))
                while outbox:
                    yield outbox.pop(0)
                if broken() or all(w.done for w in workers):
                    break
            errors = [w.error for w in workers if w.error is not None]
            if errors and not isinstance(errors[0], (TrackingError, RuntimeError)):
                raise errors[0]  # a bug in the code under test, not a simulated fault
            if broken():
                self.crash = f"a worker died ({errors[0] if errors else 'killed'})"
        finally:
            for w in workers:  # joblib ends the round's workers when the round ends early or breaks
                if not w.done:
                    world.kill(w.process, "its round ended")


@dataclasses.dataclass
class Plan:
    """One schedule's choices, drawn from its seed."""
    spec: object
    epochs: int
    epoch_seconds: float
    fail_once: set                 # keys whose first training fails
    failed: set = dataclasses.field(default_factory=set)
    # For the next workers: (delay, seconds), a SIGSTOP after that delay; or ("call", n, seconds), one
    # just before its n-th store call (which lands in every check-then-write window now and then).
    suspend_workers: list = dataclasses.field(default_factory=list)

    def worker_started(self, world: World, process: Process) -> None:
        if self.suspend_workers:
            when, *rest = self.suspend_workers.pop(0)
            if when == "call":
                process.stop_at_call = tuple(rest)
                return
            seconds = rest[0]
            world.at(world.now + when, f"SIGSTOP {process.name} for {seconds:.1f} s",
                     lambda: setattr(process, "suspended_until", world.now + seconds))

    def train(self, world: World):
        def train(job, leases, planned_of, judge):
            host = job.store.host
            training = list(range(len(leases)))
            for epoch in range(1, self.epochs + 1):
                host.sleep(self.epoch_seconds * world.rng.uniform(0.5, 1.5))
                for i in list(training):
                    key = leases[i].key
                    if key in self.fail_once and key not in self.failed:
                        self.failed.add(key)
                        raise RuntimeError(f"simulated training failure of {key}")
                    error = final_error(key) + (self.epochs - epoch) / 100
                    if not leases[i].log_epoch({"test_error": error}, epoch, tags=schema.curve([error])):
                        training.remove(i)
            return [Trained({"final_test_error": 0.25, "epochs_completed": float(self.epochs)}, self.epochs, False,
                            0.25, 1.0, _placeholder_agent) for _ in leases]
        return train


def final_error(key: str) -> float:
    """A run's simulated final test error: its own, drawn from its key (a retried run ends the same)."""
    return 0.2 + int(key[:6], 16) % 97 / 1000


def _placeholder_agent(folder: Path) -> Path:
    path = Path(folder) / "mnist_agent.pt"
    path.write_bytes(b"simulated")
    return path


class Notes(Progress):
    """A sweep's progress, as events of the schedule."""

    def __init__(self, world: World):
        self.world = world

    def outcome(self, outcome: Outcome) -> None:
        self.world.note(f"{outcome.status} {outcome.key} {outcome.error.splitlines()[0] if outcome.error else ''}")

    def waiting(self, runs: int, until: float, why: str) -> None:
        self.world.note(f"waiting for {runs} run(s) {why}")


@dataclasses.dataclass
class SweepProcess:
    process: Process
    settings: Settings
    exit_code: Optional[int] = None
    summary: object = None
    keys_done_at_exit: Optional[bool] = None


def start_sweep(world: World, plan: Plan, name: str, settings: Settings, when: float,
                skew: float = 0.0) -> SweepProcess:
    process = world.process(name, skew=skew)
    record = SweepProcess(process, settings)
    spec = plan.spec

    def main():
        store = world.store(process)
        try:
            world.block(at=when)
            world.note("sweep run")
            pool = SimPool(world, process, plan)
            record.summary = Sweep(spec, store, settings, progress=Notes(world), pool=pool).run()
            record.exit_code = exit_status(None, record.summary)
        except (Killed, Stuck):
            raise
        except BaseException as exc:  # noqa: B036 - the exit status of what came out
            record.exit_code = exit_status(exc)
        record.keys_done_at_exit = all_done(world, spec)
        world.note(f"exit {record.exit_code}")
    world.spawn(process, main, "main")
    return record


def start_reader(world: World, plan: Plan, name: str, every: float, until: Callable[[], bool]) -> None:
    """`sweep status`, again and again: the production read of every key's state."""
    spec = plan.spec
    keys = [r.key for r in expand(spec)]

    process = world.process(name)
    store = world.store(process)

    def main():
        wanted = None
        while not until():
            world.block(at=world.now + world.rng.uniform(0.5, every))
            read_states(store, spec.experiment, keys)
            experiment_id = store.find_experiment(spec.experiment) if spec.adaptive else None
            if experiment_id is not None:  # as `sweep status` counts the spared runs, with its own cursor
                wanted = wanted or WantedRuns(spec, store, experiment_id)
                wanted.read(sync=True)
    world.spawn(process, main, "main")


def all_done(world: World, spec) -> bool:
    finished = {schema.decode(r).key for r in world.memory.runs() if r.status == "FINISHED" and not r.deleted}
    keys, complete = wanted_keys(world, spec)
    return complete and keys <= finished


def wanted_keys(world: World, spec) -> tuple[set, bool]:
    """The keys the sweep is to finish, as the store holds the finished runs now, and whether no
    finished run can change them: every key, or with adaptive seeds those the rule wants."""
    keys = {r.key for r in expand(spec)}
    if not spec.adaptive:
        return keys, True
    values = {schema.decode(r).key: r.metrics.get("test_error", math.nan)
              for r in world.memory.runs() if r.status == "FINISHED" and not r.deleted}
    allocation = allocate(spec.adaptive, grid_questions(spec, spec.grids), values)
    return allocation.wanted, allocation.complete


# --- one schedule --------------------------------------------------------------------------------------

def schedule(seed: int, folder: Path, verbose: bool = False, store: str = "memory") -> World:
    """Draw a schedule from `seed`, run it, run a resume after it, and check every invariant."""
    random.seed(seed)  # what the code under test draws (claims' back-off) follows the seed too
    world = World(seed, folder, verbose, store)
    rng = world.rng
    epochs = rng.randint(1, 3)
    lrs = [0.01 * (i + 1) for i in range(rng.randint(2, 5))]
    adaptive = rng.random() < 0.25  # seeds given round by round: up to 4 runs a setting, so fewer settings
    lrs = lrs[:3] if adaptive else lrs
    grids = f"  a: {{lr: {lrs}}}\n" + (f"  b: {{lr: {lrs[:2]}, width: [50, 20]}}\n" if rng.random() < 0.4 else "")
    seeds = f"seeds: {{min: 2, max: {rng.choice([3, 4])}}}\n" if adaptive else ""
    text = f"experiment: sim\ndefaults: {{epochs: {epochs}}}\n{seeds}grids:\n{grids}"
    spec = parse_spec(text, "sim.yaml")
    keys = sorted(r.key for r in expand(spec))
    plan = Plan(spec, epochs, rng.uniform(0.5, 4.0), {k for k in keys if rng.random() < 0.15})
    lease = rng.choice([6.0, 8.0, 12.0])
    sweeps = []
    at_once = rng.random() < 0.3  # the sweeps started together (a script, two terminals), else spread out
    for i in range(rng.choice([1, 1, 2, 2, 3])):
        settings = Settings(jobs=rng.randint(1, 2), engine=rng.choice(["solo", "fused", "auto"]), lease_seconds=lease,
                            retries=1, wait=rng.random() < 0.85)
        when = START + (0 if i == 0 else rng.uniform(0, 0.05) if at_once else rng.uniform(0, 20))
        sweeps.append(start_sweep(world, plan, f"sweep{i}", settings, when, skew=rng.uniform(-2, 2)))
    sweeps_ended = lambda: all(s.process.main.done for s in sweeps)  # noqa: E731
    for i in range(rng.choice([0, 1, 1, 2])):
        start_reader(world, plan, f"status{i}", rng.choice([2.0, 5.0, 10.0]), sweeps_ended)
    for s in sweeps:  # faults
        draw = rng.random()
        when = START + rng.uniform(0, 40)
        p = s.process
        if draw < 0.12:
            signum = rng.choice([signal.SIGINT, signal.SIGTERM])
            world.at(when, f"{signal.Signals(signum).name} to {p.name}",
                     lambda p=p, signum=signum: setattr(p, "interrupt", signum) if p.alive else None)
        elif draw < 0.22:
            world.at(when, f"SIGKILL {p.name}", lambda p=p: world.kill(p, "SIGKILL"))
        elif draw < 0.30:
            def kill_group(p=p):
                for q in list(world.processes.values()):
                    if q is p or q.parent is p:
                        world.kill(q, "SIGKILL to the group")
            world.at(when, f"SIGKILL {p.name} and its workers", kill_group)
        elif draw < 0.40:
            p.stop_at_call = (rng.randint(1, 20), rng.uniform(lease, 3 * lease))  # e.g. making its parent run
        elif draw < 0.45:
            seconds = rng.uniform(lease, 3 * lease)
            group = rng.random() < 0.5

            def suspend(p=p, seconds=seconds, group=group):
                for q in world.processes.values():
                    if q is p or group and q.parent is p:
                        q.suspended_until = world.now + seconds
            world.at(when, f"SIGSTOP {p.name}{' and its workers' if group else ''} for {seconds:.1f} s", suspend)
        elif draw < 0.48:
            plan.suspend_workers.append((rng.uniform(0, 5), rng.uniform(lease, 3 * lease)))
        elif draw < 0.62:
            plan.suspend_workers.append(("call", rng.randint(1, 25), rng.uniform(lease, 3 * lease)))
        elif draw < 0.69:
            p.errors_after = when
    world.note(f"plan: {len(keys)} keys, {epochs} epochs, lease {lease:g} s, "
               f"{[(s.process.name, s.settings.jobs, s.settings.engine, s.settings.wait) for s in sweeps]}")
    world.run()
    check_world(world, sweeps, spec, text)
    return world


def check_world(world: World, sweeps: list, spec, text: str) -> None:
    for actor in world.actors:
        if actor.error is not None and not isinstance(actor.error, (TrackingError, RuntimeError)):
            raise Failure(f"{actor.process.name}/{actor.name} raised {actor.error!r}") from actor.error
    for s in sweeps:
        p = s.process
        if s.exit_code is None:
            if not p.killed:
                raise Failure(f"{p.name} did not end with an exit status")
            continue
        if p.interrupted is not None:  # the signal decides the exit status, whatever else happened
            allowed = {128 + p.interrupted}
        else:
            allowed = {0, 1} | ({2} if p.failed_calls else set()) | ({3} if not s.settings.wait else set())
        if s.exit_code not in allowed:
            raise Failure(f"{p.name} exited {s.exit_code}, expected one of {sorted(allowed)}")
        if s.exit_code == 0 and not s.keys_done_at_exit:
            raise Failure(f"{p.name} exited 0 while runs of the sweep were not done")
        if s.summary is not None and s.summary.stalled:
            raise Failure(f"{p.name} stalled: {s.summary.stalled}")
        if p.interrupted is None and not p.failed_calls and s.exit_code == 1 and not _failed_or_crashed(s):
            raise Failure(f"{p.name} exited 1 with nothing failed: {s.summary.not_done[:3]}")
    # a resume, with no fault left, finishes the sweep
    world2 = World(world.seed + 1, world.memory.index_path.parent)
    world2.memory, world2.now = world.memory, world.now + 1
    for q in world.processes.values():  # what the first world left running is gone by now
        q.alive = False
    world2.processes = dict(world.processes)
    world2.pids = iter(range(max(world.processes) + 1, 10**6))
    plan = Plan(spec, 1, 0.5, set())
    last = start_sweep(world2, plan, "resume", Settings(jobs=2, lease_seconds=6.0), world2.now)
    world2.run()
    if last.exit_code != 0:
        stalled = f" (stalled: {last.summary.stalled})" if last.summary is not None and last.summary.stalled else ""
        raise Failure(f"the resume after the schedule exited {last.exit_code}{stalled}")
    runs = [r for r in world.memory.runs() if not r.deleted]
    training = [schema.decode(r) for r in runs if r.tags.get(schema.KIND) == schema.TRAIN]
    finished = Counter(a.key for a in training if a.status == "FINISHED")
    keys, complete = wanted_keys(world, spec)
    if not complete:
        raise Failure("after the resume, adaptive seeds still want runs that are not finished")
    if set(finished) != keys or set(finished.values()) != {1}:
        raise Failure(f"after the resume, keys finished: {dict(finished)}, expected each of {len(keys)} once")
    if any(a.status == "RUNNING" for a in training):
        raise Failure("a run is left RUNNING after the resume")
    parents = [schema.decode(r) for r in runs if r.tags.get(schema.KIND) == schema.PARENT]
    if [p.status for p in parents] != ["FINISHED"]:
        raise Failure(f"the sweep's parent run is {[p.status for p in parents]} after the resume")


def _failed_or_crashed(s: SweepProcess) -> bool:
    return bool(s.summary and (s.summary.failed or s.summary.crashes or s.summary.not_done))


def explore(seeds: Iterable[int], verbose: bool = False, store: str = "memory") -> tuple[int, Optional[str]]:
    """Run the schedules of `seeds`; (how many ran, the first failure with its replay)."""
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    tempfile.tempdir = shm or tempfile.gettempdir()  # the agents' temporary folders too: no disk flush there
    n = 0
    with tempfile.TemporaryDirectory(dir=shm) as tmp:  # the mirror's commits cost no disk flush there
        for n, seed in enumerate(seeds, 1):
            folder = Path(tmp) / str(seed)
            folder.mkdir()
            try:
                world = schedule(seed, folder, verbose, store)
                STEPS.append(world.steps)
            except Failure as exc:
                where = "" if store == "memory" else f" --store {store}"
                return n, (f"seed {seed}: {exc}\n"
                           f"replay: python tests/sweep/queue/simulation.py --seed {seed}{where} --verbose")
            del world
    return n, None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, default=int(os.environ.get("SIM_SCHEDULES", 500)))
    parser.add_argument("--seed", type=int, default=None, help="run this one schedule")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="print every event")
    parser.add_argument("--store", choices=("memory", "mlflow"), default="memory",
                        help="the in-memory store, or MLflow's own on a local SQLite file")
    args = parser.parse_args(argv)
    if args.seed is not None:
        seeds = [args.seed]
    else:
        seeds = range(args.first_seed, args.first_seed + args.schedules)
    ran, failure = explore(seeds, args.verbose, args.store)
    print(failure or f"{ran} schedules, every invariant held")
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
