"""Successive-halving search (ftcompare.search) on the tiny model: repeatable, resumable after SIGKILL, strict input."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from conftest import ROOT, add_tiny_model_config
from ftcompare import cli

TINY_FIXED = """fixed:
  data.n_train: 32
  data.n_val: 8
  train.per_device_eval_batch_size: 8
  train.max_length: 512
  train.save_steps: 100
  train.warmup_steps: 0
  train.num_threads: 1
"""

SPACE = """description: tiny 2-rung search for the tests
model: tiny
method: lora
space:
  method.learning_rate: {log_uniform: [1.0e-4, 1.0e-1]}
  method.lora.r: {choices: [2, 4, 8]}
  batch:
    choices:
      - {train.per_device_train_batch_size: 4, train.gradient_accumulation_steps: 1}
      - {train.per_device_train_batch_size: 2, train.gradient_accumulation_steps: 2}
budget: {min_steps: 1, max_steps: 2, reduction_factor: 2, n_configs: 3, seed: 7}
""" + TINY_FIXED


@pytest.fixture()
def proj(project, tiny_model_dir):
    add_tiny_model_config(project, tiny_model_dir)
    (project / "configs" / "search").mkdir(exist_ok=True)
    (project / "configs" / "search" / "tiny.yaml").write_text(SPACE)
    return project


def _trials(study_db):
    """(number, state, params, intermediate values, value) of every trial, straight from the SQLite study."""
    import optuna

    study = optuna.load_study(study_name=study_db.parent.name, storage=f"sqlite:///{study_db}")
    return [(t.number, t.state.name, t.params, dict(t.intermediate_values), t.value) for t in study.trials]


def _search(capsys, *extra):
    code = cli.main(["search", "--space", "tiny", *extra])
    err = capsys.readouterr().err
    assert code == 0, err
    return code


def test_same_seed_same_trials_and_winner(proj, capsys):
    _search(capsys, "--name", "a")
    _search(capsys, "--name", "b")
    a, b = (_trials(proj / "results" / "search" / n / "study.db") for n in ("a", "b"))
    assert len(a) == 4  # baseline + 3 drawn configurations
    assert [t[1:] for t in a] == [t[1:] for t in b]
    assert {t[1] for t in a} <= {"COMPLETE", "PRUNED"} and any(t[1] == "PRUNED" for t in a)
    sa, sb = (json.loads((proj / "results" / "search" / n / "search_summary.json").read_text()) for n in ("a", "b"))
    assert sa["best"]["params"] == sb["best"]["params"] and sa["best"]["objective"] == sb["best"]["objective"]
    assert sa["rungs"] == [1, 2]
    for f in ("rungs.md", "trials.csv", "objective_vs_step.png", "best_overrides.yaml", "README.md"):
        assert (proj / "results" / "search" / "a" / f).stat().st_size > 0, f

    # a kept trial continued from its rung-1 checkpoint (1 step trained at rung 2), it did not restart
    kept = [t for t in sa["trials"] if "2" in t["objective_by_step"]]
    assert kept
    rows = [r for r in (proj / "results" / "search" / "a" / "trials.csv").read_text().splitlines()[1:]]
    header = (proj / "results" / "search" / "a" / "trials.csv").read_text().splitlines()[0].split(",")
    for r in rows:
        d = dict(zip(header, r.split(",")))
        assert d["steps_trained"] == "1", d
        if d["step"] == "2":
            assert d["resumed_from"] == "checkpoint-1"

    # the rung-2 objective of a search trial equals a plain `train` run of the same config for 2 steps
    from ftcompare import config
    from ftcompare.search import load_space, resolve_trial
    from ftcompare.train import train

    best = sa["best"]
    run = resolve_trial("default", "tiny", "lora", load_space("tiny"), best["params"])
    straight = train(run, output_dir=proj / "straight")
    assert straight.val_loss == best["objective"]
    del config

    # an immediate rerun of a finished study trains nothing and rewrites the same outputs
    before = (proj / "results" / "search" / "a" / "rungs.md").read_text()
    _search(capsys, "--name", "a")
    assert _trials(proj / "results" / "search" / "a" / "study.db") == a
    assert (proj / "results" / "search" / "a" / "rungs.md").read_text() == before

    # SEARCH=a in make: lora gets the winner's method.* keys, full only the shared train.* keys
    assert cli.main(["search-args", "--model", "tiny", "--method", "lora", "a"]) == 0
    lora_words = capsys.readouterr().out.split()
    assert cli.main(["search-args", "--model", "tiny", "--method", "full", "a"]) == 0
    full_words = capsys.readouterr().out.split()
    assert any(w.startswith("method.learning_rate=") for w in lora_words)
    assert not any(w.startswith("method.") for w in full_words)
    assert any(w.startswith("train.per_device_train_batch_size=") for w in full_words)
    assert "Only lora was tuned" in sa["fairness"]["statement"]


def test_killed_search_resumes_with_finished_trials_intact(proj, capsys):
    """SIGKILL the search process in the middle of a trial, run it again: finished trials are untouched and the
    study ends with the same trials and winner as an uninterrupted search."""
    env = {**os.environ, "FTCOMPARE_ROOT": str(proj), "OMP_NUM_THREADS": "1", "EXPERIMENT": "default"}
    cmd = [sys.executable, "-m", "ftcompare", "search", "--space", "tiny", "--name", "k"]
    db = proj / "results" / "search" / "k" / "study.db"
    log = open(proj / "killed-search.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 600
    finished = []
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
            if not db.exists():
                continue
            try:
                with sqlite3.connect(db, timeout=5) as con:
                    states = [s for (s,) in con.execute("select state from trials order by number")]
            except sqlite3.OperationalError:
                continue
            finished = [i for i, s in enumerate(states) if s in ("COMPLETE", "PRUNED")]
            if len(finished) >= 2 and "RUNNING" in states:  # mid-trial
                break
        assert proc.poll() is None, f"search ended before it could be killed: {(proj / 'killed-search.log').read_text()[-2000:]}"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    assert proc.returncode == -signal.SIGKILL
    before = {t[0]: t for t in _trials(db) if t[1] in ("COMPLETE", "PRUNED")}
    assert len(before) >= 2 and any(t[1] == "RUNNING" for t in _trials(db))

    # --report-only: the outputs of the study as it is (finished trials, no winner if none finished), no training
    killed_state = _trials(db)
    _search(capsys, "--name", "k", "--report-only")
    assert _trials(db) == killed_state
    assert (proj / "results" / "search" / "k" / "rungs.md").is_file()

    _search(capsys, "--name", "k")
    after = {t[0]: t for t in _trials(db)}
    for n, t in before.items():
        assert after[n] == t, f"finished trial {n} changed after resume"
    assert all(t[1] in ("COMPLETE", "PRUNED") for t in after.values())

    _search(capsys, "--name", "straight")
    straight = _trials(proj / "results" / "search" / "straight" / "study.db")
    assert [t[1:] for t in sorted(after.values())] == [t[1:] for t in straight]
    summary = json.loads((proj / "results" / "search" / "k" / "search_summary.json").read_text())
    assert summary["time"]["sessions"] == 2


def test_lm_eval_objective(proj, capsys):
    """objective: {task: ...}: the task's primary (first) metric, maximized, measured by lm-eval at every rung."""
    f = proj / "configs" / "search" / "tiny.yaml"
    f.write_text(f.read_text().replace("n_configs: 3, seed: 7}", "n_configs: 1, seed: 7, include_baseline: false}\n"
                                       "objective: {task: ftc_hellaswag, limit: 4}"))
    _search(capsys, "--name", "lmeval")
    s = json.loads((proj / "results" / "search" / "lmeval" / "search_summary.json").read_text())
    assert s["objective"]["direction"] == "maximize" and s["objective"]["task"] == "ftc_hellaswag"
    (trial,) = s["trials"]
    assert trial["state"] == "COMPLETE" and sorted(map(int, trial["objective_by_step"])) == [1, 2]
    for v in trial["objective_by_step"].values():  # acc over 4 documents: a whole number of correct items
        assert 0 <= v <= 1 and (4 * v) == int(4 * v)
    assert "ftc_hellaswag acc" in (proj / "results" / "search" / "lmeval" / "rungs.md").read_text()


