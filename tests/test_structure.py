"""The package's shape, checked on its source: imports point one way between the sub-packages, no import circle,
each sub-package says its concern, module sizes, no private names across modules, and which modules stay free of
torch and Ray. These hold the structure docs/layout.md describes."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sweeper"
MAX_LINES = 400
# A module may be longer only with a reason, stated here and in its own docstring.
LONG_MODULES: dict[str, str] = {
    "search/space.py": "one idea, the space file's schema: each validation rule beside the type it checks",
}
# The pipeline's order: a module may import its own sub-package and those of a lower rank, nothing else.
# (data and model side by side: neither imports the other; report, evaluate and export likewise.)
BASE = ("sweeper", "sweeper.errors", "sweeper.files", "sweeper.bar")  # what every stage shares: one unit
RANKS: dict[str, int] = {
    "sweeper": 0,
    "sweeper.data": 1, "sweeper.model": 1,
    "sweeper.training": 2,
    "sweeper.rundir": 3,
    "sweeper.search": 4,
    "sweeper.report": 5, "sweeper.evaluate": 5, "sweeper.export": 5,
    "sweeper.cli": 6, "sweeper.__main__": 7,
}
SUBPACKAGES = ("cli", "data", "data/synth", "model", "training", "search", "rundir", "report")


def test_each_long_module_states_its_reason_in_its_docstring():
    for name in LONG_MODULES:
        assert "Why one module over 400 lines" in (PACKAGE / name).read_text().split('"""')[1]


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = [package.name, *path.relative_to(package).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """The part of the pipeline a module belongs to: its sub-package, or itself at the top."""
    top = ".".join(module.split(".")[:2])
    return "sweeper" if top in BASE else top


def imports(path: Path, package: str = "sweeper") -> set[str]:
    """The package's modules a file imports, anywhere in it (inside functions too: a late import is still a
    dependency); `from sweeper.x import y` counts as sweeper.x.y when y is a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == package}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == package:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (names that are not modules dropped)."""
    paths = sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)
    known = {module_name(p, package) for p in paths}
    return {module_name(p, package): {m for m in imports(p, package.name) if m in known} - {module_name(p, package)}
            for p in paths}


def upward_imports(graph: dict[str, set[str]], ranks: dict[str, int] = RANKS) -> list[str]:
    """Imports against the pipeline's direction: into a unit of the same or a higher rank that is not its own."""
    bad = []
    for mod, deps in graph.items():
        for dep in deps:
            a, b = unit(mod), unit(dep)
            if a != b and ranks[a] <= ranks[b]:
                bad.append(f"{mod} -> {dep}")
    return sorted(bad)


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every circle of imports between modules (one per strongly connected group of more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


def test_every_module_belongs_to_a_ranked_unit():
    assert {unit(m) for m in import_graph()} <= set(RANKS)


def test_imports_point_one_way_down_the_pipeline():
    assert upward_imports(import_graph()) == []


def test_no_import_circle():
    assert import_circles(import_graph()) == []


def test_the_checks_catch_a_planted_circle_and_an_upward_import(tmp_path):
    pkg = tmp_path / "sweeper"
    for path, text in {"__init__.py": "", "data/__init__.py": "", "training/__init__.py": "",
                       "data/a.py": "from sweeper.training.b import f\n",
                       "training/b.py": "def f():\n    from sweeper.data import a\n"}.items():
        (pkg / path).parent.mkdir(parents=True, exist_ok=True)
        (pkg / path).write_text(text)
    graph = import_graph(pkg)
    assert graph["sweeper.data.a"] == {"sweeper.training.b"}
    assert import_circles(graph) == [["sweeper.data.a", "sweeper.training.b"]]
    assert upward_imports(graph) == ["sweeper.data.a -> sweeper.training.b"]


def test_each_subpackage_docstring_says_its_concern_and_what_it_offers():
    for name in SUBPACKAGES:
        tree = ast.parse((PACKAGE / name / "__init__.py").read_text())
        doc = ast.get_docstring(tree)
        assert doc, f"sweeper/{name}/__init__.py has no docstring"
        assert "Offers:" in doc, f"sweeper/{name}/__init__.py does not name what it offers"
        if name != "report":  # the report's __init__ is its entry (write_report); the others import nothing, so
            # importing one light module (rundir.layout, training.config) never loads its heavy siblings
            assert not [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], f"sweeper/{name}"


def test_no_module_is_longer_than_the_limit_without_a_stated_reason():
    long = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in modules()}
    long = {name: n for name, n in long.items() if n > MAX_LINES}
    assert set(long) <= set(LONG_MODULES), f"modules over {MAX_LINES} lines: {long}"


def private_imports(path: Path) -> list[str]:
    """`from sweeper.x import _name` in a module: a private name used across modules."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sweeper"):
            found += [f"{path.name}:{node.lineno} {node.module}.{a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_no_module_imports_a_private_name_from_another():
    found = [hit for p in modules() for hit in private_imports(p)]
    assert found == []


def test_the_private_import_check_finds_one(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from sweeper.training.train import _train, train\nfrom sweeper import __version__\n")
    assert private_imports(probe) == ["probe.py:1 sweeper.training.train._train"]


@pytest.mark.parametrize("module", ["sweeper.cli.main", "sweeper.rundir.layout", "sweeper.rundir.records",
                                    "sweeper.files", "sweeper.training.config", "sweeper.training.objective",
                                    "sweeper.data.classes", "sweeper.search.space", "sweeper.search.tables",
                                    "sweeper.report", "sweeper.report.evaluation"])
def test_light_modules_do_not_import_torch_or_ray(module):
    code = (f"import sys, importlib; importlib.import_module({module!r}); "
            "print(','.join(sorted(m for m in ('torch', 'ray') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == ""
