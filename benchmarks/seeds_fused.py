"""Seeds in the fused engine: the lr x activation grid with seeds 1, 2, 3 (4 activations x 7 learning
rates x 3 seeds = 84 reference networks, 1 epoch each), trained solo and fused in this one process on
the same torch threads, with the same whole-set train and test evaluation every epoch.

Fused, the networks of one activation form a group (21 with three seeds; `sweep run` now fuses
across activations too: benchmarks/activation_fused.py measures that); as `sweep run` does, a group
over --chunk-size networks (default DEFAULT_CHUNK_SIZE, 16) is split into near-equal chunks
(21 -> 11 + 10). The members of a chunk differ in seed, so each one's batch is gathered apart,
(K, 64, 784), and goes through batched products.

    python benchmarks/seeds_fused.py [--data-dir DIR] [--threads N] [--device D]
                                     [--lrs N] [--seeds N] [--chunk-size N]   # --lrs 2 --seeds 2: a quick try
"""
from __future__ import annotations

import argparse
import time

import torch

from mnist_core import ACTIVATIONS, RunConfig, load_mnist, resolve_device, train
from mnist_core.fused import DEFAULT_CHUNK_SIZE, train_fused

LRS = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
SEEDS = [1, 2, 3]


def chunks(members: list, size: int) -> list[list]:
    """Near-equal chunks of at most `size`, as the sweep splits a large group."""
    n = -(-len(members) // size)
    base, extra = divmod(len(members), n)
    starts = [i * base + min(i, extra) for i in range(n + 1)]
    return [members[a:b] for a, b in zip(starts, starts[1:])]


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="MNIST folder [default: $MNIST_DATA, else ./data]")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N [cpu]")
    parser.add_argument("--lrs", type=int, default=len(LRS), help=f"the first N of {LRS}")
    parser.add_argument("--seeds", type=int, default=len(SEEDS), help=f"the first N of {SEEDS}")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="most networks per fused model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = load_mnist(args.data_dir, device, download=False)
    lrs, seeds = LRS[:args.lrs], SEEDS[:args.seeds]
    groups = [[RunConfig(activation=a, lr=lr, seed=s, epochs=1) for lr in lrs for s in seeds] for a in ACTIVATIONS]
    jobs = [chunk for group in groups for chunk in chunks(group, args.chunk_size)]
    n = sum(len(g) for g in groups)

    train(RunConfig(epochs=1), data, device)  # warm-up, outside the timings
    solo = timed(lambda: [train(c, data, device) for g in groups for c in g], device)
    fused = timed(lambda: [train_fused(job, data, device) for job in jobs], device)

    print(f"torch {torch.__version__}, {args.threads} thread(s), {device}; {n} networks "
          f"({len(ACTIVATIONS)} activations x {len(lrs)} lrs x {len(seeds)} seeds), 1 epoch each")
    print(f"fused: {len(jobs)} models of {'/'.join(str(len(j)) for j in jobs)} networks "
          f"(one activation each, chunks of at most {args.chunk_size}), a batch per member")
    print(f"{'':6s} {'seconds':>9s} {'network-epochs/s':>17s}")
    for label, seconds in (("solo", solo), ("fused", fused)):
        print(f"{label:6s} {seconds:9.1f} {n / seconds:17.2f}")
    print(f"fused / solo: {solo / fused:.2f}x")


if __name__ == "__main__":
    main()
