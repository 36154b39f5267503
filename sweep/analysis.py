"""What a sweep's results say: per-grid summaries over seeds and conclusions qualified by n and p,
per search its trials (best so far, the best setting, each setting's importance), and what early
stopping stopped and saved. Pure pandas (and in-memory Optuna) over `SweepResults`: no store, no
plotting.

Every number and conclusion here is computed from the runs; nothing is written in advance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import pandas as pd

from . import stats
from .best import SETTINGS, Best, best_by, candidates, label, resolve_metric, varied
from .results import SweepResults
from .space import EarlyStop, describe_early_stop

NUMERIC = ("depth", "width", "lr", "momentum", "gamma", "restart_period", "epochs", "batch_size")
LOG_AXIS = ("lr", "width", "batch_size")
NAMES = {"test_error": "test error", "train_error": "train error", "val_error": "validation error",
         "best_test_error": "best test error", "best_val_error": "best validation error",
         "final_val_error": "validation error"}


@dataclass(frozen=True)
class GridView:
    name: str
    kind: str                # lr_by_setting, numeric, schedule or table
    varied: list             # settings that vary inside the grid (seed aside)
    runs: pd.DataFrame       # one row per planned run of the grid, with its outcome
    x: str = ""              # the swept setting drawn on the x axis (lr for lr_by_setting)
    by: str = ""             # lr_by_setting: the setting swept together with lr, one line per value

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
    def aside(self) -> str:
        return f" ({_plural(self.duplicates, 'duplicate')}, not trained, aside)" if self.duplicates else ""

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
        views.append(GridView(grid, kinds[0], varied(runs), runs, kinds[1], kinds[2]))
    return views


def ranking_metric(results: SweepResults) -> str:
    return resolve_metric(candidates(results.runs), "auto")[0]


def analyse(results: SweepResults) -> Analysis:
    stopping = {name: _stopping(results, name, kind, runs) for name, kind, runs in _stop_groups(results)}
    return Analysis(results, ranking_metric(results), tuple(grid_views(results)), tuple(search_views(results)),
                    stopping)


# --- searches --------------------------------------------------------------------------------------

def search_views(results: SweepResults) -> list[SearchView]:
    from .search import importance

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
    from .search import best_so_far

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


def search_conclusions(view: SearchView) -> list[str]:
    """Sentences about one search, every number from its runs."""
    name, runs = NAMES.get(view.metric, view.metric), view.runs
    outcomes = runs["outcome"].value_counts()
    finished = int(outcomes.reindex(["done", "stopped", "duplicate", "diverged"]).fillna(0).sum())
    of = f" of {view.budget}" if view.budget is not None else ""
    parts = [f"{outcomes.get('stopped', 0)} stopped early", _plural(outcomes.get("duplicate", 0), "duplicate")]
    if outcomes.get("diverged", 0):
        parts.append(f"{outcomes['diverged']} diverged")
    running = int((runs["state"] == "running").sum())
    failed = int((runs["outcome"] == "failed").sum())
    lines = [f"{finished}{of} trials done ({', '.join(parts)})" + (f", {running} running" if running else "")
             + (f", {failed} failed" if failed else "") + "."]
    ranked = (f"Trials are ranked by {name} ({view.metric}); the test error is reported but did not choose."
              if view.metric != "test_error" else
              "Trials are ranked by test error (test_error): they hold no validation split.")
    lines.append(ranked)
    top = best_trial(view)
    if top is None:
        lines.append("No trial has a final result yet: nothing to compare.")
    else:
        values = ", ".join(label(top, [s]) for s in view.sampled if s != "seed") or "its settings"
        ties = _ties(view, top)
        also = f"; test error {_pct(top['test_error'])}" if view.metric != "test_error" else ""
        if top["n"] > 1:
            lines.append(f"Best setting: {values}, {name} {_pct(top[view.metric])} over its {int(top['n'])} seeds "
                         f"({_spread(_summary(top, view.metric))}){also}; its best seed is trial {top['trial']} "
                         f"({_pct(view.runs.loc[view.runs['run_id'] == top['run_id'], view.metric].iloc[0])}).")
        else:
            lines.append(f"Best trial: {top['trial']} ({values}): {name} {_pct(top[view.metric])} (n = 1){also}"
                         + (f"; {_plural(ties, 'other setting')} tied with it." if ties else "."))
        table = best_so_far_table(view)
        steps = table[table["best"].notna() & (table["best"] != table["best"].shift())]
        after = int((table["outcome"].isin(("done", "stopped", "duplicate", "diverged"))
                     & (table["trial"] > steps["trial"].iloc[-1])).sum())
        lines.append(f"Best {name} so far, by trial number: " + ", ".join(
            f"{_pct(r['best'])} from trial {r['trial']}" for _, r in steps.iterrows())
            + f" (none better in the {_plural(after, 'finished trial')} after it).")
    if view.importance:
        complete = len(view.complete)
        lines.append(f"Importance of each sampled setting for the {name} (Optuna's fANOVA on the {complete} "
                     f"complete trials, summing to 1): "
                     + ", ".join(f"{s} {v:.2f}" for s, v in view.importance.items()) + ".")
    elif view.budget is not None:
        lines.append("No importance yet: it needs at least two complete trials whose results differ.")
    for outcome, words in (("stopped", "Stopped early (left out of the best; the sampler counts them as pruned)"),
                           ("duplicate", "Duplicates (their settings had a finished run already, whose result "
                                         "they record; not trained again)"),
                           ("diverged", "Diverged (no error)")):
        numbers = runs.loc[runs["outcome"] == outcome, "trial"]
        if len(numbers):
            lines.append(f"{words}: trial{'s' if len(numbers) > 1 else ''} {', '.join(str(int(n)) for n in numbers)}.")
    return lines


def _ties(view: SearchView, top) -> int:
    """How many other settings (seed aside) have exactly the best one's mean."""
    means = view.complete.drop_duplicates([*SETTINGS, "seed"]).groupby(SETTINGS, dropna=False)[view.metric].mean()
    return int((means == top[view.metric]).sum()) - 1


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


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
    trained["epochs_completed"] = trained["epochs_completed"].fillna(known)  # older runs: the curve's length
    return Stopping(name, kind, rule, trained, curves, int((runs["outcome"] == "duplicate").sum()))


