"""`sweep report`: figures, report.md, a self-contained report.html and report.pdf from a sweep's
results. The figures and the blocks are built without I/O; `write_report` writes the files, into a
temporary folder first, so a failed report leaves nothing behind."""
from __future__ import annotations

import base64
import html
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .. import stats
from .analysis import (
    LOG_AXIS,
    Analysis,
    GridView,
    SearchView,
    best_per,
    best_so_far_table,
    curve_runs,
    setup,
    shown_metrics,
)
from .answers import execution_words, question_answers, setup_table, setup_words
from .best import SETTINGS, best_by, summary_of
from .figures import (
    COLORS,
    figure_best_so_far,
    figure_curves,
    figure_error_vs_sampled,
    figure_error_vs_setting,
    figure_importance,
    figure_lr_by_setting,
    figure_stopping,
)
from .pdf import render_pdf
from .words import (
    NAMES,
    adaptive_words,
    as_percent,
    conclusions,
    format_interval,
    format_p,
    objective_name,
    schedule_note,
    search_conclusions,
    stopping_conclusions,
)


@dataclass
class Block:
    kind: str        # h1, h2, p, answer, table, figure
    content: object  # str, (question, answer), DataFrame, or (Path, caption)


def _interval_table(table: pd.DataFrame, settings: list, metric: str) -> pd.DataFrame:
    """A best_by table for people: settings, the ranking error with its interval, n, test and
    train error."""
    out = table[[*settings, metric]].copy()
    out["95% CI"] = [format_interval(summary_of(r, metric)) for _, r in table.iterrows()]
    out["n"] = table["n"]
    for other in ("test_error", "train_error"):
        if other != metric:
            out[other] = table[other]
    return as_percent(out)


def _rival_columns(out: pd.DataFrame, table: pd.DataFrame, heading: str) -> pd.DataFrame:
    """Each winner's closest rival, Welch's p against it after Holm's correction, and P(ahead)."""
    out[heading] = table["closest_rival"].fillna("").str.replace("lr=", "")
    out["p (Holm)"] = [("" if not r else "no test (n = 1)") if pd.isna(p) else
                       format_p(p).removeprefix("p = ").removeprefix("p ")
                       for p, r in zip(table["p_holm"], table["closest_rival"].fillna(""))]
    out["P(ahead)"] = ["" if pd.isna(p) else f"{p:.2f} ({low:.2f}-{high:.2f})"
                       for p, low, high in zip(table["p_ahead"], table["p_ahead_ci_low"], table["p_ahead_ci_high"])]
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
                      "failed", *(("spared",) if counts.get("spared") else ()), "missing")
    what = (f"{len(results.runs)} planned runs" if not trials else
            f"{len(results.runs)} runs ({len(results.runs) - trials} planned in grids, {trials} trials of searches)")
    blocks.append(Block("p", f"{what}: " + ", ".join(f"{counts.get(k, 0)} {k}" for k in shown_outcomes) + "."))
    trained = setup(results.runs, analysis.grids, results.execution)
    blocks.append(Block("h2", "Setup"))
    blocks.append(Block("p", setup_words(trained)))
    if analysis.grids:
        blocks.append(Block("p", "What each grid asks (the settings it varies) and the networks it trains:"))
        blocks.append(Block("table", setup_table(trained)))
    blocks.append(Block("p", execution_words(trained.execution)))
    blocks.append(Block("h2", "How to read the numbers"))
    blocks.append(Block("p", f"Errors are final-epoch fractions of misclassified images, shown in percent. "
                             f"Each setting is run with up to {seeds} seed(s); points are means over its "
                             f"finished seeds, bars their 95% confidence interval (Student t), and no bar "
                             f"where a setting has one seed. Two settings are called distinguishable when "
                             f"Welch's t-test gives p < {stats.ALPHA}; where a question compares its leader "
                             f"with more than one rival, each p is corrected over those comparisons by "
                             f"Holm's step-down method, and the question is decided when its leader is told "
                             f"apart from every rival (wrong, in simulation, at most {stats.ALPHA:.0%} of the "
                             f"time). P(A ahead of B) is the probability that a seed "
                             f"of A has the lower error than a seed of B (ties half), with a 95% interval "
                             f"from a stratified bootstrap (each setting's seeds resampled on their own)."))
    if results.spec is not None and results.spec.adaptive:
        blocks.append(Block("p", adaptive_words(results.spec.adaptive)
                            + f" {counts.get('spared', 0)} runs were spared: their questions were settled "
                              f"without them."))
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
    if len(left):  # none: the opening's counts say so
        blocks.append(Block("h2", "Missing runs"))
        blocks.append(Block("p", f"{_runs(len(left))} no finished result (state in the queue shown):"))
        blocks.append(Block("table", left[["name", "grids", "state"]]))
    stopped = analysis.outcome("stopped")
    if len(stopped):
        blocks.append(Block("h2", "Runs stopped early"))
        blocks.append(Block("p", f"{_runs(len(stopped), 'was', 'were')} stopped early and left out of every mean "
                                 f"and test:"))
        blocks.append(Block("table", stopped[["name", "grids", "epochs_completed", "epochs"]].astype(
            {"epochs_completed": "Int64"})))
    blocks.append(Block("h2", "Conclusions: the homework's questions"))
    blocks.append(Block("p", f"Each question is answered by the grids that sweep it, on {NAMES.get(metric, metric)} "
                             f"(the mean over each setting's seeds); decided means its best value is told apart "
                             f"from every rival after Holm's correction."))
    blocks.extend(Block("answer", qa) for qa in question_answers(analysis.grids, metric, analysis.searches))
    return blocks, figures


def _grid_figures(view: GridView, metric: str, results, figure, blocks: list) -> None:
    bars = " Bars: 95% intervals over seeds (none where n = 1)."
    if view.kind == "lr_by_setting":
        figure(figure_lr_by_setting(view, metric, [metric]), f"{view.name}_error_vs_lr",
               f"Final {NAMES.get(metric, metric)} (ranks the settings) against learning rate, one line per "
               f"{view.by}; a star marks each {view.by}'s best learning rate." + bars)
        best = best_per(view, metric).table.sort_values(metric, kind="stable")
        blocks.append(Block("p", f"Each {view.by} at its best learning rate; closest lr: the other learning "
                                 f"rate it is least told apart from; p: Welch's t-test against it, Holm-corrected "
                                 f"over the {view.by}'s other learning rates; P(ahead): the probability that a "
                                 f"seed of the best lr beats a seed of the closest, with its 95% bootstrap "
                                 f"interval."))
        shown = _rival_columns(_interval_table(best, [view.by, "lr"], metric), best, "closest lr")
        blocks.append(Block("table", shown))  # before the next figure: a table may end a page a figure cannot
        others = [m for m in shown_metrics(metric) if m != metric]
        figure(figure_lr_by_setting(view, metric, others), f"{view.name}_{'_'.join(others)}_vs_lr",
               f"Final {' and '.join(NAMES.get(m, m) for m in others)} against learning rate (stars: the best "
               f"learning rates by {NAMES.get(metric, metric)})." + bars)
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
        table = best_by(view.runs, view.varied, metric, seeds=view.seeds).table.sort_values(metric)
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
    return (f"Per-epoch {objective_name(stopping)} of every finished run of the {stopping.kind}; an x marks "
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
        elif b.kind == "answer":
            parts.append(f"**{b.content[0]}.** {b.content[1]}")
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
        elif b.kind == "answer":
            body.append(f"<p><b>{html.escape(b.content[0])}.</b> {html.escape(b.content[1])}</p>")
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
