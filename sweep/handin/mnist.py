"""MNIST with a multi-layer perceptron.

    python mnist.py --lr 0.001                  # train, print every epoch, save mnist_agent.pt
    python mnist.py --load mnist_agent.pt       # test a saved agent instead
    python mnist.py --lr 0.001 --force          # train although mnist_agent.pt exists, and replace it

The network is 784 -> depth x width -> 10 with log-softmax outputs, trained by SGD on the negative
log-likelihood; `python mnist.py --help` lists the settings. Only torch and torchvision are needed.
With the same settings and seed it trains exactly as the mnist-sweep trainer (`python -m mnist_core`)
does, and its mnist_agent.pt is that project's agent file.
"""
import argparse
import math
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.datasets import MNIST

MEAN, STD = 0.1307, 0.3081  # of MNIST's training pixels
AGENT_FILE = "mnist_agent.pt"
AGENT_FORMAT = "mnist-agent/1"
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": lambda: nn.LeakyReLU(negative_slope=0.01),
}
SCHEDULES = ("fixed", "exponential", "cosine", "cosine_restarts")
# The settings of a run, under the names the agent file stores them by.
SETTINGS = ("activation", "depth", "width", "lr", "momentum", "schedule", "gamma", "restart_period",
            "epochs", "batch_size", "test_batch_size", "seed")
RULES = {
    "depth": (lambda v: v >= 1, ">= 1"),
    "width": (lambda v: v >= 1, ">= 1"),
    "lr": (lambda v: 0 < v < math.inf, "> 0"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "gamma": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "restart_period": (lambda v: v >= 1, ">= 1"),
    "epochs": (lambda v: v >= 1, ">= 1"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "test_batch_size": (lambda v: v >= 1, ">= 1"),
    "seed": (lambda v: v >= 0, ">= 0"),
}
DIVERGENCE_CHECK_EVERY = 50  # steps


class Net(nn.Module):
    def __init__(self, depth=2, width=50, activation="relu"):
        super().__init__()
        layers = []
        fan_in = 28 * 28
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width), ACTIVATIONS[activation]()]
            fan_in = width
        layers.append(nn.Linear(fan_in, 10))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return F.log_softmax(self.layers(x.flatten(1)), dim=1)


class Mnist(NamedTuple):
    train_x: torch.Tensor  # (60000, 784) normalised
    train_y: torch.Tensor  # (60000,) labels
    test_x: torch.Tensor
    test_y: torch.Tensor


class DataMissing(Exception):
    pass


class FlatMNIST(MNIST):
    """torchvision's MNIST reading the four IDX files straight from the folder."""

    @property
    def raw_folder(self):
        return self.root


def open_mnist(root, download=True):
    """The (train, test) datasets in `root` (torchvision's MNIST/raw layout or the bare IDX files)."""
    if all((root / "MNIST" / "raw" / name).is_file() for name in MNIST_FILES):
        return MNIST(root, train=True), MNIST(root, train=False)
    if all((root / name).is_file() for name in MNIST_FILES):
        return FlatMNIST(root, train=True), FlatMNIST(root, train=False)
    why = "downloading is turned off"
    if download:
        try:
            return MNIST(root, train=True, download=True), MNIST(root, train=False, download=True)
        except Exception as exc:  # offline: URLError, OSError or RuntimeError, depending on the mirror
            why = f"the download failed ({' '.join(str(exc).split())})"  # torchvision's text spans lines
    raise DataMissing(f"MNIST not found in {root}: expected the four IDX files {', '.join(MNIST_FILES)} "
                      f"in {root / 'MNIST' / 'raw'} or in {root} itself, and {why}; "
                      f"copy them there or point --data-dir at a folder that has them")


def normalise(images):
    # The same numbers as ToTensor() + Normalize((0.1307,), (0.3081,)), for all images at once.
    return (images.reshape(len(images), -1).float() / 255.0 - MEAN) / STD


def load_mnist(data_dir, device="cpu", download=True):
    """All of MNIST as normalised tensors on `device`: small enough to keep in memory."""
    train, test = open_mnist(Path(data_dir).expanduser().resolve(), download)
    return Mnist(normalise(train.data).to(device), train.targets.to(device),
                 normalise(test.data).to(device), test.targets.to(device))


