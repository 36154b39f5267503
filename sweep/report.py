"""`sweep report`: figures, report.md, a self-contained report.html and report.pdf from the store."""
from __future__ import annotations

import base64
import html
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from . import queue, tracking  # noqa: E402
from .analysis import LOG_AXIS, Analysis, GridView, analyse, best_lr_table, conclusions, mean_over_seeds  # noqa: E402
from .best import as_percent, finished_runs, tidy_runs  # noqa: E402
from .spec import SweepSpec, expand  # noqa: E402

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]
DIVERGED_MARK = dict(marker="x", markersize=9, markeredgewidth=2, linestyle="none")


@dataclass
class Block:
    kind: str        # h1, h2, p, table, figure
    content: object  # str, DataFrame, or (Path, caption)


def _mark_diverged(ax, xs, color):
    """Diverged runs have no error to plot: an x at the top edge of the axes says where they were."""
    trans = ax.get_xaxis_transform()
    for x in xs:
        ax.plot([x], [0.97], color=color, transform=trans, clip_on=False, **DIVERGED_MARK)


def _percent_axis(ax, label):
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    ticks = ([0.1, 0.2, 0.3, 0.5, 1, 2, 3, 5, 10, 20, 30, 50, 100] if high / low > 20 else
             [0.1, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 2.5, 3, 4, 5, 7, 10, 15, 20, 30, 50, 70, 100])
    ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_ylabel(label)
    ax.grid(True, which="both", alpha=0.3)


def _diverged_handle():
    return Line2D([], [], color="grey", label="diverged (no error)", **DIVERGED_MARK)


def figure_lr_by_activation(view: GridView, best: pd.DataFrame):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharex=True)
    means = mean_over_seeds(view.runs, ["activation", "lr"])
    diverged = view.runs[view.runs["outcome"] == "diverged"]
    for i, activation in enumerate(sorted(view.runs["activation"].unique())):
        color = COLORS[i % len(COLORS)]
        mine = means[means["activation"] == activation]
        for ax, metric in zip(axes, ("test_error", "train_error")):
            ax.plot(mine["lr"], 100 * mine[metric], "o-", color=color, label=activation)
            _mark_diverged(ax, diverged.loc[diverged["activation"] == activation, "lr"], color)
            star = best[best["activation"] == activation]
            if len(star):
                point = mine[mine["lr"] == star["lr"].iloc[0]]
                ax.plot(point["lr"], 100 * point[metric], "*", color=color, markersize=18,
                        markeredgecolor="black")
    for ax, title in zip(axes, ("Final test error", "Final train error")):
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (log scale)")
        _percent_axis(ax, f"{title.lower()} (%, log scale)")
        ax.set_title(f"{title} vs learning rate")
    handles, _ = axes[0].get_legend_handles_labels()
    handles.append(Line2D([], [], marker="*", color="grey", markeredgecolor="black", markersize=14,
                          linestyle="none", label="best lr of the activation"))
    if len(diverged):
        handles.append(_diverged_handle())
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def figure_numeric(view: GridView):
    fig, ax = plt.subplots(figsize=(7, 4.8))
    means = mean_over_seeds(view.runs, [view.x])
    for metric, color, label in (("test_error", COLORS[0], "test"), ("train_error", COLORS[1], "train")):
        ax.plot(means[view.x], 100 * means[metric], "o-", color=color, label=f"{label} error")
    _mark_diverged(ax, view.runs.loc[view.runs["outcome"] == "diverged", view.x], "black")
    if view.x in LOG_AXIS:
        ax.set_xscale("log")
    ax.set_xticks(sorted(view.runs[view.x].unique()))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    unit = {"depth": "hidden layers", "width": "units per hidden layer", "lr": "learning rate"}.get(view.x, view.x)
    ax.set_xlabel(f"{view.x} ({unit}{', log scale' if view.x in LOG_AXIS else ''})")
    _percent_axis(ax, "final error (%, log scale)")
    ax.set_title(f"Final error vs {view.x} (grid '{view.name}')")
    handles, _ = ax.get_legend_handles_labels()
    if (view.runs["outcome"] == "diverged").any():
        handles.append(_diverged_handle())
    ax.legend(handles=handles, loc="best")
    fig.tight_layout()
    return fig


