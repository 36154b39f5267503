"""Search spaces and early stopping of a sweep file, as frozen dataclasses. Pure: no optuna import.

A parameter is written in the vocabulary of W&B sweep files and kept as what Optuna can sample:
`Param(kind="float", low, high, log, step)` is a FloatDistribution, `kind="int"` an
IntDistribution, `kind="categorical"` a CategoricalDistribution(choices), and `kind="constant"` the
one value `choices[0]`. The functions here validate one value and raise ValueError saying why;
sweep/spec.py adds the file, search and key.
"""
from __future__ import annotations

import difflib
import math
import reprlib
from dataclasses import dataclass, field
from decimal import Decimal

from mnist_core.config import CHOICES, SETTING_TYPES, check_setting

METHODS = ("random", "tpe")
EARLY_STOP_TYPES = ("asha", "median")
EARLY_STOP_KEYS = ("type", "min_epochs", "reduction_factor", "by")

# W&B distribution -> the keys it takes. Every one of these becomes an Optuna distribution.
DISTRIBUTIONS = {
    "constant": ("value",),
    "categorical": ("values",),
    "uniform": ("min", "max"),
    "int_uniform": ("min", "max"),
    "q_uniform": ("min", "max", "q"),
    "log_uniform_values": ("min", "max"),
    "q_log_uniform_values": ("min", "max", "q"),
    "inv_log_uniform_values": ("min", "max"),  # log(1/X) uniform on [log(1/max), log(1/min)]: X is log-uniform
    "log_uniform": ("min", "max"),             # min and max are natural logs of the bounds
    "inv_log_uniform": ("min", "max"),         # X = exp(-U(min, max)): log-uniform on [e^-max, e^-min]
}
# W&B distributions that have no bounded Optuna equivalent, and what to write instead.
UNSUPPORTED = {
    "normal": "uniform (min, max)",
    "q_normal": "q_uniform (min, max, q)",
    "log_normal": "log_uniform_values (min, max)",
    "q_log_normal": "log_uniform_values (min, max)",
    "q_log_uniform": "log_uniform_values (min, max), or q_log_uniform_values with q: 1 on an integer setting",
    "beta": "uniform (min, max)",
    "q_beta": "q_uniform (min, max, q)",
}
_LOG = {"log_uniform_values", "q_log_uniform_values", "inv_log_uniform_values", "log_uniform", "inv_log_uniform"}

_repr = reprlib.Repr()
_repr.maxstring, _repr.maxother, _repr.maxlong, _repr.maxlist, _repr.maxdict = 60, 60, 40, 8, 6


