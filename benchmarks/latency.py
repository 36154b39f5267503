"""How long a person waits for `sweep`: each command timed as a subprocess, as the shell runs it.

Prints, per command, the median wall time of --repeats runs (after one uncounted warm-up), its
ratio to `python -c "import click"` timed in the same run, and its target:

    sweep --help, sweep plan SPEC              < 0.5 s
    sweep status SPEC, sweep best SPEC         < 2.5 s   (on a store of the default sweep)
    sweep run, one run of one epoch            < 3 s     of start-up overhead: wall time minus the
                                                         `training_seconds` the run logged

The store of the default sweep is either its runs written as known runs the way workers write
them (--store known, the default: quick, no training) or a real `sweep run` of it at one epoch per
run (--store sweep, needs MNIST). With --breakdown it then runs each command once more under a
tracer (a sitecustomize.py on PYTHONPATH, so the sweep's worker processes load it too) and prints
where the time goes: imports, store calls, index sync, worker start, data, claim, training,
logging, agent. Nothing of the project is changed to measure it.

    python benchmarks/latency.py [--repeats 5] [--store known|sweep] [--data-dir DIR] [--breakdown]
                                 [--spec sweeps.yaml] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SWEEP = [sys.executable, "-m", "sweep.cli"]  # what the `sweep` console script runs

TRACER = r'''
"""Loaded at start-up by every Python process of the measured command (it is on PYTHONPATH):
records, as JSON lines in $LATENCY_TRACE, when watched modules are imported and watched calls run."""
import atexit, functools, importlib.abc, json, os, sys, threading, time

_LOG = os.environ["LATENCY_TRACE"]
_IMPORTS = set(os.environ["LATENCY_IMPORTS"].split(","))
_CALLS = json.loads(os.environ["LATENCY_CALLS"])  # module -> ["function" or "Class.method", ...]
_lock = threading.Lock()
_depth = threading.local()


def _emit(kind, name, start, end, depth=0):
    with _lock, open(_LOG, "a") as log:
        log.write(json.dumps({"pid": os.getpid(), "kind": kind, "name": name, "start": start, "end": end,
                              "depth": depth, "thread": threading.current_thread().name}) + "\n")


def _process_start():
    """When this process started (exec or fork), on the time.time() clock; to 10 ms."""
    with open("/proc/self/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK"))


def _command_line():
    with open("/proc/self/cmdline", "rb") as f:
        return " ".join(part.decode(errors="replace") for part in f.read().split(b"\0")[1:] if part)[:100]


_emit("process", _command_line(), _process_start(), time.time())
atexit.register(lambda: _emit("atexit-last", "", time.time(), time.time()))  # registered first: runs last


def _exit_starts():
    _emit("atexit-first", "", time.time(), time.time())


def _timed(name, function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        depth = getattr(_depth, "n", 0)
        _depth.n = depth + 1
        start = time.time()
        try:
            return function(*args, **kwargs)
        finally:
            _depth.n = depth
            _emit("call", name, start, time.time(), depth)
            if name == "click.core.Command.invoke":
                atexit.register(_exit_starts)  # registered after the others: runs first
    return wrapper


def _patch(module):
    for target in _CALLS.get(module.__name__, ()):
        owner, _, attr = target.rpartition(".")
        holder = getattr(module, owner) if owner else module
        setattr(holder, attr, _timed(f"{module.__name__}.{target}", getattr(holder, attr)))


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in _IMPORTS and name not in _CALLS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            start = time.time()
            try:
                run(module)
            finally:
                if name in _IMPORTS:
                    _emit("import", name, start, time.time())
            _patch(module)
        spec.loader.exec_module = exec_module  # each module's spec has a loader of its own
        return spec


sys.meta_path.insert(0, _Finder())
'''

# The modules whose import time is shown (inclusive of what they import), and the calls timed.
IMPORTS = ("click", "yaml", "sweep.cli", "sweep.spec", "sweep.execute.runner", "joblib", "mlflow", "sqlalchemy",
           "alembic", "pandas", "numpy", "torch", "torchvision", "mnist_core.trainer", "scipy",
           "matplotlib", "sweep.results.fetch", "sweep.results.best", "sweep.execute.worker", "cloudpickle")
CALLS = {  # public names only: what the breakdown times
    "click.core": ["Command.invoke"],
    "sweep.spec.file": ["load_spec"],
    "sweep.spec.runs": ["expand"],
    "sweep.tracking.location": ["open_store"],
    "sweep.tracking": ["client", "ensure_experiment", "find_experiment", "create_run", "log_batch", "set_status",
                       "log_artifact", "search"],
    "sweep.queue.index": ["Index.sync", "Index.changes", "Index.rows"],
    "sweep.queue.view": ["read_states", "QueueView.refresh"],
    "sweep.queue.claims": ["claim", "parent_run", "find_parent", "end_parent", "session_attempts"],
    "sweep.execute.runner": ["run_sweep", "Sweep.run"],
    "sweep.execute.accounting": ["settle"],
    "sweep.execute.worker": ["execute", "train_runs"],
    "sweep.queue.lease": ["Lease.log_params", "Lease.finish", "KeepAlive.__exit__"],
    "sweep.results.fetch": ["fetch_results"],
    "sweep.results.best": ["best_by"],
    "mnist_core.data": ["load_mnist"],
    "mnist_core.trainer": ["train"],
    "mnist_core.agent": ["save_agent"],
}
TARGETS = {"help": 0.5, "plan": 0.5, "status": 2.5, "best": 2.5, "run": 3.0}
BASELINE = 'python -c "import click" (baseline)'
ONE_RUN = "experiment: {experiment}\ndefaults: {{epochs: 1}}\ngrids:\n  one: {{lr: [{lr}]}}\n"


def environment(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return {**env, **(extra or {})}


def run_once(command: list, cwd: Path, env: dict) -> float:
    """Wall seconds from launch until the process ends (as a shell waits: not for helpers it leaves
    holding its stderr, so that goes to a file, not a pipe)."""
    with tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        code = subprocess.call(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        seconds = time.perf_counter() - start
        if code != 0:
            err.seek(0)
            sys.exit(f"{' '.join(map(str, command))} failed ({code}):\n{err.read()[-2000:]}")
    return seconds


def median_of(command: list, cwd: Path, env: dict, repeats: int) -> float:
    run_once(command, cwd, env)  # warm-up: .pyc files, the OS's file cache, the index's first sync
    return statistics.median(run_once(command, cwd, env) for _ in range(repeats))


# --- the store of the default sweep -----------------------------------------------------------------

def known_store(spec_path: Path, uri: str) -> str:
    """Every run of the sweep written as a finished run with made-up numbers, through the queue's
    claim and lease as a worker writes them, each with an agent file of its shape (untrained)."""
    import hashlib

    from mnist_core import save_agent
    from mnist_core.model import MLP
    from sweep import queue
    from sweep.spec import expand, load_spec
    from sweep.tracking.location import open_store
    from sweep.tracking.mlflow_store import MlflowStore

    spec = load_spec(str(spec_path))
    store = MlflowStore(open_store(uri))
    experiment_id = store.ensure_experiment(spec.experiment)
    parent = queue.parent_run(store, experiment_id, spec.name, {"spec": str(spec_path)})
    with tempfile.TemporaryDirectory() as tmp:
        for run in expand(spec):
            error = 0.02 + int(hashlib.sha256(run.key.encode()).hexdigest()[:4], 16) / 65536 * 0.05
            lease = queue.claim(store, experiment_id, parent, run, spec.name, "latency-benchmark")
            lease.log_params(run.config.as_params())
            for epoch in range(1, run.config.epochs + 1):
                lease.log_epoch({"test_error": error + 0.1 / epoch, "train_error": error / 2 + 0.1 / epoch,
                                 "test_loss": 0.1, "train_loss": 0.1, "lr": run.config.lr}, epoch)
            summary = {"final_test_error": error, "best_test_error": error, "training_seconds": 1.0,
                       "epochs_completed": float(run.config.epochs)}
            agent = save_agent(Path(tmp) / run.key, MLP.from_config(run.config), run.config, summary)
            assert lease.finish(summary, run.config.epochs, agent, False, False)
    queue.end_parent(store, experiment_id, parent, "FINISHED", {"done": len(expand(spec))})
    return f"its {len(expand(spec))} runs written as known runs (no training)"


def swept_store(spec_path: Path, uri: str, data_dir: str | None, work: Path) -> str:
    command = [*SWEEP, "run", str(spec_path), "--tracking-uri", uri] + (["--data-dir", data_dir] if data_dir else [])
    start = time.perf_counter()
    done = subprocess.run(command, cwd=work, env=environment(), capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"sweep run failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return f"trained by a real `sweep run` at 1 epoch per run ({time.perf_counter() - start:.0f} s)"


def one_run_spec(work: Path, experiment: str, lr: float) -> Path:
    """A sweep of one run never trained before (its own learning rate), in a store that exists."""
    path = work / "one.yaml"
    path.write_text(ONE_RUN.format(experiment=experiment, lr=lr))
    return path


def last_training_seconds(uri: str, experiment: str) -> float:
    from sweep import tracking
    from sweep.queue import schema

    experiment_id = tracking.find_experiment(uri, experiment)
    rows = tracking.search(uri, experiment_id, schema.TRAINING_RUNS, max_results=1,
                           order_by=["attributes.start_time DESC"])
    return rows[0].metrics["training_seconds"]


# --- the breakdown ------------------------------------------------------------------------------------

def traced(command: list, cwd: Path, env: dict, folder: Path) -> tuple[float, list]:
    """Run `command` once under the tracer; its wall time from launch and the events, times from launch."""
    (folder / "sitecustomize.py").write_text(TRACER)
    log = folder / "trace.jsonl"
    log.unlink(missing_ok=True)
    env = {**env, "PYTHONPATH": os.pathsep.join([str(folder), env["PYTHONPATH"]]), "LATENCY_TRACE": str(log),
           "LATENCY_IMPORTS": ",".join(IMPORTS), "LATENCY_CALLS": json.dumps(CALLS)}
    launched = time.time()
    wall = run_once(command, cwd, env)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    for e in events:
        e["start"] -= launched
        e["end"] -= launched
    return wall, events


def role(command_line: str, main: bool) -> str:
    if main:
        return "main"
    worker = re.search(r"--process-name LokyProcess-(\d+)", command_line)
    if worker:
        return f"worker{worker[1]}"
    return "tracker" if "resource_tracker" in command_line else "helper"


def print_breakdown(title: str, wall: float, events: list, training: float | None = None) -> None:
    """The events as a table in time order: process, from and to (seconds after launch), duration,
    what. Calls are indented by nesting; imports inside a watched import are indented too."""
    first = next(e for e in events if e["kind"] == "process")
    roles = {e["pid"]: role(e["name"], e is first) for e in events if e["kind"] == "process"}
    exits = {}
    rows = []
    for e in events:
        who = roles.get(e["pid"], "?")
        if e["kind"] == "process":
            rows.append([who, e["start"], e["end"], "interpreter start-up, up to site (from exec or fork)"])
        elif e["kind"] == "import":
            rows.append([who, e["start"], e["end"], f"import {e['name']} (inclusive)"])
        elif e["kind"] == "call" and e["thread"] == "MainThread" and not e["name"].startswith("click."):
            rows.append([who, e["start"], e["end"], "  " * e["depth"] + e["name"].replace("sweep.", "")])
        elif e["kind"].startswith("atexit"):
            exits.setdefault(e["pid"], {})[e["kind"]] = e["start"]
    commands = [e for e in events if e["kind"] == "call" and e["name"] == "click.core.Command.invoke"]
    for pid, marks in exits.items():
        who = roles.get(pid, "?")
        last = marks.get("atexit-last", wall)
        if who == "main" and commands:
            done = max(e["end"] for e in commands)
            begun = marks.get("atexit-first", last)
            rows.append([who, done, begun, "the command returned: to the first atexit handler"])
            rows.append([who, begun, last, "atexit handlers (joblib/loky pool shutdown, MLflow's)"])
            rows.append([who, last, wall, "interpreter finalisation, to the process's end"])
        else:
            rows.append([who, last, last, "exits"])
    for r in rows:  # an import inside another watched import of the same process: indented
        if r[3].startswith("import ") and any(o is not r and o[0] == r[0] and o[3].startswith("import ")
                                              and o[1] <= r[1] and r[2] <= o[2] for o in rows):
            r[3] = "  " + r[3]
    print(f"\n{title}: {wall:.2f} s wall" + (f", of which training {training:.2f} s" if training is not None else ""))
    print(f"  {'process':8} {'from':>6} {'to':>6} {'secs':>6}  what")
    for who, start, end, what in sorted(rows, key=lambda r: (r[1], -r[2])):
        if end - start >= 0.01 or what.startswith(("interpreter", "exits")):  # below 10 ms: noise here
            print(f"  {who:8} {start:6.2f} {end:6.2f} {end - start:6.2f}  {what}")


# --- main ---------------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per command (median taken)")
    parser.add_argument("--store", choices=["known", "sweep"], default="known",
                        help="known: write the default sweep's runs as known runs; sweep: train it for real "
                             "at 1 epoch per run")
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DATA"),
                        help="MNIST folder, for the one-run sweep and --store sweep [default: $MNIST_DATA]")
    parser.add_argument("--spec", default=str(ROOT / "sweeps.yaml"), help="the default sweep file")
    parser.add_argument("--breakdown", action="store_true", help="also trace each command once: where time goes")
    parser.add_argument("--keep", metavar="DIR", help="build the store in DIR and keep it")
    args = parser.parse_args()

    work = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="sweep-latency-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        spec = yaml.safe_load(Path(args.spec).read_text())
        if args.store == "sweep":
            spec.setdefault("defaults", {})["epochs"] = 1
        spec_path = work / Path(args.spec).name  # the same name: the same sweep (parent run), its own store
        spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
        uri = f"sqlite:///{work}/mlflow.db"
        built = (known_store(spec_path, uri) if args.store == "known"
                 else swept_store(spec_path, uri, args.data_dir, work))
        data = ["--data-dir", args.data_dir] if args.data_dir else []
        env = environment({"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})

        print(f"store of the default sweep ({args.spec}): {built}; at {uri}")
        print(f"each figure: the median of {args.repeats} runs after one uncounted warm-up, as subprocesses; "
              f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f} at start")
        baseline = median_of([sys.executable, "-c", "import click"], work, env, args.repeats)
        commands = {
            "help": [*SWEEP, "--help"],
            "plan": [*SWEEP, "plan", str(spec_path), "--tracking-uri", uri],
            "status": [*SWEEP, "status", str(spec_path), "--tracking-uri", uri],
            "best": [*SWEEP, "best", str(spec_path), "--tracking-uri", uri],
        }
        figures = {name: median_of(command, work, env, args.repeats) for name, command in commands.items()}

        experiment = f"latency-one-run-{time.strftime('%Y%m%d-%H%M%S')}"  # its runs are new even with --keep
        lr = iter(round(0.0100 + i * 0.0001, 4) for i in range(1000))
        run = [*SWEEP, "run", str(work / "one.yaml"), "--tracking-uri", uri, *data]
        one_run_spec(work, experiment, next(lr))
        run_once(run, work, env)  # warm-up: the experiment and the sweep's parent run are made here
        walls, overheads = [], []
        for _ in range(args.repeats):
            one_run_spec(work, experiment, next(lr))
            wall = run_once(run, work, env)
            walls.append(wall)
            overheads.append(wall - last_training_seconds(uri, experiment))
        figures["run"] = statistics.median(overheads)

        print(f"\n{'command':44} {'seconds':>8} {'x import click':>14} {'target':>8}")
        print(f"{BASELINE:44} {baseline:8.3f} {1:14.1f}")
        labels = {"help": "sweep --help", "plan": "sweep plan SPEC", "status": "sweep status SPEC",
                  "best": "sweep best SPEC", "run": "sweep run, 1 run x 1 epoch: overhead"}
        for name, seconds in figures.items():
            target = f"< {TARGETS[name]:g}"
            verdict = "ok" if seconds < TARGETS[name] else "OVER"
            print(f"{labels[name]:44} {seconds:8.3f} {seconds / baseline:14.1f} {target:>8} {verdict}")
        print(f"  (sweep run: median wall {statistics.median(walls):.2f} s; overhead = wall - the run's "
              f"training_seconds)")

        if args.breakdown:
            tracer = work / "tracer"
            tracer.mkdir(exist_ok=True)
            for name, command in commands.items():
                print_breakdown(labels[name], *traced(command, work, env, tracer))
            one_run_spec(work, experiment, next(lr))
            wall, events = traced(run, work, env, tracer)
            print_breakdown(labels["run"].split(":")[0], wall, events, last_training_seconds(uri, experiment))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
