"""sweeps.yaml -> a validated SweepSpec. Pure: no torch, no MLflow, no Optuna.

Schema (every key is documented in README.md):

    experiment: NAME            # required: the MLflow experiment
    defaults: {SETTING: VALUE}  # optional: fixed settings of every run
    seeds: [1, 2, 3]            # optional: repeat every grid run once per seed,
    seeds: {min: 2, max: 10, until: decided}   # or give seeds where a question is still open
    grids:                      # grids, searches or both; at least one grid or search
      GRID_NAME: {SETTING: VALUE or [VALUES], early_stop: EARLY_STOP}
    searches:
      SEARCH_NAME: {method: random|tpe, trials: N, seed: N, space: {SETTING: PARAM}, early_stop: EARLY_STOP}
    early_stop: {type: asha|median, min_epochs: N, reduction_factor: N}   # optional, for every grid and search

A file is read whole, checked whole and refused with one SpecError naming the file (and the grid or
search, key and value) before anything runs; runs.py expands it later, once per spec object.
"""
from __future__ import annotations

import collections.abc
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mnist_core.config import SETTING_NAMES, check_setting

from ..errors import SweepError
from .space import METHODS, EarlyStop, SearchSpec, check_keys, cut, parse_early_stop, parse_param, shown, suggest

MAX_FILE_BYTES = 1 << 20  # a sweep file is a few lines; anything near this is a mistake
MAX_RUNS = 100_000        # default cap on the runs of a sweep; max_runs=None lifts it
TOP_KEYS = ("experiment", "defaults", "seeds", "grids", "searches", "early_stop")
SEARCH_KEYS = ("method", "trials", "seed", "space", "early_stop")
# Words of a W&B sweep file and their names here.
_WANDB_WORDS = {"parameters": "space", "run_cap": "trials", "early_terminate": "early_stop"}
class SpecError(SweepError, ValueError):
    """A sweep file that cannot be used; the message names the file, grid, key and value."""


ADAPTIVE_KEYS = ("min", "max", "until")
MAX_ADAPTIVE_SEEDS = 100


@dataclass(frozen=True)
class AdaptiveSeeds:
    """`seeds: {min: 2, max: 10, until: decided}`: every setting gets seeds 1..min, then seeds go,
    one per round, to the settings whose question is still open (sweep.adaptive.seeds), up to max."""
    min: int
    max: int
    until: str = "decided"

    @property
    def seeds(self) -> tuple:
        """Every seed a setting may get, in the order it gets them."""
        return tuple(range(1, self.max + 1))


@dataclass(frozen=True)
class SweepSpec:
    path: str
    experiment: str
    defaults: dict          # setting -> value
    seeds: tuple            # () when the file gives none; with adaptive seeds, every seed a setting may get
    grids: dict             # grid name -> {setting: tuple of values}
    searches: dict = field(default_factory=dict)         # search name -> SearchSpec
    early_stop: EarlyStop | None = None                  # the file's top-level early_stop
    grid_early_stop: dict = field(default_factory=dict)  # grid name -> its own EarlyStop, where it has one
    max_runs: int | None = MAX_RUNS                      # the limit the file was checked against
    adaptive: AdaptiveSeeds | None = None                # seeds given where a question is still open
    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # expansions

    @property
    def name(self) -> str:
        return Path(self.path).stem

    def early_stop_for(self, name: str) -> EarlyStop | None:
        """The early stopping of a grid or search: its own, else the file's, else None."""
        select(self, [name])
        if name in self.searches:
            return self.searches[name].early_stop
        return self.grid_early_stop.get(name, self.early_stop)


class _Refused(Exception):
    """What the sweep loader will not read; the message names the line."""