def stopping_conclusions(stopping: Stopping) -> list[str]:
    """How many runs were stopped at which epochs, and the network-epochs that saved."""
    rule = (describe_early_stop(stopping.rule).replace("early stop: ", "") if stopping.rule
            else "not in the sweep file, but runs were stopped")
    runs, stopped = stopping.runs, stopping.stopped
    if runs.empty:
        return [f"Early stopping: {rule}. No run has finished yet."]
    if stopped.empty:
        return [f"Early stopping: {rule}. None of the {len(runs)} finished runs{stopping.aside} was stopped; all "
                f"{stopping.planned_epochs} network-epochs were trained."]
    at = "; ".join(f"{n} after epoch {epoch}" for epoch, n in stopping.stop_epochs.items())
    saved, planned = stopping.saved_epochs, stopping.planned_epochs
    was = "was" if len(stopped) == 1 else "were"
    return [f"Early stopping: {rule}. {len(stopped)} of {len(runs)} finished runs{stopping.aside} {was} stopped "
            f"({at}); that "
            f"saved {saved} of {planned} network-epochs ({100 * saved / planned:.0f}%) against training every "
            f"run to its end (one network trained for one epoch counts one)."]


def schedule_note(view: GridView, stopping: Optional[Stopping]) -> list[str]:
    """A grid that compares learning-rate schedules under early stopping compares them unequally: say so."""
    if stopping is None or "schedule" not in view.varied or (stopping.rule is None and stopping.stopped.empty):
        return []
    per = stopping.runs.groupby("schedule")["outcome"].agg(lambda o: f"{int((o == 'stopped').sum())} of {len(o)}")
    counts = "; ".join(f"{schedule} {text}" for schedule, text in per.items())
    return ["Stopping early favours learning-rate schedules that decay early over those that anneal late: a "
            "run is judged on its error part-way through, before a late-annealing schedule (cosine) has "
            "lowered its learning rate, so the schedules here are not compared on equal terms; compare them "
            "without early_stop before choosing one." + (f" Stopped per schedule: {counts}." if counts else "")]


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
    return best_by(view.runs, [view.by or view.x], metric)


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


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def _spread(summary: stats.Summary) -> str:
    """"95% CI 2.31 to 2.67%, n = 3" or "n = 1"."""
    if summary.n < 2:
        return f"n = {summary.n}"
    return f"95% CI {stats.format_interval(summary)}, n = {summary.n}"


def _summary(row, metric) -> stats.Summary:
    return stats.Summary(int(row["n"]), row[metric], row[f"{metric}_std"], row[f"{metric}_ci_low"],
                         row[f"{metric}_ci_high"])


