"""The analyzer on a chat experiment: generation tasks (ftc_chat_gen_<setting>, written by ftcompare.chat_eval)
and the held-out reply likelihood task (ftc_chitchat: nats per reply, bits per byte) of a synthetic grid: base + full/lora/qlora (merged).
Every results.json and samples file is written here from per-item values chosen so that the expected
numbers can be counted by hand (no model is run: a few seconds).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import statistics

import pytest

EXP = "chattest"
MODEL = "135m"
METHODS = ["full", "lora", "qlora"]
CELLS = ["base", "full-merged", "lora-merged", "qlora-merged"]
GREEDY, SAMPLED, BPB = "ftc_chat_gen_greedy", "ftc_chat_gen_sampled", "ftc_chitchat"
N_GEN, N_GEN_AVAILABLE, N_BPB, N_BPB_AVAILABLE, MAX_NEW = 20, 50, 12, 30, 64
REPLY_BYTES = 10.0  # UTF-8 bytes of every synthetic reference reply
GEN_METRICS = ["stopped", "length", "chrf", "bleu", "rougeL", "distinct_1", "distinct_2"]
HIB = {"stopped": True, "length": None, "chrf": True, "bleu": True, "rougeL": True, "distinct_1": True,
       "distinct_2": True}
# replies that did NOT end their turn (doc ids), per cell and setting
NOT_STOPPED = {
    GREEDY: {"base": set(range(1, 20, 2)), "full-merged": set(), "lora-merged": {19}, "qlora-merged": {18, 19}},
    SAMPLED: {"base": set(range(8, 20)), "full-merged": set(), "lora-merged": {1, 2, 3}, "qlora-merged": {5}},
}
BPB_SHIFT = {"base": 0.0, "full-merged": -0.5, "lora-merged": -0.3, "qlora-merged": 0.2}  # lower is better
LONG_REPLY = "and then " * 40


def _messages(i: int) -> list[dict]:
    if i == 0:
        return [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "What's | your\nname?"}]
    return [{"role": "user", "content": f"Question number {i}?"}]


def _reference(i: int) -> str:
    return "A reference that is long. " * 10 if i == 2 else f"Reference reply {i}."


def _reply(cell: str, task: str, i: int) -> str:
    if i in NOT_STOPPED[task][cell]:
        return LONG_REPLY
    return f"{cell} says hi {i}" if i else f"I am {cell}."


def _gen_item(cell: str, task: str, i: int) -> dict:
    stopped = i not in NOT_STOPPED[task][cell]
    k = CELLS.index(cell)
    return {"stopped": 1.0 if stopped else 0.0,
            "length": float(8 + i % 5) if stopped else float(MAX_NEW),
            "chrf": 20.0 + 2 * k + 0.5 * i, "bleu": 5.0 + k + 0.25 * (i % 4), "rougeL": 15.0 + k + (i % 3),
            "distinct_1": 1.0 if stopped else 0.25, "distinct_2": 1.0 if i % 4 else 0.5}


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _stats(values: list[float]) -> tuple[float, float]:
    return math.fsum(values) / len(values), statistics.stdev(values) / math.sqrt(len(values))


def _write_eval(root, cell: str) -> None:
    method, _, variant = cell.partition("-")
    out = root / "evaluation_results" / EXP / MODEL / cell
    out.mkdir(parents=True)
    results, configs, hib, nsamples, generation = {}, {}, {}, {}, {}
    for task in (GREEDY, SAMPLED):
        items = [_gen_item(cell, task, i) for i in range(N_GEN)]
        res = {"alias": task}
        for m in GEN_METRICS:
            mean, se = _stats([it[m] for it in items])
            res[f"{m},none"], res[f"{m}_stderr,none"] = mean, se
        results[task] = res
        settings = {"do_sample": False} if task == GREEDY else {"do_sample": True, "temperature": 0.7, "top_p": 0.9}
        configs[task] = {"task": task, "output_type": "generate_until",
                         "metadata": {"upstream_task": "ftc_chat_generation", "version": 1.0,
                                      "generator": "ftcompare.chat_eval"},
                         "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": HIB[m]}
                                         for m in GEN_METRICS],
                         "generation_kwargs": {**settings, "max_new_tokens": MAX_NEW},
                         "custom_dataset": "held-out conversations of data config chitchat (ftcompare.data)"}
        hib[task] = dict(HIB)
        nsamples[task] = {"original": N_GEN_AVAILABLE, "effective": N_GEN}
        generation[task] = {"corpus_distinct_1": 0.4 + 0.1 * CELLS.index(cell), "corpus_distinct_2": 0.75,
                            "settings": {**settings, "max_new_tokens": MAX_NEW}, "seconds": 1.0, "new_tokens": 100,
                            "tokens_per_second": 100.0, "end_of_turn": "<|im_end|>"}
        with open(out / f"samples_{task}.jsonl", "w") as f:
            for i, it in enumerate(items):
                doc = {"id": f"conv{i}", "messages": _messages(i), "reference": _reference(i)}
                reply = _reply(cell, task, i)
                f.write(json.dumps({"doc_id": i, "doc": doc, "target": doc["reference"],
                                    "arguments": {"gen_args_0": {"arg_0": f"prompt {i}", "arg_1": settings}},
                                    "resps": [[reply]], "filtered_resps": [reply], "filter": "none",
                                    "metrics": GEN_METRICS, **it, "doc_hash": _hash(doc["id"]),
                                    "prompt_hash": _hash(f"prompt {i}"), "target_hash": _hash(doc["reference"]),
                                    "n_new_tokens": int(it["length"])}) + "\n")
    bpb = [2.0 + 0.05 * i + BPB_SHIFT[cell] for i in range(N_BPB)]
    mean, se = _stats(bpb)
    results[BPB] = {"alias": BPB, "reply_nll,none": mean, "reply_nll_stderr,none": se,
                    "reply_bytes,none": REPLY_BYTES, "reply_bytes_stderr,none": 0.0}
    configs[BPB] = {"task": BPB, "output_type": "loglikelihood", "test_split": "test", "metadata": {"version": 1.0},
                    "metric_list": [{"metric": "reply_nll", "aggregation": "mean", "higher_is_better": False},
                                    {"metric": "reply_bytes", "aggregation": "mean", "higher_is_better": False}]}
    hib[BPB] = {"reply_nll": False, "reply_bytes": False}
    nsamples[BPB] = {"original": N_BPB_AVAILABLE, "effective": N_BPB}
    with open(out / f"samples_{BPB}.jsonl", "w") as f:
        for i, v in enumerate(bpb):
            f.write(json.dumps({"doc_id": i, "doc": {"id": i}, "arguments": {"gen_args_0": {}}, "filter": "none",
                                "metrics": ["reply_nll", "reply_bytes"], "reply_nll": v,
                                "reply_bytes": REPLY_BYTES, "doc_hash": _hash(str(i)),
                                "prompt_hash": _hash(f"ctx {i}"), "target_hash": _hash(f"ref {i}")}) + "\n")
    tasks = [BPB, GREEDY, SAMPLED]
    block = {"experiment": EXP, "model": MODEL, "method": method, "variant": variant or None,
             "limit": {BPB: N_BPB, GREEDY: None, SAMPLED: None}, "n": {t: nsamples[t]["effective"] for t in tasks},
             "batch_size": 8, "seed": 1234, "lm_eval_version": "0.4.13", "generation": generation}
    (out / "results.json").write_text(json.dumps({
        "results": results, "configs": configs, "versions": {t: 1.0 for t in tasks}, "n-shot": {t: 0 for t in tasks},
        "higher_is_better": hib, "n-samples": nsamples, "config": {}, "ftcompare": block}, indent=1))


def _write_training(root, method: str) -> None:
    out = root / "models" / EXP / MODEL / method
    out.mkdir(parents=True)
    cfg = {"experiment": EXP, "model": {"alias": MODEL, "source": "local"},
           "method": {"name": method, "learning_rate": 1e-4,
                      "lora": None if method == "full" else {"r": 8, "alpha": 16, "dropout": 0.05,
                                                             "target_modules": ["q_proj"]},
                      "quantization": {"quant_type": "nf4", "double_quant": True, "compute_dtype": "float32"}
                      if method == "qlora" else None},
           "data": {"name": "chitchat", "loader": "chitchat", "format": "chat", "license": "MIT",
                    "description": "synthetic conversations"},
           "train": {"seed": 42, "max_steps": 4}}
    h = _hash(json.dumps(cfg, sort_keys=True))[:16]
    (out / "config.json").write_text(json.dumps({"config": cfg, "config_hash": h}))
    (out / "train_summary.json").write_text(json.dumps({
        "experiment": EXP, "model": MODEL, "method": method, "config_hash": h, "global_step": 4, "max_steps": 4,
        "tokens_seen": 4000, "wall_time_s": 10.0 + METHODS.index(method), "tokens_per_second": 400.0,
        "peak_memory_mb": 900.0 - 100 * METHODS.index(method), "peak_memory_kind": "cpu_max_rss",
        "trainable_params": 1000, "trainable_percent": 1.0, "train_loss_last": 2.0, "val_loss": 2.1}))
    (out / "train_log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 3.0 - 0.2 * s}) + "\n"
                                                 for s in range(1, 5)))
    if method == METHODS[0]:
        toks = [("<|im_start|>", True, False), ("user", False, False), ("\n", False, False), ("Hi", False, False),
                ("<|im_end|>", True, False), ("\n", False, False), ("<|im_start|>", True, False),
                ("assistant", False, False), ("\n", False, False), ("Hello", False, True), (" there", False, True),
                (" $5", False, True), ("<|im_end|>", True, True), ("\n", False, False)]
        (out / "template_view.json").write_text(json.dumps({
            "model": MODEL, "template_source": "tokenizer", "added_tokens": [], "end_of_turn": "<|im_end|>",
            "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there $5"}],
            "tokens": [{"id": i, "text": t, "special": s, "trained": tr} for i, (t, s, tr) in enumerate(toks)]}))


EXPERIMENT_YAML = f"""\
name: {EXP}
description: synthetic chat experiment (analyzer test)
offline: true
models: [{MODEL}]
methods: [{", ".join(METHODS)}]
data: hellaswag-train
train: {{seed: 42, max_steps: 4}}
evaluation:
  tasks: [{BPB}]
  limit: {{{BPB}: {N_BPB}}}
  variants: [merged]
  generation:
    data: chitchat
    n_prompts: {N_GEN}
    max_new_tokens: {MAX_NEW}
    batch_size: 4
    seed: 1234
    settings:
      greedy: {{do_sample: false}}
      sampled: {{do_sample: true, temperature: 0.7, top_p: 0.9}}
