"""What the numbers say, in sentences a person reads: every p-value, interval and conclusion of
`sweep best` and the report is worded here, each with its n and p, never a bare "wins by".

Pure: results' numbers in (stats, best, analysis), strings and tables for people out.
"""
from __future__ import annotations

import math
from typing import Optional

import pandas as pd

from mnist_core.config import SETTING_NAMES, SETTING_TYPES

from .. import stats
from ..spec.space import describe_early_stop
from .analysis import (
    UNSTABLE_EPOCHS,
    GridView,
    SearchView,
    Stopping,
    best_per,
    best_so_far_table,
    best_trial,
    points,
    seed_values,
    ties,
)
from .best import COMPARISON_COLUMNS, ERROR_COLUMNS, Best, best_by, label, summary_of

NAMES = {"test_error": "test error", "train_error": "train error", "val_error": "validation error",
         "best_test_error": "best test error", "best_val_error": "best validation error",
         "final_val_error": "validation error"}


# --- a comparison ---------------------------------------------------------------------------------

def format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"


def format_n(a: int, b: int) -> str:
    return f"n = {a}" if a == b else f"n = {a} and {b}"


def in_points(fraction: float) -> str:
    """An error difference (fractions) in percentage points."""
    return f"{100 * fraction:.2f} points"


def describe(c: stats.Comparison) -> str:
    """One sentence on a comparison of error rates (fractions), never without its test.

    "relu and leaky_relu are not distinguishable at n = 3 (p = 0.40); a seed of relu beats one of
     leaky_relu with probability 0.56 (95% CI 0.11 to 1.00)"
    "relu is ahead of leaky_relu by 0.09 points (p = 0.01, n = 3 and 3); ..."
    "n = 1 per setting: no interval can be given"
    With several rivals the p after Holm's correction follows the p: "(p = 0.02, 0.06 after Holm
    over 3 tests)".
    """
    na, nb = c.ahead_summary.n, c.behind_summary.n
    if na == 1 and nb == 1:
        return "n = 1 per setting: no interval can be given"
    if c.distinguishable is None:
        single = c.ahead if na < 2 else c.behind
        return (f"{c.ahead} is {in_points(c.gap)} below {c.behind}, but {single} has n = 1: "
                f"no test can be made ({format_n(na, nb)})")
    p = format_p(c.p) + (f", {p_phrase(c.holm_p)} after Holm over {c.family} tests" if c.family > 1 else "")
    beats = (f"; a seed of {c.ahead} beats one of {c.behind} with probability {c.prob:.2f} "
             f"(95% CI {c.prob_low:.2f} to {c.prob_high:.2f})")
    if c.distinguishable:
        return f"{c.ahead} is ahead of {c.behind} by {in_points(c.gap)} ({p}, n = {na} and {nb})" + beats
    return f"{c.ahead} and {c.behind} are not distinguishable at {format_n(na, nb)} ({p})" + beats + _needed(c)


def p_phrase(p: float) -> str:
    """A p-value without its "p = ": "0.06", "< 0.001"."""
    return format_p(p).removeprefix("p = ").removeprefix("p ")


def _needed(c: stats.Comparison) -> str:
    """How many seeds a power estimate says would tell an undecided pair apart."""
    if math.isnan(c.seeds_needed):  # decided, or too few seeds to estimate
        return ""
    if math.isinf(c.seeds_needed):
        return f"; at the gap and spread seen, not even {stats.MAX_SEEDS} seeds each would tell them apart"
    return (f"; at the gap and spread seen, about {c.seeds_needed:.0f} seeds each would tell them apart "
            f"({100 * stats.POWER:.0f}% power)")


def format_interval(s: stats.Summary, scale: float = 100, unit: str = "%") -> str:
    """"2.31 to 2.67%" for a summary of fractions, or "none (n = 1)"."""
    if s.n < 2:
        return f"none (n = {s.n})"
    return f"{scale * s.ci_low:.2f} to {scale * s.ci_high:.2f}{unit}"


# --- sweep best ----------------------------------------------------------------------------------------

