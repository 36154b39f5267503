"""Train a group of same-shape runs as one batched model (the HFTA idea, MLSys 2021).

K networks that share activation, depth, width, batch size, epochs and seed see the same batches
in the same order, so their weights can live in stacked tensors: the shared mini-batch goes
through the K first layers as one matrix product (784 x K*width), the rest as batched products.
The loss is the sum of each network's mean NLL, so each network's gradient is exactly its solo
gradient; each network's own lr, momentum and schedule are applied in the update. Every member
starts from the weights its solo run would have, so its numbers match its solo run's up to float32
rounding. A member whose loss turns NaN or infinite is frozen (lr 0) and reported diverged.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import RunConfig
from .data import MnistTensors
from .model import IN_FEATURES, MLP
from .schedule import lr_at
from .train import DIVERGENCE_CHECK_EVERY, EpochResult, TrainResult, epoch_order, init_model

# Settings that must be equal inside a fused group: the shape, and what fixes batches and steps.
GROUP_SETTINGS = ("activation", "depth", "width", "batch_size", "test_batch_size", "epochs", "seed")

# Networks per fused model in a sweep. On 2 CPU cores (1 thread per worker) the time per
# network-epoch of the reference network fell from 0.25 s at 7 networks to 0.215 s at 14 and 0.20 s
# at 28; 16 keeps most of that gain while leaving several jobs to share out among the workers.
DEFAULT_CHUNK_SIZE = 16

MemberCallback = Callable[[int, EpochResult], None]


def group_key(config: RunConfig) -> tuple:
    return tuple(getattr(config, s) for s in GROUP_SETTINGS)


class FusedMLP(nn.Module):
    """K MLPs of one shape as stacked weights; forward gives (K, batch, 10) log-probabilities."""

    def __init__(self, members: Sequence[MLP]):
        super().__init__()
        linears = [[m for m in net.layers if isinstance(m, nn.Linear)] for net in members]
        self.k = len(members)
        self.width = linears[0][0].out_features
        self.activation = [m for m in members[0].layers if not isinstance(m, nn.Linear)][0]
        with torch.no_grad():
            # first layer: (784, K*width), so the shared batch needs one matrix product
            self.w_in = nn.Parameter(torch.cat([ls[0].weight.t() for ls in linears], dim=1).contiguous())
            self.b_in = nn.Parameter(torch.cat([ls[0].bias for ls in linears]))
            # every later layer: (K, fan_in, fan_out) for batched products
            self.ws = nn.ParameterList(
                nn.Parameter(torch.stack([ls[i].weight.t() for ls in linears]).contiguous())
                for i in range(1, len(linears[0])))
            self.bs = nn.ParameterList(
                nn.Parameter(torch.stack([ls[i].bias for ls in linears]).unsqueeze(1))
                for i in range(1, len(linears[0])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.activation(torch.addmm(self.b_in, x.flatten(1), self.w_in))       # (B, K*width)
        h = h.view(len(x), self.k, self.width).transpose(0, 1)                     # (K, B, width)
        last = len(self.ws) - 1
        for i, (w, b) in enumerate(zip(self.ws, self.bs)):
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = self.activation(h)
        return F.log_softmax(h, dim=2)

    def member_state_dict(self, k: int) -> dict:
        """Member k's weights as an ordinary MLP state dict (what load_agent expects)."""
        w_in = self.w_in.detach().view(IN_FEATURES, self.k, self.width)[:, k, :]
        state = {"layers.0.weight": w_in.t().contiguous(),
                 "layers.0.bias": self.b_in.detach().view(self.k, self.width)[k].clone()}
        for i, (w, b) in enumerate(zip(self.ws, self.bs), 1):
            state[f"layers.{2 * i}.weight"] = w.detach()[k].t().contiguous()
            state[f"layers.{2 * i}.bias"] = b.detach()[k, 0].clone()
        return state

    def member(self, k: int, config: RunConfig) -> MLP:
        model = MLP.from_config(config).to(self.w_in.device)
        model.load_state_dict(self.member_state_dict(k))
        return model.eval()


