"""The report's figures, one matplotlib figure each, from the numbers of analysis.py: error against
learning rate or a setting with 95% intervals, per-epoch curves, a search's trials and importances,
what early stopping stopped. No I/O: report.py saves them.
"""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from mnist_core.config import SETTING_TYPES  # noqa: E402

from .analysis import LOG_AXIS, NUMERIC, GridView, SearchView, Stopping, best_per, points, shown_metrics  # noqa: E402
from .best import label  # noqa: E402
from .words import NAMES, objective_name  # noqa: E402

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]
DIVERGED_MARK = dict(marker="x", markersize=9, markeredgewidth=2, linestyle="none")
UNITS = {"depth": "hidden layers", "width": "units per hidden layer", "lr": "learning rate",
         "momentum": "SGD momentum", "batch_size": "examples per batch", "epochs": "training epochs"}


def _mark_diverged(ax, xs, color):
    """Diverged runs have no error to plot: an x at the top edge of the axes says where they were."""
    trans = ax.get_xaxis_transform()
    for x in xs:
        ax.plot([x], [0.97], color=color, transform=trans, clip_on=False, **DIVERGED_MARK)


def _percent_limits(means, lows=(), highs=()):
    """(low, high) of a log axis of percentages fitted to the means, reaching out to the intervals
    only so far (n = 2 gives wide ones) that the means are not squashed; None without a mean."""
    means = [m for m in means if m > 0 and math.isfinite(m)]
    if not means:
        return None
    lows = [v for v in lows if v > 0 and math.isfinite(v)]
    highs = [v for v in highs if math.isfinite(v)]
    return max(min(means + lows) / 1.15, min(means) / 3), min(max(means + highs) * 1.15, max(means) * 3, 100)


def _percent_axis(ax, label, means, lows=(), highs=()):
    """A log axis of percentages (_percent_limits); an interval reaching past it is cut at its edge
    (_errorbars marks where)."""
    limits = _percent_limits(means, lows, highs)
    if limits is None:
        ax.text(0.5, 0.5, "no finished runs yet", transform=ax.transAxes, ha="center", va="center", color="grey")
        ax.set_yticks([])
        return
    low, high = limits
    ax.set_yscale("log")
    ax.set_ylim(low, high)
    ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(_log_ticks(low, high)))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_ylabel(label)
    ax.grid(True, which="major", alpha=0.3)


def _legend_below(fig, handles, columns: int = 4):
    """The legend under the axes, outside every data area (the figure is laid out constrained), in
    as many columns (up to `columns`) as fit the figure's width."""
    renderer = fig.canvas.get_renderer()
    for ncol in range(min(len(handles), columns), 0, -1):
        legend = fig.legend(handles=handles, loc="outside lower center", ncol=ncol, frameon=False)
        if ncol == 1 or legend.get_window_extent(renderer).width <= 0.98 * fig.bbox.width:
            return legend
        legend.remove()


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


def _errorbars(ax, x, table, metric, color, label=None, fmt="o-", limits=None):
    """Means with their 95% intervals; no bar where n = 1 (the interval is NaN). With `limits` (the
    y axis' (low, high), in percent) a bar is cut at the axis' edge and a caret there says it goes on."""
    x = np.asarray(x, dtype=float)
    mean = 100 * table[metric].to_numpy(dtype=float)
    low = 100 * table[f"{metric}_low"].to_numpy(dtype=float)
    high = 100 * table[f"{metric}_high"].to_numpy(dtype=float)
    shown_low, shown_high = np.maximum(low, mean * 1e-3), high  # a log axis has no 0
    if limits is not None:
        shown_low, shown_high = np.clip(shown_low, *limits), np.clip(shown_high, *limits)
        trans = ax.get_xaxis_transform()
        for cut, y, marker in ((low < limits[0], 0.025, "v"), (high > limits[1], 0.975, "^")):
            if cut.any():
                ax.plot(x[cut], [y] * int(cut.sum()), marker, color=color, markersize=6, transform=trans,
                        linestyle="none", zorder=4)
    below = np.where(np.isnan(low), 0, mean - shown_low)
    above = np.where(np.isnan(high), 0, shown_high - mean)
    ax.errorbar(x, mean, yerr=[below, above], fmt=fmt, color=color, label=label, capsize=3, markersize=5,
                elinewidth=1.2, zorder=3)
    return list(mean), list(low), list(high)


def _cut(table, metrics, limits) -> bool:
    """Whether an interval of `table` runs past `limits`."""
    if limits is None:
        return False
    return any(((100 * table[f"{m}_low"] < limits[0]) | (100 * table[f"{m}_high"] > limits[1])).any()
               for m in metrics)


def _legend_extras(n_max, diverged, cut=False):
    extras = []
    if n_max > 1:
        extras.append(Line2D([], [], color="grey", marker="|", markersize=12, linestyle="none",
                             label="95% interval of the mean"))
    if cut:
        extras.append(Line2D([], [], color="grey", marker="v", linestyle="none",
                             label="interval goes on past the axis"))
    if diverged:
        extras.append(Line2D([], [], color="grey", label="diverged (no error)", **DIVERGED_MARK))
    return extras