def test_two_workers_share_one_study(proj, tmp_path):
    """Two processes on one --storage URL (the scale-out path): every configuration runs exactly once."""
    env = {**os.environ, "FTCOMPARE_ROOT": str(proj), "OMP_NUM_THREADS": "1", "EXPERIMENT": "default"}
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    cmd = [sys.executable, "-m", "ftcompare", "search", "--space", "tiny", "--name", "shared", "--storage", url]
    logs = [open(tmp_path / f"worker{i}.log", "w") for i in (1, 2)]
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logs[0], stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while not (tmp_path / "shared.db").exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)  # the first worker has made the study and queued the configurations
    second = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logs[1], stderr=subprocess.STDOUT)
    assert first.wait(timeout=600) == 0 and second.wait(timeout=600) == 0, (tmp_path / "worker2.log").read_text()[-2000:]
    for f in logs:
        f.close()
    import optuna

    trials = [t for t in optuna.load_study(study_name="shared", storage=url).trials if not t.user_attrs.get("unused")]
    assert sorted(t.user_attrs["config_index"] for t in trials) == [0, 1, 2, 3]
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    summary = json.loads((proj / "results" / "search" / "shared" / "search_summary.json").read_text())
    assert summary["storage"] == url and summary["n_trials"] == 4
    assert not (proj / "results" / "search" / "shared" / "study.db").exists()


