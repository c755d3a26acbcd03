"""Every path of the project, anchored at the project root (never the current directory)."""
from __future__ import annotations

import os
from pathlib import Path

# src/ftcompare/paths.py -> project root is two levels above the package directory.
ROOT = Path(os.environ.get("FTCOMPARE_ROOT", Path(__file__).resolve().parents[2])).resolve()

CONFIGS = ROOT / "configs"
MODELS = ROOT / "models"                      # base models and every trained variant (gitignored)
EVAL_RESULTS = ROOT / "evaluation_results"    # lm-eval outputs at fixed paths (gitignored)
RESULTS = ROOT / "results"                    # analyzer tables and figures
TASKS = ROOT / "lm-evaluation-harness" / "tasks"  # our lm-eval task YAMLs (include_path)
HF_HOME = ROOT / ".cache" / "huggingface"     # project-local HF cache


def base_dir(model_alias: str) -> Path:
    """Where a prepared base model lives (packaged GGUF models are converted here once)."""
    return MODELS / "base" / model_alias


def run_dir(experiment: str, model_alias: str, method: str) -> Path:
    """Output folder of one (experiment, model, method) training run."""
    return MODELS / experiment / model_alias / method


def eval_dir(experiment: str, model_alias: str, method: str, variant: str = "merged") -> Path:
    """Fixed folder of one evaluation: <method>-<merged|adapter>, or 'base' for the untuned model."""
    name = "base" if method == "base" else f"{method}-{variant}"
    return EVAL_RESULTS / experiment / model_alias / name
