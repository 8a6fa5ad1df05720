"""cffi out-of-line API-mode build of the native AEAD engine as ``plinius._aead``.

Used by setup.py (``cffi_modules=[..., "native/build_aead.py:ffibuilder"]``). The extension is
``optional``: without OpenSSL's headers the compile fails, setuptools warns, and plinius installs
without it (``plinius.core.crypto`` then falls back to the Python engines and says which engine
ran). The cipher is libcrypto's EVP AES-128-GCM; ``aead.c`` only batches records over threads.
libcrypto is not linked but loaded at run time (``plx_crypto_load``): the default is the one the
headers describe, and any other by path (``OpenSSLEngine(libcrypto=...)``). cffi releases the GIL
around every call. The declarations are generated from ``aead.h`` with the same generator as the
Romulus engine's; only the ``plx_aead_*`` API is exported (everything else in ``aead.c`` is
static). ``PLINIUS_SANITIZE=1`` builds it with ASan + UBSan like the Romulus engine.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
HEADER = "aead.h"
SOURCES = ("aead.c",)


def _generator() -> object:
    """native/build_romulus.py, loaded by path (native/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "_plinius_build_romulus", HERE / "build_romulus.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_romulus_build = _generator()
CDEF: str = _romulus_build.cdef_from_header(  # type: ignore[attr-defined]
    (HERE / HEADER).read_text(encoding="utf-8"), HEADER
)
SANITIZE = os.environ.get("PLINIUS_SANITIZE", "") not in ("", "0")
SANITIZE_FLAGS: list[str] = _romulus_build.SANITIZE_FLAGS  # type: ignore[attr-defined]


def _rel(path: Path) -> str:
    """setuptools wants source paths relative to the directory it runs in."""
    return os.path.relpath(path, Path.cwd())


ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "plinius._aead",
    f'#include "{HEADER}"\n',
    sources=[_rel(HERE / name) for name in SOURCES],
    include_dirs=[_rel(HERE)],
    depends=[_rel(HERE / HEADER)],
    # libcrypto is not linked: aead.c dlopen()s it (the default one, or another by path)
    libraries=["dl"],
    optional=True,
    extra_compile_args=[
        "-O2",
        "-std=gnu11",
        "-Wall",
        "-Wextra",
        "-pthread",
        *(SANITIZE_FLAGS if SANITIZE else []),
    ],
    extra_link_args=["-pthread", *(SANITIZE_FLAGS[:1] if SANITIZE else [])],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
