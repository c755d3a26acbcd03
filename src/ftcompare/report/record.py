"""The record: Python computes the numbers and hands the data to the Jinja2 template
src/ftcompare/templates/record.md.j2, which holds every sentence."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .. import paths
from ..io import sha256_file
from .analysis import Analysis
from .chat import (CHAT_CELL_CHARS, CHAT_EXAMPLES, CHAT_STOP_TARGET, LOOP_NGRAM, LOOP_TIMES, NO_EOT_MARK,
                   bpb_task, chat_examples_markdown, chat_markdown, end_of_turn, generation_settings, greedy_task,
                   max_new_tokens, setting_name, stop_targets, template_view_paths)
from .compare import ALPHA
from .display import fmt_p, md_table, p_is, metric_display, metric_label, metric_name, pct
from .layout import DEFAULT_EXPERIMENT, all_results_csv, record_path, rel, tables_dir
from .load import Evaluation
from .tables import (continuous_markdown, cost_markdown, pooled_bpb_markdown, methods_table, peak_memory_kinds, provenance_table, run_order,
                     task_markdown)

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
TEMPLATE = "record.md.j2"
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}


def environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.filters.update(pct=pct, fmt_p=fmt_p, p_is=p_is, in_words=lambda n: NUMBER_WORDS.get(n, str(n)))
    return env


def macro(name: str):
    """A macro of templates/record_macros.j2 as a function (sentences shared by the record and the tables)."""
    return getattr(environment().get_template("record_macros.j2").module, name)


def command(experiment: str, allow_missing: bool) -> str:
    return f"python analyze_results.py --experiment {experiment}" + (" --allow-missing" if allow_missing else "")


def _eval_seed(ev: Evaluation):
    if ev.block.get("seed") is not None:
        return ev.block["seed"]
    c = ev.raw.get("config") or {}
    return {k: c.get(k) for k in ("random_seed", "numpy_seed", "torch_seed", "fewshot_seed")}


def _config_source(cfg) -> str:
    if cfg.get("custom_dataset"):
        return "custom_dataset function of the task YAML"
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if files:
        names = sorted({Path(f).name for f in (files.values() if isinstance(files, dict) else [files])
                        if isinstance(f, str)})
        return f"{cfg.get('dataset_path')} files {', '.join(names)}"
    return f"{cfg.get('dataset_path')}" + (f" / {cfg['dataset_name']}" if cfg.get("dataset_name") else "")


def eval_data_table(an: Analysis) -> str:
    inp = an.inputs
    rows = []
    chat = inp.chat_tasks()
    for task in inp.tasks:
        ref = inp.ref_result(task)
        if ref is None:
            rows.append([task, "missing", "", "", "", ""])
            continue
        src = ref.facts.source or _config_source(ref.config)
        if task in chat:
            src += f" (generation setting `{setting_name(inp, task)}`)"
        elif ref.upstream != task:
            src += f" (twin of lm-eval's `{ref.upstream}`)"
        split = ref.config.get("test_split") or ref.config.get("validation_split") or ref.facts.split
        rows.append([task, src, ref.facts.license or "see the dataset card", split, f"{ref.n} of {ref.n_original}",
                     f"{ref.n_shot}"])
    return md_table(["task", "source", "license", "split", "n evaluated", "n-shot"], rows, "llllrr")


def training_data(an: Analysis) -> list[dict]:
    """One entry per training data config: the config and the summary of a run that used it."""
    runs = an.inputs.training.values()
    out = []
    for text in sorted({json.dumps((r.config or {}).get("data"), sort_keys=True) for r in runs if r.config}):
        d = json.loads(text) or {}
        used = [r for r in runs if r.config and r.config.get("data") == d]
        out.append({"config": d, "summary": used[0].summary if used else {}})
    return out


def findings(an: Analysis) -> list[dict]:
    """Per task and model: the primary metric's comparisons, for the plain-words section."""
    inp = an.inputs
    out = []
    for task in inp.tasks:
        rep = inp.reported(task)
        if not rep:
            out.append({"task": task, "missing": True})
            continue
        metric, filt = rep[0]
        hib = inp.higher_is_better(task, metric)
        models = []
        for model in inp.models():
            comps = [c for c in an.comparisons if (c.task, c.metric, c.filter, c.model) == (task, metric, filt, model)]
            vb = [c for c in comps if c.kind == "vs base"]
            mm = [c for c in comps if c.kind == "method vs method"]
            models.append({"model": model, "vs_base": vb, "between": mm,
                           "n": vb[0].paired.n if vb else None, "base": vb[0].paired.first if vb else None,
                           "half": max((c.paired.ci_high - c.paired.ci_low) / 2 for c in vb) if vb else None,
                           "between_sig": [c for c in mm if c.significant],
                           "between_nom": [c for c in mm if not c.significant and c.nominal]})
        out.append({"task": task, "missing": False, "metric": metric, "name": metric_name(metric, filt),
                    "d": metric_display(metric), "hib": hib, "models": models})
    return out


