"""The ``openssl`` engine: AES-GCM-128 from libcrypto through ``plinius._aead`` (native/aead.c).

Why a native engine: ``cryptography`` and pycryptodome hold the GIL, so a model's buffers are
sealed on one core. Here one call hands a whole list of buffers to C, which seals them on a pool
of threads (the GIL released) with one keyed EVP context per thread. Records are byte for byte
those of the Python engines (``[IV][ciphertext][tag]``), so any engine opens what another sealed.

libcrypto is loaded at run time (:func:`load_libcrypto`: the default one, ``$PLINIUS_LIBCRYPTO``,
or a path), so one build runs on whichever OpenSSL is fastest here: a wheel's bundled OpenSSL 3.5
(VAES AES-GCM) can be three times the system 3.0 on the same CPU. Which is, is measured
(:mod:`plinius.core.crypto_ways`).

The module is optional (built only where OpenSSL's headers are); :func:`usable` says whether it
is here. Sizes are checked in Python before any pointer reaches C: a wrong length is a
``ValueError``, never an overrun.
"""

from __future__ import annotations

import os
import re
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from plinius.core.cores import usable_cores
from plinius.core.crypto import (
    IV_BYTES,
    OVERHEAD,
    TAG_BYTES,
    Buffer,
    Engine,
    as_bytes_view,
    openssl_usable,
)
from plinius.core.errors import ConfigError, IntegrityError

THREADS_ENV = "PLINIUS_AEAD_THREADS"
TAG_MISMATCH = "tag mismatch (tampered, moved, replayed or wrong key)"
#: where a batch's IVs come from (one CSPRNG read per batch); tests pin it to compare engines
random_bytes = os.urandom


def usable() -> bool:
    """Whether the compiled module (and the libcrypto it links) loads here."""
    return openssl_usable()


