"""The native engine's files, split by concern, never call each other in a loop.

The C files under ``native/`` are read with a few regular expressions (comments, strings and
preprocessor lines removed; a function definition is a top-level ``name(...) {``): a file
depends on another when it names one of the other's non-static functions (a call, or its
address taken), directly or through an inline function of a header. Member names (``a.f``,
``a->f``) name no function; a struct field declared in a .c file under the name of another
file's function would, which can only report a loop that is not there, never miss one.

No two files may depend on each other, directly or around a longer loop; the crash simulator
is named by nobody (the engine reaches it through the ``pm_hooks`` table it fills at
start-up); ``romulus_txn.c`` holds the transaction protocol only, so it stays short.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from pathlib import Path

import pytest

NATIVE = Path(__file__).resolve().parents[2] / "native"
#: the protocol alone (begin, commit, abort, recovery) is about 200 lines
TXN_MAX_LINES = 400

_COMMENT_OR_LITERAL = re.compile(
    r"/\*.*?\*/|//[^\n]*|\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*'", re.S
)
_PREPROCESSOR = re.compile(r"^[ \t]*#(?:[^\n]*\\\n)*[^\n]*", re.M)
_IDENT = re.compile(r"(?<![\w.])(?<!->)(?<!\.\s)([A-Za-z_]\w*)")
#: what precedes a function body at file scope: ``... name(params) [__attribute__((...))]``
_SIGNATURE = re.compile(
    r"\b([A-Za-z_]\w*)\s*\((?:[^()]|\([^()]*\))*\)\s*(?:__attribute__\s*\(\(.*?\)\)\s*)*$", re.S
)


class Functions:
    """The function definitions of one C source: name -> (static?, body)."""

    def __init__(self, text: str) -> None:
        code = _PREPROCESSOR.sub(" ", _COMMENT_OR_LITERAL.sub(" ", text))
        self.code = code
        self.defs: dict[str, tuple[bool, str]] = {}
        depth, start, head_from = 0, 0, 0
        for i, ch in enumerate(code):
            if ch == "{":
                if depth == 0:
                    start = i
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    head = code[head_from:start]
                    found = _SIGNATURE.search(head)
                    if found and "=" not in head:
                        static = re.search(r"\bstatic\b", head) is not None
                        self.defs[found.group(1)] = (static, code[start : i + 1])
                    head_from = i + 1
            elif ch == ";" and depth == 0:
                head_from = i + 1

    def exported(self) -> set[str]:
        return {name for name, (static, _) in self.defs.items() if not static}


def names_used(code: str) -> set[str]:
    """Identifiers of ``code`` that are not member names (``a.x``, ``a->x``)."""
    return set(_IDENT.findall(code))


def file_graph(
    sources: Mapping[str, str], headers: Mapping[str, str] | None = None
) -> dict[str, dict[str, set[str]]]:
    """file -> {other file -> the other's functions it names}, over C ``sources`` (name ->
    text). Inline functions of ``headers`` count as the code of the file that uses them."""
    inline: dict[str, set[str]] = {}
    for text in (headers or {}).values():
        for name, (_, body) in Functions(text).defs.items():
            inline[name] = names_used(body)
    parsed = {name: Functions(text) for name, text in sources.items()}
    owner: dict[str, str] = {}
    for name, funcs in parsed.items():
        for fn in funcs.exported():
            owner[fn] = name
    graph: dict[str, dict[str, set[str]]] = {}
    for name, funcs in parsed.items():
        used = names_used(funcs.code)
        todo = [n for n in used if n in inline]
        while todo:  # what a header's inline functions name, transitively
            for n in inline.pop(todo.pop(), set()) - used:
                used.add(n)
                if n in inline:
                    todo.append(n)
        edges: dict[str, set[str]] = {}
        for fn in used - set(funcs.defs):
            other = owner.get(fn)
            if other is not None and other != name:
                edges.setdefault(other, set()).add(fn)
        graph[name] = edges
    return graph


def loops(graph: Mapping[str, Mapping[str, set[str]]]) -> list[list[str]]:
    """The strongly connected components of more than one file (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def read_native(directory: Path = NATIVE) -> tuple[dict[str, str], dict[str, str]]:
    """(C sources, headers) of ``directory``, name -> text."""

    def read(pattern: str) -> dict[str, str]:
        return {p.name: p.read_text(encoding="utf-8") for p in sorted(directory.glob(pattern))}

    return read("*.c"), read("*.h")


def describe(graph: Mapping[str, Mapping[str, set[str]]], component: list[str]) -> str:
    return "; ".join(
        f"{a} -> {b} ({', '.join(sorted(graph[a][b]))})"
        for a in component
        for b in sorted(graph[a])
        if b in component
    )


def test_no_two_native_files_call_each_other_in_a_loop() -> None:
    sources, headers = read_native()
    graph = file_graph(sources, headers)
    assert graph["romulus_pool.c"], "the parser found no calls between files: it is broken"
    found = loops(graph)
    assert not found, "native files that call each other in a loop: " + " | ".join(
        describe(graph, c) for c in found
    )


def test_nothing_names_the_crash_simulator() -> None:
    """The engine reaches romulus_sim.c only through pm_hooks, filled by the simulator."""
    sources, headers = read_native()
    graph = file_graph(sources, headers)
    callers = {a: sorted(e["romulus_sim.c"]) for a, e in graph.items() if "romulus_sim.c" in e}
    assert not callers


def test_romulus_txn_is_the_protocol_only() -> None:
    lines = (NATIVE / "romulus_txn.c").read_text(encoding="utf-8").count("\n")
    assert lines < TXN_MAX_LINES, (
        f"romulus_txn.c has {lines} lines: keep it to the transaction protocol (persist, "
        "device, log and copier have files of their own)"
    )


def test_every_engine_file_is_built() -> None:
    spec = importlib.util.spec_from_file_location("_build_romulus", NATIVE / "build_romulus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert set(module.SOURCES) == {p.name for p in NATIVE.glob("romulus_*.c")}


# --- the checker itself ------------------------------------------------------------------------


def test_the_parser_finds_definitions_and_ignores_comments_strings_and_members() -> None:
    funcs = Functions(
        "#include <x.h>\n"
        "static int helper(int a) { return a; }\n"
        "struct s table = { 0 };\n"
        "int api(struct s *t) __attribute__((unused));\n"
        "int api(struct s *t) {\n"
        '    /* other() */ puts("other()"); // other()\n'
        "    return t->cb() + table.cb() + table. cb() + helper(1);\n"
        "}\n"
    )
    assert funcs.exported() == {"api"} and set(funcs.defs) == {"helper", "api"}
    graph = file_graph(
        {"a.c": funcs.code, "b.c": "int other(void) { return 0; }\nint cb(void) { return 1; }"}
    )
    assert graph["a.c"] == {}  # other() only in a comment and a string, cb only as a member


@pytest.mark.parametrize("via_header", [False, True])
def test_the_checker_sees_a_loop(via_header: bool) -> None:
    a = "int a_fn(void) { return b_fn(); }\n"
    if via_header:  # a calls b only through an inline function of a header
        a = "int a_fn(void) { return b_inline(); }\n"
    sources = {"a.c": a, "b.c": "int b_fn(void) { return a_fn(); }\n", "c.c": "int c(void){}"}
    headers = {"h.h": "static inline int b_inline(void) { return b_fn(); }\n"}
    graph = file_graph(sources, headers)
    assert loops(graph) == [["a.c", "b.c"]]
    assert "a.c -> b.c (b_fn)" in describe(graph, ["a.c", "b.c"])
    # a loop of three files is one too
    sources["b.c"] = "int b_fn(void) { return c(); }\n"
    sources["c.c"] = "int c(void) { return a_fn(); }\n"
    assert loops(file_graph(sources, headers)) == [["a.c", "b.c", "c.c"]]
    # calling through a table of function pointers names nobody
    sources["c.c"] = "struct hooks hooks;\nint c(void) { return hooks.fn(); }\n"
    assert loops(file_graph(sources, headers)) == []
