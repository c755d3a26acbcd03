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
    body, sep, final = doc["answer"].rpartition("####")
    if not sep:
        raise ValueError(f"GSM8K answer without '#### N': {doc['answer'][:60]!r}")
    steps = " ".join(line.strip() for line in re.sub(r"<<[^>]*>>", "", body).splitlines() if line.strip())
    return f"{steps} The answer is {final.strip()}."


def process_bpb(doc: dict, results: list) -> dict:
    """gold_nll: -loglikelihood of the solution in nats; gold_bytes: its UTF-8 bytes; gold_bpb: their ratio / ln 2."""
    ll, _is_greedy = results[0]
    nbytes = float(len(cot_solution(doc).encode("utf-8")))
    return {"gold_bpb": -ll / (math.log(2) * nbytes), "gold_nll": -ll, "gold_bytes": nbytes}
