"""modeling.fast_dropout: peft's LoRA dropout on a CPU, drawn from 16-bit random integers. Same distribution as
nn.Dropout (keep rate 1-p, kept values scaled by 1/(1-p)), the gradient is the same mask and scale, it follows
torch's seed, and it replaces exactly the LoRA dropout modules with p > 0."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def _drop(p):
    from ftcompare.modeling import _dropout_class

    return _dropout_class()(p)


@pytest.mark.parametrize("p", [0.05, 0.3])
def test_keep_rate_scale_and_gradient(p):
    torch.manual_seed(0)
    d = _drop(p).train()
    x = torch.randn(400, 500, requires_grad=True)
    y = d(x)
    keep = y != 0
    rate = keep.float().mean().item()
    n = x.numel()
    assert abs(rate - (1 - p)) < 5 * ((p * (1 - p) / n) ** 0.5)  # within 5 standard errors of 1-p
    assert torch.allclose(y[keep], x.detach()[keep] / (1 - p))
    y.sum().backward()
    assert torch.allclose(x.grad, keep.float() / (1 - p))
    # the mask is not one pattern repeated: rows and columns both vary
    assert keep.float().mean(0).std() > 0 and keep.float().mean(1).std() > 0


def test_seeded_eval_and_p0():
    d = _drop(0.1).train()
    x = torch.randn(64, 33)
    torch.manual_seed(7)
    a = d(x)
    torch.manual_seed(7)
    b = d(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, d(x))  # the next draw differs
    assert d.eval()(x) is x
    assert _drop(0.0).train()(x) is x


def test_replaces_only_lora_dropout(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ftcompare.modeling import _dropout_class, fast_dropout

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.05, target_modules=["q_proj", "v_proj"]))
    n_layers = model.config.num_hidden_layers
    assert fast_dropout(model) == 2 * n_layers
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert sum(isinstance(m, _dropout_class()) for m in drops) == 2 * n_layers
    model.train()
    out = model(input_ids=torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]]))
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)  # A: 0 at init (B = 0)
    plain = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj"]))
    assert fast_dropout(plain) == 0  # p = 0: peft's Identity, nothing to replace
