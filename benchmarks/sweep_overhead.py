"""Orchestration overhead of `sweep run`: the same short runs through the sweep and as plain calls.

Both ways train the same runs one after another in this process on the same data (already in
memory), so the difference is what the sweep adds per run: queue look-ups, claims, MLflow params,
per-epoch metrics, heartbeats, the agent file and its artifact copy. It is printed per run and
as a share of a 10-epoch reference run's training time, measured here too.

    python benchmarks/sweep_overhead.py [--data-dir DIR] [--runs N] [--epochs E]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from mnist_core import RunConfig, load_mnist, train
from sweep import tracking
from sweep.execute import Settings, run_sweep
from sweep.spec import parse_spec
from sweep.tracking.location import open_store


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    data = load_mnist(args.data_dir, "cpu", download=False)
    lrs = [round(0.01 * (i + 1), 3) for i in range(args.runs)]

    start = time.perf_counter()
    for lr in lrs:
        train(RunConfig(lr=lr, epochs=args.epochs), data)
    plain = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        uri = open_store(f"sqlite:///{tmp}/mlflow.db")
        tracking.ensure_experiment(uri, "overhead")  # store creation is a one-off, not per run
        spec = parse_spec(f"experiment: overhead\ndefaults: {{epochs: {args.epochs}}}\n"
                          f"grids:\n  g: {{lr: {lrs}}}\n", "overhead.yaml")
        start = time.perf_counter()
        summary = run_sweep(spec, uri, Settings(jobs=1, data_dir=args.data_dir))
        swept = time.perf_counter() - start
    assert summary.count("done") == args.runs, summary

    start = time.perf_counter()
    reference = train(RunConfig(epochs=10), data)
    ref_seconds = time.perf_counter() - start
    per_run = (swept - plain) / args.runs
    print(f"{args.runs} runs x {args.epochs} epochs, {threads} thread(s), jobs=1")
    print(f"plain trainer calls: {plain:6.2f} s    through sweep run: {swept:6.2f} s")
    print(f"orchestration overhead: {per_run:.3f} s per run")
    print(f"10-epoch reference run: {ref_seconds:.2f} s (test error {100 * reference.history[-1].test_error:.2f}%)")
    print(f"overhead / reference run: {100 * per_run / ref_seconds:.1f}%")


if __name__ == "__main__":
    main()
