"""Each config check says exactly what is wrong (one ConfigError naming the key and the valid values), and the
strict dict -> dataclass conversion, overrides, hashes and diffs behave as the pipeline relies on: every
message is matched in full, so a changed bound or a swapped key shows up."""
from __future__ import annotations

import re

import pytest

from ftcompare import config
from ftcompare.config import (DataConfig, EvalConfig, ExperimentConfig, ExportConfig, GenerationSettings, LoraSettings,
                              MethodConfig, ModelConfig, QuantSettings, RoundTripLimits, TrainConfig)
from ftcompare.errors import ConfigError

GGUF = dict(package="p", package_version="1", gguf_file="f.gguf", lora_target_modules=["q_proj"])
LIM = RoundTripLimits(max_abs_dlogit=1.0, min_argmax_agreement=0.9, min_greedy_match=0.5)


def _fails(make, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message) + "$"):
        make()


@pytest.mark.parametrize("make, message", [
    (lambda: ModelConfig("m", "web"), "model.source='web' is not valid; expected one of: packaged-gguf, hub, local"),
    (lambda: ModelConfig("m", "local", dtype="int8", path="x", lora_target_modules=["q"]),
     "model.dtype='int8' is not valid; expected one of: float32, bfloat16, float16"),
    (lambda: ModelConfig("m", "local", chat_template="x", path="x", lora_target_modules=["q"]),
     "model.chat_template='x' is not valid; expected one of: tokenizer, chatml"),
    (lambda: ModelConfig("m", "hub", lora_target_modules=["q"]), "model 'm': source=hub needs 'hub_id'"),
    (lambda: ModelConfig("m", "local", lora_target_modules=["q"]), "model 'm': source=local needs 'path'"),
    (lambda: ModelConfig("m", "packaged-gguf", **{**GGUF, "package_version": None}),
     "model 'm': source=packaged-gguf needs 'package_version'"),
    (lambda: ModelConfig("m", "packaged-gguf", **{**GGUF, "gguf_file": ""}),
     "model 'm': source=packaged-gguf needs 'gguf_file'"),
    (lambda: ModelConfig("m", "hub", hub_id="o/m"),
     "model 'm': lora_target_modules is empty; list the linear layers LoRA adapts, e.g. [q_proj, k_proj, v_proj, "
     "o_proj, gate_proj, up_proj, down_proj]"),
    (lambda: LoraSettings(r=0), "lora.r and lora.alpha must be > 0 (got r=0, alpha=32)"),
    (lambda: LoraSettings(alpha=0), "lora.r and lora.alpha must be > 0 (got r=16, alpha=0)"),
    (lambda: LoraSettings(dropout=1.0), "lora.dropout must be in [0, 1) (got 1.0)"),
    (lambda: LoraSettings(dropout=-0.1), "lora.dropout must be in [0, 1) (got -0.1)"),
    (lambda: QuantSettings(quant_type="int4"), "quantization.quant_type='int4' is not valid; expected one of: nf4, fp4"),
    (lambda: QuantSettings(compute_dtype="float64"),
     "quantization.compute_dtype='float64' is not valid; expected one of: float32, bfloat16, float16"),
    (lambda: MethodConfig("q", quantization=QuantSettings()),
     "method 'q': quantization needs a lora section (4-bit weights are frozen)"),
    (lambda: MethodConfig("f", learning_rate=0.0), "method 'f': learning_rate must be > 0"),
    (lambda: DataConfig("d", "l", format="text"), "data.format='text' is not valid; expected one of: completion, chat"),
    (lambda: DataConfig("d", "l", max_messages=1),
     "data.max_messages must be >= 2 (a user and an assistant message) or null (got 1)"),
    (lambda: DataConfig("d", "l", n_val=0), "data.n_val must be > 0: the training entry point returns a validation loss"),
    (lambda: DataConfig("d", "l", n_train=0), "data.n_train must be > 0 or null (got 0)"),
    (lambda: TrainConfig(max_steps=0), "train.max_steps must be > 0 (got 0)"),
    (lambda: TrainConfig(save_total_limit=0), "train.save_total_limit must be > 0 (got 0)"),
    (lambda: TrainConfig(per_device_eval_batch_size=-1), "train.per_device_eval_batch_size must be > 0 (got -1)"),
    (lambda: TrainConfig(lr_scheduler_type="step"),
     "train.lr_scheduler_type='step' is not valid; expected one of: linear, cosine, constant, constant_with_warmup, "
     "cosine_with_restarts, polynomial"),
    (lambda: TrainConfig(report_to="wandb"), "train.report_to='wandb' is not valid; expected one of: none, tensorboard"),
    (lambda: GenerationSettings("c", n_prompts=0), "evaluation.generation.n_prompts must be > 0 (got 0)"),
    (lambda: GenerationSettings("c", max_new_tokens=0), "evaluation.generation.max_new_tokens must be > 0 (got 0)"),
    (lambda: GenerationSettings("c", batch_size=0), "evaluation.generation.batch_size must be > 0 (got 0)"),
    (lambda: GenerationSettings("c", settings={}),
     "evaluation.generation.settings is empty; give at least one, e.g. greedy: {do_sample: false}"),
    (lambda: GenerationSettings("c", settings={"my setting": {}}),
     "evaluation.generation.settings: 'my setting' must be a plain name (letters, digits, _)"),
    (lambda: GenerationSettings("c", settings={"hot": {"temprature": 0.9}}),
     "evaluation.generation.settings.hot: unknown key 'temprature' (did you mean 'temperature'?); valid: do_sample, "
     "temperature, top_p, top_k, repetition_penalty"),
    (lambda: GenerationSettings("c", settings={"hot": {"zzz": 1}}),
     "evaluation.generation.settings.hot: unknown key 'zzz'; valid: do_sample, temperature, top_p, top_k, "
     "repetition_penalty"),
    (lambda: EvalConfig(tasks=["a"], limit={"b": 3}), "evaluation: 'b' has a num_fewshot/limit but is not in tasks ['a']"),
    (lambda: EvalConfig(tasks=["a"], num_fewshot={"c": 0}),
     "evaluation: 'c' has a num_fewshot/limit but is not in tasks ['a']"),
    (lambda: EvalConfig(variants=["merged", "fused"]),
     "evaluation.variants='fused' is not valid; expected one of: merged, adapter"),
    (lambda: EvalConfig(lm_eval_model="vllm"), "evaluation.lm_eval_model='vllm' is not valid; expected one of: ftc-hf, hf"),
    (lambda: EvalConfig(generation_batch_size=0), "evaluation.generation_batch_size must be > 0 (got 0)"),
    (lambda: ExperimentConfig("e", models=["m"], methods=[], data="d"),
     "experiment 'e' needs non-empty models, methods and data"),
    (lambda: ExperimentConfig("e", models=["m"], methods=["lora"]), "experiment 'e' needs non-empty models, methods and data"),
    (lambda: ExportConfig(dtype="float32", prompts=["p"]), "export.dtype='float32' is not valid; expected one of: bfloat16, float16"),
    (lambda: ExportConfig(gguf_formats=["q4_0"], prompts=["p"]),
     "export.gguf_formats='q4_0' is not valid; expected one of: f32, f16, bf16, q8_0"),
    (lambda: ExportConfig(prompts=[]), "export: needs non-empty prompts and generate_tokens > 0"),
    (lambda: ExportConfig(prompts=["p"], generate_tokens=0), "export: needs non-empty prompts and generate_tokens > 0"),
    (lambda: ExportConfig(prompts=["p"], thresholds={"bfloat16": LIM, "f16": LIM}),
     "export.thresholds: no limits for q8_0; add e.g. q8_0: {max_abs_dlogit: 0.5, min_argmax_agreement: 0.99, "
     "min_greedy_match: 0.75}"),
])
def test_each_check_names_the_key(make, message):
    _fails(make, message)


