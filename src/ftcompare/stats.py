"""Statistics of the report: small, exact where possible, deterministic always.

Per-item outcomes of two evaluations of the *same* documents are compared pairwise (never as two
independent samples: the same hard items are hard for every method, and pairing removes that variance).

  single proportion      Wilson score 95% interval (good coverage at small n, never outside [0, 1])
  paired binary delta    Newcombe's hybrid score interval for paired proportions (Newcombe 1998,
                         Stat Med 17:2635, method 10) + McNemar's exact test (two-sided binomial test on
                         the discordant pairs)
  paired other metrics   paired bootstrap percentile interval + paired sign-flip permutation test
                         (both seeded: the same inputs give the same numbers)
  many comparisons       Holm's step-down adjustment (controls the family-wise error rate)

Library calls where a library has the test (scipy.stats.binomtest, lm-eval's mean_stderr); imported
lazily by the report.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

Z95 = 1.959963984540054  # scipy.stats.norm.ppf(0.975)
BOOTSTRAP_ITERS = 10_000
SEED = 20260101          # fixed: bootstrap and permutation numbers are reproducible bit for bit


def z_value(confidence: float = 0.95) -> float:
    if confidence == 0.95:
        return Z95
    from scipy.stats import norm

    return float(norm.ppf(0.5 + confidence / 2))


def wilson_ci(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n."""
    if n <= 0:
        raise ValueError("wilson_ci needs n > 0")
    if not 0 <= k <= n:
        raise ValueError(f"wilson_ci: k={k} is not in [0, n={n}]")
    z = z_value(confidence)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # exact at the edges (the formula gives the bound up to rounding)
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def binomial_stderr(p: float, n: int) -> float:
    """The standard error lm-eval reports for a mean of n 0/1 items, k = round(p n) of them 1:
    lm_eval.api.metrics.mean_stderr (sample std, ddof=1, / sqrt(n) = sqrt(p (1 - p) / (n - 1)))."""
    if n < 2:
        return float("nan")
    from lm_eval.api.metrics import mean_stderr

    k = round(p * n)
    return float(mean_stderr([1.0] * k + [0.0] * (n - k)))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar test: under H0 each of the b + c discordant pairs is equally likely to
    go either way, so b ~ Binomial(b + c, 1/2): scipy.stats.binomtest's two-sided p-value
    (= min(1, 2 P(X <= min(b, c)))); 1 without discordant pairs."""
    if b < 0 or c < 0:
        raise ValueError("discordant counts must be >= 0")
    if b + c == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(b, b + c, 0.5).pvalue)


def newcombe_paired_ci(a: int, b: int, c: int, d: int, confidence: float = 0.95) -> tuple[float, float]:
    """95% interval of p2 - p1 for paired binary outcomes (Newcombe 1998, method 10).

    2x2 table of (first, second): a = both 1, b = first 1 / second 0, c = first 0 / second 1, d = both 0.
    p1 = (a + b) / n, p2 = (a + c) / n, delta = p2 - p1 = (c - b) / n. Square-and-add of the two Wilson
    intervals, corrected for the correlation phi of the pairs (with Newcombe's continuity term)."""
    n = a + b + c + d
    if n <= 0:
        raise ValueError("newcombe_paired_ci needs n > 0")
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_ci(a + b, n, confidence)
    l2, u2 = wilson_ci(a + c, n, confidence)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    phi = 0.0
    if margins > 0:
        cross = a * d - b * c
        if cross > n / 2:
            phi = (cross - n / 2) / math.sqrt(margins)
        elif cross < 0:
            phi = cross / math.sqrt(margins)
    delta = p2 - p1
    # lower bound of p2 - p1: p2 at its lower limit, p1 at its upper limit (and vice versa)
    lo = delta - math.sqrt(max((p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2, 0.0))
    hi = delta + math.sqrt(max((u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2, 0.0))
    return max(-1.0, lo), min(1.0, hi)


def paired_bootstrap_ci(x: Sequence[float], y: Sequence[float], iters: int = BOOTSTRAP_ITERS,
                        seed: int = SEED, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of mean(y - x), resampling items (pairs) with replacement."""
    import numpy as np

    d = np.asarray(y, dtype=float) - np.asarray(x, dtype=float)
    if d.size == 0:
        raise ValueError("paired_bootstrap_ci needs at least one pair")
    rng = np.random.default_rng(seed)
    means = np.empty(iters)
    for start in range(0, iters, 1000):  # chunks keep memory flat for large n
        stop = min(iters, start + 1000)
        idx = rng.integers(0, d.size, size=(stop - start, d.size))
        means[start:stop] = d[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def paired_permutation_p(x: Sequence[float], y: Sequence[float], iters: int = BOOTSTRAP_ITERS,
                         seed: int = SEED) -> float:
    """Two-sided paired sign-flip permutation test of mean(y - x) = 0 (Monte Carlo, seeded;
    p = (1 + #{|mean*| >= |mean|}) / (1 + iters))."""
    import numpy as np

    d = np.asarray(y, dtype=float) - np.asarray(x, dtype=float)
    observed = abs(d.mean())
    if not np.any(d):
        return 1.0
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, iters, 1000):
        stop = min(iters, start + 1000)
        signs = rng.choice((-1.0, 1.0), size=(stop - start, d.size))
        hits += int((np.abs((signs * d).mean(axis=1)) >= observed - 1e-12).sum())
    return (1 + hits) / (1 + iters)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (same order as the input)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: (pvalues[i], i))
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def is_binary(values: Sequence[float]) -> bool:
    return all(v in (0, 1) for v in values)


@dataclass(frozen=True)
class Paired:
    """second - first on the same n items."""
    n: int
    first: float           # mean of the first side (e.g. the base model)
    second: float          # mean of the second side (e.g. a fine-tuned model)
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    test: str              # "McNemar exact" | "paired permutation"
    ci_method: str         # "Newcombe paired score" | "paired bootstrap"
    n_first_only: int | None = None   # binary: items right for the first side only (b)
    n_second_only: int | None = None  # binary: items right for the second side only (c)


def compare_paired(first: Sequence[float], second: Sequence[float], confidence: float = 0.95) -> Paired:
    """Paired comparison of per-item outcomes (aligned: first[i] and second[i] are the same item)."""
    if len(first) != len(second):
        raise ValueError(f"paired comparison needs equal lengths ({len(first)} != {len(second)})")
    n = len(first)
    if n == 0:
        raise ValueError("paired comparison needs at least one item")
    m1, m2 = sum(first) / n, sum(second) / n
    if is_binary(first) and is_binary(second):
        a = sum(1 for u, v in zip(first, second) if u == 1 and v == 1)
        b = sum(1 for u, v in zip(first, second) if u == 1 and v == 0)
        c = sum(1 for u, v in zip(first, second) if u == 0 and v == 1)
        d = n - a - b - c
        lo, hi = newcombe_paired_ci(a, b, c, d, confidence)
        return Paired(n, m1, m2, (c - b) / n, lo, hi, mcnemar_exact(b, c), "McNemar exact",
                      "Newcombe paired score", b, c)
    lo, hi = paired_bootstrap_ci(first, second, confidence=confidence)
    return Paired(n, m1, m2, m2 - m1, lo, hi, paired_permutation_p(first, second), "paired permutation",
                  "paired bootstrap")


def proportion_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, str]:
    """Interval of a mean of per-item values: Wilson for 0/1 items, else mean +- z * sample stderr."""
    n = len(values)
    if n == 0:
        raise ValueError("no items")
    if is_binary(values):
        lo, hi = wilson_ci(int(sum(values)), n, confidence)
        return lo, hi, "Wilson"
    from lm_eval.api.metrics import mean_stderr

    mean = sum(values) / n
    se = float(mean_stderr(list(values))) if n > 1 else float("nan")
    z = z_value(confidence)
    return mean - z * se, mean + z * se, "normal"
