"""`sweep report`: figures, report.md, a self-contained report.html and report.pdf from a sweep's
results. The figures and the blocks are built without I/O; `write_report` writes the files, into a
temporary folder first, so a failed report leaves nothing behind."""
from __future__ import annotations

import base64
import html
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from mnist_core.config import SETTING_TYPES  # noqa: E402

from . import stats  # noqa: E402
from .analysis import (LOG_AXIS, NAMES, NUMERIC, Analysis, GridView, SearchView, Stopping,  # noqa: E402
                       best_per, best_so_far_table, conclusions, curve_runs, points, schedule_note,
                       search_conclusions, shown_metrics, stopping_conclusions)
from .best import SETTINGS, as_percent, best_by, label  # noqa: E402
from .pdf import render_pdf  # noqa: E402

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]
DIVERGED_MARK = dict(marker="x", markersize=9, markeredgewidth=2, linestyle="none")
UNITS = {"depth": "hidden layers", "width": "units per hidden layer", "lr": "learning rate",
         "momentum": "SGD momentum", "batch_size": "examples per batch", "epochs": "training epochs"}


@dataclass
class Block:
    kind: str        # h1, h2, p, table, figure
    content: object  # str, DataFrame, or (Path, caption)


def _mark_diverged(ax, xs, color):
    """Diverged runs have no error to plot: an x at the top edge of the axes says where they were."""
    trans = ax.get_xaxis_transform()
    for x in xs:
        ax.plot([x], [0.97], color=color, transform=trans, clip_on=False, **DIVERGED_MARK)


def _percent_axis(ax, label, means, lows=(), highs=()):
    """A log axis of percentages fitted to the means; an interval reaching far past them (n = 2
    gives wide ones) runs off the edge rather than squashing the means."""
    means = [m for m in means if m > 0 and math.isfinite(m)]
    if not means:
        ax.text(0.5, 0.5, "no finished runs yet", transform=ax.transAxes, ha="center", va="center", color="grey")
        ax.set_yticks([])
        return
    lows = [v for v in lows if v > 0 and math.isfinite(v)]
    highs = [v for v in highs if math.isfinite(v)]
    low = max(min(means + lows) / 1.15, min(means) / 3)
    high = min(max(means + highs) * 1.15, max(means) * 3, 100)
    ax.set_yscale("log")
    ax.set_ylim(low, high)
    ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(_log_ticks(low, high)))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_ylabel(label)
    ax.grid(True, which="major", alpha=0.3)


def _error_axis(ax, name: str, values):
    """The percent axis of each run's error: log scale, unless some run has an error of exactly 0
    (a log axis would hide it), then linear from 0."""
    values = [v for v in values if math.isfinite(v)]
    if not values or min(values) > 0:
        _percent_axis(ax, f"{name} (%, log scale)" if name else "", values)
        return
    ax.set_ylim(0, max(max(values) * 1.08, 1e-3))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_ylabel(f"{name} (%)" if name else "")
    ax.grid(True, which="major", alpha=0.3)


def _log_ticks(low: float, high: float) -> list:
    """Round-number ticks for a log axis from `low` to `high`, a handful, dense enough to read a
    narrow range (3.0, 3.2, 3.4) as well as a wide one (1, 2, 5, 10)."""
    ratio = high / low
    if ratio < 2.5:
        return [t for t in matplotlib.ticker.MaxNLocator(nbins=6).tick_values(low, high) if low <= t <= high]
    mantissas = (1, 2, 5) if ratio > 30 else (1, 1.5, 2, 3, 5, 7) if ratio > 6 else (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8)
    return [m * 10.0 ** e for e in range(-3, 3) for m in mantissas if low <= m * 10.0 ** e <= high]


def _x_axis(ax, setting, values):
    if setting in LOG_AXIS:
        ax.set_xscale("log")
    ax.set_xticks(sorted(values))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    unit = UNITS.get(setting, setting)
    ax.set_xlabel(f"{setting} ({unit}{', log scale' if setting in LOG_AXIS else ''})")


