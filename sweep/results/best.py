"""The best setting per group, ranked by its mean over seeds, and how sure that ranking is (the
sentences and the table people read are words.py's).

Pure pandas over `SweepResults.runs`. A setting is every setting but the seed; its runs differ
only in seed. Its representative run (run_id, agent_uri) is its best seed's run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd

from mnist_core.config import MEASURED_ONLY, SETTING_NAMES, SETTING_TYPES

from .. import stats
from ..spec import AdaptiveSeeds
from .fetch import FINAL_METRICS

SETTINGS = [s for s in SETTING_NAMES if s != "seed" and s not in MEASURED_ONLY]
RANKABLE = tuple(m for m in FINAL_METRICS if m != "epochs_completed")
ERROR_COLUMNS = ("test_error", "train_error", "best_test_error", "val_error", "final_val_error", "best_val_error")


@dataclass(frozen=True)
class Best:
    table: pd.DataFrame      # one row per group of `by`, sorted by the group's settings
    by: tuple
    metric: str              # the metric that ranked
    stopped: int             # runs stopped early among the candidates
    include_stopped: bool
    within: dict = field(default_factory=dict)   # group label -> the winner against its closest rival
    across: Optional[stats.Comparison] = None    # the best group's winner against the closest other group's
    notes: tuple = ()        # why the metric was chosen, when that needs saying
    seeds: Optional[AdaptiveSeeds] = None        # adaptive seeds: each look's test is at its own alpha


def varied(runs: pd.DataFrame) -> list[str]:
    """The settings (seed aside) that take more than one value in `runs`."""
    return [s for s in SETTINGS if runs[s].nunique(dropna=True) > 1]


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def label(row, settings) -> str:
    """A setting as people read it: 'relu', 'lr 0.1', 'relu, depth 2'."""
    return ", ".join(str(row[s]) if SETTING_TYPES[s] == "str" else f"{s} {_fmt(row[s])}" for s in settings)


def resolve_metric(candidates: pd.DataFrame, metric: str) -> tuple[str, tuple]:
    """`auto`: val_error when every candidate run has one, else test_error (with a note why)."""
    if metric != "auto":
        if metric not in RANKABLE:
            raise ValueError(f"unknown metric {metric!r}; metrics: auto, {', '.join(RANKABLE)}")
        return metric, ()
    with_val = int(candidates["val_error"].notna().sum())
    if len(candidates) and with_val == len(candidates):
        return "val_error", ()
    if with_val:
        return "test_error", (f"{len(candidates) - with_val} of {len(candidates)} runs have no val_error: "
                              f"ranked by test_error",)
    return "test_error", ()


def setting_table(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per setting (in the order of their first run): the summary of `metric` over its
    seeds, the mean test and train error, the values themselves (`values`) and its best seed's
    run. Every run must have a value of `metric`.

    Vectorised over the settings (a sweep has tens of thousands): the runs of a setting are
    reduced as one row of a (settings x runs) block, which numpy sums exactly as it sums the
    setting's runs alone, so the numbers are those of stats.summarize and pandas' mean."""
    codes = runs.groupby(SETTINGS, dropna=False, sort=False).ngroup().to_numpy()
    order = np.argsort(codes, kind="stable")            # each setting's runs together, in their order
    counts = np.bincount(codes)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    metric_values = runs[metric].to_numpy(dtype=float)[order]
    test, train = (np.where(np.isnan(v), 0.0, v) for v in
                   (runs[c].to_numpy(dtype=float)[order] for c in ("test_error", "train_error")))
    present = {c: ~runs[c].isna().to_numpy()[order] for c in ("test_error", "train_error")}
    size = len(counts)
    mean, std, low, high = (np.full(size, np.nan) for _ in range(4))
    test_mean, train_mean = np.full(size, np.nan), np.full(size, np.nan)
    best = np.zeros(size, dtype=int)
    values = [None] * size
    for n in np.unique(counts):
        which = np.flatnonzero(counts == n)
        rows = starts[which, None] + np.arange(n)     # (settings of n runs) x n, C-contiguous
        block = metric_values[rows]
        mean[which] = block.mean(axis=1)
        best[which] = rows[np.arange(len(which)), block.argmin(axis=1)]  # the first lowest, as idxmin
        if n > 1:
            std[which] = block.std(axis=1, ddof=1)
            half = stats.half_width(std[which], n)
            low[which], high[which] = mean[which] - half, mean[which] + half
        with np.errstate(invalid="ignore", divide="ignore"):
            test_mean[which] = test[rows].sum(axis=1) / present["test_error"][rows].sum(axis=1)
            train_mean[which] = train[rows].sum(axis=1) / present["train_error"][rows].sum(axis=1)
        for i, row in zip(which, block.tolist()):
            values[i] = row
    chosen = order[best]                                  # positions in `runs` of each best seed
    table = {s: runs[s].to_numpy()[chosen] for s in SETTINGS}
    table.update({metric: mean, f"{metric}_std": std, f"{metric}_ci_low": low, f"{metric}_ci_high": high,
                  "n": counts, "test_error": test_mean, "train_error": train_mean, "values": values,
                  "summary": [stats.Summary(int(k), float(m), float(d), float(lo), float(hi))
                              for k, m, d, lo, hi in zip(counts, mean, std, low, high)],
                  "run_id": runs["run_id"].to_numpy()[chosen], "agent_uri": runs["agent_uri"].to_numpy()[chosen]})
    return pd.DataFrame(table)


