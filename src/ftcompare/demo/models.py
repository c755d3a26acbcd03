"""Which models the demo serves, and a small pool that loads them lazily from local folders only."""
from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from pathlib import Path

from .. import config, paths
from ..errors import FtcError

BASE = "base"


def served_models(experiment: str, model_alias: str) -> dict[str, Path]:
    """{"base": the untuned model, <method>: models/<experiment>/<model>/<method>/merged, ...} for every merged
    variant of the experiment that exists (the app says when there is none)."""
    from ..assets import base_model_path

    exp = config.load("experiments", experiment)
    model = config.load("models", model_alias)
    base = Path(base_model_path(model))
    if not (base / "config.json").is_file():
        raise FtcError(f"model '{model_alias}' is not a local checkpoint ({base}); the demo serves local models only: "
                       "run make setup, or use --model 135m")
    out = {BASE: base}
    for method in exp.methods:
        merged = paths.run_dir(exp.name, model_alias, method) / "merged"
        if (merged / "merge_manifest.json").is_file():
            out[method] = merged
    return out


class ModelPool:
    """Loads a model on first use, keeps at most `max_loaded` (least recently used goes first). Local files only,
    no remote code; eager attention so that the Inspect tab can read attention weights."""

    def __init__(self, sources: dict[str, Path], max_loaded: int = 2):
        self.sources = dict(sources)
        self.max_loaded = max(1, max_loaded)
        self._loaded: OrderedDict[str, tuple] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return list(self.sources)

    def variants(self) -> list[str]:
        return [n for n in self.sources if n != BASE]

    def config(self, name: str) -> dict:
        import json

        return json.loads((Path(self.sources[name]) / "config.json").read_text())

    def get(self, name: str):
        """(model, tokenizer) of `name`."""
        if name not in self.sources:
            raise FtcError(f"no model '{name}' here; choose one of {', '.join(self.sources)}")
        with self._lock:
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return self._loaded[name]
            while len(self._loaded) >= self.max_loaded:
                self._loaded.popitem(last=False)
                gc.collect()
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            src = str(self.sources[name])
            tok = AutoTokenizer.from_pretrained(src, local_files_only=True, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, local_files_only=True,
                                                         trust_remote_code=False, use_safetensors=True,
                                                         attn_implementation="eager").eval()
            self._loaded[name] = (model, tok)
            return model, tok


def context_length(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", 2048))
