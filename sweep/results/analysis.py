"""What a sweep's results hold, in numbers: per grid its views over seeds, per search its trials (best
so far, the best setting, each setting's importance), and what early stopping stopped and saved.
Pure pandas (and in-memory Optuna) over `SweepResults`: no store, no sentences (words.py says them),
no plotting (figures.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import pandas as pd

from .. import stats
from ..spec import AdaptiveSeeds
from ..spec.space import EarlyStop
from .best import SETTINGS, Best, best_by, candidates, label, resolve_metric, varied
from .fetch import SweepResults

NUMERIC = ("depth", "width", "lr", "momentum", "gamma", "restart_period", "epochs", "batch_size")
LOG_AXIS = ("lr", "width", "batch_size")


@dataclass(frozen=True)
class GridView:
    name: str
    kind: str                # lr_by_setting, numeric, schedule or table
    varied: list             # settings that vary inside the grid (seed aside)
    runs: pd.DataFrame       # one row per planned run of the grid, with its outcome
    x: str = ""              # the swept setting drawn on the x axis (lr for lr_by_setting)
    by: str = ""             # lr_by_setting: the setting swept together with lr, one line per value
    unstable: pd.DataFrame = field(default_factory=lambda: unstable_runs(pd.DataFrame(), {}))  # unstable_runs
    seeds: Optional[AdaptiveSeeds] = None   # the sweep's adaptive seeds: its tests are at the rule's levels

    @property
    def done(self) -> pd.DataFrame:
        return self.runs[self.runs["outcome"] == "done"]


@dataclass(frozen=True)
class SearchView:
    name: str
    runs: pd.DataFrame       # one row per trial that has a run, by trial number, with its outcome
    metric: str              # what ranks its trials: val_error when every finished trial has one
    sampled: list            # the settings the search samples (from the spec; else those that vary)
    log: tuple = ()          # the sampled settings drawn on a log axis: log-uniform ones, lists of lr, width, ...
    budget: Optional[int] = None        # the trials the search may train (None without a spec)
    method: str = ""
    importance: Optional[dict] = None   # setting -> Optuna's importance (fANOVA), summing to 1

    @property
    def complete(self) -> pd.DataFrame:
        """Trials with a final result: trained to the end, or duplicates recording a finished run's."""
        return self.runs[self.runs["outcome"].isin(("done", "duplicate")) & self.runs[self.metric].notna()]


@dataclass(frozen=True)
class Stopping:
    """What early stopping did in one grid or search."""
    name: str
    kind: str                # grid or search
    rule: Optional[EarlyStop]           # None where the spec is unknown (runs were stopped all the same)
    runs: pd.DataFrame       # the runs it judged that finished (trained: duplicates are not)
    curves: dict = field(default_factory=dict)   # run_id -> objective after each epoch
    duplicates: int = 0      # trials recording another run's result, left out of `runs`

    @property
    def stopped(self) -> pd.DataFrame:
        return self.runs[self.runs["outcome"] == "stopped"]

    @property
    def stop_epochs(self) -> dict:
        """Epoch -> how many runs stopped after it, in order."""
        return {int(k): int(v) for k, v in self.stopped["epochs_completed"].value_counts().sort_index().items()}

    @property
    def planned_epochs(self) -> int:
        """Network-epochs had every run trained to its end."""
        return int(self.runs["epochs"].sum())

    @property
    def saved_epochs(self) -> int:
        return int((self.stopped["epochs"] - self.stopped["epochs_completed"]).sum())


@dataclass(frozen=True)
class Analysis:
    results: SweepResults
    metric: str              # what ranks: val_error when every finished run has one, else test_error
    grids: tuple             # GridView per selected grid
    searches: tuple = ()     # SearchView per selected search
    stopping: dict = field(default_factory=dict)  # grid or search name -> Stopping, where runs may stop early

    @property
    def runs(self) -> pd.DataFrame:
        return self.results.runs

    def outcome(self, *outcomes) -> pd.DataFrame:
        return self.results.by_outcome(*outcomes)


def classify(varied: list) -> tuple[str, str, str]:
    """(kind, x, by) of a grid from the settings it varies."""
    if len(varied) == 2 and "lr" in varied:
        return "lr_by_setting", "lr", next(v for v in varied if v != "lr")
    if varied and set(varied) <= {"schedule", "gamma", "restart_period"} and "schedule" in varied:
        return "schedule", "schedule", ""
    if len(varied) == 1 and varied[0] in NUMERIC:
        return "numeric", varied[0], ""
    return "table", "", ""


