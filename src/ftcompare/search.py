"""Successive-halving hyperparameter search over real training runs (Optuna), resumable.

    python -m ftcompare search --experiment default --model 135m --method lora --space lora [--storage URL]

configs/search/<space>.yaml says *what* is searched (any section.key of the run config: choices,
log-uniform / uniform ranges, ints) and the budget (min/max steps, reduction factor, number of
configurations, seed, objective). This module says *how*:

- The n configurations are drawn once by Optuna's seeded RandomSampler (plus, optionally, the experiment's
  own settings as a baseline) and put in the study's queue in a fixed order, so a rerun, a resumed run and
  every worker sharing the study see the same configurations.
- Each trial is a real run of `train.train` with `train.max_steps = budget.max_steps` (the lr schedule is
  the long run's), stopped at each rung (min_steps * reduction_factor**k steps), where it reports the
  objective and asks Optuna's SuccessiveHalvingPruner (or HyperbandPruner) whether to go on. Going on
  *continues from the rung's checkpoint* (train.py's exact resume): nothing is re-trained.
- Optuna's successive halving is asynchronous (ASHA): a trial is promoted at a rung if it is in the best
  1/reduction_factor of the trials that have reached that rung so far, so the first trials meet fewer rivals.
- The study lives in SQLite under results/search/<name>/ (or --storage URL, shared by workers on several
  machines). A trial records its worker (host, pid); a rerun on the same host puts the trials of dead
  workers back in the queue, and they continue from their last checkpoint: a kill loses at most the steps
  since the trial's last checkpoint, and finished trials are never touched.
- Outputs for people (results/search/<name>/): rungs.md (a table per rung), trials.csv, objective_vs_step.png,
  best_overrides.yaml (the winner as overrides: `make all SEARCH=<name>`), search_summary.json and README.md.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import socket
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import config, paths
from .search_report import _get, _redact, resolve_trial, search_dir, trial_overrides, write_outputs  # noqa: F401
from .errors import ConfigError, FtcError
from .io import atomic_write_json, atomic_write_text

SECTIONS = ("model", "method", "data", "train")   # RunConfig sections a space may search
BUDGET_KEYS = ("train.max_steps",)                # set by the budget, never searched


# --------------------------------------------------------------------------------------------------
# The space file
# --------------------------------------------------------------------------------------------------
@dataclass
class Param:
    """One searched dimension: a config key (or a group of keys chosen together) and its distribution."""
    name: str                        # 'method.learning_rate', or a group name like 'batch'
    kind: str                        # choices | log_uniform | uniform | int
    choices: list[Any] = field(default_factory=list)
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False                # int: sample on a log scale
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> {key: value} (group choices)
    baseline: Any = None             # the experiment's own value (label), when it is not one of the choices
    baseline_group: dict[str, Any] | None = None

    def labels(self, with_baseline: bool = True) -> list:
        out = list(self.groups) if self.groups else list(self.choices)
        if with_baseline and self.baseline is not None and self.baseline not in out:
            out.append(self.baseline)
        return out

    def distribution(self, with_baseline: bool = True):
        """The baseline's value joins the choices of every trial's distribution (Optuna needs one distribution
        per parameter across a study), but never the draw of the n configurations."""
        import optuna.distributions as d

        if self.kind == "choices":
            return d.CategoricalDistribution(self.labels(with_baseline))
        if self.kind == "int":
            return d.IntDistribution(int(self.low), int(self.high), log=self.log)
        return d.FloatDistribution(float(self.low), float(self.high), log=self.kind == "log_uniform")

    def overrides(self, value) -> dict[str, Any]:
        """The config overrides one sampled value stands for."""
        if self.groups:
            return dict(self.groups[value] if value in self.groups else self.baseline_group)
        return {self.name: value}

    def keys(self) -> list[str]:
        return sorted({k for g in self.groups.values() for k in g}) if self.groups else [self.name]


@dataclass
class Budget:
    min_steps: int                   # first rung
    max_steps: int                   # last rung: the length of every trial's lr schedule
    reduction_factor: int = 2        # keep the best 1/reduction_factor at each rung
    n_configs: int = 8               # configurations drawn from the space
    seed: int = 0                    # sampler seed
    include_baseline: bool = True    # also run the experiment's own settings (config 0), to say by how much we won


@dataclass
class Objective:
    kind: str = "val_loss"           # val_loss (the experiment's validation split) | lm_eval
    task: str | None = None          # lm_eval: task name (its primary metric is the objective)
    metric: str | None = None        # lm_eval: metric; None = the task's first metric
    limit: int | None = None         # lm_eval: documents per evaluation (None: the experiment's limit)

    @property
    def label(self) -> str:
        return "validation loss" if self.kind == "val_loss" else f"{self.task} {self.metric or 'primary metric'}"


@dataclass
class SearchSpace:
    name: str
    description: str
    params: list[Param]
    budget: Budget
    objective: Objective
    pruner: str = "successive_halving"   # successive_halving | hyperband
    fixed: dict[str, Any] = field(default_factory=dict)   # overrides every trial gets
    model: str | None = None         # default --model
    method: str | None = None        # default --method
    raw: dict = field(default_factory=dict)

    def rungs(self) -> list[int]:
        """Steps at which a trial reports: min * rf**k below max, then max."""
        out, step = [], self.budget.min_steps
        while step < self.budget.max_steps:
            out.append(step)
            step *= self.budget.reduction_factor
        return out + [self.budget.max_steps]

    def hash(self) -> str:
        return config.config_hash(self.raw)


def _space_file(name: str) -> Path:
    return paths.CONFIGS / "search" / f"{name}.yaml"


def available_spaces() -> list[str]:
    return sorted(p.stem for p in (paths.CONFIGS / "search").glob("*.yaml"))


def _check_key(where: str, dotted: str) -> None:
    """`dotted` must name a leaf of the run config (RunConfig sections model/method/data/train)."""
    section, _, rest = dotted.partition(".")
    if section not in SECTIONS or not rest:
        raise ConfigError(f"{where}: '{dotted}' must be section.key with section one of {', '.join(SECTIONS)} "
                          "(e.g. method.learning_rate, train.lr_scheduler_type)")
    if dotted in BUDGET_KEYS:
        raise ConfigError(f"{where}: {dotted} is the search budget; set budget.max_steps / budget.min_steps instead")
    tp: Any = typing.get_type_hints(config.RunConfig)[section]
    parts = rest.split(".")
    for i, part in enumerate(parts):
        args = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) in (
            typing.Union, types.UnionType) else [tp]
        dc = next((a for a in args if dataclasses.is_dataclass(a)), None)
        if dc is None:
            raise ConfigError(f"{where}: unknown key '{dotted}' ('{'.'.join([section] + parts[:i])}' has no sub-keys)")
        valid = [f.name for f in dataclasses.fields(dc)]
        if part not in valid:
            import difflib

            close = difflib.get_close_matches(part, valid, n=1)
            hint = f" (did you mean '{'.'.join([section] + parts[:i] + [close[0]])}'?)" if close else ""
            raise ConfigError(f"{where}: unknown key '{dotted}'{hint}; valid keys of {section}"
                              f"{'.' + '.'.join(parts[:i]) if i else ''}: {', '.join(valid)}")
        tp = typing.get_type_hints(dc)[part]


def _num(where: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {v!r}")
    return v


def _parse_param(where: str, name: str, spec) -> Param:
    kinds = ("choices", "log_uniform", "uniform", "int")
    if not isinstance(spec, dict) or len([k for k in spec if k in kinds]) != 1 or set(spec) - {*kinds, "log"}:
        raise ConfigError(f"{where}.{name}: expected one of {{choices: [...]}}, {{log_uniform: [low, high]}}, "
                          f"{{uniform: [low, high]}}, {{int: [low, high]}} (got {spec!r})")
    kind = next(k for k in spec if k in kinds)
    value = spec[kind]
    if kind == "choices":
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{where}.{name}: empty range (choices must be a non-empty list)")
        if all(isinstance(c, dict) for c in value):  # a group: keys chosen together, e.g. batch x accumulation
            groups = {}
            for c in value:
                if not c:
                    raise ConfigError(f"{where}.{name}: a group choice is an empty mapping")
                for k in c:
                    _check_key(f"{where}.{name}", k)
                groups["x".join(str(v) for v in c.values())] = c
            if len(groups) != len(value):
                raise ConfigError(f"{where}.{name}: two group choices have the same values")
            return Param(name, kind, groups=groups)
        _check_key(where, name)
        if any(isinstance(c, (dict, list)) for c in value):
            raise ConfigError(f"{where}.{name}: choices must be all plain values or all mappings (got {value!r})")
        if len(set(map(repr, value))) != len(value):
            raise ConfigError(f"{where}.{name}: a choice is listed twice in {value!r}")
        return Param(name, kind, choices=list(value))
    _check_key(where, name)
    if not isinstance(value, list) or len(value) != 2:
        raise ConfigError(f"{where}.{name}: {kind} needs [low, high] (got {value!r})")
    low, high = (_num(f"{where}.{name}", v) for v in value)
    if kind == "int":
        if not all(isinstance(v, int) for v in value):
            raise ConfigError(f"{where}.{name}: int needs two integers (got {value!r})")
        if low > high:
            raise ConfigError(f"{where}.{name}: empty range [{low}, {high}] (low > high)")
        if spec.get("log") and low <= 0:
            raise ConfigError(f"{where}.{name}: a log-scale int range needs low > 0 (got {low})")
        return Param(name, kind, low=low, high=high, log=bool(spec.get("log")))
    if "log" in spec:
        raise ConfigError(f"{where}.{name}: 'log' applies to int ranges; use log_uniform for floats")
    if not low < high:
        raise ConfigError(f"{where}.{name}: empty range [{low}, {high}] (need low < high)")
    if kind == "log_uniform" and low <= 0:
        raise ConfigError(f"{where}.{name}: log_uniform needs low > 0 (got {low})")
    return Param(name, kind, low=low, high=high)


def load_space(name: str) -> SearchSpace:
    path = _space_file(name)
    where = f"configs/search/{name}.yaml"
    if not path.is_file():
        valid = available_spaces()
        raise ConfigError(f"unknown search space '{name}'; valid: {', '.join(valid) or '(none)'} (configs/search/)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML ({e.__class__.__name__}); fix the file") from e
    top = ("description", "model", "method", "space", "fixed", "budget", "objective", "pruner")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with keys {', '.join(top)}")
    for k in raw:
        if k not in top:
            import difflib

            close = difflib.get_close_matches(str(k), top, n=1)
            raise ConfigError(f"{where}: unknown key '{k}'{f' (did you mean {close[0]!r}?)' if close else ''}; "
                              f"valid keys: {', '.join(top)}")
    space = raw.get("space") or {}
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{where}: 'space' is empty; give at least one key, e.g. method.learning_rate: "
                          "{log_uniform: [5.0e-5, 1.0e-3]}")
    params = [_parse_param(f"{where}: space", str(k), v) for k, v in space.items()]
    seen: dict[str, str] = {}
    for p in params:
        for k in p.keys():
            if k in seen:
                raise ConfigError(f"{where}: {k} is searched twice ({seen[k]} and {p.name})")
            seen[k] = p.name
    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{where}: fixed must be a mapping of section.key: value")
    for k in fixed:
        _check_key(f"{where}: fixed", str(k))
        if k in seen:
            raise ConfigError(f"{where}: {k} is both fixed and searched")
    budget = config.from_dict(Budget, raw.get("budget") or {}, where=f"{where}: budget")
    b = budget
    if b.min_steps < 1 or b.max_steps < 1:
        raise ConfigError(f"{where}: budget below one step (min_steps={b.min_steps}, max_steps={b.max_steps}); "
                          "each rung must train at least 1 step")
    if b.min_steps > b.max_steps:
        raise ConfigError(f"{where}: budget.min_steps={b.min_steps} > budget.max_steps={b.max_steps}")
    if b.reduction_factor < 2:
        raise ConfigError(f"{where}: budget.reduction_factor must be >= 2 (got {b.reduction_factor})")
    if b.n_configs < 1:
        raise ConfigError(f"{where}: budget.n_configs must be >= 1 (got {b.n_configs})")
    obj = raw.get("objective", "val_loss")
    if obj == "val_loss" or obj is None:
        objective = Objective()
    elif isinstance(obj, dict):
        objective = config.from_dict(Objective, {"kind": "lm_eval", **obj}, where=f"{where}: objective")
        if not objective.task:
            raise ConfigError(f"{where}: objective needs a task (an lm-eval task name), or write objective: val_loss")
        if objective.limit is not None and objective.limit <= 0:
            raise ConfigError(f"{where}: objective.limit must be > 0 (got {objective.limit})")
    else:
        raise ConfigError(f"{where}: objective must be val_loss or {{task: NAME, metric: ..., limit: N}} (got {obj!r})")
    pruner = raw.get("pruner", "successive_halving")
    config._choice(f"{where}: pruner", pruner, ("successive_halving", "hyperband"))
    return SearchSpace(name=name, description=str(raw.get("description", "")), params=params, budget=budget,
                       objective=objective, pruner=pruner, fixed=dict(fixed), model=raw.get("model"),
                       method=raw.get("method"), raw=raw)


# --------------------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------------------
def baseline_params(space: SearchSpace, base: config.RunConfig) -> dict:
    """The experiment's own settings, expressed in the space's parameters (a group gets its values' label)."""
    d = base.to_dict()
    out = {}
    for p in space.params:
        if p.groups:
            values = {k: _get(d, k) for k in next(iter(p.groups.values()))}
            label = "x".join(str(v) for v in values.values())
            if label not in p.groups:  # the baseline's combination is not one of the choices
                p.baseline, p.baseline_group = label, values
            out[p.name] = label
        else:
            out[p.name] = _get(d, p.name)
            if p.kind == "choices" and out[p.name] not in p.choices:
                p.baseline = out[p.name]
    return out


def check_space(space: SearchSpace, experiment: str, model: str, method: str) -> config.RunConfig:
    """Every extreme of every parameter must make a valid run config (e.g. method.lora.* needs an adapter
    method, dropout must stay in [0, 1)). Returns the experiment's own run config (the baseline)."""
    base = config.resolve_run(experiment, model, method, {**space.fixed, "train.max_steps": space.budget.max_steps})
    d = base.to_dict()
    where = f"configs/search/{space.name}.yaml"
    for p in space.params:
        for k in p.keys():
            parent = k.rsplit(".", 1)[0]
            if _get(d, parent) is None:
                raise ConfigError(f"{where}: {k} does not apply to method '{method}' ({parent} is null for it); "
                                  f"search it with a method that has it, or drop it from the space")
        values = list(p.groups) if p.groups else p.choices if p.kind == "choices" else [p.low, p.high]
        for v in values:
            try:
                config.resolve_run(experiment, model, method, trial_overrides(space, {p.name: v}))
            except ConfigError as e:
                raise ConfigError(f"{where}: {p.name}={v!r} makes an invalid run config: {e}") from None
    return base


def draw_configs(space: SearchSpace) -> list[dict]:
    """n configurations from Optuna's RandomSampler(seed), duplicates redrawn: the same list every time."""
    import optuna

    dists = {p.name: p.distribution(with_baseline=False) for p in space.params}
    tmp = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=space.budget.seed))
    out, seen = [], set()
    n_possible = math.prod(len(d.choices) for d in dists.values()) if all(p.kind == "choices" for p in space.params) else None
    while len(out) < space.budget.n_configs:
        params = tmp.ask(dists).params
        key = json.dumps(params, sort_keys=True)
        if key in seen and (n_possible is None or len(seen) < n_possible):
            continue
        seen.add(key)
        out.append(params)
    return out


