"""Merge a trained run into a plain HF checkpoint at <run>/merged/ (what `evaluate ... merged` loads).

- full:  the trained model is already plain; merged/ hard-links final/'s files (no copy).
- lora:  base (model dtype) + adapter -> merge_and_unload.
- qlora: base quantized to NF4 exactly as in training, dequantized with bitsandbytes' own
         dequantize_4bit (the weights its 4-bit forward uses), + adapter -> merge_and_unload: the merged
         model computes what was trained (tests/test_train.py: max |logit diff| <= 1e-4), unlike merging
         onto the original fp32 base (quantization error, ~7e-2 on 135m). The NF4 base is also saved to
         <run>/nf4-base/ so the un-merged adapter can be evaluated on the base it was trained on.
"""
from __future__ import annotations

import os
from pathlib import Path

from . import paths
from .config import RunConfig
from .errors import FtcError
from .io import atomic_dir, atomic_write_json, read_json
from .manifest import manifest, now


def dequantize_exact(model, dtype):
    """Replace every bitsandbytes Linear4bit by an nn.Linear holding bnb.functional.dequantize_4bit(W):
    the very weights the 4-bit forward multiplies by (training saw exactly these). transformers'
    model.dequantize() differed from them by up to 0.11 per weight on a test model."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbF
    import torch

    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, bnb.nn.Linear4bit):
                w = bnbF.dequantize_4bit(child.weight.data, child.weight.quant_state).to(dtype)
                lin = torch.nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                                      device=w.device, dtype=dtype)
                with torch.no_grad():
                    lin.weight.copy_(w)
                    if child.bias is not None:
                        lin.bias.copy_(child.bias.to(dtype))
                setattr(module, child_name, lin)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            setattr(model, attr, None)
    model.is_quantized = False
    return model.to(dtype)


def merge(run: RunConfig) -> Path:
    from .modeling import align_vocab, load_base, load_tokenizer, torch_dtype

    out = run.dir
    final = out / "final"
    summary = out / "train_summary.json"
    if not summary.is_file() or not final.is_dir():
        raise FtcError(f"{run.label} is not trained yet ({summary.relative_to(paths.ROOT)} missing); run "
                       f"`bash scripts/train.sh {run.model.alias} {run.method.name}"
                       f"{'' if run.seed is None else f' --seed {run.seed}'}` first")
    from .hub import check_run

    check_run(run)  # hub base model reachable at its pinned revision (seconds), before anything is written
    train_hash = read_json(summary)["config_hash"]
    if train_hash != run.hash():
        raise FtcError(f"{summary.relative_to(paths.ROOT)} does not match {out.relative_to(paths.ROOT)}/config.json "
                       f"({train_hash} != {run.hash()}): the run was interrupted or changed; re-train (make all does)")
    if run.method.uses_adapter and not (final / "adapter_config.json").is_file():
        raise FtcError(f"{final.relative_to(paths.ROOT)} has no adapter_config.json: not a LoRA adapter; re-train")

    chat = run.data.format == "chat"
    tokenizer = load_tokenizer(run.model, str(final), chat=chat)
    with atomic_dir(out / "merged") as tmp:
        if not run.method.uses_adapter:
            for f in final.iterdir():
                if f.is_file():
                    os.link(f, Path(tmp) / f.name)
            how = "full fine-tuning: final/ weights hard-linked"
        else:
            from peft import PeftModel

            base = load_base(run.model, run.method)
            added = align_vocab(base, tokenizer)  # ChatML tokens added for training: their rows are in the adapter
            if run.method.quantization is not None:
                with atomic_dir(out / "nf4-base") as nf4:
                    base.save_pretrained(nf4)
                    tokenizer.save_pretrained(nf4)
                base = dequantize_exact(base, torch_dtype(run.model.dtype))
                how = "NF4 base dequantized (bitsandbytes dequantize_4bit), adapter merged (merge_and_unload)"
            else:
                how = "adapter merged into the base (merge_and_unload)"
            how += f"; {len(added)} added token rows (trainable_token_indices) merged" if added else ""
            model = PeftModel.from_pretrained(base, str(final))
            model = model.merge_and_unload()
            model = model.to(torch_dtype(run.model.dtype))
            if getattr(model.config, "quantization_config", None) is not None:
                del model.config.quantization_config
            model.config.use_cache = True
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        atomic_write_json(Path(tmp) / "merge_manifest.json", {
            "method": run.method.name, "how": how, "config_hash": run.hash(), "finished": now(),
            "dtype": run.model.dtype, **manifest()})
    print(f"[merge] {run.label}: {how} -> {(out / 'merged').relative_to(paths.ROOT)}", flush=True)
    return out / "merged"
