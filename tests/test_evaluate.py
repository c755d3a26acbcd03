"""Evaluation stage on a tiny trained llama: fixed result files, base vs adapter vs merged consistency,
up-to-date skipping, no results.json after a killed run, and the wrapper's argument errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from conftest import ROOT, add_tiny_model_config, copy_project, run_cli, use_root
from ftcompare import cli, config, paths

TINY = {"data.n_train": 32, "data.n_val": 8, "train.max_steps": 2, "train.per_device_train_batch_size": 4,
        "train.per_device_eval_batch_size": 8, "train.max_length": 512, "train.save_steps": 100,
        "train.warmup_steps": 0, "train.num_threads": 1,
        "method.learning_rate": 1e-2}  # large enough that 2 steps move the adapter visibly away from zero
TASKS = "ftc_hellaswag,ftc_mmlu_high_school_computer_science,ftc_gsm8k_cot"
LOGLIK_TASKS = ("ftc_hellaswag", "ftc_mmlu_high_school_computer_science")


@pytest.fixture(scope="module")
def proj(tiny_model_dir, tmp_path_factory):
    """An isolated project with the tiny model trained (2 steps) and merged with LoRA and QLoRA."""
    import torch

    from ftcompare.merge import merge
    from ftcompare.train import train

    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch()
    root = use_root(mp, copy_project(tmp_path_factory.mktemp("evalproj")))
    alias = add_tiny_model_config(root, tiny_model_dir)
    for method in ("lora", "qlora"):
        run = config.resolve_run("default", alias, method, TINY)
        train(run)
        merge(run)
    yield root
    mp.undo()


def evaluate(*args) -> int:
    return cli.main(["evaluate", "--model", "tiny", *args])


def read_results(method: str, variant: str = "merged") -> dict:
    return json.loads((paths.eval_dir("default", "tiny", method, variant) / "results.json").read_text())


def read_samples(method: str, variant: str, task: str) -> list[dict]:
    f = paths.eval_dir("default", "tiny", method, variant) / f"samples_{task}.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines()]


def logliks(sample: dict) -> list[float]:
    """Per-choice log-likelihoods of a multiple-choice sample (lm-eval writes resps as strings)."""
    return [float(r[0][0]) for r in sample["resps"]]


def test_base_adapter_merged_are_consistent(proj):
    variants = [("base", "merged"), ("lora", "merged"), ("lora", "adapter"), ("qlora", "merged"), ("qlora", "adapter")]
    for method, variant in variants:
        assert evaluate("--method", method, "--variant", variant, "--tasks", TASKS, "--limit", "3") == 0

    # fixed paths; results.json = lm-eval's dict + the ftcompare block; per-sample files per task
    base = read_results("base")
    assert (proj / "evaluation_results" / "default" / "tiny" / "base" / "results.json").is_file()
    assert "samples" not in base
    for key in ("results", "configs", "versions", "n-shot", "n-samples", "higher_is_better", "config"):
        assert key in base
    ftc = base["ftcompare"]
    assert ftc["tasks"] == TASKS.split(",") and ftc["n"] == {t: 3 for t in ftc["tasks"]}
    assert ftc["num_fewshot"] == {"ftc_hellaswag": 0, "ftc_mmlu_high_school_computer_science": 0, "ftc_gsm8k_cot": 8}
    assert ftc["method"] == "base" and ftc["variant"] is None and ftc["run_config_hash"] is None
    assert ftc["bootstrap_iters"] == 1000 and ftc["batch_size"] == 8 and ftc["lm_eval_version"]
    assert set(ftc["seconds_per_task"]) == set(ftc["tasks"]) and ftc["manifest"]["versions"]["lm_eval"]
    r = base["results"]
    assert isinstance(r["ftc_hellaswag"]["acc_norm_stderr,none"], float)
    assert {"exact_match,strict-match", "exact_match,flexible-extract"} <= set(r["ftc_gsm8k_cot"])
    gsm = read_samples("base", "merged", "ftc_gsm8k_cot")
    assert sorted((s["doc_id"], s["filter"]) for s in gsm) == sorted(
        (i, f) for i in range(3) for f in ("strict-match", "flexible-extract"))
    assert all("exact_match" in s for s in gsm)

    qa = read_results("qlora", "adapter")["ftcompare"]
    assert "NF4" in qa["loaded"] and qa["adapter_path"].endswith("qlora/final")
    assert qa["run_config_hash"] == qa["train_config_hash"] is not None
    assert "merged" in read_results("qlora")["ftcompare"]["loaded"]

    for task in LOGLIK_TASKS:
        b = {s["doc_id"]: s for s in read_samples("base", "merged", task)}
        # relative tolerance of a summed log-likelihood: fp32 noise (QLoRA: the adapter runs on the NF4 base with
        # fp32 dequantize + matmul, as in training; merged = that base dequantized + the adapter merged)
        for method, rel in (("lora", 1e-6), ("qlora", 1e-6)):
            m = {s["doc_id"]: s for s in read_samples(method, "merged", task)}
            a = {s["doc_id"]: s for s in read_samples(method, "adapter", task)}
            assert m.keys() == a.keys() == b.keys() == {0, 1, 2}
            tols, shifts = [], []
            for i in m:
                lm, la, lb = logliks(m[i]), logliks(a[i]), logliks(b[i])
                tol = rel * max(map(abs, la)) + 1e-5
                # merged == un-merged adapter within float noise
                assert max(abs(x - y) for x, y in zip(lm, la)) < tol, (task, method, i, lm, la)
                tols.append(tol)
                shifts.append(max(abs(x - y) for x, y in zip(la, lb)))
                top = sorted(la, reverse=True)
                if top[0] - top[1] > 10 * tol:  # a clear winner: the same prediction, the same score
                    assert m[i]["acc"] == a[i]["acc"]
            assert max(shifts) > 10 * max(tols), (task, method, shifts, tols)  # the adapter is applied
        for method in ("lora", "qlora"):
            ra, rm = read_results(method, "adapter")["results"][task], read_results(method)["results"][task]
            assert ra["acc,none"] == pytest.approx(rm["acc,none"], abs=0.34)  # at most one of 3 near-ties flips


def test_up_to_date_then_force_and_changed_settings(proj, capsys):
    args = ["--method", "base", "--tasks", "ftc_mmlu_high_school_computer_science", "--limit", "2"]
    assert evaluate(*args) == 0
    results = paths.eval_dir("default", "tiny", "base") / "results.json"
    first = results.read_text()
    capsys.readouterr()
    assert evaluate(*args) == 0
    assert "is up to date" in capsys.readouterr().out and results.read_text() == first
    assert evaluate(*args, "--variant", "adapter") == 0  # the untuned model has one result, whatever the variant
    assert "is up to date" in capsys.readouterr().out
    assert evaluate(*args[:-1], "3") == 0  # another limit: re-evaluated
    assert read_results("base")["ftcompare"]["n"] == {"ftc_mmlu_high_school_computer_science": 3}
    assert evaluate(*args[:-1], "3", "--force") == 0
    assert "is up to date" not in capsys.readouterr().out


def test_interrupted_evaluation_leaves_no_results_json(proj, monkeypatch):
    from ftcompare import evaluate as ev

    out = paths.eval_dir("default", "tiny", "lora", "adapter")
    real = ev._run_task
    calls = []

    def dies_in_second_task(lm, task, plan, tm):
        calls.append(task)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(lm, task, plan, tm)

    monkeypatch.setattr(ev, "_run_task", dies_in_second_task)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text('{"older": "a finished run of this cell"}\n')  # this test's own older result
    rc = evaluate("--method", "lora", "--variant", "adapter", "--tasks",
                  "ftc_mmlu_high_school_computer_science,ftc_hellaswag", "--limit", "2", "--force")
    assert rc == 130 and len(calls) == 2
    assert not (out / "results.json").exists()  # an older, finished result was removed when this run started
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_sigterm_leaves_no_results_json(proj):
    """The real thing: the wrapper's process is killed (as make or a user does) while evaluating."""
    out = paths.eval_dir("default", "tiny", "qlora", "merged")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text('{"older": "a finished run of this cell"}\n')  # removed when the run starts
    env = {**os.environ, "FTCOMPARE_ROOT": str(proj), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(["bash", "scripts/evaluate_models.sh", "tiny", "qlora", "merged", "--tasks", "ftc_gsm8k_cot",
                          "--limit", "20", "--force"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stdout:
            if line.startswith("[evaluate]") and "ftc_gsm8k_cot" in line:
                break
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=60)
    finally:
        p.kill()
    assert rc == 130, p.stderr.read()[-2000:]
    assert not (out / "results.json").exists()
    assert not [q for q in out.iterdir() if q.name.endswith(".tmp")]


def test_errors_the_user_can_fix(proj, capsys):
    add_tiny_model_config(proj, proj / "unused", alias="tiny2")
    cases = [
        (["--method", "full", "--variant", "adapter"], "trains every weight"),
        (["--method", "full"], "scripts/train.sh tiny full"),
        (["--method", "lora", "--variant", "fused"], "variant 'fused' is not valid"),
        (["--method", "dorra"], "valid: base (the untuned model), dora, full, lora, qdora, qlora, rslora"),
        (["--method", "base", "--limit", "0"], "--limit must be a positive"),
        (["--method", "base", "--tasks", "hellaswag"], "unknown task(s) hellaswag"),
    ]
    for args, message in cases:
        assert evaluate(*args) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, (args, err)

    # trained but not merged: say which script to run
    run = config.resolve_run("default", "tiny2", "lora", TINY)
    d = paths.run_dir("default", "tiny2", "lora")
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"config_hash": run.hash(), "config": run.to_dict()}))
    (d / "train_summary.json").write_text(json.dumps({"config_hash": run.hash()}))
    assert cli.main(["evaluate", "--model", "tiny2", "--method", "lora"]) == 2
    assert "scripts/merge.sh tiny2 lora" in capsys.readouterr().err