def learning_rate(args, epoch):
    """The learning rate used throughout `epoch` (1 = the first epoch)."""
    t = epoch - 1
    if args.schedule == "exponential":
        return args.lr * args.gamma**t
    if args.schedule == "cosine":  # annealed from lr towards 0 over the whole run
        return args.lr * (1 + math.cos(math.pi * t / args.epochs)) / 2
    if args.schedule == "cosine_restarts":  # the same curve, restarted every restart_period epochs
        period = args.restart_period
        return args.lr * (1 + math.cos(math.pi * (t % period) / period)) / 2
    return args.lr


def train(model, optimizer, data, order, batch_size):
    """One pass over the training set in `order`; False as soon as the loss is NaN or infinite."""
    model.train()
    running = torch.zeros((), device=data.train_x.device)
    for step, start in enumerate(range(0, len(order), batch_size), 1):
        idx = order[start:start + batch_size]
        optimizer.zero_grad(set_to_none=True)
        loss = F.nll_loss(model(data.train_x[idx]), data.train_y[idx])
        loss.backward()
        optimizer.step()
        running += loss.detach()
        # checked now and then only: on a GPU every check waits for the GPU
        if step % DIVERGENCE_CHECK_EVERY == 0 and not torch.isfinite(running).item():
            return False
    return bool(torch.isfinite(running).item())


@torch.no_grad()
def test(model, x, y, batch_size):
    """(mean NLL loss, fraction misclassified) of `model` over all of (x, y)."""
    model.eval()
    loss = torch.zeros((), device=x.device)
    wrong = torch.zeros((), device=x.device, dtype=torch.long)
    for i in range(0, len(x), batch_size):
        out = model(x[i:i + batch_size])
        loss += F.nll_loss(out, y[i:i + batch_size], reduction="sum")
        wrong += (out.argmax(1) != y[i:i + batch_size]).sum()
    return loss.item() / len(x), wrong.item() / len(x)


