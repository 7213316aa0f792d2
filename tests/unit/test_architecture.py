"""The layout's rules, checked on the source: each side imports only the
neutral modules and the wire schema, nothing imports the CLI, no cycles."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from buildbot_furl.testing.procs import ROOT  # the checkout: tests/ may be one or two levels down
PKG = ROOT / "buildbot_furl"
SIDES = ("master", "worker", "client", "buildbot", "cli", "testing")
# what each part may import of the others (neutral modules and protocol are free
# for all, except that they themselves import no side)
ALLOWED = {
    "master": set(),
    "worker": set(),
    "client": set(),
    "buildbot": {"master"},
    "cli": {"master", "worker", "client"},
    # test machinery may drive any side in-process (no product module imports it)
    "testing": {"master", "worker", "client"},
    "neutral": set(),
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PKG.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """Every buildbot_furl module ``path`` imports, at any depth in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("buildbot_furl"))
        elif isinstance(node, ast.ImportFrom) and node.module and \
                node.module.startswith("buildbot_furl"):
            for a in node.names:  # 'from buildbot_furl import tree' names a module
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in MODULES else node.module)
    return {m for m in found if m in MODULES}


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in SIDES else "neutral"


def test_the_graph_is_not_empty() -> None:
    assert len(MODULES) > 30 and sum(map(len, GRAPH.values())) > 80


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_respect_the_sides(module: str) -> None:
    mine = _part(module)
    for dep in GRAPH[module]:
        theirs = _part(dep)
        if theirs in ("neutral", mine):
            continue
        assert theirs in ALLOWED[mine], f"{module} imports {dep} (the {theirs} side)"


def test_no_import_cycles() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in GRAPH[v]:
                cycles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_wire_schema_knows_neither_side() -> None:
    for module, deps in GRAPH.items():
        if module.startswith(("buildbot_furl.protocol", "buildbot_furl.errors")):
            assert all(_part(d) == "neutral" for d in deps), (module, deps)


def test_no_product_module_imports_the_test_machinery() -> None:
    for module, deps in GRAPH.items():
        if not module.startswith("buildbot_furl.testing"):
            assert not [d for d in deps if d.startswith("buildbot_furl.testing")], module


def _mapped_modules(doc: str) -> set[str]:
    """The modules docs/architecture.md's map names: in its tree, a line whose
    text starts with ``NAME.py`` (or ``A.py, B.py``) under the package line
    (``NAME/``) less indented above it."""
    block = doc.split("```\nbuildbot_furl/\n", 1)[1].split("```", 1)[0]
    found: set[str] = set()
    packages: dict[int, str] = {}  # indent -> the package opened at that indent
    for line in block.splitlines():
        text = line.lstrip()
        indent = len(line) - len(text)
        package = re.match(r"(\w+)/(\s|$)", text)
        if package:
            packages = {i: p for i, p in packages.items() if i < indent}
            packages[indent] = package.group(1)
            continue
        head = re.match(r"\w+\.py(,\s*\w+\.py)*", text)
        if not head:
            continue  # a description's continuation line
        names = [n.strip() for n in head.group(0).split(",")]
        prefix = [p for i, p in sorted(packages.items()) if i < indent]
        found.update(".".join(["buildbot_furl", *prefix, n[:-3]]) for n in names)
    return found


def test_the_architecture_map_names_every_module() -> None:
    """docs/architecture.md lists every module under buildbot_furl/ (and
    only those): a module added without a line in the map fails here."""
    mapped = _mapped_modules((ROOT / "docs" / "architecture.md").read_text())
    modules = {m for m, p in MODULES.items() if p.name != "__init__.py"}
    assert sorted(modules - mapped) == [], "missing from docs/architecture.md's map"
    assert sorted(mapped - modules) == [], "in docs/architecture.md's map, but gone"


def test_every_test_module_has_a_name_of_its_own() -> None:
    """pytest imports test modules by their base name (tests/ has no
    packages): two files of one name in unit/ and system/ break collection."""
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []


def test_no_test_module_imports_another() -> None:
    """What tests share lives in buildbot_furl/testing/, not in a test module."""
    found = []
    for path in (ROOT / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("tests", "conftest")]
    assert found == []