def test_valid_edges_pass():
    """The bounds themselves are valid (> 0, >= 2, [0, 1))."""
    assert LoraSettings(r=1, alpha=1, dropout=0.0).r == 1
    assert DataConfig("d", "l", max_messages=2, n_val=1, n_train=1).max_messages == 2
    assert DataConfig("d", "l", max_messages=None, n_train=None).n_train is None
    assert TrainConfig(max_steps=1, warmup_steps=0).max_steps == 1
    assert EvalConfig(tasks=["a"], limit={"a": 1}, num_fewshot={"a": 0}, generation_batch_size=1).limit == {"a": 1}
    assert MethodConfig("l", lora=LoraSettings(), quantization=QuantSettings()).uses_adapter
    assert not MethodConfig("f").uses_adapter
    ev = EvalConfig(tasks=["a"], generation=GenerationSettings("c", settings={"greedy": {}, "t07": {"temperature": 0.7}}))
    assert ev.all_tasks() == ["a", "ftc_chat_gen_greedy", "ftc_chat_gen_t07"]
    assert EvalConfig(tasks=["a"]).all_tasks() == ["a"]
    ExportConfig(prompts=["p"], thresholds={"bfloat16": LIM, "f16": LIM, "q8_0": LIM})


@pytest.mark.parametrize("tp, value, message", [
    (int, "3", "k: expected int, got str '3'"),
    (int, True, "k: expected int, got bool True"),
    (float, True, "k: expected float, got bool True"),
    (str, 3, "k: expected str, got int 3"),
    (list[int], 3, "k: expected a list, got int 3"),
    (list[int], [1, "x"], "k[1]: expected int, got str 'x'"),
    (dict[str, int], [1], "k: expected a mapping, got list [1]"),
    (dict[str, int], {"a": "x"}, "k.a: expected int, got str 'x'"),
    (LoraSettings, 3, "k: expected a mapping for LoraSettings, got int 3"),
    (int | None, "x", "k: expected int, got str 'x'"),
    (tuple, (1,), "k: unsupported type <class 'tuple'>"),
])
def test_check_type_errors(tp, value, message):
    _fails(lambda: config._check_type("k", value, tp), message)


