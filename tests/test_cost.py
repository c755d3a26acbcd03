"""Training cost accounting (cost.py): training-only rates and memory, checked against the per-step ledger; save
and evaluation time apart; a resumed run sums its processes; perplexity = exp(mean token loss); MFU's parts."""
import json
import math

import pytest

from conftest import add_tiny_model_config, run_cli
from ftcompare import config
from ftcompare.cost import LEDGER, WARMUP_STEPS
from ftcompare.train import train

TINY = {"data.n_train": 16, "data.n_val": 8, "train.max_steps": 6, "train.per_device_train_batch_size": 4,
        "train.per_device_eval_batch_size": 3, "train.max_length": 512, "train.save_steps": 3,
        "train.warmup_steps": 0, "train.num_threads": 1,
        "train.padding_free": False}  # padded batches: the accounting of pad positions is under test


def _ledger(run_dir):
    return [json.loads(x) for x in (run_dir / LEDGER).read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    from conftest import copy_project, use_root

    mp = pytest.MonkeyPatch()
    root = use_root(mp, copy_project(tmp_path_factory.mktemp("proj")))
    alias = add_tiny_model_config(root, tiny_model_dir)
    out = {m: train(config.resolve_run("default", alias, m, TINY), output_dir=root / "models" / m)
           for m in ("full", "lora")}
    yield out
    mp.undo()


@pytest.mark.parametrize("method", ["full", "lora"])
def test_training_only_rates_match_the_step_ledger(runs, method):
    res = runs[method]
    s, c = res.summary, res.summary["cost"]
    steps = [r for r in _ledger(res.output_dir) if r["kind"] == "step"]
    saves = [r for r in _ledger(res.output_dir) if r["kind"] == "save"]
    assert [r["step"] for r in steps] == list(range(1, 7)) and c["processes"] == 1
    # the per-step timings sum to the reported training time, the tokens to the reported tokens
    assert c["train_s"] == pytest.approx(sum(r["seconds"] for r in steps), abs=1e-5)
    assert c["tokens"] == sum(r["tokens"] for r in steps) == s["tokens_seen"]
    assert c["tokens_processed"] == sum(r["tokens_processed"] for r in steps) == s["tokens_processed"]
    assert c["samples"] == 6 * 4  # 6 steps of 4 examples
    assert c["tokens_processed"] > c["tokens"]  # padded batches compute pad positions
    # steady state: the first WARMUP_STEPS steps left out of the rates
    steady = steps[WARMUP_STEPS:]
    assert c["steady_steps"] == len(steady) == 6 - WARMUP_STEPS
    sec = sum(r["seconds"] for r in steady)
    assert c["tokens_per_second"] == pytest.approx(sum(r["tokens"] for r in steady) / sec, rel=1e-3)
    assert c["tokens_processed_per_second"] == pytest.approx(sum(r["tokens_processed"] for r in steady) / sec,
                                                             rel=1e-3)
    assert c["samples_per_second"] == pytest.approx(sum(r["samples"] for r in steady) / sec, rel=1e-3)
    # saves (steps 3 and 6) and evaluation are timed, and apart from the steps: steps + saves fit in the loop
    assert [r["step"] for r in saves] == [3, 6] and c["saves"] == 2
    assert c["save_s"] > 0 and c["eval_s"] > 0 and c["final_save_s"] > 0
    assert c["train_s"] + c["save_s"] <= s["wall_time_s"] + 0.01
    # peak memory inside the steps only
    assert c["peak_train_memory_mb"] == max(r["memory_mb"] for r in steps) > 0
    assert c["memory_kind"] == "cpu_rss_sampled_in_steps"


def test_mfu_parts(runs):
    full, lora = runs["full"].summary, runs["lora"].summary
    peak = full["manifest"]["matmul_peak"]
    assert peak["tflops"] > 0 and full["cost"]["matmul_peak_tflops"] == peak["tflops"]
    n = full["cost"]["n_trainable_linear"]
    assert full["cost"]["n_frozen_linear"] == 0 and full["cost"]["flops_per_token"] == 6 * n
    # LoRA: the same base linear weights, frozen (4 per weight), plus the adapters (6 per weight)
    assert lora["cost"]["n_frozen_linear"] == n and 0 < lora["cost"]["n_trainable_linear"] < n
    assert lora["cost"]["flops_per_token"] == 4 * n + 6 * lora["cost"]["n_trainable_linear"]
    for s in (full, lora):
        c = s["cost"]
        assert c["mfu"] == pytest.approx(c["flops_per_token"] * c["tokens_processed_per_second"]
                                         / (c["matmul_peak_tflops"] * 1e12), rel=1e-3)
        assert 0 < c["mfu"] < 1


@pytest.mark.parametrize("method", ["full", "lora"])
def test_perplexity_is_exp_of_the_mean_token_loss(runs, method):
    s = runs[method].summary
    assert s["val_perplexity"] == pytest.approx(math.exp(s["val_token_loss"]), rel=1e-6)
    # the same losses, weighted per token rather than per example (eval batches of 3, 3, 2): close, not equal
    assert s["val_token_loss"] == pytest.approx(s["val_loss"], rel=0.05) and s["val_token_loss"] != s["val_loss"]


def test_resumed_run_sums_its_processes(project, tiny_model_dir):
    add_tiny_model_config(project, tiny_model_dir)
    args = ["data.n_train=48", "data.n_val=8", "train.max_steps=8", "train.per_device_train_batch_size=4",
            "train.max_length=512", "train.save_steps=2", "train.save_total_limit=2", "train.warmup_steps=1",
            "train.num_threads=1"]
    env = {"FTCOMPARE_ROOT": str(project), "OMP_NUM_THREADS": "1", "EXPERIMENT": "default",
           "FTCOMPARE_KILL_AT_STEP": "5"}
    killed = run_cli(".venv/bin/python", "-m", "ftcompare", "train", "--model", "tiny", "--method", "lora", *args,
                     env=env)
    assert killed.returncode == -9, killed.stderr[-2000:]
    res = train(config.resolve_run("default", "tiny", "lora", config.parse_overrides(args)))
    c = res.summary["cost"]
    first, second = c["sessions"]
    # killed at the end of step 5 (checkpoint-4 saved): steps 1-5 and saves 2, 4; resumed: steps 5-8, saves 6, 8
    assert (first["steps"], first["saves"], first["resumed_from"]) == (5, 2, None)
    assert (second["steps"], second["saves"], second["resumed_from"]) == (4, 2, "checkpoint-4")
    assert c["processes"] == 2
    for k in ("steps", "steady_steps", "tokens", "tokens_processed", "samples", "saves"):
        assert c[k] == first[k] + second[k], k
    for k in ("train_s", "steady_train_s", "save_s"):
        assert c[k] == pytest.approx(first[k] + second[k], abs=1e-5), k
    assert first["steady_steps"] == 5 - WARMUP_STEPS and second["steady_steps"] == 4 - WARMUP_STEPS
    # step 5 ran twice (the kill came before its save): counted in the compute spent, once in the trajectory
    steps = [r for r in _ledger(res.output_dir) if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 5, 6, 7, 8]
    redone = next(r["tokens"] for r in steps if r["step"] == 5)
    assert c["tokens"] == res.summary["tokens_seen"] + redone
    assert c["peak_train_memory_mb"] == max(first["peak_train_memory_mb"], second["peak_train_memory_mb"])


def test_memory_probe_reads_inside_steps_only():
    """The CPU probe reports resident memory during a step (sampled: a peak freed before the step ends still
    counts), not the process's lifetime peak (an allocation made and freed outside steps does not count)."""
    import time

    import torch

    from ftcompare.cost import MemoryProbe

    probe = MemoryProbe()
    probe.begin()
    base = probe.end()
    big = torch.ones(64 * 2**20)  # 256 MB, written, outside any step
    del big
    probe.begin()
    after_outside = probe.end()
    assert after_outside < base + 100, "an allocation outside steps counted"
    probe.begin()
    big = torch.ones(64 * 2**20)  # inside a step, freed before its end
    time.sleep(0.2)
    del big
    inside = probe.end()
    probe.close()
    assert inside > base + 200, "a peak inside the step was missed"
