"""Building blocks: load a base model / tokenizer for a run, apply a method (full, LoRA, QLoRA)."""
from __future__ import annotations

import functools
import math
import os
from pathlib import Path

from .assets import base_model_path
from .config import MethodConfig, ModelConfig, RunConfig
from .errors import FtcError


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def device_map_for(method: MethodConfig):
    """4-bit weights must be placed at load time: one GPU per process (DDP), or the CPU."""
    import torch

    if method.quantization is None:
        return None
    if torch.cuda.is_available():
        return {"": int(os.environ.get("LOCAL_RANK", 0))}
    return {"": "cpu"}


def bnb_config(method: MethodConfig):
    from transformers import BitsAndBytesConfig

    q = method.quantization
    return BitsAndBytesConfig(
        load_in_4bit=q.load_in_4bit,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=torch_dtype(q.compute_dtype),
    )


def _check_local_weights(path: str) -> None:
    """Weights are loaded from safetensors only: refuse a folder that has only pickles, or a corrupt file."""
    p = Path(path)
    if not p.is_dir():
        return
    st = list(p.glob("*.safetensors"))
    if not st:
        raise FtcError(f"{p}: no *.safetensors weights (pickled .bin weights are never loaded); re-create the model")
    from safetensors import safe_open

    for f in st:
        try:
            with safe_open(str(f), framework="pt") as fh:
                fh.keys()
        except Exception as e:  # noqa: BLE001 - any parse failure means the same thing to the user
            raise FtcError(f"{f}: corrupt safetensors file ({type(e).__name__}); delete it and re-run its make target") from e


def load_tokenizer(model: ModelConfig, path: str | None = None, chat: bool = False):
    """The model's tokenizer; chat=True: with the chat template the model config asks for (ftcompare.chat),
    special tokens added if ChatML is installed on a vocabulary without them (then use align_vocab)."""
    from transformers import AutoTokenizer

    from .hub import errors, model_ref

    with errors(model_ref(model) if path is None else None):
        tok = AutoTokenizer.from_pretrained(path or base_model_path(model), trust_remote_code=model.trust_remote_code,
                                            revision=model.revision if path is None and model.source == "hub" else None)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if chat:
        from .chat import prepare_tokenizer

        prepare_tokenizer(tok, model)  # idempotent: call it again for what was done
    return tok


def align_vocab(model, tokenizer, seed: int = 0) -> list[int]:
    """Grow the embedding (and an untied output layer) to the tokenizer's vocabulary when tokens were added
    (ChatML on a base model). New rows start at the mean of the old ones (transformers' mean resizing,
    seeded). Returns the ids of the new rows (what LoRA must make trainable)."""
    old = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= old:
        return []
    from transformers import set_seed

    set_seed(seed)  # the new rows are sampled around the mean: the same rows every time
    model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.config.vocab_size = len(tokenizer)
    return list(range(old, len(tokenizer)))


def load_base(model: ModelConfig, method: MethodConfig | None = None, path: str | None = None, dtype: str | None = None):
    """The untuned model in the model's dtype (or `dtype`), its linear layers 4-bit quantized when the method
    asks for it. The parameters that stay unquantized (norms, embeddings) keep the same dtype either way, so
    LoRA and QLoRA differ only in the quantized linear weights (the precision policy)."""
    from transformers import AutoModelForCausalLM

    src = path or base_model_path(model)
    _check_local_weights(src)
    kwargs = dict(dtype=torch_dtype(dtype or model.dtype), trust_remote_code=model.trust_remote_code,
                  use_safetensors=True)
    if path is None and model.source == "hub" and model.revision:
        kwargs["revision"] = model.revision
    if method is not None and method.quantization is not None:
        kwargs["quantization_config"] = bnb_config(method)
        kwargs["device_map"] = device_map_for(method)
    from .hub import errors, model_ref

    with errors(model_ref(model) if path is None else None):
        model = AutoModelForCausalLM.from_pretrained(src, **kwargs)
    return exact_4bit_on_cpu(model)


