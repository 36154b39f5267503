"""What a sweep's results say: per-grid summaries over seeds and conclusions qualified by n and p.
Pure pandas over `SweepResults`: no store, no plotting.

Every number and conclusion here is computed from the runs; nothing is written in advance.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from . import stats
from .best import Best, best_by, candidates, label, resolve_metric, varied
from .results import SweepResults

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
class Analysis:
    results: SweepResults
    metric: str              # what ranks: val_error when every finished run has one, else test_error
    grids: tuple             # GridView per selected grid

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
        runs = results.grid_runs(grid)
        kinds = classify(varied(runs))
        views.append(GridView(grid, kinds[0], varied(runs), runs, kinds[1], kinds[2]))
    return views


def ranking_metric(results: SweepResults) -> str:
    return resolve_metric(candidates(results.runs), "auto")[0]


def analyse(results: SweepResults) -> Analysis:
    return Analysis(results, ranking_metric(results), tuple(grid_views(results)))


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
    """Run ids whose histories the report needs; pass to fetch_results(histories=...)."""
    metric = ranking_metric(results)
    return [run_id for view in grid_views(results) for run_id in curve_runs(view, metric).values()]


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


def _comparison_sentence(comparison: stats.Comparison) -> str:
    text = stats.describe(comparison)
    return text[0].upper() + text[1:] + "."


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
        lines.append(f"Stopped early by the search (left out of every mean): {', '.join(stopped['name'])}.")
    missing = view.runs[view.runs["outcome"].isin(("missing", "failed"))]
    if len(missing):
        failed = int((missing["outcome"] == "failed").sum())
        lines.append(f"{len(missing)} of {len(view.runs)} runs {'has' if len(missing) == 1 else 'have'} "
                     f"no finished result yet"
                     + (f" ({failed} failed)." if failed else "."))
    return lines
