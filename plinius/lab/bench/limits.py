"""The physical limits of a save and a restore, measured in the same run as the contenders.

A save cannot beat copying its bytes once nor encrypting them once, so the ``limits`` section
times exactly that on the workload's byte count: ``numpy.copyto`` between two preallocated
page-aligned buffers (one thread, and all cores each copying a slice: ``copyto`` releases the
GIL), and raw AES-GCM of 1 MiB chunks, once per *way* of running AES-GCM (:class:`Way`: an
engine and a thread count; by default :func:`default_ways`: the run's engine on one thread and
on all cores, and the parallel native engine beside a serial one). A way on all cores uses the
engine's own ``encrypt_many`` when it is parallel, else a Python thread pool of
``encrypt_into`` calls, which shows what the GIL leaves of the second core. The fastest way
measured is the limit the targets compare romulus against (``sections/limits.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from plinius.core.cores import usable_cores
from plinius.core.crypto import OVERHEAD, Engine, associated_data
from plinius.core.errors import IntegrityError
from plinius.core.memory import aligned_empty
from plinius.lab.bench.contenders import Contender, timed

SECTION = "limits"
CHUNK = 1 << 20  # bytes per AES-GCM job: the segment size of a sealed record


#: CPUs this process may run on
cores = usable_cores


def _slices(n: int, parts: int, align: int = 4096) -> list[slice]:
    """``parts`` contiguous slices covering ``range(n)``, page-aligned boundaries."""
    step = -(-n // parts)
    step = -(-step // align) * align
    return [slice(i, min(i + step, n)) for i in range(0, n, step)] or [slice(0, 0)]


class _Pool:
    """A thread pool kept across rounds: starting threads is not part of a copy."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="plinius-limits")

    def each(self, fn: Callable[[Any], object], items: list[Any]) -> None:
        for f in [self._pool.submit(fn, x) for x in items]:
            f.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class _Buffers:
    """Source, destination and sealed buffers shared by all limit contenders (they run one
    after another): three times the workload's bytes in all, however many contenders."""

    def __init__(self, nbytes: int) -> None:
        self.src = aligned_empty(nbytes)
        pool = np.random.default_rng(0).integers(0, 256, min(nbytes, CHUNK), dtype=np.uint8)
        for i in range(0, nbytes, pool.size):
            n = min(pool.size, nbytes - i)
            self.src[i : i + n] = pool[:n]
        self.dst = aligned_empty(nbytes)
        self.dst[:] = 0  # first touch outside the timed runs
        self.sealed = aligned_empty(nbytes + -(-nbytes // CHUNK) * OVERHEAD)


class _Memcpy:
    """``numpy.copyto`` of ``src`` into a preallocated buffer, whole or one slice per thread."""

    def __init__(self, bufs: _Buffers, threads: int, verify: bool) -> None:
        self.src = src = bufs.src
        self.dst = bufs.dst
        self.verify = verify
        self.pool = _Pool(threads) if threads > 1 else None
        self.parts = _slices(src.nbytes, threads)

    def _slice(self, s: slice) -> None:
        np.copyto(self.dst[s], self.src[s])

    def copy(self) -> None:
        if self.pool is None:
            np.copyto(self.dst, self.src)
        else:
            self.pool.each(self._slice, self.parts)

    def run(self, op: str) -> float:
        if op != "copy":
            raise ValueError(f"unknown op {op!r}")
        if self.verify:
            self.dst[:] = 0
        secs = timed(self.copy)
        if self.verify and not np.array_equal(self.dst, self.src):
            raise IntegrityError("limits", "copied bytes differ from the source")
        return secs

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


def _memcpy(nbytes: int, workload: str, threads: int, bufs: _Buffers, verify: bool) -> Contender:
    copier = _Memcpy(bufs, threads, verify)
    label = "1 thread" if threads == 1 else f"{threads} threads"
    return Contender(
        section=SECTION,
        name=f"memcpy ({label})",
        id=f"memcpy/{threads}",
        workload=workload,
        nbytes=nbytes,
        ops=("copy",),
        run=copier.run,
        close=copier.close,
        facts={"how": "numpy.copyto, page-aligned preallocated buffers", "threads": threads},
    )


class _AesGcm:
    """Raw AES-GCM of ``src`` in 1 MiB records into one preallocated sealed buffer and back."""

    def __init__(self, engine: Engine, bufs: _Buffers, threads: int, verify: bool) -> None:
        self.engine = engine
        self.src = src = bufs.src
        self.back = bufs.dst
        self.sealed = bufs.sealed
        self.verify = verify
        n = src.nbytes
        starts = list(range(0, n, CHUNK))
        self.enc_jobs: list[tuple[bytes, Any, memoryview]] = []
        self.dec_jobs: list[tuple[bytes, Any, Any, str]] = []
        pos = 0
        for i, start in enumerate(starts):
            k = min(CHUNK, n - start)
            aad = associated_data(bytes(32), i, "limits", 1)
            out = self.sealed[pos : pos + k + OVERHEAD]
            self.enc_jobs.append((aad, src[start : start + k], out.data))
            self.dec_jobs.append((aad, out, self.back[start : start + k], f"chunk {i}"))
            pos += k + OVERHEAD
        self.mode = "serial encrypt_into"
        self.threads = 1
        self.pool: _Pool | None = None
        if threads > 1:
            if engine.parallel:
                self.mode = "engine.encrypt_many/decrypt_many"
                self.threads = int(getattr(engine, "threads", threads))
            else:
                self.mode = "Python thread pool of encrypt_into/decrypt_into"
                self.threads = threads
                self.pool = _Pool(threads)
        self.encrypt()  # first touch of the sealed buffer, outside the timed runs

    def encrypt(self) -> None:
        if self.pool is not None:
            self.pool.each(lambda j: self.engine.encrypt_into(*j), self.enc_jobs)
        elif self.threads > 1:
            self.engine.encrypt_many(self.enc_jobs)
        else:
            for aad, plain, out in self.enc_jobs:
                self.engine.encrypt_into(aad, plain, out)

    def decrypt(self) -> None:
        if self.pool is not None:
            self.pool.each(lambda j: self.engine.decrypt_into(*j), self.dec_jobs)
        elif self.threads > 1:
            self.engine.decrypt_many(self.dec_jobs)
        else:
            for aad, sealed, out, what in self.dec_jobs:
                self.engine.decrypt_into(aad, sealed, out, what)

    def run(self, op: str) -> float:
        if op == "encrypt":
            return timed(self.encrypt)
        if op == "decrypt":
            if self.verify:
                self.back[:] = 0  # shared with memcpy: a decrypt that writes nothing must show
            secs = timed(self.decrypt)
            if self.verify and not np.array_equal(self.back, self.src):
                raise IntegrityError("limits", "decrypted bytes differ from the plaintext")
            return secs
        raise ValueError(f"unknown op {op!r}")

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


@dataclass(frozen=True)
class Way:
    """One way of running raw AES-GCM that the limits measure: ``label`` names it in the
    contender id (``aes-gcm/LABEL``: ``cryptography/1``, ``openssl/2``, ...), ``engine`` builds
    its engine (any key: raw AES-GCM), ``threads`` is how many cores it is given (1: serial
    ``encrypt_into``/``decrypt_into``). ``name``: the contender's display name (default
    ``aes-gcm (LABEL)``)."""

    label: str
    engine: Callable[[], Engine]
    threads: int
    name: str = ""

    @property
    def ident(self) -> str:
        return f"aes-gcm/{self.label}"


def default_ways(engine: Engine, n: int | None = None) -> list[Way]:
    """The run's engine on one thread and, with more than one core, on all ``n`` of them; and
    beside a serial engine the parallel native one on all cores (when it is built here). Add
    ways to this list to measure more (the fastest becomes the limit)."""
    n = cores() if n is None else n
    out = [Way(f"{engine.name}/1", lambda: engine, 1, "aes-gcm (1 thread)")]
    if n > 1:
        out.append(Way(f"{engine.name}/{n}", lambda: engine, n, "aes-gcm (all cores)"))
        if not engine.parallel and _native_usable():
            from plinius.core import crypto_native

            name = crypto_native.OpenSSLEngine.name
            out.append(
                Way(f"{name}/{n}", lambda: _native_engine(), n, f"aes-gcm (all cores, {name})")
            )
    return out


def engine_ways() -> list[Way]:
    """Every way :mod:`plinius.core.crypto_ways` finds here (each engine on each libcrypto with
    each thread count it measures for ``auto``: ``openssl[3.0.13]/2``, ``cryptography/1``,
    ...), each with a fresh random key; none when discovery is not available or fails."""
    try:
        from plinius.core import crypto_ways

        found = crypto_ways.discover()
    except Exception:  # the limits then measure the default ways only
        return []

    def factory(way: crypto_ways.Way) -> Callable[[], Engine]:
        return lambda: crypto_ways.build(way, os.urandom(16))

    return [Way(w.name, factory(w), w.threads) for w in found]


def all_ways(engine: Engine, n: int | None = None) -> list[Way]:
    """What the ``limits`` section measures: the run's engine on one thread and on all cores,
    then every way :func:`engine_ways` finds (labels already present once only); without
    discovered ways, :func:`default_ways`."""
    found = engine_ways()
    if not found:
        return default_ways(engine, n)
    n = cores() if n is None else n
    out = [w for w in default_ways(engine, n) if w.label.startswith(f"{engine.name}/")]
    seen = {w.label for w in out}
    for w in found:
        if w.label not in seen:
            seen.add(w.label)
            out.append(w)
    return out


def _aes(nbytes: int, workload: str, way: Way, bufs: _Buffers, verify: bool) -> Contender:
    engine = way.engine()
    aes = _AesGcm(engine, bufs, way.threads, verify)
    return Contender(
        section=SECTION,
        name=way.name or f"aes-gcm ({way.label})",
        id=way.ident,
        workload=workload,
        nbytes=nbytes,
        ops=("encrypt", "decrypt"),
        run=aes.run,
        close=aes.close,
        facts={
            "engine": engine.name,
            "way": way.label,
            "threads": aes.threads,
            "how": aes.mode,
            "chunk_bytes": CHUNK,
            "engine_parallel": bool(engine.parallel),
        },
    )


def limit_contenders(
    nbytes: int,
    workload: str,
    engine: Engine,
    *,
    verify: bool = False,
    ways: Sequence[Way] | None = None,
) -> list[Contender]:
    """memcpy with one thread and with all cores, and raw AES-GCM once per way (``ways``,
    default :func:`default_ways` of ``engine``), all on the same buffers.

    ``verify`` checks after every copy and decrypt that the bytes arrived (untimed; tests).
    On a single-core machine only the one-thread contenders are returned by default.
    """
    if nbytes <= 0:
        raise ValueError("limits need a positive byte count")
    ways = default_ways(engine) if ways is None else list(ways)
    idents = [w.ident for w in ways]
    if len(set(idents)) != len(idents):
        raise ValueError(f"limits: two ways with one label in {idents}")
    bufs = _Buffers(nbytes)
    n = cores()
    out = [_memcpy(nbytes, workload, 1, bufs, verify)]
    if n > 1:
        out.append(_memcpy(nbytes, workload, n, bufs, verify))
    out += [_aes(nbytes, workload, w, bufs, verify) for w in ways]
    return out


def _native_usable() -> bool:
    from plinius.core import crypto_native

    return bool(crypto_native.usable())


def _native_engine() -> Engine:
    """The parallel native engine (any key: raw AES-GCM), on every core from the first byte."""
    from plinius.core import crypto_native

    return crypto_native.OpenSSLEngine(os.urandom(16))
