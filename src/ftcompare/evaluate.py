"""`python -m ftcompare evaluate`: one variant of one model on the experiment's lm-eval tasks, in process.

  evaluate --model 135m --method base                       the untuned model
  evaluate --model 135m --method qlora --variant merged     <run>/merged/ (a plain checkpoint)
  evaluate --model 135m --method qlora --variant adapter    the un-merged adapter <run>/final/ on its base
                                                            (QLoRA: the base quantized to NF4 as in training)
  optional: --tasks a,b  --limit N (every task; overrides the config)  --batch-size N  --force

Chat experiments (the experiment's data config has format chat): the tokenizer is loaded with the model's
chat template (modeling.load_tokenizer(chat=True)) and the embeddings aligned to it; lm-eval tasks get the
metadata ftcompare_model=<alias> (ftc_chitchat renders its prompts with that model's template). The generation
tasks of evaluation.generation (ftc_chat_gen_<setting>: lm-eval generate_until tasks, one YAML per setting under
lm-evaluation-harness/tasks/ftc_chitchat/) run like the others, on ftc-hf only: their documents come from
generation.data (task metadata `data`), their generation_kwargs are set from generation (max_new_tokens,
batch_size, seed, the setting: chat_eval.task_generation_kwargs), their limit is generation.n_prompts (--limit N
overrides it too); each sample record gets the reply's n_new_tokens, and results.json's ftcompare.generation the
corpus distinct-n and speed of each (chat_eval.generation_block).

What is evaluated comes from the experiment config (evaluation: tasks, num_fewshot, limit per task,
batch size, seed, bootstrap iterations; the task YAMLs under lm-evaluation-harness/tasks/ via include_path).
The model is loaded once and wrapped in lm-eval's HFLM; each task is one `lm_eval.simple_evaluate` call on
that instance (so each task gets its own n-shot and limit, and its own wall time).

Outputs, at fixed paths (paths.eval_dir):
  evaluation_results/<experiment>/<model>/<method>-<merged|adapter>/    or .../<model>/base/
    samples_<task>.jsonl  lm-eval's per-sample records, as lm-eval writes them (doc_id, doc, target,
                          arguments, resps, filtered_resps, filter, acc / acc_norm / exact_match, hashes)
    results.json          simple_evaluate's dict minus `samples`, plus an "ftcompare" block (what was loaded,
                          settings, n and seconds per task, manifest). Written LAST and atomically: it
                          exists only for a finished evaluation. A re-run with the same settings does
                          nothing (--force re-runs).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import config, paths
from .errors import FtcError
from .io import atomic_write_json, atomic_write_text, read_json, sigterm_as_interrupt
from .manifest import manifest, now
from .sourcehash import closure_hash

VARIANTS = ("merged", "adapter")


@dataclass
class EvalPlan:
    """Everything one evaluation depends on, resolved from configs and run folders (no ML imports)."""
    experiment: str
    model: str
    method: str                      # base | a configured method
    variant: str | None              # merged | adapter; None for the untuned model
    tasks: list[str]
    num_fewshot: dict[str, int | None]  # None: the task's own default (0 unless its YAML sets one)
    limit: dict[str, int | None]        # None: every document
    batch_size: int
    max_batch_size: int | None
    lm_eval_model: str               # ftc-hf (ftcompare.fastlm) | hf (stock HFLM)
    generation_batch_size: int | None
    bootstrap_iters: int
    seed: int
    include_path: str | None         # absolute, or None (upstream tasks only)
    include_defaults: bool
    model_cfg: config.ModelConfig
    run: config.RunConfig | None     # the run's own config (its config.json); None for the untuned model
    model_path: str                  # what the weights are loaded from
    adapter_path: str | None         # the peft adapter applied on top (variant adapter)
    quantized_base: bool             # adapter on a base quantized at load time (QLoRA)
    dtype: str
    run_config_hash: str | None
    train_config_hash: str | None
    model_fingerprint: dict = field(default_factory=dict)
    run_seed: int | None = None      # the training seed of a seeded experiment's run (None: the only seed)
    chat: bool = False               # the experiment's data is chat: tokenizer with the model's chat template
    generation: config.GenerationSettings | None = None  # set when a generation task (ftc_chat_gen_*) is asked

    @property
    def generation_tasks(self) -> list[str]:
        names = self.generation.task_names() if self.generation else []
        return [t for t in self.tasks if t in names]

    @property
    def out_dir(self) -> Path:
        return paths.eval_dir(self.experiment, self.model, self.method, self.variant or "merged", self.run_seed)

    def settings(self) -> dict:
        """What determines the results: equal settings = nothing to re-run."""
        s = {
            "experiment": self.experiment, "model": self.model, "method": self.method, "variant": self.variant,
            "tasks": self.tasks, "num_fewshot": self.num_fewshot, "limit": self.limit,
            "batch_size": self.batch_size, "max_batch_size": self.max_batch_size,
            "lm_eval_model": self.lm_eval_model, "generation_batch_size": self.generation_batch_size,
            "bootstrap_iters": self.bootstrap_iters, "seed": self.seed, "dtype": self.dtype,
            "include_defaults": self.include_defaults, "task_files_sha256": task_files_hash(self.include_path),
            # the package code the task files may call: ftcompare.task_data and all it imports
            "task_code_sha256": closure_hash("task_data") if self.include_path else None,
            "lm_eval_version": _version("lm_eval"), "model_fingerprint": self.model_fingerprint,
        }
        if self.run_seed is not None:  # (absent for single-seed runs: earlier results keep their hash)
            s["run_seed"] = self.run_seed
        if self.chat or self.generation_tasks:  # (absent otherwise: earlier results keep their hash)
            s["chat"] = self.chat
            s["chat_code_sha256"] = chat_code_hash()
        if self.generation_tasks:
            g = self.generation
            s["generation"] = {"data": g.data, "max_new_tokens": g.max_new_tokens, "batch_size": g.batch_size,
                               "seed": g.seed, "settings": {t: g.settings[t[len(config.GENERATION_TASK_PREFIX):]]
                                                            for t in self.generation_tasks}}
        return s

    def settings_hash(self) -> str:
        return config.config_hash(self.settings())


def chat_code_hash() -> str:
    """sha256 of the code that renders chat prompts and runs/scores generation: fastlm.py (ftc-hf, which hands
    the generation tasks' requests to chat_eval) and every ftcompare module it imports (chat_eval, chat, data,
    ...)."""
    return closure_hash("fastlm")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def task_files_hash(include_path: str | None) -> str | None:
    """sha256 over our task YAMLs and utils.py files: editing one invalidates results."""
    if not include_path:
        return None
    root = Path(include_path)
    files = sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml", ".py") and "__pycache__" not in p.parts)
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\1")
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# Plan: configs + run folders -> what to load and run (fast; errors the user can fix are FtcError)
# --------------------------------------------------------------------------------------------------
def _rel(p) -> str:
    p = Path(p)
    return str(p.relative_to(paths.ROOT)) if p.is_relative_to(paths.ROOT) else str(p)


def _base_fingerprint(model_cfg: config.ModelConfig, base_path: str) -> dict:
    manifest_file = Path(base_path) / "manifest.json"
    if manifest_file.is_file():  # a prepared packaged model: the sha256 of the file it was converted from
        return {"base": _rel(base_path), "base_sha256": read_json(manifest_file).get("file_sha256")}
    cfg = Path(base_path) / "config.json"
    if cfg.is_file():
        return {"base": _rel(base_path), "base_config_mtime_ns": cfg.stat().st_mtime_ns}
    return {"base": base_path, "revision": model_cfg.revision}


def build_plan(experiment: str, model: str, method: str, variant: str = "merged", tasks: list[str] | None = None,
               limit: int | None = None, batch_size: int | None = None, seed: int | None = None) -> EvalPlan:
    from .assets import base_model_path

    exp = config.load("experiments", experiment)
    ev = exp.evaluation
    if variant not in VARIANTS:
        raise FtcError(f"variant '{variant}' is not valid; expected one of: {', '.join(VARIANTS)}")
    model_cfg = config.load("models", model)  # unknown alias: one line listing the valid ones
    methods = config.available("methods")
    if method != "base" and method not in methods:
        raise FtcError(f"unknown method '{method}'; valid: base (the untuned model), {', '.join(methods)} "
                       "(configs/methods/)")
    if method != "base" and variant == "adapter" and not config.load("methods", method).uses_adapter:
        raise FtcError(f"method '{method}' trains every weight: it has no adapter to evaluate; "
                       f"use the variant `merged` (its final weights)")
    if limit is not None and limit <= 0:
        raise FtcError(f"--limit must be a positive number of documents per task (got {limit})")
    if batch_size is not None and batch_size <= 0:
        raise FtcError(f"--batch-size must be > 0 (got {batch_size})")

    tasks = list(tasks or ev.all_tasks())
    if not tasks:
        raise FtcError(f"experiment '{experiment}' has no evaluation.tasks; list them in configs/experiments/{experiment}.yaml")
    if len(set(tasks)) != len(tasks):
        raise FtcError(f"tasks {tasks} name a task twice")
    gen_names = ev.generation.task_names() if ev.generation else []
    bad = [t for t in tasks if t.startswith(config.GENERATION_TASK_PREFIX) and t not in gen_names]
    if bad:
        raise FtcError(f"unknown generation task(s) {', '.join(bad)}: experiment '{experiment}' defines "
                       + (f"{', '.join(gen_names)} (evaluation.generation.settings)" if gen_names else
                          "no evaluation.generation")
                       + f"; valid tasks: {', '.join(ev.all_tasks())}")
    generation = ev.generation if any(t in gen_names for t in tasks) else None
    if generation is not None and ev.lm_eval_model != "ftc-hf":
        raise FtcError(f"the generation tasks {', '.join(t for t in tasks if t in gen_names)} need evaluation.lm_eval_model "
                       f"ftc-hf (ftcompare.fastlm; got {ev.lm_eval_model}): fix configs/experiments/{experiment}.yaml")
    is_chat = config.load("data", exp.data).format == "chat"
    if generation is not None and config.load("data", generation.data).format != "chat":
        raise FtcError(f"evaluation.generation.data '{generation.data}' is not a chat data config (format: chat); "
                       f"fix configs/experiments/{experiment}.yaml")
    include_path = None
    if ev.include_path:
        p = Path(ev.include_path)
        include_path = str(p if p.is_absolute() else paths.ROOT / p)
        if not Path(include_path).is_dir():
            raise FtcError(f"evaluation.include_path {include_path} is not a folder; fix configs/experiments/{experiment}.yaml")

    if method == "base":
        if seed is not None:
            raise FtcError(f"the base model is evaluated once, with no seed: drop --seed {seed}")
    else:
        seed = config.check_seed(exp, seed)
    run = None
    adapter_path = None
    quantized = False
    run_hash = train_hash = None
    if method == "base":
        variant = None  # the untuned model has no merged/adapter variants: one result at <model>/base/
        model_path = base_model_path(model_cfg)
        dtype = model_cfg.dtype
        fingerprint = _base_fingerprint(model_cfg, model_path)
    else:
        run = config.load_run(experiment, model, method, seed)
        run_dir = run.dir
        summary = run_dir / "train_summary.json"
        if not summary.is_file():
            raise FtcError(f"{run.label} is not trained yet ({_rel(summary)} missing); run "
                           f"`bash scripts/train.sh {model} {method}{_seed_arg(seed)}` (EXPERIMENT={experiment}) "
                           "or `make train`")
        run_hash = run.hash()
        train_hash = read_json(summary).get("config_hash")
        if train_hash != run_hash:
            raise FtcError(f"{_rel(summary)} ({train_hash}) does not match {_rel(run_dir / 'config.json')} ({run_hash}): "
                           f"the run was interrupted or changed; re-train (`bash scripts/train.sh {model} {method}{_seed_arg(seed)}`)")
        dtype = run.model.dtype
        if variant == "merged":
            merged = run_dir / "merged"
            mm = merged / "merge_manifest.json"
            if not mm.is_file():
                raise FtcError(f"{_rel(merged)} is not there yet; run `bash scripts/merge.sh {model} {method}{_seed_arg(seed)}` "
                               f"(EXPERIMENT={experiment}) or `make merge`")
            merge_info = read_json(mm)
            if merge_info.get("config_hash") != run_hash:
                raise FtcError(f"{_rel(merged)} was merged from another training config "
                               f"({merge_info.get('config_hash')} != {run_hash}); re-run `bash scripts/merge.sh {model} {method}{_seed_arg(seed)}`")
            model_path = str(merged)
            fingerprint = {"merged": _rel(merged), "config_hash": run_hash, "merged_at": merge_info.get("finished")}
        else:
            if not run.method.uses_adapter:
                raise FtcError(f"{_rel(run_dir)} was trained without an adapter: no adapter to evaluate; "
                               f"use the variant `merged`")
            final = run_dir / "final"
            if not (final / "adapter_config.json").is_file():
                raise FtcError(f"{_rel(final)}/adapter_config.json missing: no trained adapter; re-train "
                               f"(`bash scripts/train.sh {model} {method}{_seed_arg(seed)}`)")
            model_path = base_model_path(run.model)
            adapter_path = str(final)
            quantized = run.method.quantization is not None
            fingerprint = {"adapter": _rel(final), "config_hash": run_hash,
                           "trained_at": read_json(summary).get("finished"), **_base_fingerprint(run.model, model_path)}

    return EvalPlan(
        experiment=exp.name, model=model, method=method, variant=variant, tasks=tasks,
        num_fewshot={t: 0 if t in gen_names else ev.num_fewshot.get(t) for t in tasks},
        limit={t: limit if limit is not None else (generation.n_prompts if t in gen_names else ev.limit.get(t))
               for t in tasks},
        batch_size=batch_size or ev.batch_size, max_batch_size=ev.max_batch_size,
        lm_eval_model=ev.lm_eval_model, generation_batch_size=ev.generation_batch_size,
        bootstrap_iters=ev.bootstrap_iters, seed=ev.seed, include_path=include_path,
        include_defaults=ev.include_defaults, model_cfg=run.model if run else model_cfg,
        run=run, model_path=model_path, adapter_path=adapter_path, quantized_base=quantized, dtype=dtype,
        run_config_hash=run_hash, train_config_hash=train_hash, model_fingerprint=fingerprint,
        run_seed=seed, chat=is_chat, generation=generation,
    )


def _seed_arg(seed: int | None) -> str:
    return "" if seed is None else f" --seed {seed}"


def is_up_to_date(plan: EvalPlan) -> bool:
    results = plan.out_dir / "results.json"
    if not results.is_file():
        return False
    try:
        return read_json(results).get("ftcompare", {}).get("settings_hash") == plan.settings_hash()
    except (OSError, ValueError):
        return False


# --------------------------------------------------------------------------------------------------
# Model: loaded once per variant, handed to lm-eval as an instance
# --------------------------------------------------------------------------------------------------
def load_model(plan: EvalPlan):
    """-> (model, tokenizer, description of what was loaded). Chat experiments: the tokenizer carries the
    model's chat template and the embeddings are grown to it when ChatML tokens were added (modeling.align_vocab,
    seeded as in training, so an un-merged adapter sits on the same grown base it was trained on)."""
    import torch

    from .modeling import align_vocab, load_base, load_tokenizer

    cfg = plan.model_cfg
    chat = plan.chat or bool(plan.generation_tasks)
    # the seed training grew the embeddings with: the untuned model gets the very rows training started from
    seed = plan.run.train.seed if plan.run else config.load("experiments", plan.experiment).train.seed
    if plan.method == "base":
        model = load_base(cfg)
        tokenizer = load_tokenizer(cfg, chat=chat)
        how = f"untuned base model {_rel(plan.model_path)} ({cfg.dtype})"
    elif plan.adapter_path is None:
        model = load_base(cfg, path=plan.model_path)
        tokenizer = load_tokenizer(cfg, plan.model_path, chat=chat)
        how = f"merged checkpoint {_rel(plan.model_path)} ({cfg.dtype})"
    else:
        from peft import PeftModel

        # QLoRA: load_base quantizes exactly as training did (same BitsAndBytesConfig from the method config)
        base = load_base(cfg, plan.run.method)
        tokenizer = load_tokenizer(cfg, plan.adapter_path, chat=chat)
        if chat:
            align_vocab(base, tokenizer, seed)
        model = PeftModel.from_pretrained(base, plan.adapter_path, is_trainable=False)
        q = plan.run.method.quantization
        # (modeling.exact_4bit_on_cpu: fp32 dequantize + matmul as in training, not bitsandbytes' bf16 CPU kernel)
        on = (f"base {_rel(plan.model_path)} quantized at load to {q.quant_type.upper()} as in training (bitsandbytes, "
              f"double_quant={q.double_quant}, compute {q.compute_dtype})") if q else f"base {_rel(plan.model_path)} ({cfg.dtype})"
        how = f"peft adapter {_rel(plan.adapter_path)} (not merged) on {on}"
    if chat and plan.adapter_path is None:
        added = align_vocab(model, tokenizer, seed)
        if added:
            how += f", embeddings grown by {len(added)} rows for the chat template's added tokens"
    if torch.cuda.is_available() and not plan.quantized_base:  # 4-bit weights were placed at load time
        model = model.to("cuda")
    model.eval()
    return model, tokenizer, how


# --------------------------------------------------------------------------------------------------
# Running and writing
# --------------------------------------------------------------------------------------------------
def _json_safe(obj):
    """lm-eval's own serialization (numpy -> python, functions -> str), and NaN/inf -> null (strict JSON)."""
    from lm_eval.utils import handle_non_serializable

    def fix(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {str(k): fix(v) for k, v in o.items()}
        if isinstance(o, list):
            return [fix(v) for v in o]
        return o

    return fix(json.loads(json.dumps(obj, default=handle_non_serializable, ensure_ascii=False)))


def sample_lines(samples: list[dict]) -> str:
    """Per-sample records exactly as lm-eval's EvaluationTracker.save_results_samples writes them."""
    from lm_eval.utils import handle_non_serializable, sanitize_list

    lines = []
    for s in samples:
        s = dict(s)
        s["arguments"] = {f"gen_args_{i}": {f"arg_{j}": a for j, a in enumerate(arg)}
                          for i, arg in enumerate(s["arguments"])}
        s["resps"] = sanitize_list(s["resps"])
        s["filtered_resps"] = sanitize_list(s["filtered_resps"])
        s["target"] = str(s["target"])
        lines.append(json.dumps(s, default=handle_non_serializable, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def _run_task(lm, task, plan: EvalPlan, task_manager) -> dict:
    """One task (a name, or a built lm-eval Task) through lm-eval's own entry point, on the already-loaded model."""
    import lm_eval

    name = task if isinstance(task, str) else task.task_name
    return lm_eval.simple_evaluate(
        model=lm, tasks=[task], num_fewshot=plan.num_fewshot[name], limit=plan.limit[name],
        batch_size=plan.batch_size, max_batch_size=plan.max_batch_size, bootstrap_iters=plan.bootstrap_iters,
        log_samples=True, task_manager=task_manager, random_seed=plan.seed, numpy_random_seed=plan.seed,
        torch_random_seed=plan.seed, fewshot_random_seed=plan.seed)


def _generation_task(plan: EvalPlan, task: str, task_manager, end_of_turn: str):
    """The lm-eval Task ftc_chat_gen_<setting>, its generation_kwargs replaced (not merged) by those of
    evaluation.generation, so that nothing of the YAML's defaults remains."""
    from .chat_eval import task_generation_kwargs

    obj = task_manager.load([task])["tasks"][task]
    setting = plan.generation.settings[task[len(config.GENERATION_TASK_PREFIX):]]
    obj.set_config(key="generation_kwargs", value=task_generation_kwargs(setting, plan.generation, end_of_turn))
    return obj


def _finish_generation(plan: EvalPlan, task: str, records: list[dict], end_of_turn: str, seconds: float) -> dict:
    """Each sample record of generation task `task` gets its reply's n_new_tokens (the ChatReply ftc-hf returned,
    still in memory); -> the task's ftcompare.generation entry (chat_eval.generation_block)."""
    from .chat_eval import generation_block

    replies = [r["filtered_resps"][0] for r in records]
    for r, reply in zip(records, replies):
        r["n_new_tokens"] = reply.n_new_tokens
    setting = plan.generation.settings[task[len(config.GENERATION_TASK_PREFIX):]]
    return generation_block([str(x) for x in replies], [r["n_new_tokens"] for r in records], setting,
                            plan.generation, end_of_turn, seconds)


class _env_report_once:
    """lm-eval's simple_evaluate collects torch's environment report (torch.utils.collect_env: ~0.5 s of
    subprocesses) in every call, and this stage calls it once per task, in one process and one environment:
    within the block the first report is reused (combine keeps the first task's anyway)."""

    def __enter__(self):
        import functools

        import torch.utils.collect_env as collect_env

        self.module, self.real = collect_env, collect_env.get_pretty_env_info
        collect_env.get_pretty_env_info = functools.lru_cache(maxsize=1)(self.real)

    def __exit__(self, *exc):
        self.module.get_pretty_env_info = self.real


def combine(per_task: dict[str, dict]) -> tuple[dict, dict[str, list]]:
    """Per-task simple_evaluate outputs -> one results dict (as one multi-task call returns) + samples."""
    combined: dict = {}
    samples: dict[str, list] = {}
    for task, res in per_task.items():
        for key, value in res.items():
            if key == "samples":
                samples.update(value)
            elif key == "config":
                combined.setdefault("config", dict(value))
                combined["config"].setdefault("limits", {})[task] = value.get("limit")
            elif isinstance(value, dict):
                combined.setdefault(key, {}).update(value)
            else:
                combined.setdefault(key, value)
    if "config" in combined:
        combined["config"]["limit"] = combined["config"].pop("limits")
    return combined, samples


def run(plan: EvalPlan) -> dict:
    """Evaluate `plan` and write samples_<task>.jsonl, then results.json. Returns the results dict."""
    started, t0 = now(), time.time()
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import hash_string, make_table

    from .chat import end_of_turn as chat_end_of_turn

    # every task's metadata (and so a custom_dataset's keyword arguments) names the evaluated model: ftc_chitchat
    # renders its prompts with that model's chat template
    tm = TaskManager(include_path=plan.include_path, include_defaults=plan.include_defaults,
                     metadata={"ftcompare_model": plan.model})
    gen_tasks = plan.generation_tasks
    where = _rel(plan.include_path) if plan.include_path else "lm-eval's built-in tasks"
    missing = [t for t in gen_tasks if t not in tm.all_tasks]
    if missing:
        raise FtcError(f"generation task(s) {', '.join(missing)} of evaluation.generation.settings have no task YAML in "
                       f"{where}: add e.g. ftc_chitchat/{missing[0]}.yaml (include: _ftc_chat_gen.yaml, task: "
                       f"{missing[0]}) or drop the setting")
    unknown = [t for t in plan.tasks if t not in tm.all_tasks]
    if unknown:
        valid = f"; valid: {', '.join(tm.all_subtasks)}" if len(tm.all_subtasks) <= 50 else ""
        raise FtcError(f"unknown task(s) {', '.join(unknown)} in {where}{valid}")
    # the generation tasks' documents: the held-out conversations of evaluation.generation.data
    gen_tm = TaskManager(include_path=plan.include_path, include_defaults=plan.include_defaults,
                         metadata={"ftcompare_model": plan.model, "data": plan.generation.data}) if gen_tasks else None

    out = plan.out_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").unlink(missing_ok=True)  # from here on, an old result no longer describes the files
    model, tokenizer, how = load_model(plan)
    kw = {"max_batch_size": plan.max_batch_size} if plan.max_batch_size else {}
    if plan.lm_eval_model == "ftc-hf":
        from .fastlm import FtcHF

        lm = FtcHF(pretrained=model, tokenizer=tokenizer, batch_size=plan.batch_size,
                   generation_batch_size=plan.generation_batch_size, **kw)
    else:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=plan.batch_size, **kw)
    load_s = time.time() - t0

    per_task, seconds, generation = {}, {}, {}
    eot = chat_end_of_turn(tokenizer) if gen_tasks else None
    with _env_report_once():
        for task in plan.tasks:
            t = time.time()
            print(f"[evaluate] {_label(plan)}: {task} (n-shot {plan.num_fewshot[task]}, limit {plan.limit[task]})", flush=True)
            if task in gen_tasks:
                lm.chat_reply_runs.clear()
                per_task[task] = _run_task(lm, _generation_task(plan, task, gen_tm, eot), plan, gen_tm)
                generation[task] = _finish_generation(plan, task, per_task[task]["samples"][task], eot,
                                                      sum(r["seconds"] for r in lm.chat_reply_runs))
                res, g = per_task[task]["results"][task], generation[task]
                print(f"[generate] {task}: {len(per_task[task]['samples'][task])} prompts, stopped {res['stopped,none']:.0%}, "
                      f"chrF {res['chrf,none']:.1f}, {g['new_tokens']} tokens in {g['seconds']:.1f} s", flush=True)
            else:
                per_task[task] = _run_task(lm, task, plan, tm)
            seconds[task] = round(time.time() - t, 2)
    results, samples = combine(per_task)
    results["task_hashes"] = {t: hash_string("".join(s["doc_hash"] + s["prompt_hash"] + s["target_hash"] for s in ss))
                              for t, ss in samples.items()}

    n = {t: results["n-samples"][t]["effective"] for t in plan.tasks}
    results["ftcompare"] = {
        "experiment": plan.experiment, "model": plan.model, "method": plan.method, "variant": plan.variant,
        "model_path": _rel(plan.model_path), "adapter_path": _rel(plan.adapter_path) if plan.adapter_path else None,
        "loaded": how, "tasks": plan.tasks, "num_fewshot": {t: results["n-shot"].get(t) for t in plan.tasks},
        "limit": plan.limit, "n": n, "n_available": {t: results["n-samples"][t]["original"] for t in plan.tasks},
        "batch_size": plan.batch_size, "max_batch_size": plan.max_batch_size,
        "lm_eval_model": plan.lm_eval_model, "generation_batch_size": plan.generation_batch_size, "dtype": plan.dtype, "seed": plan.seed,
        **({"run_seed": plan.run_seed} if plan.run_seed is not None else {}),
        "bootstrap_iters": plan.bootstrap_iters, "lm_eval_version": _version("lm_eval"),
        "include_path": _rel(plan.include_path) if plan.include_path else None, "include_defaults": plan.include_defaults,
        "run_config_hash": plan.run_config_hash, "train_config_hash": plan.train_config_hash,
        "settings_hash": plan.settings_hash(), "settings": plan.settings(),
        "wall_time_s": round(time.time() - t0, 2), "model_load_s": round(load_s, 2), "seconds_per_task": seconds,
        "started": started, "finished": now(), "manifest": manifest(),
    }
    if generation:
        results["ftcompare"]["generation"] = generation
    results = _json_safe(results)

    for task in plan.tasks:
        atomic_write_text(out / f"samples_{task}.jsonl", sample_lines(samples.get(task, [])))
    for stale in out.glob("samples_*.jsonl"):
        if stale.name[len("samples_"):-len(".jsonl")] not in plan.tasks:
            stale.unlink()
    atomic_write_json(out / "results.json", results)  # last: its presence means the evaluation finished

    print(make_table(results))
    for t in plan.tasks:
        print(f"[evaluate] {t}: n={n[t]}, {seconds[t]:.1f} s")
    print(f"[evaluate] {_label(plan)} done in {time.time() - t0:.0f} s -> {_rel(out / 'results.json')}", flush=True)
    return results


def _label(plan: EvalPlan) -> str:
    return _rel(plan.out_dir.relative_to(paths.EVAL_RESULTS))


def evaluate_variant(experiment: str, model: str, method: str, variant: str = "merged",
                     tasks: list[str] | None = None, limit: int | None = None, batch_size: int | None = None,
                     force: bool = False, seed: int | None = None) -> int:
    """The `evaluate` stage: plan, skip if results.json matches the settings (unless force), else run.
    Call environment.setup_environment first (before transformers / lm_eval are imported)."""
    plan = build_plan(experiment, model, method, variant, tasks, limit, batch_size, seed)
    results = plan.out_dir / "results.json"
    if not force and is_up_to_date(plan):
        os.utime(results)  # make: the target is up to date
        print(f"[evaluate] {_label(plan)} is up to date ({_rel(results)}, settings {plan.settings_hash()}); "
              "--force re-runs")
        return 0

    with sigterm_as_interrupt():  # `kill`/make's SIGTERM unwinds like Ctrl-C: temp files are removed
        run(plan)
    return 0