def sensitive(an: Analysis) -> list[dict]:
    """For the bottom line, per multiple-choice task (trained-on tasks first): the continuous metric with the
    most significant comparisons vs base (ties: report.mc.CONTINUOUS order), and those comparisons."""
    inp = an.inputs
    loaders = {(r.config or {}).get("data", {}).get("loader") for r in inp.training.values()}
    out = []
    chat = inp.chat_tasks()
    for task in inp.tasks:
        comps = [c for c in an.continuous if c.task == task and c.kind == "vs base"]
        keys = [k for k in inp.continuous(task) if any((c.metric, c.filter) == k for c in comps)]
        rep = inp.reported(task)
        if not keys and rep and task not in chat and not metric_display(rep[0][0]).percent:
            # a task whose primary metric is continuous already (GSM8K gold bits per byte)
            comps = [c for c in an.comparisons if c.task == task and c.kind == "vs base"]
            keys = [rep[0]] if any((c.metric, c.filter) == rep[0] for c in comps) else []
        if not keys:
            continue
        n_sig = {k: sum(c.significant for c in comps if (c.metric, c.filter) == k) for k in keys}
        best = max(keys, key=lambda k: n_sig[k])   # the first of the maxima
        chosen = [c for c in comps if (c.metric, c.filter) == best]
        ref = inp.ref_result(task)
        out.append({"task": task, "trained": any(ld in loaders for ld in ref.facts.caveat_if_trained_on),
                    "metric": best[0], "label": metric_label(best[0]), "d": metric_display(best[0]),
                    "n": chosen[0].paired.n, "comps": chosen, "n_sig": n_sig[best]})
    return sorted(out, key=lambda x: not x["trained"])


