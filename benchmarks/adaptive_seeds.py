"""Adaptive seeds against 10 fixed seeds on the lr x activation question, on the same seeds' runs.

Trains (or finds, in the store of --folder) the 4 activations x 4 learning rates grid with seeds
1..10 through `sweep run`. Then replays the adaptive rule (sweep.adaptive.seeds: min 2, max 10) over
those runs' results: the runs it would have trained are exactly runs of this store, since a seed's
run has the same key either way. Reports, side by side:

- network-epochs spent (epochs each run trained; a diverged run stops early) by each way;
- per question (each activation's best lr, and the activation at its best lr): decided or not, and
  the winner, as `sweep best` says it over 10 fixed seeds and over the adaptive runs;
- whether adaptive seeds reached every winner that 10 seeds decide, and never declared a winner
  that 10 seeds do not support.

    python benchmarks/adaptive_seeds.py [--folder DIR] [--epochs 10] [--data-dir DIR] [--tracking-uri URI]
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from sweep.adaptive.seeds import allocate, grid_questions
from sweep.results import fetch_results
from sweep.results.best import best_by
from sweep.spec import load_spec, parse_spec

GRID = """experiment: adaptive-seeds-benchmark
defaults: {{epochs: {epochs}, batch_size: 64, validation: 10000}}
seeds: {seeds}
grids:
  lr_by_activation:
    activation: [relu, tanh, sigmoid, leaky_relu]
    lr: [0.03, 0.1, 0.3, 1.0]
"""


def verdicts(best) -> dict:
    """question -> (decided, winner, n) from a best_by table grouped by activation."""
    found = {}
    for group, c in best.within.items():
        found[f"lr for {group}"] = (c.distinguishable is True, c.ahead, max(c.ahead_summary.n, c.behind_summary.n))
    if best.across is not None:
        c = best.across
        found["activation"] = (c.distinguishable is True, c.ahead, max(c.ahead_summary.n, c.behind_summary.n))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default="adaptive-seeds-benchmark",
                        help="folder of the sweep file and store; a later call reuses its runs [default: %(default)s]")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per run [default: %(default)s]")
    parser.add_argument("--min", type=int, default=2, help="adaptive seeds' min [default: %(default)s]")
    parser.add_argument("--max", type=int, default=10,
                        help="adaptive seeds' max, and the fixed seeds [default: %(default)s]")
    parser.add_argument("--tracking-uri", default=None,
                        help="the store of the fixed seeds' runs [default: FOLDER/mlflow.db]")
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DATA"), help="MNIST folder [default: $MNIST_DATA]")
    args = parser.parse_args()
    folder = Path(args.folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    fixed_file = folder / "fixed.yaml"
    fixed_file.write_text(GRID.format(epochs=args.epochs, seeds=list(range(1, args.max + 1))))
    uri = args.tracking_uri or f"sqlite:///{(folder / 'mlflow.db').as_posix()}"
    command = [sys.executable, "-m", "sweep.cli", "run", str(fixed_file), "--tracking-uri", uri]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    print(f"$ {' '.join(command)}", flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)

    fixed = load_spec(fixed_file)
    adaptive = parse_spec(GRID.format(epochs=args.epochs, seeds=f"{{min: {args.min}, max: {args.max}}}"),
                          str(folder / "adaptive.yaml"))
    runs = fetch_results(fixed, uri).runs
    ranked = runs["outcome"] == "done"
    values = dict(zip(runs["key"], np.where(ranked, runs["val_error"], math.nan)))
    allocation = allocate(adaptive.adaptive, grid_questions(adaptive, adaptive.grids), values)
    assert allocation.complete, "every run of the fixed seeds is finished: the replay must end"
    chosen = runs[runs["key"].isin(allocation.wanted)]
    epochs = {"fixed": float(runs["epochs_completed"].sum()), "adaptive": float(chosen["epochs_completed"].sum())}

    said = {"fixed": verdicts(best_by(runs, ["activation"])),
            "adaptive": verdicts(best_by(chosen, ["activation"], seeds=adaptive.adaptive))}
    print(f"\nlr x activation, {args.epochs} epochs, validation error; fixed: seeds 1..{args.max}; adaptive: "
          f"min {args.min}, max {args.max}\n")
    print(f"{'question':<22} {'10 fixed seeds':<30} {'adaptive seeds':<30}")
    reached, unsupported = True, False
    for question, (decided, winner, n) in said["fixed"].items():
        a_decided, a_winner, a_n = said["adaptive"][question]
        shown = [f"{'decided' if d else 'open'}: {w} (n={k})" for d, w, k in ((decided, winner, n),
                                                                             (a_decided, a_winner, a_n))]
        print(f"{question:<22} {shown[0]:<30} {shown[1]:<30}")
        if decided and not (a_decided and a_winner == winner):
            reached = False
        if a_decided and not (decided and a_winner == winner):
            unsupported = True
    print(f"\nruns: fixed {len(runs)}, adaptive {len(chosen)} (spared {len(runs) - len(chosen)})")
    print(f"network-epochs: fixed {epochs['fixed']:.0f}, adaptive {epochs['adaptive']:.0f}: "
          f"adaptive/fixed = {epochs['adaptive'] / epochs['fixed']:.2f}")
    print(f"every winner 10 seeds decide, adaptive seeds decide too: {'yes' if reached else 'NO'}")
    print(f"a winner declared that 10 seeds do not support: {'YES' if unsupported else 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
