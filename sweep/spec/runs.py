"""A validated sweep -> its planned runs: each run's settings, its key (its identity in the store)
and its name. Pure: no torch, no MLflow, no Optuna."""
from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import itertools
import json
from dataclasses import dataclass

from mnist_core.config import DEFAULTS, RunConfig

from .file import SpecError, SweepSpec, check_count, select
from .space import SearchSpec, cut, shown

# Short tags for the settings that a run name shows only when they differ from the default; a
# setting without a tag shows under its own name.
_NAME_TAGS = {"momentum": "m", "gamma": "g", "restart_period": "p", "epochs": "e",
              "batch_size": "b", "test_batch_size": "tb", "seed": "s", "validation": "val",
              "train_eval": "eval"}
_NAME_HEAD = ("activation", "lr", "depth", "width", "schedule")
# The settings every run key hashes. A setting added to RunConfig after these is hashed only when it
# differs from its default, so that the keys of the runs already in a store stay what they were.
_KEYED_ALWAYS = frozenset(("activation", "depth", "width", "lr", "momentum", "schedule", "gamma",
                           "restart_period", "epochs", "batch_size", "test_batch_size", "seed"))


@dataclass(frozen=True)
class PlannedRun:
    config: RunConfig
    key: str                # stable hash of the settings: the run's identity in the store
    name: str               # readable, e.g. relu-lr0.03-d2-w50
    grids: tuple            # the grids this run belongs to
    search: str = ""        # or the search that sampled it (then `key` names its trial slot)
    trial: int = -1         # its trial number in that search


def run_key(config: RunConfig) -> str:
    """The sha256 of json.dumps(params, sort_keys=True), params being the settings always keyed and
    the others that differ from their default, written out from each setting's cached part."""
    parts = filter(None, itertools.starmap(_key_part, sorted(vars(config).items())))
    return hashlib.sha256(("{" + ", ".join(parts) + "}").encode()).hexdigest()[:16]


def run_name(config: RunConfig) -> str:
    parts = [config.activation, f"lr{config.lr:g}", f"d{config.depth}", f"w{config.width}"]
    if config.schedule != DEFAULTS["schedule"]:
        parts.append(config.schedule)
    parts += filter(None, itertools.starmap(_name_part, vars(config).items()))
    return "-".join(parts)


# A grid of N runs has a few values per setting: each one's part of a key and of a name is made once.
# typed: 1 and 1.0 are written apart ("1", "1.0").
@functools.lru_cache(maxsize=4096, typed=True)
def _key_part(setting: str, value) -> str:
    keyed = setting in _KEYED_ALWAYS or value != DEFAULTS[setting]
    return f"{json.dumps(setting)}: {json.dumps(value)}" if keyed else ""


@functools.lru_cache(maxsize=4096, typed=True)
def _name_part(setting: str, value) -> str:
    if setting in _NAME_HEAD or value == DEFAULTS[setting]:
        return ""
    tag = _NAME_TAGS.get(setting, setting)
    return f"{tag}{value:g}" if isinstance(value, float) else f"{tag}{value}"


def _grid_runs(spec: SweepSpec, grid_name: str) -> list[tuple]:
    """(key, name, config) of every run of one grid, built once per spec."""
    memo_key = ("grid", grid_name)
    if memo_key not in spec._memo:
        grid = spec.grids[grid_name]
        if spec.seeds and "seed" not in grid:
            grid = {**grid, "seed": spec.seeds}
        keys = sorted(grid)
        runs = []
        for combo in itertools.product(*(grid[k] for k in keys)):
            settings = {**spec.defaults, **dict(zip(keys, combo))}
            try:  # every value was checked alone; a rule across settings would speak here
                config = RunConfig(**settings)
            except ValueError as exc:
                raise SpecError(f"{spec.path}: grid '{grid_name}', settings {shown(settings)}: "
                                f"{cut(str(exc))}") from None
            runs.append((run_key(config), run_name(config), config))
        spec._memo[memo_key] = runs
    return spec._memo[memo_key]


_AS_LOADED = object()  # expand's default limit: the one the spec was checked against


def expand(spec: SweepSpec, only_grids=None, max_runs=_AS_LOADED) -> list[PlannedRun]:
    """The runs of the sweep's grids (or of those named in `only_grids`; names of searches there are
    allowed and give no runs): the union of the grids, each distinct config once, in a stable order.
    Built once per spec and selection; refused over `max_runs` runs (default: the spec's limit)."""
    grid_names, _ = select(spec, only_grids)
    if only_grids and not grid_names:
        return []
    check_count(spec, grid_names, (), spec.max_runs if max_runs is _AS_LOADED else max_runs)
    memo_key = ("expand", grid_names)
    if memo_key not in spec._memo:
        with _collector_paused():
            first, members = {}, {}
            for grid_name in grid_names:
                for key, name, config in _grid_runs(spec, grid_name):
                    if key not in first:
                        first[key], members[key] = (name, config), [grid_name]
                    elif members[key][-1] != grid_name:
                        members[key].append(grid_name)
            spec._memo[memo_key] = [PlannedRun(config=config, key=key, name=name, grids=tuple(members[key]))
                                    for key, (name, config) in first.items()]
    return list(spec._memo[memo_key])


@contextlib.contextmanager
def _collector_paused():
    """Python's cycle collector paused: expanding a large sweep makes many objects and no cycles,
    and each full collection would walk every object the process holds (MLflow's and pandas' too)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def trial_config(spec: SweepSpec, search: SearchSpec, sampled: dict) -> RunConfig:
    """The settings of one trial of a search: the file's defaults, the space's fixed values, then
    the sampled ones (setting -> value, as Optuna suggests them)."""
    fixed = {setting: p.choices[0] for setting, p in search.space.items() if p.kind == "constant"}
    return RunConfig(**{**spec.defaults, **fixed, **sampled})
