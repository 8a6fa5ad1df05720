"""torch is an optional extra: no plinius module but plinius.torch (and the bench's torch
section) imports it at module level, so ``import plinius`` and every command work without it."""

from __future__ import annotations

import ast
from pathlib import Path

import plinius

#: modules that are torch code through and through (a network written in torch), imported only
#: inside functions of the bench, never at module level (checked below)
TORCH_ONLY = {("lab", "bench", "resnet.py")}


def test_nothing_outside_plinius_torch_imports_torch() -> None:
    """torch is optional: only plinius.torch and :data:`TORCH_ONLY` import it at module level,
    and nothing imports those at module level."""
    root = Path(plinius.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).parts
        if rel[0] == "torch" or rel in TORCH_ONLY:
            continue
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only: a lazy import inside a function is fine
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            torch_only = tuple("plinius." + ".".join(m).removesuffix(".py") for m in TORCH_ONLY)
            if any(
                n == "torch" or n.startswith(("torch.", "plinius.torch", *torch_only))
                for n in names
            ):
                offenders.append(str(path.relative_to(root)))
    assert offenders == []
