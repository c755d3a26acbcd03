"""Per-item continuous metrics of multiple-choice tasks (ftcompare.report.mc): re-derived from the per-choice
log-likelihoods exactly as lm-eval scores them, a sample whose stored outcome disagrees is refused, and the
record compares the methods on them; the GSM8K gold-solution task keeps ftc_gsm8k_cot's prompt.

tests/data/mc_samples_135m_base.jsonl: six samples copied from a real default run (135m base; lm-eval 0.4.13,
`doc` and hashes left out): HellaSwag items where acc and acc_norm disagree (length normalization decides) and
MMLU items, with lm-eval's stored acc / acc_norm.
"""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest

from conftest import ROOT

EXCERPT = Path(__file__).parent / "data" / "mc_samples_135m_base.jsonl"
TASKS_DIR = ROOT / "lm-evaluation-harness" / "tasks"


def excerpt(task: str | None = None) -> list[dict]:
    rows = [json.loads(line) for line in EXCERPT.read_text().splitlines()]
    return [r for r in rows if task is None or r["task"] == task]


def test_rederivation_equals_lm_eval_on_real_samples():
    import numpy as np
    from lm_eval import utils

    from ftcompare.report.mc import choice_lls, choices, derive

    rows = excerpt()
    assert any(r.get("acc") != r.get("acc_norm") for r in rows if "acc_norm" in r)  # normalization matters here
    for s in rows:
        d = derive(s, " ")
        for m in s["metrics"]:
            assert d[m] == s[m], (s["task"], s["doc_id"], m)
        lls, gold = choice_lls(s), int(s["target"])
        assert math.isclose(d["gold_prob"], float(utils.softmax(np.array(lls))[gold]), rel_tol=1e-9)
        assert math.isclose(d["gold_logprob"], math.log(d["gold_prob"]), rel_tol=1e-9)
        norm = [ll / len(c) for ll, c in zip(lls, choices(s, " "))]
        assert d["margin_norm"] == norm[gold] - max(x for j, x in enumerate(norm) if j != gold)
        assert (d["margin_norm"] > 0) == (d["acc_norm"] == 1.0)


def _tamper(s: dict) -> dict:
    """Move the top choice's log-likelihood below every other, leaving the stored acc / acc_norm alone."""
    t = json.loads(json.dumps(s))
    lls = [float(r[0]) for r in t["filtered_resps"]]
    top = lls.index(max(lls))
    t["filtered_resps"][top][0] = repr(min(lls) - 50.0)
    return t


def test_a_sample_with_edited_loglikelihoods_is_refused(tmp_path):
    from ftcompare.report.load import Problems, load_samples

    rows = excerpt("ftc_hellaswag")
    path = tmp_path / "samples_ftc_hellaswag.jsonl"
    config = {"output_type": "multiple_choice", "target_delimiter": " "}
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ok = Problems()
    ss = load_samples(path, ok, config)
    assert not ok and ss.continuous() == [("gold_logprob", "none"), ("gold_prob", "none"), ("margin_norm", "none")]
    bad = _tamper(rows[0])
    path.write_text("".join(json.dumps(r) + "\n" for r in [bad, *rows[1:]]))
    problems = Problems()
    load_samples(path, problems, config)
    lines = [p.line() for p in problems]
    assert lines and all(str(path) in x or path.name in x for x in lines)
    assert any(f"doc_id {rows[0]['doc_id']}.acc:" in x and "stored 1" in x for x in lines), lines


def test_a_wrong_delimiter_or_gold_cannot_pass_unnoticed(tmp_path):
    from ftcompare.report.load import Problems, load_samples

    rows = excerpt("ftc_hellaswag")
    path = tmp_path / "samples_ftc_hellaswag.jsonl"
    path.write_text("".join(json.dumps({**r, "target": "7"}) + "\n" for r in rows[:1]))
    problems = Problems()
    load_samples(path, problems, {"output_type": "multiple_choice", "target_delimiter": " "})
    assert any("target: index 7 outside the 4 choices" in p.line() for p in problems)


