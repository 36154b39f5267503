"""RunConfig: every setting of one training run, validated when it is built.

`dataclasses.asdict(config)` is exactly what a sweep logs as params, so every field here
is a plain int, float or str.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

ACTIVATIONS = ("relu", "tanh", "sigmoid", "leaky_relu")
SCHEDULES = ("fixed", "exponential", "cosine", "cosine_restarts")
TRAIN_EVALS = ("sample", "full")
# With train_eval "sample", a run's per-epoch train loss and error are measured on this many of its
# training images (the first of a fixed permutation, the same for every run): the error's standard
# error is at most 0.5 / sqrt(10,000) = 0.005, and at 2% error 0.0014.
TRAIN_SAMPLE = 10_000


def _setting(default, help_text):
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class RunConfig:
    activation: str = _setting("relu", f"hidden-layer activation: {', '.join(ACTIVATIONS)}")
    depth: int = _setting(2, "number of hidden layers (>= 1)")
    width: int = _setting(50, "units in every hidden layer (>= 1)")
    lr: float = _setting(0.03, "initial learning rate of SGD (> 0)")
    momentum: float = _setting(0.0, "SGD momentum, 0 <= m < 1")
    schedule: str = _setting("fixed", f"learning-rate schedule: {', '.join(SCHEDULES)}")
    gamma: float = _setting(0.7, "per-epoch decay factor of the exponential schedule, 0 < g <= 1")
    restart_period: int = _setting(2, "epochs per cycle of the cosine_restarts schedule (>= 1)")
    epochs: int = _setting(10, "training epochs (>= 1)")
    batch_size: int = _setting(64, "training mini-batch size (>= 1)")
    test_batch_size: int = _setting(1000, "batch size for evaluation (>= 1)")
    seed: int = _setting(1, "random seed for weights and data order")
    validation: int = _setting(0, "training images held out for validation (0 = none)")
    train_eval: str = _setting("sample", "what the per-epoch train loss and error are measured on: sample "
                               "(10,000 fixed training images) or full (every training image)")

    def __post_init__(self):
        settings = vars(self)  # frozen: the checked values go in through the instance's dict
        for name, value in settings.items():
            try:
                settings[name] = _checked(name, value)
            except TypeError:  # an unhashable value: check_setting says what is wrong with it
                settings[name] = check_setting(name, value)

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    def as_params(self) -> dict:
        return dataclasses.asdict(self)


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(RunConfig))
SETTING_TYPES = {f.name: f.type for f in dataclasses.fields(RunConfig)}
SETTING_HELP = {f.name: f.metadata["help"] for f in dataclasses.fields(RunConfig)}
DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig)}

_RANGES = {
    "depth": (lambda v: v >= 1, ">= 1"),
    "width": (lambda v: v >= 1, ">= 1"),
    "lr": (lambda v: v > 0, "> 0"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "gamma": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "restart_period": (lambda v: v >= 1, ">= 1"),
    "epochs": (lambda v: v >= 1, ">= 1"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "test_batch_size": (lambda v: v >= 1, ">= 1"),
    "seed": (lambda v: v >= 0, ">= 0"),
    "validation": (lambda v: v >= 0, ">= 0"),
}
# Settings that change what a run measures, not what it trains: runs that differ only in them are
# seeds of one setting (runs stored before train_eval existed have no value for it).
MEASURED_ONLY = ("train_eval",)
CHOICES = {"activation": ACTIVATIONS, "schedule": SCHEDULES, "train_eval": TRAIN_EVALS}


# A grid of N runs builds N configs from a few values per setting: each value is checked once.
# typed: 1, 1.0 and True are checked apart (an int setting refuses 1.0 and True).
@functools.lru_cache(maxsize=4096, typed=True)
def _checked(name: str, value):
    return check_setting(name, value)


def check_setting(name: str, value):
    """Return `value` converted to the setting's type, or raise ValueError saying why not."""
    kind = SETTING_TYPES[name]
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    elif kind == "float":
        if isinstance(value, str):  # YAML reads 1e-3 as a string
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"{name} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{name} must be finite, got {value!r}")
    else:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
    if name in CHOICES and value not in CHOICES[name]:
        raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(CHOICES[name])}")
    if name in _RANGES:
        ok, rule = _RANGES[name]
        if not ok(value):
            raise ValueError(f"{name} must be {rule}, got {value!r}")
    return value


# Settings that must be equal inside a fused group: the shape, and what fixes the steps and what is
# measured. Activations may differ (each member's on its slice): larger fused models cost less per
# network (docs/fused.md).
GROUP_SETTINGS = ("depth", "width", "batch_size", "test_batch_size", "epochs", "validation", "train_eval")

# Networks per fused model in a sweep: a larger batched model costs less per network-epoch, with
# returns that fall off (docs/benchmarks.md); 16 keeps most of the gain while leaving several jobs
# to share out among the workers.
DEFAULT_CHUNK_SIZE = 16


def group_key(config: RunConfig) -> tuple:
    return tuple(getattr(config, s) for s in GROUP_SETTINGS)
