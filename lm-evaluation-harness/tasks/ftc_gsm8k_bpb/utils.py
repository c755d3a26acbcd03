"""ftc_gsm8k_bpb: the documents of ftc_gsm8k_cot (its utils.load, the same 1,319 GSM8K test items), each scored
on its reference solution written as the CoT exemplars are."""
from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

_COT = Path(__file__).resolve().parent.parent / "ftc_gsm8k_cot" / "utils.py"
_spec = importlib.util.spec_from_file_location("ftc_gsm8k_cot_utils", _COT)
_cot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cot)
load = _cot.load            # lm-eval `custom_dataset` hook: the same documents as ftc_gsm8k_cot
N_TEST = _cot.N_TEST


def cot_solution(doc: dict) -> str:
    """The reference solution in the CoT exemplars' format: GSM8K's '...<<48/2=24>>24 clips...\\n#### 72' ->
    '... 24 clips ... The answer is 72.' (calculator annotations removed, lines joined by one space). An
    exemplar (question, target) is already in that format."""
    if "answer" not in doc:
        return doc["target"]
    return _solution(doc)


def continuation(doc: dict) -> str:
    """doc_to_target. An exemplar: its target (lm-eval's few-shot builder writes 'A:' + target_delimiter ' ' +
    target). An evaluated item: ' ' + its solution, because lm-eval 0.4.13 requests a loglikelihood task's
    (context, doc_to_target) without the target_delimiter: the solution then follows 'A:' exactly as in the
    exemplars."""
    return doc["target"] if "answer" not in doc else " " + _solution(doc)


def _solution(doc: dict) -> str:
    body, sep, final = doc["answer"].rpartition("####")
    if not sep:
        raise ValueError(f"GSM8K answer without '#### N': {doc['answer'][:60]!r}")
    steps = " ".join(line.strip() for line in re.sub(r"<<[^>]*>>", "", body).splitlines() if line.strip())
    return f"{steps} The answer is {final.strip()}."


def process_bpb(doc: dict, results: list) -> dict:
    """gold_nll: -loglikelihood of ' ' + solution in nats; gold_bytes: the solution's UTF-8 bytes (without that
    space, as the exemplars' delimiter is not counted either); gold_bpb: their ratio / ln 2."""
    ll, _is_greedy = results[0]
    nbytes = float(len(cot_solution(doc).encode("utf-8")))
    return {"gold_bpb": -ll / (math.log(2) * nbytes), "gold_nll": -ll, "gold_bytes": nbytes}