def grid_views(results: SweepResults) -> list[GridView]:
    views = []
    for grid in results.grids:
        if grid in results.searches:
            continue
        runs = results.grid_runs(grid)
        kinds = classify(varied(runs))
        adaptive = results.spec.adaptive if results.spec is not None and "seed" not in results.spec.grids[grid] \
            else None
        views.append(GridView(grid, kinds[0], varied(runs), runs, kinds[1], kinds[2],
                              unstable_runs(runs, results.curves), adaptive))
    return views


UNSTABLE_EPOCHS = 3


def unstable_runs(runs: pd.DataFrame, curves: dict, epochs: int = UNSTABLE_EPOCHS) -> pd.DataFrame:
    """The finished runs whose objective (the error they are ranked by, after each epoch) rose,
    within their last `epochs` epochs, by more than its final value: a spike at least as large as
    where the run ended, so that its final-epoch number may be luck. Columns name, run_id, last
    (the objective over those epochs)."""
    found = []
    if len(runs):
        for name, run_id, outcome in zip(runs["name"], runs["run_id"], runs["outcome"]):
            window = tuple(curves.get(run_id, ()))[-epochs:] if outcome == "done" else ()
            rise = max((value - min(window[:i]) for i, value in enumerate(window) if i), default=0.0)
            if len(window) == epochs and rise > window[-1]:
                found.append((name, run_id, window))
    return pd.DataFrame(found, columns=["name", "run_id", "last"])


def ranking_metric(results: SweepResults) -> str:
    return resolve_metric(candidates(results.runs), "auto")[0]


SETUP_SETTINGS = ("activation", "depth", "width", "lr", "momentum", "schedule", "batch_size", "epochs", "validation",
                  "train_eval")
QUESTION_SETTINGS = ("activation", "depth", "width", "lr", "schedule")  # the homework's questions, in its order
TRAINED = ("done", "diverged", "stopped")


@dataclass(frozen=True)
class Execution:
    """Where, how and when the finished runs trained, as far as the store tells: the device type each
    logged, the processes (holders, host:pid:start) that trained them, and their start and end times.
    The store keeps no engine tag: runs that one process trained over overlapping times with the
    same training time (a fused group's members each record the group's) were one fused model."""
    devices: list            # device types logged (cpu, cuda, mps), sorted; [] where none was logged
    hosts: list              # hosts of the training processes, sorted
    workers: int             # distinct training processes
    fused: list              # sizes of the groups trained together as one fused model
    solo: int                # runs trained alone
    unknown: int             # runs with no holder or no times (not told apart)
    start: Optional[pd.Timestamp]   # the first run's start and the last run's end (UTC)
    end: Optional[pd.Timestamp]
    training_seconds: float  # the networks' own training time, a fused group counted once

    @property
    def wall_seconds(self) -> float:
        return (self.end - self.start).total_seconds() if self.start is not None else math.nan


def execution(trained: pd.DataFrame, frame: pd.DataFrame) -> Execution:
    """`trained`: finished runs (results.runs rows); `frame`: results.execution."""
    runs = trained[["run_id", "training_seconds"]].astype({"run_id": object}).merge(
        frame.astype({"run_id": object}), on="run_id", how="left")
    timed = runs[runs["holder"].fillna("").ne("") & runs["start_time"].notna() & runs["end_time"].notna()]
    groups = _groups(timed)
    sizes = [size for _, size in groups]
    start = pd.to_datetime(timed["start_time"].min(), unit="ms", utc=True) if len(timed) else None
    end = pd.to_datetime(timed["end_time"].max(), unit="ms", utc=True) if len(timed) else None
    return Execution(sorted(runs["device"].dropna().unique().tolist()),
                     sorted({h.rsplit(":", 2)[0] for h in timed["holder"]}), timed["holder"].nunique(),
                     sorted(s for s in sizes if s > 1), sizes.count(1), len(runs) - len(timed), start, end,
                     float(sum(seconds for seconds, _ in groups if pd.notna(seconds))))


def _groups(timed: pd.DataFrame) -> list:
    """(training seconds, size) of each group of runs that one process trained together: runs of one
    holder whose times overlap and whose training times are equal (solo runs: groups of 1)."""
    found = []
    for _, runs in timed.sort_values("start_time").groupby("holder"):
        group = None  # [training seconds, size, end]
        for start, end, seconds in zip(runs["start_time"], runs["end_time"], runs["training_seconds"]):
            if group and start < group[2] and seconds == group[0]:
                group[1], group[2] = group[1] + 1, max(group[2], end)
            else:
                found += [tuple(group[:2])] if group else []
                group = [seconds, 1, end]
        found += [tuple(group[:2])] if group else []
    return found


