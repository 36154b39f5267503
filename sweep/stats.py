"""How sure an answer is: the mean of a setting's seeds with its 95% interval, whether two
settings are told apart by more than the seed-to-seed noise, and how often a seed of one beats a
seed of the other. Pure: numbers in, numbers out (the sentences that say them are words.py's).

A group is the runs of one setting that differ only in seed. With n = 1 there is no spread to
measure, so no standard deviation, no interval and no test: those come back as NaN, never as a
made-up number.

A question that compares its leader with several rivals makes several tests, corrected by Holm's
step-down method over them; the question is decided when its leader is told apart from every rival.
The leader is chosen by the same data; in simulation (tests/sweep/test_stats.py) such a
decision was still wrong at most ALPHA of the time, while a single corrected comparison was not held
to that under the choice, so the words speak of the decision.
Next to Welch's p, P(A ahead of B), the probability that a seed of A has the lower value than a
seed of B (ties half), with a stratified bootstrap interval (each setting's seeds resampled on
their own), as Bouthillier et al. (2021) and Agarwal et al. (2021, rliable) ask.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np

CONFIDENCE = 0.95
ALPHA = 0.05          # two settings are told apart when Welch's p < ALPHA (after Holm's correction)
POWER = 0.8           # the power at which seeds_needed plans
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0    # a fixed seed: the same runs give the same interval on every machine
MAX_SEEDS = 1000      # seeds_needed says "more than this" rather than search further


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float       # NaN when n = 0
    std: float        # sample standard deviation (ddof=1); NaN when n < 2
    ci_low: float     # 95% Student-t interval of the mean; NaN when n < 2
    ci_high: float


def _clean(values: Iterable[float]) -> np.ndarray:
    array = np.asarray(list(values), dtype=float)
    return array[~np.isnan(array)]


def summarize(values: Iterable[float], confidence: float = CONFIDENCE) -> Summary:
    """n, mean, std and the Student-t interval of the mean of `values` (NaNs left out)."""
    x = _clean(values)
    n = len(x)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n == 1:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(half_width(std, n, confidence))
    return Summary(n, mean, std, mean - half, mean + half)


def half_width(std, n, confidence: float = CONFIDENCE):
    """Half the width of the Student-t interval of a mean of `n` values with standard deviation `std`
    (numbers or numpy arrays of them, n >= 2): the one place the interval is computed."""
    from scipy import special

    return special.stdtrit(np.asarray(n) - 1, (1 + confidence) / 2) * np.asarray(std) / np.sqrt(n)


def welch_p(a: Iterable[float], b: Iterable[float]) -> float:
    """Two-sided p of Welch's t-test (scipy.stats.ttest_ind, equal_var=False), NaNs left out.

    NaN when either side has fewer than 2 values. When both sides have no spread at all, the
    t statistic is 0/0 or infinite: p is 1.0 for equal means (nothing tells them apart) and 0.0
    for different ones (as scipy gives for an infinite t)."""
    return float(welch_ps(a, [b])[0])


def welch_ps(a: Iterable[float], others: Iterable[Iterable[float]]) -> np.ndarray:
    """welch_p of `a` against each of `others`, as one array."""
    x = _clean(a)
    ys = [_clean(b) for b in others]
    moments = [(y.mean(), y.var(ddof=1), len(y)) if len(y) >= 2 else (math.nan, math.nan, len(y)) for y in ys]
    mean, var, n = (np.array(column, dtype=float) for column in zip(*moments)) if ys else ([],) * 3
    if len(x) < 2:
        return np.full(len(ys), math.nan)
    return welch_ps_of(x.mean(), x.var(ddof=1), len(x), mean, var, n)


def welch_ps_of(mean: float, var: float, n: int, means, variances, ns) -> np.ndarray:
    """Welch's two-sided p of one setting (its mean, variance (ddof=1) and n) against many, given as
    arrays of theirs: the t distribution evaluated once for all of them (a question may have
    thousands of rivals). NaN where a side has n < 2; two sides without spread: 1.0 for equal
    means, else 0.0."""
    means, variances, ns = (np.asarray(v, dtype=float) for v in (means, variances, ns))
    p = np.full(len(ns), math.nan)
    ok = ns >= 2
    if n < 2 or not ok.any():
        return p
    vx = var / n
    with np.errstate(invalid="ignore", divide="ignore"):
        vy = variances / ns
        t = (mean - means) / np.sqrt(vx + vy)
        df = (vx + vy) ** 2 / (vx ** 2 / (n - 1) + vy ** 2 / (ns - 1))
    from scipy import special

    p[ok] = 2 * special.stdtr(df[ok], -np.abs(t[ok]))  # the t distribution's sf
    flat = ok & (vx == 0) & (vy == 0)
    p[flat] = np.where(means[flat] == mean, 1.0, 0.0)
    return p


def holm(pvalues: Iterable[float]) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values: the smallest times m, the next times
    m - 1, ..., never below an earlier one, at most 1. A NaN (no test) is left out of the family."""
    p = np.asarray(list(pvalues), dtype=float)
    out = np.full(len(p), math.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


def _ahead(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(a value of x is below a value of y, ties half) over the last axis of each (leading axes alike)."""
    below = (x[..., :, None] < y[..., None, :]).mean(axis=(-2, -1))
    ties = (x[..., :, None] == y[..., None, :]).mean(axis=(-2, -1))
    return below + ties / 2


def prob_ahead(a: Iterable[float], b: Iterable[float]) -> float:
    """P(A ahead of B) for values where lower is better (errors): the share of the pairs (a seed of A,
    a seed of B) in which A's value is lower, ties counting half (the Mann-Whitney U statistic over
    nA x nB). NaN when a side has no value."""
    x, y = _clean(a), _clean(b)
    return float(_ahead(x, y)) if len(x) and len(y) else math.nan


def prob_ahead_interval(a: Iterable[float], b: Iterable[float], confidence: float = CONFIDENCE) -> tuple:
    """The percentile interval of P(A ahead of B) over a stratified bootstrap (A's seeds and B's
    resampled each on their own, BOOTSTRAP_RESAMPLES times, from a fixed seed); NaNs when a side
    has fewer than 2 values. What scipy.stats.bootstrap(method="percentile") gives, written out:
    importing scipy.stats takes most of a second of every `sweep best`."""
    x, y = _clean(a), _clean(b)
    if len(x) < 2 or len(y) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    xs = x[rng.integers(0, len(x), (BOOTSTRAP_RESAMPLES, len(x)))]  # A's resamples first, then B's, as scipy draws
    ys = y[rng.integers(0, len(y), (BOOTSTRAP_RESAMPLES, len(y)))]
    tail = (1 - confidence) / 2
    low, high = np.quantile(_ahead(xs, ys), [tail, 1 - tail])
    return float(low), float(high)


def seeds_needed(a: Iterable[float], b: Iterable[float], alpha: float = ALPHA, power: float = POWER) -> float:
    """Seeds per setting with which Welch's two-sided test at `alpha` would tell A from B with
    probability `power`, were the true gap and spreads those seen (the noncentral t with Welch's
    degrees of freedom): a planning estimate, not a promise. Asked of two settings that the seeds
    they have did not tell apart, it is at least one more seed than the larger has. math.inf when
    the gap is 0 or more than MAX_SEEDS would be needed; NaN when a side has fewer than 2 values."""
    x, y = _clean(a), _clean(b)
    if len(x) < 2 or len(y) < 2:
        return math.nan
    if x.var() == 0 and y.var() == 0 and x.mean() != y.mean():
        return 2.0  # no spread: Welch's test tells them apart (p = 0) with two seeds each
    n = np.arange(2, MAX_SEEDS + 1, dtype=float)
    reached = _power(x, y, n, alpha) >= power
    if not reached.any():
        return math.inf
    return float(max(n[np.argmax(reached)], max(len(x), len(y)) + 1))


def power_at(a: Iterable[float], b: Iterable[float], n: int, alpha: float = ALPHA) -> float:
    """The probability that Welch's two-sided test at `alpha` tells A from B with `n` seeds each,
    were the true gap and spreads those seen; NaN when a side has fewer than 2 values."""
    x, y = _clean(a), _clean(b)
    if len(x) < 2 or len(y) < 2:
        return math.nan
    return float(_power(x, y, np.array([float(n)]), alpha)[0])


def _power(x: np.ndarray, y: np.ndarray, n: np.ndarray, alpha: float) -> np.ndarray:
    """Welch's power at each number of seeds in `n` (the noncentral t with Welch's df)."""
    gap = abs(x.mean() - y.mean())
    if gap == 0:
        return np.zeros(len(n))
    if x.var() == 0 and y.var() == 0:
        return np.ones(len(n))  # no spread: Welch's test tells them apart (p = 0) with two seeds each
    from scipy import special

    va, vb = x.var(ddof=1) / n, y.var(ddof=1) / n
    df = (va + vb) ** 2 / ((va ** 2 + vb ** 2) / (n - 1))
    shift = gap / np.sqrt(va + vb)
    critical = special.stdtrit(df, 1 - alpha / 2)
    return 1 - special.nctdtr(df, shift, critical) + special.nctdtr(df, shift, -critical)


@dataclass(frozen=True)
class Comparison:
    """`ahead` (the lower mean) against `behind`: Welch's p, the probability that a seed of `ahead`
    beats a seed of `behind` with its bootstrap interval, and Welch's p after Holm's correction over
    the `family` tests it was made with (p itself when it was made alone)."""
    ahead: str
    behind: str
    ahead_summary: Summary
    behind_summary: Summary
    p: float                       # NaN when no test can be made
    prob: float = math.nan         # P(a seed of ahead has the lower value than a seed of behind)
    prob_low: float = math.nan     # its 95% stratified bootstrap interval
    prob_high: float = math.nan
    holm_p: float = math.nan       # p after Holm's correction over the family (p when family is 1)
    family: int = 1                # the tests the comparison was corrected with
    seeds_needed: float = math.nan  # when not told apart: seeds_needed of the two (NaN otherwise)
    alpha: float = ALPHA           # the level it is told apart at (adaptive seeds test each look at less)

    @property
    def gap(self) -> float:
        return self.behind_summary.mean - self.ahead_summary.mean

    @property
    def distinguishable(self):
        """True or False by Welch's test at `alpha`, after Holm's correction; None when a side has a
        single value."""
        return None if math.isnan(self.holm_p) else bool(self.holm_p < self.alpha)


def compare(name_a: str, a: Iterable[float], name_b: str, b: Iterable[float], p: float | None = None,
            holm_p: float | None = None, family: int = 1, alpha: float = ALPHA) -> Comparison:
    """Put the setting with the lower mean first, test the two with Welch's t-test (or take `p`,
    and `holm_p` from a family of tests, computed already), say how often a seed of the first beats
    a seed of the second, and, when they are not told apart, how many seeds would tell them."""
    a, b = list(a), list(b)
    sa, sb = summarize(a), summarize(b)
    p = welch_p(a, b) if p is None else p
    if sb.mean < sa.mean:
        (name_a, a, sa), (name_b, b, sb) = (name_b, b, sb), (name_a, a, sa)
    found = Comparison(name_a, name_b, sa, sb, p, prob_ahead(a, b), *prob_ahead_interval(a, b),
                       holm_p=p if holm_p is None else holm_p, family=family, alpha=alpha)
    if found.distinguishable is False:
        found = dataclasses.replace(found, seeds_needed=seeds_needed(a, b, alpha=alpha))
    return found


def closest_rival(p: Iterable[float]) -> tuple:
    """From Welch's p of a leader against each rival: the position of the rival it is least told
    apart from (the largest p after Holm's correction over the tested rivals; an untested one, NaN,
    first; the first of equals), that corrected p, and the number of rivals tested (at least 1).
    Told apart from that rival, the leader is told apart from every rival: the question is decided."""
    corrected = holm(p)
    at = max(range(len(corrected)), key=lambda i: (math.isnan(corrected[i]), corrected[i], -i))
    return at, float(corrected[at]), max(int((~np.isnan(corrected)).sum()), 1)
