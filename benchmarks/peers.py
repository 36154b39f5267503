"""Our sweep against its peers on one question: the 28-run lr-by-activation grid of the reference
network (784-50-50-10, batch 64, SGD on the NLL loss, seed 1, 10,000 training images held out for
validation), each run evaluated after every epoch on the training set, the validation split and the
test set, and every epoch's numbers tracked to MLflow. Each system trains the whole grid into its
own fresh MLflow store, in its own process, timed from start to exit (start-up included):

  ours    `sweep run` on a generated sweep file (default workers and threads);
  optuna  GridSampler, study.optimize(n_jobs=<cores>), optuna-integration's MLflowCallback with its
          track_in_mlflow decorator, per-epoch mlflow.log_metrics inside the objective (the
          decorator holds the callback's lock through each objective: one trial trains at a time);
  ray     Tune's grid_search, 1 CPU per trial, data shipped with tune.with_parameters, tune.report
          every epoch, MLflowLoggerCallback;
  plain   one process, the runs one after another, mlflow.start_run / log_params / log_metrics.

The peers share one in-memory training loop written as their users would (torchvision's MNIST read
once into normalised tensors, a shuffled index per epoch, nn.Sequential, torch.optim.SGD,
evaluation in batches of 1000 under no_grad); each keeps the torch threads its users get by
default. Every system is ranked by final-epoch validation error, and its best lr per activation is
checked against ours (within one grid step).

    pip install -e '.[peers]'
    python benchmarks/peers.py [--epochs 2] [--systems ours,optuna,ray,plain] [--data-dir DIR]
                               [--train-eval full|sample] [--peer-threads N]
                               [--activations relu,tanh] [--lrs 0.1,1.0]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mnist_core.config import TRAIN_SAMPLE

ACTIVATIONS = ["relu", "tanh", "sigmoid", "leaky_relu"]
LRS = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
SYSTEMS = ["ours", "optuna", "ray", "plain"]
WIDTH, BATCH, EVAL_BATCH, VALIDATION, SEED = 50, 64, 1000, 10_000, 1
EXPERIMENT = "peers"
# What `--train-eval` adds to our sweep file's defaults (our runs' train_eval setting).
OUR_TRAIN_EVAL = {"full": "train_eval: full", "sample": "train_eval: sample"}


# ---- the peers' training loop ----------------------------------------------------------------

def load_data(data_dir: str, train_eval: str, train_sample: int) -> dict:
    """MNIST as normalised tensors: train / val (10,000 held-out training images) / test, and the
    images the training error is measured on (all of train, or a fixed sample of it)."""
    from torchvision.datasets import MNIST

    def tensors(train: bool):
        ds = MNIST(data_dir, train=train, download=False)
        return ((ds.data.float() / 255 - 0.1307) / 0.3081).reshape(-1, 784), ds.targets

    (x, y), test = tensors(True), tensors(False)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    held, kept = order[:VALIDATION], order[VALIDATION:]
    data = {"train": (x[kept], y[kept]), "val": (x[held], y[held]), "test": test}
    data["train_eval"] = data["train"]
    if train_eval == "sample":
        sample = torch.randperm(len(kept), generator=torch.Generator().manual_seed(1))[:train_sample]
        data["train_eval"] = (x[kept][sample], y[kept][sample])
    return data


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    loss = wrong = 0.0
    for i in range(0, len(x), EVAL_BATCH):
        out = model(x[i:i + EVAL_BATCH])
        loss += F.nll_loss(out, y[i:i + EVAL_BATCH], reduction="sum").item()
        wrong += (out.argmax(1) != y[i:i + EVAL_BATCH]).sum().item()
    return loss / len(x), wrong / len(x)


def train_run(data: dict, activation: str, lr: float, epochs: int, log) -> dict:
    """Train one network; `log(epoch, metrics)` after each epoch; the last epoch's metrics back.
    A run whose training loss is no longer finite stops there, as ours does."""
    act = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "leaky_relu": nn.LeakyReLU}[activation]
    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Linear(784, WIDTH), act(), nn.Linear(WIDTH, WIDTH), act(),
                          nn.Linear(WIDTH, 10), nn.LogSoftmax(dim=1))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    x, y = data["train"]
    shuffle = torch.Generator().manual_seed(SEED)
    for epoch in range(1, epochs + 1):
        model.train()
        for idx in torch.randperm(len(x), generator=shuffle).split(BATCH):
            optimizer.zero_grad()
            F.nll_loss(model(x[idx]), y[idx]).backward()
            optimizer.step()
        metrics = {}
        for name, part in (("train", "train_eval"), ("val", "val"), ("test", "test")):
            metrics[f"{name}_loss"], metrics[f"{name}_error"] = evaluate(model, *data[part])
        log(epoch, metrics)
        if not math.isfinite(metrics["train_loss"]):
            break
    return metrics


# ---- each system, run in its own process (`--child NAME`) -------------------------------------

def set_threads(args) -> None:
    if args.peer_threads:
        torch.set_num_threads(args.peer_threads)


def run_plain(args, uri: str) -> str:
    import mlflow

    data = load_data(args.data_dir, args.train_eval, args.train_sample)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(EXPERIMENT)
    for activation in args.activations:
        for lr in args.lrs:
            with mlflow.start_run(run_name=f"{activation}-lr{lr}"):
                mlflow.log_params({"activation": activation, "lr": lr, "epochs": args.epochs})
                train_run(data, activation, lr, args.epochs, lambda e, m: mlflow.log_metrics(m, step=e))
    return f"1 process, torch {torch.get_num_threads()} thread(s)"


def run_optuna(args, uri: str) -> str:
    import mlflow
    import optuna
    from optuna_integration.mlflow import MLflowCallback

    data = load_data(args.data_dir, args.train_eval, args.train_sample)
    callback = MLflowCallback(tracking_uri=uri, metric_name="val_error")

    @callback.track_in_mlflow()
    def objective(trial):
        activation = trial.suggest_categorical("activation", args.activations)
        lr = trial.suggest_categorical("lr", args.lrs)
        final = train_run(data, activation, lr, args.epochs, lambda e, m: mlflow.log_metrics(m, step=e))
        return final["val_error"]

    grid = {"activation": args.activations, "lr": args.lrs}
    study = optuna.create_study(study_name=EXPERIMENT, sampler=optuna.samplers.GridSampler(grid, seed=SEED))
    jobs = os.cpu_count()
    study.optimize(objective, n_trials=len(args.activations) * len(args.lrs), n_jobs=jobs, callbacks=[callback])
    return (f"1 process, n_jobs={jobs} threads, one objective at a time under MLflowCallback's lock, "
            f"torch {torch.get_num_threads()} thread(s)")


def run_ray(args, uri: str) -> str:
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    def trainable(config, data):
        set_threads(args)
        threads = torch.get_num_threads()
        train_run(data, config["activation"], config["lr"], args.epochs,
                  lambda e, m: tune.report({**m, "torch_threads": threads}))

    data = load_data(args.data_dir, args.train_eval, args.train_sample)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, data=data), {"cpu": 1}),
        param_space={"activation": tune.grid_search(args.activations), "lr": tune.grid_search(args.lrs)},
        run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(Path.cwd() / "ray_results"),
                                  callbacks=[MLflowLoggerCallback(tracking_uri=uri, experiment_name=EXPERIMENT)]))
    results = tuner.fit()
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} Ray trial(s) failed: {errors[0]}")
    threads = ",".join(sorted({str(int(r.metrics["torch_threads"])) for r in results}))
    return f"{len(results)} trials in Ray workers, 1 CPU each, torch {threads} thread(s) each"


def child(args) -> None:
    """Train the grid with one peer into the store in the current folder; write its thread line."""
    uri = f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    set_threads(args)
    line = {"plain": run_plain, "optuna": run_optuna, "ray": run_ray}[args.child](args, uri)
    Path("threads.txt").write_text(line)


# ---- the benchmark -----------------------------------------------------------------------------

def our_sweep_file(args) -> str:
    train_eval = OUR_TRAIN_EVAL[args.train_eval]
    return (f"experiment: {EXPERIMENT}\n"
            f"defaults: {{epochs: {args.epochs}, batch_size: {BATCH}, test_batch_size: {EVAL_BATCH}, "
            f"validation: {VALIDATION}, seed: {SEED}, depth: 2, width: {WIDTH}"
            f"{', ' + train_eval if train_eval else ''}}}\n"
            f"grids:\n  lr_by_activation:\n    activation: {json.dumps(args.activations)}\n"
            f"    lr: {json.dumps(args.lrs)}\n")


def command_for(system: str, args, folder: Path) -> list[str]:
    if system == "ours":
        (folder / "sweep.yaml").write_text(our_sweep_file(args))
        sweep = Path(sys.executable).with_name("sweep")  # the console script a user types
        start = [str(sweep)] if sweep.exists() else [sys.executable, "-m", "sweep.cli"]
        return start + ["run", "sweep.yaml", "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}",
                        "--data-dir", args.data_dir]
    return [sys.executable, str(Path(__file__).resolve()), "--child", system, "--epochs", str(args.epochs),
            "--peer-threads", str(args.peer_threads),
            "--data-dir", args.data_dir, "--train-eval", args.train_eval, "--train-sample", str(args.train_sample),
            "--activations", ",".join(args.activations), "--lrs", ",".join(map(str, args.lrs))]


def final_val_errors(uri: str) -> dict:
    """(activation, lr) -> the last logged validation error of that run in the store at `uri`."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    found = {}
    for run in client.search_runs(experiments, max_results=10_000):
        params, metrics = run.data.params, run.data.metrics
        if "activation" in params and "lr" in params:
            error = metrics.get("val_error", math.inf)
            found[params["activation"], float(params["lr"])] = error if math.isfinite(error) else math.inf
    return found