def caveats(an: Analysis) -> dict:
    from ..stats import wilson_ci

    inp = an.inputs
    gguf_models = []
    for model in inp.models():
        cfg = next(((r.config or {}).get("model") for (m, *_), r in inp.training.items() if m == model and r.config),
                   None) or {}
        if cfg.get("source") == "packaged-gguf":
            gguf_models.append({"model": model, "what": cfg.get("description") or cfg.get("gguf_file")})
    loaders = {(r.config or {}).get("data", {}).get("loader") for r in inp.training.values()}
    results = [inp.ref_result(t) for t in inp.tasks]
    results = [r for r in results if r is not None]
    overlap = list(dict.fromkeys(text for r in results for loader, text in r.facts.caveat_if_trained_on.items()
                                 if loader in loaders))
    ns = sorted({tr.n for ev in inp.evals.values() for tr in ev.tasks.values() if tr.n})
    ci_half = {n: round(100 * (wilson_ci(n // 2, n)[1] - wilson_ci(n // 2, n)[0]) / 2) for n in ns}
    sizes = {}
    for ev in inp.evals.values():
        for task, tr in ev.tasks.items():
            sizes.setdefault(task, set()).add(str(tr.batch_size))
    runs = list(inp.training.values())
    return {"gguf_models": gguf_models, "overlap": overlap,
            "ns": ns, "small_n": bool(ns) and ns[0] < 1000, "ci_half": ci_half,
            "batch_sizes": [(t, sorted(s)) for t, s in sorted(sizes.items()) if len(s) > 1],
            "tasks": list(dict.fromkeys(r.facts.caveat for r in results if r.facts.caveat)),
            "cpu": "cpu_max_rss" in {r.summary.get("peak_memory_kind") for r in runs},
            "steps": sorted({r.summary.get("max_steps") for r in runs}) if runs else None}


def chat_context(an: Analysis, img) -> dict | None:
    inp = an.inputs
    tasks = inp.chat_tasks()
    if not tasks:
        return None
    gen = getattr(inp.exp.evaluation, "generation", None)
    gt = greedy_task(inp)
    ref = inp.ref_result(gt)
    gen_ref = next((inp.ref_result(t) for t in tasks if inp.ref_result(t)), None)
    views = template_view_paths(inp)
    return {
        "tasks": tasks, "greedy": setting_name(inp, gt), "bpb_task": bpb_task(inp),
        "settings": [(setting_name(inp, t), json.dumps(generation_settings(inp, t), sort_keys=True)) for t in tasks],
        "n_prompts": gen.n_prompts if gen else (ref.n if ref else "?"), "max_new_tokens": max_new_tokens(inp, gt),
        "end_of_turn": end_of_turn(inp, gt), "generator": gen_ref.facts.generator if gen_ref else None,
        "tables": {m: chat_markdown(inp, an.chat_rows, m) for m in inp.models()},
        "examples": {m: chat_examples_markdown(inp, m) for m in inp.models()},
        "targets": stop_targets(inp), "stop_target": CHAT_STOP_TARGET, "n_examples": CHAT_EXAMPLES,
        "cell_chars": CHAT_CELL_CHARS, "no_eot": NO_EOT_MARK, "loop_n": LOOP_NGRAM, "loop_times": LOOP_TIMES,
        "views": [rel(p) for p in views.values()],
    }


def inputs_table(an: Analysis) -> str:
    inp = an.inputs
    files = []
    for cell in inp.cells:
        ev = inp.evals.get(cell)
        if ev is not None:
            files.append(ev.path)
            files += [tr.samples.path for tr in ev.tasks.values() if tr.samples is not None and tr.task in inp.tasks]
    for key in sorted(inp.training, key=lambda k: run_order(inp, k)):
        run = inp.training[key]
        files += [p for p in (run.path, run.path.parent / "config.json", run.path.parent / "train_log.jsonl",
                              run.path.parent / "template_view.json") if p.is_file()]
    return md_table(["file", "sha256 (first 16)"], [[f"`{rel(p)}`", sha256_file(p)[:16]] for p in files], "ll")


def precision_rows(an: Analysis) -> list[dict]:
    """Parameter dtypes by kind per method, as train_summary.json recorded them (runs trained before the
    precision policy was recorded have none)."""
    rows = []
    for (model, method, seed), run in sorted(an.inputs.training.items(), key=lambda kv: run_order(an.inputs, kv[0])):
        p = run.summary.get("precision")
        if p:
            rows.append({"model": model, "method": method if seed is None else f"{method} seed {seed}",
                         "kinds": "; ".join(f"{k} {v}" for k, v in p.items() if k != "compute"),
                         "compute": p.get("compute")})
    return rows


def _get(cfg: dict, dotted: str):
    for part in dotted.split("."):
        cfg = cfg.get(part) if isinstance(cfg, dict) else None
    return cfg


def searches(an: Analysis) -> list[dict]:
    """The hyperparameter searches of this experiment (results/search/<name>/search_summary.json), as written by
    ftcompare.search_report: what was searched, what won by how much, caveats, fairness."""
    out = []
    for f in sorted((paths.RESULTS / "search").glob("*/search_summary.json")):
        d = json.loads(f.read_text())
        if d.get("experiment") != an.experiment:
            continue
        d["readme"] = os.path.relpath(f.parent / "README.md", record_path(an.experiment).parent)
        run = an.inputs.training.get((d.get("model"), d.get("method"), None))
        d["applied"] = None if run is None or not run.config or not d.get("best") else all(
            _get(run.config, k) == v for k, v in d["best"]["overrides"].items())
        out.append(d)
    return out


def seed_context(an: Analysis, sa) -> dict:
    """What the record says about training seeds: the one seed of a single-seed experiment, or the seed analysis."""
    from .seeds import seed_markdown

    train = an.inputs.exp.train
    if sa is None:
        return {"seeded": False, "seed": train.seed}
    tests = [t for t in sa.tests if t.p_value == t.p_value]
    return {"seeded": True, "seeds": list(sa.seeds), "n_tests": len(tests),
            "n_exceed": sum(t.exceeds for t in tests),
            "sections": [(task, seed_markdown(sa, task)) for task in an.inputs.tasks if an.inputs.reported(task)]}


def render_record(an: Analysis, allow_missing: bool, figure_files: dict[str, Path], seed_analysis=None) -> str:
    inp = an.inputs
    record = record_path(an.experiment)

    def img(key: str, alt: str) -> str:
        p = figure_files.get(key)
        return f"*({alt}: no data)*" if p is None else f"![{alt}]({os.path.relpath(p, record.parent)})"

    from ..stats import BOOTSTRAP_ITERS, Z95

    permutation = sorted({c.metric for c in an.comparisons if c.paired.test != "McNemar exact"})
    binary = [c for c in an.comparisons if metric_display(c.metric).percent]   # accuracy, exact match
    context = {
        "command": command(an.experiment, allow_missing), "experiment": an.experiment,
        "is_default": an.experiment == DEFAULT_EXPERIMENT, "exp": inp.exp,
        "template": f"src/ftcompare/templates/{TEMPLATE}",
        "gen": getattr(inp.exp.evaluation, "generation", None), "chat": chat_context(an, img), "img": img,
        "train_seeds": sorted({str((r.config or {}).get("train", {}).get("seed")) for r in inp.training.values()}),
        "eval_seeds": sorted({json.dumps(_eval_seed(ev), sort_keys=True) for ev in inp.evals.values()}),
        "methods_table": methods_table(inp), "provenance_table": provenance_table(inp),
        "training_data": training_data(an), "eval_data_table": eval_data_table(an),
        "cost_table": cost_markdown(inp), "peak_kinds": peak_memory_kinds(inp),
        "task_sections": [(task, task_markdown(inp, task, an.scores.get(task, ()), an.comparisons),
                           continuous_markdown(inp, task, an.continuous_scores.get(task, ()), an.continuous)
                           + pooled_bpb_markdown(inp, task))
                          for task in inp.tasks],
        "sensitive": sensitive(an),
        "tables_dir": os.path.relpath(tables_dir(an.experiment), record.parent),
        "all_results": os.path.relpath(all_results_csv(), record.parent),
        "permutation_metrics": permutation, "findings": findings(an), "alpha": ALPHA,
        "n_comparisons": len(an.comparisons), "n_significant": sum(c.significant for c in an.comparisons),
        "n_nominal": sum(c.nominal for c in an.comparisons), "caveats": caveats(an),
        "n_binary": len(binary), "n_binary_significant": sum(c.significant for c in binary),
        "n_binary_nominal": sum(c.nominal for c in binary),
        "missing": inp.missing, "extra": [rel(e.path) for e in inp.extra], "n_evaluations": len(inp.evals),
        "n_task_results": sum(1 for c in inp.cells for t in inp.tasks if inp.task_result(c, t)),
        "n_runs": len(inp.training), "inputs_table": inputs_table(an),
        "bootstrap_iters": BOOTSTRAP_ITERS, "z95": Z95,
        "precision": precision_rows(an), "searches": searches(an), "seeding": seed_context(an, seed_analysis),
    }
    return environment().get_template(TEMPLATE).render(**context)
