"""train.report_to=tensorboard: the event files hold the same per-step losses as train_log.jsonl, also after
kill -9 + resume (re-done steps appear once)."""
import json

import numpy as np
import pytest

from conftest import add_tiny_model_config, run_cli

ARGS = ["data.n_train=32", "data.n_val=8", "train.max_steps=6", "train.per_device_train_batch_size=4",
        "train.max_length=512", "train.save_steps=2", "train.warmup_steps=1", "train.num_threads=1"]


def _scalars(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]  # each step once, in order (re-done steps purged)


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def test_tensorboard_is_off_by_default(project, tiny_model_dir):
    from ftcompare import config

    assert config.resolve_run("default", "135m", "lora").train.report_to == "none"
    with pytest.raises(config.ConfigError, match="train.report_to='wandb' is not valid; expected one of: none, tensorboard"):
        config.resolve_run("default", "135m", "lora", {"train.report_to": "wandb"})


@pytest.mark.parametrize("kill_at", [None, 3])
def test_tensorboard_losses_equal_train_log(project, tiny_model_dir, kill_at):
    add_tiny_model_config(project, tiny_model_dir)
    args = ["--model", "tiny", "--method", "lora", "train.report_to=tensorboard", *ARGS]
    env = {"FTCOMPARE_ROOT": str(project), "OMP_NUM_THREADS": "1", "EXPERIMENT": "default"}
    if kill_at:
        killed = run_cli(".venv/bin/python", "-m", "ftcompare", "train", *args,
                         env={**env, "FTCOMPARE_KILL_AT_STEP": str(kill_at)})
        assert killed.returncode == -9, killed.stderr[-2000:]
    done = run_cli(".venv/bin/python", "-m", "ftcompare", "train", *args, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    run = project / "models" / "default" / "tiny" / "lora"
    log = _log(run)
    assert [x["step"] for x in log] == list(range(1, 7))
    if kill_at:
        assert json.loads((run / "train_summary.json").read_text())["resumed_from"] == "checkpoint-2"
    tb_loss = _scalars(run, "train/loss")
    # TensorBoard stores float32: the JSONL loss rounded to float32 is exactly what it must hold
    assert tb_loss == [(x["step"], np.float32(x["loss"]).item()) for x in log]
    tb_lr = _scalars(run, "train/learning_rate")
    assert tb_lr == [(x["step"], np.float32(x["lr"]).item()) for x in log]
    assert [step for step, _ in _scalars(run, "eval/loss")] == [6]
