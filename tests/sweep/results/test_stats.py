"""Means, intervals and Welch's test of seed groups, against hand-computed values and scipy."""
import math

import pytest
from scipy import stats as scipy_stats

from sweep.results import stats, words

T_975_2 = 4.302652729749462   # Student t, 97.5% quantile, 2 degrees of freedom (tables: 4.303)
T_975_1 = 12.706204736174703  # 1 degree of freedom (tables: 12.706)


def test_summary_of_three_values_by_hand():
    s = stats.summarize([1.0, 2.0, 3.0])
    assert s.n == 3 and s.mean == 2.0 and s.std == 1.0  # ddof=1: sqrt(((1)^2 + 0 + (1)^2) / 2)
    half = T_975_2 * 1.0 / math.sqrt(3)                   # 2.4841...
    assert (s.ci_low, s.ci_high) == pytest.approx((2.0 - half, 2.0 + half), rel=1e-12)
    assert (s.ci_low, s.ci_high) == pytest.approx(scipy_stats.t.interval(0.95, 2, loc=2.0, scale=1 / math.sqrt(3)))


def test_two_values_use_one_degree_of_freedom():
    s = stats.summarize([0.030, 0.034])
    assert s.mean == pytest.approx(0.032) and s.std == pytest.approx(0.004 / math.sqrt(2))
    half = T_975_1 * s.std / math.sqrt(2)                # = 12.706 * 0.002
    assert s.ci_high - s.mean == pytest.approx(half) and half == pytest.approx(0.0254124, rel=1e-5)


def test_one_value_has_no_spread_no_interval_and_no_test():
    s = stats.summarize([0.025])
    assert s.n == 1 and s.mean == 0.025
    assert math.isnan(s.std) and math.isnan(s.ci_low) and math.isnan(s.ci_high)
    assert math.isnan(stats.welch_p([0.025], [0.03, 0.031]))
    assert words.format_interval(s) == "none (n = 1)"
    assert words.describe(stats.compare("relu", [0.025], "tanh", [0.03])) == "n = 1 per setting: no interval can be given"


def test_nans_are_left_out():
    s = stats.summarize([1.0, float("nan"), 3.0])
    assert s.n == 2 and s.mean == 2.0 and s.std == pytest.approx(math.sqrt(2))
    assert stats.summarize([float("nan")]).n == 0 and math.isnan(stats.summarize([]).mean)
    expected = scipy_stats.ttest_ind([1.0, 3.0], [4.0, 5.0, 7.0], equal_var=False).pvalue
    assert stats.welch_p([1.0, float("nan"), 3.0], [4.0, 5.0, float("nan"), 7.0]) == pytest.approx(expected)


@pytest.mark.parametrize("a, b", [([0.030, 0.031, 0.032], [0.040, 0.045, 0.050]),
                                  ([0.030, 0.034], [0.031, 0.036, 0.029, 0.033]),
                                  ([1.0, 2.0], [1.5, 2.5])])
def test_welch_is_scipys_unequal_variance_test(a, b):
    expected = scipy_stats.ttest_ind(a, b, equal_var=False).pvalue
    assert stats.welch_p(a, b) == pytest.approx(expected, rel=1e-12)
    assert stats.welch_p(b, a) == pytest.approx(expected, rel=1e-12)


def test_welch_by_hand():
    # a = [1, 2, 3] (mean 2, var 1), b = [4, 5, 6] (mean 5, var 1): t = -3 / sqrt(2/3), df = 4
    t = -3 / math.sqrt(2 / 3)
    assert stats.welch_p([1, 2, 3], [4, 5, 6]) == pytest.approx(2 * scipy_stats.t.sf(abs(t), 4), rel=1e-12)


def test_no_spread_on_both_sides_decides_by_the_means():
    assert stats.welch_p([0.03, 0.03], [0.03, 0.03, 0.03]) == 1.0     # documented: nothing tells them apart
    assert stats.welch_p([0.03, 0.03], [0.04, 0.04]) == 0.0           # documented: t is infinite
    assert stats.compare("a", [0.03, 0.03], "b", [0.03, 0.03]).distinguishable is False


def test_compare_puts_the_lower_mean_first_and_words_it():
    ahead = stats.compare("leaky_relu", [0.040, 0.045, 0.050], "relu", [0.030, 0.031, 0.032])
    assert ahead.ahead == "relu" and ahead.behind == "leaky_relu"
    assert ahead.gap == pytest.approx(0.014) and ahead.distinguishable is True
    p = scipy_stats.ttest_ind([0.030, 0.031, 0.032], [0.040, 0.045, 0.050], equal_var=False).pvalue
    assert words.describe(ahead) == f"relu is ahead of leaky_relu by 1.40 points (p = {p:.2f}, n = 3 and 3)"

    level = stats.compare("relu", [0.030, 0.034, 0.032], "leaky_relu", [0.031, 0.035, 0.033])
    p = scipy_stats.ttest_ind([0.030, 0.034, 0.032], [0.031, 0.035, 0.033], equal_var=False).pvalue
    assert level.distinguishable is False and f"{p:.2f}" == "0.57"
    assert words.describe(level) == "relu and leaky_relu are not distinguishable at n = 3 (p = 0.57)"

    uneven = stats.compare("relu", [0.030, 0.034], "tanh", [0.05, 0.06, 0.055])
    assert words.describe(uneven).startswith("relu is ahead of tanh by 2.30 points (p = ")
    assert words.describe(uneven).endswith(", n = 2 and 3)")

    one = stats.compare("relu", [0.030], "tanh", [0.05, 0.06])
    assert one.distinguishable is None
    assert words.describe(one) == "relu is 2.50 points below tanh, but relu has n = 1: no test can be made (n = 1 and 2)"


def test_p_values_are_written_at_a_sensible_precision():
    assert words.format_p(0.4012) == "p = 0.40"
    assert words.format_p(0.0123) == "p = 0.01" and words.format_p(0.00456) == "p = 0.005"
    assert words.format_p(0.0004) == "p < 0.001"
