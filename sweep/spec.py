"""sweeps.yaml -> validated SweepSpec -> list of PlannedRun. Pure: no torch, no mlflow.

Schema (every key is documented in README.md):

    experiment: NAME            # required: the MLflow experiment
    defaults: {SETTING: VALUE}  # optional: fixed settings of every run
    seeds: [1, 2, 3]            # optional: repeat every run once per seed
    grids:                      # required, at least one
      GRID_NAME: {SETTING: VALUE or [VALUES]}
"""
from __future__ import annotations

import difflib
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from mnist_core.config import DEFAULTS, SETTING_NAMES, RunConfig, check_setting

from .errors import SweepError

TOP_KEYS = ("experiment", "defaults", "seeds", "grids")
# Short tags for the settings that a run name shows only when they differ from the default.
_NAME_TAGS = {"momentum": "m", "gamma": "g", "restart_period": "p", "epochs": "e",
              "batch_size": "b", "test_batch_size": "tb", "seed": "s"}


class SpecError(SweepError, ValueError):
    """A sweep file that cannot be used; the message names the file, grid, key and value."""


@dataclass(frozen=True)
class SweepSpec:
    path: str
    experiment: str
    defaults: dict          # setting -> value
    seeds: tuple            # () when the file gives none
    grids: dict             # grid name -> {setting: tuple of values}

    @property
    def name(self) -> str:
        return Path(self.path).stem


@dataclass(frozen=True)
class PlannedRun:
    config: RunConfig
    key: str                # stable hash of the settings: the run's identity in the store
    name: str               # readable, e.g. relu-lr0.03-d2-w50
    grids: tuple            # the grids this run belongs to


def run_key(config: RunConfig) -> str:
    blob = json.dumps(config.as_params(), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_name(config: RunConfig) -> str:
    parts = [config.activation, f"lr{config.lr:g}", f"d{config.depth}", f"w{config.width}"]
    if config.schedule != DEFAULTS["schedule"]:
        parts.append(config.schedule)
    for setting, tag in _NAME_TAGS.items():
        value = getattr(config, setting)
        if value != DEFAULTS[setting]:
            parts.append(f"{tag}{value:g}" if isinstance(value, float) else f"{tag}{value}")
    return "-".join(parts)


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_value(where: str, key, value):
    if key not in SETTING_NAMES:
        raise SpecError(f"{where}: unknown setting '{key}'{_suggest(key, SETTING_NAMES)}; "
                        f"known settings: {', '.join(SETTING_NAMES)}")
    try:
        return check_setting(key, value)
    except ValueError as exc:
        raise SpecError(f"{where}, key '{key}', value {value!r}: {exc}") from None


def _check_mapping(where: str, value) -> dict:
    if not isinstance(value, dict):
        raise SpecError(f"{where} must be a mapping of setting: value, got {type(value).__name__} {value!r}")
    return value


def _values(where: str, key, raw) -> tuple:
    values = raw if isinstance(raw, list) else [raw]
    if not values:
        raise SpecError(f"{where}, key '{key}': empty list; give at least one value")
    checked = tuple(_check_value(where, key, v) for v in values)
    return tuple(dict.fromkeys(checked))  # drop repeated values, keep order


def parse_spec(text: str, path: str = "<sweep>") -> SweepSpec:
    """Validate the YAML text of a sweep file; raise SpecError naming what is wrong."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{path}: YAML syntax error{line}: {problem}") from None
    if not isinstance(doc, dict):
        raise SpecError(f"{path}: expected a mapping with keys {', '.join(TOP_KEYS)}, got {type(doc).__name__}")
    for key in doc:
        if key not in TOP_KEYS:
            raise SpecError(f"{path}: unknown top-level key '{key}'{_suggest(key, TOP_KEYS)}; "
                            f"allowed: {', '.join(TOP_KEYS)}")
    experiment = doc.get("experiment")
    if experiment is None or (isinstance(experiment, str) and not experiment.strip()):
        raise SpecError(f"{path}: missing 'experiment' (the MLflow experiment name)")
    if not isinstance(experiment, str):
        raise SpecError(f"{path}: 'experiment' must be a string, got {experiment!r}")

    defaults = {}
    for key, value in _check_mapping(f"{path}: 'defaults'", doc.get("defaults") or {}).items():
        if isinstance(value, list):
            raise SpecError(f"{path}: defaults, key '{key}': a default is one value, got list {value!r}; "
                            f"put lists in a grid")
        defaults[key] = _check_value(f"{path}: defaults", key, value)

    seeds = ()
    if "seeds" in doc:
        raw = doc["seeds"]
        seeds = _values(f"{path}: seeds", "seed", raw if raw is not None else [])

    grids_raw = doc.get("grids")
    if not grids_raw:
        raise SpecError(f"{path}: missing 'grids': give at least one grid of settings to sweep")
    grids = {}
    for grid_name, grid in _check_mapping(f"{path}: 'grids'", grids_raw).items():
        where = f"{path}: grid '{grid_name}'"
        grid = _check_mapping(where, grid if grid is not None else {})
        if not grid:
            raise SpecError(f"{where}: empty grid; give at least one setting")
        grids[str(grid_name)] = {key: _values(where, key, value) for key, value in grid.items()}
    spec = SweepSpec(path=str(path), experiment=experiment.strip(), defaults=defaults, seeds=seeds, grids=grids)
    expand(spec)  # combinations can still be invalid together; fail here, before anything runs
    return spec


def load_spec(path: str | Path) -> SweepSpec:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read sweep file: {exc.strerror or exc}") from None
    return parse_spec(text, str(path))


def _grid_configs(spec: SweepSpec, grid: dict):
    base = dict(spec.defaults)
    if spec.seeds and "seed" not in grid:
        grid = {**grid, "seed": spec.seeds}
    keys = sorted(grid)
    for combo in itertools.product(*(grid[k] for k in keys)):
        yield RunConfig(**{**base, **dict(zip(keys, combo))})


def expand(spec: SweepSpec, only_grids=None) -> list[PlannedRun]:
    """The sweep's runs: the union of its grids, each distinct config once, in a stable order."""
    only = set(only_grids or ())
    unknown = only - set(spec.grids)
    if unknown:
        name = sorted(unknown)[0]
        raise SpecError(f"{spec.path}: no grid named '{name}'{_suggest(name, spec.grids)}; "
                        f"grids: {', '.join(spec.grids)}")
    configs: dict[str, RunConfig] = {}
    members: dict[str, list[str]] = {}
    for grid_name, grid in spec.grids.items():
        if only and grid_name not in only:
            continue
        for config in _grid_configs(spec, grid):
            key = run_key(config)
            configs.setdefault(key, config)
            if grid_name not in members.setdefault(key, []):
                members[key].append(grid_name)
    return [PlannedRun(config=c, key=k, name=run_name(c), grids=tuple(members[k])) for k, c in configs.items()]