def test_check_type_conversions():
    assert config._check_type("k", 3, float) == 3.0 and isinstance(config._check_type("k", 3, float), float)
    assert config._check_type("k", None, int | None) is None
    assert config._check_type("k", [1, 2], list[int]) == [1, 2]
    assert config._check_type("k", {"a": 1}, dict[str, int]) == {"a": 1}
    assert config._check_type("k", {"r": 4}, LoraSettings) == LoraSettings(r=4)
    assert config._check_type("k", object, config.Any) is object
    assert config._check_type("k", False, bool) is False


def test_from_dict_unknown_and_missing_keys():
    _fails(lambda: config.from_dict(LoraSettings, {"rank": 4}),
           "LoraSettings: unknown key 'rank'; valid keys: r, alpha, dropout, target_modules, use_dora, use_rslora")
    _fails(lambda: config.from_dict(LoraSettings, {"alpah": 4}, where="method.lora"),
           "method.lora: unknown key 'alpah' (did you mean 'alpha'?); valid keys: r, alpha, dropout, target_modules, "
           "use_dora, use_rslora")
    _fails(lambda: config.from_dict(DataConfig, {"name": "d"}), "DataConfig: missing required key(s): loader")
    _fails(lambda: config.from_dict(DataConfig, {"name": "d"}, where="data"), "data: missing required key(s): loader")
    _fails(lambda: config.from_dict(LoraSettings, {"r": "4"}, where="lora"), "lora.r: expected int, got str '4'")
    assert config.from_dict(LoraSettings, {"r": 4, "dropout": 0}) == LoraSettings(r=4, dropout=0.0)


