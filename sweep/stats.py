"""How sure an answer is: the mean of a setting's seeds with its 95% interval, and whether two
settings are told apart by more than the seed-to-seed noise. Pure: numbers in, numbers and words out.

A group is the runs of one setting that differ only in seed. With n = 1 there is no spread to
measure, so no standard deviation, no interval and no test: those come back as NaN, never as a
made-up number.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Iterable

import numpy as np

CONFIDENCE = 0.95
ALPHA = 0.05          # two settings are told apart when Welch's p < ALPHA


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
    from scipy import stats  # imported when an interval is wanted (n >= 2): it takes most of a second

    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def welch_p(a: Iterable[float], b: Iterable[float]) -> float:
    """Two-sided p of Welch's t-test (scipy.stats.ttest_ind, equal_var=False), NaNs left out.

    NaN when either side has fewer than 2 values. When both sides have no spread at all, the
    t statistic is 0/0 or infinite: p is 1.0 for equal means (nothing tells them apart) and 0.0
    for different ones (as scipy gives for an infinite t)."""
    x, y = _clean(a), _clean(b)
    if len(x) < 2 or len(y) < 2:
        return math.nan
    if x.var() == 0 and y.var() == 0:
        return 1.0 if x.mean() == y.mean() else 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nearly equal values: scipy warns, the answer stands
        from scipy import stats

        return float(stats.ttest_ind(x, y, equal_var=False).pvalue)


@dataclass(frozen=True)
class Comparison:
    """`ahead` (the lower mean) against `behind`."""
    ahead: str
    behind: str
    ahead_summary: Summary
    behind_summary: Summary
    p: float                       # NaN when no test can be made

    @property
    def gap(self) -> float:
        return self.behind_summary.mean - self.ahead_summary.mean

    @property
    def distinguishable(self):
        """True or False by Welch's test at ALPHA; None when a side has a single value."""
        return None if math.isnan(self.p) else bool(self.p < ALPHA)


def compare(name_a: str, a: Iterable[float], name_b: str, b: Iterable[float]) -> Comparison:
    """Put the setting with the lower mean first and test the two with Welch's t-test."""
    a, b = list(a), list(b)
    sa, sb = summarize(a), summarize(b)
    p = welch_p(a, b)
    if sb.mean < sa.mean:
        return Comparison(name_b, name_a, sb, sa, p)
    return Comparison(name_a, name_b, sa, sb, p)


def format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"


def format_n(a: int, b: int) -> str:
    return f"n = {a}" if a == b else f"n = {a} and {b}"


def points(fraction: float) -> str:
    """An error difference (fractions) in percentage points."""
    return f"{100 * fraction:.2f} points"


def describe(c: Comparison) -> str:
    """One sentence on a comparison of error rates (fractions), never without its test.

    "relu and leaky_relu are not distinguishable at n = 3 (p = 0.40)"
    "relu is ahead of leaky_relu by 0.09 points (p = 0.01, n = 3 and 3)"
    "n = 1 per setting: no interval can be given"
    """
    na, nb = c.ahead_summary.n, c.behind_summary.n
    if na == 1 and nb == 1:
        return "n = 1 per setting: no interval can be given"
    if c.distinguishable is None:
        single = c.ahead if na < 2 else c.behind
        return (f"{c.ahead} is {points(c.gap)} below {c.behind}, but {single} has n = 1: "
                f"no test can be made ({format_n(na, nb)})")
    if c.distinguishable:
        return f"{c.ahead} is ahead of {c.behind} by {points(c.gap)} ({format_p(c.p)}, n = {na} and {nb})"
    return f"{c.ahead} and {c.behind} are not distinguishable at {format_n(na, nb)} ({format_p(c.p)})"


def format_interval(s: Summary, scale: float = 100, unit: str = "%") -> str:
    """"2.31 to 2.67%" for a summary of fractions, or "none (n = 1)"."""
    if s.n < 2:
        return f"none (n = {s.n})"
    return f"{scale * s.ci_low:.2f} to {scale * s.ci_high:.2f}{unit}"