def shown(value, limit: int = 80) -> str:
    """repr(value), cut to about `limit` characters: a message never carries a whole file."""
    text = _repr.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def cut(text: str, limit: int = 300) -> str:
    """A message of a library error, cut short: it may quote a whole value."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def suggest(word, options) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


@dataclass(frozen=True)
class Param:
    kind: str                    # categorical | float | int | constant
    choices: tuple = ()          # categorical: the values; constant: (the value,)
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None   # None: continuous (float) or every integer (int)
    distribution: str = ""       # the W&B name it was written as (inferred when the file leaves it out)


@dataclass(frozen=True)
class EarlyStop:
    type: str                    # asha | median
    min_epochs: int = 1          # no run stops before this many epochs
    reduction_factor: int = 3    # asha: about 1 run in reduction_factor goes on at each rung
    by: tuple = ()               # settings a run is compared within: only runs sharing their values compete


@dataclass(frozen=True)
class SearchSpec:
    name: str
    method: str                  # random | tpe
    trials: int                  # runs the search trains in all
    seed: int                    # the sampler's seed; the runs keep their own `seed` setting
    space: dict = field(default_factory=dict)   # setting -> Param, in file order
    early_stop: EarlyStop | None = None         # the one that applies: its own, else the file's


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _distribution_of(raw: dict) -> str:
    name = raw.get("distribution")
    if name is None:  # as W&B: values, value, or min/max (int_uniform when both are integers)
        if "values" in raw:
            return "categorical"
        if "value" in raw:
            return "constant"
        if "min" in raw or "max" in raw:
            return "int_uniform" if _whole(raw.get("min")) and _whole(raw.get("max")) else "uniform"
        raise ValueError("give a list of values, {values: [...]}, {value: x}, or {min: a, max: b} "
                         "with an optional distribution")
    if not isinstance(name, str):
        raise ValueError(f"distribution must be a name such as uniform, got {shown(name)}")
    if name in UNSUPPORTED:
        raise ValueError(f"distribution '{name}' has no bounded Optuna equivalent; use {UNSUPPORTED[name]}")
    if name not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {shown(name)}{suggest(name, DISTRIBUTIONS)}; "
                         f"supported: {', '.join(DISTRIBUTIONS)}")
    return name


def _choices(setting: str, values) -> tuple:
    if not isinstance(values, list):
        raise ValueError(f"values must be a list, got {shown(values)}")
    if not values:
        raise ValueError("empty list; give at least one value")
    return tuple(dict.fromkeys(check_setting(setting, v) for v in values))


def _numeric(which: str, value):
    if isinstance(value, str):  # YAML reads 1e-3 as a string
        try:
            return float(value)
        except ValueError:
            pass
    if not _number(value):
        raise ValueError(f"{which} must be a number, got {shown(value)}")
    return value


def _bound(setting: str, which: str, value):
    try:
        return check_setting(setting, value)
    except ValueError as exc:
        raise ValueError(f"{which}: {exc}") from None


def _exp_bounds(distribution: str, low, high) -> tuple:
    """log_uniform takes the natural logs of its bounds; inv_log_uniform the negated ones."""
    try:
        return (math.exp(low), math.exp(high)) if distribution == "log_uniform" else (math.exp(-high), math.exp(-low))
    except OverflowError:
        raise ValueError(f"{distribution} takes natural logs of the bounds; e^{max(abs(low), abs(high)):g} "
                         f"is too large") from None


def _range(setting: str, distribution: str, raw: dict) -> Param:
    kind = SETTING_TYPES[setting]
    if kind == "str":
        raise ValueError(f"{setting} is one of {', '.join(CHOICES.get(setting, ()))}: give a list of them, "
                         f"not a range")
    low, high = _numeric("min", raw["min"]), _numeric("max", raw["max"])
    if low > high:
        raise ValueError(f"min {low:g} > max {high:g}")
    if distribution == "int_uniform" and not (_whole(low) and _whole(high)):
        raise ValueError(f"int_uniform needs integer min and max, got {low:g} and {high:g}")
    if distribution.endswith("log_uniform_values") and low <= 0:
        raise ValueError(f"{distribution} needs min > 0, got {low:g}")
    if distribution in ("log_uniform", "inv_log_uniform"):
        low, high = _exp_bounds(distribution, low, high)
    if kind == "int":
        if distribution not in ("int_uniform", "q_uniform", "q_log_uniform_values"):
            hint = "q_log_uniform_values with q: 1" if distribution in _LOG else "int_uniform"
            raise ValueError(f"{distribution} gives fractional values but {setting} must be an integer; use {hint}")
        if not (_whole(low) and _whole(high)):
            raise ValueError(f"{setting} must be an integer, so min and max must be integers, "
                             f"got {low:g} and {high:g}")
    step = 1 if distribution == "int_uniform" else None  # whole numbers are valid values of a float setting too
    if distribution.startswith("q_"):
        q = _numeric("q", raw.get("q", 1))  # q defaults to 1, as in W&B
        if q <= 0 or kind == "int" and not _whole(q):
            raise ValueError(f"q must be {'an integer' if kind == 'int' else 'a number'} > 0, got {q:g}")
        if distribution == "q_log_uniform_values":
            if kind != "int" or q != 1:
                raise ValueError("Optuna has no stepped log range: q_log_uniform_values is supported with q: 1 "
                                 "on an integer setting only; use log_uniform_values")
        else:
            step = q
            if (Decimal(str(high)) - Decimal(str(low))) % Decimal(str(q)) != 0:  # as Optuna checks it
                raise ValueError(f"max - min ({high - low:g}) must be a multiple of q ({q:g})")
    low, high = _bound(setting, "min", low), _bound(setting, "max", high)
    if kind == "int":
        step = None if step in (None, 1) else step
    elif step is not None:
        step = float(step)
    return Param(kind, low=low, high=high, log=distribution in _LOG, step=step, distribution=distribution)


def parse_param(setting: str, raw) -> Param:
    """One setting of a search space: a list (categorical), a scalar (constant) or a W&B parameter
    mapping. `setting` is a known RunConfig setting; every value it can produce is a valid one."""
    if isinstance(raw, list):
        return Param("categorical", choices=_choices(setting, raw), distribution="categorical")
    if not isinstance(raw, dict):
        return Param("constant", choices=(check_setting(setting, raw),), distribution="constant")
    distribution = _distribution_of(raw)
    allowed = ("distribution",) + DISTRIBUTIONS[distribution]
    for key in raw:
        if key not in allowed:
            if key == "probabilities":
                raise ValueError("probabilities are not supported: Optuna samples the values evenly")
            raise ValueError(f"unknown key {shown(key)}{suggest(key, allowed)}; {distribution} takes "
                             f"{', '.join(DISTRIBUTIONS[distribution])}")
    for key in DISTRIBUTIONS[distribution]:
        if key not in raw and key != "q":
            raise ValueError(f"missing '{key}'; {distribution} takes {', '.join(DISTRIBUTIONS[distribution])}")
    if distribution == "categorical":
        return Param("categorical", choices=_choices(setting, raw["values"]), distribution=distribution)
    if distribution == "constant":
        return Param("constant", choices=(check_setting(setting, raw["value"]),), distribution=distribution)
    return _range(setting, distribution, raw)


def check_keys(raw: dict, allowed, hints: dict) -> None:
    """A ValueError naming the first key of `raw` that is not `allowed`, with a hint: the word here
    for another tool's (`hints`), or a near spelling."""
    for key in raw:
        if key not in allowed:
            hint = f" (did you mean '{hints[key]}'?)" if key in hints else suggest(key, allowed)
            raise ValueError(f"unknown key {shown(key)}{hint}; allowed: {', '.join(allowed)}")


