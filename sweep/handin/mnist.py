"""MNIST with a multi-layer perceptron.

    python mnist.py --lr 0.001                  # train, print every epoch, save mnist_agent.pt
    python mnist.py --load mnist_agent.pt       # test a saved agent instead
    python mnist.py --lr 0.001 --force          # train although mnist_agent.pt exists, and replace it
    python mnist.py --validation 10000          # hold out 10,000 training images, as the sweep does

The network is 784 -> depth x width -> 10 with log-softmax outputs, trained by SGD on the negative
log-likelihood; `python mnist.py --help` lists the settings. Only torch and torchvision are needed.
With the same settings and seed it trains exactly as the mnist-sweep trainer (`python -m mnist_core`)
does.

After training it writes mnist_agent.pt, the network's plain state_dict, and mnist_agent.json
beside it, the settings it was trained with and its final errors. A grader reads the agent with

    import torch
    from mnist import Net, load_agent
    model = Net()                 # 784-50-50-10, ReLU: the homework's network
    model.load_state_dict(torch.load("mnist_agent.pt", weights_only=True))
    model = load_agent("mnist_agent.pt")   # the same, for any depth, width and activation
"""
import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.datasets import MNIST

MEAN, STD = 0.1307, 0.3081  # of MNIST's training pixels
AGENT_FILE = "mnist_agent.pt"       # the plain state_dict
SETTINGS_FILE = "mnist_agent.json"  # beside it: its settings and final metrics
SETTINGS_FORMAT = "mnist-agent-settings/1"
SWEEP_AGENT_FORMAT = "mnist-agent/1"  # a sweep's agent file: settings, metrics and weights in one dict
VALIDATION_SEED = 20_251_128  # the sweep's: the same images are held out
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
            "epochs", "batch_size", "test_batch_size", "seed", "validation")
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
    "validation": (lambda v: v >= 0, ">= 0"),
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
    val_x: Optional[torch.Tensor] = None  # training images held out, if any
    val_y: Optional[torch.Tensor] = None


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


def hold_out(data, validation):
    """`data` with `validation` training images moved to val_x/val_y: the first of a fixed permutation
    (VALIDATION_SEED), both parts kept in their original order, as the sweep holds them out."""
    if validation == 0:
        return data
    n = len(data.train_x)
    if validation >= n:
        raise ValueError(f"--validation {validation} must be less than the {n} training images")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(VALIDATION_SEED))
    held, kept = (part.sort().values.to(data.train_x.device) for part in (order[:validation], order[validation:]))
    return Mnist(data.train_x[kept], data.train_y[kept], data.test_x, data.test_y,
                 data.train_x[held], data.train_y[held])


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
        numbers = dict(epoch=epoch, lr=lr, train_loss=train_loss, train_error=train_error,
                       test_loss=test_loss, test_error=test_error)
        val = ""
        if data.val_x is not None:
            numbers["val_loss"], numbers["val_error"] = test(model, data.val_x, data.val_y, args.test_batch_size)
            val = f"  val loss {numbers['val_loss']:.4f} err {100 * numbers['val_error']:6.2f}%"
        numbers["seconds"] = time.perf_counter() - epoch_start
        history.append(numbers)
        print(f"epoch {epoch:3d}  lr {lr:.4g}  train loss {train_loss:.4f} err {100 * train_error:6.2f}%"
              f"  test loss {test_loss:.4f} err {100 * test_error:6.2f}%{val}  {numbers['seconds']:.1f}s")
        if not finite or not all(math.isfinite(numbers[k]) for k in ("train_loss", "test_loss", "val_loss")
                                 if k in numbers):
            print(f"diverged in epoch {epoch}: the loss became NaN or infinite")
            break
    model.eval()
    return model, history, time.perf_counter() - started


def final_metrics(history, seconds):
    """The numbers the agent keeps: final and best errors and losses, as a sweep logs them."""
    metrics = {"training_seconds": seconds, "epochs_completed": float(len(history))}
    if history:
        last = history[-1]
        finals = ("train_loss", "train_error", "test_loss", "test_error", "val_loss", "val_error")
        metrics.update({f"final_{name}": last[name] for name in finals if name in last})
        metrics["best_test_error"] = min(h["test_error"] for h in history)
        if "val_error" in last:
            metrics["best_val_error"] = min(h["val_error"] for h in history)
    return metrics