def run_system(system: str, args) -> tuple[float, dict, str]:
    """(wall seconds from start to exit, final validation errors, its thread settings)."""
    with tempfile.TemporaryDirectory(prefix=f"peers-{system}-") as tmp:
        folder = Path(tmp)
        with open(folder / "output.log", "w+") as log:
            start = time.perf_counter()
            done = subprocess.run(command_for(system, args, folder), cwd=folder, stdout=log, stderr=subprocess.STDOUT)
            seconds = time.perf_counter() - start
            log.seek(0)
            output = log.read()
        if done.returncode != 0:
            sys.exit(f"{system} failed (exit {done.returncode}); the end of its output:\n{output[-3000:]}")
        if system == "ours":
            found = re.search(r"with (\d+ worker\(s\) x \d+ thread\(s\))", output)
            threads = found.group(1) if found else "?"
        else:
            threads = (folder / "threads.txt").read_text()
        errors = final_val_errors(f"sqlite:///{folder / 'mlflow.db'}")
    missing = len(args.activations) * len(args.lrs) - len(errors)
    if missing:
        sys.exit(f"{system}: {missing} run(s) of the grid are missing from its store")
    return seconds, errors, threads


def best_lrs(errors: dict, activations: list[str]) -> dict:
    return {a: min((lr for act, lr in errors if act == a), key=lambda lr: errors[a, lr]) for a in activations}