def test_permutation_test_is_two_sided_sign_flip_with_the_plus_one_correction():
    from ftcompare.stats import paired_permutation_p

    x = [0.0] * 8
    y = [0.9, 0.4, -0.2, 1.1, 0.3, 0.7, -0.5, 0.6]
    obs = abs(sum(y) / len(y))
    flips = [abs(sum(s * v for s, v in zip(signs, y)) / len(y)) for signs in itertools.product((-1, 1), repeat=8)]
    exact = sum(f >= obs - 1e-12 for f in flips) / len(flips)
    p = paired_permutation_p(x, y, iters=20_000)
    assert abs(p - exact) < 0.01 and p == paired_permutation_p(x, y, iters=20_000)      # seeded
    assert paired_permutation_p(x, [-v for v in y], iters=20_000) == p                  # two-sided
    assert paired_permutation_p([0.0] * 30, [1.0] * 30, iters=999) == 1 / 1000          # never 0: (1 + hits)


def test_gsm8k_gold_task_uses_the_cot_prompt_and_scores_bits_per_byte():
    import sys

    from lm_eval.tasks._yaml_loader import load_yaml

    bpb = load_yaml(TASKS_DIR / "ftc_gsm8k_bpb" / "ftc_gsm8k_bpb.yaml", resolve_func=False, recursive=True)
    cot = load_yaml(TASKS_DIR / "ftc_gsm8k_cot" / "ftc_gsm8k_cot.yaml", resolve_func=False, recursive=True)
    for key in ("fewshot_config", "doc_to_text", "num_fewshot", "test_split"):
        assert bpb[key] == cot[key], key
    assert bpb.get("target_delimiter", " ") == cot.get("target_delimiter", " ")
    assert bpb["output_type"] == "loglikelihood" and bpb["metadata"]["report_metrics"][0] == "gold_bpb,none"
    sys.path.insert(0, str(TASKS_DIR / "ftc_gsm8k_bpb"))
    try:
        import utils as bpb_utils
    finally:
        sys.path.pop(0)
        sys.modules.pop("utils", None)
    doc = {"question": "q", "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = "
                                      "<<48+24=72>>72 clips altogether in May and June.\n#### 72"}
    sol = bpb_utils.cot_solution(doc)
    assert sol == ("Natalia sold 48/2 = 24 clips in May. Natalia sold 48+24 = 72 clips altogether in May and June. "
                   "The answer is 72.")
    shot = cot["fewshot_config"]["samples"][0]
    assert bpb_utils.cot_solution(shot) == shot["target"]            # the exemplars' own format
    # lm-eval adds no target_delimiter to a loglikelihood request: the continuation carries the space itself
    assert bpb_utils.continuation(doc) == " " + sol and bpb_utils.continuation(shot) == shot["target"]
    out = bpb_utils.process_bpb(doc, [(-100.0, False)])
    assert out["gold_bytes"] == len(sol.encode()) and out["gold_nll"] == 100.0
    assert math.isclose(out["gold_bpb"], 100.0 / math.log(2) / len(sol.encode()))


# ---- through the analyzer, on the real evaluation outputs of tests/test_analyze.py's tiny project ----------
from test_analyze import MC, analyze, built_project, cell_dir, proj  # noqa: E402,F401  (fixtures)


def test_the_analyzer_refuses_edited_loglikelihoods_and_reports_continuous_metrics(proj):
    rc, _, err = analyze(allow_missing=True)
    assert rc == 0, err
    record = (proj / "models_evaluation_record.md").read_text()
    bottom = next(x for x in record.splitlines() if x.startswith("**Bottom line.**"))
    assert f"On **{MC}**" in bottom and "**gold log-prob** (nats" in bottom and "Accuracy:" in bottom
    assert f"**Continuous metrics of {MC}**" in record
    tables = proj / "results" / "model_comparison"
    rows = (tables / f"{MC}_continuous_comparisons.csv").read_text().splitlines()
    assert rows[0].startswith("experiment,task,metric") and any(",gold_logprob," in r for r in rows[1:])
    assert all("paired permutation" in r for r in rows[1:])

    spath = cell_dir(proj, "lora-merged") / f"samples_{MC}.jsonl"
    lines = spath.read_text().splitlines()
    first = json.loads(lines[0])
    spath.write_text("\n".join([json.dumps(_tamper(first))] + lines[1:]) + "\n")
    rc, _, err = analyze(allow_missing=True)
    assert rc == 1
    line = next(x for x in err.splitlines() if f"doc_id {first['doc_id']}.acc" in x)
    assert f"evaluation_results/default/tiny/lora-merged/samples_{MC}.jsonl" in line