def figure_curves(curves: dict, title: str, lrs: dict | None = None):
    """Per-epoch test error of each labelled run (and its lr per epoch, when given)."""
    fig, axes = plt.subplots(1, 2 if lrs else 1, figsize=(12 if lrs else 7, 4.8), squeeze=False)
    ax = axes[0][0]
    for i, (label, points) in enumerate(curves.items()):
        if points:
            steps, values = zip(*points)
            ax.plot(steps, [100 * v for v in values], "o-", color=COLORS[i % len(COLORS)], label=label, markersize=4)
    ax.set_xlabel("epoch")
    _percent_axis(ax, "test error (%, log scale)")
    ax.set_title(title)
    ax.legend(loc="upper right")
    if lrs:
        ax2 = axes[0][1]
        for i, (label, points) in enumerate(lrs.items()):
            if points:
                steps, values = zip(*points)
                ax2.plot(steps, values, "o-", color=COLORS[i % len(COLORS)], label=label, markersize=4)
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("learning rate")
        ax2.set_title("Learning rate per epoch")
        ax2.grid(True, alpha=0.3)
        ax2.legend(loc="lower left")
    fig.tight_layout()
    return fig


def _history(uri, run_id, metric):
    return tracking.metric_history(uri, run_id, metric) if isinstance(run_id, str) else []


def _shown(frame: pd.DataFrame, columns: list) -> pd.DataFrame:
    return as_percent(frame[columns])


def build_blocks(analysis: Analysis, uri: str, out: Path) -> list[Block]:
    blocks = [Block("h1", f"Sweep report: {analysis.spec.experiment} ({analysis.spec.path})")]
    counts = analysis.runs["outcome"].value_counts()
    blocks.append(Block("p", f"{len(analysis.runs)} planned runs: {counts.get('done', 0)} finished, "
                             f"{counts.get('diverged', 0)} diverged, {counts.get('missing', 0)} missing. "
                             f"Errors are final-epoch fractions of misclassified images, shown in percent."))

    def save(fig, name, caption):
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        blocks.append(Block("figure", (path, caption)))

    lr_view = None
    for view in analysis.grids:
        blocks.append(Block("h2", f"Grid '{view.name}': varies {', '.join(view.varied) or 'nothing'}"))
        blocks.extend(Block("p", line) for line in conclusions(view))
        if view.kind == "lr_by_activation":
            lr_view = view
            best = best_lr_table(view)
            save(figure_lr_by_activation(view, best), f"{view.name}_error_vs_lr",
                 "Final test and train error against learning rate, one line per activation; "
                 "a star marks each activation's best learning rate.")
            blocks.append(Block("table", _shown(best, ["activation", "lr", "test_error", "train_error", "seeds"])))
        elif view.kind == "numeric":
            save(figure_numeric(view), f"{view.name}_error_vs_{view.x}", f"Final error against {view.x}.")
        elif view.kind == "schedule":
            done = view.runs[view.runs["outcome"] != "missing"].drop_duplicates("schedule")
            curves = {r.schedule: _history(uri, r.run_id, "test_error") for r in done.itertuples()}
            lrs = {r.schedule: _history(uri, r.run_id, "lr") for r in done.itertuples()}
            save(figure_curves(curves, "Test error per epoch, by schedule", lrs), f"{view.name}_curves",
                 "Per-epoch test error and learning rate of each schedule.")
        if view.kind != "lr_by_activation":
            columns = ["name", *view.varied, "outcome", "test_error", "train_error"]
            ordered = view.runs.sort_values(view.x) if view.kind == "numeric" else view.runs
            blocks.append(Block("table", _shown(ordered, list(dict.fromkeys(columns)))))

    pool = lr_view.runs if lr_view is not None else analysis.runs
    ok = pool[pool["outcome"] == "done"]
    if len(ok) and ok["activation"].nunique() > 1:
        winners = ok.loc[ok.groupby("activation")["test_error"].idxmin()]
        curves = {f"{r.activation} (lr {r.lr:g})": _history(uri, r.run_id, "test_error") for r in winners.itertuples()}
        blocks.append(Block("h2", "Best run of each activation"))
        save(figure_curves(curves, "Test error per epoch, best run of each activation"), "best_per_activation_curves",
             "Per-epoch test error of the best run of each activation.")

    missing = analysis.missing
    blocks.append(Block("h2", "Missing runs"))
    if len(missing):
        blocks.append(Block("p", f"{len(missing)} runs have no finished result (state in the queue shown):"))
        blocks.append(Block("table", missing[["name", "grids", "state"]]))
    else:
        blocks.append(Block("p", "None: every planned run has finished."))
    return blocks


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


