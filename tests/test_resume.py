"""Interrupted training, run again: the resumed run ends bit-identical to an uninterrupted one.

Every interruption is at a fixed point (checkpoints every 2 of 8 steps, the last 2 kept), each after the first
checkpoint, so every case is a real resume (its summary names the checkpoint it resumed from):
- SIGKILL at the end of a step (train.py's FTCOMPARE_KILL_AT_STEP hook), all six methods;
- SIGKILL inside a checkpoint write: after the weights, before the optimizer state (a partial checkpoint on
  disk), and after the whole checkpoint and the rotation that deleted an older one, before its completion
  marker (a checkpoint that looks whole but is not marked);
- SIGKILL inside the final save (final/ must not appear);
- SIGINT (Ctrl-C) in the middle of a training step: exit 130 and a clear line.
The faults inside Trainer are injected by a driver that wraps Trainer methods in the child process only."""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, add_tiny_model_config, run_cli

ARGS = ["data.n_train=48", "data.n_val=8", "train.max_steps=8", "train.per_device_train_batch_size=4",
        "train.max_length=512", "train.save_steps=2", "train.save_total_limit=2", "train.warmup_steps=1",
        "train.num_threads=1"]

# Runs `python -m ftcompare ...` with one fault injected at FTC_TEST_FAULT = "<where>:<global step>".
DRIVER = r'''
import os, signal, sys
import transformers.trainer as T
from ftcompare.cli import main

where, step = os.environ["FTC_TEST_FAULT"].split(":")
step = int(step)

def hit(trainer):
    return trainer.state.global_step == step

if where == "optimizer":        # inside _save_checkpoint: weights written, optimizer state not yet
    orig_opt = T.Trainer._save_optimizer_and_scheduler
    def _opt(self, output_dir):
        if hit(self):
            os.kill(os.getpid(), signal.SIGKILL)
        return orig_opt(self, output_dir)
    T.Trainer._save_optimizer_and_scheduler = _opt
elif where == "rotate":         # checkpoint written, an older one deleted, completion marker not yet written
    orig_rot = T.rotate_checkpoints
    def _rot(*a, **kw):
        orig_rot(*a, **kw)
        os.kill(os.getpid(), signal.SIGKILL)
    orig_ckpt = T.Trainer._save_checkpoint
    def _ckpt(self, *a, **kw):
        if hit(self):
            T.rotate_checkpoints = _rot
        return orig_ckpt(self, *a, **kw)
    T.Trainer._save_checkpoint = _ckpt
elif where == "final":          # the final weights written into the staging folder, not yet moved to final/
    orig_save = T.Trainer.save_model
    def _save(self, output_dir=None, *a, **kw):
        out = orig_save(self, output_dir, *a, **kw)
        if str(output_dir).endswith(".final.partial"):
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    T.Trainer.save_model = _save
elif where == "sigint":         # Ctrl-C in the middle of a training step (after global_step steps)
    # what a terminal's Ctrl-C meets: Python's KeyboardInterrupt handler. A process started with SIGINT ignored
    # (e.g. pytest run as a background job of a non-interactive shell: children inherit the ignore) never gets it
    signal.signal(signal.SIGINT, signal.default_int_handler)
    orig_step = T.Trainer.training_step
    def _step(self, *a, **kw):
        if hit(self):
            os.kill(os.getpid(), signal.SIGINT)
        return orig_step(self, *a, **kw)
    T.Trainer.training_step = _step
else:
    raise SystemExit(f"unknown fault {where}")
sys.exit(main(sys.argv[1:]))
'''


@pytest.fixture()
def proj(project, tiny_model_dir):
    add_tiny_model_config(project, tiny_model_dir)
    return project


def _train(proj, method, out_experiment, kill_at=None, fault=None):
    """In process; or in a subprocess that SIGKILLs itself at the end of step `kill_at`, or runs with `fault`
    ("<where>:<step>", see DRIVER)."""
    overrides = [f"experiment.name={out_experiment}", *ARGS]
    if kill_at is None and fault is None:
        from ftcompare import config
        from ftcompare.train import train

        train(config.resolve_run("default", "tiny", method, config.parse_overrides(overrides)))
        return None
    env = {"FTCOMPARE_ROOT": str(proj), "OMP_NUM_THREADS": "1", "EXPERIMENT": "default"}
    cli = ["train", "--model", "tiny", "--method", method, *overrides]
    if fault is None:
        return run_cli(str(ROOT / ".venv/bin/python"), "-m", "ftcompare", *cli,
                       env={**env, "FTCOMPARE_KILL_AT_STEP": str(kill_at)})
    driver = proj / "fault_driver.py"
    driver.write_text(DRIVER)
    return run_cli(str(ROOT / ".venv/bin/python"), str(driver), *cli, env={**env, "FTC_TEST_FAULT": fault})


