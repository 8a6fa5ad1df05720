"""The ways to run AES-GCM here, and how fast each one is on this machine, measured.

A *way* is one engine on one library with one thread count: ``cryptography/1`` (the wheel's own
OpenSSL, one core: it holds the GIL), ``openssl[3.0.22]/1``, ``openssl[3.0.22]/2``,
``openssl[3.5.9]/2`` (the native pool of :mod:`plinius.core.crypto_native` on each libcrypto
found here). Which is fastest depends on the CPU (VAES or not), the libraries' versions and the
call size, so ``auto`` decides from a table measured on this machine rather than from a constant
tuned on another one (:mod:`plinius.core.crypto_choice`).

Ways are *discovered* in every process (the default libcrypto, ``$PLINIUS_LIBCRYPTO``, and
``libcrypto*.so*`` files shipped in installed distributions' ``*.libs/`` directories, e.g. the
OpenSSL 3.5 of ``psycopg-binary``'s wheel); only the measured speeds are cached, as JSON in the
user's cache directory, keyed by the CPU, the cores and every library's version. The cache is
untrusted input: bounded, schema-checked, it may only name ways discovered now and never names a
path; anything wrong with it means measuring again, never an error.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import json
import math
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from plinius import __version__
from plinius.core.cores import usable_cores
from plinius.core.crypto import (
    ENGINE_REGISTRY,
    OVERHEAD,
    Engine,
    available_engines,
)
from plinius.core.errors import PliniusError
from plinius.core.fsutil import atomic_write, private_dir, read_regular, try_lock
from plinius.core.memory import PAGE, align_up, aligned_empty

MiB = 1 << 20
SEGMENT = 2 * MiB


def restore_batch_bytes(segment: int = SEGMENT) -> int:
    """Plaintext per pipelined restore batch (``format.mirror`` uses this): a segment per core
    (a parallel engine's call fills every core), at least two segments, at most 32 MiB of
    reusable memory per buffer."""
    segment = segment or SEGMENT
    return max(2 * segment, min(32 * MiB, (os.cpu_count() or 1) * segment))


#: the call sizes that matter to a mirror: one segment (``format.mirror.SEGMENT_BYTES``), one
#: restore batch (:func:`restore_batch_bytes`: 4 MiB on two cores), one save batch
#: (``format.mirror._SAVE_BATCH``) and a whole mirror of 64 MiB, each handed over as 2 MiB
#: buffers like the mirror does (core may not import the format: a test holds them equal). A
#: call of a size between two of them takes the way of the nearest, so the sizes mirrors really
#: call with are measured themselves: on two cores, a 4 MiB restore batch taking the 2 MiB way
#: (one thread) left the second core idle
SIZES: tuple[int, ...] = tuple(sorted({SEGMENT, restore_batch_bytes(), 16 * MiB, 64 * MiB}))
OPS: tuple[str, ...] = ("seal", "open")
#: version of the cached table's layout
TABLE_FORMAT = 1
#: a cached table is a few KiB; anything bigger is not one
CACHE_MAX_BYTES = 256 << 10
#: a table older than this is measured again (firmware, microcode and kernels change speeds)
CACHE_MAX_AGE = _dt.timedelta(days=30)
#: a 1-minute load average at or below which the cores are free enough to time every way
#: (a statement about load, not about a CPU): a table measured above it is provisional
QUIET_LOAD = 0.5
CACHE_ENV = "PLINIUS_CACHE_DIR"
#: engines measured by ``auto``; pycryptodome only where it is the only one, plug-ins by name
MEASURED_ENGINES = ("openssl", "cryptography")
#: bounds on what discovery reads (sys.path entries, ``*.libs`` dirs, files in each)
_MAX_PATH_ENTRIES = 64
_MAX_LIBS_DIRS = 64
_MAX_FILES_PER_DIR = 256
_LIBCRYPTO_NAME = re.compile(r"^libcrypto[-.\w]*\.so(\.\d+)*$")
#: a cached table's ISO date (it is printed: digits and separators only)
_CREATED = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.+\-]{8,30}")
_WAY_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,40}(\[[0-9A-Za-z.+_-]{1,40}\])?/[1-9][0-9]{0,3}$")


@dataclass(frozen=True)
class Library:
    """A libcrypto the ``openssl`` engine can run on, found in this process."""

    #: the name ways show: ``openssl[3.5.9]``
    label: str
    version_text: str
    #: the file loaded (for the CLI and reports only; never read from the cache)
    path: str
    #: None: the default library (``OpenSSLEngine(libcrypto=None)``); else the path to load
    load: str | None
    #: where it came from: "system", "$PLINIUS_LIBCRYPTO", or the distribution shipping it
    origin: str


@dataclass(frozen=True)
class Way:
    """One engine on one library with one thread count."""

    engine: str
    threads: int
    library: Library | None = None

    @property
    def name(self) -> str:
        if self.library is None:
            return f"{self.engine}/{self.threads}"
        return f"{self.library.label}/{self.threads}"


# --- discovery ---------------------------------------------------------------------------------


def _bundled_libcryptos() -> Iterator[tuple[str, str]]:
    """``(path, distribution)`` of every ``libcrypto*.so*`` in an installed distribution's
    ``*.libs/`` directory (auditwheel's place for bundled libraries), bounded; a file that no
    installed distribution lists as its own is skipped."""
    seen_dirs = 0
    for entry in sys.path[:_MAX_PATH_ENTRIES]:
        if not entry or not os.path.isdir(entry):
            continue
        try:
            with os.scandir(entry) as it:
                libs = sorted(d.name for d in it if d.name.endswith(".libs") and d.is_dir())
        except OSError:
            continue
        for name in libs:
            seen_dirs += 1
            if seen_dirs > _MAX_LIBS_DIRS:
                return
            directory = os.path.join(entry, name)
            try:
                with os.scandir(directory) as it:
                    files = sorted(
                        f.name
                        for _, f in zip(range(_MAX_FILES_PER_DIR), it, strict=False)
                        if _LIBCRYPTO_NAME.match(f.name)
                    )
            except OSError:
                continue
            if not files:
                continue
            dist = _owner(name[: -len(".libs")], entry, name, files)
            if dist is None:
                continue
            for f in files:
                yield os.path.join(directory, f), dist


def _owner(dist_name: str, site: str, libs_dir: str, files: list[str]) -> str | None:
    """The installed distribution whose RECORD lists ``libs_dir/<file>`` (one lookup by name)."""
    try:
        dist = metadata.distribution(dist_name)
        listed = dist.files or []
    except (metadata.PackageNotFoundError, OSError, ValueError):
        return None
    wanted = {f"{libs_dir}/{f}" for f in files}
    for p in listed:
        if str(p) in wanted and os.path.realpath(p.locate()) == os.path.realpath(
            os.path.join(site, str(p))
        ):
            return str(dist.metadata["Name"] or dist_name)
    return None


def _library(load: str | None, origin: str) -> Library | None:
    """Load one candidate; a candidate that does not load is left out (``$PLINIUS_LIBCRYPTO``
    is checked before: its failure is an error)."""
    from plinius.core.crypto_native import load_libcrypto

    try:
        lib = load_libcrypto(load)
    except PliniusError:
        return None
    return Library(
        label=f"openssl[{lib.version}]",
        version_text=lib.version_text,
        path=lib.path,
        load=load,
        origin=origin,
    )


def libraries() -> list[Library]:
    """Every libcrypto the ``openssl`` engine may run on here (one per file, labels unique):
    only ``$PLINIUS_LIBCRYPTO`` when it is set, else the default one and the bundled ones."""
    from plinius.core.crypto_native import forced_libcrypto, load_libcrypto

    forced = forced_libcrypto()
    if forced is not None:
        one = load_libcrypto(forced)  # a bad one is the user's one-line error
        return [
            Library(
                f"openssl[{one.version}]", one.version_text, one.path, forced, "$PLINIUS_LIBCRYPTO"
            )
        ]
    found: list[Library] = []
    default = _library(None, "system")
    if default is not None:
        found.append(default)
    for path, dist in _bundled_libcryptos():
        bundled = _library(path, dist)
        if bundled is not None:
            found.append(bundled)
    out: list[Library] = []
    paths: set[str] = set()
    labels: set[str] = set()
    for lib in found:
        real = os.path.realpath(lib.path)
        if real in paths:
            continue
        paths.add(real)
        label, n = lib.label, 2
        while label in labels:  # two different files of one version: keep both apart
            label = f"{lib.label[:-1]}-{n}]"
            n += 1
        labels.add(label)
        out.append(Library(label, lib.version_text, lib.path, lib.load, lib.origin))
    return out


_discovered: dict[tuple[Any, ...], list[Way]] = {}


def discover() -> list[Way]:
    """The ways to measure here: the native pool on every libcrypto with one thread and with
    every core (or ``$PLINIUS_AEAD_THREADS``), and ``cryptography`` on one core; pycryptodome
    only where neither is installed. Looked for once per process and settings."""
    installed = available_engines()
    from plinius.core.crypto_native import LIBCRYPTO_ENV, THREADS_ENV

    settings = (
        tuple(installed),
        os.environ.get(LIBCRYPTO_ENV, ""),
        os.environ.get(THREADS_ENV, ""),
        usable_cores(),
        tuple(sys.path),
    )
    found = _discovered.get(settings)
    if found is None:
        found = _discovered[settings] = _discover(installed)
    return list(found)


def _discover(installed: list[str]) -> list[Way]:
    ways: list[Way] = []
    if "openssl" in installed:
        from plinius.core.crypto_native import THREADS_ENV, default_threads

        cores = default_threads()
        counts = [cores] if os.environ.get(THREADS_ENV, "").strip() else sorted({1, cores})
        for lib in libraries():
            ways += [Way("openssl", n, lib) for n in counts]
    if "cryptography" in installed:
        ways.append(Way("cryptography", 1))
    if not ways:
        ways.append(Way(installed[0] if installed else "pycryptodome", 1))
    return ways


def build(way: Way, key: bytes) -> Engine:
    """The engine that runs ``way`` with ``key``."""
    if way.engine == "openssl":
        from plinius.core.crypto_native import OpenSSLEngine

        lib = way.library
        return OpenSSLEngine(key, threads=way.threads, libcrypto=lib.load if lib else None)
    return ENGINE_REGISTRY.load_usable(way.engine)(key)


# --- the machine -------------------------------------------------------------------------------


def cpu() -> dict[str, Any]:
    """What the table depends on: CPU model, a hash of its flags, the cores we may use."""
    model, digest = _cpu_model()
    return {"model": model, "flags_sha256": digest, "cores": usable_cores()}


@functools.cache
def _cpu_model() -> tuple[str, str]:
    model, flags = "unknown", ""
    try:
        with open("/proc/cpuinfo", "rb") as f:  # procfs: st_size is 0, read a bounded prefix
            raw = f.read(1 << 16)
        for line in raw.decode(errors="replace").splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = line.split(":", 1)[1].strip()
                break
    except (PliniusError, OSError):
        pass
    return model, hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[:16]


def _cryptography_version() -> str:
    try:
        import cryptography
        from cryptography.hazmat.backends.openssl.backend import backend

        return f"{cryptography.__version__} ({backend.openssl_version_text()})"
    except Exception:  # any failure: the version is then simply unknown
        return "?"


def versions(ways: Sequence[Way]) -> dict[str, str]:
    """The version of what runs each way (engine or library), for the cache key and reports."""
    out: dict[str, str] = {"plinius": __version__}
    for w in ways:
        if w.library is not None:
            out[w.library.label] = w.library.version_text
        elif w.engine == "cryptography":
            out["cryptography"] = _cryptography_version()
        else:
            with contextlib.suppress(metadata.PackageNotFoundError, ValueError):
                out[w.engine] = metadata.version(
                    "pycryptodome" if w.engine == "pycryptodome" else w.engine
                )
    return out


def table_key(ways: Sequence[Way]) -> dict[str, Any]:
    """What a cached table must match to be used: format, CPU, cores, ways and versions."""
    return {
        "format": TABLE_FORMAT,
        "cpu": cpu(),
        "ways": sorted(w.name for w in ways),
        "versions": versions(ways),
        "sizes": list(SIZES),
    }


def _key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


# --- the table ---------------------------------------------------------------------------------


@dataclass
class Table:
    """Seconds per call of each way, op and size: median wall time and CPU time (every thread
    of the process), measured on this machine."""

    key: dict[str, Any]
    created: str
    #: ``results[op][way][size] = (wall_s, cpu_s)``
    results: dict[str, dict[str, dict[int, tuple[float, float]]]]
    #: the 1-minute load average just before it was measured (others' work slows the ways
    #: down: see :data:`QUIET_LOAD`)
    load: float = 0.0
    #: "measured now" or "cached"
    source: str = "measured now"
    path: Path | None = None

    @property
    def sizes(self) -> list[int]:
        return sorted({s for per in self.results.values() for w in per.values() for s in w})

    @property
    def ways(self) -> list[str]:
        return sorted({w for per in self.results.values() for w in per})

    @property
    def provisional(self) -> bool:
        """Measured while other work ran: the multi-threaded ways may not have had their cores,
        so the first process that finds the machine quiet measures again."""
        return self.load > QUIET_LOAD

    def describe_source(self) -> str:
        """ "measured now" or "cached at <time> (<path>)", for reports."""
        if self.source == "cached":
            return f"cached at {self.created} ({self.path})"
        return "measured now"

    def to_json(self) -> dict[str, Any]:
        return {
            "format": TABLE_FORMAT,
            "key": self.key,
            "created": self.created,
            "load": self.load,
            "results": {
                op: {
                    way: {str(size): [wall, cpu_s] for size, (wall, cpu_s) in sorted(s.items())}
                    for way, s in sorted(per.items())
                }
                for op, per in self.results.items()
            },
        }


def _number(x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise ValueError("not a number")
    v = float(x)
    if not (math.isfinite(v) and 0 < v < 1e4):
        raise ValueError("out of range")
    return v


def parse_table(doc: Any, key: dict[str, Any], ways: Sequence[str]) -> Table:
    """A cached table, checked against what was discovered now: exactly the key, only the ways
    discovered, every op and size present, every time a finite positive number. Raises
    ValueError for anything else."""
    if not isinstance(doc, dict) or set(doc) != {"format", "key", "created", "load", "results"}:
        raise ValueError("not a table")
    if doc["format"] != TABLE_FORMAT or doc["key"] != key:
        raise ValueError("another machine, library or format")
    created = doc["created"]
    if not isinstance(created, str) or not _CREATED.fullmatch(created):
        raise ValueError("bad date")  # printed by `plinius engines`: no control characters
    when = _dt.datetime.fromisoformat(created)
    if when.tzinfo is None:
        raise ValueError("a date without a time zone")
    age = _dt.datetime.now(_dt.UTC) - when
    if not _dt.timedelta(minutes=-5) <= age <= CACHE_MAX_AGE:
        raise ValueError("too old, or from the future")
    load = doc["load"]
    if isinstance(load, bool) or not isinstance(load, int | float) or not 0 <= load < 1e6:
        raise ValueError("bad load")
    raw = doc["results"]
    if not isinstance(raw, dict) or set(raw) != set(OPS):
        raise ValueError("bad ops")
    want = {str(s) for s in SIZES}
    results: dict[str, dict[str, dict[int, tuple[float, float]]]] = {}
    for op in OPS:
        per = raw[op]
        if not isinstance(per, dict) or set(per) != set(ways):
            raise ValueError("names ways not discovered here, or misses some")
        results[op] = {}
        for way, sizes in per.items():
            if not _WAY_NAME.match(way) or not isinstance(sizes, dict) or set(sizes) != want:
                raise ValueError("bad way")
            cells: dict[int, tuple[float, float]] = {}
            for size, cell in sizes.items():
                if not isinstance(cell, list) or len(cell) != 2:
                    raise ValueError("bad cell")
                cells[int(size)] = (_number(cell[0]), _number(cell[1]))
            results[op][way] = cells
    return Table(key=key, created=created, results=results, load=float(load), source="cached")


def cache_dir() -> Path:
    """``$PLINIUS_CACHE_DIR``, else ``$XDG_CACHE_HOME/plinius``, else ``~/.cache/plinius``."""
    raw = os.environ.get(CACHE_ENV, "").strip()
    if raw:
        return Path(raw)
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "plinius"
    return Path.home() / ".cache" / "plinius"


def cache_path(key: dict[str, Any]) -> Path:
    """One file per machine key: hosts sharing a home directory keep their own tables."""
    return cache_dir() / f"engines-{_key_hash(key)}.json"


def read_cache(key: dict[str, Any], ways: Sequence[str]) -> Table | None:
    """The cached table for ``key``, or None when there is none or it is not a valid one."""
    path = cache_path(key)
    try:
        raw = read_regular(path, "engine table", nofollow=True, max_bytes=CACHE_MAX_BYTES)
        table = parse_table(json.loads(raw), key, ways)
    except (PliniusError, OSError, ValueError, TypeError, RecursionError, UnicodeDecodeError):
        return None
    table.path = path
    return table


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        print(f"warning: {message}", file=sys.stderr)


def write_cache(table: Table) -> Path | None:
    """Write ``table`` atomically; where the cache directory cannot be written, one warning on
    stderr and None (the table then lives in this process only)."""
    path = cache_path(table.key)
    try:
        private_dir(path.parent, "cache directory")
        atomic_write(path, json.dumps(table.to_json(), indent=1).encode() + b"\n", durable=False)
    except (PliniusError, OSError) as exc:
        _warn_once(
            f"cannot write the crypto engine table to {path.parent} ({exc}); it is measured "
            "in each process"
        )
        return None
    table.path = path
    return path


@contextlib.contextmanager
def _measuring_lock(directory: Path, wait_s: float = 15.0) -> Iterator[None]:
    """One process measures at a time (parallel test workers, several trainers starting): the
    others wait, then find its table. Without a usable directory, no lock."""
    lock = None
    try:
        private_dir(directory, "cache directory")
        deadline = time.monotonic() + wait_s
        while True:
            lock, _ = try_lock(str(directory / "engines.lock"), "engines.lock")
            if lock is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    except (PliniusError, OSError):
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


# --- measuring ---------------------------------------------------------------------------------


class _Buffers:
    """64 MiB of plaintext in 2 MiB segments and their records, page-aligned like the mirror's,
    reused by every way."""

    def __init__(self, total: int) -> None:
        self.count = total // SEGMENT
        self.plain = aligned_empty(total)
        self.plain[:] = 0x5A
        stride = align_up(SEGMENT + OVERHEAD, PAGE)
        self.sealed = aligned_empty(stride * self.count)
        self.records = [
            self.sealed[i * stride : i * stride + SEGMENT + OVERHEAD] for i in range(self.count)
        ]
        self.aads = [f"plinius-engines-{i}".encode() for i in range(self.count)]

    def seal_jobs(self, n: int, first: int = 0) -> list[tuple[bytes, Any, memoryview]]:
        return [
            (
                self.aads[i],
                self.plain[i * SEGMENT : (i + 1) * SEGMENT],
                memoryview(self.records[i].data),
            )
            for i in range(first, first + n)
        ]

    def open_jobs(self, n: int, first: int = 0) -> list[tuple[bytes, Any, Any, str]]:
        return [
            (self.aads[i], self.records[i], self.plain[i * SEGMENT : (i + 1) * SEGMENT], "x")
            for i in range(first, first + n)
        ]


def _time(call: Callable[[], None], calls: int) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(calls):
        call()
    return (time.perf_counter() - w0) / calls, (time.process_time() - c0) / calls


def measure(ways: Sequence[Way], *, rounds: int = 5, key: dict[str, Any] | None = None) -> Table:
    """Seal and open at every size with every way: interleaved rounds (every way and size in
    each), after one warm-up round; the median per call of wall and CPU seconds. About 1-3 s
    for five ways on two cores."""
    load = round(os.getloadavg()[0], 2)  # before: the measurement adds to it
    key_bytes = os.urandom(16)
    engines = {w.name: build(w, key_bytes) for w in ways}
    bufs = _Buffers(max(SIZES))
    samples: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
    for r in range(rounds + 1):
        order = list(engines.items())
        shift = r % len(order)
        order = order[shift:] + order[:shift]  # rotated: no way always runs first
        for size in SIZES:
            n = size // SEGMENT
            # a small call is timed over several, each on other segments (like the mirror's)
            calls = max(1, min(8, (16 * MiB) // size))
            for name, engine in order:
                for op in OPS:
                    spans = [(k * n) % bufs.count for k in range(calls)]
                    it = iter(spans)
                    if op == "seal":

                        def call(e: Engine = engine, it: Iterator[int] = it, n: int = n) -> None:
                            e.encrypt_many(bufs.seal_jobs(n, next(it)))

                    else:

                        def call(e: Engine = engine, it: Iterator[int] = it, n: int = n) -> None:
                            e.decrypt_many(bufs.open_jobs(n, next(it)))

                    # each way opens the segments it has just sealed
                    timed = _time(call, calls)
                    if r:  # round 0 warms up: pages, pools, caches
                        samples.setdefault((op, name, size), []).append(timed)
    results: dict[str, dict[str, dict[int, tuple[float, float]]]] = {op: {} for op in OPS}
    for (op, name, size), got in samples.items():
        wall = statistics.median(g[0] for g in got)
        cpu_s = statistics.median(g[1] for g in got)
        results[op].setdefault(name, {})[size] = (max(wall, 1e-9), max(cpu_s, 1e-9))
    return Table(
        key=key if key is not None else table_key(ways),
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        results=results,
        load=load,
    )


_memo: dict[str, Table] = {}


def _quiet_now(found: Table) -> bool:
    """Whether ``found`` was measured on a busy machine and this one is quiet now."""
    return found.provisional and os.getloadavg()[0] <= QUIET_LOAD


def table(ways: Sequence[Way], *, remeasure: bool = False) -> Table:
    """The speed table of ``ways`` on this machine: this process's, else the cached one, else
    measured now (and cached). ``remeasure`` measures and rewrites the cache regardless."""
    key = table_key(ways)
    digest = _key_hash(key)
    names = [w.name for w in ways]
    seen: Table | None = None  # a provisional table, measured again now the machine is quiet
    if not remeasure:
        found = _memo.get(digest)
        if found is not None:
            return found
        found = read_cache(key, names)
        if found is not None and not _quiet_now(found):
            _memo[digest] = found
            return found
        seen = found
    with _measuring_lock(cache_dir()):
        found = None
        if not remeasure:  # measured by another process while we waited?
            found = read_cache(key, names)
            if found is not None and seen is not None and found.created == seen.created:
                found = None
        if found is None:
            found = measure(ways, key=key)
            write_cache(found)
    _memo[digest] = found
    return found


__all__ = [
    "OPS",
    "SIZES",
    "Library",
    "Table",
    "Way",
    "build",
    "cache_dir",
    "cache_path",
    "cpu",
    "discover",
    "libraries",
    "measure",
    "parse_table",
    "read_cache",
    "table",
    "table_key",
    "write_cache",
]
