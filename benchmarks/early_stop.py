"""ASHA early stopping against the full grid on the lr x activation grid (4 activations x 7 learning
rates, reference network, 10 epochs, seed 1), each through `sweep run` into a fresh SQLite store:

(a) the full grid, every run trained to the end;
(b) ASHA (`early_stop: {type: asha, min_epochs: 1, reduction_factor: 3}`) over the whole grid: every
    run is judged against the runs of every activation;
(c) ASHA within each activation: the same early_stop with `by: [activation]`, so that a run is
    judged against the runs of its own activation only.

Network-epochs are the sum of `epochs_completed` over the runs. Targets for ASHA: at most 40% of the
full grid's network-epochs, and per activation the full grid's best lr, or an lr whose full-grid
final test error is within 0.2 points of that activation's best. ASHA's best lr is the best among
its runs that completed (stopped runs are not ranked, as in `sweep best`).

    python benchmarks/early_stop.py [--data-dir DIR] [--jobs N] [--engine auto|solo|fused]
                                    [--epochs 10] [--lrs 7] [--seed 1] [--min-epochs 1] [--reduction-factor 3]
    python benchmarks/early_stop.py --epochs 2 --lrs 3     # a quick try
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import yaml

from mnist_core.config import ACTIVATIONS
from mnist_core.files import MnistDataError, MnistDataMissing, check_mnist
from sweep import tracking
from sweep.execute import Settings, run_sweep
from sweep.results import fetch_results
from sweep.results.best import best_by
from sweep.spec import parse_spec
from sweep.tracking.location import open_store

LRS = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
EPOCHS_TARGET, LR_TARGET = 0.40, 0.2   # share of the full grid's network-epochs; points of test error


def spec_text(name: str, lrs: list, epochs: int, seed: int, early_stop: dict | None, per_activation: bool) -> str:
    """The sweep file; every value written out (a sweep file refuses YAML aliases, hence the copies)."""
    grids = {"lr_by_activation": {"activation": list(ACTIVATIONS), "lr": lrs}}
    if early_stop:
        grids["lr_by_activation"]["early_stop"] = {**early_stop, **({"by": ["activation"]} if per_activation else {})}
    return yaml.safe_dump({"experiment": name, "defaults": {"epochs": epochs, "seed": seed}, "grids": grids},
                          sort_keys=False)


def sweep(name: str, text: str, settings: Settings, tmp: str):
    """Run one sweep into its own fresh store; its runs (fetch_results) and wall time."""
    spec = parse_spec(text, f"{name}.yaml")
    uri = open_store(f"sqlite:///{tmp}/{name}/mlflow.db")
    tracking.ensure_experiment(uri, spec.experiment)  # creating the store is not part of the timing
    start = time.perf_counter()
    summary = run_sweep(spec, uri, settings)
    seconds = time.perf_counter() - start
    runs = fetch_results(spec, uri).runs
    if summary.exit_code != 0 or not runs["outcome"].isin(("done", "stopped", "diverged")).all():
        failed = [f"{o.name}: {o.error}" for o in summary.failed] + [f"{n}: {why}" for n, why in summary.not_done]
        sys.exit(f"sweep {name} did not finish every run (exit code {summary.exit_code}): {'; '.join(failed)}")
    counts = runs["outcome"].value_counts()
    print(f"  {name}: {len(runs)} runs, {runs['epochs_completed'].sum():.0f} network-epochs, {seconds:.1f} s "
          f"({', '.join(f'{n} {o}' for o, n in counts.items())})", flush=True)
    return runs, seconds


def best_lrs(runs) -> dict:
    """activation -> (best lr, its final test error) among the runs that completed."""
    table = best_by(runs, ["activation"], metric="test_error").table
    return {row.activation: (float(row.lr), float(row.test_error)) for row in table.itertuples()}


def lr_table(title: str, full, asha) -> bool:
    """Per activation: the full grid's best lr against ASHA's; True when every activation passes."""
    full_error = {(r.activation, float(r.lr)): r.test_error for r in full.itertuples() if r.outcome == "done"}
    full_best, asha_best = best_lrs(full), best_lrs(asha)
    print(f"\n{title}")
    print(f"{'activation':11s} {'full: best lr':>13s} {'error':>7s} | {'ASHA: best lr':>13s} {'full-grid error':>15s} "
          f"{'gap':>6s}  verdict  ASHA runs done/stopped/diverged")
    passed = []
    for activation in ACTIVATIONS:
        mine = asha[asha["activation"] == activation]["outcome"]
        counts = "/".join(str(int((mine == o).sum())) for o in ("done", "stopped", "diverged"))
        lr, error = full_best.get(activation, (float("nan"), float("nan")))
        head = f"{activation:11s} {lr:13g} {100 * error:6.2f}% |"
        if activation not in asha_best:
            passed.append(False)
            print(f"{head} {'none':>13s} {'':>15s} {'':>6s}  FAIL     {counts}  (no run completed under ASHA)")
            continue
        asha_lr = asha_best[activation][0]
        its_error = full_error.get((activation, asha_lr), float("nan"))
        gap = 100 * (its_error - error)
        ok = asha_lr == lr or gap <= LR_TARGET + 1e-9
        passed.append(ok)
        print(f"{head} {asha_lr:13g} {100 * its_error:14.2f}% {gap:6.2f}  {'PASS' if ok else 'FAIL':7s}  {counts}")
    return all(passed)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DATA"), help="MNIST folder [$MNIST_DATA]")
    parser.add_argument("--jobs", type=int, default=None, help="parallel workers [sweep run's default: the cores]")
    parser.add_argument("--engine", default="auto", choices=["auto", "solo", "fused"], help="[auto: fused groups]")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lrs", type=int, default=len(LRS), help=f"the first N of {LRS}")
    parser.add_argument("--seed", type=int, default=1, help="training seed of every run")
    parser.add_argument("--min-epochs", type=int, default=1)
    parser.add_argument("--reduction-factor", type=int, default=3)
    args = parser.parse_args()
    if not (1 <= args.lrs <= len(LRS)) or args.epochs < 1 or args.min_epochs < 1 or args.reduction_factor < 2:
        parser.error(f"--lrs must be 1..{len(LRS)}, --epochs and --min-epochs >= 1, --reduction-factor >= 2")
    lrs = LRS[:args.lrs]
    asha = {"type": "asha", "min_epochs": args.min_epochs, "reduction_factor": args.reduction_factor}
    try:  # one clear message, not one per run
        data_dir = str(check_mnist(args.data_dir))
    except (MnistDataMissing, MnistDataError) as exc:
        sys.exit(f"error: {str(exc).splitlines()[0]}")
    settings = Settings(jobs=args.jobs, engine=args.engine, data_dir=data_dir)
    print(f"{len(ACTIVATIONS)} activations x {len(lrs)} lrs {lrs}, {args.epochs} epochs, seed {args.seed}, "
          f"engine {args.engine}, jobs {args.jobs or 'default'}; ASHA min_epochs {args.min_epochs}, "
          f"reduction_factor {args.reduction_factor}", flush=True)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: sweep(name, spec_text(name, lrs, args.epochs, args.seed, stop, per), settings, tmp)
                   for name, stop, per in (("full", None, False), ("asha", asha, False),
                                           ("asha_per_activation", asha, True))}
    total = time.perf_counter() - start

    full, full_seconds = results["full"]
    lr_ok = {"asha": lr_table("ASHA over the whole grid (every activation in one pool)", full, results["asha"][0]),
             "asha_per_activation": lr_table("ASHA within each activation (by: [activation])", full,
                                             results["asha_per_activation"][0])}
    epochs = {name: runs["epochs_completed"].sum() for name, (runs, _) in results.items()}
    share = {name: epochs[name] / epochs["full"] for name in results}
    asha_names = list(lr_ok)

    def row(label: str, cells: list[str], note: str = "") -> None:
        print(f"{label:28s}" + "".join(f"{c:>16s}" for c in cells) + note)

    print()
    row("", ["full grid", "ASHA", "ASHA per act."])
    row("network-epochs", [f"{epochs[n]:.0f}" for n in results])
    row("  share of the full grid", [f"{100 * share[n]:.1f}%" for n in results], f"   (target <= {EPOCHS_TARGET:.0%})")
    row("wall time (s)", [f"{results[n][1]:.1f}" for n in results])
    row("  share of the full grid", [f"{100 * results[n][1] / full_seconds:.1f}%" for n in results])
    verdicts = {f"network-epochs <= {EPOCHS_TARGET:.0%}": {n: share[n] <= EPOCHS_TARGET for n in asha_names},
                f"best lr (within {LR_TARGET} points)": lr_ok}
    verdicts["both targets"] = {n: all(v[n] for v in verdicts.values()) for n in asha_names}
    for label, verdict in verdicts.items():
        row(label, [""] + ["PASS" if verdict[n] else "FAIL" for n in asha_names])
    print(f"\nwhole benchmark: {total:.1f} s (the three sweeps, store creation and reading included)")


if __name__ == "__main__":
    main()
