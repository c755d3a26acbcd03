"""ftcompare.environment: the evaluate stage's allocator setting (glibc keeps freed memory for reuse), and the exit
status of the `python -m` entry points after an interrupt."""
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


# (entry point, what sitecustomize replaces with code raising KeyboardInterrupt inside exec(), exit status wanted)
ENTRIES = [
    (["ftcompare", "list", "all-models"], "import ftcompare.cli as m\nm.COMMANDS['list'] = interrupted\n", 130),
    (["ftcompare.demo"], "import ftcompare.config as m\nm.load_file = interrupted\n", 0),  # Ctrl-C stops the app
]


@pytest.mark.parametrize("argv,patch,status", ENTRIES, ids=["ftcompare", "demo"])
def test_an_interrupt_inside_an_exec_gives_the_entry_points_exit_status(tmp_path, argv, patch, status):
    """CPython run with -m exits by SIGINT (-2) once a KeyboardInterrupt has passed through an exec() of a string,
    even a caught one (test_evaluate.py::test_sigterm_leaves_no_results_json once failed in CI with -2).
    environment.exit_process clears it: both entry points end with the status their main() returns."""
    (tmp_path / "sitecustomize.py").write_text(
        "def interrupted(*args, **kwargs):\n"
        "    exec('raise KeyboardInterrupt')  # as a Ctrl-C landing in code a library runs through exec()\n" + patch)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(SRC)])}
    r = subprocess.run([sys.executable, "-m", *argv], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == status, (r.returncode, r.stderr[-2000:])
    if status:
        assert r.stderr.strip() == ("error: interrupted; re-run the same command to resume "
                                    "(finished outputs are kept)")
