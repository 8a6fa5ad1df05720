"""The native engine's C API is stated once, in ``native/romulus.h``: the compiled binding exposes
exactly what the headers declare, the test hooks and the benchmark loop stay out of the public
header, and the shared object exports nothing but that API (the engine's internals are hidden)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
from plinius._romulus import ffi, lib

NATIVE = Path(__file__).resolve().parents[2] / "native"
PUBLIC = "romulus.h"
PRIVATE = {"romulus_sim.h": "rom_sim_", "romulus_bench.h": "rom_bench_"}

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_DEFINE = re.compile(r"^\s*#\s*define\s+(ROM_\w+)\s+\S", re.M)
_FUNCTION = re.compile(r"\b(rom_\w+)\s*\([^;{]*\)\s*;")
_TYPEDEF = re.compile(r"typedef\s+struct\s+\w+\s*(?:\{[^}]*\})?\s*(\w+)\s*;")


def _declared(header: str) -> tuple[set[str], set[str], set[str]]:
    """Functions, ROM_* constants and typedefs of a header, read independently of the build."""
    text = _COMMENT.sub(" ", (NATIVE / header).read_text(encoding="utf-8"))
    return set(_FUNCTION.findall(text)), set(_DEFINE.findall(text)), set(_TYPEDEF.findall(text))


def _builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_build_romulus", NATIVE / "build_romulus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bound() -> tuple[set[str], set[str]]:
    names = [n for n in dir(lib) if not n.startswith("__")]
    functions = {n for n in names if callable(getattr(lib, n))}
    return functions, set(names) - functions


def test_the_binding_is_exactly_what_the_headers_declare() -> None:
    functions, constants = _bound()
    want_f, want_c, want_t = _declared(PUBLIC)
    for header in PRIVATE:
        f, c, t = _declared(header)
        want_f |= f
        want_c |= c
        want_t |= t
    assert want_f and functions == want_f
    assert constants == want_c
    assert set(ffi.list_types()[0]) == want_t


def test_hooks_and_bench_are_not_in_the_public_header() -> None:
    public, constants, _ = _declared(PUBLIC)
    assert "ROM_CRASH_EXIT" not in constants
    for header, prefix in PRIVATE.items():
        private, _, _ = _declared(header)
        assert private and all(name.startswith(prefix) for name in private)
        assert not private & public
        assert not any(name.startswith(prefix) for name in public)


def test_the_shared_object_exports_only_the_api() -> None:
    """Internal helpers (fail, pm_fence, check_meta...) must not leak as exported symbols."""
    so = importlib.util.find_spec("plinius._romulus")
    assert so is not None and so.origin is not None
    out = subprocess.run(
        ["nm", "-D", "--defined-only", so.origin], capture_output=True, text=True, check=True
    ).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
    api = set(_bound()[0])
    assert exported - {"PyInit__romulus"} == api


def test_generated_cdef_declares_every_constant_by_the_compiler() -> None:
    cdef = _builder().build_cdef()
    _, constants, _ = _declared(PUBLIC)
    for name in constants:
        assert f"#define {name} ...\n" in cdef
    assert "#include" not in cdef and "/*" not in cdef


@pytest.mark.parametrize(
    ("header", "needle"),
    [
        ("#define ROM_MAX(a, b) ((a) > (b) ? (a) : (b))\n", "function-like"),
        ("#define OTHER_LIMIT 3\n", "ROM_*"),
        ("#ifdef __linux__\nint rom_x(void);\n#endif\n", "#ifdef"),
        ("#define ROM_LONG 1 + \\\n 2\n", "continuation"),
    ],
)
def test_the_generator_refuses_what_it_cannot_state_faithfully(header: str, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        _builder().cdef_from_header(header, "t.h")
