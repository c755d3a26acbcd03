"""The analyzer on a seeded experiment (train.seeds), from real outputs: a tiny llama trained with full
fine-tuning and LoRA under two seeds (16 steps each), merged and evaluated with lm-eval in process on
a small multiple-choice task (tests/test_analyze.py's), the base model once. Nothing in the evaluation outputs is
hand-written; the seed statistics are recomputed here from the per-item samples."""
from __future__ import annotations

import csv
import io
import json
import shutil
import statistics
from pathlib import Path

import pytest

from test_analyze import MC, tiny_project, write_tiny_model_data_methods

EXP, ONE = "tinyseeds", "tinyone"
SEEDS = (42, 43)
METHOD_LR = {"full": 3e-2, "lora": 2e-1}  # large: the seeds must end in models that answer differently


def _write_configs(root: Path, model_dir: Path, tasks: Path) -> None:
    write_tiny_model_data_methods(root, model_dir, METHOD_LR)
    for name, seeds in ((EXP, f", seeds: [{', '.join(map(str, SEEDS))}]"), (ONE, "")):
        (root / "configs" / "experiments" / f"{name}.yaml").write_text(f"""\
name: {name}
description: tiny llama, full vs LoRA (seed analyzer test)
offline: true
models: [tiny]
methods: [full, lora]
data: tinydata
train: {{seed: 42{seeds}, max_steps: 16, per_device_train_batch_size: 4, per_device_eval_batch_size: 8,
         max_length: 512, warmup_steps: 1, logging_steps: 1, save_steps: 100, num_threads: 1}}
evaluation:
  tasks: [{MC}]
  num_fewshot: {{{MC}: 0}}
  limit: {{{MC}: 40}}
  batch_size: 8
  bootstrap_iters: 100
  include_path: {tasks}
  variants: [merged]
""")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, tiny_model_dir) -> Path:
    from ftcompare import config, evaluate
    from ftcompare.merge import merge
    from ftcompare.train import train

    with tiny_project(tmp_path_factory.mktemp("seeds"), tiny_model_dir, _write_configs) as root:
        evaluate.run(evaluate.build_plan(EXP, "tiny", "base"))
        evaluate.run(evaluate.build_plan(ONE, "tiny", "base"))
        for method in METHOD_LR:
            for seed in SEEDS:
                run = config.resolve_run(EXP, "tiny", method, seed=seed)
                train(run)
                merge(run)
                evaluate.run(evaluate.build_plan(EXP, "tiny", method, "merged", seed=seed))
    return root


@pytest.fixture()
def proj(seeded, tmp_path, monkeypatch) -> Path:
    root = tmp_path / "proj"
    shutil.copytree(seeded, root, symlinks=True, ignore=shutil.ignore_patterns("checkpoints", "*.safetensors"))
    monkeypatch.setenv("FTCOMPARE_ROOT", str(root))
    return root


def analyze(experiment: str, **kw) -> tuple[int, str]:
    from ftcompare.report import run

    out, err = io.StringIO(), io.StringIO()
    rc = run(experiment, out=out, err=err, **kw)
    return rc, err.getvalue()


def _csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _score(root: Path, name: str, metric: str) -> float:
    """A cell's score recomputed from its per-item samples."""
    rows = [json.loads(line) for line in (root / "evaluation_results" / EXP / "tiny" / name /
                                          f"samples_{MC}.jsonl").read_text().splitlines()]
    return statistics.fmean(r[metric] for r in rows)