def fit(args, data):
    """Train a new model with the settings in `args`; return it, one dict per epoch and the seconds taken."""
    device = data.train_x.device
    torch.manual_seed(args.seed)
    model = Net(args.depth, args.width, args.activation).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    shuffle = torch.Generator().manual_seed(args.seed)  # one permutation per epoch, drawn on the CPU
    history = []
    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        epoch_start = time.perf_counter()
        order = torch.randperm(len(data.train_x), generator=shuffle).to(device)
        lr = learning_rate(args, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        finite = train(model, optimizer, data, order, args.batch_size)
        train_loss, train_error = test(model, data.train_x, data.train_y, args.test_batch_size)
        test_loss, test_error = test(model, data.test_x, data.test_y, args.test_batch_size)
        history.append(dict(epoch=epoch, lr=lr, train_loss=train_loss, train_error=train_error,
                            test_loss=test_loss, test_error=test_error,
                            seconds=time.perf_counter() - epoch_start))
        print(f"epoch {epoch:3d}  lr {lr:.4g}  train loss {train_loss:.4f} err {100 * train_error:6.2f}%"
              f"  test loss {test_loss:.4f} err {100 * test_error:6.2f}%  {history[-1]['seconds']:.1f}s")
        if not finite or not (math.isfinite(train_loss) and math.isfinite(test_loss)):
            print(f"diverged in epoch {epoch}: the loss became NaN or infinite")
            break
    model.eval()
    return model, history, time.perf_counter() - started


def final_metrics(history, seconds):
    """The numbers the agent keeps: final and best errors and losses, as a sweep logs them."""
    metrics = {"training_seconds": seconds, "epochs_completed": float(len(history))}
    if history:
        last = history[-1]
        finals = ("train_loss", "train_error", "test_loss", "test_error")
        metrics.update({f"final_{name}": last[name] for name in finals})
        metrics["best_test_error"] = min(h["test_error"] for h in history)
    return metrics


def save_agent(path, model, args, metrics):
    torch.save({
        "format": AGENT_FORMAT,
        "config": {name: getattr(args, name) for name in SETTINGS},
        "metrics": {name: float(value) for name, value in metrics.items()},
        "state_dict": {name: t.detach().cpu() for name, t in model.state_dict().items()},
    }, path)


def load_agent(path, device="cpu"):
    """The model of an mnist_agent.pt (this script's or a sweep's), in eval mode."""
    payload = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != AGENT_FORMAT:
        raise ValueError(f"not an MNIST agent file (format {AGENT_FORMAT!r})")
    config = payload["config"]
    model = Net(config["depth"], config["width"], config["activation"]).to(device)
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def build_parser():
    p = argparse.ArgumentParser(description="Train an MLP on MNIST (784 -> depth x width -> 10, SGD on "
                                            "the NLL loss) and save it as mnist_agent.pt.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--activation", default="relu", choices=list(ACTIVATIONS),
                   help="hidden-layer activation (leaky_relu: negative slope 0.01)")
    p.add_argument("--depth", type=int, default=2, help="number of hidden layers")
    p.add_argument("--width", type=int, default=50, help="units in every hidden layer")
    p.add_argument("--lr", type=float, default=0.03, help="initial learning rate of SGD")
    p.add_argument("--momentum", type=float, default=0.0, help="SGD momentum, 0 <= m < 1")
    p.add_argument("--schedule", default="fixed", choices=SCHEDULES,
                   help="learning rate per epoch: fixed; exponential (x gamma per epoch); cosine "
                        "(annealed to 0 over the run); cosine_restarts (annealed, restarted every "
                        "restart-period epochs)")
    p.add_argument("--gamma", type=float, default=0.7, help="per-epoch decay of the exponential schedule")
    p.add_argument("--restart-period", type=int, default=2, help="epochs per cycle of cosine_restarts")
    p.add_argument("--epochs", type=int, default=10, help="training epochs")
    p.add_argument("--batch-size", type=int, default=64, help="training mini-batch size")
    p.add_argument("--test-batch-size", type=int, default=1000, help="evaluation batch size")
    p.add_argument("--seed", type=int, default=1, help="random seed of the weights and the data order")
    p.add_argument("--data-dir", default="./data",
                   help="folder with MNIST (torchvision's MNIST/raw layout or the four IDX files); "
                        "downloaded there when missing")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading missing MNIST files")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--load", metavar="AGENT", default=None,
                   help="instead of training, test this saved agent (an mnist_agent.pt of this "
                        "script or of a sweep) on the test set")
    p.add_argument("--force", action="store_true",
                   help=f"replace an existing {AGENT_FILE} (without it, training refuses to start: the "
                        f"agent there may be the one handed in)")
    return p


def check_args(parser, args):
    """Exit with one message for a setting out of range; return the torch device to use."""
    for name, (ok, rule) in RULES.items():
        value = getattr(args, name)
        if not ok(value):
            parser.error(f"--{name.replace('_', '-')} must be {rule}, got {value}")
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device: unknown device {args.device!r}; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    return device


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    device = check_args(parser, args)
    model = None
    if not args.load and Path(AGENT_FILE).exists() and not args.force:
        fail(f"{AGENT_FILE} exists already (the agent handed in?): train in another folder, or pass --force "
             f"to replace it")
    if args.load:
        try:
            model = load_agent(args.load, device)
        except Exception as exc:  # a missing, damaged or foreign file: say which and stop
            fail(f"cannot load agent {args.load}: {exc}")
    try:
        data = load_mnist(args.data_dir, device, download=not args.no_download)
    except DataMissing as exc:
        fail(str(exc))
    if model is not None:
        loss, error = test(model, data.test_x, data.test_y, args.test_batch_size)
        print(f"{args.load}: test loss {loss:.4f} err {100 * error:6.2f}% on {len(data.test_x)} images")
        return
    print("training " + ", ".join(f"{name}={getattr(args, name)}" for name in SETTINGS) + f" on {device}")
    model, history, seconds = fit(args, data)
    save_agent(AGENT_FILE, model, args, final_metrics(history, seconds))
    print(f"agent saved to {AGENT_FILE}")


if __name__ == "__main__":
    main()