def figure_lr_by_setting(view: GridView, metric: str, shown=None):
    """Error against lr, one line per value of the other setting, its best lr (by `metric`) starred;
    one panel per error in `shown` (default: the ranking one), side by side."""
    shown = list(shown or [metric])
    wide = len(shown) > 1
    with plt.rc_context({"font.size": 16 if wide else 11}):  # side by side, the figure is printed smaller
        fig, axes = plt.subplots(1, len(shown), figsize=(11, 4.8) if wide else (7.5, 5.2), sharex=True, squeeze=False,
                                 layout="constrained")
        axes = axes[0]
        table = points(view.runs, [view.by, "lr"], shown)
        best = best_per(view, metric).table
        diverged = view.runs[view.runs["outcome"] == "diverged"]
        values = sorted(view.runs[view.by].unique())
        spread = 1.03 ** (np.arange(len(values)) - (len(values) - 1) / 2)  # side by side: bars do not overlap
        cut = False
        for ax, m in zip(axes, shown):
            limits = _percent_limits(*(100 * table[f"{m}{end}"].to_numpy(dtype=float) for end in ("", "_low", "_high")))
            cut = cut or _cut(table, [m], limits)
            for i, value in enumerate(values):
                color = COLORS[i % len(COLORS)]
                mine = table[table[view.by] == value]
                _errorbars(ax, mine["lr"] * spread[i], mine, m, color, label({view.by: value}, [view.by]),
                           limits=limits)
                _mark_diverged(ax, diverged.loc[diverged[view.by] == value, "lr"] * spread[i], color)
                star = best[best[view.by] == value]
                if len(star):
                    point = mine[mine["lr"] == star["lr"].iloc[0]]
                    ax.plot(point["lr"] * spread[i], 100 * point[m], "*", color=color, markersize=16,
                            markeredgecolor="black", alpha=0.8, zorder=2)
            _x_axis(ax, "lr", view.runs["lr"].unique())
            _percent_axis(ax, f"final {NAMES.get(m, m)} (%, log scale)", table[m] * 100,
                          table[f"{m}_low"] * 100, table[f"{m}_high"] * 100)
            ax.set_title(f"Final {NAMES.get(m, m)}" + (" (ranks the settings)" if m == metric else ""))
        handles, _ = axes[0].get_legend_handles_labels()
        handles.append(Line2D([], [], marker="*", color="grey", markeredgecolor="black", markersize=14,
                              linestyle="none", label=f"best lr of the {view.by}"))
        handles += _legend_extras(int(table["n"].max()), len(diverged), cut)
        _legend_below(fig, handles, 4)
    return fig


def figure_error_vs_setting(view: GridView, metric: str):
    """Error against the one setting a grid sweeps (a number, or a schedule), means with 95% intervals."""
    shown = shown_metrics(metric)
    categorical = view.x not in NUMERIC
    fig, ax = plt.subplots(figsize=(7.5, 5.2), layout="constrained")
    table = points(view.runs, [view.x], shown)
    limits = _percent_limits(*[[v for m in shown for v in 100 * table[f"{m}{end}"].to_numpy(dtype=float)]
                               for end in ("", "_low", "_high")])
    position = {v: i for i, v in enumerate(table[view.x])} if categorical else None
    xs = np.array([position[v] for v in table[view.x]] if categorical else table[view.x], dtype=float)
    drawn = ([], [], [])
    for i, m in enumerate(shown):
        step = i - (len(shown) - 1) / 2  # side by side, so the bars of the errors do not overlap
        shifted = (xs + 0.06 * step if categorical else xs * 1.025 ** step if view.x in LOG_AXIS
                   else xs + 0.012 * step * (np.ptp(xs) or 1))
        got = _errorbars(ax, shifted, table, m, COLORS[i], NAMES.get(m, m), fmt="o" if categorical else "o-",
                         limits=limits)
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
    _legend_below(fig, handles + _legend_extras(int(table["n"].max()), len(diverged), _cut(table, shown, limits)))
    return fig


def figure_curves(histories: dict, title: str, with_lr: bool = False):
    """Per-epoch test error of each labelled run (and its learning rate per epoch), the legend below."""
    with plt.rc_context({"font.size": 16 if with_lr else 10}):  # side by side, the figure is printed smaller
        return _curves(histories, title, with_lr)


def _curves(histories: dict, title: str, with_lr: bool):
    fig, axes = plt.subplots(1, 2 if with_lr else 1, figsize=(11 if with_lr else 7.5, 5.2), squeeze=False,
                             layout="constrained")
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
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        _legend_below(fig, handles, 4)
    return fig


def figure_best_so_far(view: SearchView, table: pd.DataFrame):
    """Each trial's final error by trial number (hollow where stopped early), and the best so far."""
    name = NAMES.get(view.metric, view.metric)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
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
    _legend_below(fig, handles + _legend_extras(1, len(diverged)))
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


def figure_stopping(stopping: Stopping, colour_by: str = ""):
    """The per-epoch objective of every finished run, an x where a run was stopped early; coloured
    by `colour_by` (a setting) or, without one, by whether the run was stopped."""
    fig, ax = plt.subplots(figsize=(7.5, 5.2), layout="constrained")
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
    _error_axis(ax, objective_name(stopping), values)
    ax.set_title(f"{stopping.kind.capitalize()} '{stopping.name}': every run per epoch, stopped ones marked")
    handles = [Line2D([], [], color=COLORS[i % len(COLORS)], label=(label({colour_by: g}, [colour_by])
                                                                   if colour_by else g))
               for i, g in enumerate(groups)]
    handles.append(Line2D([], [], marker="X", color="grey", markeredgecolor="black", markersize=9, linestyle="none",
                          label="stopped early here"))
    _legend_below(fig, handles)
    return fig
