"""Learning rate per epoch (1-based) for each schedule; pure functions of the config."""
from __future__ import annotations

import math

from .config import RunConfig


def lr_at(config: RunConfig, epoch: int) -> float:
    """The learning rate used throughout `epoch` (1 = the first epoch)."""
    t = epoch - 1
    if config.schedule == "fixed":
        return config.lr
    if config.schedule == "exponential":
        return config.lr * config.gamma**t
    if config.schedule == "cosine":  # annealed from lr towards 0 over the whole run
        return config.lr * (1 + math.cos(math.pi * t / config.epochs)) / 2
    if config.schedule == "cosine_restarts":  # same curve, restarted every restart_period epochs
        period = config.restart_period
        return config.lr * (1 + math.cos(math.pi * (t % period) / period)) / 2
    raise ValueError(f"unknown schedule {config.schedule!r}")


def lr_schedule(config: RunConfig) -> list[float]:
    return [lr_at(config, e) for e in range(1, config.epochs + 1)]