def render_pdf(blocks: list[Block], path: Path) -> None:
    """Text pages (headings, conclusions, tables) followed by every figure, one per page."""
    lines: list[tuple[str, str]] = []
    for b in blocks:
        if b.kind in ("h1", "h2"):
            lines += [("", ""), (b.kind, str(b.content))]
        elif b.kind == "p":
            lines += [("p", l) for l in textwrap.wrap(str(b.content), 100)]
        elif b.kind == "table":
            lines += [("mono", l) for l in b.content.to_string(index=False).splitlines()]
    per_page = 60
    with PdfPages(path) as pdf:
        for start in range(0, len(lines), per_page):
            fig = plt.figure(figsize=(8.27, 11.69))
            y = 0.96
            for kind, text in lines[start:start + per_page]:
                style = {"h1": dict(size=13, weight="bold"), "h2": dict(size=11, weight="bold"),
                         "mono": dict(size=6.5, family="monospace")}.get(kind, dict(size=8))
                fig.text(0.06, y, text, va="top", **style)
                y -= 0.0155
            pdf.savefig(fig)
            plt.close(fig)
        for b in blocks:
            if b.kind == "figure":
                path_png, caption = b.content
                image = plt.imread(path_png)
                fig = plt.figure(figsize=(11.69, 8.27))
                ax = fig.add_axes((0.02, 0.08, 0.96, 0.88))
                ax.imshow(image)
                ax.axis("off")
                fig.text(0.5, 0.03, caption, ha="center", size=10, style="italic")
                pdf.savefig(fig)
                plt.close(fig)


def write_report(spec: SweepSpec, uri: str, out_dir: str | Path) -> tuple[Path, list[Path], bool]:
    """Build the report into `out_dir`; return the folder, the files and whether it was logged to MLflow."""
    experiment_id = tracking.find_experiment(uri, spec.experiment)
    if experiment_id is None:
        raise tracking.TrackingError(f"no experiment '{spec.experiment}' in tracking store {uri}; "
                                     f"run `sweep run` first")
    planned_keys = [r.key for r in expand(spec)]
    states = queue.QueueView(uri, experiment_id).refresh().states(planned_keys)
    finished = finished_runs(tidy_runs(tracking.runs_frame(uri, experiment_id)), planned_keys)
    analysis = analyse(spec, finished, states)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    blocks = build_blocks(analysis, uri, out)
    (out / "report.md").write_text(render_markdown(blocks, out))
    (out / "report.html").write_text(render_html(blocks))
    render_pdf(blocks, out / "report.pdf")
    files = sorted(out.iterdir())
    parent = queue.find_parent(uri, experiment_id, spec.name)
    if parent:
        tracking.log_artifacts(uri, parent, out, "report")
    return out, files, bool(parent)