@dataclass(frozen=True)
class Setup:
    """How the finished runs were trained, as the store holds their settings."""
    values: dict             # setting (SETUP_SETTINGS) -> its distinct values, sorted
    seeds: int               # the most seeds of any one setting
    runs: int                # finished runs (done, diverged, stopped; duplicates aside)
    questions: pd.DataFrame = field(default_factory=pd.DataFrame)  # per grid: what it varies, its networks
    execution: Optional[Execution] = None


def setup(runs: pd.DataFrame, views=(), executed: Optional[pd.DataFrame] = None) -> Setup:
    """The setup of the finished runs; with the grid views, each grid's networks (its planned runs'
    settings); with results.execution, where and when they trained."""
    trained = runs[runs["outcome"].isin(TRAINED)]
    values = {s: sorted(trained[s].dropna().unique().tolist()) for s in SETUP_SETTINGS}
    seeds = int(trained.groupby(SETTINGS, dropna=False).size().max()) if len(trained) else 0
    questions = pd.DataFrame([{"grid": v.name, "varies": ", ".join(v.varied) or "nothing",
                               **{s: sorted(v.runs[s].dropna().unique().tolist()) for s in QUESTION_SETTINGS},
                               "seeds": int(v.runs["seed"].nunique()), "planned": len(v.runs),
                               "finished": int(v.runs["outcome"].isin(TRAINED).sum())} for v in views])
    return Setup(values, seeds, len(trained), questions,
                 execution(trained, executed) if executed is not None else None)


def analyse(results: SweepResults) -> Analysis:
    stopping = {name: _stopping(results, name, kind, runs) for name, kind, runs in _stop_groups(results)}
    return Analysis(results, ranking_metric(results), tuple(grid_views(results)), tuple(search_views(results)),
                    stopping)


# --- searches --------------------------------------------------------------------------------------

def search_views(results: SweepResults) -> list[SearchView]:
    from ..adaptive.search import importance

    views = []
    for name in results.searches:
        runs = results.grid_runs(name).sort_values("trial", kind="stable").reset_index(drop=True)
        metric = resolve_metric(candidates(runs), "auto")[0]
        search = results.spec.searches[name] if results.spec is not None else None
        if search is None:
            views.append(SearchView(name, runs, metric, varied(runs)))
            continue
        sampled = [s for s, p in search.space.items() if p.kind != "constant"]
        log = tuple(s for s in sampled if search.space[s].log or search.space[s].kind == "categorical"
                    and s in LOG_AXIS)
        trials = results.trials.get(name, {})
        views.append(SearchView(name, runs, metric, sampled, log, search.trials, search.method,
                                importance(search, trials) if trials else None))
    return views


def best_so_far_table(view: SearchView) -> pd.DataFrame:
    """Per trial, by number: its outcome, its final `metric` (NaN unless complete; a stopped trial's
    error at its stop is `at_stop`) and the lowest complete value up to it (`best`)."""
    from ..adaptive.search import best_so_far

    runs = view.runs
    complete = runs["outcome"].isin(("done", "duplicate"))
    value = runs[view.metric].where(complete)
    table = pd.DataFrame({"trial": runs["trial"].astype(int), "outcome": runs["outcome"], "value": value,
                          "at_stop": runs[view.metric].where(runs["outcome"] == "stopped"),
                          "best": best_so_far(value.astype(float).tolist())})
    return table.reset_index(drop=True)


def best_trial(view: SearchView) -> Optional[pd.Series]:
    """The best setting of the search's complete trials, ranked by its mean over seeds (a duplicate
    counts as its original's seed, once): best_by's row, and `trial`, the number of its best seed's trial."""
    pool = view.complete.assign(outcome="done").drop_duplicates([*SETTINGS, "seed"])
    if pool.empty:
        return None
    row = best_by(pool, [], view.metric).table.iloc[0].copy()
    row["trial"] = int(pool.loc[pool["run_id"] == row["run_id"], "trial"].iloc[0])
    return row


def ties(view: SearchView, top) -> int:
    """How many other settings (seed aside) have exactly the best one's mean."""
    means = view.complete.drop_duplicates([*SETTINGS, "seed"]).groupby(SETTINGS, dropna=False)[view.metric].mean()
    return int((means == top[view.metric]).sum()) - 1