@pytest.mark.parametrize("args", [[], ["135m"], ["135m", "lora"]])
def test_wrapper_usage_on_wrong_argument_count(args):
    r = run_cli("bash", "scripts/evaluate_models.sh", *args)
    assert r.returncode == 2 and r.stderr.startswith("usage: bash scripts/evaluate_models.sh MODEL")


def test_wrapper_argument_errors():
    r = run_cli("bash", "scripts/evaluate_models.sh", "135m", "lora", "fused")
    assert r.returncode == 2 and "variant 'fused' is not merged or adapter" in r.stderr
    r = run_cli("bash", "scripts/evaluate_models.sh", "13m", "qlora", "merged")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown model alias '13m'; valid: ") and "135m" in lines[0]
    r = run_cli("bash", "scripts/evaluate_models.sh", "135m", "full", "adapter")
    assert r.returncode == 2 and "no adapter" in r.stderr


def test_env_report_collected_once_per_stage(monkeypatch):
    """lm-eval collects torch's environment report in every simple_evaluate call; the stage reuses the first."""
    import torch.utils.collect_env as collect_env

    from ftcompare.evaluate import _env_report_once

    calls = []
    monkeypatch.setattr(collect_env, "get_pretty_env_info", lambda: calls.append(1) or "env")
    with _env_report_once():
        assert collect_env.get_pretty_env_info() == collect_env.get_pretty_env_info() == "env"
    assert len(calls) == 1
    collect_env.get_pretty_env_info()
    assert len(calls) == 2  # restored after the block