"""


@pytest.fixture()
def chat_proj(project):
    (project / "configs" / "experiments" / f"{EXP}.yaml").write_text(EXPERIMENT_YAML)
    for cell in CELLS:
        _write_eval(project, cell)
    for method in METHODS:
        _write_training(project, method)
    return project


def analyze(experiment: str = EXP):
    from ftcompare.analyze import run

    out, err = io.StringIO(), io.StringIO()
    rc = run(experiment, out=out, err=err)
    return rc, err.getvalue()


def outputs(root, experiment: str = EXP) -> dict[str, bytes]:
    files = sorted((root / "results" / experiment).rglob("*"))
    return {str(p.relative_to(root)): p.read_bytes() for p in files if p.is_file()}


# --------------------------------------------------------------------------------------------------
def test_chat_record_section_figures_and_tables(chat_proj):
    rc, err = analyze()
    assert rc == 0, err
    out = chat_proj / "results" / EXP
    record = (out / "models_evaluation_record.md").read_text()
    assert "$" not in record.replace("\\$", "")        # every template placeholder was filled
    assert "[4a Conversational behaviour](#4a-conversational-behaviour-chat) · " in record
    assert "## 4a. Conversational behaviour (chat)" in record
    for name in ("chat_stop_rate.png", "chat_reply_length.png", "chat_template_tokens.png",
                 f"scores_{GREEDY}.png", f"scores_{BPB}.png", "delta_vs_base.png"):
        p = out / "figures" / name
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000, name
        assert f"](figures/{name})" in record, f"{name} not embedded"

    # the behaviour table, by hand: base greedy stops on the 10 even docs of 20 (Wilson 95% CI 29.9-70.1);
    # stopped replies are 8 + i % 5 tokens long, the others 64: (100 + 640) / 20 = 37.0 tokens (not x 100)
    assert "| base | greedy | 20 | 50.0 [29.9, 70.1] | 37.0 |" in record
    assert "| full-merged | greedy | 20 | 100.0 [83.9, 100.0] | 10.0 |" in record
    assert "3700.0" not in record
    # reply bits/byte of the variant (first row only): mean nll 2.0 + 0.05 i (i < 12) = 2.275 nats (full: -0.5)
    # over {REPLY_BYTES} bytes per reply: 2.275 / ln 2 / 10 = 0.328, full 0.256
    assert "| 0.256 |" in record and "| 0.328 |" in record

    # the stop-rate target, greedy setting: 20/20 and 19/20 meet >= 95%, 18/20 does not
    assert "`full-merged` (model 135m) **meets** the target: it stops at end-of-turn on 100.0% of the 20" in record
    assert "`lora-merged` (model 135m) **meets** the target: it stops at end-of-turn on 95.0% of the 20 held-out " \
           "prompts (19 of 20;" in record
    assert "`qlora-merged` (model 135m) **does not meet** the target: it stops at end-of-turn on 90.0%" in record

    # side by side: history marked with …, pipes and newlines escaped, long replies cut, non-stopped marked
    side = record[record.index("**Side by side"):].split("\n\n")[1]     # the table after the heading
    rows = side.splitlines()[2:]
    assert len(rows) == 5 and [r.split(" | ")[0] for r in rows] == ["| 0", "| 1", "| 2", "| 3", "| 4"]
    assert rows[0].startswith("| 0 | …What's \\| your↵name? | Reference reply 0. | I am base. | I am full-merged. |")
    base_doc1 = rows[1].split(" | ")[3]
    assert base_doc1.endswith("… ⟨no end-of-turn⟩") and len(base_doc1) == 160 + len(" ⟨no end-of-turn⟩")
    assert rows[1].split(" | ")[4] == "full-merged says hi 1"        # stopped: no marker
    assert rows[2].split(" | ")[2].endswith("…") and len(rows[2].split(" | ")[2]) == 160

    # findings: reply_nll is lower-is-better (results.json), so a decrease reads "better"
    assert "full-merged is **better** than base by 0.500 nats" in record
    assert "qlora-merged is **worse** than base by 0.200 nats" in record
    assert f"- **{BPB}** (reply_nll, n=12, base 2.275 nats, lower is better)" in record
    # raw metric tables carry their unit; the generation task's limit is generation.n_prompts
    assert "score, tokens [95% CI]" in record and "score, nats [95% CI]" in record
    assert "**length** (neither direction is better)" in record
    assert "| 135m | base | 20 | 37.0 [" in record
    assert "paired permutation" in record
    assert "`models/chattest/135m/full/template_view.json`" in record   # listed in Inputs

    with open(out / "model_comparison" / "chat_behaviour.csv") as f:
        rows = {(r["evaluated"], r["setting"]): r for r in csv.DictReader(f)}
    assert len(rows) == 8
    assert float(rows[("base", "greedy")]["stop_rate"]) == 0.5 and rows[("base", "greedy")]["stopped"] == "10"
    assert float(rows[("base", "sampled")]["stop_rate"]) == 0.4
    assert float(rows[("qlora-merged", "greedy")]["length_mean"]) == pytest.approx((200 - 11 - 12 + 128) / 20)
    assert float(rows[("lora-merged", "sampled")]["corpus_distinct_1"]) == pytest.approx(0.6)

    with open(out / "model_comparison" / f"{GREEDY}_comparisons.csv") as f:
        comps = [r for r in csv.DictReader(f) if r["metric"] == "length" and r["second"] == "full-merged"]
    assert len(comps) == 1 and float(comps[0]["delta"]) == pytest.approx(10.0 - 37.0)  # raw tokens
    assert comps[0]["test"] == "paired permutation"

    # again without template_view.json: no fake figure, "no data"; everything else byte for byte as before
    before = outputs(chat_proj)
    (chat_proj / "models" / EXP / MODEL / "full" / "template_view.json").unlink()
    rc, err = analyze()
    assert rc == 0, err
    after = outputs(chat_proj)
    record_key = f"results/{EXP}/models_evaluation_record.md"
    new_record = after.pop(record_key).decode()
    assert "*(Chat template tokens and loss mask: no data)*" in new_record and "template_view.json`" not in new_record
    assert before.pop(f"results/{EXP}/figures/chat_template_tokens.png") and before.pop(record_key)
    assert after == before                        # deterministic: figures and tables byte for byte


def test_generation_results_with_another_n_prompts_are_refused(chat_proj):
    cfg = chat_proj / "configs" / "experiments" / f"{EXP}.yaml"
    cfg.write_text(cfg.read_text().replace(f"n_prompts: {N_GEN}", "n_prompts: 30"))
    rc, err = analyze()
    assert rc == 1
    assert f"base/results.json: n-samples.{GREEDY}.effective: 20 of 50, but configs/experiments/{EXP}.yaml " \
           "evaluation.generation.n_prompts = 30" in err


def test_experiment_without_generation_has_no_chat_section(chat_proj):
    cfg = chat_proj / "configs" / "experiments" / f"{EXP}.yaml"
    cfg.write_text(cfg.read_text().split("  generation:")[0])
    rc, err = analyze()
    assert rc == 0, err
    out = chat_proj / "results" / EXP
    record = (out / "models_evaluation_record.md").read_text()
    assert "Conversational behaviour" not in record and "## 4a." not in record and "$" not in record
    assert not list((out / "figures").glob("chat_*")) and not (out / "model_comparison" / "chat_behaviour.csv").exists()
    assert sorted(p.name for p in (out / "figures").glob("scores_*")) == [f"scores_{BPB}.png"]
    assert "[4 Results per task](#4-results-per-task) · [5 Summary figures](#5-summary-figures) ·" in record


def test_direction_words():
    from ftcompare.analyze import direction_phrase, metric_display

    assert direction_phrase("x", "reply_nll", False, -0.1) == "x is **better**"
    assert direction_phrase("x", "reply_nll", False, 0.1) == "x is **worse**"
    assert direction_phrase("x", "acc", True, 0.1) == "x is **better**"
    assert direction_phrase("x", "length", None, 3.0) == "x's replies are **longer**"
    assert direction_phrase("x", "length", None, -3.0) == "x's replies are **shorter**"
    assert direction_phrase("x", "chrf", None, -1.0) == "x's chrf is **lower**"
    assert metric_display("length").value(37.0) == "37.0" and metric_display("stopped").value(0.5) == "50.0"
    assert metric_display("reply_nll").delta(-0.5) == "-0.500" and metric_display("acc").delta(-0.0001) == "+0.0"
    assert metric_display("reply_nll").with_unit(2.275) == "2.275 nats"
    assert metric_display("chrf").with_unit(20.0) == "20.0" and metric_display("acc").with_unit(0.5) == "50.0%"


def test_loop_detection():
    from ftcompare.analyze import is_loop

    assert is_loop("i'm sorry, i'm sorry, i'm sorry, i'm sorry, i'm sorry, i'm sorry,")
    assert is_loop("no, no it is not.\n\nno, no it is not.\n\nno, no it is not")
    assert not is_loop("The question of whether computers can be made to be better is a classic conundrum")
    assert not is_loop("a b c d a b c d")  # twice is not a loop
