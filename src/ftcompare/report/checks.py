"""Integrity and comparability checks, and the experiment's grid of inputs (`Inputs`, built once, then read).

Every check that fails adds one `Problem` naming the file and the field. An evaluation is checked against
itself (n, binomial stderr, whole numbers of correct items) and against its per-item samples (every reported
value re-derives from them); the grid's evaluations against each other and the experiment config (same
documents, prompts, n-shot, limit, versions); training runs against each other (they differ only in the method).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .. import paths
from .display import DEFAULT_HIGHER_IS_BETTER
from .layout import rel
from .load import (Evaluation, MetricKey, Problem, Problems, RunId, SampleSet, TaskResult, TrainingRun,
                   load_evaluation, load_samples, load_training)

REL_TOL = 1e-6
# Per-item outcomes of these metrics are 0/1: value * n must be an integer, stderr must be binomial.
ACCURACY_METRICS = {"acc", "acc_norm", "exact_match", "acc_mutual_info", "stopped"}


@dataclass(frozen=True)
class Inputs:
    """The checked inputs of one experiment: the expected grid and what was found for it."""
    experiment: str
    exp: object                                   # config.ExperimentConfig
    cells: tuple[RunId, ...]                      # models x (base + methods x variants), in report order
    evals: Mapping[RunId, Evaluation]             # present cells only
    training: Mapping[tuple[str, str, int | None], TrainingRun]   # (model, method, seed or None) -> run
    tasks: tuple[str, ...]
    problems: tuple[Problem, ...]
    extra: tuple[Evaluation, ...]                 # this experiment's evaluations outside the grid
    all_evaluations: tuple[Evaluation, ...]       # every experiment's (for all_results.csv)
    warnings: tuple[Problem, ...]                 # other experiments' problems (not fatal)

    @property
    def missing(self) -> list[Problem]:
        return [p for p in self.problems if p.kind == "missing"]

    def models(self) -> list[str]:
        return list(self.exp.models)

    def task_result(self, cell: RunId, task: str) -> TaskResult | None:
        ev = self.evals.get(cell)
        tr = ev.tasks.get(task) if ev else None
        return tr if tr is not None and tr.samples is not None else None

    def ref_result(self, task: str) -> TaskResult | None:
        return next((self.task_result(c, task) for c in self.cells if self.task_result(c, task)), None)

    def reported(self, task: str) -> list[MetricKey]:
        ref = self.ref_result(task)
        return ref.reported() if ref else []

    def continuous(self, task: str) -> list[MetricKey]:
        """The continuous metrics re-derived from a multiple-choice task's log-likelihoods (report.mc), if any."""
        ref = self.ref_result(task)
        return ref.samples.continuous() if ref else []

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
        """The generation tasks (their items say whether a reply `stopped`; a task without any result: the
        experiment's evaluation.generation); the record's chat section exists only with some."""
        gen = generation_task_names(self.exp)
        return [t for t in self.tasks if (ref := self.ref_result(t)) is not None and ref.is_generation
                or ref is None and t in gen]

    def method_cells(self, model: str) -> list[RunId]:
        return [c for c in self.cells if c.model == model and not c.is_base]

    @property
    def seeds(self) -> list[int | None]:
        """The training seeds of a seeded experiment (train.seeds), else [None]: one run per (model, method)."""
        return list(getattr(self.exp.train, "seeds", None) or [None])

    def run_keys(self, model: str | None = None) -> list[tuple[str, str, int | None]]:
        """(model, method, seed) of every expected training run, in report order."""
        return [(m, x, s) for m in self.models() if model in (None, m) for x in self.exp.methods for s in self.seeds]

    def fatal(self, allow_missing: bool) -> list[Problem]:
        return [p for p in self.problems if not (allow_missing and p.kind == "missing" and self.evals)]


# ==================================================================================================
# One evaluation against itself and its samples
# ==================================================================================================
def check_evaluation(ev: Evaluation, problems: Problems, need_samples: bool) -> dict[str, SampleSet]:
    """Checks one evaluation; returns its tasks' samples that could be read."""
    from ..stats import binomial_stderr

    found = {}
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
                    want = binomial_stderr(value, tr.n)
                    if not math.isclose(se, want, rel_tol=REL_TOL, abs_tol=1e-9):
                        problems.add("integrity", ev.path, f"results.{task}.{metric}_stderr,{filt}",
                                     f"{se!r} != binomial sqrt(p(1-p)/(n-1)) = {want:.6g} for p={value!r}, n={tr.n}")
        spath = ev.path.parent / f"samples_{task}.jsonl"
        if not spath.is_file():
            if need_samples:
                problems.add("missing", spath, "-", f"no per-item samples for task {task}: the paired tests and the "
                             "re-derivation check need them (evaluate with log_samples)")
            continue
        samples = load_samples(spath, problems, tr.config)
        if samples is None:
            continue
        found[task] = samples
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
    return found


