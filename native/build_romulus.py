"""cffi out-of-line API-mode build of the Romulus engine as ``plinius._romulus``.

Used by setup.py (``cffi_modules=["native/build_romulus.py:ffibuilder"]``); for a quick in-place
rebuild run ``python setup.py build_ext --inplace`` from the repository root.

The cffi declarations are generated from the headers (``cdef_from_header``), so the C API is
written once, in ``romulus.h``; the test hooks (``romulus_sim.h``) and the benchmark loop
(``romulus_bench.h``) are bound through the same module but are not part of that API.

No ``-march=native``: the flush instruction is picked at run time by cpuid, so one build runs on
every x86-64. cffi releases the GIL around every call into the engine. The crash-simulation hooks
are compiled in and cost one predictable branch per flush/fence until a test arms them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

#: The engine's API (romulus.h) and, apart from it, the test hooks and the benchmark loop the
#: test and bench bindings reach through the same module. The cffi declarations are generated
#: from these headers: the C API is stated once.
API_HEADER = "romulus.h"
PRIVATE_HEADERS = ("romulus_sim.h", "romulus_bench.h")
HEADERS = (API_HEADER, *PRIVATE_HEADERS)
#: The engine split by concern, listed bottom-up (romulus_internal.h): each file calls only
#: files listed before it, and the crash simulator is reached only through its hooks table.
SOURCES = (
    "romulus_error.c",
    "romulus_device.c",
    "romulus_persist.c",
    "romulus_log.c",
    "romulus_copier.c",
    "romulus_txn.c",
    "romulus_alloc.c",
    "romulus_pool.c",
    "romulus_sim.c",
    "romulus_bench.c",
)
INTERNAL_HEADERS = ("romulus_internal.h",)

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_DEFINE = re.compile(r"#\s*define\s+([A-Za-z_]\w*)(\(?)(.*)")
_DIRECTIVE = re.compile(r"#\s*(\w+)")


def cdef_from_header(text: str, source: str = "header") -> str:
    """The cffi declarations of a C header: comments and preprocessor lines stripped, and each
    ``#define ROM_X value`` turned into ``#define ROM_X ...`` so the compiler supplies the value.

    Anything the generator could silently get wrong is refused: function-like macros, a constant
    not named ROM_*, conditional compilation other than the include guard, line continuations.
    """

    def blank(match: re.Match[str]) -> str:
        return "\n" * match.group(0).count("\n") or " "

    out: list[str] = []
    for number, line in enumerate(_COMMENT.sub(blank, text).splitlines(), 1):
        stripped = line.strip()
        if stripped.endswith("\\"):
            raise ValueError(f"{source}:{number}: line continuations are not supported")
        if not stripped.startswith("#"):
            if stripped or (out and out[-1]):
                out.append(line.rstrip())
            continue
        define = _DEFINE.match(stripped)
        if define is None:
            directive = _DIRECTIVE.match(stripped)
            kind = directive.group(1) if directive else stripped
            if kind not in ("include", "ifndef", "endif"):
                raise ValueError(f"{source}:{number}: #{kind} is not supported in an API header")
            continue
        name, paren, value = define.groups()
        if paren:
            raise ValueError(f"{source}:{number}: function-like macro {name} is not supported")
        if not value.strip():
            continue  # the include guard
        if not name.startswith("ROM_"):
            raise ValueError(f"{source}:{number}: constant {name} must be named ROM_*")
        out.append(f"#define {name} ...")
    return "\n".join(out).strip() + "\n"


def build_cdef(headers: tuple[str, ...] = HEADERS) -> str:
    """The declarations of every header in ``headers`` (files in native/), in order."""
    return "\n".join(
        cdef_from_header((HERE / name).read_text(encoding="utf-8"), name) for name in headers
    )


CDEF = build_cdef()


def _rel(path: Path) -> str:
    """setuptools wants source paths relative to the directory it runs in."""
    return os.path.relpath(path, Path.cwd())


#: ``PLINIUS_SANITIZE=1`` builds the engine with AddressSanitizer + UndefinedBehaviorSanitizer
#: (tox env ``sanitize``): any out-of-bounds access or UB aborts the process instead of passing
#: silently. The interpreter is not instrumented, so libasan must be LD_PRELOADed at run time.
SANITIZE = os.environ.get("PLINIUS_SANITIZE", "") not in ("", "0")
SANITIZE_FLAGS = [
    "-fsanitize=address,undefined",
    "-fno-omit-frame-pointer",
    "-fno-sanitize-recover=all",
    "-g",
]

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "plinius._romulus",
    "".join(f'#include "{name}"\n' for name in HEADERS),
    sources=[_rel(HERE / name) for name in SOURCES],
    include_dirs=[_rel(HERE)],
    depends=[_rel(HERE / name) for name in (*HEADERS, *INTERNAL_HEADERS)],
    extra_compile_args=[
        "-O2",
        "-std=gnu11",
        "-Wall",
        "-Wextra",
        "-fno-strict-aliasing",
        *(SANITIZE_FLAGS if SANITIZE else []),
    ],
    extra_link_args=SANITIZE_FLAGS[:1] if SANITIZE else [],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
