"""Seed variation of a seeded experiment (train.seeds): per (model, method variant, task, metric) each seed's
score, their mean and spread, and whether a difference between methods (or from the base model) exceeds the
seed-to-seed difference.

The rule (stated in the record): the unit is one training run (one seed), the score of a run is its mean over the
same evaluation items. A method vs the base model (evaluated once, no seed): one-sample t-test of the k seed scores
against the base score (df k-1). Method vs method: two-sample t-test (pooled variance) of their seed scores
(df k1+k2-2). Holm-adjusted within each (task, metric) table, like the per-seed paired tables. "Exceeds the
seed-to-seed variation" = Holm p < ALPHA. With no spread at all (every seed of both sides the same score) the
t-test is undefined: no verdict (n/a), never counted as exceeding; likewise with fewer than 2 seeds. The per-seed
paired tests (section 4) answer a different question: whether this seed's models differ on these items.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace

from .analysis import Analysis
from .compare import ALPHA
from .display import fmt_p, md_table, metric_display, metric_name
from .load import RunId

SEED_COLUMNS = ["experiment", "task", "metric", "filter", "model", "method", "variant", "k", "seeds", "values",
                "mean", "sd", "min", "max"]
SEED_TEST_COLUMNS = ["experiment", "task", "metric", "filter", "model", "first", "second", "k_first", "k_second",
                     "first_mean", "second_mean", "delta", "seed_sd", "test", "p_value", "p_holm", "verdict"]


@dataclass(frozen=True)
class Spread:
    """One method variant's scores over the seeds of one (task, metric, filter, model)."""
    task: str
    metric: str
    filter: str
    model: str
    method: str
    variant: str
    seeds: tuple[int, ...]
    values: tuple[float, ...]

    @property
    def k(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def sd(self) -> float:
        """Sample standard deviation across seeds (n-1); nan with one seed."""
        return statistics.stdev(self.values) if self.k > 1 else float("nan")

    @property
    def label(self) -> str:
        return RunId(self.model, self.method, self.variant).label


@dataclass(frozen=True)
class SeedTest:
    task: str
    metric: str
    filter: str
    model: str
    first: str               # "base" or a method variant's label
    second: str
    k_first: int             # 1 for the base model (evaluated once)
    k_second: int
    first_mean: float
    second_mean: float
    seed_sd: float           # the seed-to-seed SD the delta is held against (pooled for two methods)
    test: str
    p_value: float
    p_holm: float = float("nan")

    @property
    def delta(self) -> float:
        return self.second_mean - self.first_mean

    @property
    def exceeds(self) -> bool:
        return self.p_holm < ALPHA

    def verdict(self) -> str:
        if self.p_value != self.p_value:
            few = self.k_second < 2 or (self.first != "base" and self.k_first < 2)   # (base: evaluated once)
            return "n/a (fewer than 2 seeds)" if few else "n/a (no spread across seeds: t undefined)"
        return "exceeds the seed-to-seed variation" if self.exceeds else "within the seed-to-seed variation"


@dataclass(frozen=True)
class SeedAnalysis:
    seeds: tuple[int, ...]
    spreads: tuple[Spread, ...]
    tests: tuple[SeedTest, ...]


def _t_p(t: float, df: int) -> float:
    from scipy.stats import t as student_t

    return float(2 * student_t.sf(abs(t), df))


def _vs_base(s: Spread, base: float) -> tuple[float, float]:
    """(sd, p) of a one-sample t-test of the seed scores against the base score."""
    if s.k < 2:
        return float("nan"), float("nan")
    if s.sd == 0:
        return 0.0, float("nan")
    return s.sd, _t_p((s.mean - base) / (s.sd / math.sqrt(s.k)), s.k - 1)


def _between(a: Spread, b: Spread) -> tuple[float, float]:
    """(pooled sd, p) of a two-sample t-test (pooled variance) of two methods' seed scores."""
    if a.k < 2 or b.k < 2:
        return float("nan"), float("nan")
    df = a.k + b.k - 2
    pooled = math.sqrt(((a.k - 1) * a.sd ** 2 + (b.k - 1) * b.sd ** 2) / df)
    if pooled == 0:
        return 0.0, float("nan")
    return pooled, _t_p((b.mean - a.mean) / (pooled * math.sqrt(1 / a.k + 1 / b.k)), df)


def analyze_seeds(an: Analysis) -> SeedAnalysis | None:
    """The seed analysis of a seeded experiment; None for a single-seed one."""
    from ..stats import holm

    inp = an.inputs
    seeds = [s for s in inp.seeds if s is not None]
    if not seeds:
        return None
    spreads, tests = [], []
    for task in inp.tasks:
        # the reported metrics, then the continuous ones re-derived from multiple-choice samples (report.mc)
        keys = [(k, an.scores) for k in inp.reported(task)] + [(k, an.continuous_scores) for k in inp.continuous(task)]
        for (metric, filt), by_task in keys:
            scores = [s for s in by_task.get(task, ()) if (s.metric, s.filter) == (metric, filt)]
            for model in inp.models():
                base = next((s.value for s in scores if s.run == RunId(model, "base")), None)
                groups: dict[tuple[str, str], list] = {}
                for s in scores:
                    if s.run.model == model and not s.run.is_base and s.run.seed is not None:
                        groups.setdefault((s.run.method, s.run.variant), []).append(s)
                mine = []
                for (method, variant), ss in groups.items():
                    ss = sorted(ss, key=lambda s: s.run.seed)
                    mine.append(Spread(task, metric, filt, model, method, variant, tuple(s.run.seed for s in ss),
                                       tuple(s.value for s in ss)))
                spreads += mine
                if base is not None:
                    for s in mine:
                        sd, p = _vs_base(s, base)
                        tests.append(SeedTest(task, metric, filt, model, "base", s.label, 1, s.k, base, s.mean, sd,
                                              "one-sample t (seeds vs base)", p))
                for i, a in enumerate(mine):
                    for b in mine[i + 1:]:
                        sd, p = _between(a, b)
                        tests.append(SeedTest(task, metric, filt, model, a.label, b.label, a.k, b.k, a.mean, b.mean,
                                              sd, "two-sample t (pooled), seeds", p))
    families: dict[tuple, list[int]] = {}
    for i, t in enumerate(tests):
        if t.p_value == t.p_value:
            families.setdefault((t.task, t.metric, t.filter), []).append(i)
    for family in families.values():
        for i, p in zip(family, holm([tests[i].p_value for i in family])):
            tests[i] = replace(tests[i], p_holm=p)
    return SeedAnalysis(tuple(seeds), tuple(spreads), tuple(tests))


def _r(x: float) -> float | None:
    return None if x != x else round(x, 6)


def spread_rows(experiment: str, sa: SeedAnalysis) -> list[dict]:
    return [{"experiment": experiment, "task": s.task, "metric": s.metric, "filter": s.filter, "model": s.model,
             "method": s.method, "variant": s.variant, "k": s.k, "seeds": " ".join(map(str, s.seeds)),
             "values": " ".join(repr(round(v, 6)) for v in s.values), "mean": _r(s.mean), "sd": _r(s.sd),
             "min": _r(min(s.values)), "max": _r(max(s.values))} for s in sa.spreads]


def test_rows(experiment: str, sa: SeedAnalysis) -> list[dict]:
    return [{"experiment": experiment, "task": t.task, "metric": t.metric, "filter": t.filter, "model": t.model,
             "first": t.first, "second": t.second, "k_first": t.k_first, "k_second": t.k_second,
             "first_mean": _r(t.first_mean), "second_mean": _r(t.second_mean), "delta": _r(t.delta),
             "seed_sd": _r(t.seed_sd), "test": t.test, "p_value": _r(t.p_value), "p_holm": _r(t.p_holm),
             "verdict": t.verdict()} for t in sa.tests]


def seed_markdown(sa: SeedAnalysis, task: str) -> str:
    """One task: each method variant's seed scores, mean, SD and range; then the tests against seed variation."""
    parts = []
    for metric, filt in dict.fromkeys((s.metric, s.filter) for s in sa.spreads if s.task == task):
        d = metric_display(metric)
        rows = [[s.model, s.label, s.k, " / ".join(f"{d.value(v)} (seed {k})" for k, v in zip(s.seeds, s.values)),
                 d.value(s.mean), "n/a" if s.k < 2 else d.value(s.sd, 1),
                 f"{d.value(min(s.values))}–{d.value(max(s.values))}"]
                for s in sa.spreads if (s.task, s.metric, s.filter) == (task, metric, filt)]
        unit = "%" if d.percent else d.unit
        parts.append(f"**{task}, {metric_name(metric, filt)}** (scores in {unit}; SD across seeds, n−1)\n\n"
                     + md_table(["model", "evaluated", "seeds", "score per seed", "mean", "SD", "range"], rows,
                                "llrlrrl"))
        rows = [[t.model, f"{t.second} − {t.first}", d.delta(t.delta), "n/a" if t.seed_sd != t.seed_sd else
                 d.value(t.seed_sd, 1), t.test, f"{fmt_p(t.p_value)} / {fmt_p(t.p_holm)}", t.verdict()]
                for t in sa.tests if (t.task, t.metric, t.filter) == (task, metric, filt)]
        if rows:
            parts.append(md_table(["model", "difference of seed means", "Δ" + (" pts" if d.percent else ""),
                                   "seed SD", "test", "p / p Holm", "verdict"], rows, "llrrllr"))
    return "\n\n".join(parts)
