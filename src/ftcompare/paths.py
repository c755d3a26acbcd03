"""Every path of the project, anchored at one root, computed when asked (never the current directory).

The root is $FTCOMPARE_ROOT if set (tests point it at a temporary project), else the folder two levels above
this package (src/ftcompare/ -> the repository). `paths.MODELS` etc. are read through the module's
`__getattr__`, so they follow the root at call time: import the module (`from . import paths`), never the
names (`from .paths import MODELS` would freeze one root).
"""
from __future__ import annotations

import os
from pathlib import Path

# Derived folders, relative to the root.
_UNDER_ROOT = {
    "CONFIGS": ("configs",),
    "MODELS": ("models",),                           # base models and every trained variant (gitignored)
    "EVAL_RESULTS": ("evaluation_results",),         # lm-eval outputs at fixed paths (gitignored)
    "RESULTS": ("results",),                         # analyzer tables and figures
    "TASKS": ("lm-evaluation-harness", "tasks"),     # our lm-eval task YAMLs (include_path)
    "HF_HOME": (".cache", "huggingface"),            # project-local HF cache
}
NAMES = ("ROOT", *_UNDER_ROOT)


def root() -> Path:
    """The project root: $FTCOMPARE_ROOT, else the repository this package lives in."""
    env = os.environ.get("FTCOMPARE_ROOT")
    return Path(env).resolve() if env else Path(__file__).resolve().parents[2]


def __getattr__(name: str) -> Path:
    if name == "ROOT":
        return root()
    if name in _UNDER_ROOT:
        return root().joinpath(*_UNDER_ROOT[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def base_dir(model_alias: str) -> Path:
    """Where a prepared base model lives (packaged GGUF models are converted here once)."""
    return root() / "models" / "base" / model_alias


SEED_PREFIX = "seed-"


def seed_dir_name(seed: int) -> str:
    """The folder of one seed of a seeded experiment (train.seeds): seed-<k>."""
    return f"{SEED_PREFIX}{seed}"


def run_dir(experiment: str, model_alias: str, method: str, seed: int | None = None) -> Path:
    """Output folder of one (experiment, model, method[, seed]) training run; seed None: the only seed."""
    out = root() / "models" / experiment / model_alias / method
    return out / seed_dir_name(seed) if seed is not None else out


def eval_dir(experiment: str, model_alias: str, method: str, variant: str = "merged", seed: int | None = None) -> Path:
    """Fixed folder of one evaluation: <method>-<merged|adapter>, or 'base' for the untuned model; a seed's
    variant: <method>/seed-<k>-<variant> (the run's folder under models/, plus -<variant>, as without seeds)."""
    if method == "base":
        return root() / "evaluation_results" / experiment / model_alias / "base"
    if seed is not None:
        return root() / "evaluation_results" / experiment / model_alias / method / f"{seed_dir_name(seed)}-{variant}"
    return root() / "evaluation_results" / experiment / model_alias / f"{method}-{variant}"
