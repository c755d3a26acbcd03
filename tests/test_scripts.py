"""Shell wrappers: usage on wrong arguments, one clear line for unknown names, exit codes propagated."""
import pytest

from conftest import run_cli


@pytest.mark.parametrize("script,args", [("train.sh", []), ("train.sh", ["135m"]), ("merge.sh", ["135m"]),
                                         ("merge.sh", ["135m", "lora", "extra"])])
def test_usage_on_wrong_argument_count(script, args):
    r = run_cli("bash", f"scripts/{script}", *args)
    assert r.returncode == 2
    assert r.stderr.startswith(f"usage: bash scripts/{script} MODEL METHOD")


@pytest.mark.parametrize("script", ["train.sh", "merge.sh"])
def test_unknown_alias_lists_valid_ones(script):
    r = run_cli("bash", f"scripts/{script}", "13m", "lora")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: unknown model alias '13m'; valid: ") and "135m" in lines[0]


@pytest.mark.parametrize("script", ["train.sh", "merge.sh"])
def test_unknown_method_lists_valid_ones(script):
    r = run_cli("bash", f"scripts/{script}", "135m", "dorra")
    assert r.returncode == 2
    assert r.stderr.strip() == "error: unknown method 'dorra'; valid: dora, full, lora, qdora, qlora, rslora (configs/methods/)"


def test_unknown_experiment():
    r = run_cli("bash", "scripts/train.sh", "135m", "lora", env={"EXPERIMENT": "nope"})
    assert r.returncode == 2 and r.stderr.strip().startswith("error: unknown experiment 'nope'; valid: ")


def test_bad_override_is_one_line():
    r = run_cli("bash", "scripts/train.sh", "135m", "lora", "train.max_stepz=3")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "did you mean 'max_steps'" in r.stderr


def test_merge_before_training():
    r = run_cli("bash", "scripts/merge.sh", "135m", "lora", env={"EXPERIMENT": "paper"})
    assert r.returncode == 2
    assert "is not trained yet" in r.stderr and "scripts/train.sh 135m lora" in r.stderr
