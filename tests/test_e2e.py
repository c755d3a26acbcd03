"""End to end on the embedded default (SmolLM2-135M-Instruct from the GGUF package): train + merge each
method for a handful of steps through the real scripts, in an isolated project root."""
import json

import pytest

from conftest import copy_project, run_cli

pytestmark = pytest.mark.slow

STEPS = ["train.max_steps=2", "train.save_steps=100", "data.n_train=16", "data.n_val=8",
         "train.per_device_train_batch_size=4"]


@pytest.fixture(scope="module")
def proj(tmp_path_factory):
    return copy_project(tmp_path_factory.mktemp("e2e"))


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_train_and_merge_135m(proj, method):
    env = {"FTCOMPARE_ROOT": str(proj), "OMP_NUM_THREADS": "2"}
    r = run_cli("bash", "scripts/train.sh", "135m", method, *STEPS, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    run = proj / "models" / "default" / "135m" / method
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["global_step"] == 2 and summary["val_loss"] < 10
    assert (run / "train_log.jsonl").read_text().count("\n") == 2
    assert json.loads((run / "config.json").read_text())["config"]["train"]["max_steps"] == 2

    again = run_cli("bash", "scripts/train.sh", "135m", method, *STEPS, env=env)
    assert again.returncode == 0 and "is up to date" in again.stdout

    r = run_cli("bash", "scripts/merge.sh", "135m", method, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    merged = run / "merged"
    assert (merged / "model.safetensors").is_file() and (merged / "tokenizer.json").is_file()
    cfg = json.loads((merged / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["num_hidden_layers"] == 30