def conclusions(view: GridView, metric: str) -> list[str]:
    """Sentences about one grid, every number computed from its runs, every comparison tested."""
    lines = []
    name = NAMES.get(metric, metric)
    if view.done.empty:
        lines.append(f"No finished runs yet: nothing to compare ({len(view.runs)} runs planned).")
    elif view.kind == "lr_by_setting":
        best = best_per(view, metric)
        table = best.table.sort_values(metric, kind="stable").reset_index(drop=True)
        top = table.iloc[0]
        lines.append(f"Lowest {name}: {label(top, [view.by])} at lr {top['lr']:g}, {_pct(top[metric])} "
                     f"({_spread(_summary(top, metric))}).")
        if best.across is not None:
            second = table.iloc[1]
            lines.append(f"Against the runner-up, {label(second, [view.by])} at its best lr {second['lr']:g} "
                         f"({_pct(second[metric])}): {stats.describe(best.across)}.")
        lines.append(f"Best learning rate per {view.by}: " + "; ".join(
            f"{label(r, [view.by])} {r['lr']:g} ({_pct(r[metric])}, n = {r['n']})" for _, r in table.iterrows()) + ".")
        if len(table) >= 3:
            worst = table.iloc[-1]
            values = {label(r, [view.by]): _values(view, r, metric) for _, r in table.iloc[[0, -1]].iterrows()}
            (a, va), (b, vb) = values.items()
            lines.append(f"Worst at its best lr: {label(worst, [view.by])} ({_pct(worst[metric])}); "
                         f"{stats.describe(stats.compare(a, va, b, vb))}.")
    elif view.kind in ("numeric", "schedule"):
        best = best_per(view, metric)
        table = best.table.sort_values(metric, kind="stable").reset_index(drop=True)
        top, worst = table.iloc[0], table.iloc[-1]
        lines.append(f"Lowest {name} at {label(top, [view.x])}: {_pct(top[metric])} ({_spread(_summary(top, metric))})"
                     + (f"; highest at {label(worst, [view.x])}: {_pct(worst[metric])} (n = {worst['n']}), "
                        f"{100 * (worst[metric] - top[metric]):.2f} points apart." if len(table) > 1 else "."))
        if best.across is not None:
            lines.append(f"Against the runner-up: {stats.describe(best.across)}.")
        ordered = table.sort_values(view.x).reset_index(drop=True)
        if view.kind == "numeric" and len(ordered) >= 3:
            steps = ordered[metric].diff().dropna()
            trend = ("falls steadily" if (steps < 0).all() else "rises steadily" if (steps > 0).all()
                     else "is not monotonic")
            first, last = ordered.iloc[0], ordered.iloc[-1]
            ends = stats.compare(label(first, [view.x]), _values(view, first, metric),
                                 label(last, [view.x]), _values(view, last, metric))
            lines.append(f"Mean {name} {trend} as {view.x} grows from {first[view.x]:g} to {last[view.x]:g}; "
                         f"between the two ends, {stats.describe(ends)}.")
        gaps = points(view.runs, [view.x], ["test_error", "train_error"])
        gap = gaps["test_error"] - gaps["train_error"]
        if gap.notna().any():
            widest = gaps.loc[gap.idxmax()]
            lines.append(f"Largest gap between test and train error: {100 * gap.max():.2f} points at "
                         f"{label(widest, [view.x])} (means over n = {int(widest['n'])}).")
    else:
        best = best_by(view.runs, [], metric)
        if len(best.table):
            top = best.table.iloc[0]
            lines.append(f"Lowest {name}: {label(top, view.varied)}, {_pct(top[metric])} "
                         f"({_spread(_summary(top, metric))}).")
            if top["runner_up"]:
                lines.append(f"Against the runner-up ({top['runner_up']}): {stats.describe(best.within[''])}.")
    lines += _leftovers(view)
    return lines


def _values(view: GridView, row, metric: str) -> list:
    """The seeds' values of the setting `row` stands for (same settings, any seed)."""
    done = view.done
    same = done[view.varied].eq(pd.Series({s: row[s] for s in view.varied})).all(axis=1)
    return done.loc[same, metric].tolist()


def _leftovers(view: GridView) -> list:
    lines = []
    diverged = view.runs[view.runs["outcome"] == "diverged"]
    if len(diverged):
        lines.append(f"Diverged (loss became NaN or infinite; not plotted as errors): {', '.join(diverged['name'])}.")
    stopped = view.runs[view.runs["outcome"] == "stopped"]
    if len(stopped):
        lines.append(f"Stopped early (left out of every mean): {', '.join(stopped['name'])}.")
    missing = view.runs[view.runs["outcome"].isin(("missing", "failed"))]
    if len(missing):
        failed = int((missing["outcome"] == "failed").sum())
        lines.append(f"{len(missing)} of {len(view.runs)} runs {'has' if len(missing) == 1 else 'have'} "
                     f"no finished result yet"
                     + (f" ({failed} failed)." if failed else "."))
    return lines
