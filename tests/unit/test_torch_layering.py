"""torch is an optional extra: no plinius module but plinius.torch (and the bench's torch
section) imports it at module level, so ``import plinius`` and every command work without it."""

from __future__ import annotations

import ast
from pathlib import Path

import plinius


def test_nothing_outside_plinius_torch_imports_torch() -> None:
    """torch is optional: only plinius.torch (and the bench's torch section) import it."""
    root = Path(plinius.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).parts
        if rel[0] == "torch" or rel[0] == "bench":
            continue
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only: a lazy import inside a function is fine
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            if any(n == "torch" or n.startswith(("torch.", "plinius.torch")) for n in names):
                offenders.append(str(path.relative_to(root)))
    assert offenders == []
