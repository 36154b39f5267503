"""Train one run: SGD on the NLL loss over in-memory tensors, evaluated after every epoch.

The loop knows nothing of files or loggers: each epoch's numbers go to an `on_epoch` callback
(which may end the run by returning False), and the trained model comes back in the result. It
computes in the dtype of the data it is given (float32 normally, float64 for exact comparisons).
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F

from .config import RunConfig
from .data import MnistTensors, holdout, train_sample
from .model import MLP
from .schedule import lr_at

DIVERGENCE_CHECK_EVERY = 50  # steps; checking every step would sync the GPU every step


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    lr: float
    train_loss: float
    train_error: float  # fraction of the training set (or its fixed sample) misclassified, in eval mode
    test_loss: float
    test_error: float
    seconds: float  # wall time of this epoch's training and evaluation
    val_loss: Optional[float] = None  # on the held-out training images; None without validation
    val_error: Optional[float] = None

    def metrics(self) -> dict[str, float]:
        out = {"train_loss": self.train_loss, "train_error": self.train_error,
               "test_loss": self.test_loss, "test_error": self.test_error, "lr": self.lr}
        if self.val_loss is not None:
            out.update(val_loss=self.val_loss, val_error=self.val_error)
        return out

    @property
    def finite(self) -> bool:
        """Whether every loss of the epoch is a number (neither NaN nor infinite)."""
        return all(math.isfinite(v) for v in (self.train_loss, self.test_loss, self.val_loss) if v is not None)


@dataclass
class TrainResult:
    config: RunConfig
    model: MLP
    history: list[EpochResult] = field(default_factory=list)
    diverged: bool = False
    stopped: bool = False  # the epoch callback returned False: training ended early
    seconds: float = 0.0

    @property
    def final(self) -> Optional[EpochResult]:
        return self.history[-1] if self.history else None

    def summary(self) -> dict[str, float]:
        """Final and best numbers of the run, as logged at its end."""
        out = {"training_seconds": self.seconds, "epochs_completed": float(len(self.history))}
        if self.history:
            out.update({f"final_{k}": v for k, v in self.final.metrics().items() if k != "lr"})
            out["best_test_error"] = min(e.test_error for e in self.history)
            if self.final.val_error is not None:
                out["best_val_error"] = min(e.val_error for e in self.history)
        return out


# Called after every epoch; returning False ends the run there (None or True: go on).
EpochCallback = Callable[[EpochResult], Optional[bool]]
DEVICES = "auto, cpu, cuda, cuda:N"


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`; a CUDA device that is absent is an error."""
    name = str(name)
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise ValueError(f"unsupported device {name!r}; supported devices: {DEVICES}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) exist")
    return device


def epoch_order(config: RunConfig, n: int, epochs: int) -> Iterator[torch.Tensor]:
    """The shuffled sample order of each epoch; the same for every run of the same seed."""
    generator = torch.Generator().manual_seed(config.seed)
    for _ in range(epochs):
        yield torch.randperm(n, generator=generator)


def init_model(config: RunConfig, device: torch.device, dtype: torch.dtype = torch.float32) -> MLP:
    """The run's initial weights: drawn in float32 from its seed, then cast to `dtype`."""
    torch.manual_seed(config.seed)
    return MLP.from_config(config).to(device=device, dtype=dtype)


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """(mean NLL loss, error fraction) of `model` over all of (x, y), in eval mode."""
    model.eval()
    loss = torch.zeros((), device=x.device, dtype=x.dtype)
    wrong = torch.zeros((), device=x.device, dtype=torch.long)
    for i in range(0, len(x), batch_size):
        out = model(x[i:i + batch_size])
        target = y[i:i + batch_size]
        loss += F.nll_loss(out, target, reduction="sum")
        wrong += (out.argmax(1) != target).sum()
    return loss.item() / len(x), wrong.item() / len(x)


def measure(evaluator, model, data: MnistTensors, batch_size: int, train_eval: str = "full") -> dict:
    """`evaluator`'s (loss, error) on the training set (all of it, or its fixed sample for
    train_eval "sample"), the test set and the held-out images (when there are any), as EpochResult
    fields: {"train_loss": ..., "train_error": ..., "test_loss": ..., ...}."""
    train_x, train_y = (data.train_x, data.train_y) if train_eval == "full" else train_sample(data)
    out = {}
    for name, x, y in (("train", train_x, train_y), ("test", data.test_x, data.test_y),
                       ("val", data.val_x, data.val_y)):
        if x is not None:
            out[f"{name}_loss"], out[f"{name}_error"] = evaluator(model, x, y, batch_size)
    return out


class SGD:
    """What torch.optim.SGD computes for lr and momentum (no dampening, Nesterov or weight decay),
    written out: constructing torch.optim.SGD imports torch._dynamo, over a second per process."""

    def __init__(self, params, lr: float, momentum: float = 0.0):
        self.params, self.lr, self.momentum = list(params), lr, momentum
        self.buffers: list = [None] * len(self.params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params):
            grad = p.grad
            if self.momentum:
                if self.buffers[i] is None:
                    self.buffers[i] = grad.clone()
                else:
                    self.buffers[i].mul_(self.momentum).add_(grad)
                grad = self.buffers[i]
            p.add_(grad, alpha=-self.lr)


def train_one_epoch(model, optimizer, data: MnistTensors, order: torch.Tensor, batch_size: int) -> bool:
    """One pass over the training set in `order`; False as soon as the loss is NaN or infinite."""
    model.train()
    order = order.to(data.train_x.device)
    running = torch.zeros((), device=data.train_x.device, dtype=data.dtype)
    for step, start in enumerate(range(0, len(order), batch_size), 1):
        idx = order[start:start + batch_size]
        optimizer.zero_grad(set_to_none=True)
        # index_select, not indexing: the same rows, gathered in about half the time
        loss = F.nll_loss(model(data.train_x.index_select(0, idx)), data.train_y.index_select(0, idx))
        loss.backward()
        optimizer.step()
        running += loss.detach()
        if step % DIVERGENCE_CHECK_EVERY == 0 and not torch.isfinite(running).item():
            return False
    return bool(torch.isfinite(running).item())


def train(config: RunConfig, data: MnistTensors, device: torch.device | str = "cpu",
          on_epoch: Optional[EpochCallback] = None) -> TrainResult:
    """Train `config` on `data` (already on `device`), in the dtype of `data`. Never raises on
    divergence: the result says so. `on_epoch(record)` returning False ends training after that epoch."""
    device = torch.device(device)
    data = holdout(data, config.validation)
    model = init_model(config, device, data.dtype)
    optimizer = SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    result = TrainResult(config=config, model=model)
    started = time.perf_counter()
    for epoch, order in enumerate(epoch_order(config, len(data.train_x), config.epochs), 1):
        epoch_start = time.perf_counter()
        lr = lr_at(config, epoch)
        optimizer.lr = lr
        finite = train_one_epoch(model, optimizer, data, order, config.batch_size)
        numbers = measure(evaluate, model, data, config.test_batch_size, config.train_eval)
        record = EpochResult(epoch, lr, seconds=time.perf_counter() - epoch_start, **numbers)
        result.history.append(record)
        result.stopped = on_epoch is not None and on_epoch(record) is False
        result.diverged = not (finite and record.finite)
        if result.stopped or result.diverged:
            break
    result.seconds = time.perf_counter() - started
    model.eval()
    return result
