"""The evaluate stage's allocator setting: glibc keeps freed memory for reuse (ftcompare.environment)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# a fresh process: page faults of allocating (and writing) 100 MiB, three times, the block freed in between
CHILD = """
import json, resource, sys
from ftcompare.environment import setup_environment, tune_allocator
setup_environment(offline=True)      # what every stage calls first: it leaves the allocator as it is
applied = tune_allocator() if sys.argv[1] == "tune" else False
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = b"\\x01" * (100 << 20)
    n = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del block
    return n
print(json.dumps({"applied": applied, "faults": [faults() for _ in range(3)]}))
"""


def _child(tuning: str, call: str = "tune") -> dict:
    env = {**os.environ, "PYTHONPATH": str(SRC), "FTC_MALLOC_TUNING": tuning}
    out = subprocess.run([sys.executable, "-c", CHILD, call], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_reused_without_new_page_faults():
    """Tuned, a block allocated again after being freed is the same memory (no page faults). glibc's default
    (FTC_MALLOC_TUNING=0, and any stage but evaluate: setup_environment alone) maps and unmaps a block this large
    each time, so every allocation faults all its pages in again."""
    tuned = _child("1")
    assert tuned["applied"]
    first, *again = tuned["faults"]
    assert first > 0 and all(n * 10 < first for n in again), tuned
    switched_off = _child("0")
    assert not switched_off["applied"]
    for default in (switched_off, _child("1", call="setup only")):
        assert all(n * 2 > default["faults"][0] for n in default["faults"][1:]), default   # faults again


def test_evaluate_stage_tunes_the_allocator(monkeypatch):
    """`python -m ftcompare evaluate` tunes its process before evaluating; training stages do not (their CPU memory
    probe reads resident memory, tests/test_cost.py)."""
    from ftcompare import cli, evaluate

    calls = []
    monkeypatch.setattr(cli, "tune_allocator", lambda: calls.append("tune") or True)
    monkeypatch.setattr(evaluate, "evaluate_variant", lambda *a, **k: calls.append("evaluate") or 0)
    assert cli.main(["evaluate", "--model", "135m", "--method", "base"]) == 0
    assert calls == ["tune", "evaluate"]
