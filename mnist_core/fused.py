"""Train a group of same-shape runs as one batched model (the HFTA idea, MLSys 2021).

K networks that share depth, width and what fixes their steps (batch size, epochs, validation
split) live in stacked weights; their activations may differ, each applied to its members' slice.
Each member starts from its solo run's weights and sees its solo run's batches in its solo run's
order (its seed's permutation). The members are held in blocks of one seed, and the members of a
block share every mini-batch, which goes through their first layers as one (784 x n*width) matrix
product (one product for the whole group when it has one seed). The later layers are batched
products. The backward pass is written out (no autograd): each member's gradient is its solo
gradient (of its mean NLL), and without momentum each member's -lr goes into the delta at the
logits, so that the weight-gradient products add the SGD step straight into the weights. Each
member's own lr, momentum and schedule apply: a member's numbers are its solo run's up to rounding
(in float64, ~1e-14 of the weights after an epoch of MNIST).

A member whose loss turns NaN or infinite (diverged), or whose callback returns False (stopped),
leaves the stacked model, keeping the weights it had; the others go on and cost no more than alone.
"""
from __future__ import annotations

import itertools
import time
from collections import Counter
from typing import Callable, Iterable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import DEFAULT_CHUNK_SIZE, GROUP_SETTINGS, RunConfig, group_key  # noqa: F401
from .data import MnistTensors, holdout
from .model import MLP
from .schedule import lr_at
from .trainer import DIVERGENCE_CHECK_EVERY, EpochResult, TrainResult, epoch_order, evaluate, init_model, measure

# Called after every epoch of member i; returning False takes member i out (None or True: go on).
MemberCallback = Callable[[int, EpochResult], Optional[bool]]
# Called after every epoch with the records of the members going on; the members it names leave.
GroupCallback = Callable[[dict], Iterable[int]]


def take(tensors: Sequence[torch.Tensor], dims: Sequence[int], keep: torch.Tensor) -> list[torch.Tensor]:
    """The members `keep` of each stacked tensor, whose members run along `dims`."""
    return [t.detach().index_select(d, keep) for t, d in zip(tensors, dims)]


def activation_slices(activations: Sequence[nn.Module]) -> list[tuple[nn.Module, int, int]]:
    """(activation, start, stop) for each run of consecutive members whose activations are alike."""
    slices: list[tuple[nn.Module, int, int]] = []
    for k, activation in enumerate(activations):
        if slices and repr(slices[-1][0]) == repr(activation):  # e.g. "LeakyReLU(negative_slope=0.01)"
            slices[-1] = (slices[-1][0], slices[-1][1], k + 1)
        else:
            slices.append((activation, k, k + 1))
    return slices


def activate_(activation: nn.Module, h: torch.Tensor) -> None:
    """Apply `activation` to h in place."""
    if isinstance(activation, nn.LeakyReLU):
        F.leaky_relu_(h, activation.negative_slope)
    else:
        {nn.ReLU: torch.relu_, nn.Tanh: torch.tanh_, nn.Sigmoid: torch.sigmoid_}[type(activation)](h)


def derive_(activation: nn.Module, d: torch.Tensor, h: torch.Tensor) -> None:
    """Multiply d, a gradient at the output h of `activation`, by its derivative there, in place
    (with the kernels autograd uses)."""
    aten = torch.ops.aten
    if isinstance(activation, nn.LeakyReLU):
        aten.leaky_relu_backward.grad_input(d, h, activation.negative_slope, True, grad_input=d)
    elif isinstance(activation, nn.ReLU):
        aten.threshold_backward.grad_input(d, h, 0, grad_input=d)
    else:
        {nn.Tanh: aten.tanh_backward, nn.Sigmoid: aten.sigmoid_backward}[type(activation)].grad_input(
            d, h, grad_input=d)