def exact_4bit_on_cpu(model):
    """On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights for a bf16 kernel the first time a
    Linear4bit runs in eval mode: activations are rounded to bf16 (~3e-3 logit error on a test model).
    Training mode never does that. Turn it off so that validation loss, adapter evaluation and the
    merged model all compute the function that was trained (fp32 dequantize + matmul)."""
    import sys

    bnb = sys.modules.get("bitsandbytes")  # a 4-bit layer implies it is loaded; importing it costs ~1.5 s
    if bnb is None:
        return model
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
    return model


def lora_config(run: RunConfig, new_token_ids: list[int] | None = None):
    """new_token_ids: rows added to the embedding (ChatML on a base model): trained through peft's
    trainable_token_indices (only those rows; tied output weights follow), saved with the adapter."""
    from peft import LoraConfig

    lo = run.method.lora
    extra = {"trainable_token_indices": {"embed_tokens": list(new_token_ids)}} if new_token_ids else {}
    return LoraConfig(r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout, bias="none", task_type="CAUSAL_LM",
                      target_modules=list(lo.target_modules or run.model.lora_target_modules),
                      use_dora=lo.use_dora, use_rslora=lo.use_rslora, **extra)


def build_for_training(run: RunConfig, tokenizer=None):
    """Base model + method, seeded before the adapter is created (LoRA init draws from the global RNG).
    With a tokenizer that has more tokens than the model (ChatML installed), the embeddings grow first."""
    from transformers import set_seed

    set_seed(run.train.seed)
    # Precision policy, one rule for every method: trainable parameters live in fp32 (master weights; the
    # Trainer's bf16=True runs the compute in bf16 autocast); frozen weights stay in the model's dtype (bf16 on
    # GPUs) or NF4. So full fine-tuning loads fp32 weights (bf16 weights would swallow updates below their
    # resolution: 2^-8 at 1.0), LoRA/QLoRA adapters are fp32 (peft's default), and no method-specific cast runs:
    # peft's prepare_model_for_kbit_training (QLoRA only) would cast QLoRA's frozen norms and embeddings to
    # fp32 while LoRA's stay bf16, a difference that is not the method.
    model = load_base(run.model, run.method, dtype=None if run.method.uses_adapter else "float32")
    model.config.use_cache = False
    if run.train.padding_free:
        use_segment_attention(model)
    new_ids = align_vocab(model, tokenizer, run.train.seed) if tokenizer is not None else []
    if run.method.uses_adapter:
        from peft import get_peft_model

        set_seed(run.train.seed)
        missing = [m for m in (run.method.lora.target_modules or run.model.lora_target_modules)
                   if not any(n.endswith("." + m) for n, _ in model.named_modules())]
        if missing:
            raise FtcError(f"model '{run.model.alias}' has no module(s) named {missing}; fix lora_target_modules "
                           f"in configs/models/{run.model.alias}.yaml")
        model = get_peft_model(model, lora_config(run, new_ids))
        fast_dropout(model)
    return model