def best_words(best: Best) -> list[str]:
    """What a person should read under the table: which metric ranked, how sure each answer is,
    and what was left out."""
    lines = list(best.notes)
    ranked = (f"Ranked by {best.metric}, the mean over each setting's seeds (validation error: the test "
              f"error shown was not used to choose)." if best.metric.startswith(("val_", "final_val", "best_val"))
              else f"Ranked by {best.metric}, the mean over each setting's seeds.")
    lines.append(ranked + " run_id is the setting's best seed."
                 + (" std (points): the standard deviation over seeds, in percentage points." if
                    best.metric in ERROR_COLUMNS else ""))
    if best.seeds:
        lines.append(adaptive_words(best.seeds))
    if len(best.table) and (best.table["n"] == 1).all():
        lines.append("n = 1 per setting: no interval can be given and no test made "
                     "(give the sweep file several seeds, e.g. seeds: [1, 2, 3]).")
    else:
        for group, comparison in best.within.items():
            verdict = f"{_decided(comparison)}: {describe(comparison)}."
            lines.append(f"{group}: {verdict}" if group else verdict[0].upper() + verdict[1:])
        if best.across is not None:
            lines.append(f"Across {', '.join(best.by)}: {_decided(best.across)}: {describe(best.across)}.")
    if best.stopped:
        lines.append(f"{best.stopped} run(s) stopped early (pruned) "
                     + ("are included (--include-stopped)." if best.include_stopped
                        else "were left out; --include-stopped ranks them too."))
    return lines


def adaptive_words(seeds) -> str:
    """What adaptive seeds did and at which level they test."""
    from ..adaptive.seeds import alpha_at, looks

    return (f"Adaptive seeds (min {seeds.min}, max {seeds.max}): seeds went where a question was still open; "
            f"looking after every round, each look tests at alpha {alpha_at(seeds, seeds.min):.2g} and the last "
            f"(n = {seeds.max}) at {alpha_at(seeds, seeds.max):.2g}, a weighted Bonferroni over {looks(seeds)} looks "
            f"that keeps a false decision at {stats.ALPHA:.0%}.")


def _decided(c: stats.Comparison) -> str:
    """Whether the question a comparison answers is settled: its leader told apart from every rival."""
    n = min(c.ahead_summary.n, c.behind_summary.n)
    return {True: f"decided at n = {n}", False: f"not decided at n = {n}", None: "no test"}[c.distinguishable]


