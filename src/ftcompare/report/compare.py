"""Scores with their intervals and the paired comparisons (every method vs base, every pair of methods),
Holm-adjusted per table (one task, metric and filter)."""
from __future__ import annotations

from dataclasses import dataclass, replace

from .checks import Inputs
from .load import RunId

ALPHA = 0.05


@dataclass(frozen=True)
class Comparison:
    task: str
    metric: str
    filter: str
    model: str
    first: RunId           # the reference side
    second: RunId
    kind: str              # "vs base" | "method vs method"
    paired: object         # stats.Paired
    p_holm: float = float("nan")

    @property
    def significant(self) -> bool:
        return self.p_holm < ALPHA

    @property
    def nominal(self) -> bool:
        """p < ALPHA before Holm's adjustment."""
        return self.paired.p_value < ALPHA

    def verdict(self) -> str:
        if self.significant:
            return "significant: " + ("higher" if self.paired.delta > 0 else "lower")
        if self.nominal:
            return "p < 0.05 unadjusted; not after Holm"
        return "no difference detected"


def compute_comparisons(inp: Inputs, continuous: bool = False) -> tuple[Comparison, ...]:
    """The paired comparisons of the reported metrics (continuous: of the metrics re-derived from multiple-choice
    log-likelihoods, report.mc; paired bootstrap + sign-flip permutation), Holm within each table."""
    from ..stats import compare_paired, holm

    comps = []
    for task in inp.tasks:
        for metric, filt in (inp.continuous(task) if continuous else inp.reported(task)):
            for model in inp.models():
                base = RunId(model, "base")
                others = [c for c in inp.method_cells(model) if inp.task_result(c, task)]
                pairs = [(base, c, "vs base") for c in others]
                # between methods: within one training seed (a seeded experiment's spread across seeds: seeds.py)
                pairs += [(a, b, "method vs method") for i, a in enumerate(others) for b in others[i + 1:]
                          if a.seed == b.seed]
                for first, second, kind in pairs:
                    t1, t2 = inp.task_result(first, task), inp.task_result(second, task)
                    if t1 is None or t2 is None or not continuous and \
                            ((metric, filt) not in t1.values or (metric, filt) not in t2.values):
                        continue
                    o1, o2 = t1.samples.outcomes(metric, filt), t2.samples.outcomes(metric, filt)
                    if not o1 or set(o1) != set(o2):
                        continue  # refused by the comparability checks already
                    ids = sorted(o1)
                    paired = compare_paired([o1[i] for i in ids], [o2[i] for i in ids])
                    comps.append(Comparison(task, metric, filt, model, first, second, kind, paired))
    # Holm family: all comparisons of one table = one (task, metric, filter): "does anything differ here?"
    families: dict[tuple, list[int]] = {}
    for i, c in enumerate(comps):
        families.setdefault((c.task, c.metric, c.filter), []).append(i)
    for family in families.values():
        for i, p in zip(family, holm([comps[i].paired.p_value for i in family])):
            comps[i] = replace(comps[i], p_holm=p)
    return tuple(comps)


@dataclass(frozen=True)
class Score:
    """One evaluated model's score on one (task, metric, filter), with its 95% CI from the per-item values."""
    task: str
    metric: str
    filter: str
    run: RunId
    n: int
    value: float
    ci_low: float          # rounded to 6 digits (as in the CSV)
    ci_high: float
    ci_method: str
    stderr: float | None   # lm-eval's
    n_shot: object
    version: object
    limit: object


def compute_scores(inp: Inputs, continuous: bool = False) -> dict[str, tuple[Score, ...]]:
    """task -> scores of every present cell, metric by metric (reported order), cells in grid order.
    continuous: the re-derived metrics (report.mc), each the mean of its per-item values, without an lm-eval
    stderr."""
    import math

    from ..stats import proportion_ci

    out = {}
    for task in inp.tasks:
        rows = []
        for metric, filt in (inp.continuous(task) if continuous else inp.reported(task)):
            for cell in inp.cells:
                tr = inp.task_result(cell, task)
                if tr is None or not continuous and (metric, filt) not in tr.values:
                    continue
                items = list(tr.samples.outcomes(metric, filt).values())
                if not items:
                    continue
                lo, hi, how = proportion_ci(items)
                value = math.fsum(items) / len(items) if continuous else tr.values[(metric, filt)]
                rows.append(Score(task, metric, filt, cell, len(items) if continuous else tr.n, value, round(lo, 6),
                                  round(hi, 6), how, None if continuous else tr.stderrs.get((metric, filt)),
                                  tr.n_shot, tr.version, tr.limit))
        out[task] = tuple(rows)
    return out


def find_score(scores: tuple[Score, ...], metric: str, filt: str, cell: RunId) -> Score | None:
    return next((s for s in scores if (s.metric, s.filter, s.run) == (metric, filt, cell)), None)
