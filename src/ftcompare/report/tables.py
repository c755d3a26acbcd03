"""The tables: tidy all_results.csv, per task scores/comparisons (CSV + markdown), training cost."""
from __future__ import annotations

import json

from .checks import Inputs
from .compare import Comparison, Score, find_score
from .display import fmt_float, fmt_int, fmt_p, md_table, metric_display, metric_label, metric_name
from .layout import rel
from .load import Evaluation, RunId, TaskResult

TIDY_COLUMNS = ["experiment", "model", "method", "variant", "seed", "task", "metric", "filter", "value", "stderr", "n",
                "n_shot", "task_version", "limit", "batch_size", "higher_is_better", "lm_eval_version", "source"]
SCORE_COLUMNS = ["experiment", "task", "metric", "filter", "model", "evaluated", "method", "variant", "seed", "n",
                 "value",
                 "ci95_low", "ci95_high", "ci_method", "lm_eval_stderr", "n_shot", "task_version", "limit"]
COMPARISON_COLUMNS = ["experiment", "task", "metric", "filter", "model", "comparison", "first", "second", "n",
                      "first_value", "second_value", "delta", "ci95_low", "ci95_high", "ci_method",
                      "n_right_first_only", "n_right_second_only", "test", "p_value", "p_holm", "verdict"]
# train_summary.json's "cost" block (ftcompare.cost), as cost_<key> columns: training steps alone, every process
COST_FIELDS = ["processes", "steps", "train_s", "tokens", "tokens_processed", "samples", "tokens_per_second",
               "tokens_processed_per_second", "samples_per_second", "peak_train_memory_mb", "memory_kind", "saves",
               "save_s", "final_save_s", "eval_s", "flops_per_token", "matmul_peak_tflops", "mfu"]
COST_COLUMNS = ["experiment", "model", "method", "seed", "max_steps", "examples_seen", "tokens_seen",
                *(f"cost_{k}" for k in COST_FIELDS), "trainable_params", "total_params", "trainable_percent",
                "train_loss_last", "val_loss", "val_token_loss", "val_perplexity",
                # older whole-process figures (loop incl. warm-up and saves; peak read after evaluation)
                "wall_time_s", "tokens_per_second", "peak_memory_mb", "peak_memory_kind", "config_hash", "source"]


def tidy_rows(evaluations) -> list[dict]:
    rows = []
    for ev in evaluations:
        for task, tr in ev.tasks.items():
            for (metric, filt), value in tr.values.items():
                rows.append({
                    "experiment": ev.experiment, "model": ev.run.model, "method": ev.run.method,
                    "variant": ev.run.variant, "seed": ev.run.seed, "task": task, "metric": metric, "filter": filt, "value": value,
                    "stderr": tr.stderrs.get((metric, filt)), "n": tr.n, "n_shot": tr.n_shot,
                    "task_version": tr.version, "limit": tr.limit, "batch_size": tr.batch_size,
                    "higher_is_better": tr.higher_is_better.get(metric),
                    "lm_eval_version": ev.block.get("lm_eval_version", ev.raw.get("lm_eval_version")),
                    "source": rel(ev.path),
                })
    rows.sort(key=lambda r: (r["experiment"], r["model"], r["method"] != "base", r["method"], r["variant"],
                             -1 if r["seed"] is None else r["seed"], r["task"], r["metric"], r["filter"]))
    return rows


def score_rows(experiment: str, scores: tuple[Score, ...]) -> list[dict]:
    return [{"experiment": experiment, "task": s.task, "metric": s.metric, "filter": s.filter, "model": s.run.model,
             "evaluated": s.run.label, "method": s.run.method, "variant": s.run.variant, "seed": s.run.seed,
             "n": s.n, "value": s.value,
             "ci95_low": s.ci_low, "ci95_high": s.ci_high, "ci_method": s.ci_method, "lm_eval_stderr": s.stderr,
             "n_shot": s.n_shot, "task_version": s.version, "limit": s.limit} for s in scores]