def as_percent(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with the error columns written as percentages, for people to read."""
    out = frame.copy()
    for col in out.columns:
        if col.startswith(ERROR_COLUMNS) and not col.endswith("_std"):
            out[col] = out[col].map(lambda v: "" if pd.isna(v) else f"{100 * v:.2f}%")
    return out


def for_people(best: Best) -> pd.DataFrame:
    """The table as `sweep best` prints it: percentages, the interval in one column, no script columns."""
    m = best.metric
    out = best.table.copy()
    summaries = [summary_of(r, m) for _, r in out.iterrows()]
    out.insert(out.columns.get_loc(f"{m}_std"), "95% CI",
               [format_interval(s) if m in ERROR_COLUMNS else
                ("" if s.n < 2 else f"{s.ci_low:.4g} to {s.ci_high:.4g}") for s in summaries])
    out[f"{m}_std"] = [("" if s.n < 2 else f"{100 * s.std:.2f}" if m in ERROR_COLUMNS else f"{s.std:.3g}")
                       for s in summaries]
    out = out.rename(columns={f"{m}_std": "std (points)" if m in ERROR_COLUMNS else "std"})
    out = out.drop(columns=[f"{m}_ci_low", f"{m}_ci_high", "ranked_by", *COMPARISON_COLUMNS])
    for setting in SETTING_NAMES:  # a number the way the sentences write it: 0.1, not 0.10 beside 0.03
        if setting in out and SETTING_TYPES[setting] == "float":
            out[setting] = out[setting].map(lambda v: f"{v:g}")
    return as_percent(out)


# --- the report ----------------------------------------------------------------------------------------

def search_conclusions(view: SearchView) -> list[str]:
    """Sentences about one search, every number from its runs."""
    name, runs = NAMES.get(view.metric, view.metric), view.runs
    outcomes = runs["outcome"].value_counts()
    finished = int(outcomes.reindex(["done", "stopped", "duplicate", "diverged"]).fillna(0).sum())
    of = f" of {view.budget}" if view.budget is not None else ""
    parts = [f"{outcomes.get('stopped', 0)} stopped early", plural(outcomes.get("duplicate", 0), "duplicate")]
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
        tied = ties(view, top)
        also = f"; test error {pct(top['test_error'])}" if view.metric != "test_error" else ""
        if top["n"] > 1:
            lines.append(f"Best setting: {values}, {name} {pct(top[view.metric])} over its {int(top['n'])} seeds "
                         f"({_spread(summary_of(top, view.metric))}){also}; its best seed is trial {top['trial']} "
                         f"({pct(view.runs.loc[view.runs['run_id'] == top['run_id'], view.metric].iloc[0])}).")
        else:
            lines.append(f"Best trial: {top['trial']} ({values}): {name} {pct(top[view.metric])} (n = 1){also}"
                         + (f"; {plural(tied, 'other setting')} tied with it." if tied else "."))
        table = best_so_far_table(view)
        steps = table[table["best"].notna() & (table["best"] != table["best"].shift())]
        after = int((table["outcome"].isin(("done", "stopped", "duplicate", "diverged"))
                     & (table["trial"] > steps["trial"].iloc[-1])).sum())
        lines.append(f"Best {name} so far, by trial number: " + ", ".join(
            f"{pct(r['best'])} from trial {r['trial']}" for _, r in steps.iterrows())
            + f" (none better in the {plural(after, 'finished trial')} after it).")
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


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def stopping_conclusions(stopping: Stopping) -> list[str]:
    """How many runs were stopped at which epochs, and the network-epochs that saved."""
    rule = (describe_early_stop(stopping.rule).replace("early stop: ", "") if stopping.rule
            else "not in the sweep file, but runs were stopped")
    runs, stopped = stopping.runs, stopping.stopped
    if runs.empty:
        return [f"Early stopping: {rule}. No run has finished yet."]
    if stopped.empty:
        return [f"Early stopping: {rule}. None of the {len(runs)} finished runs{aside(stopping)} was stopped; all "
                f"{stopping.planned_epochs} network-epochs were trained."]
    at = "; ".join(f"{n} after epoch {epoch}" for epoch, n in stopping.stop_epochs.items())
    saved, planned = stopping.saved_epochs, stopping.planned_epochs
    was = "was" if len(stopped) == 1 else "were"
    return [f"Early stopping: {rule}. {len(stopped)} of {len(runs)} finished runs{aside(stopping)} {was} stopped "
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


def pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def _spread(summary: stats.Summary) -> str:
    """"95% CI 2.31 to 2.67%, n = 3" or "n = 1"."""
    if summary.n < 2:
        return f"n = {summary.n}"
    return f"95% CI {format_interval(summary)}, n = {summary.n}"


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
        lines.append(f"Lowest {name}: {label(top, [view.by])} at lr {top['lr']:g}, {pct(top[metric])} "
                     f"({_spread(summary_of(top, metric))}).")
        if best.across is not None:
            rival = table[[label(r, [view.by]) == best.across.behind for _, r in table.iterrows()]].iloc[0]
            lines.append(f"Against the closest rival, {label(rival, [view.by])} at its best lr {rival['lr']:g} "
                         f"({pct(rival[metric])}), {_decided(best.across)}: {describe(best.across)}.")
        lines.append(f"Best learning rate per {view.by}: " + "; ".join(
            f"{label(r, [view.by])} at lr {r['lr']:g}: {pct(r[metric])} (n = {r['n']})" for _, r in table.iterrows())
            + ".")
        lines += _lr_decisions(best, view.by)
        if len(table) >= 3:
            worst = table.iloc[-1]
            values = {label(r, [view.by]): seed_values(view, r, metric) for _, r in table.iloc[[0, -1]].iterrows()}
            (a, va), (b, vb) = values.items()
            lines.append(f"Worst at its best lr: {label(worst, [view.by])} ({pct(worst[metric])}); "
                         f"{describe(stats.compare(a, va, b, vb))}.")
    elif view.kind in ("numeric", "schedule"):
        best = best_per(view, metric)
        table = best.table.sort_values(metric, kind="stable").reset_index(drop=True)
        top, worst = table.iloc[0], table.iloc[-1]
        spread = _spread(summary_of(top, metric))
        lines.append(f"Lowest {name} at {label(top, [view.x])}: {pct(top[metric])} ({spread})"
                     + (f"; highest at {label(worst, [view.x])}: {pct(worst[metric])} (n = {worst['n']}), "
                        f"{100 * (worst[metric] - top[metric]):.2f} points apart." if len(table) > 1 else "."))
        if best.across is not None:
            lines.append(f"Against the closest rival, {_decided(best.across)}: {describe(best.across)}.")
        ordered = table.sort_values(view.x).reset_index(drop=True)
        if view.kind == "numeric" and len(ordered) >= 3:
            steps = ordered[metric].diff().dropna()
            trend = ("falls steadily" if (steps < 0).all() else "rises steadily" if (steps > 0).all()
                     else "is not monotonic")
            first, last = ordered.iloc[0], ordered.iloc[-1]
            ends = stats.compare(label(first, [view.x]), seed_values(view, first, metric),
                                 label(last, [view.x]), seed_values(view, last, metric))
            lines.append(f"Mean {name} {trend} as {view.x} grows from {first[view.x]:g} to {last[view.x]:g}; "
                         f"between the two ends, {describe(ends)}.")
        gaps = points(view.runs, [view.x], ["test_error", "train_error"])
        gap = gaps["test_error"] - gaps["train_error"]
        if gap.notna().any():
            widest = gaps.loc[gap.idxmax()]
            lines.append(f"Largest gap between test and train error: {100 * gap.max():.2f} points at "
                         f"{label(widest, [view.x])} (means over n = {int(widest['n'])}).")
    else:
        best = best_by(view.runs, [], metric, seeds=view.seeds)
        if len(best.table):
            top = best.table.iloc[0]
            lines.append(f"Lowest {name}: {label(top, view.varied)}, {pct(top[metric])} "
                         f"({_spread(summary_of(top, metric))}).")
            if top["closest_rival"]:
                lines.append(f"Against the closest rival ({top['closest_rival']}): {describe(best.within[''])}.")
    lines += _leftovers(view)
    return lines


def _lr_decisions(best: Best, by: str) -> list:
    """Which values of `by` have their best learning rate told apart from every other, and how
    many seeds the open ones would need."""
    decided = [group for group, c in best.within.items() if c.distinguishable]
    open_ = {group: c for group, c in best.within.items() if c.distinguishable is False}
    if not decided and not open_:
        return []
    line = (f"Best learning rate decided (told apart from every other lr, Holm-corrected) for "
            f"{len(decided)} of {len(best.within)} values of {by}" + (f": {', '.join(decided)}" if decided else ""))
    if open_:
        line += "; open: " + "; ".join(
            f"{group} (lr {c.ahead.removeprefix('lr ')} against {c.behind}"
            + (f", about {c.seeds_needed:.0f} seeds each would decide it" if math.isfinite(c.seeds_needed) else "")
            + ")" for group, c in open_.items())
    return [line + "."]


UNSTABLE_SHOWN = 6  # unstable runs named in a grid's conclusions; the rest are counted


def unstable_conclusions(view: GridView) -> list:
    """The grid's runs whose final-epoch number may be luck (analysis.unstable_runs), named with their
    last epochs' errors."""
    lines = []
    if len(view.unstable):
        shown = "; ".join(f"{r.name} ({', '.join(pct(v) for v in r.last)})"
                          for r in view.unstable.head(UNSTABLE_SHOWN).itertuples())
        more = len(view.unstable) - UNSTABLE_SHOWN
        lines.append(f"Unstable at the end, {plural(len(view.unstable), 'run')} (the ranked error rose, within "
                     f"a run's last {UNSTABLE_EPOCHS} epochs, by more than where the run ended, so its "
                     f"final-epoch number may be luck; the error after each of those epochs): {shown}"
                     + (f"; and {more} more." if more > 0 else "."))
    return lines


def _leftovers(view: GridView) -> list:
    lines = unstable_conclusions(view)
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


def aside(stopping: Stopping) -> str:
    """" (2 duplicates, not trained, aside)" where a search's duplicates are left out of its stopping."""
    return f" ({plural(stopping.duplicates, 'duplicate')}, not trained, aside)" if stopping.duplicates else ""


def objective_name(stopping: Stopping) -> str:
    """What the early-stopping figure draws, in words."""
    with_val = stopping.runs["val_error"].notna()
    return ("validation error" if len(with_val) and with_val.all() else "test error" if not with_val.any()
            else "objective (validation error where held out, else test error)")
