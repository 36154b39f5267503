"""The MLP classifier: 784 inputs, `depth` hidden layers of `width` units, 10 log-probabilities."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import RunConfig

IN_FEATURES = 28 * 28
N_CLASSES = 10


def make_activation(name: str) -> nn.Module:
    return {
        "relu": nn.ReLU,
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
        "leaky_relu": lambda: nn.LeakyReLU(negative_slope=0.01),
    }[name]()


class MLP(nn.Module):
    def __init__(self, depth: int = 2, width: int = 50, activation: str = "relu"):
        super().__init__()
        layers: list[nn.Module] = []
        fan_in = IN_FEATURES
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width), make_activation(activation)]
            fan_in = width
        layers.append(nn.Linear(fan_in, N_CLASSES))
        self.layers = nn.Sequential(*layers)

    @classmethod
    def from_config(cls, config: RunConfig) -> "MLP":
        return cls(config.depth, config.width, config.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.layers(x.flatten(1)), dim=1)