class FusedMLP(nn.Module):
    """K MLPs of one shape as stacked weights; forward gives (K, batch, 10) log-probabilities.

    The first layer's weight is (784, K, width), seen as (784, K*width): a batch shared by every
    member goes through it in one product, or each block of members' batch through the block's
    columns. Every later layer's weight is (K, fan_in, fan_out) and its bias (K, 1, fan_out).
    `activations` holds each member's activation; each run of alike ones is applied to its slice of
    the members in one call, in place.
    """

    def __init__(self, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
                 activations: Sequence[nn.Module]):
        super().__init__()
        self.weights = nn.ParameterList(nn.Parameter(w) for w in weights)
        self.biases = nn.ParameterList(nn.Parameter(b) for b in biases)
        self.activations = tuple(activations)
        self.slices = activation_slices(self.activations)

    @classmethod
    def stack(cls, members: Sequence[MLP]) -> "FusedMLP":
        linears = [[m for m in net.layers if isinstance(m, nn.Linear)] for net in members]
        activations = [next(m for m in net.layers if not isinstance(m, nn.Linear)) for net in members]
        with torch.no_grad():
            weights = [torch.stack([ls[0].weight.t() for ls in linears], dim=1)]
            biases = [torch.stack([ls[0].bias for ls in linears])]
            for i in range(1, len(linears[0])):
                weights.append(torch.stack([ls[i].weight.t() for ls in linears]))
                biases.append(torch.stack([ls[i].bias for ls in linears]).unsqueeze(1))
        return cls(weights, biases, activations)

    @property
    def k(self) -> int:
        return self.biases[0].shape[0]

    def member_dims(self) -> list[int]:
        """For each of parameters(), the dimension along which its members run."""
        return [1] + [0] * (len(self.weights) - 1) + [0] * len(self.biases)

    def forward(self, x: torch.Tensor, blocks: Optional[Sequence[int]] = None) -> torch.Tensor:
        """x: (B, 784) shared by every member, or (S, B, 784) one batch per block of consecutive
        members, `blocks` giving their sizes (by default, one member each) -> (K, B, 10)."""
        return F.log_softmax(self.outputs(x, blocks)[-1], dim=2)

    def outputs(self, x: torch.Tensor, blocks: Optional[Sequence[int]] = None) -> list[torch.Tensor]:
        """Each layer's output on x (as in forward): the hidden activations (K, B, width), then the
        logits (K, B, 10)."""
        outs = [self._first_layer(*self._by_block(x, blocks))]
        for i in range(1, len(self.weights)):
            self._per_slice(activate_, outs[-1])
            outs.append(torch.baddbmm(self.biases[i], outs[-1], self.weights[i]))
        return outs

    @torch.no_grad()
    def add_gradients(self, x: torch.Tensor, blocks: Optional[Sequence[int]], outs: list[torch.Tensor],
                      delta: torch.Tensor, into: Sequence[torch.Tensor]) -> None:
        """Backpropagation without autograd: add to each of `into` (shaped as parameters()) its
        parameter's gradient, where `delta` (K, B, 10) is the loss's gradient at the logits and
        `outs` is outputs(x, blocks). `into` may be the parameters themselves: with delta scaled by
        -lr, that is an SGD step, as each layer's delta goes down before its weights change."""
        n = len(self.weights)
        weights, biases = into[:n], into[n:]
        for i in range(n - 1, 0, -1):
            below = torch.bmm(delta, self.weights[i].transpose(1, 2))
            self._per_slice(derive_, below, outs[i - 1])
            weights[i].baddbmm_(outs[i - 1].transpose(1, 2), delta)
            biases[i].add_(delta.sum(1, keepdim=True))
            delta = below
        x, columns = self._by_block(x, blocks)
        delta = delta.transpose(0, 1).reshape(x.shape[1], -1)                       # (B, K*width)
        for xb, w, d in zip(x, weights[0].view(x.shape[2], -1).split(columns, 1), delta.split(columns, 1)):
            w.addmm_(xb.t(), d)
        biases[0].view(-1).add_(delta.sum(0))

    def _per_slice(self, function, *tensors: torch.Tensor) -> None:
        """function(activation, *parts) for each activation's slice of the members of `tensors`."""
        for activation, start, stop in self.slices:
            function(activation, *(t[start:stop] for t in tensors))

    def _by_block(self, x: torch.Tensor, blocks: Optional[Sequence[int]]) -> tuple[torch.Tensor, list[int]]:
        """x as (S, B, 784), one batch per block, and each block's number of first-layer columns."""
        if x.dim() == 2:
            x, blocks = x.unsqueeze(0), [self.k]
        return x, [n * self.weights[0].shape[2] for n in blocks or [1] * self.k]

    def _first_layer(self, x: torch.Tensor, columns: list[int]) -> torch.Tensor:
        w, b = self.weights[0].flatten(1), self.biases[0].flatten()                 # (784, K*width)
        h = [torch.addmm(bb, xb, wb) for xb, wb, bb in zip(x, w.split(columns, 1), b.split(columns))]
        h = h[0] if len(h) == 1 else torch.cat(h, 1)                                # (B, K*width)
        return h.view(x.shape[1], self.k, -1).transpose(0, 1)                       # (K, B, width)

    def select(self, keep: torch.Tensor) -> "FusedMLP":
        """A new model of the members `keep` (indices) alone, with copies of their weights."""
        taken = take(list(self.parameters()), self.member_dims(), keep)
        activations = [self.activations[k] for k in keep.tolist()]
        return FusedMLP(taken[:len(self.weights)], taken[len(self.weights):], activations)

    def member_state_dict(self, k: int) -> dict:
        """Member k's weights as an ordinary MLP state dict (what load_agent expects)."""
        state = {}
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            w = w.detach().select(1 if i == 0 else 0, k)                            # (fan_in, fan_out)
            state[f"layers.{2 * i}.weight"] = w.t().contiguous()
            state[f"layers.{2 * i}.bias"] = b.detach()[k].flatten().clone()
        return state

    def member(self, k: int, config: RunConfig) -> MLP:
        w = self.weights[0]
        model = MLP.from_config(config).to(device=w.device, dtype=w.dtype)
        model.load_state_dict(self.member_state_dict(k))
        return model.eval()