def settings_path(agent_path):
    """mnist_agent.json for mnist_agent.pt: the settings file beside an agent."""
    return Path(agent_path).with_suffix(".json")


def save_agent(path, model, args, metrics):
    """`path` gets the plain state_dict, as a grader's `Net().load_state_dict(torch.load(path))`
    reads it; the .json beside it the settings and metrics. Both or neither are replaced."""
    path = Path(path)
    settings = {"format": SETTINGS_FORMAT, "agent": path.name,
                "network": "-".join(map(str, [28 * 28, *[args.width] * args.depth, 10])) + f", {args.activation}",
                "config": {name: getattr(args, name) for name in SETTINGS},
                "metrics": {name: float(value) for name, value in metrics.items()}}
    weights, info = path.with_name(path.name + ".tmp"), path.with_name(settings_path(path).name + ".tmp")
    torch.save({name: t.detach().cpu() for name, t in model.state_dict().items()}, weights)
    info.write_text(json.dumps(settings, indent=2) + "\n")
    os.replace(info, settings_path(path))
    os.replace(weights, path)


def load_agent(path, device="cpu"):
    """The Net of an agent file, in eval mode: this script's mnist_agent.pt (a plain state_dict: its
    depth, width and activation from the mnist_agent.json beside it, else depth and width from the
    weights' shapes and relu) or a sweep's agent file (a dict holding its settings)."""
    payload = torch.load(path, map_location=device, weights_only=True)
    if isinstance(payload, dict) and payload.get("format") == SWEEP_AGENT_FORMAT:
        config, state = payload["config"], payload["state_dict"]
    elif isinstance(payload, dict) and payload and all(isinstance(t, torch.Tensor) for t in payload.values()):
        config, state = saved_settings(path, payload), payload
    else:
        raise ValueError("not an MNIST agent: neither a state_dict nor a sweep's agent file")
    model = Net(config["depth"], config["width"], config["activation"]).to(device)
    model.load_state_dict(state)
    return model.eval()


def saved_settings(path, state):
    """depth, width and activation of a plain state_dict: from its settings file, else its shapes."""
    info = settings_path(path)
    if info.is_file():
        return json.loads(info.read_text())["config"]
    weights = [t for name, t in state.items() if name.endswith("weight")]
    return {"depth": len(weights) - 1, "width": weights[0].shape[0], "activation": "relu"}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every default stated, and the epilog's lines kept as written."""


LOADING = f"""\
{AGENT_FILE} is the network's plain state_dict; {SETTINGS_FILE} beside it holds the settings it
was trained with and its final errors. To read it in Python:

    import torch
    from mnist import Net, load_agent
    model = Net()                 # 784-50-50-10, ReLU: the homework's network
    model.load_state_dict(torch.load("{AGENT_FILE}", weights_only=True))
    model = load_agent("{AGENT_FILE}")   # the same, for any depth, width and activation
"""


def build_parser():
    p = argparse.ArgumentParser(description="Train an MLP on MNIST (784 -> depth x width -> 10, SGD on "
                                            "the NLL loss) and save it as mnist_agent.pt.",
                                epilog=LOADING, formatter_class=HelpFormatter)
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
    p.add_argument("--validation", type=int, default=0, metavar="N",
                   help="training images held out (not trained on) and tested after every epoch: the same "
                        "N images the mnist-sweep holds out; 0 trains on all 60,000")
    p.add_argument("--data-dir", default="./data",
                   help="folder with MNIST (torchvision's MNIST/raw layout or the four IDX files); "
                        "downloaded there when missing")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading missing MNIST files")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--load", metavar="AGENT", default=None,
                   help="instead of training, test this saved agent (an mnist_agent.pt of this "
                        "script or of a sweep) on the test set")
    p.add_argument("--force", action="store_true",
                   help=f"replace an existing {AGENT_FILE} and {SETTINGS_FILE} (without it, training "
                        f"refuses to start: the agent there may be the one handed in)")
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
    try:
        data = hold_out(data, args.validation)
    except ValueError as exc:
        fail(str(exc))
    print("training " + ", ".join(f"{name}={getattr(args, name)}" for name in SETTINGS) + f" on {device}")
    model, history, seconds = fit(args, data)
    save_agent(AGENT_FILE, model, args, final_metrics(history, seconds))
    print(f"agent saved to {AGENT_FILE} (weights) and {SETTINGS_FILE} (settings, errors)")


if __name__ == "__main__":
    main()