def candidates(runs: pd.DataFrame, include_stopped: bool = False) -> pd.DataFrame:
    """Runs that can be ranked: finished without diverging (and, on request, stopped early)."""
    return runs[runs["outcome"].isin(("done", "stopped") if include_stopped else ("done",))]


def best_by(runs: pd.DataFrame, by: list, metric: str = "auto", include_stopped: bool = False,
            seeds: Optional[AdaptiveSeeds] = None) -> Best:
    """Per group of `by`, the setting with the lowest mean `metric` over its seeds, its interval,
    and Welch's test against each other setting of the group, Holm-corrected over them; the
    closest rival (the largest corrected p) is the one the table names. With adaptive `seeds`,
    a test at n seeds is at that look's alpha (adaptive.seeds.alpha_at), as the rule made it."""
    by = list(by)
    unknown = [b for b in by if b not in SETTING_NAMES]
    if unknown:
        raise ValueError(f"cannot group by {unknown[0]!r}: not a setting; settings: {', '.join(SETTING_NAMES)}")
    if "seed" in by:
        raise ValueError("cannot group by 'seed': the seeds of a setting are what its mean and interval are over")
    pool = candidates(runs, include_stopped)
    metric, notes = resolve_metric(pool, metric)
    stopped = int((runs["outcome"] == "stopped").sum())
    ok = pool[pool[metric].notna()]
    others = [s for s in dict.fromkeys(["lr", *varied(ok)]) if s not in by]
    columns = list(dict.fromkeys([*by, *others, metric, f"{metric}_std", f"{metric}_ci_low", f"{metric}_ci_high", "n",
               *[c for c in ("test_error", "train_error") if c != metric], "epochs", "ranked_by",
               *COMPARISON_COLUMNS, "run_id", "agent_uri"]))
    if ok.empty:
        return Best(pd.DataFrame(columns=columns), tuple(by), metric, stopped, include_stopped, notes=notes)
    settings = setting_table(ok, metric).sort_values([metric, *SETTINGS], kind="stable")
    if seeds:
        settings = _as_the_rule_saw(settings, runs)
    rows, within, winners = [], {}, []
    for _, group in (settings.groupby(by, dropna=False, sort=True) if by else [((), settings)]):
        winner = group.iloc[0]
        row = {**winner.drop(["values", "summary"]), "ranked_by": metric, **_NO_COMPARISON}
        if len(group) > 1:
            comparison, closest = _closest(winner, others, group.iloc[1:], metric, seeds)
            within[label(winner, by)] = comparison
            row.update(closest_rival=", ".join(f"{s}={_fmt(closest[s])}" for s in others),
                       **_comparison_columns(comparison))
        rows.append(row)
        winners.append(winner)
    table = pd.DataFrame(rows)[columns].sort_values(metric, kind="stable")  # ranked, as the header says
    table["n"] = table["n"].astype(int)
    within = {group: within[group] for group in (label(row, by) for _, row in table.iterrows()) if group in within}
    across = None
    if by and len(winners) > 1:
        ranked = pd.DataFrame(winners).sort_values(metric, kind="stable")
        across, _ = _closest(ranked.iloc[0], by, ranked.iloc[1:], metric, seeds)
    return Best(table.reset_index(drop=True), tuple(by), metric, stopped, include_stopped, within, across, notes,
                seeds)