# --------------------------------------------------------------------------------------------------
# Study
# --------------------------------------------------------------------------------------------------
def trial_dir(name: str, index: int) -> Path:
    """A trial's training run (checkpoints, log, adapter): gitignored, like every trained run."""
    return paths.MODELS / "search" / name / f"config-{index:03d}"


def open_storage(url: str):
    import optuna

    try:
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}}
                                          if url.startswith("sqlite") else {})
    except Exception as e:  # noqa: BLE001  (sqlalchemy/driver errors of every kind: one line for the user)
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise FtcError(f"cannot open study storage {_redact(url)} ({e.__class__.__name__}: {first}); "
                       "give an SQLAlchemy URL that this machine can reach, e.g. sqlite:///path/study.db or "
                       "postgresql://user@host/db") from None


def _pruner(space: SearchSpace):
    import optuna

    b = space.budget
    if space.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=b.min_steps, max_resource=b.max_steps,
                                              reduction_factor=b.reduction_factor)
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=b.min_steps, reduction_factor=b.reduction_factor,
                                                  min_early_stopping_rate=0)


def _worker() -> dict:
    import psutil

    me = psutil.Process()
    return {"host": socket.gethostname(), "pid": me.pid, "started": me.create_time()}


def _alive(worker: dict) -> bool:
    import psutil

    try:
        return abs(psutil.Process(worker["pid"]).create_time() - worker["started"]) < 1.0
    except (psutil.NoSuchProcess, KeyError, TypeError):
        return False


