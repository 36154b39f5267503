"""Means, intervals and Welch's test of seed groups, against hand-computed values and scipy."""
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from sweep import stats
from sweep.results import words

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
    assert words.describe(ahead) == (f"relu is ahead of leaky_relu by 1.40 points (p = {p:.2f}, n = 3 and 3); a seed "
                                     f"of relu beats one of leaky_relu with probability 1.00 (95% CI 1.00 to 1.00)")

    level = stats.compare("relu", [0.030, 0.034, 0.032], "leaky_relu", [0.031, 0.035, 0.033])
    p = scipy_stats.ttest_ind([0.030, 0.034, 0.032], [0.031, 0.035, 0.033], equal_var=False).pvalue
    assert level.distinguishable is False and f"{p:.2f}" == "0.57"
    assert words.describe(level).startswith("relu and leaky_relu are not distinguishable at n = 3 (p = 0.57); a seed "
                                            "of relu beats one of leaky_relu with probability 0.67 (95% CI ")
    assert words.describe(level).endswith(f"about {level.seeds_needed:.0f} seeds each would tell them apart "
                                          f"(80% power)")

    uneven = stats.compare("relu", [0.030, 0.034], "tanh", [0.05, 0.06, 0.055])
    assert words.describe(uneven).startswith("relu is ahead of tanh by 2.30 points (p = ")
    assert ", n = 2 and 3); a seed of relu beats one of tanh with probability 1.00" in words.describe(uneven)

    one = stats.compare("relu", [0.030], "tanh", [0.05, 0.06])
    assert one.distinguishable is None
    assert words.describe(one) == "relu is 2.50 points below tanh, but relu has n = 1: no test can be made (n = 1 and 2)"


def test_p_values_are_written_at_a_sensible_precision():
    assert words.format_p(0.4012) == "p = 0.40"
    assert words.format_p(0.0123) == "p = 0.01" and words.format_p(0.00456) == "p = 0.005"
    assert words.format_p(0.0004) == "p < 0.001"


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04: x3, x2, x1 -> 0.03, 0.06, 0.04 -> never below an earlier one: 0.03, 0.06, 0.06
    assert stats.holm([0.04, 0.01, 0.03]).tolist() == pytest.approx([0.06, 0.03, 0.06])
    adjusted = stats.holm([0.5, float("nan"), 0.2])  # an untested rival is not in the family (m = 2)
    assert adjusted[0] == pytest.approx(0.5) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.4)
    assert stats.holm([0.6, 0.7]).tolist() == [1.0, 1.0] and stats.holm([]).size == 0


def test_each_rival_gets_scipys_welch_p():
    rivals = [[0.040, 0.045, 0.050], [0.031, 0.036, 0.029, 0.033], [0.03], [0.03, 0.03], []]
    p = stats.welch_ps([0.030, 0.031, 0.032], rivals)
    for got, rival in zip(p[:2], rivals):
        assert got == pytest.approx(scipy_stats.ttest_ind([0.030, 0.031, 0.032], rival, equal_var=False).pvalue,
                                    rel=1e-12)
    assert math.isnan(p[2]) and math.isnan(p[4])  # one value, or none: no test
    assert p[3] == pytest.approx(scipy_stats.ttest_ind([0.030, 0.031, 0.032], [0.03, 0.03], equal_var=False).pvalue)


def decided(leader, rivals) -> tuple:
    """The leader against each rival, Holm-corrected: the comparison with the rival it is least told
    apart from (its verdict is the question's), the p-values and the corrected ones."""
    p = stats.welch_ps(leader, rivals)
    at, corrected, tested = stats.closest_rival(p)
    comparison = stats.compare("leader", leader, f"rival {at}", rivals[at], p=p[at], holm_p=corrected, family=tested)
    return comparison, p, stats.holm(p)


def test_a_leader_is_decided_only_when_every_rival_survives_holms_correction():
    leader, near, far = [0.020, 0.021, 0.022, 0.021], [0.0215, 0.0235, 0.0225, 0.0230], [0.05, 0.06, 0.055, 0.052]
    p_near, p_far = stats.welch_p(leader, near), stats.welch_p(leader, far)
    assert p_far < p_near < 0.05  # each rival alone is told apart

    two, p, corrected = decided(leader, [far, near])
    assert corrected.tolist() == pytest.approx([2 * p_far, p_near])
    assert (two.behind, two.family, two.holm_p, two.distinguishable) == ("rival 1", 2, p_near, True)

    # three rivals each below 0.05 alone, but the smallest p times 3 is not: nothing is decided
    closer = [v + 0.0001 for v in near]
    three, p, corrected = decided(leader, [near, near[::-1], closer])
    assert max(p) < 0.05 and 3 * min(p) > 0.05 and three.family == 3
    assert three.ahead == "leader" and three.p < 0.05 < three.holm_p and three.distinguishable is False
    assert three.seeds_needed > len(leader)  # undecided: a power estimate says how many seeds would decide it

    lone, _, _ = decided(leader, [far, [0.03]])  # a rival with one seed cannot be told apart: no verdict
    assert lone.behind == "rival 1" and lone.distinguishable is None


