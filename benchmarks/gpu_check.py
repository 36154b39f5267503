"""Checks and timings of mnist_core on a CUDA GPU (needs no MLflow): the trainer, determinism, the
agent round trip, divergence, fused-vs-solo equivalence in float64 (one batch shared, a batch per
member, a member stopped, a member diverged, a validation split) and the fused engine's speed-up on
the 28-run lr x activation grid (one seed) and on the same grid with seeds 1, 2, 3 (84 runs).

    python benchmarks/gpu_check.py --data-dir DIR [--device cuda] [--lrs N] [--seeds N]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from mnist_core import ACTIVATIONS, RunConfig, load_agent, load_mnist, resolve_device, save_agent, train
from mnist_core.fused import train_fused

LRS = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
TOLERANCE = 1e-10


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def weight_gap(a, b) -> float:
    a, b = a.state_dict(), b.state_dict()
    return max(((a[n] - b[n]).norm() / b[n].norm()).item() for n in b)


def same_run(fused, solo) -> tuple[bool, float]:
    """(errors, lrs and ending identical, relative weight gap) of a fused member and its solo run;
    of a diverged run, only its length and ending are compared."""
    if solo.diverged:
        return len(fused.history) == len(solo.history) and fused.diverged, 0.0
    same = ([(r.lr, r.train_error, r.test_error, r.val_error) for r in fused.history] ==
            [(r.lr, r.train_error, r.test_error, r.val_error) for r in solo.history]
            and (fused.diverged, fused.stopped) == (solo.diverged, solo.stopped))
    return same, weight_gap(fused.model, solo.model)


def check_basics(data, device) -> list[str]:
    ref, ref_s = timed(lambda: train(RunConfig(epochs=2), data, device), device)
    again = train(RunConfig(epochs=2), data, device)
    err = ref.history[-1].test_error
    same = [r.metrics() for r in ref.history] == [r.metrics() for r in again.history]
    print(f"reference, 2 epochs: test error {100 * err:.2f}% in {ref_s:.1f}s; repeat identical: {same}")
    with tempfile.TemporaryDirectory() as tmp:
        model = load_agent(save_agent(tmp, ref.model, ref.config, ref.summary()), device)
        with torch.no_grad():
            round_trip = torch.equal(model(data.test_x).argmax(1), ref.model(data.test_x).argmax(1))
    print(f"agent round trip on {device}: identical predictions: {round_trip}")
    diverged = train(RunConfig(epochs=2, lr=1e8), data, device).diverged
    print(f"lr 1e8 diverged without raising: {diverged}")
    return [name for name, ok in (("reference test error >= 6%", err < 0.06), ("determinism", same),
                                  ("agent round trip", round_trip), ("divergence", diverged)) if not ok]


def check_fused_float64(data64, device) -> list[str]:
    """Each fused member against its solo run, 1 epoch of float64 MNIST (stable learning rates)."""
    cases = {
        "one batch shared": ([RunConfig(activation="tanh", epochs=1, lr=lr) for lr in (0.03, 0.1)], None),
        "a batch per member": ([RunConfig(epochs=1, lr=0.03, seed=1), RunConfig(epochs=1, lr=0.1, momentum=0.5, seed=2),
                                RunConfig(epochs=1, lr=0.05, seed=3)], None),
        "member 1 stopped after epoch 1": ([RunConfig(epochs=2, lr=lr, seed=s) for lr, s in ((0.03, 1), (0.1, 2), (0.05, 1))],
                                           lambda i, r: not (i == 1 and r.epoch == 1)),
        "member 1 diverged": ([RunConfig(epochs=1, lr=lr, seed=s) for lr, s in ((0.03, 1), (1e20, 2), (0.05, 3))], None),
        "validation 10000": ([RunConfig(epochs=1, lr=lr, seed=s, validation=10_000) for lr, s in ((0.03, 1), (0.1, 2))], None),
    }
    failures = []
    for name, (configs, callback) in cases.items():
        fused = train_fused(configs, data64, device, on_epoch=callback)
        solo_callback = (lambda r: r.epoch < 1) if callback else None
        rows = [same_run(f, train(c, data64, device, on_epoch=solo_callback if i == 1 else None))
                for i, (c, f) in enumerate(zip(configs, fused))]
        ok = all(same and gap < TOLERANCE for same, gap in rows)
        print(f"fused vs solo, float64, {name}: identical errors {[s for s, _ in rows]}, "
              f"max relative weight gap {max(g for _, g in rows):.1e}: {'ok' if ok else 'FAILED'}")
        failures += [] if ok else [f"fused equivalence: {name}"]
    return failures


def time_grid(data, device, lrs, seeds, label):
    grid = [[RunConfig(activation=a, lr=lr, seed=s, epochs=1) for lr in lrs for s in seeds] for a in ACTIVATIONS]
    n = sum(len(g) for g in grid)
    _, solo_s = timed(lambda: [train(c, data, device) for g in grid for c in g], device)
    _, fused_s = timed(lambda: [train_fused(g, data, device) for g in grid], device)
    print(f"{label}, {n} runs, 1 epoch each, whole-set evaluation: solo {solo_s:.1f}s ({n / solo_s:.2f} "
          f"network-epochs/s), fused in 4 groups of {n // 4} {fused_s:.1f}s ({n / fused_s:.2f} network-epochs/s): "
          f"{solo_s / fused_s:.1f}x")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--lrs", type=int, default=len(LRS), help="time the first N learning rates of the grid")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 1..N in the timed seeds grid")
    args = parser.parse_args()
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__} on {name}")
    data, load_s = timed(lambda: load_mnist(args.data_dir, device, download=False), device)
    print(f"data on {data.train_x.device} in {load_s:.2f}s")
    failures = check_basics(data, device)
    failures += check_fused_float64(load_mnist(args.data_dir, device, download=False, dtype=torch.float64), device)
    time_grid(data, device, LRS[:args.lrs], [1], "lr x activation grid")
    time_grid(data, device, LRS[:args.lrs], list(range(1, args.seeds + 1)), "lr x activation x seed grid")
    print("FAILURES: " + "; ".join(failures) if failures else "all GPU checks passed")


if __name__ == "__main__":
    main()