def eval_path(experiment: str, run: RunId) -> Path:
    return paths.eval_dir(experiment, run.model, run.method, run.variant or "merged", run.seed) / "results.json"


def _check_location(ev: Evaluation, problems: Problems) -> None:
    want = eval_path(ev.experiment, ev.run)
    if want.resolve() != ev.path.resolve():
        problems.add("integrity", ev.path, "ftcompare",
                     f"says experiment={ev.experiment} model={ev.run.model} method={ev.run.method} "
                     f"variant={ev.run.variant or '-'}" + ("" if ev.run.seed is None else f" seed={ev.run.seed}")
                     + f", whose results belong at {rel(want)}: the file was copied or "
                     "moved; re-evaluate")


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
            ev = ev.with_samples(check_evaluation(ev, own, need_samples=ev.experiment == experiment))
        mine = ev.experiment == experiment if ev is not None else \
            path.resolve().is_relative_to((paths.EVAL_RESULTS / experiment).resolve())
        (problems if mine else warnings).extend(p for p in own if p not in problems)
        if ev is not None and (mine or not own):
            found.append(ev)
    return found


# ==================================================================================================
# The grid against the experiment config and against itself
# ==================================================================================================
def expected_cells(exp) -> list[RunId]:
    """models x (base + methods x variants [x seeds]); the adapter variant only for methods that train an adapter;
    a seeded experiment (train.seeds) has one cell per seed of each method variant, the base model one."""
    from .. import config

    adapters = {m: config.load("methods", m).uses_adapter for m in exp.methods}
    seeds = getattr(exp.train, "seeds", None) or [None]
    cells = []
    for model in exp.models:
        cells.append(RunId(model, "base"))
        for method in exp.methods:
            for variant in exp.evaluation.variants:
                if variant == "adapter" and not adapters[method]:
                    continue  # full fine-tuning has no adapter: its merged variant is its final weights
                cells += [RunId(model, method, variant, seed) for seed in seeds]
    return cells


def generation_task_names(exp) -> list[str]:
    gen = getattr(exp.evaluation, "generation", None)
    return list(gen.task_names()) if gen is not None else []


def experiment_tasks(exp) -> list[str]:
    """Every task of the grid: lm-eval tasks, then the generation tasks (EvalConfig.all_tasks())."""
    return list(getattr(exp.evaluation, "all_tasks", lambda: list(exp.evaluation.tasks))())


def _expected_limit(exp, task: str):
    """The number of documents the config asks for (None: all): evaluation.limit, or for a generation
    task of evaluation.generation its n_prompts."""
    if task in generation_task_names(exp) and task not in exp.evaluation.tasks:
        return exp.evaluation.generation.n_prompts
    return exp.evaluation.limit.get(task)


def _check_comparable(experiment, exp, cells, evals, tasks, problems: Problems) -> None:
    """Cells of one task are compared only if they ran the same documents the same way."""
    ev_cfg = exp.evaluation
    for task in tasks:
        ref_by_model: dict[str, tuple[Evaluation, TaskResult]] = {}
        ref_all = ref_samples = None
        for cell in cells:
            ev = evals.get(cell)
            tr = ev.tasks.get(task) if ev else None
            if tr is None:
                continue
            if task in ev_cfg.num_fewshot and tr.n_shot != ev_cfg.num_fewshot[task]:
                problems.add("comparability", ev.path, f"n-shot.{task}", f"{tr.n_shot!r}, but configs/experiments/"
                             f"{experiment}.yaml evaluation.num_fewshot.{task} = {ev_cfg.num_fewshot[task]}: "
                             "stale evaluation; re-evaluate")
            want = _expected_limit(exp, task)
            if isinstance(tr.n, int) and isinstance(tr.n_original, int) \
                    and tr.n != (tr.n_original if want is None else min(want, tr.n_original)):
                setting = (f"evaluation.generation.n_prompts = {want}"
                           if task not in ev_cfg.tasks and task in generation_task_names(exp)
                           else f"evaluation.limit.{task} = {want}")
                problems.add("comparability", ev.path, f"n-samples.{task}.effective",
                             f"{tr.n} of {tr.n_original}, but configs/experiments/{experiment}.yaml {setting}: "
                             "evaluated with another limit; re-evaluate")
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
                        problems.add("comparability", ev.path, fld, f"{a!r} != {b!r} in {rel(rev.path)}: results "
                                     f"with different {name} are not compared; re-evaluate with the same settings")
            if tr.samples is None:
                continue
            # the same documents and targets in every cell; the same prompts within a model (another model
            # may legitimately format prompts differently, e.g. its own chat template)
            if ref_samples is None:
                ref_samples = (ev, tr)
            else:
                _check_same_items(tr, ref_samples[1], problems, ("doc_hash", "target_hash"))
            ref = ref_by_model.setdefault(cell.model, (ev, tr))
            if ref[0] is not ev:
                _check_same_items(tr, ref[1], problems, ("prompt_hash",))


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