def requeue_dead_trials(study) -> list[int]:
    """Trials RUNNING for a dead worker of this host go back to the queue (same number, same configuration):
    they continue from their last checkpoint, in the order an uninterrupted search would have run them."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    back = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = t.user_attrs.get("worker")
        if w and w.get("host") == host and not _alive(w):
            study._storage.set_trial_state_values(t._trial_id, TrialState.WAITING)
            back.append(t.number)
    return back


def open_study(space: SearchSpace, name: str, experiment: str, model: str, method: str, storage_url: str | None,
               base: config.RunConfig):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = _direction(space, experiment)  # (an unknown objective task fails here, before any file is made)
    out = search_dir(name)
    url = storage_url or f"sqlite:///{out / 'study.db'}"
    if storage_url is None:
        out.mkdir(parents=True, exist_ok=True)
    storage = open_storage(url)
    out.mkdir(parents=True, exist_ok=True)
    identity = {"experiment": experiment, "model": model, "method": method, "space": space.name,
                "space_hash": space.hash(), "base_config_hash": base.hash()}
    study = optuna.create_study(storage=storage, study_name=name, sampler=optuna.samplers.RandomSampler(
        seed=space.budget.seed), pruner=_pruner(space), direction=direction, load_if_exists=True)
    have = study.user_attrs.get("identity")
    if have is None:
        study.set_user_attr("identity", identity)
        configs = draw_configs(space)
        if space.budget.include_baseline:
            configs = [baseline_params(space, base)] + configs
        for i, params in enumerate(configs):
            study.enqueue_trial(params, user_attrs={"config_index": i,
                                                    "baseline": space.budget.include_baseline and i == 0},
                                skip_if_exists=True)
    elif have != identity:
        diff = [k for k in identity if identity[k] != have.get(k)]
        raise FtcError(f"study '{name}' in {_redact(url)} was made for {have.get('experiment')}/{have.get('model')}/"
                       f"{have.get('method')} with space '{have.get('space')}', and {', '.join(diff)} differ now; "
                       f"pass --name NEW for a new search, or delete {out.relative_to(paths.ROOT) if out.is_relative_to(paths.ROOT) else out} to start over")
    elif space.budget.include_baseline:
        baseline_params(space, base)  # registers the baseline's group label for trial_overrides
    return study, url


def _direction(space: SearchSpace, experiment: str) -> str:
    if space.objective.kind == "val_loss":
        return "minimize"
    metric, higher = _lm_eval_metric(space, experiment)
    space.objective.metric = metric  # the task's primary metric, named in every output
    return "maximize" if higher else "minimize"


# --------------------------------------------------------------------------------------------------
# Objective
# --------------------------------------------------------------------------------------------------
def _lm_eval_metric(space: SearchSpace, experiment: str) -> tuple[str, bool]:
    """(metric, higher_is_better) of the objective task: the one named, or the task's first (primary) metric."""
    key = (experiment, space.objective.task, space.objective.metric)
    if key in _METRICS:
        return _METRICS[key]
    from lm_eval.tasks import TaskManager

    ev = config.load("experiments", experiment).evaluation
    include = str(paths.ROOT / ev.include_path) if ev.include_path else None
    try:
        tm = TaskManager(include_path=include, include_defaults=ev.include_defaults)
        task = tm.load([space.objective.task])["tasks"][space.objective.task]
    except Exception as e:  # noqa: BLE001
        raise FtcError(f"objective task '{space.objective.task}' cannot be loaded ({e.__class__.__name__}: "
                       f"{str(e)[:120]}); name a task of lm-evaluation-harness/tasks/ or an installed one") from None
    higher = task.higher_is_better()
    metric = space.objective.metric or next(iter(higher))
    if metric not in higher:
        raise FtcError(f"objective metric '{metric}' is not a metric of task {space.objective.task}; "
                       f"valid: {', '.join(higher)}")
    _METRICS[key] = (metric, bool(higher[metric]))
    return _METRICS[key]


