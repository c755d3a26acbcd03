"""The runtime confound guard: every method of an experiment, trained on a tiny model, ran with the same Trainer
settings, the same batches at every step and the same parameter precision, except where its YAML
(configs/methods/*.yaml) says otherwise: the learning rate, the adapter, the 4-bit base. Read from what the
training entry point itself used and saved (final/training_args.bin: the Trainer's own arguments;
train_log.jsonl: a hash of each step's token ids and labels; train_summary.json: parameter dtypes by kind and
whether activation checkpointing ran), so a setting tied to a method anywhere in the code shows up here, which
a diff of resolved configs cannot see. Run in fp32 and in bf16 mode (where a cast of frozen norms would show)."""
import json

import pytest
import torch

from conftest import add_tiny_model_config
from ftcompare import config
from ftcompare.train import train

METHODS = ("full", "lora", "qlora", "dora", "rslora", "qdora")
TINY = {"data.n_train": 12, "data.n_val": 4, "train.max_steps": 3, "train.per_device_train_batch_size": 4,
        "train.per_device_eval_batch_size": 4, "train.max_length": 512, "train.save_steps": 100,
        "train.warmup_steps": 1, "train.num_threads": 1}
MODES = {"fp32": {}, "bf16": {"train.bf16": True, "model.dtype": "bfloat16"}}
# TrainingArguments fields a method may change (its learning_rate) or that name the run's own folder
PER_RUN = {"learning_rate", "output_dir", "logging_dir", "run_name"}


@pytest.fixture(scope="module", params=sorted(MODES))
def runs(request, tiny_model_dir, tmp_path_factory):
    from conftest import copy_project, use_root

    mp = pytest.MonkeyPatch()
    root = use_root(mp, copy_project(tmp_path_factory.mktemp("proj")))
    alias = add_tiny_model_config(root, tiny_model_dir)
    out = {}
    for method in METHODS:
        over = dict(TINY, **MODES[request.param])
        if request.param == "bf16" and method.startswith("q"):
            over["method.quantization.compute_dtype"] = "bfloat16"  # a method key: the 4-bit compute dtype
        run = config.resolve_run("default", alias, method, over)
        res = train(run, output_dir=root / "models" / request.param / method)
        args = torch.load(res.output_dir / "final" / "training_args.bin", weights_only=False)
        log = [json.loads(line) for line in (res.output_dir / "train_log.jsonl").read_text().splitlines()]
        out[method] = {"run": run, "summary": res.summary, "args": args.to_dict(), "log": log}
    yield request.param, out
    mp.undo()


def test_trainer_arguments_differ_only_in_the_learning_rate(runs):
    _, r = runs
    ref = {k: v for k, v in r["lora"]["args"].items() if k not in PER_RUN}
    for method, x in r.items():
        args = {k: v for k, v in x["args"].items() if k not in PER_RUN}
        diff = {k: (ref.get(k), args.get(k)) for k in ref.keys() | args.keys() if ref.get(k) != args.get(k)}
        assert not diff, f"{method} vs lora: Trainer settings differ: {diff}"
        assert x["args"]["learning_rate"] == x["run"].method.learning_rate  # the one the method's YAML sets
        assert x["summary"]["activation_checkpointing"] == r["lora"]["summary"]["activation_checkpointing"], method


def test_every_step_trained_on_the_same_tokens(runs):
    _, r = runs
    ref = [(s["step"], s["batch_sha256"]) for s in r["lora"]["log"]]
    assert [s for s, _ in ref] == [1, 2, 3] and len({h for _, h in ref}) == 3  # three different batches
    for method, x in r.items():
        assert [(s["step"], s["batch_sha256"]) for s in x["log"]] == ref, method
        assert x["summary"]["tokens_seen"] == r["lora"]["summary"]["tokens_seen"], method


def test_parameter_precision_differs_only_where_the_method_says(runs):
    """Trainable parameters: fp32 master weights for every method. Frozen norms and embeddings: the model's dtype,
    the same under every adapter method. Frozen linear weights: the model's dtype, or the method's 4-bit type."""
    mode, r = runs
    model_dtype = {"fp32": "float32", "bf16": "bfloat16"}[mode]
    for method, x in r.items():
        prec, m = x["summary"]["precision"], x["run"].method
        expect = {"trainable": "float32", "compute": "bf16 autocast" if mode == "bf16" else "as stored"}
        if m.uses_adapter:
            q = m.quantization
            expect |= {"frozen norms": model_dtype, "frozen embeddings": model_dtype,
                       "frozen linear": q.quant_type if q is not None else model_dtype}
        assert prec == expect, f"{mode}/{method}: {prec} != {expect}"