@functools.lru_cache(maxsize=1)
def _dropout_class():
    import torch

    class _MaskedScale(torch.autograd.Function):
        """y = x * keep * scale, the boolean keep-mask saved for the backward pass (as nn.Dropout does)."""

        @staticmethod
        def forward(ctx, x, keep, scale: float):
            ctx.save_for_backward(keep)
            ctx.scale = scale
            return x.mul(keep).mul_(scale)

        @staticmethod
        def backward(ctx, grad):
            (keep,) = ctx.saved_tensors
            return grad.mul(keep).mul_(ctx.scale), None, None

    class FastDropout(torch.nn.Dropout):
        """nn.Dropout with the same p and 1/(1-p) scaling whose keep-mask comes from 16-bit random integers,
        four from each 64-bit draw of torch's generator, instead of one Bernoulli draw per element: on a CPU,
        torch's bernoulli_ was 18% of a LoRA training step on 135m (torch.profiler, 420 calls in 2 steps). p is
        rounded to a multiple of 1/65536 (0.05 -> 0.050003). Same generator, so seeding and exact resume hold."""

        def forward(self, x):
            if not self.training or self.p == 0:
                return x
            n = x.numel()
            bits = torch.randint(-2 ** 63, 2 ** 63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
            keep = bits.view(torch.int16)[:n].view(x.shape) >= round(self.p * 65536) - 32768
            return _MaskedScale.apply(x, keep, 1.0 / (1.0 - self.p))

    return FastDropout


def fast_dropout(model) -> int:
    """Replace the LoRA dropout modules (peft's nn.Dropout, p > 0) of a model on the CPU with FastDropout: the
    same distribution, drawn faster. On a GPU nn.Dropout is one fused kernel and stays. -> modules replaced."""
    import torch

    if next(model.parameters()).device.type != "cpu":
        return 0
    cls, n = _dropout_class(), 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if isinstance(drops, torch.nn.ModuleDict):
            for name, d in list(drops.items()):
                if type(d) is torch.nn.Dropout and d.p > 0:
                    drops[name] = cls(d.p)
                    n += 1
    return n


def precision(model, bf16: bool) -> dict:
    """What the precision policy gave this model: the dtypes of its parameters by kind (trainable; frozen
    norms, embeddings, linear weights; 4-bit packed weights as nf4/fp4) and the compute dtype."""
    kinds: dict[str, set] = {}
    for name, p in model.named_parameters():
        qs = getattr(p, "quant_state", None)
        if p.requires_grad:
            kind = "trainable"
        elif "norm" in name:
            kind = "frozen norms"
        elif "embed" in name or "lm_head" in name:
            kind = "frozen embeddings"
        else:
            kind = "frozen linear"
        dtype = getattr(qs, "quant_type", None) or ("4-bit" if qs is not None else str(p.dtype).replace("torch.", ""))
        kinds.setdefault(kind, set()).add(dtype)
    return {**{k: "/".join(sorted(v)) for k, v in sorted(kinds.items())},
            "compute": "bf16 autocast" if bf16 else "as stored"}


def count_params(model) -> tuple[int, int]:
    """(trainable, total); 4-bit packed weights are counted by their logical shape."""
    trainable = total = 0
    for p in model.parameters():
        qs = getattr(p, "quant_state", None)
        n = math.prod(qs.shape) if qs is not None else p.numel()
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


SEGMENT_ATTENTION = "ftc_segment_sdpa"


def _segment_bounds(pos, _last: list = [None, None]) -> list[tuple[int, int]] | None:
    """[(start, end)] of the examples of one flattened row (its position ids restart at 0 at each example), or None
    if `pos` is not such a row. Every layer of one forward gets the same tensor: computed once per forward."""
    if _last[0] is pos:
        return _last[1]
    starts = (pos[0] == 0).nonzero().flatten().tolist()
    bounds = None
    if starts and starts[0] == 0:
        bounds = list(zip(starts, starts[1:] + [pos.shape[1]]))
    _last[0], _last[1] = pos, bounds
    return bounds


def segment_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Attention for padding-free training: torch's scaled_dot_product_attention run causally on each example of
    the flattened row apart. transformers' own sdpa path for such a row builds a block-diagonal mask over the whole
    row, so it computes (and on a CPU pays for) attention between every pair of positions of the micro-batch,
    ~8x the pairs that count at 8 examples per row; here only the pairs within an example are computed. Any other
    input (a mask, a batch of rows, a KV cache, no position ids) goes to transformers' sdpa unchanged."""
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    pos = kwargs.get("position_ids")
    bounds = None
    if (attention_mask is None and pos is not None and query.shape[0] == 1 and pos.shape == (1, query.shape[2])
            and key.shape[2] == query.shape[2]):
        bounds = _segment_bounds(pos)
    if bounds is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    n_rep = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    sizes = [b - a for a, b in bounds]
    # split, not slicing: the backward of a split is one concatenation, that of each slice a zero-filled full-size
    # gradient added to the others
    out = torch.cat([torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling,
                                                                      is_causal=True)
                     for q, k, v in zip(query.split(sizes, 2), key.split(sizes, 2), value.split(sizes, 2))], dim=2)
    return out.transpose(1, 2).contiguous(), None


def use_segment_attention(model) -> bool:
    """Switch a model that uses sdpa to segment_sdpa (registered with transformers' AttentionInterface; no mask
    function is registered, so transformers builds no mask for it). Other implementations (eager, flash) stay.
    -> whether it switched."""
    from transformers import AttentionInterface

    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(SEGMENT_ATTENTION, segment_sdpa)
    model.set_attn_implementation(SEGMENT_ATTENTION)
    return True
