"""A sweep's results, read from the tracking store once. Every store read of `sweep best` and
`sweep report` is in `fetch_results`; what they compute afterwards is pure and works on the
`SweepResults` it returns (the runs, each run's per-epoch objective from its curve tag, and
each search's trials as `sweep.search.trials_in_store` rebuilds them, all from the one read of the
experiment's runs; per-epoch histories only of the runs asked for).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Optional, Union

import pandas as pd

from mnist_core.config import SETTING_NAMES, SETTING_TYPES

from .. import queue, tracking
from ..queue import schema
from ..queue.index import BASE
from ..spec import SweepSpec, expand, select
from ..tracking.mlflow_store import MlflowStore

FINAL_METRICS = ("test_error", "train_error", "test_loss", "train_loss", "best_test_error", "training_seconds",
                 "epochs_completed", "val_error", "val_loss", "final_val_error", "best_val_error")
EPOCH_METRICS = ("train_loss", "train_error", "test_loss", "test_error", "val_loss", "val_error", "lr")
OUTCOMES = (*schema.FINISHED_OUTCOMES, "failed", "spared", "missing")  # a planned run's outcome (schema.OUTCOMES)
COLUMNS = ["key", "name", "grids", *SETTING_NAMES, "outcome", "state", "run_id", *FINAL_METRICS, "agent_uri",
           "search", "trial"]
STORE_METRICS = (*FINAL_METRICS, "lr")
TAGS = tuple(dict.fromkeys((*schema.RESULT_TAGS, *schema.QUEUE_TAGS)))  # a run's outcome, and its key's state
PARAMS = (*SETTING_NAMES, "device")


@dataclass(frozen=True)
class SweepResults:
    """What the store holds about a sweep, fetched once.

    runs: one row per planned run of the selected grids (COLUMNS): its settings, outcome (done,
    diverged, stopped, failed, spared by adaptive seeds, or missing), queue state, and for a finished run its run_id,
    final metrics (NaN where the run did not log one) and agent_uri; then one row per trial of the
    selected searches that has a run (its `grids` is the search's name, `search` and `trial` say
    which; a trial whose settings a finished run had already is a `duplicate` of it). Without a
    spec, one row per run key found in the experiment."""
    experiment: str
    experiment_id: str
    runs: pd.DataFrame
    spec: Optional[SweepSpec] = None
    grids: tuple = ()                      # the grids and searches selected: all of the spec's when none was named
    parent_run_id: Optional[str] = None    # the sweep's parent run, None before `sweep run` made one
    histories: Mapping[str, pd.DataFrame] = field(default_factory=dict)  # run_id -> per-epoch metrics by step
    searches: tuple = ()                   # the names in `grids` that are searches
    curves: Mapping[str, tuple] = field(default_factory=dict)  # run_id -> its objective after each epoch
    trials: Mapping[str, dict] = field(default_factory=dict)   # search -> {number: search.Trial}, with a spec
    execution: pd.DataFrame = field(default_factory=lambda: execution_frame([], []))  # where and when each run trained

    def grid_runs(self, grid: str) -> pd.DataFrame:
        """The runs that belong to `grid`."""
        member = self.runs["grids"].str.split(",").apply(lambda names: grid in names)
        return self.runs[member].reset_index(drop=True)

    def by_outcome(self, *outcomes: str) -> pd.DataFrame:
        return self.runs[self.runs["outcome"].isin(outcomes)]


Histories = Union[Callable[[SweepResults], Iterable[str]], Iterable[str], None]


def fetch_results(spec: Optional[SweepSpec], uri: str, grids: Iterable[str] = (), histories: Histories = None,
                  experiment: Optional[str] = None) -> SweepResults:
    """Read the sweep's runs (of `grids` only, when given) from the store at `uri`.

    `histories` names the runs whose per-epoch metrics are fetched too: run ids, or a function of
    the results (without histories) that returns them. Without a spec, `experiment` names the
    experiment and the runs are the ones found there (tagged with one of `grids`, when given).
    Raises tracking.TrackingError when the experiment does not exist."""
    grids = tuple(grids)
    planned = planned_frame(spec, grids) if spec is not None else None  # an unknown grid fails here, first
    searches = select(spec, grids)[1] if spec is not None else ()
    experiment = experiment or spec.experiment
    source = MlflowStore(uri)
    experiment_id = source.find_experiment(experiment)
    if experiment_id is None:
        raise tracking.TrackingError(f"no experiment '{experiment}' in tracking store {uri}; run `sweep run` first")
    index = queue.Index(source, experiment_id, experiment)
    index.sync()  # only what changed since the last read; the rest comes from the index beside the store
    table = index.table(tags=TAGS, params=PARAMS, metrics=STORE_METRICS)  # one read: the results and the states
    attempts = attempts_of(table)
    store = store_frame(table, attempts)
    execution = execution_frame(table, attempts)
    if spec is not None:
        selected = grids or (*spec.grids, *spec.searches)
        found = queue.find_parent(source, experiment_id, spec.name)
        parent = found.run_id if found is not None else None
        if searches:
            planned = pd.concat([planned, searched_frame(store, searches)], ignore_index=True)
    else:
        planned = found_frame(store, grids)
        selected, parent = grids, None
        searches = tuple(dict.fromkeys(s for s in planned["search"] if s))
    states = queue.states(planned["key"], attempts, source.host.now(), source.host.alive)
    runs = join_outcomes(planned, store, states)
    if spec is not None and spec.adaptive:
        from ..adaptive.wanted import WantedRuns

        spared = WantedRuns(spec, source, experiment_id, index=index)
        spared.read()
        runs.loc[runs["key"].isin(spared.spared(runs["key"])) & (runs["outcome"] == "missing"), "outcome"] = "spared"
    searched = [r for r in index.rows() if schema.decode(r).search in searches] if searches else []
    results = SweepResults(experiment, experiment_id, runs, spec, selected, parent, searches=searches,
                           curves={run_id: c for run_id, c in zip(store["run_id"], store["curve"]) if c},
                           trials=_trials(spec, searches, searched, states), execution=execution)
    wanted = histories(results) if callable(histories) else histories or ()
    fetched = {run_id: _history(uri, store, run_id) for run_id in dict.fromkeys(wanted)}
    return dataclasses.replace(results, histories=fetched)


def _trials(spec: Optional[SweepSpec], searches: tuple, rows: list, states: Mapping[str, str]) -> dict:
    """Each search's trials as the sampler sees them (for importance); needs the spec's search space."""
    if spec is None:
        return {}
    from ..adaptive.search import trials_in_store

    return {name: trials_in_store(spec.searches[name], [r for r in rows if schema.decode(r).search == name], states)
            for name in searches}


def _history(uri: str, store: pd.DataFrame, run_id: str) -> pd.DataFrame:
    row = store.loc[store["run_id"] == run_id].iloc[0]
    series = {}
    for metric in EPOCH_METRICS:
        if pd.notna(row[f"metrics.{metric}"]):
            points = tracking.metric_history(uri, run_id, metric)
            series[metric] = pd.Series(dict(points), dtype=float)
    frame = pd.DataFrame(series)
    frame.index.name = "step"
    return frame


def attempts_of(table: list) -> list:
    """The attempts of the tuples of Index.table(tags=TAGS, ...), decoded once for every use."""
    # BASE begins with what schema.attempt takes first: run_id, status, start_time, end_time, name
    return [schema.attempt(*row[:5], tags=dict(zip(TAGS, row[len(BASE):len(BASE) + len(TAGS)]))) for row in table]


def store_frame(table: list, attempts: Optional[list] = None) -> pd.DataFrame:
    """One typed row per MLflow run (every attempt, any status), from the tuples of
    Index.table(tags=TAGS, params=PARAMS, metrics=STORE_METRICS) (index.BASE, then those fields,
    None where a run has none) and the attempts decoded from them (attempts_of(table))."""
    runs = attempts_of(table) if attempts is None else attempts
    width = len(BASE) + len(TAGS) + len(PARAMS) + len(STORE_METRICS)
    columns = [list(column) for column in zip(*table)] if table else [[] for _ in range(width)]
    base = dict(zip(BASE, columns[:len(BASE)]))
    params = dict(zip(PARAMS, columns[len(BASE) + len(TAGS):]))
    metrics = dict(zip(STORE_METRICS, columns[len(BASE) + len(TAGS) + len(PARAMS):]))

    out = pd.DataFrame({
        "run_id": base["run_id"],
        "key": [r.key for r in runs],
        "name": base["name"],
        "status": base["status"],
        "grids": [",".join(r.grids) for r in runs],
        "diverged": [r.diverged for r in runs],
        "stopped": [r.stopped for r in runs],
        "duplicate": [bool(r.duplicate_of) for r in runs],
        "search": [r.search for r in runs],
        "trial": pd.array([r.trial for r in runs], dtype="Int64"),
        "curve": [r.curve for r in runs],
        "start_time": pd.array(base["start_time"], dtype="Int64"),
        "end_time": pd.array(base["end_time"], dtype="Int64"),
    })
    for name in SETTING_NAMES:  # each param string decoded once, by the schema
        values = pd.Series(schema.setting_column(name, params[name]), dtype=object)
        out[name] = values if SETTING_TYPES[name] == "str" else pd.to_numeric(values)  # numbers: a numeric dtype
    for metric in STORE_METRICS:
        out[f"metrics.{metric}"] = pd.Series([float("nan") if v is None else v for v in metrics[metric]], dtype=float)
    out["agent_uri"] = [f"{uri}/mnist_agent.pt" for uri in base["artifact_uri"]]
    return out


EXECUTION = ("run_id", "start_time", "end_time", "holder", "device")


def execution_frame(table: list, attempts: list) -> pd.DataFrame:
    """Where and when each MLflow run trained, from the tuples of Index.table(tags=TAGS,
    params=PARAMS, ...) and their attempts: run_id, start and end time (ms since the epoch), its
    holder (the process that trained it, host:pid:start) and the device type it logged (cpu, cuda,
    mps; None if none)."""
    start, end = BASE.index("start_time"), BASE.index("end_time")
    device = len(BASE) + len(TAGS) + PARAMS.index("device")
    rows = [(a.run_id, row[start], row[end], a.holder, row[device]) for row, a in zip(table, attempts)]
    frame = pd.DataFrame(rows, columns=list(EXECUTION))
    return frame.astype({"start_time": "Int64", "end_time": "Int64"})


def planned_frame(spec: SweepSpec, grids: tuple = ()) -> pd.DataFrame:
    runs = expand(spec, grids)
    names = ["key", "name", "grids", *SETTING_NAMES, "search", "trial"]
    if not runs:
        return pd.DataFrame([], columns=names)
    columns = {"key": [r.key for r in runs], "name": [r.name for r in runs], "grids": [",".join(r.grids) for r in runs]}
    for name in SETTING_NAMES:  # the settings as RunConfig.as_params() gives them, a column at a time
        columns[name] = [getattr(r.config, name) for r in runs]
    columns.update(search=[""] * len(runs), trial=[pd.NA] * len(runs))
    return pd.DataFrame(columns, columns=names)


def searched_frame(store: pd.DataFrame, searches: tuple) -> pd.DataFrame:
    """The trials of `searches` that have a run: one row per slot (its latest attempt's settings)."""
    trials = store[store["search"].isin(searches)].sort_values("start_time").drop_duplicates("key", keep="last")
    trials = trials.sort_values(["search", "trial"]).assign(grids=trials["search"])
    return trials[["key", "name", "grids", *SETTING_NAMES, "search", "trial"]].reset_index(drop=True)


def found_frame(store: pd.DataFrame, grids: tuple = ()) -> pd.DataFrame:
    """Without a spec, the planned runs are the keys found in the store (their latest attempt's
    name, grids and settings), narrowed to runs tagged with one of `grids`."""
    latest = store[store["key"] != ""].sort_values("start_time").drop_duplicates("key", keep="last")
    latest = latest.assign(grids=latest["grids"].where(latest["search"] == "", latest["search"]))
    if grids:
        latest = latest[latest["grids"].str.split(",").apply(lambda names: bool(set(names) & set(grids)))]
    return latest[["key", "name", "grids", *SETTING_NAMES, "search", "trial"]].reset_index(drop=True)


def join_outcomes(planned: pd.DataFrame, store: pd.DataFrame, states: Mapping[str, str]) -> pd.DataFrame:
    """Planned runs with their latest FINISHED run: outcome done, diverged or stopped (pruned, or
    fewer epochs than planned); without one, failed (the queue says so) or missing."""
    finished = (store[store["status"] == "FINISHED"].sort_values("end_time")
                .drop_duplicates("key", keep="last").set_index("key"))
    runs = planned.copy()
    found = finished.reindex(runs["key"])
    runs["run_id"] = found["run_id"].to_numpy()
    for metric in FINAL_METRICS:
        runs[metric] = found[f"metrics.{metric}"].to_numpy(dtype=float)
    runs["agent_uri"] = found["agent_uri"].to_numpy()
    runs["state"] = runs["key"].map(states).fillna("pending")
    short = runs["epochs_completed"] < runs["epochs"]
    runs["outcome"] = "missing"
    runs.loc[runs["state"] == "failed", "outcome"] = "failed"
    runs.loc[runs["run_id"].notna(), "outcome"] = "done"
    runs.loc[runs["run_id"].notna() & (found["stopped"].eq(True).to_numpy() | short), "outcome"] = "stopped"
    runs.loc[found["diverged"].eq(True).to_numpy(), "outcome"] = "diverged"
    runs.loc[found["duplicate"].eq(True).to_numpy(), "outcome"] = "duplicate"
    return runs[COLUMNS].reset_index(drop=True)
