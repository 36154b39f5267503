"""What a sweep's tracked runs say: per-grid tables and conclusions. Pure pandas, no plotting.

Every number and conclusion here is computed from the runs; nothing is written in advance.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from mnist_core.config import SETTING_NAMES

from .spec import PlannedRun, SweepSpec, expand

NUMERIC = ("depth", "width", "lr", "momentum", "gamma", "restart_period", "epochs", "batch_size")
LOG_AXIS = ("lr", "width", "batch_size")


@dataclass
class GridView:
    name: str
    kind: str                # lr_by_activation, numeric, schedule or table
    varied: list             # settings that vary inside the grid (seed aside)
    runs: pd.DataFrame       # one row per planned run of the grid, with its outcome
    x: str = ""              # the swept setting of a numeric grid


@dataclass
class Analysis:
    spec: SweepSpec
    runs: pd.DataFrame                        # every planned run, with outcome and final metrics
    grids: list = field(default_factory=list)  # GridView per grid

    @property
    def missing(self) -> pd.DataFrame:
        return self.runs[self.runs["outcome"] == "missing"]


def planned_frame(runs: list[PlannedRun]) -> pd.DataFrame:
    rows = [{"key": r.key, "name": r.name, "grids": ",".join(r.grids), **r.config.as_params()} for r in runs]
    return pd.DataFrame(rows, columns=["key", "name", "grids", *SETTING_NAMES])


def join_outcomes(planned: pd.DataFrame, finished: pd.DataFrame, states: dict) -> pd.DataFrame:
    """Planned runs with their finished run (if any): outcome done, diverged or missing."""
    metrics = ["run_id", "diverged", "test_error", "train_error", "best_test_error", "training_seconds"]
    joined = planned.merge(finished[["key", *metrics]], on="key", how="left")
    joined["outcome"] = "missing"
    joined.loc[joined["run_id"].notna(), "outcome"] = "done"
    joined.loc[joined["diverged"].eq(True), "outcome"] = "diverged"
    joined["state"] = joined["key"].map(states).fillna("pending")
    return joined


def classify(varied: list) -> tuple[str, str]:
    if set(varied) == {"activation", "lr"}:
        return "lr_by_activation", "lr"
    if varied and set(varied) <= {"schedule", "gamma", "restart_period"} and "schedule" in varied:
        return "schedule", "schedule"
    if len(varied) == 1 and varied[0] in NUMERIC:
        return "numeric", varied[0]
    return "table", ""


def analyse(spec: SweepSpec, finished: pd.DataFrame, states: dict) -> Analysis:
    every = join_outcomes(planned_frame(expand(spec)), finished, states)
    analysis = Analysis(spec=spec, runs=every)
    for grid in spec.grids:
        keys = [r.key for r in expand(spec, [grid])]
        runs = every[every["key"].isin(keys)].reset_index(drop=True)
        varied = [s for s in SETTING_NAMES if s != "seed" and runs[s].nunique() > 1]
        kind, x = classify(varied)
        analysis.grids.append(GridView(grid, kind, varied, runs, x))
    return analysis


def mean_over_seeds(runs: pd.DataFrame, by: list) -> pd.DataFrame:
    """Mean final errors per setting combination over the seeds that finished without diverging."""
    ok = runs[runs["outcome"] == "done"]
    table = ok.groupby(by, dropna=False).agg(test_error=("test_error", "mean"), train_error=("train_error", "mean"),
                                             seeds=("seed", "nunique")).reset_index()
    return table.sort_values(by).reset_index(drop=True)


def best_lr_table(view: GridView) -> pd.DataFrame:
    """Per activation, the learning rate with the lowest mean final test error."""
    table = mean_over_seeds(view.runs, ["activation", "lr"])
    if table.empty:
        return table
    best = table.loc[table.groupby("activation")["test_error"].idxmin()]
    return best.sort_values("test_error").reset_index(drop=True)


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def conclusions(view: GridView) -> list[str]:
    """Sentences about one grid, every number computed from its runs."""
    lines = []
    diverged = view.runs[view.runs["outcome"] == "diverged"]
    if view.kind == "lr_by_activation":
        best = best_lr_table(view)
        if len(best) >= 1:
            top = best.iloc[0]
            line = f"Best activation: {top.activation} at lr {top.lr:g}, test error {_pct(top.test_error)}"
            if len(best) >= 2:
                second = best.iloc[1]
                line += (f", {100 * (second.test_error - top.test_error):.2f} percentage points better than "
                         f"{second.activation} ({_pct(second.test_error)} at lr {second.lr:g})")
            lines.append(line + ".")
            lines.append("Best learning rate per activation: " + "; ".join(
                f"{r.activation} {r.lr:g} ({_pct(r.test_error)})" for r in best.itertuples()) + ".")
            worst = best.iloc[-1]
            if len(best) >= 3:
                lines.append(f"Worst at its best lr: {worst.activation} ({_pct(worst.test_error)}), "
                             f"{100 * (worst.test_error - top.test_error):.2f} points behind {top.activation}.")
    elif view.kind in ("numeric", "schedule"):
        table = mean_over_seeds(view.runs, [view.x])
        if not table.empty:
            x, err = table[view.x].tolist(), table["test_error"].tolist()
            gap = (table["test_error"] - table["train_error"]).tolist()
            best, worst, widest = err.index(min(err)), err.index(max(err)), gap.index(max(gap))
            lines.append(f"Best {view.x}: {_fmt(x[best])} (test error {_pct(err[best])}); "
                         f"worst: {_fmt(x[worst])} ({_pct(err[worst])}); "
                         f"spread {100 * (err[worst] - err[best]):.2f} points.")
            if view.kind == "numeric" and len(table) >= 3:
                steps = [b - a for a, b in zip(err, err[1:])]
                trend = ("falls steadily" if all(d < 0 for d in steps) else
                         "rises steadily" if all(d > 0 for d in steps) else "is not monotonic")
                lines.append(f"Test error {trend} as {view.x} grows from {_fmt(x[0])} to {_fmt(x[-1])}.")
            lines.append(f"Largest gap between test and train error: {100 * gap[widest]:.2f} points at "
                         f"{view.x} = {_fmt(x[widest])}.")
    if len(diverged):
        lines.append(f"Diverged (loss became NaN or infinite; not plotted as errors): "
                     f"{', '.join(diverged['name'])}.")
    missing = view.runs[view.runs["outcome"] == "missing"]
    if len(missing):
        lines.append(f"{len(missing)} of {len(view.runs)} runs have no finished result yet.")
    return lines