def one_line(err):
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], f"expected one error line, got:\n{err}"
    return errors[0]


@pytest.mark.parametrize("edit,expected", [
    (("method.lora.r: {choices: [2, 4, 8]}", "method.lora.rank: {choices: [2, 4, 8]}"),
     "unknown key 'method.lora.rank'; valid keys of method.lora: r, alpha"),
    (("method.lora.r: {choices: [2, 4, 8]}", "method.lora.dropot: {choices: [0.0]}"),
     "unknown key 'method.lora.dropot' (did you mean 'method.lora.dropout'?)"),
    (("method.lora.r: {choices: [2, 4, 8]}", "trainer.lr: {choices: [1, 2]}"), "must be section.key with section one of"),
    (("[1.0e-4, 1.0e-1]", "[1.0e-1, 1.0e-4]"), "empty range"),
    (("method.lora.r: {choices: [2, 4, 8]}", "method.lora.r: {choices: []}"), "empty range"),
    (("method.lora.r: {choices: [2, 4, 8]}", "method.lora.r: {int: [8, 2]}"), "empty range [8, 2]"),
    (("min_steps: 1", "min_steps: 0"), "budget below one step"),
    (("max_steps: 2", "max_steps: 0"), "budget below one step"),
    (("method.lora.r: {choices: [2, 4, 8]}", "train.max_steps: {int: [1, 4]}"), "train.max_steps is the search budget"),
    (("method.lora.r: {choices: [2, 4, 8]}", "method.lora.dropout: {choices: [0.0, 1.5]}"),
     "method.lora.dropout=1.5 makes an invalid run config"),
], ids=["unknown-key", "typo-key", "unknown-section", "empty-float", "empty-choices", "empty-int", "min-below-one",
        "max-below-one", "budget-key", "invalid-value"])
def test_bad_space(proj, capsys, edit, expected):
    f = proj / "configs" / "search" / "tiny.yaml"
    assert edit[0] in f.read_text()
    f.write_text(f.read_text().replace(edit[0], edit[1]))
    code = cli.main(["search", "--space", "tiny"])
    assert code == 2 and expected in one_line(capsys.readouterr().err)
    assert not (proj / "results" / "search" / "tiny").exists()  # nothing written


def test_bad_storage_and_names(proj, capsys):
    secret = "sqlite:////nonexistent-dir/sub/study.db"
    assert cli.main(["search", "--space", "tiny", "--storage", secret]) == 2
    assert "cannot open study storage sqlite:////nonexistent-dir/sub/study.db" in one_line(capsys.readouterr().err)
    assert cli.main(["search", "--space", "tiny", "--storage", "postgresql://me:hunter2@db.invalid/x"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "cannot open study storage" in line and "hunter2" not in line
    assert cli.main(["search", "--space", "tiny", "--storage", "nonsense"]) == 2
    assert "cannot open study storage" in one_line(capsys.readouterr().err)
    assert cli.main(["search", "--space", "nope"]) == 2
    assert "unknown search space 'nope'; valid: " in one_line(capsys.readouterr().err)
    assert cli.main(["search", "--space", "tiny", "--method", "full"]) == 2
    assert "does not apply to method 'full'" in one_line(capsys.readouterr().err)
    assert cli.main(["search-args", "--model", "tiny", "--method", "lora", "never-run"]) == 2
    assert "run `make search SEARCH=never-run` first" in one_line(capsys.readouterr().err)


def test_shipped_spaces_parse_and_fit_their_method():
    from ftcompare import config
    from ftcompare.search import available_spaces, check_space, load_space

    assert "lora" in available_spaces()
    for name in available_spaces():
        space = load_space(name)
        exp = "default"
        check_space(space, exp, space.model or config.load("experiments", exp).models[0], space.method or "lora")
        assert space.rungs()[-1] == space.budget.max_steps
