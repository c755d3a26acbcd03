"""Reading the inputs: evaluations (results.json + samples_<task>.jsonl) and training runs, as typed values.

Who a file belongs to comes from its JSON (results.json's "ftcompare" block, train_summary.json's keys),
never from its path. What a task is (its primary metric, source, license, upstream twin, caveat) comes from
the task's `metadata`, which lm-eval copies from the task YAML into results["configs"][task]["metadata"].
"""
from __future__ import annotations

import json
from functools import lru_cache
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from .. import paths
from ..identity import RunId, format_run  # noqa: F401  (re-exported for the report)
from .layout import rel


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
    """A collector of problems (each once)."""

    def add(self, kind: str, file, field_: str, message: str) -> None:
        p = Problem(kind, rel(file) if isinstance(file, Path) else str(file), field_, message)
        if p not in self:
            self.append(p)


# ==================================================================================================
# Task facts (from the task's metadata)
# ==================================================================================================
MetricKey = tuple[str, str]      # (metric, filter)


@dataclass(frozen=True)
class TaskFacts:
    task: str
    upstream: str                    # the lm-eval task this one is a twin of (itself if none)
    metrics: tuple[MetricKey, ...]   # what to report, primary first (empty: the task config's order)
    source: str | None               # where the documents come from, in words
    license: str | None
    split: str | None                # when the config names none (e.g. custom generation tasks)
    caveat: str | None               # printed under Caveats when the experiment evaluates this task
    caveat_if_trained_on: Mapping[str, str]   # training data loader -> caveat (data carved from this task's source)
    generator: str | None            # what produced the replies, for generation tasks not run by lm-eval itself


def _metric_key(text: str) -> MetricKey:
    metric, _, filt = str(text).partition(",")
    return metric, filt or "none"


def task_facts(task: str, config: dict) -> TaskFacts:
    """The facts of `task` from its results config's metadata; keys missing there (results written before the
    facts moved into the task YAML) are read from the task's YAML under the include path."""
    meta = dict(config.get("metadata") or {})
    if "report_metrics" not in meta:
        meta = {**task_yaml_metadata(task), **meta}
    source = meta.get("source")
    if source and meta.get("source_package"):
        from ..assets import pinned_version

        source = source.format(version=pinned_version(meta["source_package"]))
    return TaskFacts(task=task, upstream=meta.get("upstream_task") or task,
                     metrics=tuple(_metric_key(m) for m in meta.get("report_metrics") or ()),
                     source=source, license=meta.get("license"), split=meta.get("split"),
                     caveat=meta.get("caveat"), caveat_if_trained_on=dict(meta.get("caveat_if_trained_on") or {}),
                     generator=meta.get("generator"))


def task_yaml_metadata(task: str) -> dict:
    """metadata of the task YAML named `task` under ftcompare.paths.TASKS (its `include:` first), else {}."""
    return dict(_yaml_metadata(paths.TASKS).get(task) or {})


@lru_cache(maxsize=8)
def _yaml_metadata(root: Path) -> dict[str, dict]:
    """task -> metadata of every task YAML under `root` (read once per root)."""
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_multi_constructor("!", lambda loader, suffix, node: None)   # !function: not needed here

    def load(path: Path) -> dict:
        doc = yaml.load(path.read_text(), Loader=_Loader) or {}
        inc = doc.get("include")
        meta = load(path.parent / inc).get("metadata") or {} if isinstance(inc, str) else {}
        return {**doc, "metadata": {**meta, **(doc.get("metadata") or {})}}

    found: dict[str, dict] = {}
    for path in sorted(root.rglob("*.yaml")) if root.is_dir() else []:
        try:
            doc = load(path)
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(doc.get("task"), str):
            found.setdefault(doc["task"], doc.get("metadata") or {})
    return found


# ==================================================================================================
# Evaluations and training runs
# ==================================================================================================
@dataclass(frozen=True)
class Item:
    values: Mapping[str, float]
    doc_hash: str | None
    target_hash: str | None
    prompt_hash: str | None
    n_choices: int | None
    derived: Mapping[str, float] = field(default_factory=dict)   # multiple choice: re-derived outcomes (report.mc)


@dataclass(frozen=True)
class SampleSet:
    path: Path
    by_filter: Mapping[str, Mapping[int, Item]]   # filter -> doc_id -> item

    def outcomes(self, metric: str, filter_: str) -> dict[int, float]:
        """doc_id -> the stored per-item value of `metric`, else its re-derived one (continuous metrics)."""
        items = self.by_filter.get(filter_, {}).items()
        if any(metric in it.values for _, it in items):
            return {d: it.values[metric] for d, it in items if metric in it.values}
        return {d: it.derived[metric] for d, it in items if metric in it.derived}

    def continuous(self) -> list[MetricKey]:
        """(metric, filter) of the continuous metrics re-derived for every item (multiple choice only)."""
        from .mc import CONTINUOUS

        return [(m, f) for f, items in self.by_filter.items() for m in CONTINUOUS
                if items and all(m in it.derived for it in items.values())]

    def chance(self) -> float | None:
        items = next(iter(self.by_filter.values()), {})
        ks = [it.n_choices for it in items.values() if it.n_choices]
        return sum(1 / k for k in ks) / len(ks) if ks and len(ks) == len(items) else None