def test_parse_and_apply_overrides():
    assert config.parse_overrides(["train.max_steps=5", "method.lora.r = 8", "data.name=x=y", "model.path=",
                                   "train.optim=[a", " data.n_val=2"]) == \
        {"train.max_steps": 5, "method.lora.r": 8, "data.name": "x=y", "model.path": None, "train.optim": "[a",
         "data.n_val": 2}
    _fails(lambda: config.parse_overrides(["=5"]),
           "override '=5' is not of the form section.key=value (e.g. train.max_steps=5)")
    data = {"train": {"max_steps": 3}, "x": 1, "lora": None}
    config.apply_overrides(data, {"train.max_steps": 9, "new.deep.key": 1, "lora.r": 4})
    assert data == {"train": {"max_steps": 9}, "x": 1, "new": {"deep": {"key": 1}}, "lora": {"r": 4}}
    _fails(lambda: config.apply_overrides(data, {"x.y": 2}), "override 'x.y': 'x' is not a section")
    _fails(lambda: config.resolve_run("default", "135m", "lora", {"train": 3}),
           "override 'train': must start with one of experiment, model, method, data, train followed by a key, "
           "e.g. train.max_steps=5")


def test_resolve_run_sections_reach_their_config():
    run = config.resolve_run("default", "135m", "lora", {"experiment.train.max_steps": 7, "model.dtype": "bfloat16",
                                                          "data.n_val": 5, "method.learning_rate": 1e-3})
    assert (run.train.max_steps, run.model.dtype, run.data.n_val, run.method.learning_rate) == (7, "bfloat16", 5, 1e-3)
    assert run.experiment == "default" and run.data.name == "hellaswag-train"
    again = config.run_from_dict(run.to_dict())
    assert again == run and again.hash() == run.hash()


def test_config_hash_and_diff_keys():
    assert config.config_hash({"b": 1, "a": 2}) == config.config_hash({"a": 2, "b": 1})
    assert len(config.config_hash({"a": 1})) == 16 and config.config_hash({"a": 1}) != config.config_hash({"a": 2})
    assert config.config_hash({"a": 1}) == "f9d86028c6e0d64e"        # sha256 of '{"a": 1}', first 16 hex digits
    a = {"train": {"lr": 1, "steps": 2}, "method": {"name": "lora"}, "only_a": 1}
    b = {"train": {"lr": 1, "steps": 3}, "method": {"name": "qlora"}, "only_b": None}
    assert config.diff_keys(a, b) == ["method.name", "only_a", "train.steps"]
    assert config.diff_keys({"x": {"y": 1}}, {"x": 5}) == ["x"]


def test_load_run_needs_a_trained_run(project):
    _fails(lambda: config.load_run("default", "135m", "lora"),
           "135m/lora of experiment 'default' is not trained yet (models/default/135m/lora/config.json missing); run "
           "`bash scripts/train.sh 135m lora` (EXPERIMENT=default) or `make all`")


def test_bad_yaml_files(project):
    bad = project / "configs" / "methods" / "broken.yaml"
    bad.write_text("learning_rate: [1,\n")
    _fails(lambda: config.load("methods", "broken"), "configs/methods/broken.yaml: not valid YAML (ParserError); fix the file")
    bad.write_text("- a\n- b\n")
    _fails(lambda: config.load("methods", "broken"), "configs/methods/broken.yaml: expected a mapping at the top level")
    bad.write_text("")
    _fails(lambda: config.load("methods", "broken"), "configs/methods/broken.yaml: missing required key(s): name")
    _fails(lambda: config.read_yaml("data", "nope"),
           f"unknown dataset 'nope'; valid: {', '.join(config.available('data'))} (configs/data/)")
    assert config.available("methods") == sorted(config.available("methods")) and "broken" in config.available("methods")
