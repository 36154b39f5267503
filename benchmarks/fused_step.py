"""The fused engine's training pass against the same engine at another git revision, side by side
(and the solo trainer's, for one network), each on the MNIST tensors of its revision's
mnist_core/data.py (which decides how they lie in memory).

Both train the same groups of reference networks (784-50-50-10, batch 64) on the MNIST training set
in one process, taking turns, and are timed in CPU seconds (time.process_time) on one thread, so a
busy machine slows them alike. Each group: K members of the four activations, lrs 0.01-0.1; one
seed (a mini-batch shared by every member), two seeds (as a sweep's first two seeds), or a seed per
member; without momentum, and with momentum 0.5 at one seed. The last row is one relu network
(lr 0.03) in the solo trainer's train_one_epoch, of each revision. The floor is a network-epoch's
training arithmetic (6 x 42,310 parameters x 60,000 samples) at one thread's rate, in CPU seconds,
in a large matrix product.

    python benchmarks/fused_step.py [--baseline REV] [--members 7,16] [--steps N] [--repeats R]
"""
from __future__ import annotations

import argparse
import importlib.util
import itertools
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from fused_speed import PARAMS, matmul_rate  # this script's folder is on sys.path when it runs

from mnist_core import RunConfig
from mnist_core.data import resolve_data_dir
from mnist_core.fused import __file__ as FUSED_FILE
from mnist_core.trainer import SGD, init_model

ACTIVATIONS = ["relu", "tanh", "sigmoid", "leaky_relu"]


def module_at(revision: str, name: str):
    """mnist_core.`name` as it was at `revision`, loaded beside today's (the rest of mnist_core is today's)."""
    root = Path(FUSED_FILE).resolve().parent.parent
    source = subprocess.run(["git", "show", f"{revision}:mnist_core/{name}.py"], cwd=root, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / f"{name}_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"mnist_core.{name}_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def group(k: int, seeds: int, momentum: float) -> list[RunConfig]:
    return [RunConfig(activation=ACTIVATIONS[i % 4], lr=(0.01, 0.03, 0.1)[i % 3], momentum=momentum,
                      seed=i % seeds + 1, epochs=1) for i in range(k)]


def train_pass(engine, configs, data, steps: int) -> float:
    """CPU seconds of the group's first `steps` SGD steps of an epoch over the whole training set."""
    batch = configs[0].batch_size
    members = engine.Members(configs, torch.device("cpu"), data.dtype)
    members.start_epoch(1, next(engine._orders(configs, len(data.train_x))))
    members.model.train()
    start = time.process_time()
    for step in range(1, steps + 1):
        members.step(data, (step - 1) * batch, batch)
        if step % engine.DIVERGENCE_CHECK_EVERY == 0:
            members.nonfinite()
    return time.process_time() - start


def solo_pass(trainer, data, steps: int) -> float:
    """CPU seconds of one network's first `steps` SGD steps in the solo trainer."""
    config = RunConfig(epochs=1)
    model = init_model(config, torch.device("cpu"))
    order = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(1))
    start = time.process_time()
    trainer.train_one_epoch(model, SGD(model.parameters(), lr=config.lr), data, order[:steps * 64], 64)
    return time.process_time() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="MNIST folder [default: $MNIST_DATA, else ./data]")
    parser.add_argument("--baseline", default="main", help="git revision of the engine to compare with [main]")
    parser.add_argument("--members", default="7,16", help="group sizes K, comma-separated [7,16]")
    parser.add_argument("--steps", type=int, default=200, help="SGD steps timed per group and engine [200]")
    parser.add_argument("--repeats", type=int, default=5, help="turns per engine; the median is kept [5]")
    args = parser.parse_args()
    torch.set_num_threads(1)
    engines = {args.baseline: module_at(args.baseline, "fused"), "this tree": sys.modules["mnist_core.fused"]}
    trainers = {args.baseline: module_at(args.baseline, "trainer"), "this tree": sys.modules["mnist_core.trainer"]}
    loaders = {args.baseline: module_at(args.baseline, "data"), "this tree": sys.modules["mnist_core.data"]}
    datas = {name: loader.load_mnist(resolve_data_dir(args.data_dir), "cpu", download=False)
             for name, loader in loaders.items()}  # each revision's tensors, laid out in memory as it lays them

    print(f"torch {torch.__version__}, 1 thread, {args.steps} steps of batch 64 per timing, "
          f"median of {args.repeats}; CPU seconds per network-epoch (938 steps); speed-up: "
          "the median of each repeat's ratio")
    print(f"{'K':>3} {'seeds':>5} {'momentum':>8} " + " ".join(f"{name:>12}" for name in engines)
          + "  speed-up [min-max]")
    cases = [(1, 0.0), (2, 0.0), (None, 0.0), (1, 0.5)]
    for k, (seeds, momentum) in itertools.product(map(int, args.members.split(",")), cases):
        seeds = seeds or k
        configs = group(k, seeds, momentum)
        times = {name: [] for name in engines}
        for _ in range(args.repeats):
            for name, engine in engines.items():
                times[name].append(train_pass(engine, configs, datas[name], args.steps) * 938 / args.steps / k)
        report(f"{k:3d} {seeds:5d} {momentum:8.1f}", times)
    times = {name: [] for name in trainers}
    for _ in range(args.repeats):
        for name, trainer in trainers.items():
            times[name].append(solo_pass(trainer, datas[name], args.steps) * 938 / args.steps)
    report("solo trainer       ", times)
    rate = matmul_rate(2048, 20, clock=time.process_time)  # per CPU second, as the passes are timed
    print(f"floor: {6 * PARAMS * 60_000 / rate:.4f} s per network-epoch ({rate / 1e9:.1f} GFLOP/s on 1 thread)")


def report(label: str, times: dict[str, list[float]]) -> None:
    medians = [statistics.median(t) for t in times.values()]
    ratios = [a / b for a, b in zip(*times.values())]  # each repeat's pair ran next to each other
    print(f"{label} " + " ".join(f"{m:12.4f}" for m in medians)
          + f"  {statistics.median(ratios):5.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]")


if __name__ == "__main__":
    main()