def comparison_rows(experiment: str, comparisons, task: str) -> list[dict]:
    rows = []
    for c in comparisons:
        if c.task != task:
            continue
        p = c.paired
        rows.append({"experiment": experiment, "task": task, "metric": c.metric, "filter": c.filter,
                     "model": c.model, "comparison": c.kind, "first": c.first.label, "second": c.second.label,
                     "n": p.n, "first_value": round(p.first, 6), "second_value": round(p.second, 6),
                     "delta": round(p.delta, 6), "ci95_low": round(p.ci_low, 6), "ci95_high": round(p.ci_high, 6),
                     "ci_method": p.ci_method, "n_right_first_only": p.n_first_only,
                     "n_right_second_only": p.n_second_only, "test": p.test, "p_value": round(p.p_value, 6),
                     "p_holm": round(c.p_holm, 6), "verdict": c.verdict()})
    return rows


def delta_ci(c: Comparison, unit: bool = False) -> str:
    d = metric_display(c.metric)
    text = f"{d.delta(c.paired.delta)} [{d.delta(c.paired.ci_low)}, {d.delta(c.paired.ci_high)}]"
    return text + (f" {'pts' if d.percent else d.unit}" if unit else "")


def task_settings(tr: TaskResult, chat: bool) -> str:
    if chat:
        kwargs = tr.config.get("generation_kwargs")
        by = tr.facts.generator or "lm-eval"
        return (f"n = {tr.n} of {tr.n_original} held-out prompts, replies generated by {by} "
                f"(task version {tr.version}" + (f", {json.dumps(kwargs, sort_keys=True)}" if kwargs else "") + ")")
    limit = f", limit {tr.limit}" if tr.limit not in (None, {}) else ""
    return (f"n = {tr.n} of {tr.n_original} documents, {tr.n_shot}-shot, task version {tr.version}{limit}, "
            f"batch size {tr.batch_size}")


def task_markdown(inp: Inputs, task: str, scores: tuple[Score, ...], comparisons) -> str:
    """Per task: one table per reported metric (scores, delta vs base), then method-vs-method deltas."""
    ref = inp.ref_result(task)
    if ref is None:
        return f"### {task}\n\nNo evaluation of this task is available (missing).\n"
    reported = inp.reported(task)
    all_percent = all(metric_display(m).percent for m, _ in reported)
    any_percent = any(metric_display(m).percent for m, _ in reported)
    units = ("Scores in %, deltas in percentage points" if all_percent else
             "Scores and deltas in the unit in each table's header" + (" (%: deltas in percentage points)"
                                                                       if any_percent else ""))
    head = (f"### {task}\n\n{task_settings(ref, task in inp.chat_tasks())}. Primary metric: "
            f"**{metric_name(*ref.reported()[0])}**. {units}; 95% CIs in brackets.\n")
    parts = [head]
    by_key = {(c.metric, c.filter, c.first, c.second): c for c in comparisons if c.task == task}
    for metric, filt in reported:
        d = metric_display(metric)
        rows = []
        for cell in inp.cells:
            s = find_score(scores, metric, filt, cell)
            if s is None:
                rows.append([cell.model, cell.label, "missing", "", "", "", "", ""])
                continue
            score = f"{d.value(s.value)} [{d.value(s.ci_low)}, {d.value(s.ci_high)}]"
            se_txt = "" if s.stderr is None else d.value(s.stderr, 1)
            if cell.is_base:
                rows.append([cell.model, "base", s.n, score, se_txt, "—", "—", "—"])
                continue
            c = by_key.get((metric, filt, RunId(cell.model, "base"), cell))
            if c is None:
                rows.append([cell.model, cell.label, s.n, score, se_txt, "base missing", "", ""])
                continue
            p = c.paired
            rows.append([cell.model, cell.label, p.n, score, se_txt,
                         f"{d.delta(p.delta)} [{d.delta(p.ci_low)}, {d.delta(p.ci_high)}]",
                         f"{fmt_p(p.p_value)} / {fmt_p(c.p_holm)}", c.verdict()])
        hib = inp.higher_is_better(task, metric)
        direction = "" if hib is True else " (lower is better)" if hib is False else " (neither direction is better)"
        header = (["score % [95% CI]", "lm-eval stderr %", "Δ vs base, pts [95% CI]"] if d.percent else
                  [f"score, {d.unit} [95% CI]", f"lm-eval stderr, {d.unit}", f"Δ vs base, {d.unit} [95% CI]"])
        parts.append(f"**{metric_name(metric, filt)}**{direction}\n\n" + md_table(
            ["model", "evaluated", "n", *header, "p / p Holm", "verdict"], rows, "llrrrrrl"))
    mm = [c for c in comparisons if c.task == task and c.kind == "method vs method"]
    if mm:
        rows = [[c.model, metric_name(c.metric, c.filter), f"{c.second.label} − {c.first.label}", c.paired.n,
                 delta_ci(c, unit=not all_percent),
                 f"{c.paired.n_first_only} / {c.paired.n_second_only}" if c.paired.n_first_only is not None else "",
                 f"{fmt_p(c.paired.p_value)} / {fmt_p(c.p_holm)}", c.verdict()] for c in mm]
        parts.append("**Method vs method**\n\n" + md_table(
            ["model", "metric", "Δ", "n", "Δ pts [95% CI]" if all_percent else "Δ [95% CI]",
             "right only first / only second", "p / p Holm", "verdict"], rows, "lllrrrrl"))
    return "\n\n".join(parts) + "\n"


