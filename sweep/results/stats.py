"""How sure an answer is: the mean of a setting's seeds with its 95% interval, and whether two
settings are told apart by more than the seed-to-seed noise. Pure: numbers in, numbers out (the
sentences that say them are words.py's).

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
    half = float(half_width(std, n, confidence))
    return Summary(n, mean, std, mean - half, mean + half)


def half_width(std, n, confidence: float = CONFIDENCE):
    """Half the width of the Student-t interval of a mean of `n` values with standard deviation `std`
    (numbers or numpy arrays of them, n >= 2): the one place the interval is computed."""
    from scipy import stats  # imported when an interval is wanted (n >= 2): it takes most of a second

    return stats.t.ppf((1 + confidence) / 2, np.asarray(n) - 1) * np.asarray(std) / np.sqrt(n)


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
