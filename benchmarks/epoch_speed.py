"""One training epoch of the reference network: mnist_core's trainer against a student's mnist.py.

The baseline is written the way pytorch/examples' mnist/main.py is: a DataLoader over torchvision
MNIST with per-sample ToTensor + Normalize, batch 64, shuffled. Both train the same 784-50-50-10
ReLU network with SGD at lr 0.03 on the same threads, in this one process.

    python benchmarks/epoch_speed.py [--data-dir DIR] [--threads N] [--repeats R]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import transforms

from mnist_core import MLP, RunConfig, load_mnist
from mnist_core.data import open_datasets, resolve_data_dir
from mnist_core.trainer import epoch_order, evaluate, init_model, train_one_epoch


def student_epoch(root) -> float:
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train_set, _ = open_datasets(root, download=False)
    train_set.transform = transform
    loader = DataLoader(train_set, batch_size=64, shuffle=True)
    torch.manual_seed(1)
    model = MLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.03)
    start = time.perf_counter()
    model.train()
    for data, target in loader:
        optimizer.zero_grad()
        loss = F.nll_loss(model(data), target)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def project_epoch(data, with_eval: bool) -> float:
    config = RunConfig(epochs=1)
    model = init_model(config, torch.device("cpu"))
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    order = next(epoch_order(config, len(data.train_x), 1))
    start = time.perf_counter()
    train_one_epoch(model, optimizer, data, order, config.batch_size)
    if with_eval:
        evaluate(model, data.train_x, data.train_y, config.test_batch_size)
        evaluate(model, data.test_x, data.test_y, config.test_batch_size)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="MNIST folder [default: $MNIST_DATA, else ./data]")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3, help="epochs timed per way; the median is kept")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = resolve_data_dir(args.data_dir)
    data = load_mnist(root, "cpu", download=False)

    median = lambda xs: sorted(xs)[len(xs) // 2]
    project_epoch(data, False)  # warm-up
    ours = median([project_epoch(data, False) for _ in range(args.repeats)])
    ours_eval = median([project_epoch(data, True) for _ in range(args.repeats)])
    student = median([student_epoch(root) for _ in range(args.repeats)])
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats} epochs each")
    print(f"student baseline (DataLoader + per-sample transforms): {student:7.2f} s/epoch")
    print(f"mnist_core trainer, training pass:                      {ours:7.2f} s/epoch  -> {student / ours:5.1f}x faster")
    print(f"mnist_core trainer, with whole-set train+test eval:     {ours_eval:7.2f} s/epoch  -> {student / ours_eval:5.1f}x faster")


if __name__ == "__main__":
    main()
