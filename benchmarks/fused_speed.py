"""The 28-run lr-by-activation grid (4 activations x 7 learning rates, reference network, 1 epoch)
trained three ways in one run, with the machine's matrix-product floor.

(a) the student baseline: a DataLoader over torchvision MNIST with per-sample ToTensor + Normalize,
    batch 64, one run after another, each epoch followed by a test pass (as pytorch/examples' mnist);
(b) the solo engine through `sweep run` (default jobs), into a fresh MLflow store;
(c) the fused engine through `sweep run` (default jobs, --engine auto), into a fresh MLflow store.
(b) and (c) are timed twice: the whole `sweep run` (each sweep starts its own workers: processes,
imports, MNIST, the store opened, which `startup.py` measures on its own), and from its first claim to
its end (the first training run's start to the parent run's end, as the store records them):
everything a sweep does but start-up, that is, training with the per-epoch train/test evaluation,
the queue's claims, MLflow logging, agent files and the round's bookkeeping.

The floor is one network-epoch's arithmetic (6 x 42,310 parameters x 60,000 samples, about
15 GFLOP) at the float32 rate of one large matrix product on this machine.

    python benchmarks/fused_speed.py [--data-dir DIR] [--baseline-runs N]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import transforms

from mnist_core import MLP, load_mnist
from mnist_core.data import open_datasets, resolve_data_dir
from sweep import tracking
from sweep.execute import Settings, run_sweep
from sweep.queue import schema
from sweep.spec import parse_spec
from sweep.tracking.location import open_store

ACTIVATIONS = ["relu", "tanh", "sigmoid", "leaky_relu"]
LRS = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
PARAMS = 784 * 50 + 50 + 50 * 50 + 50 + 50 * 10 + 10  # 42,310


def matmul_rate(size: int = 4096, repeats: int = 5, clock=time.perf_counter) -> float:
    """FLOP per second of `clock` (wall by default) of a large float32 matrix product."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = clock()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (clock() - start)


def student_run(root, activation: str, lr: float) -> None:
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train_set, test_set = open_datasets(root, download=False)
    train_set.transform = test_set.transform = transform
    torch.manual_seed(1)
    model = MLP(2, 50, activation)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    for data, target in DataLoader(train_set, batch_size=64, shuffle=True):
        optimizer.zero_grad()
        F.nll_loss(model(data), target).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        for data, target in DataLoader(test_set, batch_size=1000):
            F.nll_loss(model(data), target, reduction="sum")


def through_sweep(engine: str, data_dir: str, activations=ACTIVATIONS, lrs=LRS) -> tuple[float, float]:
    """Wall seconds of the sweep, and from its first claim to its end (as the store records them)."""
    from mlflow import MlflowClient

    spec = parse_spec(f"experiment: bench\ndefaults: {{epochs: 1}}\ngrids:\n"
                      f"  g: {{activation: {activations}, lr: {lrs}}}\n", "bench.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        uri = open_store(f"sqlite:///{tmp}/mlflow.db")
        experiment_id = tracking.ensure_experiment(uri, "bench")  # store creation is a one-off, outside the timing
        start = time.perf_counter()
        summary = run_sweep(spec, uri, Settings(engine=engine, data_dir=data_dir))
        seconds = time.perf_counter() - start
        runs = MlflowClient(uri).search_runs([experiment_id], max_results=1000)
    parent = [r.info for r in runs if r.data.tags.get(schema.KIND) == schema.PARENT]
    claims = [r.info.start_time for r in runs if r.data.tags.get(schema.KIND) == schema.TRAIN]
    assert len(parent) == 1 and len(claims) == len(activations) * len(lrs), (parent, len(claims))
    finished = summary.count("done") + summary.count("diverged")
    assert finished == len(activations) * len(lrs), summary
    print(f"  {engine}: {summary.jobs} worker(s) x {summary.threads} thread(s), {finished} runs finished")
    return seconds, (parent[0].end_time - min(claims)) / 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--baseline-runs", type=int, default=28,
                        help="student runs actually timed (the rest are taken at the same mean) [28]")
    args = parser.parse_args()
    root = resolve_data_dir(args.data_dir)
    load_mnist(root, "cpu", download=False)

    rate = matmul_rate()
    floor = 6 * PARAMS * 60_000 / rate
    grid = [(a, lr) for a in ACTIVATIONS for lr in LRS]
    start = time.perf_counter()
    for activation, lr in grid[:args.baseline_runs]:
        student_run(root, activation, lr)
    student = (time.perf_counter() - start) * len(grid) / args.baseline_runs
    through_sweep("solo", str(root), ACTIVATIONS[:1], LRS[:2])  # the page cache warm for both engines
    (solo_wall, solo), (fused_wall, fused) = through_sweep("solo", str(root)), through_sweep("auto", str(root))

    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} thread(s) available; 28 network-epochs each way")
    print(f"float32 matmul rate: {rate / 1e9:.1f} GFLOP/s -> floor {floor:.3f} s per network-epoch "
          f"({6 * PARAMS * 60_000 / 1e9:.1f} GFLOP)")
    print(f"{'':42s} {'wall s':>7s}  {'network-epochs/s':>16s}  {'s per network-epoch':>19s}  {'/ floor':>7s}")
    rows = (("(a) student baseline", student), ("(b) solo, sweep run: first claim to end", solo),
            ("(c) fused, sweep run: first claim to end", fused),
            ("(b) solo, the whole sweep run", solo_wall), ("(c) fused, the whole sweep run", fused_wall))
    for label, seconds in rows:
        print(f"{label:42s} {seconds:7.1f}  {28 / seconds:16.2f}  {seconds / 28:19.3f}  {seconds / 28 / floor:6.2f}x")
    print(f"fused / solo engine (first claim to end): {solo / fused:5.1f}x")
    print(f"fused / student baseline:                 {student / fused:5.1f}x")
    print(f"fused, first claim to end, per network-epoch / floor: {fused / 28 / floor:5.2f}x (issue 21: at most 2.6x)")


if __name__ == "__main__":
    main()
