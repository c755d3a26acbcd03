"""The process environment every stage sets before Hugging Face libraries are imported."""
from __future__ import annotations

import os

from . import paths


def setup_environment(offline: bool) -> None:
    """Project-local HF cache; offline experiments never reach a hub. Must run before HF libraries import."""
    os.environ.setdefault("HF_HOME", str(paths.HF_HOME))
    if offline:
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
