"""Grid vs random vs TPE at the same budget of trials, over several sampler seeds, each method x seed
through `sweep run` into its own fresh SQLite store (its own experiment).

The space: activation (all four) x lr log-uniform 0.001-1 x width 16-256 x depth 1-4 (integers,
uniform); every trial trains --epochs epochs with training seed 1. Random and TPE are the sweep
file's searches (`method: random|tpe`, `seed`: the sampler seed). The grid has no sampler: it is the
smallest grid over the same four settings with at least --budget points (4 activations x n levels of
lr, width and depth, each level the middle of one of n equal parts of the range, log for lr and
width), whose points are run in an order shuffled by the seed, the first --budget of them.

TPE starts with random trials (sweep/search.py: min(10, max(2, trials // 3)) of them, 8 of 24) drawn
as the random search draws them: with the same seed its first trials are the random search's, so the
two curves part only after that start-up (it prints how many leading trials were the same).

Best-so-far is the lowest final test error after each trial, in trial order (the `trial` number of a
search; the shuffled order of the grid); diverged runs do not count. It prints the final best-so-far
per method and seed and their mean, and draws the mean over seeds per method, with the min-max band,
against the trial (test error in %, log axis) into --out (docs/search_methods.png).

    python benchmarks/search_methods.py [--data-dir DIR] [--jobs N] [--engine auto|solo|fused]
        [--budget 24] [--epochs 3] [--seeds 3] [--out PNG]   # --budget 6 --epochs 1 --seeds 2: a quick try
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from mnist_core.config import ACTIVATIONS
from mnist_core.files import MnistDataError, MnistDataMissing, check_mnist
from sweep import tracking
from sweep.adaptive.search import best_so_far
from sweep.execute import Settings, run_sweep
from sweep.results import fetch_results
from sweep.spec import parse_spec
from sweep.tracking.location import open_store

METHODS = ("grid", "random", "tpe")
LR, WIDTH, DEPTH = (0.001, 1.0), (16, 256), (1, 4)
SPACE = {"activation": list(ACTIVATIONS),
         "lr": {"distribution": "log_uniform_values", "min": LR[0], "max": LR[1]},
         "width": {"distribution": "int_uniform", "min": WIDTH[0], "max": WIDTH[1]},
         "depth": {"distribution": "int_uniform", "min": DEPTH[0], "max": DEPTH[1]}}
OUT = Path(__file__).resolve().parent.parent / "docs" / "search_methods.png"


def middles(low: float, high: float, n: int, log: bool) -> list[float]:
    """The middles of n equal parts of [low, high] (in log space when `log`)."""
    f, inv = (math.log, math.exp) if log else (float, float)
    step = (f(high) - f(low)) / n
    return [inv(f(low) + (i + 0.5) * step) for i in range(n)]


def grid_levels(budget: int) -> dict:
    """The smallest grid over the four settings (n levels of each number) with at least `budget` points."""
    return next(levels for levels in map(levels_of, itertools.count(2))
                if math.prod(len(v) for v in levels.values()) >= budget)


def levels_of(n: int) -> dict:
    """Every activation and n levels of lr, width and depth: the middles of n equal parts of each range
    (log for lr and width), lr to one significant digit, width and depth rounded half up; no repeats."""
    def once(values):
        return list(dict.fromkeys(values))

    return {"activation": list(ACTIVATIONS),
            "lr": once(float(f"{lr:.0e}") for lr in middles(*LR, n, log=True)),
            "width": once(math.floor(w + 0.5) for w in middles(*WIDTH, n, log=True)),
            "depth": once(math.floor(d + 0.5) for d in middles(*DEPTH, n, log=False))}


def spec_text(method: str, seed: int, budget: int, epochs: int) -> str:
    doc = {"experiment": f"{method}-seed{seed}", "defaults": {"epochs": epochs, "seed": 1}}
    if method == "grid":  # the first `budget` points in the seed's order: one single-point grid each
        levels = grid_levels(budget)
        points = list(itertools.product(*levels.values()))
        random.Random(seed).shuffle(points)
        doc["grids"] = {f"t{i:03d}": dict(zip(levels, point)) for i, point in enumerate(points[:budget])}
    else:
        doc["searches"] = {method: {"method": method, "trials": budget, "seed": seed, "space": SPACE}}
    return yaml.safe_dump(doc, sort_keys=False)


def in_trial_order(runs):
    """The runs in trial order, with `error`: the final test error, NaN for a run that diverged."""
    order = runs["trial"] if runs["search"].ne("").any() else runs["grids"].str[1:].astype(int)  # grid t000, t001..
    runs = runs.assign(order=order.astype(int)).sort_values("order")
    return runs.assign(error=runs["test_error"].where(runs["outcome"].isin(("done", "duplicate"))))


def run_one(method: str, seed: int, args, settings: Settings, tmp: str):
    spec = parse_spec(spec_text(method, seed, args.budget, args.epochs), f"{method}-seed{seed}.yaml")
    uri = open_store(f"sqlite:///{tmp}/{method}-{seed}/mlflow.db")
    tracking.ensure_experiment(uri, spec.experiment)
    start = time.perf_counter()
    summary = run_sweep(spec, uri, settings)
    seconds = time.perf_counter() - start
    runs = fetch_results(spec, uri).runs
    if summary.exit_code != 0 or len(runs) != args.budget or runs["outcome"].isin(("failed", "missing")).any():
        failed = [f"{o.name}: {o.error}" for o in summary.failed] + [f"{n}: {why}" for n, why in summary.not_done]
        sys.exit(f"{method} seed {seed} did not finish every trial (exit code {summary.exit_code}, "
                 f"{len(runs)} runs): {'; '.join(failed)}")
    runs = in_trial_order(runs)
    curve = best_so_far(runs["error"].tolist())
    if runs["error"].notna().any():
        best = runs.loc[runs["error"].idxmin()]
        what = (f"best {100 * best['error']:.2f}% ({best['activation']}, lr {best['lr']:.3g}, "
                f"width {best['width']:.0f}, depth {best['depth']:.0f})")
    else:
        what = "every trial diverged"
    print(f"  {method:6s} seed {seed}: {seconds:6.1f} s, {what}", flush=True)
    return curve, seconds, list(runs[list(SPACE)].itertuples(index=False))


def plot(curves: dict, path: Path, epochs: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for method, by_seed in curves.items():
        values = 100 * np.array(list(by_seed.values()), dtype=float)
        x = np.arange(1, values.shape[1] + 1)
        line, = ax.step(x, np.nanmean(values, axis=0), where="post", label=f"{method} (mean of {len(values)} seeds)")
        ax.fill_between(x, np.nanmin(values, axis=0), np.nanmax(values, axis=0), step="post",
                        color=line.get_color(), alpha=0.2)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("best-so-far test error (%)")
    per_trial = f"{epochs} epoch{'s' if epochs > 1 else ''} per trial"
    ax.set_title(f"Grid vs random vs TPE: best test error so far ({per_trial}; band: min-max)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DATA"), help="MNIST folder [$MNIST_DATA]")
    parser.add_argument("--jobs", type=int, default=None, help="parallel workers [sweep run's default: the cores]")
    parser.add_argument("--engine", default="auto", choices=["auto", "solo", "fused"], help="[auto: fused groups]")
    parser.add_argument("--budget", type=int, default=24, help="trials per method and seed")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trial")
    parser.add_argument("--seeds", type=int, default=3, help="sampler seeds 1..N (the grid's order)")
    parser.add_argument("--out", type=Path, default=OUT, help="the figure [docs/search_methods.png]")
    args = parser.parse_args()
    if args.budget < 1 or args.epochs < 1 or args.seeds < 1:
        parser.error("--budget, --epochs and --seeds must be >= 1")
    try:  # one clear message, not one per run
        data_dir = str(check_mnist(args.data_dir))
    except (MnistDataMissing, MnistDataError) as exc:
        sys.exit(f"error: {str(exc).splitlines()[0]}")
    settings = Settings(jobs=args.jobs, engine=args.engine, data_dir=data_dir)
    levels = grid_levels(args.budget)
    size = math.prod(len(v) for v in levels.values())
    print(f"budget {args.budget} trials x {args.epochs} epochs, sampler seeds 1..{args.seeds}, engine {args.engine}, "
          f"jobs {args.jobs or 'default'}")
    print(f"grid: {' x '.join(f'{k} {v}' for k, v in levels.items())} = {size} points, "
          f"the first {min(args.budget, size)} in each seed's shuffled order", flush=True)

    start = time.perf_counter()
    curves, trials, seconds = {m: {} for m in METHODS}, {m: {} for m in METHODS}, {m: 0.0 for m in METHODS}
    with tempfile.TemporaryDirectory() as tmp:
        for seed, method in itertools.product(range(1, args.seeds + 1), METHODS):
            curves[method][seed], took, trials[method][seed] = run_one(method, seed, args, settings, tmp)
            seconds[method] += took
    plot(curves, args.out, args.epochs)
    total = time.perf_counter() - start

    seeds = range(1, args.seeds + 1)
    checkpoints = sorted({max(1, args.budget * q // 4) for q in (1, 2, 3)})
    print(f"\nfinal best-so-far test error after {args.budget} trials (%)")
    print(f"{'method':8s} " + " ".join(f"{f'seed {s}':>8s}" for s in seeds) + f" {'mean':>8s}   "
          + " ".join(f"{f'mean@{c}':>8s}" for c in checkpoints) + f" {'seconds':>8s}")
    for method in METHODS:
        final = [100 * curves[method][s][-1] for s in seeds]
        at = [np.nanmean([100 * curves[method][s][c - 1] for s in seeds]) for c in checkpoints]
        print(f"{method:8s} " + " ".join(f"{v:8.2f}" for v in final) + f" {np.nanmean(final):8.2f}   "
              + " ".join(f"{v:8.2f}" for v in at) + f" {seconds[method]:8.1f}")
    print("(mean@n: mean over seeds of the best-so-far after n trials; seconds: sweep time summed over seeds)")
    same = [sum(1 for _ in itertools.takewhile(lambda p: p[0] == p[1], zip(trials["random"][s], trials["tpe"][s])))
            for s in seeds]
    print(f"TPE's first trials equal to random's of the same seed (its random start-up): "
          f"{', '.join(f'seed {s}: {n}' for s, n in zip(seeds, same))}")
    print(f"\nfigure: {args.out}")
    print(f"whole benchmark: {total:.1f} s")


if __name__ == "__main__":
    main()
