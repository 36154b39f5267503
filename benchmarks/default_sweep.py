"""The default sweep end to end, against the arithmetic it must do at this machine's matmul rate.

Runs `sweep run SPEC` (README's main job) as a subprocess in a fresh folder, timed from start to
exit, then reads the finished runs from its store and adds up their arithmetic: per epoch trained,
6 x weights x images trained on (forward and backward), plus 2 x weights x images evaluated (the
train images measured, all of them or the train_eval sample, the validation and the test images).
The floor is that arithmetic at the float32 rate of one large matrix product here, measured before
and after the sweeps (this machine's rate moves by a third from one minute to the next): the floor
takes the faster of the two, so that a slow moment cannot flatter the ratio, the wall time over the
floor. Last, each worker's busy share: the part of the sweep's span (its parent
run's start to end) in which the worker held a run, claim to finish (issue 21's "no idle cores").
With --train-eval the spec's defaults are overridden (full or sample), and `--train-eval both` runs
the sweep twice, side by side.

    python benchmarks/default_sweep.py [--spec sweeps.yaml] [--train-eval default|full|sample|both]
                                       [--data-dir DIR] [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from fused_speed import matmul_rate  # this script's folder is on sys.path when it runs

from mnist_core.config import TRAIN_SAMPLE, RunConfig
from mnist_core.data import resolve_data_dir

ROOT = Path(__file__).resolve().parent.parent
TRAIN_IMAGES, TEST_IMAGES = 60_000, 10_000


def weights(config: RunConfig) -> int:
    w = config.width
    return 784 * w + (config.depth - 1) * w * w + 10 * w  # multiply-adds per image (biases aside)


def epoch_flops(config: RunConfig) -> tuple[float, float]:
    """(training, evaluation) FLOPs of one epoch of `config`."""
    trained = TRAIN_IMAGES - config.validation
    measured = trained if config.train_eval == "full" else min(trained, TRAIN_SAMPLE)
    n = weights(config)
    return 6 * n * trained, 2 * n * (measured + config.validation + TEST_IMAGES)


def finished_runs(folder: Path, experiment: str) -> list[tuple[RunConfig, int]]:
    """(settings, epochs completed) of every finished training run in the sweep's store."""
    from mlflow import MlflowClient

    from sweep.queue import schema

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")  # not set_tracking_uri: the next sweep would inherit it
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], "attributes.status = 'FINISHED'", max_results=50_000)
    out = []
    for run in runs:
        if schema.KEY not in run.data.tags or "epochs_completed" not in run.data.metrics:
            continue  # the parent run
        settings = schema.settings(run.data.params)
        out.append((RunConfig(**settings), int(run.data.metrics["epochs_completed"])))
    return out


def busy_shares(folder: Path, experiment: str) -> list[float]:
    """For each worker process that trained runs (its holder tag), the share of the sweep's span
    (the parent run's start to end) in which it held a run, from claim to finish: what "no idle
    cores" asks of the rounds."""
    from mlflow import MlflowClient

    from sweep.queue import schema

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = [(r.info, r.data.tags) for r in client.search_runs([experiment_id], max_results=50_000)]
    parent = next(info for info, tags in runs if tags.get(schema.KIND) == schema.PARENT)
    held: dict[str, list] = {}
    for info, tags in runs:
        if tags.get(schema.KIND) == schema.TRAIN and info.end_time:
            held.setdefault(tags[schema.HOLDER], []).append((info.start_time, info.end_time))
    shares = []
    for spans in held.values():  # the union of each worker's runs, which overlap in a fused job
        spans.sort()
        busy, (start, end) = 0, spans[0]
        for s, e in spans[1:]:
            if s > end:
                busy, start = busy + end - start, s
            end = max(end, e)
        shares.append((busy + end - start) / (parent.end_time - parent.start_time))
    return sorted(shares)


def one_sweep(spec_path: Path, train_eval: str, data_dir: str, keep: str | None) -> dict:
    spec = yaml.safe_load(spec_path.read_text())
    if train_eval != "default":
        spec.setdefault("defaults", {})["train_eval"] = train_eval
    if keep:
        folder = Path(keep) / train_eval
        folder.mkdir(parents=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix="default-sweep-"))
    (folder / "sweeps.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {**os.environ, "MNIST_DATA": data_dir}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sweep.cli", "run", "sweeps.yaml"], cwd=folder, env=env,
                          stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"sweep run ended with exit status {done.returncode} in {folder}")
    runs = finished_runs(folder, spec["experiment"])
    training = sum(epoch_flops(c)[0] * e for c, e in runs)
    evaluation = sum(epoch_flops(c)[1] * e for c, e in runs)
    return {"train_eval": train_eval, "wall": wall, "runs": len(runs), "epochs": sum(e for _, e in runs),
            "training": training, "evaluation": evaluation, "folder": folder,
            "busy": busy_shares(folder, spec["experiment"])}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=str(ROOT / "sweeps.yaml"))
    parser.add_argument("--train-eval", choices=("default", "full", "sample", "both"), default="default")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--keep", default=None, help="keep each sweep's folder under this folder")
    args = parser.parse_args()
    data_dir = str(resolve_data_dir(args.data_dir))
    modes = ("full", "sample") if args.train_eval == "both" else (args.train_eval,)
    before = matmul_rate()
    print(f"{os.cpu_count()} cores, torch {torch.__version__}, float32 matmul {before / 1e9:.0f} GFLOP/s before; "
          f"spec {args.spec}; default train_eval: {RunConfig().train_eval}")
    results = [one_sweep(Path(args.spec), mode, data_dir, args.keep) for mode in modes]
    after = matmul_rate()
    rate = max(before, after)
    print(f"float32 matmul {after / 1e9:.0f} GFLOP/s after; the floor at {rate / 1e9:.0f} GFLOP/s")
    print(f"\n{'train_eval':>10} {'runs':>5} {'epochs':>6} {'TFLOP':>7} {'of it eval':>10} {'floor s':>8} "
          f"{'wall s':>7} {'wall/floor':>10}")
    for r in results:
        total = r["training"] + r["evaluation"]
        floor = total / rate
        print(f"{r['train_eval']:>10} {r['runs']:5d} {r['epochs']:6d} {total / 1e12:7.1f} "
              f"{r['evaluation'] / total:10.0%} {floor:8.0f} {r['wall']:7.0f} {r['wall'] / floor:9.2f}x   "
              f"workers busy: {', '.join(f'{b:.0%}' for b in r['busy'])} of the sweep's span")
    if len(results) == 2:
        full, sample = ((r["training"] + r["evaluation"]) for r in results)
        print(f"sample / full: wall {results[1]['wall'] / results[0]['wall']:.2f}, arithmetic {sample / full:.2f}")


if __name__ == "__main__":
    main()