def test_seed_mean_and_spread_and_the_rule(proj):
    from scipy import stats

    rc, err = analyze(EXP)
    assert rc == 0, err
    tables = proj / "results" / EXP / "model_comparison"
    spreads = {(r["method"], r["metric"]): r for r in _csv(tables / "seed_variation.csv")}
    continuous = ("gold_logprob", "gold_prob", "margin_norm")  # re-derived from the samples (report.mc)
    assert set(spreads) == {(m, k) for m in METHOD_LR for k in ("acc", "acc_norm", *continuous)}
    cont = _csv(tables / f"{MC}_continuous_scores.csv")
    seed_scores = {}
    for (method, metric), r in spreads.items():
        if metric in continuous:  # each seed's score as the per-task continuous table gives it
            values = [float(next(c["value"] for c in cont if (c["metric"], c["method"], c["seed"]) == (metric, method, str(s))))
                      for s in SEEDS]
        else:
            values = [_score(proj, f"{method}/seed-{s}-merged", metric) for s in SEEDS]
        seed_scores[(method, metric)] = values
        assert r["k"] == "2" and r["seeds"] == "42 43"
        assert float(r["mean"]) == pytest.approx(statistics.fmean(values), abs=1e-6)
        assert float(r["sd"]) == pytest.approx(statistics.stdev(values), abs=1e-6)
        assert (float(r["min"]), float(r["max"])) == pytest.approx((min(values), max(values)), abs=1e-6)
    assert any(len(set(v)) > 1 for v in seed_scores.values()), f"the seeds trained identical models: {seed_scores}"
    tests = {(r["first"], r["second"], r["metric"]): r for r in _csv(tables / "seed_variation_tests.csv")}
    for metric in ("acc", "acc_norm"):
        base = _score(proj, "base", metric)
        for method in METHOD_LR:
            r = tests[("base", f"{method}-merged", metric)]
            v = seed_scores[(method, metric)]
            if statistics.stdev(v) > 0:
                assert float(r["p_value"]) == pytest.approx(stats.ttest_1samp(v, base).pvalue, abs=1e-6)
            else:  # no spread: no t-test, no verdict
                assert r["p_value"] == "" and r["verdict"] == "n/a (no spread across seeds: t undefined)"
            assert float(r["delta"]) == pytest.approx(statistics.fmean(v) - base, abs=1e-6)
        r = tests[("full-merged", "lora-merged", metric)]
        a, b = seed_scores[("full", metric)], seed_scores[("lora", metric)]
        if statistics.stdev(a) + statistics.stdev(b) > 0:
            assert float(r["p_value"]) == pytest.approx(stats.ttest_ind(b, a).pvalue, abs=1e-6)
            assert r["verdict"] == ("exceeds the seed-to-seed variation" if float(r["p_holm"]) < 0.05
                                    else "within the seed-to-seed variation")

    record = (proj / "results" / EXP / "models_evaluation_record.md").read_text()
    assert "## 4b. Seed variation" in record and "[4b Seed variation](#4b-seed-variation)" in record
    assert "**2 training seeds** (42, 43, train.seeds)" in record
    assert "One training seed" not in record
    assert "one-sample t-test of its seed scores against the base score" in record
    assert f"{100 * seed_scores[('lora', 'acc_norm')][1]:.1f} (seed 43)" in record

    # the per-seed paired tables: every method cell vs base, methods compared within one seed only
    comps = _csv(tables / f"{MC}_comparisons.csv")
    pairs = {(r["first"], r["second"]) for r in comps}
    for s in SEEDS:
        assert ("base", f"lora-merged seed {s}") in pairs and (f"full-merged seed {s}", f"lora-merged seed {s}") in pairs
    assert ("full-merged seed 42", "lora-merged seed 43") not in pairs
    assert not any(r["first"] == r["second"] for r in comps)
    cost = _csv(tables / "training_cost.csv")
    assert [(r["method"], r["seed"]) for r in cost] == [(m, str(s)) for m in METHOD_LR for s in SEEDS]


def test_a_single_seed_record_says_it_has_one_seed(proj):
    rc, err = analyze(ONE, allow_missing=True)
    assert rc == 0, err
    record = (proj / "results" / ONE / "models_evaluation_record.md").read_text()
    assert "**One training seed.** Every fine-tuned model here is one training run (train.seed 42)" in record
    assert "Seed variation" not in record and not (proj / "results" / ONE / "model_comparison" / "seed_variation.csv").exists()


def test_a_seeded_evaluation_in_the_wrong_place_is_refused(proj):
    src = proj / "evaluation_results" / EXP / "tiny" / "lora" / "seed-43-merged"
    raw = json.loads((src / "results.json").read_text())
    raw["ftcompare"]["run_seed"] = 42          # says seed 42, lies where seed 43 belongs
    (src / "results.json").write_text(json.dumps(raw))
    rc, err = analyze(EXP)
    assert rc == 1 and "seed-43-merged/results.json: ftcompare: says" in err and "seed=42" in err
