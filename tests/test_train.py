"""Training and merging on a tiny llama built in the test: golden first losses, determinism, merge exactness."""
import json

import pytest
import torch

from conftest import add_tiny_model_config
from ftcompare import config
from ftcompare.train import train

TINY = {"data.n_train": 24, "data.n_val": 8, "train.max_steps": 3, "train.per_device_train_batch_size": 4,
        "train.per_device_eval_batch_size": 8, "train.max_length": 512, "train.save_steps": 100,
        "train.warmup_steps": 0, "train.num_threads": 1}

# First logged losses (steps 1-3) of each method on the seeded tiny model and the first 24 carved
# HellaSwag training examples. A change here means data order, tokenization, loss masking, init or
# optimizer changed: update deliberately, never to make a test pass.
GOLDEN = {
    "full": [6.25877571105957, 6.244476318359375, 6.259749412536621],
    "lora": [6.25877571105957, 6.244348526000977, 6.259517192840576],
    "qlora": [6.258094310760498, 6.244483470916748, 6.258998394012451],
    "dora": [6.25877571105957, 6.244327545166016, 6.259467124938965],
    "rslora": [6.25877571105957, 6.242695331573486, 6.256471633911133],
    "qdora": [6.258094310760498, 6.244458198547363, 6.258944511413574],
}


METHODS = ("full", "lora", "qlora", "dora", "rslora", "qdora")
ADAPTER_METHODS = [m for m in METHODS if m != "full"]


@pytest.fixture(scope="module")
def tiny_runs(tiny_model_dir, tmp_path_factory):
    """Train all three methods once on the tiny model in an isolated project; share the results."""
    from conftest import copy_project, use_root

    mp = pytest.MonkeyPatch()
    root = use_root(mp, copy_project(tmp_path_factory.mktemp("proj")))
    alias = add_tiny_model_config(root, tiny_model_dir)
    results = {}
    for method in METHODS:
        run = config.resolve_run("default", alias, method, TINY)
        results[method] = (run, train(run))
    yield results
    mp.undo()


def _losses(result):
    log = result.output_dir / "train_log.jsonl"
    return [json.loads(line)["loss"] for line in log.read_text().splitlines()]


@pytest.mark.parametrize("method", sorted(GOLDEN))
def test_golden_first_losses(tiny_runs, method):
    losses = _losses(tiny_runs[method][1])
    assert len(losses) == 3
    assert losses == pytest.approx(GOLDEN[method], abs=1e-4)


def test_first_loss_equal_for_full_and_lora(tiny_runs):
    """LoRA's B starts at zero, so step 1 sees the base model: identical first loss to full fine-tuning
    (same data, same order, same seed). QLoRA's differs only through 4-bit quantization of the base."""
    assert _losses(tiny_runs["full"][1])[0] == pytest.approx(_losses(tiny_runs["lora"][1])[0], abs=1e-5)
    assert _losses(tiny_runs["qlora"][1])[0] == pytest.approx(_losses(tiny_runs["lora"][1])[0], abs=0.2)


def test_summary_and_outputs(tiny_runs):
    for method, (run, res) in tiny_runs.items():
        s = res.summary
        assert s["config_hash"] == run.hash() and s["global_step"] == 3
        assert s["tokens_seen"] > 0 and s["tokens_per_second"] > 0 and s["peak_memory_mb"] > 0
        assert res.val_loss == s["val_loss"] and res.val_loss > 0
        assert (res.output_dir / "train_summary.json").is_file() and (res.output_dir / "config.json").is_file()
        final = res.output_dir / "final"
        if method == "full":
            assert s["trainable_params"] == s["total_params"] and (final / "model.safetensors").is_file()
        else:
            assert 0 < s["trainable_percent"] < 100 and (final / "adapter_config.json").is_file()
            cfg = json.loads((final / "adapter_config.json").read_text())
            assert cfg["base_model_name_or_path"].startswith("/")  # absolute: no cwd-relative surprises
    fps = {res.summary["data_fingerprint_train"] for _, res in tiny_runs.values()}
    assert len(fps) == 1  # every method saw the same data


