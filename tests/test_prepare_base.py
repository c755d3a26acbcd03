"""`ftcompare prepare-base` on the embedded model: the packaged Q4_1 GGUF converted to fp32 safetensors, checked
against the GGUF read by two other paths: the `gguf` package's own reader and dequantizer (tensor by tensor),
and transformers' gguf_file= loader (the logits of a fixed prompt)."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, use_root

pytestmark = pytest.mark.slow   # converts 135M parameters (~30 s) and loads the GGUF a second time

# GGUF tensor -> HF name; only tensors that llama's GGUF export does not permute (q/k are permuted)
SAME_LAYOUT = {"token_embd.weight": "model.embed_tokens.weight", "blk.0.ffn_down.weight": "model.layers.0.mlp.down_proj.weight",
               "blk.29.attn_v.weight": "model.layers.29.self_attn.v_proj.weight", "output_norm.weight": "model.norm.weight",
               "blk.7.attn_norm.weight": "model.layers.7.input_layernorm.weight"}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from ftcompare import assets, config

    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("prep") / "proj"
    shutil.copytree(ROOT / "configs", root / "configs")
    (root / "models").mkdir()                       # no link to the prepared base: convert for real
    use_root(mp, root)
    model = config.load("models", "135m")
    out = assets.prepare_base(model)
    yield model, out
    mp.undo()


def _gguf_path(model) -> Path:
    return Path(importlib.util.find_spec(model.package.replace("-", "_")).submodule_search_locations[0]) / model.gguf_file


def test_converted_checkpoint_shape_and_manifest(converted):
    from safetensors import safe_open

    model, out = converted
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"] == 134_515_008 and manifest["eos_token"] == "<|im_end|>" and manifest["has_chat_template"]
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["vocab_size"], cfg["tie_word_embeddings"]) == \
        (30, 576, 49152, True)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert len(keys) == 272                      # 30 x 9 per layer + embeddings + final norm (lm_head tied)
        assert f.get_slice("model.embed_tokens.weight").get_shape() == [49152, 576]
        assert f.get_slice("model.layers.0.mlp.down_proj.weight").get_shape() == [576, 1536]
        assert {str(f.get_tensor(k).dtype) for k in keys[:5]} == {"torch.float32"}


def test_tensors_equal_the_gguf_dequantized_by_the_gguf_package(converted):
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors import safe_open

    model, out = converted
    reader = GGUFReader(str(_gguf_path(model)))
    assert len(reader.tensors) == 272
    by_name = {t.name: t for t in reader.tensors}
    with safe_open(str(out / "model.safetensors"), "np") as f:
        for gname, hname in SAME_LAYOUT.items():
            t = by_name[gname]
            want = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(f.get_tensor(hname).shape)
            got = f.get_tensor(hname)
            assert np.max(np.abs(got - want)) <= 1e-6, gname
            assert np.abs(want).max() > 0, gname


def test_logits_equal_the_gguf_loaded_by_transformers(converted):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    model, out = converted
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        ours = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)(ids).logits
        gguf_model = AutoModelForCausalLM.from_pretrained(str(_gguf_path(model).parent), gguf_file=model.gguf_file,
                                                          dtype=torch.float32)
        theirs = gguf_model(ids).logits
    assert ours.shape == theirs.shape == (1, ids.shape[1], 49152)
    assert float((ours - theirs).abs().max()) < 1e-4
