"""Fusing across activations: the 28-run lr x activation grid (4 activations x 7 learning rates,
reference network 784-50-50-10, batch 64, seed 1, whole-set train and test evaluation every epoch)
trained with the fused engine in this one process, grouped two ways side by side:

  (a) by activation: one fused model per activation (7 networks each), as `sweep run` groups now;
  (b) mixed: models of several activations, each activation a slice of the members:
      mixed-16  the 28 as one group split as the sweep splits a group over --chunk-size (16): two
                models of 14 networks, 2 activations each;
      mixed-28  all 28 networks in one model.

With --seeds N the 7 lrs of an activation take seeds 1..N in turn (still 28 networks): the members
of a model then draw a batch each, (K, 64, 784), for batched products, as in a sweep with seeds.

Each mixed model is timed right next to the by-activation models of the same networks, (a) and (b)
alternating which goes first, so that a change in the machine's load (it may be shared) falls on
both; the spread over --repeats says how much the load moved. Rates are network-epochs per wall
second; "CPU s" compares the CPU seconds of this process instead, which other processes' load
sways less than wall time. "2 workers" is the wall time of a grouping's jobs shared
out to two workers (the longest job first, to the worker free first), as `sweep run --jobs 2` runs
them on two cores with one thread each: jobs of equal size keep both busy.

    python benchmarks/activation_fused.py [--data-dir DIR] [--threads N] [--device D]
                                          [--epochs E] [--seeds N] [--repeats R] [--chunk-size N]
"""
from __future__ import annotations

import argparse
import heapq
import statistics
import time

import torch

from mnist_core import ACTIVATIONS, RunConfig, load_mnist, resolve_device
from mnist_core.fused import DEFAULT_CHUNK_SIZE, train_fused

LRS = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]


def chunks(members: list, size: int) -> list[list]:
    """Near-equal chunks of at most `size`, as the sweep splits a large group."""
    n = -(-len(members) // size)
    base, extra = divmod(len(members), n)
    starts = [i * base + min(i, extra) for i in range(n + 1)]
    return [members[a:b] for a, b in zip(starts, starts[1:])]


def by_activation(networks: list) -> list[list]:
    """One job per activation, in the order the activations first appear."""
    groups: dict[str, list] = {}
    for config in networks:
        groups.setdefault(config.activation, []).append(config)
    return list(groups.values())


def run_jobs(jobs: list[list], data, device: torch.device) -> list[tuple[float, float]]:
    """Wall and CPU seconds (this process's, every thread) of training each job."""
    times = []
    for job in jobs:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter(), time.process_time()
        train_fused(job, data, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def two_workers(job_seconds: list[float]) -> float:
    """Wall time of the jobs on two workers, the longest first to the worker free first."""
    workers = [0.0, 0.0]
    for seconds in sorted(job_seconds, reverse=True):
        heapq.heappush(workers, heapq.heappop(workers) + seconds)
    return max(workers)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def compare(mixed_jobs: list[list], data, device, repeats: int, network_epochs: int) -> dict:
    """Per repeat: each mixed job and the by-activation jobs of its networks, next to each other."""
    out = {f"{side} {clock}": [] for side in "ab" for clock in ("wall", "cpu")}
    out.update({"a 2 workers": [], "b 2 workers": []})
    for repeat in range(repeats):
        times = {"a": [], "b": []}
        for unit, mixed in enumerate(mixed_jobs):
            sides = [("a", by_activation(mixed)), ("b", [mixed])]
            for side, jobs in sides[::-1] if (repeat + unit) % 2 else sides:
                times[side] += run_jobs(jobs, data, device)
        for side, jobs in times.items():
            walls, cpus = zip(*jobs)
            out[f"{side} wall"].append(network_epochs / sum(walls))
            out[f"{side} cpu"].append(network_epochs / sum(cpus))
            out[f"{side} 2 workers"].append(two_workers(list(walls)))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="MNIST folder [default: $MNIST_DATA, else ./data]")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (a worker of `sweep run --jobs 2` on 2 cores has 1) [1]")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N [cpu]")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per network [1]")
    parser.add_argument("--seeds", type=int, default=1, help="the lrs of an activation take seeds 1..N in turn [1]")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of each comparison [5]")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="most networks per fused model")
    args = parser.parse_args()
    for name in ("threads", "epochs", "seeds", "repeats", "chunk_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = load_mnist(args.data_dir, device, download=False)
    grid = [RunConfig(activation=a, lr=lr, seed=1 + i % args.seeds, epochs=args.epochs)
            for a in ACTIVATIONS for i, lr in enumerate(LRS)]
    network_epochs = len(grid) * args.epochs
    train_fused([RunConfig(activation=a, epochs=1, lr=0.03) for a in ACTIVATIONS], data, device)  # warm-up

    seeds = f", seeds 1-{args.seeds}" if args.seeds > 1 else ""
    print(f"torch {torch.__version__}, {args.threads} thread(s), {device}; {len(grid)} networks "
          f"({len(ACTIVATIONS)} activations x {len(LRS)} lrs{seeds}), {args.epochs} epoch(s) each; (a) by activation: "
          f"models of {'/'.join(str(len(j)) for j in by_activation(grid))}; median [min-max] of {args.repeats} repeats")
    print(f"{'(b)':16s} {'network-epochs/s (a)':>20s} {'(b)':>17s} {'b / a':>17s} {'b / a, CPU s':>17s} "
          f"{'2 workers, s (a)':>17s} {'(b)':>17s}")
    for name, jobs in ((f"mixed-{args.chunk_size}", chunks(grid, args.chunk_size)), (f"mixed-{len(grid)}", [grid])):
        r = compare(jobs, data, device, args.repeats, network_epochs)
        ratios = {clock: [b / a for a, b in zip(r[f"a {clock}"], r[f"b {clock}"])] for clock in ("wall", "cpu")}
        label = f"{name} ({'/'.join(str(len(j)) for j in jobs)})"
        print(f"{label:16s} {spread(r['a wall']):>20s} {spread(r['b wall']):>17s} {spread(ratios['wall']):>17s} "
              f"{spread(ratios['cpu']):>17s} {spread(r['a 2 workers']):>17s} {spread(r['b 2 workers']):>17s}")


if __name__ == "__main__":
    main()
