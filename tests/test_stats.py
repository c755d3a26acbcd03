"""The report's statistics against hand computations, independent derivations and simulation."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from ftcompare import stats


# --------------------------------------------------------------------------------------------------
# McNemar exact
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("b, c, expected", [
    (1, 7, 2 * (1 + 8) / 2 ** 8),        # 2 * P(X <= 1), X ~ Bin(8, 1/2) = 18/256
    (7, 1, 2 * (1 + 8) / 2 ** 8),        # two-sided: symmetric in b and c
    (0, 5, 2 / 2 ** 5),                  # 2 * P(X = 0), X ~ Bin(5, 1/2)
    (3, 3, 1.0),                         # 2 * P(X <= 3 | 6) = 2 * 42/64 > 1 -> 1
    (0, 0, 1.0),                         # no discordant pair: no evidence either way
    (2, 10, 2 * (1 + 12 + 66) / 2 ** 12),
])
def test_mcnemar_exact_matches_hand_computation(b, c, expected):
    assert stats.mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_exact_matches_scipy_binomtest():
    from scipy.stats import binomtest

    for b in range(0, 15):
        for c in range(0, 15):
            if b + c:
                assert stats.mcnemar_exact(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-9)


def test_compare_paired_small_known_case():
    first = [1, 1, 0, 0, 1, 0, 1, 0, 0, 0]   # e.g. the base model, per item
    second = [1, 0, 1, 1, 1, 1, 1, 1, 0, 0]  # a fine-tuned model, same items
    # both right: items 0, 4, 6 (a=3); first only: item 1 (b=1); second only: 2, 3, 5, 7 (c=4); neither: d=2
    r = stats.compare_paired(first, second)
    assert (r.n, r.n_first_only, r.n_second_only) == (10, 1, 4)
    assert r.first == pytest.approx(0.4) and r.second == pytest.approx(0.7)
    assert r.delta == pytest.approx(0.3)
    assert r.p_value == pytest.approx(2 * (1 + 5) / 2 ** 5)  # 0.375
    assert r.test == "McNemar exact" and r.ci_method == "Newcombe paired score"
    assert r.ci_low < r.delta < r.ci_high
    swapped = stats.compare_paired(second, first)
    assert (swapped.delta, swapped.ci_low, swapped.ci_high) == pytest.approx((-r.delta, -r.ci_high, -r.ci_low))
    assert swapped.p_value == r.p_value


def test_compare_paired_needs_aligned_items():
    with pytest.raises(ValueError):
        stats.compare_paired([1, 0], [1])


# --------------------------------------------------------------------------------------------------
# Wilson and Newcombe
# --------------------------------------------------------------------------------------------------
def _wilson_by_quadratic(k, n, z=stats.Z95):
    """Independent derivation: the p with (k/n - p)^2 = z^2 p (1 - p) / n."""
    ph = k / n
    roots = np.roots([1 + z * z / n, -(2 * ph + z * z / n), ph * ph])
    return float(min(roots.real)), float(max(roots.real))


@pytest.mark.parametrize("k, n", [(45, 100), (1, 20), (19, 20), (90, 200), (7, 40)])
def test_wilson_matches_the_quadratic(k, n):
    assert stats.wilson_ci(k, n) == pytest.approx(_wilson_by_quadratic(k, n), abs=1e-9)


def test_wilson_edges():
    z2 = stats.Z95 ** 2
    assert stats.wilson_ci(0, 20) == pytest.approx((0.0, z2 / (20 + z2)))   # 0.1611
    assert stats.wilson_ci(20, 20) == pytest.approx((20 / (20 + z2), 1.0))
    assert stats.wilson_ci(0, 20)[1] == pytest.approx(0.16113, abs=1e-5)


def test_newcombe_hand_computation():
    a, b, c, d = 1, 1, 7, 12   # paired 2x2 (first, second) of n=21
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = _wilson_by_quadratic(a + b, n)
    l2, u2 = _wilson_by_quadratic(a + c, n)
    cross = a * d - b * c                      # 12 - 7 = 5 <= n/2 -> phi = 0 (Newcombe's continuity term)
    assert 0 <= cross <= n / 2
    lo = (p2 - p1) - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2)
    hi = (p2 - p1) + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)
    assert stats.newcombe_paired_ci(a, b, c, d) == pytest.approx((lo, hi), abs=1e-9)

    a, b, c, d = 30, 3, 9, 18  # strongly correlated pairs: phi = (ad - bc - n/2) / sqrt(margins) > 0
    n = a + b + c + d
    phi = (a * d - b * c - n / 2) / math.sqrt((a + b) * (c + d) * (a + c) * (b + d))
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = _wilson_by_quadratic(a + b, n)
    l2, u2 = _wilson_by_quadratic(a + c, n)
    lo = (p2 - p1) - math.sqrt((p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2)
    hi = (p2 - p1) + math.sqrt((u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2)
    assert stats.newcombe_paired_ci(a, b, c, d) == pytest.approx((lo, hi), abs=1e-9)


def test_newcombe_is_honest_when_nothing_differs():
    # 20 items, both sides wrong on all: the delta is 0, but a difference up to ~16 points is not excluded
    lo, hi = stats.newcombe_paired_ci(0, 0, 0, 20)
    assert lo == pytest.approx(-hi) and hi == pytest.approx(stats.wilson_ci(0, 20)[1])


def test_newcombe_coverage_by_simulation():
    """95% intervals should contain the true paired difference ~95% of the time (small n, correlated pairs)."""
    rng = np.random.default_rng(0)
    probs = [0.2, 0.1, 0.2, 0.5]   # P(both), P(first only), P(second only), P(neither)
    truth = probs[2] - probs[1]    # p2 - p1 = 0.1
    n, reps, hits = 40, 3000, 0
    for a, b, c, d in rng.multinomial(n, probs, size=reps):
        lo, hi = stats.newcombe_paired_ci(int(a), int(b), int(c), int(d))
        hits += lo <= truth <= hi
    assert 0.93 <= hits / reps <= 0.98


# --------------------------------------------------------------------------------------------------
# lm-eval's stderr, bootstrap, permutation, Holm
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k, n", [(13, 40), (0, 20), (20, 20), (1, 2), (77, 200)])
def test_binomial_stderr_is_lm_evals_and_the_hand_formula(k, n):
    from lm_eval.api.metrics import mean_stderr

    p = k / n
    assert stats.binomial_stderr(p, n) == mean_stderr([1.0] * k + [0.0] * (n - k))   # the library call itself
    assert stats.binomial_stderr(p, n) == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)), rel=1e-12, abs=1e-15)


def test_mcnemar_exact_equals_the_hand_formula_to_the_last_bits_after_rounding():
    """binomtest replaced a hand-written 2 * Binomial cdf: the same p-values (to 1e-15 relative, so the same
    after the tables' 6-digit rounding) for every discordant split up to 120 pairs."""
    for m in range(1, 121):
        for b in range(m + 1):
            hand = min(1.0, 2 * sum(math.comb(m, j) for j in range(min(b, m - b) + 1)) / 2 ** m)
            got = stats.mcnemar_exact(b, m - b)
            assert got == pytest.approx(hand, rel=1e-13, abs=0), (b, m - b)
            assert round(got, 6) == round(hand, 6), (b, m - b)


def test_normal_interval_uses_lm_evals_stderr():
    from lm_eval.api.metrics import mean_stderr

    values = [0.5, 0.7, 0.6, 0.9]
    lo, hi, how = stats.proportion_ci(values)
    mean = sum(values) / 4
    hand = math.sqrt(sum((v - mean) ** 2 for v in values) / 3 / 4)
    assert how == "normal" and mean_stderr(values) == pytest.approx(hand, rel=1e-12)
    assert (lo, hi) == pytest.approx((mean - stats.Z95 * hand, mean + stats.Z95 * hand), rel=1e-12)


def test_paired_bootstrap_is_seeded_and_sane():
    rng = np.random.default_rng(1)
    x = rng.normal(size=60)
    y = x + 0.5 + rng.normal(scale=0.1, size=60)
    ci1 = stats.paired_bootstrap_ci(x, y, iters=2000)
    assert ci1 == stats.paired_bootstrap_ci(x, y, iters=2000)      # deterministic
    assert ci1[0] < float(np.mean(y - x)) < ci1[1] and ci1[0] > 0.4 and ci1[1] < 0.6
    assert stats.paired_bootstrap_ci([0, 0, 0], [1, 1, 1], iters=100) == (1.0, 1.0)
    r = stats.compare_paired(list(x), list(y))                     # not 0/1: bootstrap + permutation
    assert r.test == "paired permutation" and r.ci_method == "paired bootstrap" and r.p_value < 0.001


def test_paired_permutation_p():
    assert stats.paired_permutation_p([0.2, 0.5], [0.2, 0.5]) == 1.0
    assert stats.paired_permutation_p([0.1, 0.3, 0.2], [0.3, 0.1, 0.2], iters=2000) > 0.5


def _exact_sign_flip_p(d):
    """All 2^n sign flips of the paired differences: the exact two-sided permutation p."""
    d = np.asarray(d, dtype=float)
    observed = abs(d.mean())
    flips = np.array(list(itertools.product((-1.0, 1.0), repeat=d.size)))
    return float((np.abs((flips * d).mean(axis=1)) >= observed - 1e-12).mean())


@pytest.mark.parametrize("d, exact", [
    ([3, 1, 2, 1, 4, 2, -1, 3, 2, -2, 1, 2, -3], 0.086669921875),   # integer: many ties with the observed mean
    ([0.31, -0.12, 0.55, 0.08, -0.27, 0.44, 0.19, -0.05, 0.62, 0.13, -0.38, 0.26], 0.13525390625),
])
def test_paired_permutation_p_matches_exact_enumeration(d, exact):
    """A moderate effect (no shortcut: differences non-zero, mean non-zero): the Monte Carlo p (10,000 seeded
    sign flips, SE ~0.003) agrees with the exact p of all 2^n flips; a doubled p or a one-sided p would not."""
    assert _exact_sign_flip_p(d) == pytest.approx(exact, abs=1e-15)
    x = [0.0] * len(d)
    assert stats.paired_permutation_p(x, d) == pytest.approx(exact, abs=0.01)
    assert stats.paired_permutation_p(d, x) == stats.paired_permutation_p(x, d)       # two-sided
    shifted = [v + 0.25 for v in x]                                                    # only y - x matters
    assert stats.paired_permutation_p(shifted, [v + 0.25 for v in d]) == pytest.approx(exact, abs=0.01)


def test_paired_permutation_p_counts_the_observed_flip():
    """30 equal positive differences: only the two all-same-sign flips reach |mean|, so no random flip of
    1,000 hits it and p is (1 + 0) / (1 + 1000), never 0 (the +1 counts the observed assignment)."""
    d = [0.5] * 30
    assert stats.paired_permutation_p([0.0] * 30, d, iters=1000) == 1 / 1001
    assert stats.paired_permutation_p([0.0] * 30, d, iters=3000) == 1 / 3001


def test_holm_hand_computation():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone: 0.02 0.03 0.06 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert stats.holm([]) == []


def test_proportion_ci():
    lo, hi, how = stats.proportion_ci([1, 0, 0, 1])
    assert how == "Wilson" and (lo, hi) == pytest.approx(stats.wilson_ci(2, 4))
    assert stats.proportion_ci([0.5, 0.7, 0.6])[2] == "normal"


# --------------------------------------------------------------------------------------------------
# Interval values by hand (the normal interval of chrF/BLEU/length, bootstrap, Newcombe's phi < 0 branch)
# --------------------------------------------------------------------------------------------------
def test_normal_interval_hand_values():
    """mean 0.675, sample variance 0.0875 / 3, stderr sqrt(0.0875 / 12) = 0.0853913, half-width 1.96 x that."""
    lo, hi, how = stats.proportion_ci([0.5, 0.7, 0.6, 0.9])
    assert how == "normal"
    assert (lo, hi) == pytest.approx((0.507636, 0.842364), abs=1e-6)
    lo90, hi90, _ = stats.proportion_ci([0.5, 0.7, 0.6, 0.9], confidence=0.90)   # z = 1.644854
    assert (lo90, hi90) == pytest.approx((0.675 - 1.644854 * 0.0853913, 0.675 + 1.644854 * 0.0853913), abs=1e-6)


def test_wilson_at_another_confidence_uses_its_z():
    z90 = 1.6448536269514722
    assert stats.wilson_ci(7, 40, confidence=0.90) == pytest.approx(_wilson_by_quadratic(7, 40, z=z90), abs=1e-9)
    assert stats.wilson_ci(45, 100) == pytest.approx((0.356145, 0.547554), abs=1e-6)  # by hand: 0.451846 -+ 0.095701


def test_newcombe_negative_correlation_branch():
    """ad - bc < 0 (pairs disagree more than chance): phi = (ad - bc) / sqrt(margins), no continuity term."""
    a, b, c, d = 2, 10, 12, 1
    n = a + b + c + d
    phi = (a * d - b * c) / math.sqrt((a + b) * (c + d) * (a + c) * (b + d))
    assert phi < 0
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = _wilson_by_quadratic(a + b, n)
    l2, u2 = _wilson_by_quadratic(a + c, n)
    lo = (p2 - p1) - math.sqrt((p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2)
    hi = (p2 - p1) + math.sqrt((u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2)
    got = stats.newcombe_paired_ci(a, b, c, d)
    assert got == pytest.approx((lo, hi), abs=1e-9)
    # wider than with phi = 0 (negative correlation adds variance)
    lo0 = (p2 - p1) - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2)
    assert got[0] < lo0


def test_newcombe_small_positive_cross_has_no_correlation_term():
    """0 < ad - bc <= n/2: Newcombe's continuity term makes phi 0 (the plain square-and-add)."""
    a, b, c, d = 3, 4, 5, 7    # ad - bc = 1, n/2 = 9.5
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = _wilson_by_quadratic(a + b, n)
    l2, u2 = _wilson_by_quadratic(a + c, n)
    lo = (p2 - p1) - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2)
    hi = (p2 - p1) + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)
    assert stats.newcombe_paired_ci(a, b, c, d) == pytest.approx((lo, hi), abs=1e-9)