def _errorbars(ax, x, table, metric, color, label=None, fmt="o-"):
    """Means with their 95% intervals; no bar where n = 1 (the interval is NaN)."""
    mean = 100 * table[metric].to_numpy(dtype=float)
    low = 100 * table[f"{metric}_low"].to_numpy(dtype=float)
    high = 100 * table[f"{metric}_high"].to_numpy(dtype=float)
    below = np.where(np.isnan(low), 0, mean - np.maximum(low, mean * 1e-3))  # a log axis has no 0
    above = np.where(np.isnan(high), 0, high - mean)
    ax.errorbar(np.asarray(x, dtype=float), mean, yerr=[below, above], fmt=fmt, color=color,
                label=label, capsize=3, markersize=5, elinewidth=1.2, zorder=3)
    return list(mean), list(low), list(high)


def _legend_extras(n_max, diverged):
    extras = []
    if n_max > 1:
        extras.append(Line2D([], [], color="grey", marker="|", markersize=12, linestyle="none",
                             label="95% interval of the mean"))
    if diverged:
        extras.append(Line2D([], [], color="grey", label="diverged (no error)", **DIVERGED_MARK))
    return extras


def figure_lr_by_setting(view: GridView, metric: str):
    """Error against lr, one line per value of the other setting, its best lr starred; one panel
    per error shown (the ranking one first)."""
    shown = shown_metrics(metric)
    fig, axes = plt.subplots(1, len(shown), figsize=(5.3 * len(shown) if len(shown) > 2 else 12, 4.8), sharex=True,
                             squeeze=False)
    axes = axes[0]
    table = points(view.runs, [view.by, "lr"], shown)
    best = best_per(view, metric).table
    diverged = view.runs[view.runs["outcome"] == "diverged"]
    values = sorted(view.runs[view.by].unique())
    spread = 1.03 ** (np.arange(len(values)) - (len(values) - 1) / 2)  # side by side, so bars do not overlap
    for ax, m in zip(axes, shown):
        drawn = ([], [], [])
        for i, value in enumerate(values):
            color = COLORS[i % len(COLORS)]
            mine = table[table[view.by] == value]
            shown_label = label({view.by: value}, [view.by])
            for acc, got in zip(drawn, _errorbars(ax, mine["lr"] * spread[i], mine, m, color, shown_label)):
                acc.extend(got)
            _mark_diverged(ax, diverged.loc[diverged[view.by] == value, "lr"] * spread[i], color)
            star = best[best[view.by] == value]
            if len(star):
                point = mine[mine["lr"] == star["lr"].iloc[0]]
                ax.plot(point["lr"] * spread[i], 100 * point[m], "*", color=color, markersize=16,
                        markeredgecolor="black", alpha=0.8, zorder=2)
        _x_axis(ax, "lr", view.runs["lr"].unique())
        _percent_axis(ax, f"final {NAMES.get(m, m)} (%, log scale)", *drawn)
        ax.set_title(f"Final {NAMES.get(m, m)} vs learning rate" + (" (ranks the settings)" if m == metric else ""))
    handles, _ = axes[0].get_legend_handles_labels()
    handles.append(Line2D([], [], marker="*", color="grey", markeredgecolor="black", markersize=14,
                          linestyle="none", label=f"best lr of the {view.by}"))
    handles += _legend_extras(int(table["n"].max()), len(diverged))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def figure_error_vs_setting(view: GridView, metric: str):
    """Error against the one setting a grid sweeps (a number, or a schedule), means with 95% intervals."""
    shown = shown_metrics(metric)
    categorical = view.x not in NUMERIC
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    table = points(view.runs, [view.x], shown)
    position = {v: i for i, v in enumerate(table[view.x])} if categorical else None
    xs = np.array([position[v] for v in table[view.x]] if categorical else table[view.x], dtype=float)
    drawn = ([], [], [])
    for i, m in enumerate(shown):
        step = i - (len(shown) - 1) / 2  # side by side, so the bars of the errors do not overlap
        shifted = (xs + 0.06 * step if categorical else xs * 1.025 ** step if view.x in LOG_AXIS
                   else xs + 0.012 * step * (np.ptp(xs) or 1))
        got = _errorbars(ax, shifted, table, m, COLORS[i], NAMES.get(m, m), fmt="o" if categorical else "o-")
        for acc, values in zip(drawn, got):
            acc.extend(values)
    diverged = view.runs[view.runs["outcome"] == "diverged"]
    if categorical:
        _mark_diverged(ax, [position[v] for v in diverged[view.x] if v in position], "black")
        ax.set_xticks(range(len(position)), list(position))
        ax.set_xlim(-0.5, len(position) - 0.5)
        ax.set_xlabel(view.x)
    else:
        _mark_diverged(ax, diverged[view.x], "black")
        _x_axis(ax, view.x, view.runs[view.x].unique())
    _percent_axis(ax, "final error (%, log scale)", *drawn)
    ax.set_title(f"Final error vs {view.x} (grid '{view.name}')")
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + _legend_extras(int(table["n"].max()), len(diverged)), loc="best")
    fig.tight_layout()
    return fig


