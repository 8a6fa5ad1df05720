"""The package's layers, checked over its import graph (an import-linter-style contract).

Each layer may import only itself and the layers below it; no two modules, and no two folders,
import each other in a loop (imports inside functions count too); the enclave never imports a
model implementation (it mirrors through the model protocol); storage never imports the mirror
format or the crypto engines. ``backends.testing`` is the contract suite plinius ships: it
drives mirrors over storage, so it stands with the lab, apart from ``backends``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from import_graph import resolve

import plinius

PACKAGE = Path(plinius.__file__).resolve().parent
Graph = dict[str, set[str]]

#: lowest first; a module belongs to the layer of its longest matching prefix
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("core", "data", *("errors", "fsutil", "memory", "crypto", "datasets"))),
    ("storage", ("backends",)),
    ("format", ("format", "mirror")),
    ("enclave", ("enclave",)),
    ("models", ("nn", "torch")),
    ("session", ("session",)),
    ("adapters", ("apps", "torch.mirror", "torch.__init__")),
    ("lab", ("lab", "backends.testing")),
    ("cli", ("cli",)),
]  # fmt: skip
#: the documented import paths kept from the flat layout: each is the moved module itself
#: (``sys.modules`` alias), for users; nothing in the package imports them
ALIASES = {
    "errors": "core.errors",
    "fsutil": "core.fsutil",
    "memory": "core.memory",
    "crypto": "core.crypto",
    "datasets": "core.datasets",
    "mirror": "format.mirror",
}
#: (importer prefix, imported prefix, why): imports no layer order allows
FORBIDDEN = [
    ("enclave", "nn", "the enclave mirrors through the model protocol only"),
    ("enclave", "torch", "the enclave mirrors through the model protocol only"),
    ("backends", "core.crypto", "storage is only storage: it never sees keys or ciphers"),
    ("backends", "format", "storage is only storage: it never parses what it stores"),
]


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    found = {}
    for p in root.rglob("*.py"):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = p
    return found


def imports_of(source: str, module: str, known: set[str], is_package: bool = False) -> set[str]:
    """The package modules ``source`` imports, anywhere in it. ``from pkg import sub`` counts
    as importing ``pkg.sub`` only (as import-linter counts it)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            target = resolve(module, node, is_package)
            subs = {f"{target}.{a.name}" for a in node.names} & known
            out |= subs if len(subs) == len(node.names) else subs | ({target} & known)
    out.discard(module)
    return out


def graph() -> Graph:
    mods = modules()
    known = set(mods)
    return {
        m: imports_of(p.read_text(), m, known, p.name == "__init__.py") for m, p in mods.items()
    }


def _rest(module: str) -> str:
    rest = module.partition(".")[2]
    return "torch.__init__" if rest == "torch" else rest


def _matches(rest: str, prefix: str) -> bool:
    return rest == prefix or rest.startswith(prefix + ".")


def layer_of(module: str) -> int:
    rest = _rest(module)
    best = [(len(p), i) for i, (_, ps) in enumerate(LAYERS) for p in ps if _matches(rest, p)]
    if not best:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS")
    return max(best)[1]


def cycles(g: Graph) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
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
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def folder_of(module: str, packages: set[str]) -> str:
    """A top-level package, or a top-level module on its own; the shipped contract suite
    apart from the storage it tests."""
    if module.startswith("plinius.backends.testing"):
        return "plinius.backends.testing"
    head = ".".join(module.split(".")[:2])
    return head if head in packages else module


def folders(g: Graph) -> Graph:
    mods = modules()
    packages = {m for m, p in mods.items() if p.name == "__init__.py" and m.count(".") == 1}
    out: Graph = {}
    for m, targets in g.items():
        a = folder_of(m, packages)
        out.setdefault(a, set())
        for t in targets:
            b = folder_of(t, packages)
            if a != b:
                out[a].add(b)
    return out


def layer_violations(g: Graph) -> list[str]:
    bad = []
    for m, targets in g.items():
        if m == "plinius":
            continue
        suite = _matches(_rest(m), "backends.testing")
        for t in targets - {"plinius"}:
            lm, lt = layer_of(m), layer_of(t)
            if lt > lm:
                bad.append(f"{m} ({LAYERS[lm][0]}) imports {t} ({LAYERS[lt][0]})")
            bad += [
                f"{m} imports {t}: {why}"
                for src, dst, why in FORBIDDEN
                if not suite and _matches(_rest(m), src) and _matches(_rest(t), dst)
            ]
    return sorted(bad)


def test_imports_only_run_downward() -> None:
    g = graph()
    assert len(g) > 100  # the walk found the package
    assert layer_violations(g) == []


def test_no_module_imports_another_in_a_loop() -> None:
    assert cycles(graph()) == []


def test_no_folder_imports_another_in_a_loop() -> None:
    assert cycles(folders(graph())) == []


@pytest.mark.parametrize(
    ("edges", "needle"),
    [
        ({"plinius.enclave.trusted": {"plinius.nn.network"}}, "protocol only"),
        ({"plinius.backends.files": {"plinius.core.crypto"}}, "only storage"),
        ({"plinius.format.mirror": {"plinius.session"}}, "mirror (format) imports plinius.session"),
        ({"plinius.core.crypto": {"plinius.backends.base"}}, "(core) imports"),
    ],
)
def test_the_contract_sees_a_wrong_way_import(edges: Graph, needle: str) -> None:
    """Not blind: each kind of wrong-way import is reported."""
    assert any(needle in v for v in layer_violations(edges))


def test_the_cycle_check_sees_loops() -> None:
    loop = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(loop) == [["a", "b", "c"]]
    both_ways = {"plinius.enclave.trusted": {"plinius.replica"}, "plinius.replica": set()}
    both_ways["plinius.replica"].add("plinius.enclave.counter")
    assert cycles(folders(both_ways)) == [["plinius.enclave", "plinius.replica"]]


def test_from_package_import_submodule_counts_the_submodule() -> None:
    known = {"plinius.nn", "plinius.nn.activations", "plinius.nn.cfg"}
    src = "from plinius.nn import activations\nfrom plinius.nn.cfg import Section"
    assert imports_of(src, "plinius.nn.layers.conv", known) == {
        "plinius.nn.activations",
        "plinius.nn.cfg",
    }
    assert imports_of("from plinius.nn import Network", "x", known) == {"plinius.nn"}
    assert imports_of("def f():\n    import plinius.nn.cfg", "x", known) == {"plinius.nn.cfg"}


def test_the_old_paths_are_the_moved_modules_and_nothing_inside_uses_them() -> None:
    import importlib

    g = graph()
    for old, new in ALIASES.items():
        assert importlib.import_module(f"plinius.{old}") is importlib.import_module(
            f"plinius.{new}"
        )
        users = sorted(m for m, targets in g.items() if f"plinius.{old}" in targets)
        assert users == [], f"plinius.{old} is for users; the package imports plinius.{new}"


def test_the_package_root_holds_layers_not_modules() -> None:
    flat = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert flat == sorted(ALIASES)