# --- early stopping --------------------------------------------------------------------------------

def _stop_groups(results: SweepResults) -> list:
    """(name, grid or search, runs) of each selected grid and search whose runs may stop early (by
    the spec), or, without a spec, that has runs that stopped."""
    groups = []
    for name in results.grids:
        runs = results.grid_runs(name)
        ruled = results.spec is not None and results.spec.early_stop_for(name) is not None
        if ruled or (runs["outcome"] == "stopped").any():
            groups.append((name, "search" if name in results.searches else "grid", runs))
    return groups


def _objective(run) -> str:
    return "val_error" if pd.notna(run["val_error"]) else "test_error"


def _stopping(results: SweepResults, name: str, kind: str, runs: pd.DataFrame) -> Stopping:
    rule = results.spec.early_stop_for(name) if results.spec is not None else None
    trained = runs[runs["outcome"].isin(("done", "stopped", "diverged"))].reset_index(drop=True)
    curves = {}
    for _, run in trained.iterrows():
        curve = results.curves.get(run["run_id"])
        if not curve and run["run_id"] in results.histories:
            history = results.histories[run["run_id"]]
            if _objective(run) in history:
                curve = tuple(history[_objective(run)].sort_index().tolist())
        if curve:
            curves[run["run_id"]] = tuple(curve)
    known = trained["run_id"].map(lambda r: len(curves.get(r, ())) or math.nan)
    # a run that logged no count: its curve's length
    trained["epochs_completed"] = trained["epochs_completed"].fillna(known)
    return Stopping(name, kind, rule, trained, curves, int((runs["outcome"] == "duplicate").sum()))


def points(runs: pd.DataFrame, by: list, metrics: list) -> pd.DataFrame:
    """Per value of `by`, over the seeds that finished: n, and per metric its mean and 95% interval
    (`METRIC`, `METRIC_low`, `METRIC_high`; no interval where n = 1)."""
    rows = []
    for values, group in runs[runs["outcome"] == "done"].groupby(by, sort=True):
        row = dict(zip(by, values if isinstance(values, tuple) else (values,)))
        row["n"] = len(group)
        for metric in metrics:
            s = stats.summarize(group[metric])
            row.update({metric: s.mean, f"{metric}_low": s.ci_low, f"{metric}_high": s.ci_high})
        rows.append(row)
    return pd.DataFrame(rows, columns=[*by, "n", *[f"{m}{e}" for m in metrics for e in ("", "_low", "_high")]])


def shown_metrics(metric: str) -> list:
    """The errors a figure draws: the ranking one first, then test and train error."""
    return list(dict.fromkeys([metric, "test_error", "train_error"]))


def best_per(view: GridView, metric: str) -> Best:
    """lr_by_setting: each value of `by` at its best lr; numeric and schedule: each value of x."""
    return best_by(view.runs, [view.by or view.x], metric, seeds=view.seeds)


def curve_runs(view: GridView, metric: str) -> dict:
    """label -> run id of the runs whose per-epoch curves the report draws: the best seed of each
    schedule, or of each value of `by` at its best lr."""
    if view.kind not in ("lr_by_setting", "schedule") or view.done.empty:
        return {}
    table = best_per(view, metric).table
    if view.kind == "schedule":
        return {r["schedule"]: r["run_id"] for _, r in table.iterrows()}
    return {f"{label(r, [view.by])} (lr {r['lr']:g})": r["run_id"] for _, r in table.iterrows()}


def drawn_runs(results: SweepResults) -> list:
    """Run ids whose histories the report needs; pass to fetch_results(histories=...): the curves
    it draws per grid, and the runs of early-stopped grids and searches without a curve tag."""
    metric = ranking_metric(results)
    drawn = [run_id for view in grid_views(results) for run_id in curve_runs(view, metric).values()]
    for _, _, runs in _stop_groups(results):
        trained = runs[runs["outcome"].isin(("done", "stopped", "diverged"))]
        drawn += [r for r in trained["run_id"] if r not in results.curves]
    return list(dict.fromkeys(drawn))


def seed_values(view: GridView, row, metric: str) -> list:
    """The seeds' values of the setting `row` stands for (same settings, any seed)."""
    done = view.done
    same = done[view.varied].eq(pd.Series({s: row[s] for s in view.varied})).all(axis=1)
    return done.loc[same, metric].tolist()


