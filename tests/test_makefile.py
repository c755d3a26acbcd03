"""The Makefile as a DAG, on a temporary copy of the project with fake outputs (no stage runs): `make -n all`
on a finished tree has nothing to do, and a change re-runs exactly the stages that depend on it."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

COPIED = ["Makefile", "analyze_results.py", "requirements.txt", "constraints.txt", "requirements-assets.txt",
          "pyproject.toml", "configs", "lm-evaluation-harness", "scripts", "src"]
STAGE = re.compile(r"^(bash scripts/(train|merge|evaluate_models)\.sh .*|\.venv/bin/python analyze_results\.py .*)$")
METHODS = ("full", "lora", "qlora")


# the names `ftcompare list` gives for the default experiment (passed so that each make reads the Makefile
# without four Python starts; the fixture's first plan uses the real lists)
NAMES = ["MODELS=135m", "METHODS=full lora qlora", "VARIANTS=merged", "ADAPTER_METHODS=lora qlora", "SEEDS="]


def make_n(tree: Path, *goals: str, names: bool = True, experiment: str = "default") -> list[str]:
    """The stage commands `make -n` would run (the config stamps are brought up to date first)."""
    env = {k: v for k, v in os.environ.items() if k not in ("FTCOMPARE_ROOT", "MAKEFLAGS", "MFLAGS", "EXPERIMENT")}
    r = subprocess.run(["make", "-n", *goals, f"EXPERIMENT={experiment}", *(NAMES if names else [])], cwd=tree, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return sorted(line.strip() for line in r.stdout.splitlines() if STAGE.match(line.strip()))


def _age(path: Path, seconds_ago: float) -> None:
    t = time.time() - seconds_ago
    os.utime(path, (t, t))


@pytest.fixture()
def tree(tmp_path) -> Path:
    """A finished default experiment: every output present and newer than what it is made from."""
    root = tmp_path / "proj"
    root.mkdir()
    for name in COPIED:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(ROOT / name, root / name)
    venv = root / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text(f'#!/bin/sh\nPYTHONPATH="{root / "src"}" exec "{sys.executable}" "$@"\n')
    (venv / "python").chmod(0o755)
    (root / ".venv" / ".setup-done").touch()
    base = root / "models" / "base" / "135m" / "manifest.json"
    base.parent.mkdir(parents=True)
    base.write_text("{}\n")
    for f in root.rglob("*"):
        if f.is_file() and ".venv" not in f.parts:
            _age(f, 1000)
    assert len(make_n(root, "pipeline", names=False)) == 3 + 3 + 4 + 1  # nothing done yet (writes the config stamps)
    for f in [base, *root.glob("models/default/*/*/resolved.json"), root / "evaluation_results" / "default" /
              "eval_settings.json"]:
        _age(f, 900)
    outputs = {800: [f"models/default/135m/{m}/train_summary.json" for m in METHODS],
               700: [f"models/default/135m/{m}/merged/merge_manifest.json" for m in METHODS],
               600: ["evaluation_results/default/135m/base/results.json",
                     *(f"evaluation_results/default/135m/{m}-merged/results.json" for m in METHODS)],
               500: ["models_evaluation_record.md"]}
    for ago, files in outputs.items():
        for name in files:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text("{}\n")
            _age(root / name, ago)
    return root


def test_a_finished_tree_has_nothing_to_do(tree):
    assert make_n(tree, "all") == []
    assert make_n(tree, "pipeline") == []


def test_a_method_key_re_runs_that_method_only(tree):
    f = tree / "configs" / "methods" / "lora.yaml"
    f.write_text(f.read_text().replace("learning_rate: 2.0e-4", "learning_rate: 3.0e-4"))
    assert make_n(tree, "all") == sorted([
        "bash scripts/train.sh 135m lora", "bash scripts/merge.sh 135m lora",
        "bash scripts/evaluate_models.sh 135m lora merged", ".venv/bin/python analyze_results.py --experiment default"])
    assert make_n(tree, "pipeline") == make_n(tree, "pipeline")  # planning twice changes nothing


def test_an_evaluation_key_re_runs_the_evaluations_only(tree):
    f = tree / "configs" / "experiments" / "default.yaml"
    f.write_text(f.read_text().replace("limit: {ftc_hellaswag: 200,", "limit: {ftc_hellaswag: 100,"))
    assert make_n(tree, "pipeline") == sorted([
        "bash scripts/evaluate_models.sh 135m base merged",
        *(f"bash scripts/evaluate_models.sh 135m {m} merged" for m in METHODS),
        ".venv/bin/python analyze_results.py --experiment default"])


def test_a_training_override_re_runs_every_method(tree):
    assert make_n(tree, "pipeline", "TRAIN_ARGS=train.max_steps=12") == sorted(
        [f"bash scripts/train.sh 135m {m} train.max_steps=12" for m in METHODS]
        + [f"bash scripts/merge.sh 135m {m}" for m in METHODS]
        + [f"bash scripts/evaluate_models.sh 135m {m} merged" for m in METHODS]
        + [".venv/bin/python analyze_results.py --experiment default"])


@pytest.mark.parametrize("module", ["config.py", "io.py", "paths.py"])
def test_analyzer_code_re_runs_the_report_only(tree, module):
    (tree / "src" / "ftcompare" / module).touch()
    assert make_n(tree, "pipeline") == [".venv/bin/python analyze_results.py --experiment default"]


def test_a_bad_config_stops_make_with_one_line(tree):
    env = {k: v for k, v in os.environ.items() if k not in ("FTCOMPARE_ROOT", "MAKEFLAGS", "MFLAGS", "EXPERIMENT")}
    r = subprocess.run(["make", "-n", "pipeline", "TRAIN_ARGS=train.max_stepz=3", *NAMES], cwd=tree, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "error: " in r.stderr and "did you mean 'max_steps'" in r.stderr
    assert "train.sh" not in r.stdout


def test_a_seeded_experiment_plans_one_run_per_seed(tree):
    """configs/experiments/seeds.yaml (train.seeds: [42, 43, 44]): every stage per seed at <method>/seed-<k>/,
    the base model once; the lists come from `ftcompare list` (seeds included); SEEDS= picks a subset."""
    seeds = (42, 43, 44)
    runs = [(m, s) for m in METHODS for s in seeds]
    assert make_n(tree, "pipeline", names=False, experiment="seeds") == sorted(
        [f"bash scripts/train.sh 135m {m} --seed {s}" for m, s in runs]
        + [f"bash scripts/merge.sh 135m {m} --seed {s}" for m, s in runs]
        + ["bash scripts/evaluate_models.sh 135m base merged"]
        + [f"bash scripts/evaluate_models.sh 135m {m} merged --seed {s}" for m, s in runs]
        + [".venv/bin/python analyze_results.py --experiment seeds"])
    for m, s in runs:  # the stamps are at the seed paths and carry the seed
        stamp = json.loads((tree / "models" / "seeds" / "135m" / m / f"seed-{s}" / "resolved.json").read_text())
        assert stamp["config"]["train"]["seed"] == s and "seeds" not in stamp["config"]["train"]
    assert not (tree / "models" / "seeds" / "135m" / "lora" / "resolved.json").exists()
    assert make_n(tree, "train", "SEEDS=43", names=False, experiment="seeds") == [
        f"bash scripts/train.sh 135m {m} --seed 43" for m in METHODS]
    # finished seed runs: nothing to do; their evaluations live under <method>/seed-<k>-merged/
    for m, s in runs:
        for name in (f"models/seeds/135m/{m}/seed-{s}/train_summary.json",
                     f"models/seeds/135m/{m}/seed-{s}/merged/merge_manifest.json",
                     f"evaluation_results/seeds/135m/{m}/seed-{s}-merged/results.json"):
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            (tree / name).write_text("{}\n")
    for name in ("evaluation_results/seeds/135m/base/results.json", "results/seeds/models_evaluation_record.md"):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text("{}\n")
    assert make_n(tree, "pipeline", names=False, experiment="seeds") == []


def test_a_re_trained_run_is_merged_and_re_evaluated(tree):
    """A newer train_summary.json (the run was re-trained) re-runs that method's merge and evaluation and the
    report, nothing else."""
    (tree / "models/default/135m/qlora/train_summary.json").touch()
    assert make_n(tree, "pipeline") == sorted([
        "bash scripts/merge.sh 135m qlora", "bash scripts/evaluate_models.sh 135m qlora merged",
        ".venv/bin/python analyze_results.py --experiment default"])


def test_a_re_merged_model_is_re_evaluated(tree):
    (tree / "models/default/135m/lora/merged/merge_manifest.json").touch()
    assert make_n(tree, "pipeline") == sorted([
        "bash scripts/evaluate_models.sh 135m lora merged", ".venv/bin/python analyze_results.py --experiment default"])
