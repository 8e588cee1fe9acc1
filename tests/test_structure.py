"""The package's shape, checked on its source: module sizes, no private names across modules, and which
commands stay free of torch. These hold the structure the README's layout section describes."""

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
    "space.py": "one idea, the space file's schema: each validation rule beside the type it checks",
}


def test_each_long_module_states_its_reason_in_its_docstring():
    for name in LONG_MODULES:
        assert "Why one module over 400 lines" in (PACKAGE / name).read_text().split('"""')[1]


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


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


@pytest.mark.parametrize("module", ["sweeper.cli.main", "sweeper.rundir.layout", "sweeper.files", "sweeper.training.config",
                                    "sweeper.search.space"])
def test_light_modules_do_not_import_torch_or_ray(module):
    code = (f"import sys, importlib; importlib.import_module({module!r}); "
            "print(','.join(sorted(m for m in ('torch', 'ray') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == ""