class _SweepLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml when built in: fast, nesting capped
    """yaml.safe_load, less what a sweep file never needs and a hostile one abuses: an alias (a few
    hundred bytes of nested aliases expand to gigabytes), a merge key and a repeated key."""

    def __init__(self, stream):
        super().__init__(stream)
        self._built = set()

    def construct_object(self, node, deep=False):
        if node in self._built:  # an alias hands the same node over again
            raise _Refused(f"the value at line {node.start_mark.line + 1} is used again through a YAML alias; "
                           f"anchors and aliases (&name, *name) are not allowed in a sweep file: write each "
                           f"value out")
        self._built.add(node)
        try:
            return super().construct_object(node, deep)
        except ValueError as exc:  # an integer of thousands of digits, a date that does not exist
            reason = str(exc).split(";")[0]  # not Python's advice on sys.set_int_max_str_digits
            raise _Refused(f"cannot read the value at line {node.start_mark.line + 1}: {cut(reason, 120)}") from None

    def construct_mapping(self, node, deep=False):
        if not isinstance(node, yaml.MappingNode):
            return super().construct_mapping(node, deep)  # raises the usual ConstructorError
        mapping, lines = {}, {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise _Refused(f"merge key '<<' at line {line}: merge keys are not allowed in a sweep file; "
                               f"write each value out")
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, collections.abc.Hashable):
                raise _Refused(f"the key at line {line} is a {type(key).__name__}; a key is a plain name")
            if key in mapping:
                raise _Refused(f"duplicate key {shown(key)} at line {line} (first at line {lines[key]}); "
                               f"give each key once")
            lines[key] = line
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping


def _load_yaml(text: str, path: str):
    try:
        return yaml.load(text, Loader=_SweepLoader)
    except _Refused as exc:
        raise SpecError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{path}: YAML syntax error{line}: {cut(problem)}") from None
    except RecursionError:  # only without libyaml, which caps nesting itself
        raise SpecError(f"{path}: YAML nested too deeply") from None


