"""The analyzer on real outputs: a tiny llama is trained (full, LoRA, QLoRA; 20 steps each), merged and
evaluated (merged and adapter variants) by `ftcompare.evaluate` with lm-eval in process on two small tasks
written here (multiple choice over packaged HellaSwag rows; a generate_until task with two filters).
Nothing in the evaluation outputs is hand-written.
Built once per session with the project's own train/merge/evaluate stages (~20 s); each test analyzes
its own copy.
"""
from __future__ import annotations

import csv
import io
import json
import math
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import ROOT, add_tiny_model_config

EXP = "default"
MC, GEN = "tiny_hellaswag", "tiny_gsm8k"
N_MC_ROWS, LIMIT = 48, 40        # the MC task has 48 documents; the experiment evaluates the first 40
GEN_DOCS = [("What is 2 plus 3?", "2+3=5 #### 5"), ("What is 4 plus 4?", "4+4=8 #### 8"),
            ("What is 10 minus 3?", "10-3=7 #### 7"), ("What is 3 times 3?", "3*3=9 #### 9"),
            ("What is 6 plus 6?", "6+6=12 #### 12"), ("What is 9 minus 4?", "9-4=5 #### 5"),
            ("What is 1 plus 1?", "1+1=2 #### 2"), ("What is 5 plus 2?", "5+2=7 #### 7")]
METHOD_LR = {"full": 1e-2, "lora": 5e-2, "qlora": 5e-2}  # large: a few steps must change some predictions
VARIANTS = {"full": ["merged"], "lora": ["merged", "adapter"], "qlora": ["merged", "adapter"]}  # full: no adapter


def _write_tasks(tasks: Path) -> None:
    from ftcompare.data import HELLASWAG_FIELDS, packaged_hellaswag_rows

    tasks.mkdir(parents=True)
    rows = packaged_hellaswag_rows("eval")[:N_MC_ROWS]
    (tasks / "hs.jsonl").write_text("".join(json.dumps({k: r[k] for k in HELLASWAG_FIELDS}) + "\n" for r in rows))
    (tasks / "gen.jsonl").write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in GEN_DOCS))
    (tasks / "tiny_utils.py").write_text(
        "from ftcompare.data import hellaswag_doc\n\n\ndef process_docs(ds):\n    return ds.map(hellaswag_doc)\n")
    (tasks / f"{MC}.yaml").write_text(f"""\
task: {MC}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {tasks / 'hs.jsonl'}
output_type: multiple_choice
test_split: test
process_docs: !function tiny_utils.process_docs
doc_to_text: "{{{{query}}}}"
doc_to_target: "{{{{gold}}}}"
doc_to_choice: "choices"
metric_list:
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
  - {{metric: acc_norm, aggregation: mean, higher_is_better: true}}
metadata:
  version: 1.0
  upstream_task: hellaswag
  report_metrics: ["acc_norm,none", "acc,none"]
  source: "{N_MC_ROWS} packaged HellaSwag rows"
  license: MIT
""")
    (tasks / f"{GEN}.yaml").write_text(f"""\
task: {GEN}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {tasks / 'gen.jsonl'}
output_type: generate_until
test_split: test
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_target: "{{{{answer.split('####')[-1].strip() if answer is defined else target}}}}"
num_fewshot: 2
fewshot_config:
  sampler: first_n
  samples:
    - {{question: "What is 1 plus 2?", target: "1 + 2 = 3. The answer is 3."}}
    - {{question: "What is 2 plus 2?", target: "2 + 2 = 4. The answer is 4."}}
generation_kwargs:
  do_sample: false
  until: ["Q:", "<|im_end|>"]
  max_gen_toks: 12
filter_list:
  - name: strict-match
    filter:
      - {{function: regex, regex_pattern: "The answer is (\\\\-?[0-9\\\\.\\\\,]+)."}}
      - {{function: take_first}}
  - name: flexible-extract
    filter:
      - {{function: regex, group_select: -1, regex_pattern: "(-?[$0-9.,]{{2,}})|(-?[0-9]+)"}}
      - {{function: take_first}}
metric_list:
  - {{metric: exact_match, aggregation: mean, higher_is_better: true, ignore_case: true, ignore_punctuation: false}}
metadata:
  version: 3.0
  upstream_task: gsm8k_cot
  report_metrics: ["exact_match,strict-match", "exact_match,flexible-extract"]
  license: MIT
  caveat: "{GEN} is scored by both filters."
""")