def test_newcombe_stays_in_minus_one_one():
    lo, hi = stats.newcombe_paired_ci(0, 0, 30, 0)   # every item flips 0 -> 1: delta 1, hi exactly 1
    assert hi == 1.0 and 0.8 < lo < 1.0
    lo, hi = stats.newcombe_paired_ci(0, 30, 0, 0)
    assert lo == -1.0 and -1.0 < hi < -0.8


def test_paired_bootstrap_matches_the_normal_theory_width():
    """With 200 pairs the bootstrap distribution of the mean is close to normal with sd = std(d) / sqrt(n)
    (ddof 0): the percentile interval is mean +- z sd to within a few percent of its width."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=200)
    y = x + rng.normal(loc=0.3, scale=1.0, size=200)
    d = y - x
    sd = float(np.std(d)) / math.sqrt(d.size)
    for conf, z in ((0.95, stats.Z95), (0.80, 1.2815515655446004)):
        lo, hi = stats.paired_bootstrap_ci(x, y, iters=20000, confidence=conf)
        assert lo == pytest.approx(d.mean() - z * sd, abs=0.05 * z * sd)
        assert hi == pytest.approx(d.mean() + z * sd, abs=0.05 * z * sd)


def test_paired_bootstrap_two_items_by_hand():
    """d = (0, 1): resampled means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4, so the 95% percentile
    interval is [0, 1] and the 40% one (quantiles 0.3 and 0.7) is [0.5, 0.5]."""
    assert stats.paired_bootstrap_ci([0, 0], [0, 1], iters=4000) == (0.0, 1.0)
    assert stats.paired_bootstrap_ci([0, 0], [0, 1], iters=4000, confidence=0.4) == (0.5, 0.5)
    with pytest.raises(ValueError):
        stats.paired_bootstrap_ci([], [])


def test_errors_and_small_cases():
    with pytest.raises(ValueError):
        stats.wilson_ci(1, 0)
    with pytest.raises(ValueError):
        stats.wilson_ci(5, 4)
    with pytest.raises(ValueError):
        stats.wilson_ci(-1, 4)
    with pytest.raises(ValueError):
        stats.mcnemar_exact(-1, 2)
    with pytest.raises(ValueError):
        stats.newcombe_paired_ci(0, 0, 0, 0)
    with pytest.raises(ValueError):
        stats.compare_paired([], [])
    with pytest.raises(ValueError):
        stats.proportion_ci([])
    assert math.isnan(stats.binomial_stderr(1.0, 1))
    assert stats.is_binary([0, 1, 1.0]) and not stats.is_binary([0, 0.5])
    lo, hi, how = stats.proportion_ci([0.4])                       # one non-binary item: no stderr
    assert how == "normal" and math.isnan(lo) and math.isnan(hi)


# --------------------------------------------------------------------------------------------------
# Pinned numbers and every branch (what mutation testing found unchecked)
# --------------------------------------------------------------------------------------------------
X12 = [0.41, 0.12, 0.77, 0.35, 0.58, 0.23, 0.66, 0.49, 0.05, 0.91, 0.30, 0.62]
Y12 = [0.52, 0.10, 0.95, 0.47, 0.61, 0.40, 0.70, 0.44, 0.21, 0.99, 0.38, 0.60]


def test_seeded_numbers_are_pinned_bit_for_bit():
    """SEED makes the bootstrap and permutation numbers reproducible: pinned, so a change of the resampling
    (chunking, seed, draws) shows up."""
    assert stats.paired_bootstrap_ci(X12, Y12, iters=2500) == (0.03166666666666667, 0.1158333333333333)
    assert stats.paired_permutation_p(X12, Y12, iters=2500) == 0.009596161535385846
    r = stats.compare_paired(X12, Y12)
    assert (r.n, r.test, r.ci_method, r.n_first_only, r.n_second_only) == (12, "paired permutation",
                                                                             "paired bootstrap", None, None)
    assert (r.first, r.second, r.delta) == pytest.approx((0.4575, 0.5308333333333334, 0.07333333333333336))
    assert (r.ci_low, r.ci_high, r.p_value) == (0.030833333333333324, 0.1158333333333333, 0.0124987501249875)
    r90 = stats.compare_paired(X12, Y12, confidence=0.90)
    assert r90.ci_low > r.ci_low and r90.ci_high < r.ci_high


def test_compare_paired_binary_fields_equal_the_parts():
    first = [1, 1, 1, 0, 0, 1, 0, 1, 1, 0, 0, 0, 1, 1]
    second = [1, 1, 0, 1, 1, 1, 0, 0, 1, 1, 0, 1, 1, 0]
    a, b, c, d = 5, 3, 4, 2          # counted by hand: both, first only, second only, neither
    r = stats.compare_paired(first, second)
    assert (r.ci_low, r.ci_high) == stats.newcombe_paired_ci(a, b, c, d)
    assert (r.n_first_only, r.n_second_only, r.p_value) == (b, c, stats.mcnemar_exact(b, c))
    r90 = stats.compare_paired(first, second, confidence=0.90)
    assert (r90.ci_low, r90.ci_high) == stats.newcombe_paired_ci(a, b, c, d, confidence=0.90)
    mixed = stats.compare_paired([1, 0, 1, 0], [0.5, 0.25, 1, 0])   # one side not 0/1: not McNemar
    assert mixed.test == "paired permutation"


@pytest.mark.parametrize("a, b, c, d", [(0, 1, 1, 0), (6, 2, 2, 6), (4, 2, 3, 3), (3, 4, 5, 7)])
def test_newcombe_branch_boundaries(a, b, c, d):
    """phi by Newcombe's rule at the edges of its branches: margins of 1, ad - bc = 2n, n/3 < ad - bc = n/2;
    also at another confidence."""
    n = a + b + c + d
    cross = a * d - b * c
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (cross - n / 2) / math.sqrt(margins) if cross > n / 2 else (cross / math.sqrt(margins) if cross < 0 else 0.0)
    for conf, z in ((0.95, stats.Z95), (0.90, 1.6448536269514722)):
        p1, p2 = (a + b) / n, (a + c) / n
        l1, u1 = _wilson_by_quadratic(a + b, n, z)
        l2, u2 = _wilson_by_quadratic(a + c, n, z)
        lo = (p2 - p1) - math.sqrt((p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2)
        hi = (p2 - p1) + math.sqrt((u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2)
        assert stats.newcombe_paired_ci(a, b, c, d, confidence=conf) == pytest.approx((lo, hi), abs=1e-9)


def test_small_n_and_other_confidences():
    assert stats.wilson_ci(1, 1) == (pytest.approx(1 / (1 + stats.Z95 ** 2)), 1.0)
    assert stats.wilson_ci(0, 20)[0] == 0.0 and stats.wilson_ci(20, 20)[1] == 1.0
    assert stats.newcombe_paired_ci(0, 0, 1, 0)[1] == 1.0                 # n = 1 is a valid table
    lo, hi, how = stats.proportion_ci([1, 0, 0, 1, 1], confidence=0.90)
    assert how == "Wilson" and (lo, hi) == stats.wilson_ci(3, 5, confidence=0.90)
    lo, hi, _ = stats.proportion_ci([0.2, 0.6])                          # two items: a stderr exists
    assert (lo, hi) == pytest.approx((0.4 - stats.Z95 * 0.2, 0.4 + stats.Z95 * 0.2))
    assert stats.z_value() == stats.Z95
    assert stats.holm([0.6, 0.7]) == [1.0, 1.0]                           # 2 x 0.6 capped at 1
    assert stats.holm([0.3, 0.02]) == pytest.approx([0.3, 0.04])
    assert stats.mcnemar_exact(4, 4) == 1.0 and stats.mcnemar_exact(1, 6) == pytest.approx(2 * 8 / 2 ** 7)


@pytest.mark.parametrize("call, message", [
    (lambda: stats.wilson_ci(1, 0), "wilson_ci needs n > 0"),
    (lambda: stats.wilson_ci(5, 4), r"wilson_ci: k=5 is not in \[0, n=4\]"),
    (lambda: stats.mcnemar_exact(-1, 2), "discordant counts must be >= 0"),
    (lambda: stats.mcnemar_exact(2, -1), "discordant counts must be >= 0"),
    (lambda: stats.newcombe_paired_ci(0, 0, 0, 0), "newcombe_paired_ci needs n > 0"),
    (lambda: stats.paired_bootstrap_ci([], []), "paired_bootstrap_ci needs at least one pair"),
    (lambda: stats.compare_paired([1, 0], [1]), r"paired comparison needs equal lengths \(2 != 1\)"),
    (lambda: stats.compare_paired([], []), "paired comparison needs at least one item"),
    (lambda: stats.proportion_ci([]), "no items"),
])
def test_error_messages(call, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        call()