def continuous_markdown(inp: Inputs, task: str, scores: tuple[Score, ...], comparisons) -> str:
    """Per multiple-choice task: the metrics re-derived from the per-choice log-likelihoods (report.mc), one table
    each (mean [95% CI], paired delta vs base), then method vs method; "" for other tasks."""
    keys = inp.continuous(task)
    comps = [c for c in comparisons if c.task == task]
    if not keys or not comps:
        return ""
    parts = [f"**Continuous metrics of {task}** (per item, re-derived here from the per-choice log-likelihoods in "
             "the samples; means with a normal 95% CI; deltas: paired bootstrap 95% CI and sign-flip permutation p, "
             "Holm within each table)"]
    by_key = {(c.metric, c.filter, c.first, c.second): c for c in comps}
    for metric, filt in keys:
        d = metric_display(metric)
        rows = []
        for cell in inp.cells:
            s = find_score(scores, metric, filt, cell)
            if s is None:
                rows.append([cell.model, cell.label, "missing", "", "", "", ""])
                continue
            score = f"{d.value(s.value)} [{d.value(s.ci_low)}, {d.value(s.ci_high)}]"
            c = by_key.get((metric, filt, RunId(cell.model, "base"), cell))
            if cell.is_base or c is None:
                rows.append([cell.model, cell.label, s.n, score, "—" if cell.is_base else "base missing", "", ""])
                continue
            p = c.paired
            rows.append([cell.model, cell.label, p.n, score,
                         f"{d.delta(p.delta)} [{d.delta(p.ci_low)}, {d.delta(p.ci_high)}]",
                         f"{fmt_p(p.p_value)} / {fmt_p(c.p_holm)}", c.verdict()])
        unit = "%" if d.percent else d.unit
        delta_unit = "pts" if d.percent else d.unit
        parts.append(f"*{metric_label(metric, short=False)}*, `{metric_name(metric, filt)}`\n\n" + md_table(
            ["model", "evaluated", "n", f"mean, {unit} [95% CI]", f"Δ vs base, {delta_unit} [95% CI]", "p / p Holm",
             "verdict"], rows, "llrrrrl"))
    mm = [c for c in comps if c.kind == "method vs method"]
    if mm:
        rows = [[c.model, f"`{metric_name(c.metric, c.filter)}`", f"{c.second.label} − {c.first.label}", c.paired.n,
                 delta_ci(c, unit=True), f"{fmt_p(c.paired.p_value)} / {fmt_p(c.p_holm)}", c.verdict()] for c in mm]
        parts.append("*Continuous metrics, method vs method*\n\n" + md_table(
            ["model", "metric", "Δ", "n", "Δ [95% CI]", "p / p Holm", "verdict"], rows, "lllrrrl"))
    return "\n\n".join(parts) + "\n"