def machine_line(args) -> str:
    sys.path.insert(0, str(Path(__file__).parent))
    from fused_speed import matmul_rate

    omp = ", ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY") if k in os.environ)
    return (f"machine: {os.cpu_count()} cores, torch {torch.__version__}{', ' + omp if omp else ''}, "
            f"float32 matmul {matmul_rate() / 1e9:.1f} GFLOP/s, load average {os.getloadavg()[0]:.1f}\n"
            f"grid: {len(args.activations)} activations x {len(args.lrs)} lrs = "
            f"{len(args.activations) * len(args.lrs)} runs, {args.epochs} epoch(s), train evaluation: "
            f"{args.train_eval if args.train_eval == 'full' else f'sample of {args.train_sample}'}")


def report(args, measured: dict) -> None:
    print(f"\n{'system':8s} {'wall s':>7s} {'/ ours':>7s}  " + "  ".join(f"{a:>10s}" for a in args.activations)
          + "  best lr per activation: agrees with ours")
    ours = measured.get("ours")
    for system, (seconds, errors, _) in measured.items():
        best = best_lrs(errors, args.activations)
        ratio = f"{seconds / ours[0]:6.2f}x" if ours else "      -"
        agrees = "-"
        if ours and system != "ours":
            ours_best = best_lrs(ours[1], args.activations)
            steps = max(abs(args.lrs.index(best[a]) - args.lrs.index(ours_best[a])) for a in args.activations)
            agrees = f"{'yes' if steps <= 1 else 'NO'} (at most {steps} grid step(s) apart)"
        print(f"{system:8s} {seconds:7.1f} {ratio}  " + "  ".join(f"{best[a]:>10g}" for a in args.activations)
              + f"  {agrees}")
    print("\nbest validation error per activation (final epoch):")
    for system, (_, errors, threads) in measured.items():
        best = best_lrs(errors, args.activations)
        print(f"  {system:8s} " + "  ".join(f"{a} {errors[a, best[a]]:.2%}" for a in args.activations)
              + f"   [{threads}]")
    peers = {s: m[0] for s, m in measured.items() if s != "ours"}
    if ours and peers:
        fastest = min(peers, key=peers.get)
        print(f"\nfastest peer: {fastest}, {peers[fastest]:.1f} s = {peers[fastest] / ours[0]:.2f}x ours "
              f"({ours[0]:.1f} s)")