def _check_training_comparable(exp, training, problems: Problems) -> None:
    """Runs of one model may differ only in the method (configs/methods/*.yaml keys) and, in a seeded experiment,
    the seed (train.seed)."""
    from ..config import diff_keys

    seeds = getattr(exp.train, "seeds", None) or [None]
    for model in exp.models:
        runs = [(m, training[(model, m, s)]) for m in exp.methods for s in seeds if (model, m, s) in training]
        runs = [(m, r) for m, r in runs if r.config is not None]
        for (m0, r0), (m1, r1) in ((runs[0], r) for r in runs[1:]):
            keys = [k for k in diff_keys(r0.config, r1.config) if not k.startswith("method.")
                    and not (seeds != [None] and k == "train.seed")]
            if keys:
                problems.add("comparability", r1.path.parent / "config.json", ", ".join(keys[:6]),
                             f"differs from {rel(r0.path.parent / 'config.json')} ({m0}) in more than the method: "
                             "the comparison would be confounded; re-train with the same settings")
        # the same hub model (and hub data) revision for every run of this model (pinned in configs/models)
        from ..hub import revision_problems

        for line in revision_problems([(rel(r.path), r.summary) for _, r in runs]):
            problems.add("comparability", runs[0][1].path, "manifest.hub", line)


def _check_eval_matches_training(cells, evals, training, problems: Problems) -> None:
    for cell in cells:
        ev, run = evals.get(cell), training.get((cell.model, cell.method, cell.seed))
        if ev is None or run is None:
            continue
        for key in ("config_hash", "run_config_hash", "train_config_hash"):
            h = ev.block.get(key)
            if isinstance(h, str) and h and h != run.summary.get("config_hash"):
                problems.add("comparability", ev.path, f"ftcompare.{key}",
                             f"{h} != {run.summary.get('config_hash')} in {rel(run.path)}: the evaluated model is "
                             "from another training run; re-evaluate")


def build_inputs(experiment: str) -> Inputs:
    """Load and check everything one experiment's report needs."""
    from .. import config

    exp = config.load("experiments", experiment)
    problems, warnings = Problems(), Problems()
    everything = discover_evaluations(exp.name, problems, warnings)
    cells = expected_cells(exp)
    tasks = experiment_tasks(exp)
    evals: dict[RunId, Evaluation] = {}
    extra: list[Evaluation] = []
    for ev in everything:
        if ev.experiment != exp.name:
            continue
        if ev.run in evals:
            problems.add("integrity", ev.path, "ftcompare", f"a second evaluation of {ev.run.label} (first: "
                         f"{rel(evals[ev.run].path)})")
        elif ev.run in cells:
            evals[ev.run] = ev
        else:
            extra.append(ev)
    for cell in cells:
        ev = evals.get(cell)
        if ev is None:
            problems.add("missing", eval_path(exp.name, cell), "-",
                         f"no evaluation of model={cell.model} method={cell.method}"
                         + (f" variant={cell.variant}" if cell.variant else "") + " (run `make evaluate`)")
            continue
        for task in tasks:
            if task not in ev.tasks:
                problems.add("missing", ev.path, f"results.{task}", f"task {task} was not evaluated")
    training = {}
    for model in exp.models:
        for method in exp.methods:
            for seed in getattr(exp.train, "seeds", None) or [None]:
                run = load_training(exp.name, model, method, problems, seed)
                if run is not None:
                    training[(model, method, seed)] = run
    _check_comparable(exp.name, exp, cells, evals, tasks, problems)
    _check_training_comparable(exp, training, problems)
    _check_eval_matches_training(cells, evals, training, problems)
    if not evals:
        problems.add("missing", paths.EVAL_RESULTS / exp.name, "-", "no evaluation results at all for this experiment")
    return Inputs(experiment=exp.name, exp=exp, cells=tuple(cells), evals=evals, training=training,
                  tasks=tuple(tasks), problems=tuple(problems), extra=tuple(extra), all_evaluations=tuple(everything),
                  warnings=tuple(warnings))