def test_p_ahead_is_the_mann_whitney_share_of_pairs_and_its_bootstrap_interval_is_fixed():
    a, b = [0.030, 0.031, 0.035], [0.031, 0.033, 0.036, 0.040]
    u = scipy_stats.mannwhitneyu(b, a).statistic  # pairs in which b's value is above a's, ties half
    assert stats.prob_ahead(a, b) == pytest.approx(u / 12) and stats.prob_ahead(b, a) == pytest.approx(1 - u / 12)
    low, high = stats.prob_ahead_interval(a, b)
    assert 0 <= low <= stats.prob_ahead(a, b) <= high <= 1 and high - low > 0.2  # three seeds: a wide interval
    assert stats.prob_ahead_interval(a, b) == (low, high)          # a fixed seed: the same on every call
    assert stats.prob_ahead_interval([0.01, 0.02], [0.03, 0.04]) == (1.0, 1.0)  # no resample crosses over
    assert all(math.isnan(v) for v in stats.prob_ahead_interval([0.01], [0.03, 0.04]))
    assert math.isnan(stats.prob_ahead([], [0.03]))


@pytest.mark.parametrize("a, b", [([0.030, 0.031, 0.035], [0.031, 0.033, 0.036, 0.040]),
                                  ([0.02, 0.02], [0.02, 0.03]), ([0.1, 0.3, 0.2, 0.5, 0.4], [0.25, 0.35])])
def test_the_bootstrap_interval_is_scipys_percentile_bootstrap(a, b):
    def ahead(x, y, axis):  # the share of pairs in which x's value is lower, ties half
        x, y = np.moveaxis(x, axis, -1)[..., :, None], np.moveaxis(y, axis, -1)[..., None, :]
        return (x < y).mean(axis=(-2, -1)) + (x == y).mean(axis=(-2, -1)) / 2

    found = scipy_stats.bootstrap((np.array(a), np.array(b)), ahead,
                                  n_resamples=stats.BOOTSTRAP_RESAMPLES, method="percentile", vectorized=True,
                                  rng=np.random.default_rng(stats.BOOTSTRAP_SEED))
    assert stats.prob_ahead_interval(a, b) == pytest.approx(tuple(found.confidence_interval), abs=1e-12)


@pytest.mark.parametrize("effect, seeds", [(1.0, 17), (0.5, 64), (0.8, 26)])
def test_seeds_needed_matches_the_textbook_table(effect, seeds):
    # Cohen's table for a two-sided two-sample t-test at alpha 0.05 and 80% power: d 0.5 -> 64, 0.8 -> 26, 1.0 -> 17
    # (equal spreads: Welch's degrees of freedom are the pooled test's)
    spread = 0.01
    a = [0.03 - spread, 0.03, 0.03 + spread]
    b = [v + effect * spread for v in a]
    assert stats.seeds_needed(a, b) == seeds
    assert stats.seeds_needed(a, a) == math.inf and math.isnan(stats.seeds_needed([0.03], b))


def test_seeds_needed_follows_welchs_test_and_asks_for_more_than_were_not_enough():
    # unequal spreads: Welch's degrees of freedom, fewer than the pooled test's, ask for more seeds
    tight, wide = [0.030, 0.0301, 0.0302], [0.031, 0.034, 0.037]
    needed = int(stats.seeds_needed(tight, wide))
    assert stats.welch_p(tight, wide) > 0.05 and needed >= 4

    def simulated_power(n):  # samples with the means and spreads seen
        rng = np.random.default_rng(n)
        return np.mean([stats.welch_p(rng.normal(0.0301, 0.0001, n), rng.normal(0.034, 0.003, n)) < 0.05
                        for _ in range(400)])

    assert simulated_power(needed - 1) < stats.POWER <= simulated_power(needed) + 0.03
    assert stats.seeds_needed([0.02, 0.02], [0.03, 0.03]) == 2  # no spread: p = 0 already


@pytest.mark.parametrize("true_means, seeds", [((0, 0, 0, 0), 3), ((0, 0, 0, 0), 10), ((0, 0, 3, 3), 3),
                                                ((0, 0, 3, 3), 10), ((0, 0, 0, 2, 2), 10)])
def test_a_question_is_called_decided_falsely_at_most_alpha_of_the_time(true_means, seeds):
    # 1,000 simulated questions (unit noise): the leader (the lowest sample mean) is called decided only when
    # Welch's test tells it apart from every rival after Holm's correction; here another setting is as good
    # as any leader, so every decision is false. (Calling a leader apart as soon as any one rival is told
    # apart would be wrong about one time in five with four equal settings and ten seeds.)
    rng = np.random.default_rng(sum(true_means) * 100 + seeds)
    false = 0
    for _ in range(1000):
        values = [rng.normal(mean, 1.0, seeds) for mean in true_means]
        order = np.argsort([v.mean() for v in values])
        _, corrected, _ = stats.closest_rival(stats.welch_ps(values[order[0]], [values[i] for i in order[1:]]))
        false += corrected < stats.ALPHA  # told apart from the rival it is least told apart from: decided
    assert false / 1000 <= stats.ALPHA
