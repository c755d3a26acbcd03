"""The report package's shape: figures draw only the data they are given, nothing in the report reaches back
to the command line, and the modules stay small (read with ast; nothing is imported)."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

REPORT = ROOT / "src" / "ftcompare" / "report"
MAX_LINES = 400


def _imports(path: Path) -> set[str]:
    """Modules a file imports, relative ones written as '.name' / '..name'."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            out.add("." * node.level + (node.module or ""))
    return out


def test_figures_import_nothing_from_the_report():
    for name in ("figures.py", "chat_figures.py"):
        relative = {m for m in _imports(REPORT / name) if m.startswith(".")}
        assert relative <= {".figures", ".chat_figures"}, (name, relative)
        assert not any(m.startswith("ftcompare") for m in _imports(REPORT / name)), name


def test_the_report_never_imports_the_cli_and_its_modules_stay_small():
    for path in sorted(REPORT.glob("*.py")):
        mods = _imports(path)
        assert not any(m in ("..cli", "ftcompare.cli") or m.endswith(".cli") for m in mods), path.name
        assert len(path.read_text().splitlines()) < MAX_LINES, path.name


def test_the_record_prose_is_in_the_template():
    """No sentence assembled by string surgery in Python: the record module renders the template."""
    src = (REPORT / "record.py").read_text()
    assert ".replace(" not in src and "string.Template" not in src
    assert (ROOT / "src" / "ftcompare" / "templates" / "record.md.j2").is_file()


def test_run_identity_is_formatted_in_one_place():
    from ftcompare.identity import RunId, format_run

    assert RunId("135m", "base").label == "base" and RunId("135m", "base").is_base
    assert format_run(RunId("135m", "lora-r8", "merged")) == "lora-r8-merged"
    assert RunId("135m", "lora-r8", "adapter", seed=7).label == "lora-r8-adapter seed 7"
    assert RunId("135m", "lora-r8", "merged") != RunId("135m", "lora", "r8-merged")   # same label, other run


def test_p_values_in_prose_read_as_comparisons():
    from ftcompare.report.display import p_is

    assert p_is(0.0004) == "<0.001" and p_is(0.0123) == "=0.012" and p_is(float("nan")) == " n/a"
