"""A tiny llama (~3.2M params, almost all of it the tied 49,152-token embedding) with the embedded 135m model's
own tokenizer and chat template: what the export and demo tests use. The GGUF converter only accepts
tokenizers it recognises (SmolLM2's is one), and the demo needs a chat template."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE_135M = ROOT / "models" / "base" / "135m"


def build_tiny_smol(out: Path, seed: int = 0, init_range: float = 0.02) -> Path:
    """init_range 0.02 (transformers' default): near-uniform logits; 0.2: random but varied text (the demo's test)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(BASE_135M)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, initializer_range=init_range)
    model = LlamaForCausalLM(cfg)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
