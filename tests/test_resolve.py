""""Changing one config key re-runs exactly what changed", piece by piece: `io.write_if_changed` (a stamp's
mtime moves only on a real change), `ftcompare resolve` (the stamps make reads), `ftcompare list` (the names
the Makefile iterates over), and the merge/evaluate refusals when a stage's input is from another config.
The make side (which stages `make -n` plans) is tests/test_makefile.py."""
from __future__ import annotations

import json
import os

import pytest

from conftest import add_tiny_model_config
from ftcompare import cli, config, io, paths


def _old(path, seconds=1000):
    t = path.stat().st_mtime - seconds
    os.utime(path, (t, t))
    return path.stat().st_mtime


def test_write_if_changed(tmp_path):
    f = tmp_path / "sub" / "stamp.json"
    assert io.write_if_changed(f, "a\n") is True and f.read_text() == "a\n"
    before = _old(f)
    assert io.write_if_changed(f, "a\n") is False
    assert f.stat().st_mtime == before                    # same text: untouched, make sees nothing new
    assert io.write_if_changed(f, "b\n") is True and f.read_text() == "b\n"
    assert f.stat().st_mtime > before
    assert not [p for p in f.parent.iterdir() if p.name.endswith(".tmp")]


def _resolve(capsys, *args):
    code = cli.main(["resolve", *args])
    return code, capsys.readouterr().err


def test_resolve_writes_the_stamp_once_and_again_only_on_a_change(project, capsys):
    stamp = paths.run_dir("default", "135m", "lora") / "resolved.json"
    other = paths.run_dir("default", "135m", "full") / "resolved.json"
    code, err = _resolve(capsys, "--run", "135m/lora", "--run", "135m/full")
    assert code == 0 and "models/default/135m/lora/resolved.json changed" in err
    data = json.loads(stamp.read_text())
    run = config.resolve_run("default", "135m", "lora")
    assert data == json.loads(json.dumps({"config_hash": run.hash(), "config": run.to_dict()}))
    t_lora, t_full = _old(stamp), _old(other)

    code, err = _resolve(capsys, "--run", "135m/lora", "--run", "135m/full")     # nothing changed
    assert code == 0 and err == "" and stamp.stat().st_mtime == t_lora and other.stat().st_mtime == t_full

    code, err = _resolve(capsys, "--model", "135m", "--method", "lora", "train.max_steps=5")   # one key
    assert code == 0 and "lora/resolved.json changed" in err
    changed = json.loads(stamp.read_text())
    assert changed["config"]["train"]["max_steps"] == 5 and changed["config_hash"] != data["config_hash"]
    assert changed["config_hash"] == config.resolve_run("default", "135m", "lora", {"train.max_steps": 5}).hash()
    assert other.stat().st_mtime == t_full                                        # the other run untouched

    f = project / "configs" / "methods" / "lora.yaml"                           # a method key in the YAML
    f.write_text(f.read_text().replace("learning_rate: 2.0e-4", "learning_rate: 3.0e-4"))
    _resolve(capsys, "--run", "135m/lora")
    assert json.loads(stamp.read_text())["config"]["method"]["learning_rate"] == 3.0e-4


def test_resolve_eval_settings(project, capsys):
    stamp = paths.EVAL_RESULTS / "default" / "eval_settings.json"
    code, err = _resolve(capsys, "--eval")
    assert code == 0 and "evaluation_results/default/eval_settings.json changed" in err
    first = json.loads(stamp.read_text())
    assert first["evaluation"]["limit"] == {"ftc_hellaswag": 200, "ftc_gsm8k_cot": 20, "ftc_gsm8k_bpb": 20}
    t = _old(stamp)
    assert _resolve(capsys, "--eval") == (0, "") and stamp.stat().st_mtime == t
    f = project / "configs" / "experiments" / "default.yaml"
    f.write_text(f.read_text().replace("limit: {ftc_hellaswag: 200,", "limit: {ftc_hellaswag: 100,"))
    assert "changed" in _resolve(capsys, "--eval")[1]
    assert json.loads(stamp.read_text())["config_hash"] != first["config_hash"]


@pytest.mark.parametrize("args, message", [
    ([], "resolve needs --model and --method, --run MODEL/METHOD, or --eval"),
    (["--model", "135m"], "resolve needs --model and --method together"),
    (["--run", "135m"], "--run 135m: expected MODEL/METHOD"),
    (["--run", "135m/lorra"], "lorra"),
])
def test_resolve_errors(project, capsys, args, message):
    code, err = _resolve(capsys, *args)
    assert code == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("what, expected", [
    ("models", "135m"), ("methods", "full lora qlora"), ("adapter-methods", "lora qlora"), ("variants", "merged"),
    ("tasks", "ftc_hellaswag ftc_mmlu_high_school_computer_science ftc_gsm8k_cot"),
])
def test_list_names_for_the_makefile(project, capsys, what, expected):
    assert cli.main(["list", what, "--experiment", "default"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.split(" ")[:len(expected.split())] == expected.split() if what == "tasks" else out == expected


def test_list_all(project, capsys):
    assert cli.main(["list", "all-models"]) == 0
    models = capsys.readouterr().out.split()
    assert "135m" in models and models == sorted(config.available("models"))
    assert cli.main(["list", "all-methods"]) == 0
    assert {"full", "lora", "qlora"} <= set(capsys.readouterr().out.split())


def _fake_run(project, tiny_model_dir, method="lora", summary_hash=None, merged_hash=None):
    add_tiny_model_config(project, tiny_model_dir)
    run = config.resolve_run("default", "tiny", method)
    d = paths.run_dir("default", "tiny", method)
    (d / "final").mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"config_hash": run.hash(), "config": run.to_dict()}))
    (d / "train_summary.json").write_text(json.dumps({"config_hash": summary_hash or run.hash()}))
    if merged_hash:
        (d / "merged").mkdir()
        (d / "merged" / "merge_manifest.json").write_text(json.dumps({"config_hash": merged_hash}))
    return run


def test_merge_and_evaluate_refuse_a_training_run_of_another_config(project, tiny_model_dir, capsys):
    run = _fake_run(project, tiny_model_dir, summary_hash="0" * 16)
    assert cli.main(["merge", "--model", "tiny", "--method", "lora"]) == 2
    err = capsys.readouterr().err
    assert f"train_summary.json does not match models/default/tiny/lora/config.json (0000000000000000 != {run.hash()})" \
        in err and "re-train" in err
    assert cli.main(["evaluate", "--model", "tiny", "--method", "lora"]) == 2
    err = capsys.readouterr().err
    assert f"(0000000000000000) does not match models/default/tiny/lora/config.json ({run.hash()})" in err


def test_evaluate_refuses_a_merge_of_another_config(project, tiny_model_dir, capsys):
    run = _fake_run(project, tiny_model_dir, merged_hash="1" * 16)
    assert cli.main(["evaluate", "--model", "tiny", "--method", "lora"]) == 2
    err = capsys.readouterr().err
    assert f"was merged from another training config (1111111111111111 != {run.hash()})" in err
    assert "scripts/merge.sh tiny lora" in err
