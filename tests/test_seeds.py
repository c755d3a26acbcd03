"""Seed variation (train.seeds): one run per seed at <method>/seed-<k>/, the seed in each run's config; a
single-seed experiment keeps its paths and its resolved configs byte for byte."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from conftest import add_tiny_model_config, copy_project, use_root
from ftcompare import cli, config, paths
from ftcompare.errors import ConfigError

TINY = {"data.n_train": 16, "data.n_val": 8, "train.max_steps": 2, "train.per_device_train_batch_size": 4,
        "train.per_device_eval_batch_size": 8, "train.max_length": 512, "train.save_steps": 100,
        "train.warmup_steps": 0, "train.num_threads": 1}
SEEDS = (42, 43)

# sha256 of models/default/135m/<method>/resolved.json for the default experiment as committed (recomputed when
# default.yaml itself changed: padding-free batches and fused AdamW): the seeds code path must write the very
# bytes of a plain single-seed resolve, so `ftcompare resolve` rewrites no stamp and nothing re-trains.
DEFAULT_STAMPS = {"full": "96daf836f993824d0c471773b02cf8ff278e6d1b7dfd03ba5018c3e0bb16f2c4",
                  "lora": "324f0568143a622134f17122b6b42ec84551660957095359f981911b9abd1d2c",
                  "qlora": "c1f8b555eefc7d2fbc14e5d778e8392b57e8992927981833c5292dfc6c650401"}


@pytest.fixture()
def root(tmp_path, monkeypatch):
    return use_root(monkeypatch, copy_project(tmp_path / "proj"))


def test_single_seed_stamps_are_byte_identical(root):
    assert cli.main(["resolve", "--experiment", "default", *(f"--run=135m/{m}" for m in DEFAULT_STAMPS)]) == 0
    for method, digest in DEFAULT_STAMPS.items():
        stamp = paths.run_dir("default", "135m", method) / "resolved.json"
        assert hashlib.sha256(stamp.read_bytes()).hexdigest() == digest, method
    assert not list((root / "models" / "default").glob("*/*/seed-*"))


def test_seeded_stamps_carry_their_seed(root):
    runs = [f"--run=135m/lora/seed-{s}" for s in (42, 43, 44)]
    assert cli.main(["resolve", "--experiment", "seeds", *runs]) == 0
    texts = {}
    for s in (42, 43, 44):
        stamp = json.loads((root / "models" / "seeds" / "135m" / "lora" / f"seed-{s}" / "resolved.json").read_text())
        assert stamp["config"]["train"]["seed"] == s and stamp["config"]["seeded"] is True
        assert "seeds" not in stamp["config"]["train"]
        texts[s] = stamp["config"]
    # the seeds differ in train.seed only
    assert config.diff_keys(texts[42], texts[43]) == ["train.seed"]


def test_seed_identity_errors_are_one_line(root, capsys):
    with pytest.raises(ConfigError, match="trains seeds 42, 43, 44"):
        config.resolve_run("seeds", "135m", "lora")
    with pytest.raises(ConfigError, match="not in train.seeds"):
        config.resolve_run("seeds", "135m", "lora", seed=7)
    with pytest.raises(ConfigError, match="has one seed"):
        config.resolve_run("default", "135m", "lora", seed=43)
    with pytest.raises(ConfigError, match="contradicts --seed 43"):
        config.resolve_run("seeds", "135m", "lora", {"train.seed": 44}, seed=43)
    assert cli.main(["resolve", "--experiment", "seeds", "--run", "135m/lora/seed-x"]) == 2
    assert "expected MODEL/METHOD or MODEL/METHOD/seed-K" in capsys.readouterr().err


def test_list_names_the_seeds(root, capsys):
    assert cli.main(["list", "seeds", "--experiment", "seeds"]) == 0
    assert capsys.readouterr().out.split() == ["42", "43", "44"]
    assert cli.main(["list", "seeds", "--experiment", "default"]) == 0
    assert capsys.readouterr().out.strip() == ""


def _experiment(root, alias: str) -> str:
    """A tiny seeded experiment: the seeds experiment on the tiny model, two seeds."""
    text = (root / "configs" / "experiments" / "seeds.yaml").read_text()
    text = text.replace("name: seeds", "name: tinyseeds").replace("models: [135m]", f"models: [{alias}]")
    text = text.replace("seeds: [42, 43, 44]", f"seeds: [{', '.join(map(str, SEEDS))}]")
    assert f"seeds: [{SEEDS[0]}, {SEEDS[1]}]" in text
    (root / "configs" / "experiments" / "tinyseeds.yaml").write_text(text)
    return "tinyseeds"


def _first_lora_a(run) -> torch.Tensor:
    from ftcompare.modeling import build_for_training

    model = build_for_training(run)
    return next(p for n, p in model.named_parameters() if "lora_A" in n).detach().clone()


def test_tiny_seeded_experiment_trains_one_run_per_seed(root, tiny_model_dir):
    from ftcompare.evaluate import build_plan
    from ftcompare.merge import merge
    from ftcompare.train import train

    alias = add_tiny_model_config(root, tiny_model_dir)
    exp = _experiment(root, alias)
    out = {}
    for s in SEEDS:
        run = config.resolve_run(exp, alias, "lora", TINY, seed=s)
        assert run.dir == root / "models" / exp / alias / "lora" / f"seed-{s}" and run.train.seed == s
        res = train(run)
        assert res.output_dir == run.dir and (run.dir / "train_summary.json").is_file()
        assert config.load_run(exp, alias, "lora", s).to_dict() == run.to_dict()
        losses = [json.loads(line)["loss"] for line in (run.dir / "train_log.jsonl").read_text().splitlines()]
        out[s] = (run, losses, _first_lora_a(run))
    assert not (root / "models" / exp / alias / "lora" / "train_summary.json").exists()
    (r1, l1, a1), (r2, l2, a2) = out[SEEDS[0]], out[SEEDS[1]]
    assert len(l1) == len(l2) == 2
    assert l1 != l2                      # the seed changes the data order (and dropout)
    assert not torch.equal(a1, a2)       # ... and the adapters' initial weights
    assert torch.equal(a1, _first_lora_a(r1))  # the same seed: the same init

    merged = merge(r2)
    assert merged == r2.dir / "merged" and (merged / "merge_manifest.json").is_file()
    plan = build_plan(exp, alias, "lora", "merged", seed=SEEDS[1])
    assert plan.out_dir == root / "evaluation_results" / exp / alias / "lora" / f"seed-{SEEDS[1]}-merged"
    assert plan.settings()["run_seed"] == SEEDS[1] and plan.model_path == str(merged)
    with pytest.raises(ConfigError, match="is not trained yet"):
        build_plan(exp, alias, "full", "merged", seed=SEEDS[0])