def figure_curves(histories: dict, title: str, with_lr: bool = False):
    """Per-epoch test error of each labelled run (and its learning rate per epoch)."""
    fig, axes = plt.subplots(1, 2 if with_lr else 1, figsize=(12 if with_lr else 7.5, 4.8), squeeze=False)
    ax = axes[0][0]
    values = []
    for i, (name, history) in enumerate(histories.items()):
        if "test_error" in history:
            series = history["test_error"].dropna()
            ax.plot(series.index, 100 * series, "o-", color=COLORS[i % len(COLORS)], label=name, markersize=4)
            values += list(100 * series)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    _percent_axis(ax, "test error (%, log scale)", values)
    ax.set_title(title)
    ax.legend(loc="upper right")
    if with_lr:
        ax2 = axes[0][1]
        for i, (name, history) in enumerate(histories.items()):
            if "lr" in history:
                ax2.plot(history.index, history["lr"], "o-", color=COLORS[i % len(COLORS)], label=name, markersize=4)
        ax2.set_xlabel("epoch")
        ax2.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax2.set_ylabel("learning rate")
        ax2.set_title("Learning rate per epoch")
        ax2.grid(True, alpha=0.3)
        ax2.legend(loc="lower left")
    fig.tight_layout()
    return fig


def figure_best_so_far(view: SearchView, table: pd.DataFrame):
    """Each trial's final error by trial number (hollow where stopped early), and the best so far."""
    name = NAMES.get(view.metric, view.metric)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    done = table[table["value"].notna()]
    stopped = table[table["at_stop"].notna()]
    ax.plot(done["trial"], 100 * done["value"], "o", color=COLORS[0], label="trial (final error)", zorder=3)
    if len(stopped):
        ax.plot(stopped["trial"], 100 * stopped["at_stop"], "o", mfc="none", color=COLORS[1],
                label="stopped early (error at its stop)", zorder=3)
    ax.step(table["trial"], 100 * table["best"], where="post", color="black", linewidth=1.5, label="best so far")
    diverged = table[table["outcome"] == "diverged"]
    _mark_diverged(ax, diverged["trial"], "black")
    ax.set_xlabel("trial number")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    _error_axis(ax, name, list(100 * done["value"]) + list(100 * stopped["at_stop"]))
    ax.set_title(f"Search '{view.name}': best {name} so far")
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + _legend_extras(1, len(diverged)), loc="upper right")
    fig.tight_layout()
    return fig


