"""Dependencies run one way: cli -> stages -> building blocks. The import graph of src/ftcompare (every
`import` / `from ... import`, at module level and inside functions, read with `ast`) has no cycle; nothing
imports cli; paths are imported as a module; the task files reach the package only through task_data."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "src" / "ftcompare"
TASKS = ROOT / "lm-evaluation-harness" / "tasks"


def modules(pkg: Path) -> dict[str, Path]:
    """{dotted name relative to the package ('cli', 'report.load', 'report' for report/__init__.py): file}"""
    out = {}
    for f in sorted(pkg.rglob("*.py")):
        parts = list(f.relative_to(pkg).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            out[".".join(parts)] = f
    return out


def imports(name: str, path: Path, known: set[str], top: str = "ftcompare") -> set[str]:
    """Package modules that module `name` imports anywhere in its file. `from X import a` counts X, and
    X.a when that is a module (`from . import chat`); relative imports are resolved against the module's
    package (an __init__.py is its own package)."""
    own_pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith(top + "."):
                    found.add(a.name[len(top) + 1:])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                keep = len(own_pkg) - (node.level - 1)
                assert keep >= 0, f"{path}: relative import beyond the package"
                base = own_pkg[:keep] + (node.module.split(".") if node.module else [])
            elif node.module == top or (node.module or "").startswith(top + "."):
                base = node.module.split(".")[1:]
            else:
                continue
            found.add(".".join(base))
            found.update(".".join([*base, a.name]) for a in node.names)
    return {m for m in found if m in known and m != ""}


def graph(pkg: Path, top: str = "ftcompare") -> dict[str, set[str]]:
    mods = modules(pkg)
    return {m: imports(m, f, set(mods), top) for m, f in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing itself (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in g.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return sorted(out)


# --- the graph builder and the cycle finder, on a package whose imports are known -------------------------
def test_graph_builder_finds_every_kind_of_import(tmp_path):
    pkg = tmp_path / "ftcompare"
    (pkg / "report").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from . import b\nimport os\n",                       # module-level, `from . import module`
        "b.py": "def f():\n    from .c import thing\n    return thing\n",  # function-level, `from .mod import name`
        "c.py": "import ftcompare.d\nthing = 1\n",                    # absolute `import ftcompare.x`
        "d.py": "from ftcompare.report import load\n",               # absolute, into a subpackage
        "e.py": "try:\n    from .a import x\nexcept ImportError:\n    pass\n",
        "report/__init__.py": "from .load import rows\n",             # __init__: its own package
        "report/load.py": "from .. import paths\nfrom ..e import y\nrows = 1\n",  # level 2
        "paths.py": "",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    assert graph(pkg) == {
        "a": {"b"}, "b": {"c"}, "c": {"d"}, "d": {"report", "report.load"}, "e": {"a"},
        "report": {"report.load"}, "report.load": {"paths", "e"}, "paths": set(),
    }
    assert cycles(graph(pkg)) == [["a", "b", "c", "d", "e", "report", "report.load"]]
    (pkg / "e.py").write_text("")
    assert cycles(graph(pkg)) == []
    (pkg / "paths.py").write_text("def f():\n    from . import paths\n")  # a module importing itself
    assert cycles(graph(pkg)) == [["paths"]]


def test_graph_builder_sees_every_module_of_the_package():
    g = graph(PACKAGE)
    assert {"cli", "evaluate", "train", "config", "paths", "task_data"} <= set(g)
    assert {"config", "paths", "evaluate", "train", "merge", "environment"} <= g["cli"]
    from ftcompare import sourcehash  # the evaluation settings hash the same graph

    for m in g:
        assert sourcehash.package_imports(m) == g[m], m


# --- the package ---------------------------------------------------------------------------------------------
def test_no_import_cycle():
    found = cycles(graph(PACKAGE))
    assert found == [], f"import cycles in src/ftcompare: {found}"


def test_nothing_imports_cli():
    g = graph(PACKAGE)
    assert [m for m, deps in g.items() if "cli" in deps and m != "__main__"] == []


def test_paths_are_read_at_call_time():
    """`from .paths import MODELS` would freeze one root: import the module, never a path name."""
    from ftcompare import paths

    bad = []
    for m, f in modules(PACKAGE).items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1] == "paths":
                bad += [f"{m}: {a.name}" for a in node.names if a.name in paths.NAMES]
    assert bad == []


def test_paths_follow_the_root(tmp_path, monkeypatch):
    from ftcompare import paths

    monkeypatch.setenv("FTCOMPARE_ROOT", str(tmp_path))
    assert paths.ROOT == tmp_path.resolve() and paths.MODELS == tmp_path.resolve() / "models"
    assert paths.run_dir("e", "m", "lora") == tmp_path.resolve() / "models" / "e" / "m" / "lora"
    monkeypatch.delenv("FTCOMPARE_ROOT")
    assert paths.ROOT == ROOT.resolve() and paths.TASKS == ROOT.resolve() / "lm-evaluation-harness" / "tasks"
    with pytest.raises(AttributeError):
        paths.NOT_A_PATH  # noqa: B018


def test_tasks_reach_the_package_only_through_task_data():
    used = {}
    for f in sorted(TASKS.glob("*/*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ftcompare":
                used[f.relative_to(TASKS).as_posix()] = node.module
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == "ftcompare":
                        used[f.relative_to(TASKS).as_posix()] = a.name
    assert used and set(used.values()) == {"ftcompare.task_data"}, used


def test_evaluation_settings_hash_the_code_tasks_reach():
    """What the task files import of the package (task_data and everything it imports) is in the settings
    hash: editing e.g. data.py (the HellaSwag carving) or modeling.py (the chat tokenizer) re-runs evaluations."""
    from ftcompare import sourcehash

    reached = set(sourcehash.closure("task_data"))
    assert {"task_data", "data", "assets", "chat", "chat_eval", "modeling", "config"} <= reached
    assert "train" not in reached and "cli" not in reached
    g = graph(PACKAGE)
    todo, seen = ["task_data"], set()
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += g[m]
    assert reached == seen