_METRICS: dict = {}


def _lm_eval_objective(space: SearchSpace, run: config.RunConfig, final: Path) -> float:
    """The task's metric for the trial's weights (final/: an adapter on the base, or the full model)."""
    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from .modeling import load_base, load_tokenizer

    metric, _ = _lm_eval_metric(space, run.experiment)
    ev = config.load("experiments", run.experiment).evaluation
    task = space.objective.task
    if run.method.uses_adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_base(run.model, run.method), str(final), is_trainable=False)
    else:
        model = load_base(run.model, path=str(final))
    tokenizer = load_tokenizer(run.model, str(final))
    if torch.cuda.is_available() and run.method.quantization is None:
        model = model.to("cuda")
    lm = HFLM(pretrained=model.eval(), tokenizer=tokenizer, batch_size=ev.batch_size)
    include = str(paths.ROOT / ev.include_path) if ev.include_path else None
    res = lm_eval.simple_evaluate(
        model=lm, tasks=[task], num_fewshot=ev.num_fewshot.get(task),
        limit=space.objective.limit or ev.limit.get(task), bootstrap_iters=0,
        task_manager=TaskManager(include_path=include, include_defaults=ev.include_defaults),
        random_seed=ev.seed, numpy_random_seed=ev.seed, torch_random_seed=ev.seed, fewshot_random_seed=ev.seed)
    scores = res["results"][task]
    key = next((k for k in scores if k.split(",")[0] == metric), None)
    if key is None:
        raise FtcError(f"lm-eval returned no '{metric}' for {task} (got {', '.join(scores)})")
    return float(scores[key])