def figure_error_vs_sampled(view: SearchView):
    """One panel per sampled setting: each trial's final error against the value it was given."""
    name = NAMES.get(view.metric, view.metric)
    settings = view.sampled
    cols = min(len(settings), 2)  # two across: a page of the PDF is portrait
    rows = math.ceil(len(settings) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols + 1.3, 3.4 * rows + 0.9), squeeze=False,
                             layout="constrained")
    runs = view.runs
    done = runs[runs["outcome"].isin(("done", "duplicate")) & runs[view.metric].notna()]
    stopped = runs[(runs["outcome"] == "stopped") & runs[view.metric].notna()]
    diverged = runs[runs["outcome"] == "diverged"]
    values = list(100 * done[view.metric]) + list(100 * stopped[view.metric])
    norm = matplotlib.colors.Normalize(vmin=runs["trial"].min(), vmax=max(runs["trial"].max(), runs["trial"].min() + 1))
    cmap = plt.get_cmap("viridis")
    for i, (ax, setting) in enumerate(zip(axes.flat, settings)):
        categorical = SETTING_TYPES[setting] == "str" or setting not in NUMERIC and setting not in view.log
        order = sorted(runs[setting].dropna().unique(), key=str) if categorical else []

        def x_of(frame):
            if not categorical:
                return frame[setting].to_numpy(dtype=float)
            jitter = ((frame["trial"].to_numpy(dtype=int) % 7) - 3) * 0.04  # equal values side by side
            return np.array([order.index(v) for v in frame[setting]], dtype=float) + jitter

        ax.scatter(x_of(done), 100 * done[view.metric], c=cmap(norm(done["trial"].to_numpy(dtype=float))),
                   s=30, edgecolors="black", linewidths=0.4, zorder=3)
        ax.scatter(x_of(stopped), 100 * stopped[view.metric], facecolors="none",
                   edgecolors=cmap(norm(stopped["trial"].to_numpy(dtype=float))), s=30, linewidths=1.3, zorder=3)
        _mark_diverged(ax, x_of(diverged), "black")
        if categorical:
            ax.set_xticks(range(len(order)), [str(v) for v in order])
            ax.set_xlim(-0.5, len(order) - 0.5)
            ax.set_xlabel(setting)
        else:
            log = setting in view.log or (view.budget is None and setting in LOG_AXIS)  # no spec: as the grids
            if log:
                ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.set_xlabel(f"{setting} ({UNITS.get(setting, setting)}{', log scale' if log else ''})")
        _error_axis(ax, name if i % cols == 0 else "", values)
    for ax in axes.flat[len(settings):]:
        ax.set_visible(False)
    handles = [Line2D([], [], marker="o", color="grey", markeredgecolor="black", linestyle="none", label="complete"),
               Line2D([], [], marker="o", color="grey", mfc="none", linestyle="none",
                      label="stopped early (error at its stop)")]
    handles += _legend_extras(1, len(diverged))
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, label="trial number", aspect=30)
    fig.suptitle(f"Search '{view.name}': final {name} against each sampled setting")
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
    return fig


def figure_importance(view: SearchView):
    """The importance of each sampled setting, largest on top."""
    items = list(view.importance.items())[::-1]
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(items) + 1.5))
    ax.barh([k for k, _ in items], [v for _, v in items], color=COLORS[0])
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {v:.2f}", va="center")
    ax.set_xlim(0, max(v for _, v in items) * 1.15)
    ax.set_xlabel("importance (fANOVA; sums to 1)")
    ax.set_title(f"Search '{view.name}': importance for the {NAMES.get(view.metric, view.metric)}")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def _objective_name(stopping: Stopping) -> str:
    with_val = stopping.runs["val_error"].notna()
    return ("validation error" if len(with_val) and with_val.all() else "test error" if not with_val.any()
            else "objective (validation error where held out, else test error)")


