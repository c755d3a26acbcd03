"""kill -9 at a given step, run again: the resumed run ends bit-identical to an uninterrupted one.

The kill steps are fixed (checkpoints every 2 of 8 steps) so each case is reproducible and together they cover
the three situations: killed before any checkpoint (1), right before a step's own save (4: resumes from
checkpoint-2), and after the last-but-one save (7: resumes from checkpoint-6)."""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import add_tiny_model_config, run_cli

ARGS = ["data.n_train=48", "data.n_val=8", "train.max_steps=8", "train.per_device_train_batch_size=4",
        "train.max_length=512", "train.save_steps=2", "train.save_total_limit=2", "train.warmup_steps=1",
        "train.num_threads=1"]


@pytest.fixture()
def proj(project, tiny_model_dir):
    add_tiny_model_config(project, tiny_model_dir)
    return project


def _train(proj, method, out_experiment, kill_at=None):
    """In process, or (kill_at) in a subprocess that SIGKILLs itself at that step."""
    if kill_at is None:
        from ftcompare import config
        from ftcompare.train import train

        train(config.resolve_run("default", "tiny", method,
                                 config.parse_overrides([f"experiment.name={out_experiment}", *ARGS])))
        return None
    env = {"FTCOMPARE_ROOT": str(proj), "OMP_NUM_THREADS": "1", "EXPERIMENT": "default",
           "FTCOMPARE_KILL_AT_STEP": str(kill_at)}
    return run_cli(".venv/bin/python", "-m", "ftcompare", "train", "--model", "tiny", "--method", method,
                   f"experiment.name={out_experiment}", *ARGS, env=env)


def _weights(run_dir):
    final = run_dir / "final"
    f = final / ("adapter_model.safetensors" if (final / "adapter_model.safetensors").exists() else "model.safetensors")
    return load_file(str(f))


@pytest.mark.parametrize("method,kill_at", [("full", 4), ("lora", 1), ("qlora", 7), ("dora", 4), ("rslora", 7),
                                            ("qdora", 1)])
def test_kill_and_resume_is_bit_identical(proj, method, kill_at):
    _train(proj, method, "straight")

    killed = _train(proj, method, "killed", kill_at=kill_at)
    assert killed.returncode == -9, f"not killed at step {kill_at}: rc={killed.returncode}"
    run = proj / "models" / "killed" / "tiny" / method
    assert not (run / "train_summary.json").exists()
    # a checkpoint killed while being written (no completion marker) must be ignored
    partial = run / "checkpoints" / "checkpoint-99"
    partial.mkdir(parents=True)
    (partial / "optimizer.pt").write_bytes(b"truncated")

    _train(proj, method, "killed")
    assert not partial.exists()
    summary = json.loads((run / "train_summary.json").read_text())
    last_saved = (kill_at - 1) // 2 * 2  # killed in on_step_end of kill_at, before that step's save
    expected_from = f"checkpoint-{last_saved}" if last_saved else None
    assert summary["resumed_from"] == expected_from, f"killed at step {kill_at}"

    a, b = _weights(proj / "models" / "straight" / "tiny" / method), _weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{method}: {k} differs after kill at step {kill_at} + resume"
    log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    ref_log = [json.loads(x) for x in (proj / "models" / "straight" / "tiny" / method / "train_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == list(range(1, 9))
    assert [x["loss"] for x in log] == [x["loss"] for x in ref_log]
