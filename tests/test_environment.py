"""The process environment every stage sets: glibc's allocator keeps freed memory (ftcompare.environment)."""
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
setup_environment(offline=True)      # what every stage calls first
applied = tune_allocator()
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = b"\\x01" * (100 << 20)
    n = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del block
    return n
print(json.dumps({"applied": applied, "faults": [faults() for _ in range(3)]}))
"""


def _child(tuning: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(SRC), "FTC_MALLOC_TUNING": tuning}
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_reused_without_new_page_faults():
    """A stage's process (setup_environment) is tuned: a block allocated again after being freed is the same memory (no page faults); glibc's default
    maps and unmaps a block this large each time, so every allocation faults all its pages in again."""
    tuned, default = _child("1"), _child("0")
    assert tuned["applied"] and not default["applied"]
    first, *again = tuned["faults"]
    assert first > 0 and all(n * 10 < first for n in again), tuned
    assert all(n * 2 > default["faults"][0] for n in default["faults"][1:]), default   # the control: faults again
