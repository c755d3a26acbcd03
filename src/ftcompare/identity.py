"""Run identity: which model a result belongs to, as a typed value formatted in one place, never parsed back."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class RunId:
    """One evaluated model: the untuned base (method "base", no variant) or a method's merged/adapter variant."""
    model: str
    method: str
    variant: str = ""            # "" for base
    seed: int | None = None      # training seed, when runs of several seeds are compared (None: the only one)

    @property
    def is_base(self) -> bool:
        return self.method == "base"

    @property
    def label(self) -> str:
        return format_run(self)


def format_run(run: RunId) -> str:
    """The one text form of a run in tables, figures and the record: base | <method>-<variant>[ seed <s>]."""
    text = "base" if run.is_base else f"{run.method}-{run.variant}"
    return text if run.seed is None else f"{text} seed {run.seed}"