def _reset_peak() -> None:
    """Per-rung peak memory: CUDA's peak counter, or Linux's peak RSS (VmHWM) reset through clear_refs."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_mb() -> tuple[float, str]:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024, "cpu_peak_rss"
    except OSError:
        pass
    from .train import peak_memory_mb

    return peak_memory_mb(), "cpu_max_rss_process"


def run_trial(study, trial, space: SearchSpace, name: str, experiment: str, model: str, method: str,
              after_rung=lambda: None) -> None:
    """One configuration through the rungs: train to the rung, report, ask the pruner; continue from the
    rung's checkpoint or stop. Each rung's numbers are stored in the trial (user attr rung_<step>)."""
    from optuna.trial import TrialState

    from .train import train

    trial.set_user_attr("worker", _worker())  # first: a dead worker's trial is recognised by it
    params = {p.name: trial.suggest_categorical(p.name, p.distribution().choices) if p.kind == "choices"
              else trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log) if p.kind == "int"
              else trial.suggest_float(p.name, float(p.low), float(p.high), log=p.kind == "log_uniform")
              for p in space.params}
    index = trial.user_attrs["config_index"]
    run = resolve_trial(experiment, model, method, space, params)
    trial.set_user_attr("run_config_hash", run.hash())
    out = trial_dir(name, index)
    frozen = study._storage.get_trial(trial._trial_id)
    done = frozen.intermediate_values
    last_done = max(done) if done else None
    value = None
    for step in space.rungs():
        if step in done:                       # reported before this worker died: already decided, or decide now
            value = done[step]
            if step == last_done and step < space.budget.max_steps and trial.should_prune():
                study.tell(trial, state=TrialState.PRUNED)
                return
            continue
        _reset_peak()
        t0 = time.time()
        res = train(config.run_from_dict(run.to_dict()), output_dir=out,
                    stop_at=step if step < space.budget.max_steps else None)
        value = res.val_loss if space.objective.kind == "val_loss" else _lm_eval_objective(space, run, out / "final")
        peak, kind = _peak_mb()
        trial.set_user_attr(f"rung_{step}", {
            "step": step, "objective": value, "val_loss": res.val_loss,
            "train_wall_s": res.summary["wall_time_s"],          # this rung's training loop
            "wall_s": round(time.time() - t0, 2),                 # + loading, evaluation, saving
            "steps_trained": res.summary["global_step"] - int((res.summary["resumed_from"] or "checkpoint-0").split("-")[1]),
            "resumed_from": res.summary["resumed_from"], "peak_memory_mb": round(peak, 1), "peak_memory_kind": kind,
            "tokens_seen": res.summary["tokens_seen"], "train_loss_last": res.summary["train_loss_last"],
            "finished": time.time()})
        after_rung()
        if isinstance(value, float) and math.isnan(value):
            study.tell(trial, state=TrialState.FAIL)
            return
        trial.report(value, step)
        print(f"[search] {name}: config {index} (trial {trial.number}) step {step}: {space.objective.label} "
              f"{value:.4f} ({time.time() - t0:.0f} s)", flush=True)
        if step < space.budget.max_steps and trial.should_prune():
            study.tell(trial, state=TrialState.PRUNED)
            return
    study.tell(trial, value)


def search(experiment: str, model: str | None, method: str | None, space_name: str, storage: str | None = None,
           name: str | None = None, report_only: bool = False) -> Path:
    """Run (or resume, or join) the search; write the outputs. Returns results/search/<name>/.
    report_only: write the outputs of the study as it is now (e.g. while other workers run), train nothing."""
    from optuna.trial import TrialState

    space = load_space(space_name)
    model = model or space.model
    method = method or space.method
    if not model or not method:
        raise FtcError(f"search needs --model and --method (configs/search/{space_name}.yaml names no default)")
    name = name or space_name
    if not name.replace("-", "").replace("_", "").isalnum():
        raise FtcError(f"--name '{name}' must be letters, digits, - and _ (it names a folder and the study)")
    base = check_space(space, experiment, model, method)
    study, url = open_study(space, name, experiment, model, method, storage, base)
    if report_only:

        return write_outputs(study, space, name, experiment, model, method, url)
    back = requeue_dead_trials(study)
    if back:
        print(f"[search] {name}: trial(s) {', '.join(map(str, back))} of a killed worker go back to the queue "
              "(they continue from their last checkpoint)", flush=True)
    t0 = time.time()
    session = f"session_{socket.gethostname()}_{os.getpid()}_{int(t0)}"

    def alive():  # this worker's wall time, kept in the study (a killed session keeps its last update)
        study.set_user_attr(session, {"start": t0, "last": time.time(), "wall_s": round(time.time() - t0, 1)})

    alive()
    while study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        trial = study.ask()
        if "config_index" not in trial.user_attrs:  # another worker took the last configuration meanwhile
            trial.set_user_attr("unused", True)
            study.tell(trial, state=TrialState.FAIL)
            break
        run_trial(study, trial, space, name, experiment, model, method, after_rung=alive)
    print(f"[search] {name}: this worker ran {time.time() - t0:.0f} s", flush=True)

    return write_outputs(study, space, name, experiment, model, method, url)