def figure_stopping(stopping: Stopping, colour_by: str = ""):
    """The per-epoch objective of every finished run, an x where a run was stopped early; coloured
    by `colour_by` (a setting) or, without one, by whether the run was stopped."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    runs = stopping.runs[stopping.runs["run_id"].isin(stopping.curves)]
    groups = sorted(runs[colour_by].unique(), key=str) if colour_by else ["trained to the end", "stopped early"]
    values = []
    for _, run in runs.iterrows():
        curve = 100 * np.asarray(stopping.curves[run["run_id"]], dtype=float)
        epochs = np.arange(1, len(curve) + 1)
        stopped = run["outcome"] == "stopped"
        group = run[colour_by] if colour_by else groups[int(stopped)]
        color = COLORS[groups.index(group) % len(COLORS)]
        ax.plot(epochs, curve, "-", color=color, alpha=0.75, linewidth=1.2)
        if stopped and np.isfinite(curve[-1]):
            ax.plot(epochs[-1], curve[-1], "X", color=color, markeredgecolor="black", markersize=9, zorder=3)
        values += [v for v in curve if np.isfinite(v)]
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    _error_axis(ax, _objective_name(stopping), values)
    ax.set_title(f"{stopping.kind.capitalize()} '{stopping.name}': every run per epoch, stopped ones marked")
    handles = [Line2D([], [], color=COLORS[i % len(COLORS)], label=(label({colour_by: g}, [colour_by])
                                                                   if colour_by else g))
               for i, g in enumerate(groups)]
    handles.append(Line2D([], [], marker="X", color="grey", markeredgecolor="black", markersize=9, linestyle="none",
                          label="stopped early here"))
    ax.legend(handles=handles, loc="upper right")
    fig.tight_layout()
    return fig


def _interval_table(table: pd.DataFrame, settings: list, metric: str) -> pd.DataFrame:
    """A best_by table for people: settings, the ranking error with its interval, n, test and
    train error, and the test against the runner-up."""
    out = table[[*settings, metric]].copy()
    out["95% CI"] = [stats.format_interval(stats.Summary(int(r["n"]), r[metric], r[f"{metric}_std"],
                                                         r[f"{metric}_ci_low"], r[f"{metric}_ci_high"]))
                     for _, r in table.iterrows()]
    out["n"] = table["n"]
    for other in ("test_error", "train_error"):
        if other != metric:
            out[other] = table[other]
    return as_percent(out)


def _runner_up_columns(out: pd.DataFrame, table: pd.DataFrame, heading: str) -> pd.DataFrame:
    out[heading] = table["runner_up"].fillna("").str.replace("lr=", "")
    out["p"] = [("" if not r else "no test (n = 1)") if pd.isna(p) else
                stats.format_p(p).removeprefix("p = ").removeprefix("p ")
                for p, r in zip(table["p_value"], table["runner_up"].fillna(""))]
    return out


def _outcome_counts(view: GridView, settings: list) -> pd.Series:
    """Per setting, the runs that did not finish cleanly, in words ('1 diverged, 1 missing')."""
    left = view.runs[view.runs["outcome"] != "done"]
    return left.groupby(settings)["outcome"].apply(
        lambda o: ", ".join(f"{n} {k}" for k, n in o.value_counts().sort_index().items()))


def build_report(analysis: Analysis, folder: Path):
    """The report as blocks, and the figures to save (path -> matplotlib figure) that the
    figure blocks point to. No I/O."""
    results, metric = analysis.results, analysis.metric
    title = (f"{results.spec.experiment} ({results.spec.path})" if results.spec is not None
             else results.experiment)
    blocks = [Block("h1", f"Sweep report: {title}")]
    figures = {}
    counts = results.runs["outcome"].value_counts()
    seeds = results.runs.groupby(SETTINGS, dropna=False).size().max() if len(results.runs) else 0
    trials = int((results.runs["search"] != "").sum())
    shown_outcomes = ("done", "diverged", "stopped", *(("duplicate",) if counts.get("duplicate") else ()),
                      "failed", "missing")
    what = (f"{len(results.runs)} planned runs" if not trials else
            f"{len(results.runs)} runs ({len(results.runs) - trials} planned in grids, {trials} trials of searches)")
    blocks.append(Block("p", f"{what}: " + ", ".join(f"{counts.get(k, 0)} {k}" for k in shown_outcomes) + "."))
    blocks.append(Block("p", f"Errors are final-epoch fractions of misclassified images, shown in percent. "
                             f"Each setting is run with up to {seeds} seed(s); points are means over its "
                             f"finished seeds, bars their 95% confidence interval (Student t), and no bar "
                             f"where a setting has one seed. Two settings are called distinguishable when "
                             f"Welch's t-test gives p < {stats.ALPHA}."))
    if metric != "test_error":
        blocks.append(Block("p", f"Settings are ranked by {NAMES.get(metric, metric)} ({metric}); the test "
                                 f"error is reported for them but did not choose them."))

    def figure(fig, name, caption):
        path = folder / f"{name}.png"
        figures[path] = fig
        blocks.append(Block("figure", (path, caption)))

    for view in analysis.grids:
        blocks.append(Block("h2", f"Grid '{view.name}': varies {', '.join(view.varied) or 'nothing'}"))
        stopping = analysis.stopping.get(view.name)
        blocks.extend(Block("p", line) for line in conclusions(view, metric))
        if stopping is not None:
            blocks.extend(Block("p", line) for line in stopping_conclusions(stopping) + schedule_note(view, stopping))
        if not view.done.empty:
            _grid_figures(view, metric, results, figure, blocks)
        if stopping is not None and stopping.curves:
            colour = "schedule" if "schedule" in view.varied else next(
                (v for v in view.varied if view.runs[v].nunique() <= len(COLORS)), "")
            figure(figure_stopping(stopping, colour), f"{view.name}_stopping", _stopping_caption(stopping))

    for view in analysis.searches:
        _search_section(view, analysis.stopping.get(view.name), figure, blocks)

    left = analysis.outcome("missing", "failed")
    blocks.append(Block("h2", "Missing runs"))
    if len(left):
        blocks.append(Block("p", f"{_runs(len(left))} no finished result (state in the queue shown):"))
        blocks.append(Block("table", left[["name", "grids", "state"]]))
    else:
        blocks.append(Block("p", "None: every planned run has finished."))
    stopped = analysis.outcome("stopped")
    if len(stopped):
        blocks.append(Block("h2", "Runs stopped early"))
        blocks.append(Block("p", f"{_runs(len(stopped), 'was', 'were')} stopped early and left out of every mean "
                                 f"and test:"))
        blocks.append(Block("table", stopped[["name", "grids", "epochs_completed", "epochs"]].astype(
            {"epochs_completed": "Int64"})))
    return blocks, figures


def _grid_figures(view: GridView, metric: str, results, figure, blocks: list) -> None:
    bars = " Bars: 95% intervals over seeds (none where n = 1)."
    if view.kind == "lr_by_setting":
        figure(figure_lr_by_setting(view, metric), f"{view.name}_error_vs_lr",
               f"Final error against learning rate, one line per {view.by}; a star marks each "
               f"{view.by}'s best learning rate." + bars)
        best = best_per(view, metric).table.sort_values(metric, kind="stable")
        blocks.append(Block("p", f"Each {view.by} at its best learning rate; p: Welch's t-test against "
                                 f"its next-best learning rate."))
        shown = _runner_up_columns(_interval_table(best, [view.by, "lr"], metric), best, "next-best lr")
        blocks.append(Block("table", shown))
        curves = curve_runs(view, metric)
        if curves:
            figure(figure_curves({k: results.histories.get(r, pd.DataFrame()) for k, r in curves.items()},
                                 f"Test error per epoch, each {view.by} at its best lr"),
                   f"{view.name}_best_curves",
                   f"Per-epoch test error of each {view.by} at its best learning rate (its best seed's run).")
    elif view.kind in ("numeric", "schedule"):
        figure(figure_error_vs_setting(view, metric), f"{view.name}_error_vs_{view.x}",
               f"Final error against {view.x}." + bars)
        if view.kind == "schedule":
            curves = curve_runs(view, metric)
            figure(figure_curves({k: results.histories.get(r, pd.DataFrame()) for k, r in curves.items()},
                                 "Test error per epoch, by schedule", with_lr=True), f"{view.name}_curves",
                   "Per-epoch test error and learning rate of each schedule (its best seed's run).")
        best = best_per(view, metric).table
        shown = _with_leftovers(_interval_table(best, [view.x], metric), best, view, [view.x])
        blocks.append(Block("table", shown.sort_values(view.x, kind="stable")))
    else:
        table = best_by(view.runs, view.varied, metric).table.sort_values(metric)
        blocks.append(Block("table", _with_leftovers(_interval_table(table, view.varied, metric), table, view,
                                                     view.varied)))


def _search_section(view: SearchView, stopping, figure, blocks: list) -> None:
    method = f"{view.method}, " if view.method else ""
    blocks.append(Block("h2", f"Search '{view.name}': {method}samples {', '.join(view.sampled) or 'nothing'}"))
    blocks.extend(Block("p", line) for line in search_conclusions(view))
    if stopping is not None:
        blocks.extend(Block("p", line) for line in stopping_conclusions(stopping))
    if view.runs.empty:
        return
    best = _best_trials(view)
    if len(best):  # before the figures, so that the PDF keeps it with the section's words
        blocks.append(Block("p", f"The {len(best)} best of the {len(view.complete)} complete trials:"
                            if len(best) < len(view.complete) else f"The {len(best)} complete trials, best first:"))
        blocks.append(Block("table", best))
    name = NAMES.get(view.metric, view.metric)
    table = best_so_far_table(view)
    if table["value"].notna().any() or table["at_stop"].notna().any():
        figure(figure_best_so_far(view, table), f"{view.name}_best_so_far",
               f"Final {name} of each trial by trial number, and the best so far (the line); hollow: "
               f"stopped early, at the epoch it stopped (not counted as a result).")
    if view.sampled and view.runs[view.metric].notna().any():
        figure(figure_error_vs_sampled(view), f"{view.name}_error_vs_settings",
               f"Final {name} of each trial against each sampled setting (log axis for log-uniform settings "
               f"and for lists of {', '.join(LOG_AXIS)}); colour: trial number; hollow: stopped early.")
    if view.importance:
        figure(figure_importance(view), f"{view.name}_importance",
               f"Importance of each sampled setting for the {name} (Optuna's fANOVA on the complete trials).")
    if stopping is not None and stopping.curves:
        figure(figure_stopping(stopping, ""), f"{view.name}_stopping", _stopping_caption(stopping))


def _best_trials(view: SearchView, n: int = 10) -> pd.DataFrame:
    shown = list(dict.fromkeys([view.metric, "test_error"]))
    best = view.complete.sort_values([view.metric, "trial"], kind="stable").head(n)
    out = best[["trial", *view.sampled, *shown, "outcome"]].astype({"trial": int})
    return as_percent(out).reset_index(drop=True)


def _stopping_caption(stopping) -> str:
    return (f"Per-epoch {_objective_name(stopping)} of every finished run of the {stopping.kind}; an x marks "
            f"where a run was stopped early.")


def _runs(n: int, one: str = "has", many: str = "have") -> str:
    return f"1 run {one}" if n == 1 else f"{n} runs {many}"


def _with_leftovers(out: pd.DataFrame, table: pd.DataFrame, view: GridView, settings: list) -> pd.DataFrame:
    """Add a column 'not in the mean' (diverged, missing, ... runs of each setting) when any, and a
    row for each setting none of whose runs finished cleanly."""
    counts = _outcome_counts(view, settings)
    if counts.empty:
        return out
    keys = list(table[settings].itertuples(index=False, name=None)) if len(settings) > 1 else list(table[settings[0]])
    out = out.assign(**{"not in the mean": [counts.get(k, "") for k in keys]})
    extra = [{**dict(zip(settings, k if len(settings) > 1 else (k,))), "not in the mean": text}
             for k, text in counts.items() if k not in keys]
    if not extra:
        return out
    out["n"] = out["n"].astype(object)
    return pd.concat([out, pd.DataFrame(extra)], ignore_index=True).fillna("")


def render_markdown(blocks: list[Block], out: Path) -> str:
    parts = []
    for b in blocks:
        if b.kind == "h1":
            parts.append(f"# {b.content}")
        elif b.kind == "h2":
            parts.append(f"## {b.content}")
        elif b.kind == "p":
            parts.append(str(b.content))
        elif b.kind == "table":
            parts.append(b.content.to_markdown(index=False))
        else:
            path, caption = b.content
            parts.append(f"![{caption}]({path.relative_to(out)})\n\n*{caption}*")
    return "\n\n".join(parts) + "\n"


def render_html(blocks: list[Block]) -> str:
    body = []
    for b in blocks:
        if b.kind in ("h1", "h2"):
            body.append(f"<{b.kind}>{html.escape(str(b.content))}</{b.kind}>")
        elif b.kind == "p":
            body.append(f"<p>{html.escape(str(b.content))}</p>")
        elif b.kind == "table":
            body.append(b.content.to_html(index=False, border=0, classes="runs"))
        else:
            path, caption = b.content
            data = base64.b64encode(path.read_bytes()).decode()
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                        f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
             "img{max-width:100%}table.runs{border-collapse:collapse;font-size:0.9em}"
             "table.runs td,table.runs th{padding:2px 10px;border-bottom:1px solid #ddd;text-align:right}"
             "figcaption{font-style:italic;color:#444}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Sweep report</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def write_report(analysis: Analysis, out_dir: str | Path) -> tuple[Path, list[Path]]:
    """Write the figures, report.md, report.html and report.pdf into `out_dir` (made if needed, its
    other files left alone); return the folder and the files written. Everything is built in a
    temporary folder beside it first: a report that fails leaves nothing behind."""
    out = Path(out_dir)
    created = [p for p in (out, *out.parents) if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name or 'report'}-", dir=out.parent))
    try:
        blocks, figures = build_report(analysis, tmp)
        for path, fig in figures.items():
            fig.savefig(path, dpi=110)
            plt.close(fig)
        (tmp / "report.md").write_text(render_markdown(blocks, tmp))
        (tmp / "report.html").write_text(render_html(blocks))
        render_pdf(blocks, tmp / "report.pdf")
        out.mkdir(exist_ok=True)
        names = sorted(p.name for p in tmp.iterdir())
        for name in names:
            os.replace(tmp / name, out / name)
        return out, [out / name for name in names]
    except BaseException:
        plt.close("all")
        shutil.rmtree(tmp, ignore_errors=True)
        for path in created:  # the folders this call made, deepest first, if still empty
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