def write_tiny_model_data_methods(root: Path, model_dir: Path, method_lr: dict[str, float]) -> None:
    """The tiny model's config, 16 carved HellaSwag training examples (tinydata), and each method's learning rate."""
    add_tiny_model_config(root, model_dir, "tiny")
    (root / "configs" / "data" / "tinydata.yaml").write_text(
        "name: tinydata\nloader: hellaswag-packaged\ndescription: 16 carved HellaSwag training examples\n"
        "n_train: 16\nn_val: 8\nlicense: MIT (HellaSwag)\n")
    for method, lr in method_lr.items():
        p = root / "configs" / "methods" / f"{method}.yaml"
        p.write_text(p.read_text().replace("learning_rate: 2.0e-5", f"learning_rate: {lr}")
                     .replace("learning_rate: 2.0e-4", f"learning_rate: {lr}"))


def _write_configs(root: Path, model_dir: Path, tasks: Path) -> None:
    write_tiny_model_data_methods(root, model_dir, METHOD_LR)
    (root / "configs" / "experiments" / f"{EXP}.yaml").write_text(f"""\
name: {EXP}
description: tiny llama, full vs LoRA vs QLoRA (analyzer test)
offline: true
models: [tiny]
methods: [full, lora, qlora]
data: tinydata
train: {{seed: 42, max_steps: 20, per_device_train_batch_size: 4, per_device_eval_batch_size: 8, max_length: 512,
         warmup_steps: 1, logging_steps: 1, save_steps: 100, num_threads: 1}}
evaluation:
  tasks: [{MC}, {GEN}]
  num_fewshot: {{{MC}: 0, {GEN}: 2}}
  limit: {{{MC}: {LIMIT}}}
  batch_size: 8
  bootstrap_iters: 100
  include_path: {tasks}
  variants: [merged, adapter]
""")


@contextmanager
def tiny_project(parent: Path, model_dir: Path, write_configs):
    """A project root under `parent`: the repository's configs, the tiny tasks (MC, GEN) and the experiments
    `write_configs` writes; the project points at it (and lm-eval imports the tasks' module) inside the block."""
    import torch

    torch.set_num_threads(1)
    root = parent / "proj"
    root.mkdir()
    shutil.copytree(ROOT / "configs", root / "configs")
    for name in ("models", "evaluation_results", "results"):
        (root / name).mkdir()
    tasks = root / "tasks"
    _write_tasks(tasks)
    write_configs(root, model_dir, tasks)
    sys.path.insert(0, str(tasks))  # lm-eval imports the YAML's !function module
    mp = pytest.MonkeyPatch()
    try:
        _patch_paths(mp, root)
        yield root
    finally:
        mp.undo()
        sys.path.remove(str(tasks))


@pytest.fixture(scope="session")
def built_project(tmp_path_factory, tiny_model_dir) -> Path:
    """Train, merge and evaluate with the project's own stages (train.py, merge.py, evaluate.py)."""
    from ftcompare import config, evaluate
    from ftcompare.merge import merge
    from ftcompare.train import train

    with tiny_project(tmp_path_factory.mktemp("analyze"), tiny_model_dir, _write_configs) as root:
        evaluate.run(evaluate.build_plan(EXP, "tiny", "base"))
        for method in METHOD_LR:
            run = config.resolve_run(EXP, "tiny", method)
            train(run)
            merge(run)
            for variant in VARIANTS[method]:
                evaluate.run(evaluate.build_plan(EXP, "tiny", method, variant))
    return root


