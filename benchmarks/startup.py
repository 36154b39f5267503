"""What a one-run sweep costs over training that run by hand: `python -m mnist_core --epochs 1` and a
one-run, one-epoch `sweep run` of the same network in a fresh folder, side by side in one invocation.

Each command runs as a subprocess, as the shell runs it, --repeats times in turn (after one uncounted
warm-up of each); printed per command: the median wall time and the median CPU time of the command
and the processes it waited for (its workers). Then the sweep's extra seconds (issue 21: at most
1.5 s) and the store time of its run: how long its worker waited on the store requests it made for
it (claim, params, inputs, metrics, agent, finish, and the reads among them; issue 21: at most 50
ms), measured under the tracer of latency.py; a local worker's requests are made by the sweep's
process (sweep.tracking.relay), so that time holds theirs and the trip there. A run's first requests
in a process also pay for SQLAlchemy compiling each statement once, so a second traced sweep of
several runs (of different widths: solo, one job each) one at a time says what each run after the
first costs. With --breakdown the one-run sweep's timeline is printed too: imports, store calls, worker
start, data, claim, training, agent.

    python benchmarks/startup.py [--repeats 5] [--data-dir DIR] [--threads N] [--breakdown]
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from latency import CALLS, SWEEP, environment, print_breakdown, role, run_once, traced

ONE_RUN = "experiment: startup\ndefaults: {epochs: 1}\ngrids:\n  one: {lr: [0.01]}\n"  # mnist_core's defaults
SEVERAL = ("experiment: several\ndefaults: {epochs: 1}\n"
           "grids:\n  several: {lr: [0.01], width: [40, 45, 50, 55, 60, 65]}\n")  # one shape each: a job each
TARGET_SECONDS, STORE_TARGET_MS = 1.5, 50
OPENING = "sweep.tracking.client"  # its client made, the store opened (MLflow's schema checked)
# The store requests a run's worker makes for it: the queue's store interface (reads included), through
# the sweep's process (a local worker's RelayStore: the time the worker waits for each) or its own client.
STORES = {"sweep.tracking.mlflow_store": "MlflowStore", "sweep.tracking.relay": "RelayStore"}
RUN_REQUESTS = ("create_run", "write", "set_status", "log_artifact", "log_inputs", "find", "delete_run")
REQUEST_NAMES = {f"{module}.{store}.{r}" for module, store in STORES.items() for r in RUN_REQUESTS}


def timed(command: list, cwd: Path, env: dict) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, its own and its waited-for children's) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = run_once(command, cwd, env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def fresh(work: Path, name: str) -> Path:
    folder = work / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "one.yaml").write_text(ONE_RUN)
    (folder / "several.yaml").write_text(SEVERAL)
    return folder


def worker_requests(events: list) -> list:
    """The store requests the workers made for their runs, in time order (the outermost: a
    RelayStore's read is made by a MlflowStore inside it)."""
    first = next(e for e in events if e["kind"] == "process")
    workers = {e["pid"] for e in events if e["kind"] == "process" and role(e["name"], e is first).startswith("worker")}
    requests = [e for e in events if e["pid"] in workers and e["kind"] == "call" and e["name"] in REQUEST_NAMES]
    return sorted((e for e in requests if not inside(e, requests)), key=lambda e: e["start"])


def inside(e: dict, outer: list) -> bool:
    return any(o is not e and o["pid"] == e["pid"] and o["thread"] == e["thread"] and o["start"] <= e["start"]
               and e["end"] <= o["end"] for o in outer)


def store_time_per_run(events: list) -> tuple[list, list]:
    """Seconds of store requests of each run that was the first of its worker process, and of each
    later one (a run's requests: from its claim to the next claim in that process)."""
    claims = [e for e in events if e["name"] == "sweep.queue.claims.claim"]
    runs = {}
    for e in worker_requests(events):
        started = sum(c["pid"] == e["pid"] and c["start"] <= e["start"] for c in claims)
        runs.setdefault(e["pid"], {}).setdefault(started, 0.0)
        runs[e["pid"]][started] += e["end"] - e["start"]
    seconds = [[total for _, total in sorted(mine.items())] for mine in runs.values()]
    return [s[0] for s in seconds], [t for s in seconds for t in s[1:]]


def store_time(events: list) -> tuple[float, float, int]:
    """The worker's store requests for its run (seconds, less opening the store), opening the store
    in the worker (importing MLflow where a request did, making its client: seconds), and the number
    of requests."""
    requests = worker_requests(events)
    workers = {e["pid"] for e in requests}
    clients = [e for e in events if e["pid"] in workers and e["name"] == OPENING]
    loaded = [e for e in events if e["pid"] in workers and e["kind"] == "import"]
    imports = [e for e in loaded if inside(e, requests) and not inside(e, clients) and not inside(e, loaded)]
    opening = sum(e["end"] - e["start"] for e in clients + imports)
    return sum(e["end"] - e["start"] for e in requests) - opening, opening, len(requests)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per command (medians taken)")
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DATA"),
                        help="the MNIST folder [default: $MNIST_DATA]")
    parser.add_argument("--threads", type=int, help="train with this many torch threads in both (mnist_core "
                        "--threads N, the sweep --jobs CORES/N): on a busy machine 1 keeps the training alike "
                        "[default: each command's own choice: all cores for one run]")
    parser.add_argument("--breakdown", action="store_true", help="print the traced sweep's timeline too")
    args = parser.parse_args()
    if not args.data_dir:
        sys.exit("give --data-dir DIR or set MNIST_DATA: both commands train on real MNIST")
    CALLS.setdefault("mlflow.store.tracking.sqlalchemy_store", ["SqlAlchemyStore.__init__"])  # for --breakdown
    for module, store in STORES.items():
        CALLS[module] = [f"{store}.{r}" for r in RUN_REQUESTS]

    env = environment()
    data = ["--data-dir", str(Path(args.data_dir).resolve())]
    work = Path(tempfile.mkdtemp(prefix="sweep-startup-"))
    try:
        plain, swept, first = ("python -m mnist_core --epochs 1", "sweep run (1 run x 1 epoch, fresh folder)",
                               "  the same, this user's first store")
        threads = ["--threads", str(args.threads)] if args.threads else []
        jobs = ["--jobs", str(max(1, len(os.sched_getaffinity(0)) // args.threads))] if args.threads else []
        commands = {plain: [sys.executable, "-m", "mnist_core", "--epochs", "1", "--no-download", *data, *threads],
                    swept: [*SWEEP, "run", "one.yaml", *data, *jobs], first: [*SWEEP, "run", "one.yaml", *data, *jobs]}
        figures = {name: [] for name in commands}
        for i in range(args.repeats + 1):  # the first round is the uncounted warm-up
            for name, command in commands.items():
                folder = fresh(work, f"{len(figures[name])}-{i}")
                cache = {"XDG_CACHE_HOME": str(folder / "cache")} if name == first else {}  # no template store yet
                wall_cpu = timed(command, folder, {**env, **cache})
                if i:
                    figures[name].append(wall_cpu)
        (work / "tracer").mkdir()
        wall, events = traced(commands[swept], fresh(work, "traced"), env, work / "tracer")
        run_store, opening, requests = store_time(events)
        several = [*SWEEP, "run", "several.yaml", *data, "--jobs", "1"]
        _, several_events = traced(several, fresh(work, "several"), env, work / "tracer")
        firsts, laters = store_time_per_run(several_events)

        print(f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f} at the end; medians of "
              f"{args.repeats} runs after one warm-up each, the commands taking turns; "
              f"{args.threads or 'default'} torch thread(s)")
        print(f"\n{'command':44} {'wall s':>7} {'CPU s':>7}")
        medians = {}
        for name, runs in figures.items():
            medians[name] = [statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)]
            print(f"{name:44} {medians[name][0]:7.2f} {medians[name][1]:7.2f}")
        extra = medians[swept][0] - medians[plain][0]
        print(f"{'the sweep, over mnist_core':44} {extra:7.2f} {medians[swept][1] - medians[plain][1]:7.2f}   "
              f"target: at most {TARGET_SECONDS} s wall: {'met' if extra <= TARGET_SECONDS else 'NOT MET'}")
        print(f"\nstore time of the run (traced sweep, {wall:.2f} s wall): {1000 * run_store:.0f} ms in "
              f"{requests} requests of its worker, target at most {STORE_TARGET_MS} ms: "
              f"{'met' if 1000 * run_store <= STORE_TARGET_MS else 'NOT MET'}; opening the store in that "
              f"process besides: {1000 * opening:.0f} ms")
        if laters:
            firsts_ms = " and ".join(f"{1000 * s:.0f}" for s in firsts)
            worst = 1000 * max(laters)
            print(f"store time per run in a sweep of {len(firsts) + len(laters)} runs one at a time (traced, "
                  f"`--jobs 1`): a worker's first run {firsts_ms} ms (opening the store included, where the "
                  f"worker opens it); each later run median {1000 * statistics.median(laters):.0f} ms, at most "
                  f"{worst:.0f} ms, target at most {STORE_TARGET_MS} ms: "
                  f"{'met' if worst <= STORE_TARGET_MS else 'NOT MET'}")
        if args.breakdown:
            print_breakdown("sweep run, 1 run x 1 epoch, fresh folder (traced)", wall, events)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