def _whole_at_least(name: str, value, least: int) -> int:
    if not _whole(value) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {shown(value)}")
    return value


def parse_early_stop(raw) -> EarlyStop:
    if not isinstance(raw, dict):
        raise ValueError("early_stop must be a mapping such as {type: asha, min_epochs: 1}")
    check_keys(raw, EARLY_STOP_KEYS, {"min_iter": "min_epochs", "eta": "reduction_factor"})  # W&B's words
    kind = raw.get("type")
    if kind is None:
        raise ValueError(f"missing 'type': {' or '.join(EARLY_STOP_TYPES)}")
    if kind not in EARLY_STOP_TYPES:
        hint = " (Optuna's successive halving: 'asha')" if kind == "hyperband" else suggest(kind, EARLY_STOP_TYPES)
        raise ValueError(f"unknown type {shown(kind)}{hint}; choose {' or '.join(EARLY_STOP_TYPES)}")
    if kind != "asha" and "reduction_factor" in raw:
        raise ValueError("reduction_factor applies to type asha only")
    by = raw.get("by", [])
    by = [by] if isinstance(by, str) else by
    if not isinstance(by, list) or any(b not in SETTING_TYPES for b in by):
        bad = next((b for b in by if b not in SETTING_TYPES), by) if isinstance(by, list) else by
        raise ValueError(f"by: {shown(bad)} is not a setting; give settings such as [activation]"
                         f"{suggest(bad, SETTING_TYPES) if isinstance(bad, str) else ''}")
    return EarlyStop(kind, min_epochs=_whole_at_least("min_epochs", raw.get("min_epochs", 1), 1),
                     reduction_factor=_whole_at_least("reduction_factor", raw.get("reduction_factor", 3), 2),
                     by=tuple(dict.fromkeys(by)))


def _number_text(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe_param(param: Param) -> str:
    if param.kind == "categorical":
        return "one of " + ", ".join(_number_text(v) for v in param.choices)
    if param.kind == "constant":
        return f"fixed at {_number_text(param.choices[0])}"
    words = {(False, "float"): "uniform ", (True, "float"): "log-uniform ", (False, "int"): "integers ",
             (True, "int"): "log-uniform integers "}[param.log, param.kind]
    text = f"{words}{_number_text(param.low)} .. {_number_text(param.high)}"
    return text + (f" in steps of {_number_text(param.step)}" if param.step is not None else "")


def describe_early_stop(stop: EarlyStop) -> str:
    rule = f"asha (about 1 run in {stop.reduction_factor} goes on at each rung)" if stop.type == "asha" else \
        "median (a run worse than the median of the earlier runs at the same epoch stops)"
    epochs = f"{stop.min_epochs} epoch" + ("s" if stop.min_epochs != 1 else "")
    within = f", within each {', '.join(stop.by)}" if stop.by else ""
    return f"early stop: {rule}, never before {epochs}{within}"


def describe_search(search: SearchSpec) -> list[str]:
    """Lines for `sweep plan`: a header, then one indented line per parameter and early stopping."""
    lines = [f"search '{search.name}': {search.method}, {search.trials} trials, sampler seed {search.seed}"]
    lines += [f"  {setting}: {describe_param(param)}" for setting, param in search.space.items()]
    if search.early_stop is not None:
        lines.append("  " + describe_early_stop(search.early_stop))
    return lines