def log_softmax(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probabilities, probabilities) over the last dimension of `logits`: F.log_softmax's
    numbers up to rounding, in a few element-wise kernels, which for a last dimension of 10 are
    faster than its kernel (docs/fused.md). In place: not for autograd (the step writes its own
    backward pass)."""
    shifted = logits - logits.amax(-1, keepdim=True)
    probabilities = shifted.exp()
    total = probabilities.sum(-1, keepdim=True)
    return shifted.sub_(total.log()), probabilities.div_(total)


def member_nll(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(K, B) negative log-likelihood of each member's prediction; `target` is (B,) or (K, B)."""
    return -out.gather(2, target.expand(out.shape[:2]).unsqueeze(2)).squeeze(2)


@torch.no_grad()
def evaluate_fused(model: FusedMLP, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[list, list]:
    """Per member: mean NLL loss and error fraction over all of (x, y), in eval mode."""
    model.eval()
    loss = torch.zeros(model.k, device=x.device, dtype=x.dtype)
    wrong = torch.zeros(model.k, device=x.device, dtype=torch.long)
    for i in range(0, len(x), batch_size):
        out = model(x[i:i + batch_size])                                            # (K, b, 10)
        target = y[i:i + batch_size]
        loss += member_nll(out, target).sum(1)
        wrong += (out.argmax(2) != target).sum(1)
    return [v / len(x) for v in loss.tolist()], [w / len(x) for w in wrong.tolist()]


def _per_member(values: torch.Tensor, param: torch.Tensor, dim: int) -> torch.Tensor:
    """`values` (one per member) shaped to broadcast over `param`, whose members run along `dim`."""
    return values.view([-1 if d == dim else 1 for d in range(param.dim())])


def stacking_order(configs: Sequence[RunConfig]) -> list[int]:
    """The members' order in the stacked model: the members of a seed together (a block, one batch),
    then by activation (one slice each); first the seeds of one member, all by activation."""
    seed_members = Counter(c.seed for c in configs)

    def key(i: int) -> tuple:
        seed, shared = configs[i].seed, seed_members[configs[i].seed] > 1
        return (shared, seed if shared else 0, configs[i].activation)
    return sorted(range(len(configs)), key=key)


class Members:
    """The members still training: their ids (positions in the group) in the stacked model's
    order, the stacked model, the momentum buffers and, within an epoch, each one's lr, batch order
    and running loss, in stacking_order."""

    def __init__(self, configs: Sequence[RunConfig], device: torch.device, dtype: torch.dtype):
        self.configs = list(configs)
        self.ids = stacking_order(configs)
        self.model = FusedMLP.stack([init_model(configs[i], device, dtype) for i in self.ids])
        self.momentum = torch.tensor([configs[i].momentum for i in self.ids], device=device, dtype=dtype)
        momentum = any(c.momentum for c in configs)
        self.buffers = [torch.zeros_like(p) for p in self.model.parameters()] if momentum else []

    def start_epoch(self, epoch: int, orders: dict[int, torch.Tensor]) -> None:
        """Set each member's lr for `epoch` and its batch order (`orders`: per seed)."""
        w = self.model.weights[0]
        self.lrs = torch.tensor([lr_at(self.configs[i], epoch) for i in self.ids], device=w.device, dtype=w.dtype)
        self.orders = {seed: order.to(w.device) for seed, order in orders.items()}
        self.running = torch.zeros(len(self.ids), device=w.device, dtype=w.dtype)
        self._arrange()

    def _arrange(self) -> None:
        """Per-parameter views of the lrs and momenta; the batch order of each block of one seed."""
        self.params, dims = list(self.model.parameters()), self.model.member_dims()
        self.descent = (-self.lrs).view(-1, 1, 1)                      # -lr, to scale a (K, B, 10) delta
        self.descent_views = [_per_member(-self.lrs, p, d) for p, d in zip(self.params, dims)]
        self.momentum_views = [_per_member(self.momentum, p, d) for p, d in zip(self.params, dims)]
        seeds = [self.configs[i].seed for i in self.ids]
        runs = [(seed, len(list(members))) for seed, members in itertools.groupby(seeds)]
        self.blocks = [n for _, n in runs]
        self.block_of = torch.tensor([j for j, (_, n) in enumerate(runs) for _ in range(n)], device=self.lrs.device)
        self.order = self.orders[seeds[0]] if len(runs) == 1 else torch.stack([self.orders[s] for s, _ in runs])

    @torch.no_grad()
    def step(self, data: MnistTensors, start: int, batch_size: int) -> None:
        """One SGD step of every member on its batch at `start` of its order."""
        idx = self.order[..., start:start + batch_size]                  # (B,) one seed, or (S, B)
        # index_select, not indexing: several times faster for an (S, B) index
        x = data.train_x.index_select(0, idx.flatten()).view(*idx.shape, -1)
        target = data.train_y.index_select(0, idx.flatten()).view(idx.shape)
        if idx.dim() == 2:
            target = target.index_select(0, self.block_of)                                   # (K, B)
        outs = self.model.outputs(x, self.blocks)
        log_p, p = log_softmax(outs[-1])
        target = target.expand(log_p.shape[:2]).unsqueeze(2)                              # (K, B, 1)
        picked = log_p.gather(2, target)
        self.running -= picked.mean(1).squeeze(1)  # each member's mean NLL
        # the gradient of each member's mean NLL at its logits: (softmax - one-hot) / B
        delta = p.scatter_add_(2, target, torch.full_like(picked, -1.0)).div_(target.shape[1])
        if not self.buffers:  # the products write each member's step, -lr x gradient, into its weights
            self.model.add_gradients(x, self.blocks, outs, delta.mul_(self.descent), self.params)
            return
        torch._foreach_mul_(self.buffers, self.momentum_views)
        self.model.add_gradients(x, self.blocks, outs, delta, self.buffers)
        torch._foreach_addcmul_(self.params, self.buffers, self.descent_views)

    def nonfinite(self) -> list[int]:
        """Ids of the members whose loss this epoch is NaN or infinite."""
        bad = (~torch.isfinite(self.running)).tolist()
        return [i for i, b in zip(self.ids, bad) if b]

    def drop(self, ids: Sequence[int]) -> dict[int, MLP]:
        """Take members `ids` out of the stacked model; their models (in eval mode), by id."""
        gone = {i: self.model.member(self.ids.index(i), self.configs[i]) for i in ids}
        keep = [p for p, i in enumerate(self.ids) if i not in gone]
        self.ids = [self.ids[p] for p in keep]
        if gone and self.ids:
            index = torch.tensor(keep, device=self.momentum.device)
            dims = self.model.member_dims()
            self.model = self.model.select(index)
            self.buffers = take(self.buffers, dims, index)
            self.momentum, self.lrs, self.running = (t[index] for t in (self.momentum, self.lrs, self.running))
            self._arrange()
        return gone


def _orders(configs: Sequence[RunConfig], n: int) -> Iterator[dict[int, torch.Tensor]]:
    """Per epoch: the sample order of each seed of the group, as its solo runs draw them."""
    streams = {c.seed: epoch_order(c, n, c.epochs) for c in configs}
    for _ in range(configs[0].epochs):
        yield {seed: next(stream) for seed, stream in streams.items()}


def _train_epoch(members: Members, data: MnistTensors, batch_size: int) -> dict[int, MLP]:
    """One pass over the training set. A member whose loss turns NaN or infinite leaves at the next
    check, where its solo run would stop the epoch; returns those members' models, by id."""
    members.model.train()
    gone = {}
    for step, start in enumerate(range(0, len(data.train_x), batch_size), 1):
        members.step(data, start, batch_size)
        if step % DIVERGENCE_CHECK_EVERY == 0:
            gone.update(members.drop(members.nonfinite()))
            if not members.ids:
                break
    return gone


def _measure(members: Members, gone: dict[int, MLP], data: MnistTensors, batch_size: int,
             train_eval: str) -> dict[int, dict]:
    """Each member's epoch numbers (EpochResult fields), by id: from the stacked model, or for
    members that left during the epoch from their own model, as their solo run measures them."""
    numbers = {i: measure(evaluate, model, data, batch_size, train_eval) for i, model in gone.items()}
    if members.ids:
        stacked = measure(evaluate_fused, members.model, data, batch_size, train_eval)
        for p, i in enumerate(members.ids):
            numbers[i] = {name: values[p] for name, values in stacked.items()}
    return numbers


def _check_group(configs: Sequence[RunConfig]) -> None:
    keys = {group_key(c) for c in configs}
    if len(keys) != 1:
        raise ValueError(f"runs of a fused group must share {', '.join(GROUP_SETTINGS)}; got {sorted(keys)}")


def _record(results: list[TrainResult], trained: list[int], epoch: int, numbers: dict, finite: dict,
            seconds: float, on_epoch: Optional[MemberCallback], on_group: Optional[GroupCallback]) -> list[int]:
    """Log epoch `epoch` of each member in `trained` and call back; the ids of those that leave now."""
    records = {}
    for i in trained:
        result = results[i]
        record = records[i] = EpochResult(epoch, lr_at(result.config, epoch), seconds=seconds, **numbers[i])
        result.history.append(record)
        result.seconds += seconds / len(trained)  # each member's share of the group's time
        result.stopped = on_epoch is not None and on_epoch(i, record) is False
        result.diverged = not (finite.get(i, False) and record.finite)
    going_on = {i: r for i, r in records.items() if not (results[i].stopped or results[i].diverged)}
    for i in on_group(going_on) if on_group is not None and going_on else ():
        results[i].stopped = True
    return [i for i in trained if results[i].stopped or results[i].diverged]


def train_fused(configs: Sequence[RunConfig], data: MnistTensors, device: torch.device | str = "cpu",
                on_epoch: Optional[MemberCallback] = None,
                on_group: Optional[GroupCallback] = None) -> list[TrainResult]:
    """Train `configs` (one group) together, in the dtype of `data`; the result of member i is what
    its solo run gives. `on_epoch(i, record)` returning False takes member i out after that epoch;
    so does `on_group(records)` returning i, called once an epoch with every going member's record
    (for decisions that compare members with each other)."""
    _check_group(configs)
    data = holdout(data, configs[0].validation)
    members = Members(configs, torch.device(device), data.dtype)
    results = [TrainResult(config=c, model=None) for c in configs]
    models = {}  # the trained models of the members that left, by id
    for epoch, orders in enumerate(_orders(configs, len(data.train_x)), 1):
        started, trained = time.perf_counter(), sorted(members.ids)  # called back in the group's order
        members.start_epoch(epoch, orders)
        gone = _train_epoch(members, data, configs[0].batch_size)
        models.update(gone)
        finite = dict(zip(members.ids, torch.isfinite(members.running).tolist()))
        numbers = _measure(members, gone, data, configs[0].test_batch_size, configs[0].train_eval)
        leaving = _record(results, trained, epoch, numbers, finite, time.perf_counter() - started, on_epoch,
                          on_group)
        models.update(members.drop([i for i in leaving if i not in gone]))
        if not members.ids:
            break
    models.update(members.drop(list(members.ids)))
    for i, model in models.items():
        results[i].model = model
    return results