def _decode(data: bytes, path: str) -> str:
    if len(data) > MAX_FILE_BYTES:
        raise SpecError(f"{path}: over {MAX_FILE_BYTES >> 20} MiB, the size limit of a sweep file")
    nul = data.find(b"\0")
    if nul >= 0:
        raise SpecError(f"{path}: not a UTF-8 text file (NUL byte at offset {nul}); a sweep file is YAML text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not a UTF-8 text file (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                        f"save the sweep file as UTF-8") from None


def _check_name(where: str, key):
    if key not in SETTING_NAMES:
        raise SpecError(f"{where}: unknown setting {shown(key)}{suggest(key, SETTING_NAMES)}; "
                        f"known settings: {', '.join(SETTING_NAMES)}")


def _check_value(where: str, key, value):
    _check_name(where, key)
    try:
        return check_setting(key, value)
    except ValueError as exc:  # the reason quotes the value: quote it short
        reason = str(exc).replace(repr(value), shown(value))
        raise SpecError(f"{where}, key '{key}', value {shown(value)}: {cut(reason)}") from None


def _check_mapping(where: str, value, what: str = "setting: value") -> dict:
    if not isinstance(value, dict):
        raise SpecError(f"{where} must be a mapping of {what}, got {type(value).__name__} {shown(value)}")
    return value


def _values(where: str, key, raw) -> tuple:
    values = raw if isinstance(raw, list) else [raw]
    if not values:
        raise SpecError(f"{where}, key '{key}': empty list; give at least one value")
    checked = tuple(_check_value(where, key, v) for v in values)
    return tuple(dict.fromkeys(checked))  # drop repeated values, keep order


def _adaptive_seeds(where: str, raw: dict) -> AdaptiveSeeds:
    for key in raw:
        if key not in ADAPTIVE_KEYS:
            raise SpecError(f"{where}: unknown key {shown(key)}{suggest(str(key), ADAPTIVE_KEYS)}; adaptive seeds are "
                            f"{{min: N, max: N, until: decided}}, or give a list of seeds")
    if "max" not in raw:
        raise SpecError(f"{where}: missing 'max', the most seeds a setting may get, e.g. {{min: 2, max: 10}}")
    least = _whole(where, "min", raw.get("min", 2), 2)
    most = _whole(where, "max", raw["max"], least)
    if most > MAX_ADAPTIVE_SEEDS:
        raise SpecError(f"{where}, key 'max', value {most}: at most {MAX_ADAPTIVE_SEEDS} seeds a setting")
    until = raw.get("until", "decided")
    if until != "decided":
        raise SpecError(f"{where}, key 'until', value {shown(until)}: the one rule is 'decided' (until each question's "
                        f"leader is told apart from every rival, or max seeds)")
    return AdaptiveSeeds(least, most, until)


def _early_stop(where: str, raw) -> EarlyStop | None:
    if raw is None:
        return None
    try:
        return parse_early_stop(raw)
    except ValueError as exc:
        raise SpecError(f"{where}, key 'early_stop', value {shown(raw)}: {cut(str(exc))}") from None


def _whole(where: str, key: str, value, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise SpecError(f"{where}, key '{key}', value {shown(value)}: {key} must be an integer >= {least}")
    return value


def _space(where: str, raw) -> dict:
    if raw is None:
        raise SpecError(f"{where}: missing 'space': the settings to search and their values or ranges")
    _check_mapping(f"{where}, key 'space'", raw, "setting: values or distribution")
    if not raw:
        raise SpecError(f"{where}: empty space; give at least one setting to search")
    space = {}
    for key, value in raw.items():
        _check_name(where, key)
        try:
            space[key] = parse_param(key, value)
        except ValueError as exc:
            raise SpecError(f"{where}, key '{key}', value {shown(value)}: {cut(str(exc))}") from None
    if not any(len(p.choices) > 1 or p.low != p.high for p in space.values() if p.kind != "constant"):
        raise SpecError(f"{where}: the space fixes every setting; give at least one list or range to search")
    return space


def _search(path: str, name: str, raw, file_early_stop: EarlyStop | None) -> SearchSpec:
    where = f"{path}: search '{name}'"
    _check_mapping(where, raw, ", ".join(SEARCH_KEYS))
    try:
        check_keys(raw, SEARCH_KEYS, _WANDB_WORDS)
    except ValueError as exc:
        raise SpecError(f"{where}: {exc}") from None
    method = raw.get("method")
    if method is None:
        raise SpecError(f"{where}: missing 'method': {' or '.join(METHODS)}")
    if method not in METHODS:
        hint = {"bayes": " (the Bayesian sampler here is 'tpe')", "grid": " (put a grid under 'grids')"}
        raise SpecError(f"{where}, key 'method', value {shown(method)}: unknown method"
                        f"{hint.get(method, suggest(method, METHODS)) if isinstance(method, str) else ''}; "
                        f"choose {' or '.join(METHODS)}")
    if "trials" not in raw:
        raise SpecError(f"{where}: missing 'trials': how many runs the search trains")
    own_stop = _early_stop(where, raw.get("early_stop"))
    return SearchSpec(name=name, method=method, trials=_whole(where, "trials", raw["trials"], 1),
                      seed=_whole(where, "seed", raw.get("seed", 0), 0), space=_space(where, raw.get("space")),
                      early_stop=own_stop or file_early_stop)


def _grid_size(spec: SweepSpec, name: str) -> int:
    grid = spec.grids[name]
    size = math.prod(len(values) for values in grid.values())
    return size * len(spec.seeds) if spec.seeds and "seed" not in grid else size


def count_runs(spec: SweepSpec, names=None) -> int:
    """An upper bound on the runs of the sweep (or of the named grids and searches), from the list
    lengths, without expanding: the product of each grid's lists, times the seeds, plus every
    search's trials. Runs that grids share are trained once, so the sweep may have fewer."""
    grid_names, search_names = select(spec, names)
    return sum(_grid_size(spec, g) for g in grid_names) + sum(spec.searches[s].trials for s in search_names)


def check_count(spec: SweepSpec, grid_names, search_names, max_runs) -> None:
    """Refuse a sweep of more than `max_runs` runs (None: no limit), naming its largest grid or search."""
    sizes = {f"grid '{g}'": _grid_size(spec, g) for g in grid_names}
    sizes.update({f"search '{s}'": spec.searches[s].trials for s in search_names})
    total = sum(sizes.values())
    if max_runs is not None and total > max_runs:
        largest = max(sizes, key=sizes.get)
        raise SpecError(f"{spec.path}: the sweep has up to {total:,} runs ({largest}: {sizes[largest]:,}), over the "
                        f"limit of {max_runs:,}; make it smaller, or allow it with --max-runs {total}")


def parse_spec(text: str, path: str = "<sweep>", max_runs: int | None = MAX_RUNS) -> SweepSpec:
    """Validate the YAML text of a sweep file; raise SpecError naming what is wrong. A sweep of more
    than `max_runs` runs (counted as count_runs does; None: no limit) is refused."""
    if len(text) > MAX_FILE_BYTES:
        raise SpecError(f"{path}: over {MAX_FILE_BYTES >> 20} MiB, the size limit of a sweep file")
    nul = text.find("\0")
    if nul >= 0:
        raise SpecError(f"{path}: not a UTF-8 text file (NUL character at offset {nul}); a sweep file is YAML text")
    doc = _load_yaml(text, path)
    if not isinstance(doc, dict):
        raise SpecError(f"{path}: expected a mapping with keys {', '.join(TOP_KEYS)}, got {type(doc).__name__}")
    for key in doc:
        if key not in TOP_KEYS:
            raise SpecError(f"{path}: unknown top-level key {shown(key)}{suggest(key, TOP_KEYS)}; "
                            f"allowed: {', '.join(TOP_KEYS)}")
    experiment = doc.get("experiment")
    if experiment is None or (isinstance(experiment, str) and not experiment.strip()):
        raise SpecError(f"{path}: missing 'experiment' (the MLflow experiment name)")
    if not isinstance(experiment, str):
        raise SpecError(f"{path}: 'experiment' must be a string, got {shown(experiment)}")

    defaults = {}
    for key, value in _check_mapping(f"{path}: 'defaults'", doc.get("defaults") or {}).items():
        if isinstance(value, list):
            raise SpecError(f"{path}: defaults, key '{key}': a default is one value, got list {shown(value)}; "
                            f"put lists in a grid")
        defaults[key] = _check_value(f"{path}: defaults", key, value)

    seeds, adaptive = (), None
    if isinstance(doc.get("seeds"), dict):
        adaptive = _adaptive_seeds(f"{path}: seeds", doc["seeds"])
        seeds = adaptive.seeds
    elif "seeds" in doc:
        raw = doc["seeds"]
        seeds = _values(f"{path}: seeds", "seed", raw if raw is not None else [])
    file_early_stop = _early_stop(f"{path}: top level", doc.get("early_stop"))

    grids, grid_early_stop = {}, {}
    for grid_name, grid in _check_mapping(f"{path}: 'grids'", doc.get("grids") or {}, "name: grid").items():
        name, where = str(grid_name), f"{path}: grid '{grid_name}'"
        grid = dict(_check_mapping(where, grid if grid is not None else {}))
        own_stop = _early_stop(where, grid.pop("early_stop", None))
        if own_stop is not None:
            grid_early_stop[name] = own_stop
        if not grid:
            raise SpecError(f"{where}: empty grid; give at least one setting")
        if name in grids:
            raise SpecError(f"{path}: two grids named '{name}'")
        grids[name] = {key: _values(where, key, value) for key, value in grid.items()}

    searches = {}
    for search_name, search in _check_mapping(f"{path}: 'searches'", doc.get("searches") or {}, "name: search").items():
        name = str(search_name)
        if name in grids or name in searches:
            raise SpecError(f"{path}: '{name}' names both a grid and a search; give them different names")
        searches[name] = _search(path, name, search, file_early_stop)
    if not grids and not searches:
        raise SpecError(f"{path}: missing 'grids': give at least one grid of settings to sweep, or a search")

    spec = SweepSpec(path=str(path), experiment=experiment.strip(), defaults=defaults, seeds=seeds, grids=grids,
                     searches=searches, early_stop=file_early_stop, grid_early_stop=grid_early_stop,
                     max_runs=max_runs, adaptive=adaptive)
    check_count(spec, tuple(grids), tuple(searches), max_runs)
    return spec


def load_spec(path: str | Path, max_runs: int | None = MAX_RUNS) -> SweepSpec:
    """Read and validate a sweep file of at most MAX_FILE_BYTES bytes of UTF-8 YAML."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)  # never more: the file may be huge or endless
    except OSError as exc:
        raise SpecError(f"{path}: cannot read sweep file: {exc.strerror or exc}") from None
    return parse_spec(_decode(data, str(path)), str(path), max_runs)


def select(spec: SweepSpec, names=None) -> tuple[tuple, tuple]:
    """The grids and the searches that `names` picks, each in file order; no names picks them all."""
    names = list(names or ())
    if not names:
        return tuple(spec.grids), tuple(spec.searches)
    for name in names:
        if name not in spec.grids and name not in spec.searches:
            what = "grid or search" if spec.searches else "grid"
            known = f"grids: {', '.join(spec.grids) or 'none'}"
            if spec.searches:
                known += f"; searches: {', '.join(spec.searches)}"
            raise SpecError(f"{spec.path}: no {what} named {shown(name)}"
                            f"{suggest(name, [*spec.grids, *spec.searches])}; {known}")
    chosen = set(names)
    return tuple(g for g in spec.grids if g in chosen), tuple(s for s in spec.searches if s in chosen)
