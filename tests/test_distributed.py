"""Distributed training: two CPU processes (torchrun + gloo, MULTI_CPU DDP through accelerate) of the real `train`
entry point give the same losses as one process for the same global batch, and resume after kill -9; the
accelerate configs parse with accelerate's own config classes."""
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import ROOT, add_tiny_model_config, run_cli

ACCELERATE_CONFIGS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))

# 1 process x 4 examples == 2 processes x 2 examples: the same 4 examples make each optimizer step. LoRA dropout
# off: each process draws its dropout masks from its own RNG stream, so with dropout the two runs differ by design.
COMMON = ["method.lora.dropout=0.0", "data.n_train=48", "data.n_val=8", "train.max_steps=6", "train.max_length=512", "train.save_steps=2",
          "train.save_total_limit=2", "train.warmup_steps=1", "train.num_threads=1", "train.per_device_eval_batch_size=4"]
# Measured (2-core CPU, tiny llama, LoRA without dropout): per-step |loss difference| 0, 0, 0, 4.8e-7, 0, 9.5e-7
# (the gradient of two half-batches all-reduced is the one-batch gradient summed in another order). LOSS_TOL
# leaves 10x room. With dropout 0.05 the differences were 2e-5 to 4e-5 (other dropout masks), still < LOSS_TOL
# only by luck: that is why dropout is off here. A different global batch changes the first loss by ~1e-2.
LOSS_TOL = 1e-5
FIRST_LOSS_TOL = 1e-6
# The validation loss (Trainer.evaluate, 8 examples, eval batch 4 per process) differed by 1.2e-3 between 1 and 2
# processes although the weights agree to < 1e-5; the cause (how the Trainer aggregates a distributed
# evaluation) was not established. Bounded, not claimed equal.
VAL_TOL = 5e-3


def _validate_accelerate_config(path: Path):
    """accelerate's own classes: ClusterConfig rejects unknown top-level keys and unknown enum values; a nested
    fsdp_config / deepspeed_config key must be an option of `accelerate launch` (which ignores unknown ones)."""
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import launch_command_parser

    cfg = ClusterConfig.from_yaml_file(str(path))
    options = vars(launch_command_parser().parse_args(["x.py"]))
    for section, prefix in (("fsdp_config", "fsdp_"), ("deepspeed_config", "")):
        for key in (getattr(cfg, section, None) or {}):
            name = key if key.startswith(prefix) else prefix + key
            if name not in options:
                raise ValueError(f"{path.name}: {section}.{key} is not an `accelerate launch` option")
    return cfg


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=[p.stem for p in ACCELERATE_CONFIGS])
def test_accelerate_config_loads_with_accelerates_classes(path):
    cfg = _validate_accelerate_config(path)
    expected = {"cpu": "NO", "ddp": "MULTI_GPU", "fsdp": "FSDP", "zero3": "DEEPSPEED"}[path.stem]
    assert str(cfg.distributed_type.value) == expected


@pytest.mark.parametrize("bad,match", [
    ("num_process: 8\n", "unknown keys"),
    ("distributed_type: MULTI_GPUS\n", "MULTI_GPUS"),
    ("fsdp_config:\n  fsdp_sharding_stratgy: FULL_SHARD\n", "fsdp_sharding_stratgy"),
    ("deepspeed_config:\n  zero_stag: 3\n", "zero_stag"),
], ids=["key", "enum", "fsdp-key", "deepspeed-key"])
def test_a_misspelled_accelerate_key_fails(tmp_path, bad, match):
    good = yaml.safe_load((ROOT / "configs" / "accelerate" / "ddp.yaml").read_text())
    good.update(yaml.safe_load(bad))
    if "num_process" in good:
        good.pop("num_processes")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(good))
    with pytest.raises(ValueError, match=match):
        _validate_accelerate_config(path)


def _train(proj, experiment, nproc, env_extra=None):
    env = {"FTCOMPARE_ROOT": str(proj), "OMP_NUM_THREADS": "1", "EXPERIMENT": "default", "ACCELERATE_USE_CPU": "true",
           **(env_extra or {})}
    args = ["train", "--model", "tiny", "--method", "lora", f"experiment.name={experiment}", *COMMON,
            f"train.per_device_train_batch_size={4 // nproc}"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m"] \
        if nproc > 1 else [sys.executable, "-m"]
    return run_cli(*launcher, "ftcompare", *args, env=env)


def _log(proj, experiment):
    path = proj / "models" / experiment / "tiny" / "lora" / "train_log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """The same run on 1 and on 2 processes, in one isolated project."""
    import shutil

    proj = tmp_path_factory.mktemp("dist") / "proj"
    proj.mkdir()
    shutil.copytree(ROOT / "configs", proj / "configs")
    add_tiny_model_config(proj, tiny_model_dir)
    for nproc in (1, 2):
        res = _train(proj, f"p{nproc}", nproc)
        assert res.returncode == 0, res.stderr[-3000:]
    return proj


def test_two_processes_give_the_losses_of_one(runs):
    one, two = _log(runs, "p1"), _log(runs, "p2")
    assert [x["step"] for x in one] == [x["step"] for x in two] == list(range(1, 7))
    diffs = [abs(a["loss"] - b["loss"]) for a, b in zip(one, two)]
    print(f"1 vs 2 processes: per-step |loss diff| {['%.2g' % d for d in diffs]}")
    assert diffs[0] <= FIRST_LOSS_TOL and max(diffs) <= LOSS_TOL
    s1 = json.loads((runs / "models" / "p1" / "tiny" / "lora" / "train_summary.json").read_text())
    s2 = json.loads((runs / "models" / "p2" / "tiny" / "lora" / "train_summary.json").read_text())
    assert s1["examples_seen"] == s2["examples_seen"] == 24  # 6 steps x global batch 4
    print(f"1 vs 2 processes: |val_loss diff| {abs(s2['val_loss'] - s1['val_loss']):.2g}")
    assert s2["val_loss"] == pytest.approx(s1["val_loss"], abs=VAL_TOL)
    a = load_file(str(runs / "models" / "p1" / "tiny" / "lora" / "final" / "adapter_model.safetensors"))
    b = load_file(str(runs / "models" / "p2" / "tiny" / "lora" / "final" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    wdiff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"1 vs 2 processes: max |adapter weight diff| {wdiff:.2g}")
    assert wdiff <= 1e-5
    assert not list((runs / "models" / "p2" / "tiny" / "lora").glob(".final*"))  # no partial folder left


def test_two_processes_resume_after_kill(runs):
    killed = _train(runs, "p2k", 2, {"FTCOMPARE_KILL_AT_STEP": "4"})
    assert killed.returncode != 0
    run = runs / "models" / "p2k" / "tiny" / "lora"
    assert not (run / "train_summary.json").exists()
    resumed = _train(runs, "p2k", 2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run / "train_summary.json").read_text())["resumed_from"] == "checkpoint-2"
    assert [x["loss"] for x in _log(runs, "p2k")] == [x["loss"] for x in _log(runs, "p2")]
    a = load_file(str(runs / "models" / "p2" / "tiny" / "lora" / "final" / "adapter_model.safetensors"))
    b = load_file(str(run / "final" / "adapter_model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