def _weights(run_dir):
    final = run_dir / "final"
    f = final / ("adapter_model.safetensors" if (final / "adapter_model.safetensors").exists() else "model.safetensors")
    return load_file(str(f))


def _resume_and_compare(proj, method, resumed_from):
    """Run the killed run again: it resumes from `resumed_from` and ends as the uninterrupted run did."""
    _train(proj, method, "straight")
    run = proj / "models" / "killed" / "tiny" / method
    assert not (run / "train_summary.json").exists() and not (run / "final").exists()
    _train(proj, method, "killed")
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["resumed_from"] == resumed_from
    a, b = _weights(proj / "models" / "straight" / "tiny" / method), _weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{method}: {k} differs after the interruption + resume"
    log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    ref_log = [json.loads(x) for x in (proj / "models" / "straight" / "tiny" / method / "train_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == list(range(1, 9))
    assert [(x["loss"], x["batch_sha256"]) for x in log] == [(x["loss"], x["batch_sha256"]) for x in ref_log]
    return run


@pytest.mark.parametrize("method,kill_at", [("full", 4), ("lora", 3), ("qlora", 7), ("dora", 5), ("rslora", 6),
                                            ("qdora", 3)])
def test_kill_at_step_end_and_resume_is_bit_identical(proj, method, kill_at):
    killed = _train(proj, method, "killed", kill_at=kill_at)
    assert killed.returncode == -9, f"not killed at step {kill_at}: rc={killed.returncode}"
    ckpts = proj / "models" / "killed" / "tiny" / method / "checkpoints"
    last_saved = (kill_at - 1) // 2 * 2  # killed in on_step_end of kill_at, before that step's own save
    assert last_saved >= 2 and (ckpts / f"checkpoint-{last_saved}" / "trainer_state.json").is_file()
    _resume_and_compare(proj, method, f"checkpoint-{last_saved}")


def test_kill_inside_a_checkpoint_write(proj):
    """Killed after checkpoint-4's weights, before its optimizer state: the partial checkpoint is discarded."""
    killed = _train(proj, "lora", "killed", fault="optimizer:4")
    assert killed.returncode == -9, killed.stderr[-2000:]
    partial = proj / "models" / "killed" / "tiny" / "lora" / "checkpoints" / "checkpoint-4"
    assert (partial / "adapter_model.safetensors").is_file() and not (partial / "optimizer.pt").exists()
    _resume_and_compare(proj, "lora", "checkpoint-2")


def test_kill_after_rotation_before_the_completion_marker(proj):
    """checkpoint-6 written in full and checkpoint-2 rotated away, killed before checkpoint-6 is marked complete:
    the resume takes checkpoint-4, never the unmarked one."""
    killed = _train(proj, "qlora", "killed", fault="rotate:6")
    assert killed.returncode == -9, killed.stderr[-2000:]
    ckpts = proj / "models" / "killed" / "tiny" / "qlora" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-4", "checkpoint-6"]
    assert (ckpts / "checkpoint-6" / "trainer_state.json").is_file()
    assert not (ckpts / "checkpoint-6" / ".ftcompare-complete").exists()
    _resume_and_compare(proj, "qlora", "checkpoint-4")


def test_kill_inside_the_final_save(proj):
    """Killed while the final weights are being saved: no final/, no summary; the re-run finishes the run (from
    checkpoint-6: a checkpoint at the last step cannot be resumed without one step more)."""
    killed = _train(proj, "full", "killed", fault="final:0")
    assert killed.returncode == -9, killed.stderr[-2000:]
    run = proj / "models" / "killed" / "tiny" / "full"
    assert (run / ".final.partial").is_dir()
    _resume_and_compare(proj, "full", "checkpoint-6")
    assert not (run / ".final.partial").exists()


def test_ctrl_c_during_a_step(proj):
    """SIGINT in the middle of step 5: exit 130 with one clear line; the re-run resumes from checkpoint-4."""
    killed = _train(proj, "dora", "killed", fault="sigint:4")
    assert killed.returncode == 130, killed.stderr[-2000:]
    assert "error: interrupted; re-run the same command to resume" in killed.stderr
    _resume_and_compare(proj, "dora", "checkpoint-4")
