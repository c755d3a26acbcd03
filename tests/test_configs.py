"""Every config parses; bad keys/types fail with a useful line. (That methods differ only in the method is proven at
run time by tests/test_confound.py, not by comparing resolved configs, which are equal outside method.* by construction.)"""
import itertools

import pytest
import yaml

from ftcompare import config
from ftcompare.errors import ConfigError
from conftest import ROOT


def _differences(written, loaded, where: str) -> list[str]:
    """Where a loaded config does not hold what its YAML says (every YAML key, recursively)."""
    if isinstance(written, dict):
        if not isinstance(loaded, dict):
            return [f"{where}: a section in the YAML, {type(loaded).__name__} when loaded"]
        return [d for k, v in written.items()
                for d in (_differences(v, loaded[k], f"{where}.{k}") if k in loaded else [f"{where}.{k}: dropped"])]
    if isinstance(written, (list, tuple)) and isinstance(loaded, (list, tuple)):
        return [] if list(written) == list(loaded) else [f"{where}: {written!r} loaded as {loaded!r}"]
    same = written == loaded and (isinstance(written, bool) == isinstance(loaded, bool))
    return [] if same else [f"{where}: {written!r} loaded as {loaded!r}"]


@pytest.mark.parametrize("kind", sorted(config.KINDS))
def test_every_config_parses(kind):
    """Every file loads into its typed config, which holds every value the file sets."""
    import dataclasses

    names = config.available(kind)
    assert names, f"no configs in configs/{kind}/"
    for name in names:
        cfg = config.load(kind, name)
        assert type(cfg) is config.KINDS[kind]
        written = yaml.safe_load((ROOT / "configs" / kind / f"{name}.yaml").read_text())
        assert _differences(written, dataclasses.asdict(cfg), f"configs/{kind}/{name}.yaml") == []


def test_every_experiment_resolves_every_run():
    for exp_name in config.available("experiments"):
        exp = config.load("experiments", exp_name)
        for model, method, seed in itertools.product(exp.models, exp.methods, exp.train.seeds or [None]):
            run = config.resolve_run(exp_name, model, method, seed=seed)
            assert run.train.max_steps == exp.train.max_steps
            assert run.seed == seed and run.train.seed == (exp.train.seed if seed is None else seed)
            assert len(run.hash()) == 16


def accelerate_config_problems(path) -> list[str]:
    """What accelerate itself rejects or would silently ignore in a launch config: its own loader
    (ClusterConfig: unknown top-level keys, unknown distributed_type / compute_environment), the precision
    enum, and each fsdp_config / deepspeed_config key against `accelerate launch`'s own options (accelerate
    copies those sections onto its launch arguments without checking their names)."""
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.commands.launch import launch_command_parser
    from accelerate.utils import PrecisionType

    try:
        cfg = load_config_from_file(str(path))
    except (ValueError, TypeError) as e:
        return [f"{path.name}: {e}"]
    problems = [] if isinstance(cfg, ClusterConfig) else [f"{path.name}: not a local cluster config"]
    try:
        PrecisionType(cfg.mixed_precision)
    except ValueError as e:
        problems.append(f"{path.name}: {e}")
    options = {a.dest for a in launch_command_parser()._actions}
    for section in ("fsdp_config", "deepspeed_config"):
        for key in getattr(cfg, section) or {}:
            name = key if section != "fsdp_config" or key.startswith("fsdp_") else f"fsdp_{key}"
            if name not in options:
                problems.append(f"{path.name}: {section}.{key} is not an accelerate launch option")
    return problems


def test_accelerate_configs_load_with_accelerate():
    files = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))
    assert {f.stem for f in files} >= {"ddp", "fsdp", "zero3", "cpu"}
    assert [p for f in files for p in accelerate_config_problems(f)] == []


@pytest.mark.parametrize("edit", [("num_procesess: 8", "a misspelled top-level key"),
                                  ("distributed_type: FSPD", "an unknown distributed type"),
                                  ("mixed_precision: bf61", "an unknown precision"),
                                  ("fsdp_config:\n  fsdp_offload_parms: true", "a misspelled fsdp key"),
                                  ("deepspeed_config:\n  zero_stgae: 3", "a misspelled deepspeed key")])
def test_accelerate_config_check_catches(tmp_path, edit):
    text, what = edit
    base = yaml.safe_load((ROOT / "configs" / "accelerate" / "fsdp.yaml").read_text())
    base.update(yaml.safe_load(text))
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(base))
    assert accelerate_config_problems(f), what


@pytest.mark.parametrize("exp_name", config.available("experiments"))
def test_methods_differ_only_in_method_keys(exp_name):
    """Config level only: resolve_run builds everything but method.* without the method, so this guards the
    resolver, not the training. What ran is compared by tests/test_confound.py."""
    exp = config.load("experiments", exp_name)
    for model, seed in itertools.product(exp.models, exp.train.seeds or [None]):
        runs = [config.resolve_run(exp_name, model, m, seed=seed).to_dict() for m in exp.methods]
        for a, b in itertools.combinations(runs, 2):
            differing = config.diff_keys(a, b)
            outside = [k for k in differing if k.split(".")[0] not in config.METHOD_KEYS]
            assert not outside, f"{exp_name}/{model}: {a['method']['name']} vs {b['method']['name']} differ in {outside}"
            assert differing, "two methods resolved to identical configs"


def test_lora_is_qlora_without_quantization():
    lora = config.load("methods", "lora")
    qlora = config.load("methods", "qlora")
    assert lora.lora == qlora.lora and lora.learning_rate == qlora.learning_rate
    assert lora.quantization is None and qlora.quantization.load_in_4bit


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown key 'max_stepz' \(did you mean 'max_steps'\?\); valid keys: seed"):
        config.resolve_run("default", "135m", "lora", {"train.max_stepz": 3})


def test_wrong_type_is_rejected():
    with pytest.raises(ConfigError, match="train.max_steps: expected int, got str"):
        config.resolve_run("default", "135m", "lora", config.parse_overrides(["train.max_steps=abc"]))


def test_unknown_names_list_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown model alias 'nope'; valid: .*135m"):
        config.resolve_run("default", "nope", "lora")
    with pytest.raises(ConfigError, match=r"unknown method 'lorra'; valid: dora, full, lora, qdora, qlora, rslora"):
        config.resolve_run("default", "135m", "lorra")
    with pytest.raises(ConfigError, match=r"unknown experiment 'nope'; valid: .*default"):
        config.resolve_run("nope", "135m", "lora")


def test_overrides_are_typed_and_change_the_hash():
    base = config.resolve_run("default", "135m", "lora")
    run = config.resolve_run("default", "135m", "lora",
                             config.parse_overrides(["train.max_steps=3", "method.lora.r=4", "data.n_val=8"]))
    assert (run.train.max_steps, run.method.lora.r, run.data.n_val) == (3, 4, 8)
    assert run.hash() != base.hash()
    assert config.resolve_run("default", "135m", "lora").hash() == base.hash()


def test_bad_override_form():
    with pytest.raises(ConfigError, match="section.key=value"):
        config.parse_overrides(["max_steps"])
    with pytest.raises(ConfigError, match="must start with one of"):
        config.resolve_run("default", "135m", "lora", {"max_steps": 3})


def test_validation_in_post_init():
    with pytest.raises(ConfigError, match="lora.r and lora.alpha must be > 0"):
        config.resolve_run("default", "135m", "lora", {"method.lora.r": 0})
    with pytest.raises(ConfigError, match="model.dtype='float8' is not valid"):
        config.resolve_run("default", "135m", "lora", {"model.dtype": "float8"})
