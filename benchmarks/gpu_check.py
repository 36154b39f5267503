"""Checks and timings of mnist_core on a CUDA GPU (needs no MLflow): the trainer, determinism, the
agent round trip, fused-vs-solo equivalence and the fused engine's speed-up on the 28-run grid.

    python benchmarks/gpu_check.py --data-dir DIR [--device cuda]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from mnist_core import RunConfig, load_agent, load_mnist, resolve_device, save_agent, train
from mnist_core.fused import train_fused

ACTIVATIONS = ["relu", "tanh", "sigmoid", "leaky_relu"]
LRS = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__} on {name}")
    data, load_s = timed(lambda: load_mnist(args.data_dir, device, download=False))
    print(f"data on {data.train_x.device} in {load_s:.2f}s")
    failures = []

    ref, ref_s = timed(lambda: train(RunConfig(epochs=2), data, device))
    again = train(RunConfig(epochs=2), data, device)
    err = ref.history[-1].test_error
    same = [r.metrics() for r in ref.history] == [r.metrics() for r in again.history]
    print(f"reference, 2 epochs: test error {100 * err:.2f}% in {ref_s:.1f}s; repeat identical: {same}")
    failures += [] if err < 0.06 else ["reference test error >= 6%"]
    with tempfile.TemporaryDirectory() as tmp:
        path = save_agent(tmp, ref.model, ref.config, ref.summary())
        model = load_agent(path, device)
        with torch.no_grad():
            ok = torch.equal(model(data.test_x).argmax(1), ref.model(data.test_x).argmax(1))
    print(f"agent round trip on {device}: identical predictions: {ok}")
    failures += [] if ok else ["agent round trip"]

    diverged = train(RunConfig(epochs=2, lr=1e8), data, device)
    print(f"lr 1e8 diverged without raising: {diverged.diverged}")
    failures += [] if diverged.diverged else ["divergence"]

    worst_err, worst_gap = 0.0, 0.0
    for activation in ACTIVATIONS:
        configs = [RunConfig(activation=activation, epochs=1, lr=lr) for lr in (0.01, 0.03, 0.1)]
        for config, fused in zip(configs, train_fused(configs, data, device)):
            solo = train(config, data, device)
            worst_err = max(worst_err, abs(fused.history[0].test_error - solo.history[0].test_error))
            for name, w in solo.model.state_dict().items():
                worst_gap = max(worst_gap, ((fused.model.state_dict()[name] - w).norm() / w.norm()).item())
    print(f"fused vs solo, 4 activations x 3 lrs, 1 epoch: max test-error gap {100 * worst_err:.3f} points, "
          f"max relative weight gap {worst_gap:.2e}")
    failures += [] if worst_err <= 0.001 else ["fused equivalence"]
    mixed = train_fused([RunConfig(epochs=1, lr=0.1), RunConfig(epochs=1, lr=1e8)], data, device)
    print(f"fused member lr 1e8 diverged, other fine: {[r.diverged for r in mixed]}, "
          f"{100 * mixed[0].history[-1].test_error:.2f}%")

    grid = [RunConfig(activation=a, lr=lr, epochs=1) for a in ACTIVATIONS for lr in LRS]
    _, solo_s = timed(lambda: [train(c, data, device) for c in grid])
    _, fused_s = timed(lambda: [train_fused([c for c in grid if c.activation == a], data, device)
                                for a in ACTIVATIONS])
    print(f"28-run grid, 1 epoch each, with whole-set evaluation: solo {solo_s:.1f}s "
          f"({solo_s / 28:.3f}s per network-epoch), fused in 4 groups of 7 {fused_s:.1f}s "
          f"({fused_s / 28:.3f}s per network-epoch): {solo_s / fused_s:.1f}x")
    big = [RunConfig(lr=0.001 * (i + 1), epochs=1) for i in range(28)]
    _, big_s = timed(lambda: train_fused(big, data, device))
    print(f"one fused group of 28: {big_s:.1f}s ({big_s / 28:.3f}s per network-epoch), "
          f"{solo_s / big_s:.1f}x the solo runs")
    print("FAILURES: " + "; ".join(failures) if failures else "all GPU checks passed")


if __name__ == "__main__":
    main()