def pooled_bpb_markdown(inp: Inputs, task: str) -> str:
    """A task scoring gold texts per item (gold_nll in nats, gold_bytes): bits per byte pooled over its items as
    lm-eval's bits_per_byte aggregation pools them (sum of -ll / ln 2 / sum of bytes); "" for other tasks."""
    import math

    keys = (("gold_nll", "none"), ("gold_bytes", "none"))
    ref = inp.ref_result(task)
    if ref is None or not all(k in ref.values for k in keys):
        return ""
    rows = []
    for cell in inp.cells:
        tr = inp.task_result(cell, task)
        if tr is None or not all(k in tr.values for k in keys):
            rows.append([cell.model, cell.label, "missing", ""])
            continue
        nll, nbytes = (tr.values[k] for k in keys)
        rows.append([cell.model, cell.label, tr.n, f"{nll / math.log(2) / nbytes:.4f}"])
    return ("**Pooled bits per byte of " + task + "** (lm-eval's bits_per_byte aggregation: Σ nll / ln 2 / Σ bytes "
            "= mean gold_nll / ln 2 / mean gold_bytes; lower is better; paired tests: gold_bpb and gold_nll above)\n\n"
            + md_table(["model", "evaluated", "n", "bits/byte"], rows, "llrr") + "\n")


def cost_rows(inp: Inputs) -> list[dict]:
    rows = []
    for model, method, seed in inp.run_keys():
        run = inp.training.get((model, method, seed))
        if run is not None:
            cost = run.summary.get("cost") or {}
            rows.append({**{k: run.summary.get(k) for k in COST_COLUMNS},
                         **{f"cost_{k}": cost.get(k) for k in COST_FIELDS}, "experiment": inp.experiment,
                         "model": model, "method": method, "seed": seed, "source": rel(run.path)})
    return rows


COST_NOTE = """\
Training-only figures (ftcompare/cost.py): each optimizer step is timed from its start to its end (forward,
backward, optimizer; not fetching its batch, logging, checkpoint saves or evaluation), summed over every process
of the run (a run resumed after a kill counts both; steps it re-did count twice). tokens/s and samples/s are steady
state: steady tokens / steady step time, where the first {warmup} steps of each process are warm-up and left out;
tokens are real (non-padding) tokens, "computed" counts the positions the model ran, padding included. Peak memory
is read inside training steps only. save s: the checkpoint saves and the final weights. MFU = FLOPs/token x computed tokens/s / the matmul peak measured at start-up
(run manifest); FLOPs/token = 6 N for full fine-tuning (every weight trained: forward 2, input gradient 2, weight
gradient 2) and 4 N_frozen + 6 N_trainable for LoRA-family methods (the frozen base needs forward and input
gradient only), N = the weights of the linear layers (LM head included; the input embedding, a lookup, and
attention's score products are not counted; activation checkpointing's recomputation is not counted). Validation
perplexity = exp(mean loss over every predicted validation token)."""


def cost_markdown(inp: Inputs) -> str:
    """The training cost table, from train_summary.json's "cost" block, with its formulas below it. Runs trained
    before that block existed show their steps and losses and empty cost cells, named under the table."""
    rows, older = [], []
    for model, method, seed in inp.run_keys():
        run = inp.training.get((model, method, seed))
        name = method if seed is None else f"{method} seed {seed}"
        if run is None:
            rows.append([model, name] + ["missing"] + [""] * 13)
            continue
        s, c = run.summary, run.summary.get("cost") or {}
        if not c:
            older.append(f"{model}/{name}")
        mfu = c.get("mfu")
        rows.append([model, name, s.get("max_steps"), c.get("processes", ""), fmt_int(c.get("tokens")),
                     fmt_float(c.get("train_s"), 1), fmt_float(c.get("tokens_per_second"), 1),
                     fmt_float(c.get("tokens_processed_per_second"), 1), fmt_float(c.get("samples_per_second"), 2),
                     fmt_float(c.get("peak_train_memory_mb"), 0),
                     f"{fmt_float(c['save_s'] + c['final_save_s'], 2)} / {fmt_float(c['eval_s'], 2)}" if c else "",
                     fmt_float(100 * mfu, 2) if mfu is not None else "", fmt_int(s.get("trainable_params")),
                     fmt_float(s.get("val_loss"), 3), fmt_float(s.get("val_perplexity"), 2)])
    table = md_table(["model", "method", "steps", "processes", "tokens", "train s", "tokens/s", "computed tok/s",
                      "samples/s", "peak train memory MB", "save s / eval s", "MFU %", "trainable params",
                      "val loss", "val ppl"], rows, "llrrrrrrrrrrrrr")
    note = COST_NOTE.format(warmup=_warmup(inp))
    if older:
        note += (f"\n\n{', '.join(older)}: trained before this accounting (no \"cost\" in train_summary.json): "
                 "its cost cells are empty; train it again to fill them.")
    return f"{table}\n\n{note}"


