"""Layering: the library never imports the command line (``plinius/cli`` sits on top of it).

Running ``python -m plinius.cli.main`` in a child process is a process boundary and allowed;
importing ``plinius.cli`` (absolutely, relatively or through ``importlib``) is not.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from import_graph import resolve

import plinius

PACKAGE = Path(plinius.__file__).resolve().parent
CLI = "plinius.cli"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_cli(name: str) -> bool:
    return name == CLI or name.startswith(CLI + ".")


def cli_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """Every ``plinius.cli`` module that ``source`` (the module ``module``) imports."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if _is_cli(a.name)]
        elif isinstance(node, ast.ImportFrom):
            target = resolve(module, node, is_package)
            if _is_cli(target):
                found.append(target)
            else:  # ``from plinius import cli``
                found += [f"{target}.{a.name}" for a in node.names if _is_cli(f"{target}.{a.name}")]
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            value = getattr(node.args[0], "value", None)
            dynamic = name in ("import_module", "__import__") and isinstance(value, str)
            if dynamic and _is_cli(value):
                found.append(value)
    return found


def library_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "cli" not in p.relative_to(PACKAGE).parts)


def test_no_library_module_imports_the_cli() -> None:
    assert len(library_modules()) > 20  # the walk found the package
    offenders = {}
    for path in library_modules():
        module = _module_name(path, PACKAGE)
        found = cli_imports(path.read_text(), module, path.name == "__init__.py")
        if found:
            offenders[str(path.relative_to(PACKAGE.parent))] = found
    assert offenders == {}, "move what they use out of plinius/cli (e.g. into plinius.core.outputs)"


@pytest.mark.parametrize(
    "source",
    [
        "from plinius.cli.common import output_dir",
        "import plinius.cli.main",
        "from plinius import cli",
        "from plinius.cli import common as c",
        "from ...cli import common",
        "from ...cli.common import write_text",
        "import importlib\nimportlib.import_module('plinius.cli.common')",
        "def f():\n    from plinius.cli.common import print_json",
    ],
)
def test_the_check_sees_every_spelling(source: str) -> None:
    """The walk is not blind: each way of importing the CLI from a library module is caught."""
    assert cli_imports(source, "plinius.lab.experiments.workspace") != []


@pytest.mark.parametrize(
    "source",
    [
        "from plinius.core.outputs import output_dir",
        "from .supervisor import RunSpec",
        "from ..client import x",
        "cmd = [sys.executable, '-m', 'plinius.cli.main', 'train']",
    ],
)
def test_the_check_allows_the_rest(source: str) -> None:
    assert cli_imports(source, "plinius.lab.experiments.workspace") == []


def test_relative_imports_resolve_from_a_package() -> None:
    assert cli_imports("from .cli import main", "plinius", is_package=True) == ["plinius.cli"]
    assert cli_imports("from . import cli", "plinius", is_package=True) == ["plinius.cli"]
