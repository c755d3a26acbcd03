"""The analysis of one experiment: its checked inputs and what is computed from them, once."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from .chat import chat_rows
from .checks import Inputs
from .compare import Comparison, Score, compute_comparisons, compute_scores


@dataclass(frozen=True)
class Analysis:
    inputs: Inputs
    comparisons: tuple[Comparison, ...]
    scores: Mapping[str, tuple[Score, ...]]    # task -> scores (every present cell x reported metric)
    chat_rows: tuple[dict, ...]                # (cell x generation task); empty without generation tasks
    continuous: tuple[Comparison, ...] = ()    # the multiple-choice tasks' re-derived metrics (report.mc)
    continuous_scores: Mapping[str, tuple[Score, ...]] = field(default_factory=dict)

    @property
    def experiment(self) -> str:
        return self.inputs.experiment


def analyze(inputs: Inputs) -> Analysis:
    return Analysis(inputs, compute_comparisons(inputs), compute_scores(inputs),
                    chat_rows(inputs) if inputs.chat_tasks() else (),
                    compute_comparisons(inputs, continuous=True), compute_scores(inputs, continuous=True))