def _warmup(inp: Inputs) -> str:
    ns = {(r.summary.get("cost") or {}).get("warmup_steps_excluded_per_process") for r in inp.training.values()}
    ns.discard(None)
    return " or ".join(str(n) for n in sorted(ns)) or "few"


def peak_memory_kinds(inp: Inputs) -> list[str]:
    return sorted({str((r.summary.get("cost") or {}).get("memory_kind") or r.summary.get("peak_memory_kind"))
                   for r in inp.training.values()})


def manifest_cells(m: dict, keys) -> list[str]:
    sha = m.get("git_sha") or "not recorded"
    sha = (sha[:12] if len(sha) >= 12 else sha) + (" (dirty)" if m.get("git_dirty") else "")
    hw = m.get("hardware") or {}
    parts = [str(hw.get("gpu")) if hw.get("gpu") else f"{hw.get('cpu', '?')}", f"{hw.get('cores', '?')} cores"]
    if hw.get("ram_gb"):
        parts.append(f"{hw['ram_gb']} GB RAM")
    v = m.get("versions") or {}
    return [sha, ", ".join(parts)] + [str(v.get(k) or "") for k in keys]


def run_order(inp: Inputs, key: tuple[str, str, int | None]):
    model, method, seed = key
    return (inp.exp.models.index(model) if model in inp.exp.models else 99,
            inp.exp.methods.index(method) if method in inp.exp.methods else 99, -1 if seed is None else seed)


def provenance_table(inp: Inputs) -> str:
    keys = ("torch", "transformers", "peft", "bitsandbytes", "lm_eval")
    rows = []
    for (model, method, seed), run in sorted(inp.training.items(), key=lambda kv: run_order(inp, kv[0])):
        rows.append([f"train {model}/{method}" + ("" if seed is None else f" seed {seed}"), *manifest_cells(run.summary.get("manifest") or {}, keys)])
    for cell in inp.cells:
        ev: Evaluation | None = inp.evals.get(cell)
        if ev is not None:
            rows.append([f"evaluate {cell.model}/{cell.label}", *manifest_cells(ev.block.get("manifest") or {}, keys)])
    return md_table(["stage", "git sha", "hardware", *keys], rows, "l" * 8)


def methods_table(inp: Inputs) -> str:
    rows = []
    for model in inp.models():
        for method in inp.exp.methods:
            run = inp.training.get((model, method, inp.seeds[0]))   # (the method keys are the same for every seed)
            m = (run.config or {}).get("method", {}) if run else {}
            lora = m.get("lora") or {}
            q = m.get("quantization") or {}
            rows.append([model, method, m.get("learning_rate", "missing"),
                         f"r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')}" if lora else "—",
                         ", ".join(lora.get("target_modules") or (run.config or {}).get("model", {})
                                   .get("lora_target_modules", [])) if lora else "all weights",
                         f"{q.get('quant_type')} 4-bit, double quant={q.get('double_quant')}, compute "
                         f"{q.get('compute_dtype')}" if q else "—"])
    return md_table(["model", "method", "peak lr", "LoRA", "trained modules", "quantization"], rows, "l" * 6)