def default_threads() -> int:
    """``$PLINIUS_AEAD_THREADS`` if set, else the cores this process may run on."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise ConfigError(f"{THREADS_ENV}={raw!r}: give a whole number of threads >= 1")
        return value
    return usable_cores()


LIBCRYPTO_ENV = "PLINIUS_LIBCRYPTO"
_LIBCRYPTO_RE = re.compile(r"OpenSSL (\d+\.\d+\.\d+\S*)")


@dataclass(frozen=True)
class LibCrypto:
    """One libcrypto loaded into this process for the native engine (never unloaded)."""

    #: the path asked for (``None``: the default one the module was built against)
    requested: str | None
    #: the file the dynamic loader opened
    path: str
    #: ``OpenSSL_version()``, e.g. "OpenSSL 3.5.9 30 Sep 2025"
    version_text: str
    #: the version number, e.g. "3.5.9" (what way names show: ``openssl[3.5.9]/2``)
    version: str
    handle: Any = field(repr=False, compare=False)


_loaded: dict[str | None, LibCrypto] = {}
_load_lock = threading.Lock()


def load_libcrypto(path: str | os.PathLike[str] | None = None) -> LibCrypto:
    """The libcrypto at ``path`` (``None``: the default), loaded once per process.

    A path that does not load, or is not a libcrypto with the EVP functions the engine uses, is
    a one-line :class:`ConfigError` naming it."""
    key = None if path is None else os.fspath(path)
    with _load_lock:
        found = _loaded.get(key)
        if found is not None:
            return found
        from plinius._aead import ffi, lib

        err = ffi.new("char[]", 512)
        raw = ffi.NULL if key is None else os.fsencode(key)
        handle = lib.plx_crypto_load(raw, err, len(err))
        if handle == ffi.NULL:
            what = "the default libcrypto" if key is None else f"libcrypto {key}"
            why = ffi.string(err).decode(errors="replace").strip() or "it does not load"
            raise ConfigError(f"cannot load {what}: {why.splitlines()[0]}")
        text = ffi.string(lib.plx_crypto_version(handle)).decode(errors="replace")
        loaded_path = ffi.string(lib.plx_crypto_path(handle)).decode(errors="replace")
        m = _LIBCRYPTO_RE.search(text)
        found = LibCrypto(
            requested=key,
            path=os.path.realpath(loaded_path) if os.path.isabs(loaded_path) else loaded_path,
            version_text=text,
            version=m.group(1) if m else text.split()[-1] if text.split() else "?",
            handle=handle,
        )
        _loaded[key] = found
        return found


def forced_libcrypto() -> str | None:
    """``$PLINIUS_LIBCRYPTO`` (a path: the one libcrypto the ``openssl`` engine may use), or None.

    A path that is not an existing file is a one-line :class:`ConfigError`."""
    raw = os.environ.get(LIBCRYPTO_ENV, "")
    if not raw.strip():
        return None
    if "\0" in raw or not os.path.isfile(raw):
        raise ConfigError(f"{LIBCRYPTO_ENV}={raw!r}: not an existing libcrypto file")
    return os.path.realpath(raw)


def _free_in_owner(lib: Any, handle: Any, pid: int) -> None:
    """Free the C engine, but only in the process that made it: after fork() its workers do
    not exist in the child, so joining them there would hang (the child leaks it instead)."""
    if os.getpid() == pid:
        lib.plx_aead_free(handle)


class OpenSSLEngine(Engine):
    """libcrypto's AES-GCM, many buffers per call on ``threads`` threads (the GIL released).

    Every call runs here, on the libcrypto given (``libcrypto``: a path, default
    ``$PLINIUS_LIBCRYPTO`` or the system one): which library, and whether one thread or all, is
    fastest for which call size is measured per machine by ``auto``
    (:mod:`plinius.core.crypto_ways`), never assumed."""

    name = "openssl"
    parallel = True

    def __init__(
        self,
        key: bytes,
        *,
        threads: int | None = None,
        spawn: bool = False,
        libcrypto: str | os.PathLike[str] | None = None,
        serial_below: int = 0,
    ) -> None:
        """``threads`` defaults to :func:`default_threads`; ``spawn`` starts fresh threads for
        every batch instead of keeping workers (only to measure what the pool saves).

        ``serial_below`` is accepted only as 0 (what every engine does now) for callers written
        when small calls went to ``cryptography`` here: that split is ``auto``'s job, measured."""
        super().__init__(key)
        if serial_below:
            raise ConfigError(
                f"serial_below={serial_below}: the openssl engine runs every call itself now; "
                "use the auto engine (make_engine(key)) to split calls by measured speed"
            )
        if libcrypto is None:
            libcrypto = forced_libcrypto()
        self.libcrypto = load_libcrypto(libcrypto)
        self.serial_below = 0
        from plinius._aead import ffi, lib

        self._ffi = ffi
        self._lib = lib
        self._key = bytes(key)
        self.threads = default_threads() if threads is None else int(threads)
        if self.threads < 1:
            raise ConfigError(f"threads={threads}: the AEAD engine needs at least one thread")
        self._spawn = spawn
        self._pid = -1
        self._handle: Any = None
        self._native()

    def _native(self) -> Any:
        """The C engine of this process (a child after fork() builds its own)."""
        pid = os.getpid()
        if self._pid != pid:
            handle = self._lib.plx_aead_new(
                self._key, len(self._key), self.threads, self._spawn, self.libcrypto.handle
            )
            if handle == self._ffi.NULL:
                raise ConfigError(
                    f"libcrypto {self.libcrypto.path} could not set up AES-128-GCM (plinius._aead)"
                )
            weakref.finalize(self, _free_in_owner, self._lib, handle, pid)
            self._handle, self._pid = handle, pid
        return self._handle

    @property
    def way(self) -> str:
        return f"openssl[{self.libcrypto.version}]/{self.threads}"

    def _ptr(self, buf: memoryview | bytes, writable: bool = False) -> Any:
        try:
            return self._ffi.from_buffer(buf, require_writable=writable)
        except (TypeError, BufferError):
            if not writable:
                raise
            raise ValueError("output buffer is read-only") from None

    def _encrypt(
        self, iv: bytes, aad: bytes, plaintext: memoryview, ct_and_tag: memoryview
    ) -> None:
        n = plaintext.nbytes
        if ct_and_tag.nbytes != n + TAG_BYTES or len(iv) != IV_BYTES:
            raise ValueError(f"output is {ct_and_tag.nbytes} B, needs {n + TAG_BYTES} B")
        rc = self._lib.plx_aead_seal(
            self._native(),
            self._ptr(iv),
            self._ptr(aad),
            len(aad),
            self._ptr(plaintext),
            n,
            self._ptr(ct_and_tag, writable=True),
        )
        if rc != 0:
            raise ConfigError("libcrypto failed to encrypt (plinius._aead)")

    def _decrypt(self, iv: bytes, aad: bytes, ct_and_tag: memoryview, out: memoryview) -> bool:
        n = out.nbytes
        if ct_and_tag.nbytes != n + TAG_BYTES or len(iv) != IV_BYTES:
            raise ValueError(f"output is {n} B, sealed buffer holds {ct_and_tag.nbytes - 16} B")
        rc = self._lib.plx_aead_open(
            self._native(),
            self._ptr(iv),
            self._ptr(aad),
            len(aad),
            self._ptr(ct_and_tag),
            n,
            self._ptr(out, writable=True),
        )
        if rc < 0:
            raise ConfigError("libcrypto failed to decrypt (plinius._aead)")
        return bool(rc == 0)

    def encrypt_many(self, jobs: Sequence[tuple[bytes, Buffer, memoryview]]) -> None:
        """Seal every ``(aad, plaintext, out)`` job in one C call on all threads, each with a
        fresh random IV (one ``os.urandom`` for the whole batch)."""
        jobs = list(jobs)
        if not jobs:
            return
        table = self._ffi.new("plx_aead_job[]", len(jobs))
        keep: list[Any] = []  # the cdata views must outlive the call
        for i, (aad, plaintext, out) in enumerate(jobs):
            pv = as_bytes_view(plaintext)
            ov = as_bytes_view(out)
            n = pv.nbytes
            if ov.nbytes != n + OVERHEAD:
                raise ValueError(
                    f"job {i}: output is {ov.nbytes} B, encrypting {n} B needs {n + OVERHEAD} B"
                )
            self._fill(table[i], keep, aad, pv, n, ov)
        ivs = random_bytes(IV_BYTES * len(jobs))
        rc = self._lib.plx_aead_seal_many(self._native(), table, len(jobs), self._ptr(ivs))
        if rc != -1:
            raise ConfigError("libcrypto failed to encrypt a batch (plinius._aead)")

    def decrypt_many(self, jobs: Sequence[tuple[bytes, Buffer, Buffer, str]]) -> None:
        """Open every ``(aad, sealed, out, what)`` job in one C call on all threads; every tag is
        verified (by EVP, in constant time) and the first failing job in list order is named."""
        jobs = list(jobs)
        if not jobs:
            return
        table = self._ffi.new("plx_aead_job[]", len(jobs))
        keep: list[Any] = []
        index: list[int] = []  # the jobs handed to C, by position in ``jobs``
        short: tuple[int, str, int] | None = None  # the first record too short to hold a tag
        for i, (aad, sealed, out, what) in enumerate(jobs):
            sv = as_bytes_view(sealed)
            ov = as_bytes_view(out)
            n = sv.nbytes - OVERHEAD
            if n < 0:
                if short is None:
                    short = (i, what, sv.nbytes)
                continue
            if ov.nbytes != n:
                raise ValueError(f"job {i}: output is {ov.nbytes} B, sealed buffer holds {n} B")
            self._fill(table[len(index)], keep, aad, sv, n, ov)
            index.append(i)
        rc = self._lib.plx_aead_open_many(self._native(), table, len(index)) if index else -1
        if rc == -2 or rc < -2 or rc >= len(index):
            raise ConfigError("libcrypto failed to decrypt a batch (plinius._aead)")
        failed = index[rc] if rc >= 0 else None
        if short is not None and (failed is None or short[0] < failed):
            _, what, size = short
            raise IntegrityError(what, f"sealed buffer is {size} B, shorter than {OVERHEAD} B")
        if failed is not None:
            raise IntegrityError(jobs[failed][3], TAG_MISMATCH)

    def _fill(
        self, job: Any, keep: list[Any], aad: bytes, src: memoryview, n: int, dst: memoryview
    ) -> None:
        """One row of the C job table; the cdata objects go to ``keep`` so they stay alive."""
        a = self._ptr(aad)
        s = self._ptr(src)
        d = self._ptr(dst, writable=True)
        keep += (a, s, d)
        job.aad = a
        job.aad_len = len(aad)
        job.src = s
        job.len = n
        job.dst = d