def test_lora_and_qlora_train_the_same_adapter_shapes(tiny_runs):
    assert tiny_runs["lora"][1].summary["trainable_params"] == tiny_runs["qlora"][1].summary["trainable_params"]


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_merged_logits_equal_adapter_logits(tiny_runs, method):
    from peft import PeftModel

    from ftcompare.merge import merge
    from ftcompare.modeling import load_base, load_tokenizer

    run, res = tiny_runs[method]
    merged_dir = merge(run)
    tok = load_tokenizer(run.model)
    ids = tok(["A man is sitting on a roof. He starts pulling up roofing on a roof."], return_tensors="pt").input_ids
    base = load_base(run.model, run.method)  # NF4 for QLoRA, exactly as trained
    four_bit = [m for m in base.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    assert bool(four_bit) == (run.method.quantization is not None)
    assert not any(m.support_avx512bf16_for_cpu for m in four_bit)  # modeling.exact_4bit_on_cpu
    adapter_model = PeftModel.from_pretrained(base, str(res.output_dir / "final")).eval()
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    diff = (_logits(adapter_model, ids) - _logits(merged, ids)).abs().max().item()
    assert diff <= 1e-4, f"{method}: merged vs adapter max |logit diff| = {diff}"
    assert getattr(merged.config, "quantization_config", None) is None
    if run.method.quantization is not None:
        assert (res.output_dir / "nf4-base" / "config.json").is_file()
    print(f"{method}: merged vs adapter max |logit diff| = {diff:.3g}")
    if run.method.lora.use_dora:  # DoRA merged: each adapted weight row has the trained magnitude as its norm
        from safetensors.torch import load_file

        mags = {k.removeprefix("base_model.model.").removesuffix(".lora_magnitude_vector"): v
                for k, v in load_file(str(res.output_dir / "final" / "adapter_model.safetensors")).items()
                if k.endswith("lora_magnitude_vector")}
        weights = dict(merged.named_parameters())
        assert mags
        for name, mag in mags.items():
            row_norm = weights[name + ".weight"].detach().norm(dim=1)
            assert torch.allclose(row_norm, mag, rtol=1e-5, atol=1e-6), name


def test_full_merge_links_weights(tiny_runs):
    from ftcompare.merge import merge

    run, res = tiny_runs["full"]
    out = merge(run)
    a, b = out / "model.safetensors", res.output_dir / "final" / "model.safetensors"
    assert a.stat().st_ino == b.stat().st_ino


def test_same_seed_same_losses(tiny_runs, tmp_path):
    run, res = tiny_runs["lora"]
    again = train(config.run_from_dict(run.to_dict()), output_dir=tmp_path / "again")
    assert _losses(again) == _losses(res)
    assert again.val_loss == res.val_loss


def test_merge_before_training_is_a_clear_error(tiny_runs):
    from ftcompare.errors import FtcError
    from ftcompare.merge import merge

    run = config.resolve_run("default", "tiny", "lora", {**TINY, "train.max_steps": 7})
    run.experiment = "never-trained"
    with pytest.raises(FtcError, match="is not trained yet"):
        merge(run)


def test_method_keys_reach_peft(tiny_runs):
    """The method YAML's use_dora / use_rslora are what peft trained with; DoRA's magnitude was trained and saved."""
    from safetensors.torch import load_file

    for method in ADAPTER_METHODS:
        run, res = tiny_runs[method]
        cfg = json.loads((res.output_dir / "final" / "adapter_config.json").read_text())
        assert (cfg["use_dora"], cfg["use_rslora"]) == (run.method.lora.use_dora, run.method.lora.use_rslora), method
        keys = load_file(str(res.output_dir / "final" / "adapter_model.safetensors")).keys()
        assert any("lora_magnitude_vector" in k for k in keys) == run.method.lora.use_dora, method
    assert tiny_runs["dora"][1].summary["trainable_params"] > tiny_runs["lora"][1].summary["trainable_params"]
    assert tiny_runs["qdora"][1].summary["trainable_params"] == tiny_runs["dora"][1].summary["trainable_params"]
    assert _losses(tiny_runs["rslora"][1])[1:] != _losses(tiny_runs["lora"][1])[1:]  # the scale alpha/sqrt(r) applied
