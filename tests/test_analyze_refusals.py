"""The analyzer's refusals that the README promises, each on a real (tiny) experiment tampered in one place:
an evaluation of another training run, an unfinished run, config/summary hash disagreement, a cell evaluated
twice, a task missing from a results.json, differing target/prompt hashes, a moved train_summary.json.

Inputs are the project built by tests/test_analyze.py (its `built_project` and `proj` fixtures: trained,
merged and evaluated with the project's own stages); every test changes one file of a private copy."""
from __future__ import annotations

import json
import shutil

from test_analyze import EXP, GEN, MC, analyze, built_project, cell_dir, proj  # noqa: F401 (fixtures)


def _run_file(root, method, name):
    return root / "models" / EXP / "tiny" / method / name


def _edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def _edit_first_sample(path, change):
    lines = path.read_text().splitlines()
    first = json.loads(lines[0])
    change(first)
    path.write_text("\n".join([json.dumps(first)] + lines[1:]) + "\n")


def test_the_untouched_project_passes(proj):
    rc, _, err = analyze()
    assert rc == 0, err


def test_an_evaluation_of_another_training_run_is_refused(proj):
    """The evaluated model's training hash must be the train_summary's (a re-trained run makes it stale)."""
    other = "f" * 16
    _edit_json(cell_dir(proj, "lora-merged") / "results.json",
               lambda r: r["ftcompare"].update(train_config_hash=other))
    rc, _, err = analyze(allow_missing=True)     # never waived
    assert rc == 1
    line = next(x for x in err.splitlines() if "lora-merged/results.json: ftcompare.train_config_hash" in x)
    assert line.startswith(f"error: evaluation_results/{EXP}/tiny/lora-merged/results.json") and other in line
    assert "the evaluated model is from another training run; re-evaluate" in line


def test_an_unfinished_training_run_is_refused(proj):
    _edit_json(_run_file(proj, "qlora", "train_summary.json"), lambda s: s.update(global_step=s["max_steps"] - 1))
    rc, _, err = analyze(allow_missing=True)
    assert rc == 1
    assert f"models/{EXP}/tiny/qlora/train_summary.json: global_step:" in err
    assert "the run did not finish" in err


def test_config_and_summary_hash_disagreement_is_refused(proj):
    _edit_json(_run_file(proj, "full", "config.json"), lambda c: c.update(config_hash="0" * 16))
    rc, _, err = analyze(allow_missing=True)
    assert rc == 1
    line = next(x for x in err.splitlines() if f"models/{EXP}/tiny/full/train_summary.json: config_hash:" in x)
    assert "0" * 16 in line and "the run was interrupted or changed; re-train" in line


def test_a_cell_evaluated_twice_is_refused(proj):
    """A copy of a cell's results in another folder: its location is wrong and the cell now has two results."""
    src = cell_dir(proj, "lora-merged")
    shutil.copytree(src, src.with_name("lora-merged-copy"))
    rc, _, err = analyze(allow_missing=True)
    assert rc == 1
    lines = err.splitlines()
    assert any("lora-merged-copy/results.json: ftcompare: a second evaluation of" in x
               and f"first: evaluation_results/{EXP}/tiny/lora-merged/results.json" in x for x in lines), err
    assert any("lora-merged-copy/results.json: ftcompare: says" in x and "copied or moved" in x for x in lines)


def test_a_task_missing_from_a_results_json_is_refused_unless_allowed(proj):
    def drop(r):
        for section in ("results", "n-samples", "n-shot", "versions", "configs", "higher_is_better"):
            if isinstance(r.get(section), dict):
                r[section].pop(GEN, None)

    _edit_json(cell_dir(proj, "full-merged") / "results.json", drop)
    (cell_dir(proj, "full-merged") / f"samples_{GEN}.jsonl").unlink()
    rc, _, err = analyze()
    assert rc == 1
    assert f"full-merged/results.json: results.{GEN}: task {GEN} was not evaluated" in err
    rc, _, err = analyze(allow_missing=True)    # a missing task is "missing": --allow-missing reports the rest
    assert rc == 0, err


def test_differing_target_hashes_are_refused(proj):
    """Same documents, another reference answer: across every cell (even of another method)."""
    _edit_first_sample(cell_dir(proj, "qlora-merged") / f"samples_{MC}.jsonl",
                       lambda s: s.update(target_hash="1" * 64))
    rc, _, err = analyze(allow_missing=True)
    assert rc == 1
    assert any(f"qlora-merged/samples_{MC}.jsonl: target_hash" in x and "comparisons refused" in x
               for x in err.splitlines()), err
    assert f"samples_{MC}.jsonl: doc_hash" not in err


def test_differing_prompt_hashes_within_a_model_are_refused(proj):
    _edit_first_sample(cell_dir(proj, "lora-adapter") / f"samples_{MC}.jsonl",
                       lambda s: s.update(prompt_hash="2" * 64))
    rc, _, err = analyze(allow_missing=True)
    assert rc == 1
    assert any(f"lora-adapter/samples_{MC}.jsonl: prompt_hash" in x for x in err.splitlines()), err
    assert "target_hash" not in err and "doc_hash" not in err


def test_a_moved_train_summary_is_refused(proj):
    """lora's train_summary.json copied into the full run's folder: it says method=lora where full belongs."""
    shutil.copy(_run_file(proj, "lora", "train_summary.json"), _run_file(proj, "full", "train_summary.json"))
    rc, _, err = analyze(allow_missing=True)
    assert rc == 1
    assert f"models/{EXP}/tiny/full/train_summary.json: method: 'lora', but the file lies where method='full' " \
           "belongs: it was copied or moved; re-train" in err