def listed(kind):
    return lambda text: [kind(item) for item in text.split(",") if item]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run [default: %(default)s]")
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DATA", "data"),
                        help="folder holding MNIST/raw/ [default: $MNIST_DATA, else ./data]")
    parser.add_argument("--systems", type=listed(str), default=SYSTEMS,
                        help=f"comma-separated subset of {','.join(SYSTEMS)} [default: all]")
    parser.add_argument("--activations", type=listed(str), default=ACTIVATIONS, help="[default: all four]")
    parser.add_argument("--lrs", type=listed(float), default=LRS, help="[default: the 7 of the grid]")
    parser.add_argument("--train-eval", choices=["full", "sample"], default="sample",
                        help="each epoch's training error on the whole training set or on a fixed sample "
                             "(our runs' train_eval; default: README's) [default: %(default)s]")
    parser.add_argument("--train-sample", type=int, default=TRAIN_SAMPLE,
                        help="training images in that sample [default: %(default)s]")
    parser.add_argument("--peer-threads", type=int, default=0,
                        help="torch threads in the peers' processes [default: 0, what each peer's users get]")
    parser.add_argument("--child", choices=SYSTEMS[1:], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.data_dir = str(Path(args.data_dir).resolve())
    if args.child:
        return child(args)
    unknown = [s for s in args.systems if s not in SYSTEMS] + [a for a in args.activations if a not in ACTIVATIONS]
    if unknown:
        parser.error(f"unknown system(s) or activation(s): {', '.join(unknown)}")
    if "ours" in args.systems and args.train_eval == "sample" and args.train_sample != TRAIN_SAMPLE:
        parser.error(f"--train-sample {args.train_sample}: our runs' sample is {TRAIN_SAMPLE} images")
    if not (Path(args.data_dir) / "MNIST" / "raw").is_dir():
        parser.error(f"no MNIST/raw/ under {args.data_dir}: pass --data-dir or set $MNIST_DATA")

    print(machine_line(args), flush=True)
    measured = {}
    for system in args.systems:
        measured[system] = run_system(system, args)
        print(f"  {system}: {measured[system][0]:.1f} s  [{measured[system][2]}]", flush=True)
    report(args, measured)


if __name__ == "__main__":
    main()
