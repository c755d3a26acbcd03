"""Hash of a module's source and of every ftcompare module it imports, directly or not (module- and
function-level imports, found with `ast`): what code an output depends on, without a hand-kept file list."""
from __future__ import annotations

import ast
import hashlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def _module_file(name: str) -> Path | None:
    """ftcompare module name ('data', 'report.load') -> its file, or None if not a module of the package."""
    base = PACKAGE.joinpath(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def package_imports(name: str) -> set[str]:
    """The ftcompare modules that module `name` imports anywhere in its source (names relative to the package)."""
    f = _module_file(name)
    if f is None:
        return set()
    pkg = name.split(".")[:-1] if f.name != "__init__.py" else name.split(".")
    out: set[str] = set()
    for node in ast.walk(ast.parse(f.read_text(), str(f))):
        if isinstance(node, ast.Import):
            mods = [a.name[len("ftcompare."):] for a in node.names if a.name.startswith("ftcompare.")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = pkg[:len(pkg) - (node.level - 1)] if node.level > 1 else pkg
                mod = ".".join([*parent, *(node.module.split(".") if node.module else [])])
            elif node.module and (node.module == "ftcompare" or node.module.startswith("ftcompare.")):
                mod = node.module[len("ftcompare."):] if node.module != "ftcompare" else ""
            else:
                continue
            # `from . import chat` imports the module chat; `from .config import load` imports config
            mods = [f"{mod}.{a.name}".lstrip(".") for a in node.names if _module_file(f"{mod}.{a.name}".lstrip("."))]
            if mod and _module_file(mod):
                mods.append(mod)
        else:
            continue
        out.update(m for m in mods if m and _module_file(m))
    return out


def closure(name: str) -> list[str]:
    """`name` and every ftcompare module it reaches through imports, sorted."""
    seen, todo = set(), [name]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(package_imports(m) - seen)
    return sorted(seen)


def closure_hash(name: str) -> str:
    """sha256 (16 hex digits) over the sources of closure(name)."""
    h = hashlib.sha256()
    for m in closure(name):
        h.update(m.encode() + b"\0" + _module_file(m).read_bytes() + b"\1")
    return h.hexdigest()[:16]