@dataclass(frozen=True)
class TaskResult:
    task: str
    values: Mapping[MetricKey, float]
    stderrs: Mapping[MetricKey, float | None]   # None: lm-eval wrote "N/A"
    n: int | None
    n_original: int | None
    n_shot: object
    version: object
    limit: object
    batch_size: object
    config: Mapping
    higher_is_better: Mapping
    facts: TaskFacts
    samples: SampleSet | None = None

    @property
    def upstream(self) -> str:
        return self.facts.upstream

    def reported(self) -> list[MetricKey]:
        """(metric, filter) pairs to report, primary first: the task's metadata, else its config's order."""
        if self.facts.metrics:
            return [k for k in self.facts.metrics if k in self.values]
        metrics = [m.get("metric") for m in self.config.get("metric_list") or [] if isinstance(m, dict)]
        filters = [f.get("name") for f in self.config.get("filter_list") or [] if isinstance(f, dict)] or ["none"]
        ordered = [(m, f) for f in filters for m in metrics if (m, f) in self.values]
        return ordered + sorted(k for k in self.values if k not in ordered)

    @property
    def is_generation(self) -> bool:
        """A chat generation task: its items say whether each reply ended its turn."""
        return ("stopped", "none") in self.values


@dataclass(frozen=True)
class Evaluation:
    path: Path
    raw: Mapping
    block: Mapping
    experiment: str
    run: RunId
    tasks: Mapping[str, TaskResult] = field(default_factory=dict)

    def with_samples(self, samples: Mapping[str, SampleSet]) -> "Evaluation":
        tasks = {t: replace(tr, samples=samples.get(t)) for t, tr in self.tasks.items()}
        return replace(self, tasks=MappingProxyType(tasks))


@dataclass(frozen=True)
class TrainingRun:
    path: Path               # train_summary.json
    summary: Mapping
    config: Mapping | None   # config.json["config"]
    log: tuple[Mapping, ...]


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
    seed = block.get("run_seed")
    if seed is not None and (method == "base" or not isinstance(seed, int) or isinstance(seed, bool)):
        problems.add("integrity", path, "ftcompare.run_seed", f"{seed!r}: expected the integer training seed of a "
                     "fine-tuned model of a seeded experiment (none for base)")
        return None
    run = RunId(block["model"], method, "" if method == "base" else variant, seed)
    results = raw.get("results")
    if not isinstance(results, dict):
        problems.add("integrity", path, "results", "missing or not a mapping")
        return Evaluation(path, raw, block, block["experiment"], run)
    cfg = raw.get("config") or {}
    tasks = {}
    for task, res in results.items():
        if not isinstance(res, dict):
            continue
        values, stderrs = {}, {}
        for k, v in res.items():
            if "," not in k:
                continue
            metric, filt = k.split(",", 1)
            if metric.endswith("_stderr") or _num(v) is None:
                continue
            values[(metric, filt)] = float(v)
            s = res.get(f"{metric}_stderr,{filt}")
            stderrs[(metric, filt)] = float(s) if _num(s) is not None else None
        if not values:
            continue  # a group entry without metrics of its own
        ns = (raw.get("n-samples") or {}).get(task) or {}
        config = (raw.get("configs") or {}).get(task) or {}
        tasks[task] = TaskResult(
            task=task, values=values, stderrs=stderrs, n=ns.get("effective"), n_original=ns.get("original"),
            n_shot=(raw.get("n-shot") or {}).get(task), version=(raw.get("versions") or {}).get(task),
            limit=_task_value(block["limit"] if "limit" in block else cfg.get("limit"), task),
            batch_size=block.get("batch_size", cfg.get("batch_size")), config=config,
            higher_is_better=(raw.get("higher_is_better") or {}).get(task) or {}, facts=task_facts(task, config))
    return Evaluation(path, raw, block, block["experiment"], run, MappingProxyType(tasks))


def load_samples(path: Path, problems: Problems, config: Mapping | None = None) -> SampleSet | None:
    """One task's samples; with the task's results config of a multiple_choice task, every item's outcomes are
    re-derived from its per-choice log-likelihoods (report.mc) and a stored one that disagrees is a problem."""
    from .mc import rederive

    config = config or {}
    mc = config.get("output_type") == "multiple_choice"
    delimiter = config.get("target_delimiter", " ")
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
                derived, bad = rederive(s, delimiter) if mc else ({}, [])
                for suffix, message in bad:
                    problems.add("integrity", path, f"doc_id {doc_id}{suffix}", message)
                # arguments: one entry per request (a list in memory, {gen_args_i: ...} as lm-eval writes it)
                target[doc_id] = Item(values, s.get("doc_hash"), s.get("target_hash"), s.get("prompt_hash"),
                                      len(args) if isinstance(args, (list, dict)) else None,
                                      MappingProxyType(derived))
    except OSError as e:
        problems.add("integrity", path, "-", f"not readable ({e.__class__.__name__})")
        return None
    return SampleSet(path, by_filter)


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


def load_training(experiment: str, model: str, method: str, problems: Problems,
                  seed: int | None = None) -> TrainingRun | None:
    out = paths.run_dir(experiment, model, method, seed)
    spath = out / "train_summary.json"
    if not spath.is_file():
        problems.add("missing", spath, "-", f"no training run for model={model} method={method}"
                     + ("" if seed is None else f" seed={seed}") + " (run `make train` or `bash scripts/train.sh "
                     f"{model} {method}" + ("" if seed is None else f" --seed {seed}") + "`)")
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
        if seed is not None and (cfg or {}).get("train", {}).get("seed") != seed:
            problems.add("integrity", cpath, "config.train.seed", f"{(cfg or {}).get('train', {}).get('seed')!r}, "
                         f"but the run lies where seed {seed} belongs: it was copied or moved; re-train")
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
    return TrainingRun(spath, summary, cfg, tuple(log))