def _patch_paths(mp, root: Path) -> None:
    """Point the project at `root` ($FTCOMPARE_ROOT)."""
    from ftcompare import paths

    mp.setenv("FTCOMPARE_ROOT", str(root))
    fixed = {"ROOT": root, "CONFIGS": root / "configs", "MODELS": root / "models",
             "EVAL_RESULTS": root / "evaluation_results", "RESULTS": root / "results", "TASKS": root / "tasks"}
    for attr, value in fixed.items():
        if attr in vars(paths):   # only where paths are fixed at import (not computed from the root when asked)
            mp.setattr(paths, attr, value)


@pytest.fixture()
def proj(built_project, tmp_path, monkeypatch) -> Path:
    """A private copy of the built project (tests tamper with it), with ftcompare.paths pointing at it."""
    root = tmp_path / "proj"
    shutil.copytree(built_project, root, symlinks=True,
                    ignore=shutil.ignore_patterns("checkpoints", "*.safetensors", "nf4-base"))
    _patch_paths(monkeypatch, root)
    return root


def analyze(*, allow_missing=False) -> tuple[int, str, str]:
    from ftcompare.report import run

    out, err = io.StringIO(), io.StringIO()
    rc = run(EXP, allow_missing=allow_missing, out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def cell_dir(root: Path, name: str) -> Path:
    return root / "evaluation_results" / EXP / "tiny" / name


def outputs(root: Path) -> dict[str, bytes]:
    files = [root / "models_evaluation_record.md", *sorted((root / "results").rglob("*"))]
    return {str(p.relative_to(root)): p.read_bytes() for p in files if p.is_file()}


def _wilson_half_points(n: int, z: float = 1.959963984540054) -> int:
    """Half width (percentage points, rounded) of the Wilson 95% interval of k = n/2 of n, by the formula."""
    return round(100 * z * math.sqrt(0.25 / n + z * z / (4 * n * n)) / (1 + z * z / n))


def _check_record_numbers(proj: Path, record: str) -> None:
    """The record's numbers, recomputed here from the samples and JSON files (not from the analyzer's tables)."""
    def outcomes(name, task, metric, filt="none"):
        rows = map(json.loads, (cell_dir(proj, name) / f"samples_{task}.jsonl").read_text().splitlines())
        return {r["doc_id"]: r[metric] for r in rows if r["filter"] == filt}

    cells = ["full-merged", "lora-merged", "lora-adapter", "qlora-merged", "qlora-adapter"]
    n_total = n_sig_raw = n_findings = 0
    for task, keys in ((MC, [("acc_norm", "none"), ("acc", "none")]),
                       (GEN, [("exact_match", "strict-match"), ("exact_match", "flexible-extract")])):
        for metric, filt in keys:
            sides = {"base": outcomes("base", task, metric, filt), **{c: outcomes(c, task, metric, filt) for c in cells}}
            names = list(sides)
            for i, a in enumerate(names):
                for b in names[i + 1:]:
                    x, y = sides[a], sides[b]
                    only_a = sum(1 for d in x if x[d] == 1 and y[d] == 0)
                    only_b = sum(1 for d in x if x[d] == 0 and y[d] == 1)
                    m = only_a + only_b
                    p = 1.0 if m == 0 else min(1.0, 2 * sum(math.comb(m, j) for j in range(min(only_a, only_b) + 1))
                                               / 2 ** m)
                    n_total += 1
                    n_sig_raw += p < 0.05
                    if (task, metric, a) == (MC, "acc_norm", "base") and p >= 0.05:   # the plain-words finding
                        delta = 100 * (only_b - only_a) / len(x)
                        assert f"{b}: no difference from base detected ({delta:+.1f} points, 95% CI " in record, b
                        n_findings += 1
    assert n_total == 60 and n_findings > 0
    base_acc_norm = 100 * sum(outcomes("base", MC, "acc_norm").values()) / LIMIT
    assert f"- **{MC}** (acc_norm, n={LIMIT}, base {base_acc_norm:.1f}%), model tiny: " in record
    bottom = record.split("**Bottom line.** ")[1].splitlines()[0]
    bottom = bottom.split("Accuracy: ")[-1]  # after the continuous metric's sentence (tests/test_metrics.py)
    assert bottom.startswith(f"None of the {n_total} paired comparisons") or \
        bottom.startswith(f"{n_total} paired comparisons") or f" of {n_total} paired comparisons" in bottom
    if n_sig_raw and bottom.startswith("None"):
        assert f"({n_sig_raw} reach p < 0.05 before correction" in bottom
    # task facts from the task YAML's metadata, carried by lm-eval into results.json
    meta = json.loads((cell_dir(proj, "base") / "results.json").read_text())["configs"][MC]["metadata"]
    assert meta["source"] == f"{N_MC_ROWS} packaged HellaSwag rows" and meta["license"] == "MIT"
    assert f"| {MC} | {N_MC_ROWS} packaged HellaSwag rows (twin of lm-eval's `hellaswag`) | MIT | test | " \
           f"{LIMIT} of {N_MC_ROWS} | 0 |" in record
    assert f"- {GEN} is scored by both filters.\n" in record
    n_gen = len(GEN_DOCS)
    assert f"- Small evaluation sets (n = {n_gen}, {LIMIT}): 95% CIs are wide (at n={LIMIT} a single score's CI is " \
           f"about ±{_wilson_half_points(LIMIT)} points, at n={n_gen} about ±{_wilson_half_points(n_gen)})" in record
    for method in METHOD_LR:
        summary = json.loads((proj / "models" / EXP / "tiny" / method / "train_summary.json").read_text())
        c = summary["cost"]  # training steps only, from one process here
        assert f"| tiny | {method} | 20 | 1 | {c['tokens']:,} | {c['train_s']:,.1f} | {c['tokens_per_second']:,.1f} |" \
            in record
    assert "FLOPs/token = 6 N for full fine-tuning" in record and "trained before this accounting" not in record
    n_evals = 1 + sum(len(v) for v in VARIANTS.values())
    assert f"All checks passed for {n_evals} evaluations ({2 * n_evals} model x task results) and 3 training runs:" \
        in record


# --------------------------------------------------------------------------------------------------
def test_analyze_writes_record_tables_figures_and_is_byte_identical(proj):
    rc, out, err = analyze()
    assert rc == 0, err
    record = (proj / "models_evaluation_record.md").read_text()
    figs = sorted((proj / "results" / "figures").glob("*.png"))
    names = {p.name for p in figs}
    assert {f"scores_{MC}.png", f"scores_{GEN}.png", "delta_vs_base.png", "accuracy_vs_peak_memory.png",
            "accuracy_vs_train_time.png", "training_loss.png"} <= names
    for p in figs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
        assert f"](results/figures/{p.name})" in record, f"{p.name} not embedded"
    _check_record_numbers(proj, record)
    # no generation tasks: no chat section, link or figure (the chat experiment: tests/test_analyze_chat.py)
    assert "Conversational behaviour" not in record and "## 4a." not in record and "$" not in record
    assert not any(n.startswith("chat_") for n in names)
    assert "carries n, a 95% CI and a McNemar exact p-value" in record
    tables = proj / "results" / "model_comparison"
    for name in (f"{MC}.md", f"{MC}_scores.csv", f"{MC}_comparisons.csv", f"{GEN}_comparisons.csv",
                 "training_cost.csv", "training_cost.md", "all_results.csv"):
        assert (tables / name).is_file(), name
    cost = read_csv(tables / "training_cost.csv")
    assert [r["method"] for r in cost] == ["full", "lora", "qlora"]
    assert all(float(r["peak_memory_mb"]) > 0 and int(r["trainable_params"]) > 0 for r in cost)
    assert all(float(r["cost_peak_train_memory_mb"]) > 0 and float(r["cost_tokens_per_second"]) > 0 for r in cost)
    # every delta carries n, a CI and a paired p-value
    comps = read_csv(tables / f"{MC}_comparisons.csv") + read_csv(tables / f"{GEN}_comparisons.csv")
    assert len(comps) == (2 + 2) * (5 + 10)  # (acc_norm, acc, 2 gsm filters) x (5 vs base + 10 pairs)
    for r in comps:
        assert int(r["n"]) > 0 and float(r["ci95_low"]) <= float(r["delta"]) <= float(r["ci95_high"])
        assert 0 < float(r["p_value"]) <= 1 and float(r["p_holm"]) >= float(r["p_value"])

    before = outputs(proj)
    rc, _, err = analyze()
    assert rc == 0, err
    assert outputs(proj) == before  # no clock, no randomness: the same inputs give the same bytes


def test_tidy_table_equals_the_json(proj):
    assert analyze()[0] == 0
    rows = read_csv(proj / "results" / "model_comparison" / "all_results.csv")
    expected = {}
    for path in sorted((proj / "evaluation_results").rglob("results.json")):
        res = json.loads(path.read_text())
        b = res["ftcompare"]
        for task, metrics in res["results"].items():
            for key, value in metrics.items():
                if "," in key and "_stderr" not in key:
                    metric, filt = key.split(",", 1)
                    expected[(b["method"], task, metric, filt)] = (
                        value, metrics[f"{metric}_stderr,{filt}"], res["n-samples"][task]["effective"],
                        res["n-shot"][task], res["versions"][task], b["variant"] or "")
    got = {(r["method"], r["task"], r["metric"], r["filter"]): r for r in rows}
    assert set(got) == set(expected)
    for k, (value, stderr, n, nshot, version, variant) in expected.items():
        r = got[k]
        assert float(r["value"]) == value and float(r["stderr"]) == stderr
        assert (int(r["n"]), int(r["n_shot"]), float(r["task_version"]), r["variant"]) == (n, nshot, version, variant)
        assert r["experiment"] == EXP and r["model"] == "tiny" and r["batch_size"] == "8"
    assert {r["limit"] for r in rows if r["task"] == MC} == {str(LIMIT)}
    assert {r["n"] for r in rows if r["task"] == MC} == {str(LIMIT)}


def test_paired_test_in_the_tables_matches_a_hand_count(proj):
    assert analyze()[0] == 0
    rows = read_csv(proj / "results" / "model_comparison" / f"{MC}_comparisons.csv")

    def outcomes(name, metric):
        lines = (cell_dir(proj, name) / f"samples_{MC}.jsonl").read_text().splitlines()
        return {r["doc_id"]: r[metric] for r in map(json.loads, lines)}

    checked = 0
    for row in rows:
        if row["comparison"] != "vs base":
            continue
        base, other = outcomes("base", row["metric"]), outcomes(row["second"], row["metric"])
        b = sum(1 for d in base if base[d] == 1 and other[d] == 0)   # right for base only
        c = sum(1 for d in base if base[d] == 0 and other[d] == 1)   # right for the method only
        m = b + c
        p = 1.0 if m == 0 else min(1.0, 2 * sum(math.comb(m, i) for i in range(min(b, c) + 1)) / 2 ** m)
        assert (int(row["n_right_first_only"]), int(row["n_right_second_only"])) == (b, c)
        assert float(row["delta"]) == pytest.approx((c - b) / len(base), abs=1e-6)
        assert float(row["p_value"]) == pytest.approx(p, abs=1e-6)
        checked += m > 0
    assert checked, "the fixture's training should change some predictions (discordant pairs)"


def test_missing_cell_fails_unless_allowed_and_is_never_plotted(proj):
    shutil.rmtree(cell_dir(proj, "qlora-merged"))
    rc, _, err = analyze()
    assert rc == 1
    assert "evaluation_results/default/tiny/qlora-merged/results.json" in err and "method=qlora" in err
    assert not (proj / "models_evaluation_record.md").exists()  # nothing written on failure

    rc, _, err = analyze(allow_missing=True)
    assert rc == 0, err
    record = (proj / "models_evaluation_record.md").read_text()
    assert "MISSING `evaluation_results/default/tiny/qlora-merged/results.json`" in record
    scores = read_csv(proj / "results" / "model_comparison" / f"{MC}_scores.csv")
    assert "qlora-merged" not in {r["evaluated"] for r in scores}
    comps = read_csv(proj / "results" / "model_comparison" / f"{MC}_comparisons.csv")
    assert all("qlora-merged" not in (r["first"], r["second"]) for r in comps)
    assert any(r["second"] == "qlora-adapter" for r in comps)  # the rest is still compared


@pytest.mark.parametrize("what", ["value", "value_integral", "stderr", "samples"])
def test_tampered_results_fail_the_consistency_check(proj, what):
    path = cell_dir(proj, "lora-merged") / "results.json"
    res = json.loads(path.read_text())
    r = res["results"][MC]
    if what == "value":            # not a whole number of correct items
        r["acc,none"] = r["acc,none"] + 0.003
        field = f"results.{MC}.acc,none"
    elif what == "value_integral":  # one more correct item: only the samples can tell
        r["acc,none"] = r["acc,none"] + 1 / LIMIT if r["acc,none"] < 0.5 else r["acc,none"] - 1 / LIMIT
        r["acc_stderr,none"] = math.sqrt(r["acc,none"] * (1 - r["acc,none"]) / (LIMIT - 1))
        field = f"results.{MC}.acc,none"
    elif what == "stderr":
        r["acc_norm_stderr,none"] *= 1.5
        field = f"results.{MC}.acc_norm_stderr,none"
    else:                           # a per-item outcome flipped in the samples file
        spath = cell_dir(proj, "lora-merged") / f"samples_{MC}.jsonl"
        lines = spath.read_text().splitlines()
        first = json.loads(lines[0])
        first["acc"] = 1.0 - first["acc"]
        spath.write_text("\n".join([json.dumps(first)] + lines[1:]) + "\n")
        field = f"results.{MC}.acc,none"
    if what != "samples":
        path.write_text(json.dumps(res, indent=2))
    rc, _, err = analyze(allow_missing=True)  # integrity failures are never waived
    assert rc == 1
    line = next(x for x in err.splitlines() if field in x)
    assert "evaluation_results/default/tiny/lora-merged/results.json" in line


def test_incomparable_settings_and_documents_are_refused(proj):
    path = cell_dir(proj, "full-merged") / "results.json"
    res = json.loads(path.read_text())
    res["n-shot"][MC] = 5
    res["versions"][GEN] = 2.0
    res["ftcompare"]["lm_eval_version"] = "0.4.9"  # a results.json from another lm-eval version
    path.write_text(json.dumps(res, indent=2))
    spath = cell_dir(proj, "qlora-merged") / f"samples_{MC}.jsonl"
    lines = spath.read_text().splitlines()
    first = json.loads(lines[0])
    first["doc_hash"] = "0" * 64
    spath.write_text("\n".join([json.dumps(first)] + lines[1:]) + "\n")
    rc, _, err = analyze(allow_missing=True)
    assert rc == 1
    assert any(f"full-merged/results.json: n-shot.{MC}:" in x for x in err.splitlines())
    assert any(f"full-merged/results.json: versions.{GEN}:" in x for x in err.splitlines())
    assert any("full-merged/results.json: ftcompare.lm_eval_version: '0.4.9' != '0.4.13'" in x for x in err.splitlines())
    assert any(f"qlora-merged/samples_{MC}.jsonl: doc_hash" in x for x in err.splitlines())


def test_identity_comes_from_the_json_not_the_path(proj):
    a, b = cell_dir(proj, "lora-merged"), cell_dir(proj, "qlora-merged")
    tmp = a.with_name("swap")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    rc, _, err = analyze()
    assert rc == 1
    assert "lora-merged/results.json: ftcompare: says experiment=default model=tiny method=qlora" in err


def test_runs_differing_in_more_than_the_method_are_refused(proj):
    cfg_path = proj / "models" / EXP / "tiny" / "lora" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["config"]["train"]["max_steps"] = 99
    cfg_path.write_text(json.dumps(cfg))
    rc, _, err = analyze()
    assert rc == 1
    assert "models/default/tiny/lora/config.json: train.max_steps: differs from" in err


def test_cli_entry_points():
    r = subprocess.run([sys.executable, "analyze_results.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "--allow-missing" in r.stdout
    r = subprocess.run([sys.executable, "-m", "ftcompare", "analyze", "--help"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0 and "--allow-missing" in r.stdout, r.stderr


def test_other_experiments_go_to_all_results_and_never_block(proj):
    for name, tamper in (("base", False), ("full-merged", True)):
        src, dst = cell_dir(proj, name), proj / "evaluation_results" / "other" / "tiny" / name
        shutil.copytree(src, dst)
        res = json.loads((dst / "results.json").read_text())
        res["ftcompare"]["experiment"] = "other"
        if tamper:
            res["results"][MC]["acc,none"] += 0.003
        (dst / "results.json").write_text(json.dumps(res))
    rc, _, err = analyze()
    assert rc == 0, err
    assert "warning: evaluation_results/other/tiny/full-merged/results.json: results." in err
    rows = read_csv(proj / "results" / "model_comparison" / "all_results.csv")
    assert {(r["experiment"], r["method"]) for r in rows if r["experiment"] == "other"} == {("other", "base")}


def test_output_layout(project):
    from ftcompare.report import layout as a
    from ftcompare.errors import FtcError

    assert a.record_path("default") == project / "models_evaluation_record.md"
    assert a.figures_dir("default") == project / "results" / "figures"
    assert a.record_path("paper") == project / "results" / "paper" / "models_evaluation_record.md"
    assert a.tables_dir("paper") == project / "results" / "paper" / "model_comparison"
    assert a.all_results_csv() == project / "results" / "model_comparison" / "all_results.csv"
    for bad in ("figures", "model_comparison", "../x"):
        with pytest.raises(FtcError):
            a.record_path(bad)


def test_results_evaluated_with_other_settings_than_the_config_are_refused(proj):
    cfg = proj / "configs" / "experiments" / f"{EXP}.yaml"
    cfg.write_text(cfg.read_text().replace(f"limit: {{{MC}: {LIMIT}}}", f"limit: {{{MC}: 30}}"))
    rc, _, err = analyze()
    assert rc == 1
    assert f"base/results.json: n-samples.{MC}.effective: {LIMIT} of {N_MC_ROWS}, but" in err


def test_runs_of_one_model_from_different_hub_revisions_are_refused(proj):
    """The analyzer refuses runs of one model made from different hub revisions (hub.revision_problems)."""
    rc, _, _ = analyze()
    assert rc == 0
    for method, rev in (("full", "aaaa111"), ("lora", "bbbb222")):
        path = proj / "models" / EXP / "tiny" / method / "train_summary.json"
        summary = json.loads(path.read_text())
        summary.setdefault("manifest", {})["hub"] = {"model": {"id": "org/tiny", "revision": rev}}
        path.write_text(json.dumps(summary))
    rc, _, err = analyze()
    assert rc == 1
    assert "manifest.hub: model tiny (org/tiny) comes from" in err and "aaaa111" in err and "bbbb222" in err