COMPARISON_COLUMNS = ("closest_rival", "p_value", "p_holm", "rivals", "distinguishable", "p_ahead", "p_ahead_ci_low",
                      "p_ahead_ci_high", "seeds_needed")
_NO_COMPARISON = {"closest_rival": None, "p_value": float("nan"), "p_holm": float("nan"), "rivals": 0,
                  "distinguishable": None, "p_ahead": float("nan"), "p_ahead_ci_low": float("nan"),
                  "p_ahead_ci_high": float("nan"), "seeds_needed": float("nan")}


def _as_the_rule_saw(settings: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Adaptive seeds: each setting's seeds tried (a diverged one too: the look that tested it was at
    that many seeds), and a setting with fewer than two values ranked after the others, as the rule
    takes it out of contention."""
    finished = runs[runs["outcome"].isin(("done", "diverged", "stopped"))]
    tried = finished.groupby(SETTINGS, dropna=False)["seed"].max().rename("tried").reset_index()
    merged = settings.merge(tried, on=SETTINGS, how="left")
    merged["tried"] = merged["tried"].fillna(merged["n"]).astype(int)
    merged.index = settings.index
    return merged.sort_values("n", key=lambda n: n < 2, kind="stable")


def _closest(winner, settings: list, rivals: pd.DataFrame, metric: str, seeds: Optional[AdaptiveSeeds]) -> tuple:
    """The winner against each rival (rows of a setting table), Welch's p from their summaries,
    Holm-corrected over them: the comparison with the rival it is least told apart from, and that
    rival's row."""
    from ..adaptive.seeds import alpha_at

    p = stats.welch_ps_of(winner[metric], winner[f"{metric}_std"] ** 2, winner["n"], rivals[metric],
                          rivals[f"{metric}_std"].to_numpy() ** 2, rivals["n"])
    at, corrected, tested = stats.closest_rival(p)
    rival = rivals.iloc[at]
    alpha = alpha_at(seeds, max(winner["tried"], rivals["tried"].max())) if seeds else stats.ALPHA
    return stats.compare(label(winner, settings), winner["values"], label(rival, settings), rival["values"], p=p[at],
                         holm_p=corrected, family=tested, alpha=alpha), rival


def _comparison_columns(comparison: stats.Comparison) -> dict:
    """A comparison as the table's script columns."""
    return {"p_value": comparison.p, "p_holm": comparison.holm_p, "rivals": comparison.family,
            "distinguishable": comparison.distinguishable, "p_ahead": comparison.prob,
            "p_ahead_ci_low": comparison.prob_low, "p_ahead_ci_high": comparison.prob_high,
            "seeds_needed": comparison.seeds_needed}


def overall_winner(best: Best) -> pd.Series:
    """The group winner with the lowest mean: the run `--register` registers."""
    return best.table.loc[best.table[best.metric].astype(float).idxmin()]


def summary_of(row, metric: str) -> stats.Summary:
    """The summary of `metric` over a setting's seeds, from its row of a best_by table."""
    return stats.Summary(int(row["n"]), row[metric], row[f"{metric}_std"], row[f"{metric}_ci_low"],
                         row[f"{metric}_ci_high"])