def member_nll(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(K, B) negative log-likelihood of each member's prediction for each target."""
    return -out.gather(2, target.expand(out.shape[0], -1).unsqueeze(2)).squeeze(2)


@torch.no_grad()
def evaluate_fused(model: FusedMLP, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[list, list]:
    """Per member: mean NLL loss and error fraction over all of (x, y)."""
    model.eval()
    loss = torch.zeros(model.k, device=x.device)
    wrong = torch.zeros(model.k, device=x.device, dtype=torch.long)
    for i in range(0, len(x), batch_size):
        out = model(x[i:i + batch_size])                                            # (K, b, 10)
        target = y[i:i + batch_size]
        loss += member_nll(out, target).sum(1)
        wrong += (out.argmax(2) != target).sum(1)
    return (loss / len(x)).tolist(), (wrong.double() / len(x)).tolist()


def _check_group(configs: Sequence[RunConfig]) -> None:
    keys = {group_key(c) for c in configs}
    if len(keys) != 1:
        raise ValueError(f"runs of a fused group must share {', '.join(GROUP_SETTINGS)}; got {sorted(keys)}")


def train_fused(configs: Sequence[RunConfig], data: MnistTensors, device: torch.device | str = "cpu",
                on_epoch: Optional[MemberCallback] = None) -> list[TrainResult]:
    """Train `configs` (one group) together; the result of member k is what its solo run gives."""
    _check_group(configs)
    device = torch.device(device)
    first, k = configs[0], len(configs)
    model = FusedMLP([init_model(c, device) for c in configs]).to(device)
    params = list(model.parameters())
    momentum = torch.tensor([c.momentum for c in configs], device=device)
    use_momentum = bool((momentum > 0).any())
    buffers = [torch.zeros_like(p) for p in params] if use_momentum else []
    live = torch.ones(k, dtype=torch.bool, device=device)
    results = [TrainResult(config=c, model=None) for c in configs]
    started = time.perf_counter()
    n = len(data.train_x)
    for epoch, order in enumerate(epoch_order(first, n, first.epochs), 1):
        epoch_start = time.perf_counter()
        lrs = torch.tensor([lr_at(c, epoch) for c in configs], device=device)
        finite = _train_epoch(model, params, buffers, momentum, lrs, live, data, order.to(device), first.batch_size)
        train_loss, train_error = evaluate_fused(model, data.train_x, data.train_y, first.test_batch_size)
        test_loss, test_error = evaluate_fused(model, data.test_x, data.test_y, first.test_batch_size)
        seconds = time.perf_counter() - epoch_start
        for i, result in enumerate(results):
            if result.diverged:
                continue
            record = EpochResult(epoch, lrs[i].item(), train_loss[i], train_error[i], test_loss[i],
                                 test_error[i], seconds)
            result.history.append(record)
            if on_epoch is not None:
                on_epoch(i, record)
            if not finite[i] or not (math.isfinite(train_loss[i]) and math.isfinite(test_loss[i])):
                result.diverged = True
                live[i] = False
        if not live.any():
            break
    elapsed = time.perf_counter() - started
    for i, result in enumerate(results):
        result.model = model.member(i, configs[i])
        result.seconds = elapsed / k  # each member's share of the group's time
    return results


def _train_epoch(model, params, buffers, momentum, lrs, live, data, order, batch_size) -> list[bool]:
    """One pass over the data in `order`; returns, per member, whether its loss stayed finite."""
    model.train()
    k = model.k
    running = torch.zeros(k, device=order.device)
    step_lrs = torch.where(live, lrs, torch.zeros_like(lrs))
    # per-parameter views of each member's lr (and momentum): first layer is (784, K*width)
    scale = [_per_member(p, step_lrs, model) for p in params]
    mom = [_per_member(p, momentum, model) for p in params] if buffers else []
    for step, start in enumerate(range(0, len(order), batch_size), 1):
        idx = order[start:start + batch_size]
        out = model(data.train_x[idx])                                              # (K, B, 10)
        target = data.train_y[idx]
        losses = member_nll(out, target).mean(1)                                    # (K,)
        grads = torch.autograd.grad(losses.sum(), params)
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(params, grads)):
                if buffers:
                    g = buffers[i].mul_(mom[i]).add_(g)
                p.sub_(scale[i] * g)
            running += losses.detach()
        if step % DIVERGENCE_CHECK_EVERY == 0:
            bad = ~torch.isfinite(running) & live
            if bad.any():  # freeze diverged members so they stop moving; the rest carry on
                live &= ~bad
                step_lrs = torch.where(live, lrs, torch.zeros_like(lrs))
                scale = [_per_member(p, step_lrs, model) for p in params]
    return torch.isfinite(running).tolist()


def _per_member(param: torch.Tensor, values: torch.Tensor, model: FusedMLP) -> torch.Tensor:
    """`values` (one per member) shaped to broadcast over `param`."""
    if param is model.w_in:                                              # (784, K*width)
        return values.repeat_interleave(model.width).view(1, -1)
    if param is model.b_in:                                              # (K*width,)
        return values.repeat_interleave(model.width)
    return values.view(-1, 1, 1)                                         # stacked (K, ., .)
