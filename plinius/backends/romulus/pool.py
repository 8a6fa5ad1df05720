"""A thin typed wrapper around the native Romulus engine (``plinius._romulus``).

Everything that matters for crash consistency happens in C (see ``native/romulus.h`` for the
protocol and its four fences); this module turns return codes into plinius errors and C memory
into memoryviews. Offsets are relative to the start of the ``main`` region, as stored in roots.

Views are slices of one ``ffi.buffer`` over the whole mapping. That buffer keeps the mapping
alive, so a view that outlives :meth:`Pool.close` still points at mapped memory (the unmap waits
for the last view) instead of at whatever the address space holds next.

The benchmark loop and the crash-simulation hooks (``native/romulus_bench.h``, ``romulus_sim.h``)
are not the engine's API: they are bound by the same module but kept in the last section here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, make_dataclass
from typing import TYPE_CHECKING, Any, Literal

from plinius.backends.romulus.device import DeviceModel, resolve_device
from plinius.core.errors import (
    BackendError,
    ConfigError,
    FormatError,
    NotFoundError,
    PliniusError,
    PoolCorruptError,
    PoolFullError,
    PoolLockedError,
    TruncatedError,
    UnsupportedVersionError,
)
from plinius.core.fsutil import check_path

try:
    from plinius._romulus import ffi, lib
except ImportError as exc:  # pragma: no cover - only without a build
    raise BackendError(
        "the native Romulus engine (plinius._romulus) is not built: run `pip install -e .` "
        f"or `python setup.py build_ext --inplace` ({exc})"
    ) from exc

Mode = Literal["pmem", "msync", "none"]
MODES: tuple[Mode, ...] = ("pmem", "msync", "none")
FLUSHES: tuple[str, ...] = ("clwb", "clflushopt", "clflush")
#: ``commit=`` of :class:`Pool`: ``background`` (the default) returns once the transaction is
#: durable (COPYING persistent) and copies main to back on the pool's copier thread; ``sync``
#: copies inside :meth:`Pool.commit`, as the published RomulusLog does
COMMITS: tuple[str, ...] = ("sync", "background")
ROOT_NAME_MAX: int = lib.ROM_ROOT_NAME_MAX
MAX_ROOTS: int = lib.ROM_MAX_ROOTS
MIN_POOL_SIZE: int = lib.ROM_MIN_POOL
MAX_POOL_SIZE: int = lib.ROM_MAX_POOL
#: ``create=`` of :class:`Pool`: False never creates, True creates a missing or empty file (and
#: redoes an unfinished creation that holds no data), "force" empties any file and creates anew
CreatePolicy = bool | Literal["force"]

_STATES = {lib.ROM_IDLE: "idle", lib.ROM_MUTATING: "mutating", lib.ROM_COPYING: "copying"}
_OPENED = {
    lib.ROM_OPENED: "opened",
    lib.ROM_CREATED: "created",
    lib.ROM_RECREATED: "recreated",
    lib.ROM_ROLLED_BACK: "rolled back",
    lib.ROM_ROLLED_FWD: "rolled forward",
}
_ERRORS: dict[int, type[PliniusError]] = {
    lib.ROM_E_LOCKED: PoolLockedError,
    lib.ROM_E_BADMAGIC: FormatError,
    lib.ROM_E_TRUNCATED: TruncatedError,
    lib.ROM_E_VERSION: UnsupportedVersionError,
    lib.ROM_E_CORRUPT: PoolCorruptError,
    lib.ROM_E_FULL: PoolFullError,
    lib.ROM_E_FLUSH: ConfigError,
    lib.ROM_E_NOENT: NotFoundError,
}


def _raise(rc: int) -> None:
    msg = ffi.string(lib.rom_last_error()).decode(errors="replace")
    raise _ERRORS.get(rc, BackendError)(msg)


def _name(text: str) -> bytes:
    raw = text.encode()
    if not 0 < len(raw) <= ROOT_NAME_MAX or b"\0" in raw:
        raise BackendError(f"root name {text!r} must have 1 to {ROOT_NAME_MAX} bytes and no NUL")
    return raw


def cpu_flush() -> str:
    """The best cache-line flush instruction this CPU has (cpuid), or ``"none"``."""
    return str(ffi.string(lib.rom_flush_name(lib.rom_cpu_flush())).decode())


def cpu_has(flush: str) -> bool:
    return flush in FLUSHES and bool(lib.rom_cpu_has(FLUSHES.index(flush)))


#: How a field of ``rom_stats`` (native/romulus.h, where the pool statistics are declared and
#: documented, once) appears in :class:`PoolStats`: as (name, type, conversion). A field not
#: listed is an ``int`` under its C name, except ``*_ns``, which is ``*_s`` in seconds. None:
#: not shown (``dev_on``: :attr:`Pool.device` says it; ``bg_reserved``: padding).
_STAT_AS: dict[str, tuple[str, type, Callable[[int], Any]] | None] = {
    "state": ("state", str, lambda v: _STATES.get(v, "?")),
    "mode": ("mode", str, lambda v: MODES[v]),
    "flush": ("flush", str, lambda v: ffi.string(lib.rom_flush_name(v)).decode()),
    "real_pm": ("real_pm", bool, bool),
    "opened_as": ("opened_as", str, lambda v: _OPENED.get(v, "?")),
    "in_txn": ("in_txn", bool, bool),
    "dev_on": None,
    "commit_mode": ("commit", str, lambda v: COMMITS[v]),
    "bg_reserved": None,
}


def _seconds(ns: int) -> float:
    return ns * 1e-9


def _stat_fields() -> list[tuple[str, str, type, Callable[[int], Any]]]:
    """(C name, Python name, type, conversion) of every shown field of ``rom_stats``, in the
    order the header declares them: read from the cffi declaration, itself generated from the
    header (native/build_romulus.py)."""
    out: list[tuple[str, str, type, Callable[[int], Any]]] = []
    for cname, _ in ffi.typeof("rom_stats").fields:
        if cname in _STAT_AS:
            shown = _STAT_AS[cname]
            if shown is not None:
                out.append((cname, *shown))
        elif cname.endswith("_ns"):
            out.append((cname, cname[: -len("_ns")] + "_s", float, _seconds))
        else:
            out.append((cname, cname, int, int))
    return out


_STAT_FIELDS = _stat_fields()

if TYPE_CHECKING:

    class PoolStats:
        """For the type checker: the fields are generated from ``rom_stats`` at import."""

        def __init__(self, **fields: Any) -> None: ...
        def __getattr__(self, name: str) -> Any: ...
        def as_dict(self) -> dict[str, Any]: ...

else:

    def _as_dict(self: Any) -> dict[str, Any]:
        return asdict(self)

    PoolStats = make_dataclass(
        "PoolStats",
        [(name, kind) for _, name, kind, _ in _STAT_FIELDS],
        frozen=True,
        namespace={
            "as_dict": _as_dict,
            "__doc__": "A snapshot of the pool's persistent and per-session counters: one field "
            "per field of rom_stats (native/romulus.h documents each), generated from its cffi "
            "declaration. Codes are names (state, mode, flush, opened_as, commit), flags bools, "
            "*_ns fields *_s in seconds; dev_* are zero without a device model; bg_* are the "
            "background commit's: the copies the copier made and the time it spent (off the "
            "critical path), and bg_wait_s the time rom_begin/close waited for it (the part "
            "that was not hidden), this session.",
        },
    )
    PoolStats.__module__ = __name__  # make_dataclass(module=) is 3.12+: pickles by this name


class Pool:
    """A Romulus pool file: open (creating or recovering it), transactions, allocator, roots.

    ``size`` is the file size: required to create, checked against an existing pool when given.
    ``create`` (:data:`CreatePolicy`): a file with content is never overwritten unless it is
    ``"force"``; a damaged pool raises :class:`PoolCorruptError`, a foreign file
    :class:`FormatError`. ``mode`` (pmem/msync/none) and ``flush`` (clwb/clflushopt/clflush)
    default to the ``PLINIUS_PM_MODE`` / ``PLINIUS_PM_FLUSH`` environment variables, then to
    pmem and the best instruction the CPU has. ``device`` (:mod:`.device`: a name
    such as ``"optane-1dimm"``, a :class:`DeviceModel`, or ``"none"``) throttles flushes, fences
    and :meth:`model_read` as the modelled PM would; it defaults to ``PLINIUS_PM_DEVICE``, then
    to none (DRAM speed). ``create=False`` on a missing file raises
    :class:`~plinius.core.errors.NotFoundError` and creates nothing.

    Every value the engine reads from the file is validated (the file is attacker-controlled
    storage): a violation is a :class:`PoolCorruptError` naming the field, never a crash.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        size: int | None = None,
        *,
        create: CreatePolicy = True,
        mode: str | None = None,
        flush: str | None = None,
        device: str | DeviceModel | None = None,
        commit: str | None = None,
        bg_min: int | None = None,
    ) -> None:
        self.path = check_path(path, "pool")  # a NUL would name another file in C
        if commit is not None and commit not in COMMITS:
            raise ConfigError(f"commit={commit!r}: use one of {', '.join(COMMITS)}")
        if bg_min is not None and not 0 <= bg_min < 1 << 64:
            raise ConfigError(f"bg_min={bg_min!r}: use a byte count >= 0")
        if create not in (True, False, "force"):
            raise ConfigError(f"create={create!r}: use True, False or 'force'")
        if mode is not None and mode not in MODES:
            raise ConfigError(f"mode={mode!r}: use one of {', '.join(MODES)}")
        if flush is not None and flush not in FLUSHES:
            raise ConfigError(f"flush={flush!r}: use one of {', '.join(FLUSHES)}")
        if size is not None and size < 0:
            raise ConfigError(f"pool size must be positive, got {size}")
        if size is not None and size > MAX_POOL_SIZE:
            raise ConfigError(f"pool size {size} is too large: at most {MAX_POOL_SIZE} bytes")
        self.device: DeviceModel | None = resolve_device(device)
        raw = os.fsencode(self.path)
        policy = (
            lib.ROM_CREATE_FORCE
            if create == "force"
            else lib.ROM_CREATE_AUTO
            if create
            else lib.ROM_CREATE_NEVER
        )
        out = ffi.new("rom_pool **")
        dev = ffi.NULL
        if self.device is not None:
            dev = ffi.new(
                "rom_device *",
                {
                    "write_bps": self.device.write_bps,
                    "read_bps": self.device.read_bps,
                    "fence_ns": self.device.fence_ns,
                    "read_ns": self.device.read_latency_ns,
                },
            )
        rc = lib.rom_open_dev(
            raw,
            len(raw),
            size or 0,
            policy,
            lib.ROM_MODE_AUTO if mode is None else MODES.index(mode),
            lib.ROM_FLUSH_AUTO if flush is None else FLUSHES.index(flush),
            dev,
            out,
        )
        if rc:
            _raise(rc)
        handle = out[0]
        self._h = handle
        st = self._raw_stats()
        self.size: int = st.pool_size
        self.region_size: int = st.region_size
        self.main_off: int = st.main_off
        self.back_off: int = st.back_off
        self.mode: str = MODES[st.mode]
        self.flush_instruction: str = ffi.string(lib.rom_flush_name(st.flush)).decode()
        self.real_pm: bool = bool(st.real_pm)
        self.opened_as: str = _OPENED.get(st.opened_as, "?")
        # The mapping lives as long as this cdata: the pool and every view hold it.
        keep = ffi.gc(lib.rom_base(handle), lambda _base, h=handle: lib.rom_release(h))
        self._mv: memoryview = memoryview(ffi.buffer(keep, self.size))
        self._ro: memoryview = self._mv.toreadonly()
        self._closed = False
        if commit is not None or bg_min is not None:
            self.set_commit(commit, bg_min)

    # --- life cycle ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def _check(self) -> None:
        if self._closed:
            raise BackendError(f"pool {self.path} is closed")

    def close(self) -> None:
        """Abort an open transaction, persist, unlock. Idempotent; views stay readable."""
        if self._closed:
            return
        self._closed = True
        lib.rom_close(self._h)
        # dropping our references unmaps now, or when the last view handed out dies
        del self._mv, self._ro

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.mode}/{self.flush_instruction}"
        return f"<Pool {self.path} {self.size} B {state}>"

    # --- transactions -------------------------------------------------------------------------

    @property
    def in_txn(self) -> bool:
        return not self._closed and bool(self._raw_stats().in_txn)

    def begin(self) -> None:
        """Start a durable transaction (takes the pool's writer lock; FENCE 1)."""
        self._check()
        rc = lib.rom_begin(self._h)
        if rc:
            _raise(rc)

    def commit(self) -> None:
        """Make every declared store durable and visible: fences 2, 3 and 4 (with background
        commit, fence 4 and the copy to back run on the copier thread after this returns)."""
        self._check()
        rc = lib.rom_commit(self._h)
        if rc:
            _raise(rc)

    @property
    def commit_mode(self) -> str:
        """``background`` or ``sync`` (see :data:`COMMITS`)."""
        self._check()
        return COMMITS[self._raw_stats().commit_mode]

    def set_commit(self, commit: str | None = None, bg_min: int | None = None) -> None:
        """Choose sync or background commit (None keeps it); ``bg_min``: smallest copy to
        back, in bytes, worth handing to the copier thread (smaller ones stay inline)."""
        self._check()
        if commit is not None and commit not in COMMITS:
            raise ConfigError(f"commit={commit!r}: use one of {', '.join(COMMITS)}")
        mode = COMMITS.index(commit) if commit is not None else self._raw_stats().commit_mode
        rc = lib.rom_set_commit(self._h, mode, (1 << 64) - 1 if bg_min is None else bg_min)
        if rc:
            _raise(rc)

    def wait_copy(self) -> float:
        """Wait until back holds the last commit (the background copy is done); seconds."""
        self._check()
        return int(lib.rom_wait_copy(self._h)) * 1e-9

    def abort(self) -> None:
        """Roll main back to the last committed state."""
        self._check()
        rc = lib.rom_abort(self._h)
        if rc:
            _raise(rc)

    @contextmanager
    def transaction(self) -> Iterator[Pool]:
        """``with pool.transaction():`` commits on success, aborts on an exception."""
        self.begin()
        try:
            yield self
        except BaseException:
            if not self._closed:
                self.abort()
            raise
        self.commit()

    def declare(self, offset: int, length: int) -> None:
        """Add main[offset, offset+length) to the transaction's log (before writing it)."""
        rc = lib.rom_log(self._h, offset, length)
        if rc:
            _raise(rc)

    def reader_stats(self) -> dict[str, float]:
        """This session's reader thread: lines flushed ahead, jobs it ran (reads and flushes),
        seconds it spent on them, seconds callers waited for it (or ran pieces themselves),
        pieces a caller ran itself because the reader had not claimed them, and jobs left to
        the caller because the reader had been late (a busy machine)."""
        self._check()
        out = ffi.new("uint64_t[6]")
        lib.rom_reader_stats(self._h, out)
        return {
            "ahead_lines": int(out[0]),
            "jobs": int(out[1]),
            "job_s": int(out[2]) / 1e9,
            "wait_s": int(out[3]) / 1e9,
            "taken_back": int(out[4]),
            "inline": int(out[5]),
        }

    def flush_ahead(self, offset: int, length: int) -> None:
        """main[offset, offset+length) is final in this transaction: its whole lines are
        written back now on the pool's reader thread (pmem mode) while the caller goes on, and
        the commit flushes only the rest (``rom_flush_ahead``). Never store to it again."""
        self._bounds(offset, length)
        rc = lib.rom_flush_ahead(self._h, offset, length)
        if rc:
            _raise(rc)

    # --- memory -------------------------------------------------------------------------------

    def _bounds(self, offset: int, length: int) -> None:
        self._check()
        if offset < 0 or length < 0 or offset + length > self.region_size:
            raise BackendError(
                f"range [{offset}, {offset + length}) is outside the {self.region_size}-byte "
                f"main region of pool {self.path}"
            )

    def writable(self, offset: int, length: int) -> memoryview:
        """Declare main[offset, offset+length) and return it writable (inside a transaction)."""
        self._bounds(offset, length)
        self.declare(offset, length)
        at = self.main_off + offset
        return self._mv[at : at + length]

    def view(self, offset: int, length: int, *, committed: bool = False) -> memoryview:
        """A read-only view of main, or of back (the last committed state) with ``committed``."""
        self._bounds(offset, length)
        if committed:  # back is current once the background copy is done; main always is
            lib.rom_wait_copy(self._h)
        at = (self.back_off if committed else self.main_off) + offset
        return self._ro[at : at + length]

    def read_start(self, offset: int, out: memoryview, *, committed: bool = False) -> None:
        """Start copying ``out.nbytes`` bytes of main (or of back, ``committed``) at ``offset``
        into ``out`` on the pool's reader thread (no GIL needed there) and return at once;
        :meth:`read_wait` returns once they are there. ``out`` must stay alive and untouched
        until then. One read in flight at a time (a second start waits for the first)."""
        n = out.nbytes
        self._bounds(offset, n)
        if out.readonly:
            raise BackendError("read_start needs writable memory")
        rc = lib.rom_read_start(self._h, ffi.from_buffer(out), offset, n, 1 if committed else 0)
        if rc:
            _raise(rc)

    def read_wait(self) -> float:
        """Wait for the read :meth:`read_start` started (the GIL released); seconds waited."""
        if self._closed:
            return 0.0
        return int(lib.rom_read_wait(self._h)) / 1e9

    def model_read(self, nbytes: int) -> None:
        """Device model: wait as reading ``nbytes`` from the modelled media would (else no-op)."""
        self._check()
        if self.device is not None and nbytes >= 0:
            lib.rom_model_read(self._h, nbytes)

    def raw(self) -> memoryview:
        """The whole mapping, read-only (header, main, back): for tests and inspection."""
        self._check()
        lib.rom_wait_copy(self._h)  # back complete
        return self._ro

    # --- allocator ----------------------------------------------------------------------------

    def alloc(self, size: int) -> int:
        """Allocate ``size`` bytes in main (inside a transaction); returns the offset."""
        if size < 0:
            raise BackendError(f"allocation size must be >= 0, got {size}")
        self._check()
        off = ffi.new("uint64_t *")
        rc = lib.rom_alloc(self._h, size, off)
        if rc:
            _raise(rc)
        return int(off[0])

    def free(self, offset: int) -> None:
        self._check()
        rc = lib.rom_free(self._h, offset)
        if rc:
            _raise(rc)

    def capacity(self, offset: int, *, committed: bool = False) -> int:
        """Usable bytes of the block at ``offset`` (at least what was asked for).

        ``committed`` checks the block header in back (the last commit) instead of main.
        """
        self._check()
        if not 0 <= offset < 1 << 64:
            raise BackendError(f"pool {self.path}: offset {offset} is not an allocated block")
        cap = ffi.new("uint64_t *")
        rc = lib.rom_block_cap(self._h, offset, 1 if committed else 0, cap)
        if rc:
            _raise(rc)
        return int(cap[0])

    def blob_root(self, name: str, *, committed: bool = False) -> tuple[int, int] | None:
        """A root that names an allocated block: ``(offset, size)``, or None when absent.

        Roots are plain numbers to the engine; a blob root must be ``(0, 0)`` (empty) or the
        offset of an allocated block at least ``size`` bytes long. Anything else was not written
        by plinius: :class:`PoolCorruptError` naming the root.
        """
        found = self.root(name, committed=committed)
        if found is None:
            return None
        off, size = found
        if off == 0:
            if size == 0:
                return found
            cap = -1
        else:
            try:
                cap = self.capacity(off, committed=committed)
            except BackendError:  # not a block (a bad top is a PoolCorruptError: passes)
                cap = -1
        if cap < size:
            where = "committed root" if committed else "root"
            raise PoolCorruptError(
                f"pool {self.path} is corrupt: {where} {name!r} points at offset {off:#x} "
                f"with size {size}, which is not an allocated block that large"
            )
        return found

    # --- roots --------------------------------------------------------------------------------

    def root(self, name: str, *, committed: bool = False) -> tuple[int, int] | None:
        """``(offset, size)`` stored under ``name``, or None. ``committed`` reads back's table."""
        self._check()
        off, size = ffi.new("uint64_t *"), ffi.new("uint64_t *")
        rc = lib.rom_root_get(self._h, _name(name), 1 if committed else 0, off, size)
        if rc < 0:
            _raise(rc)
        return (int(off[0]), int(size[0])) if rc == 1 else None

    def set_root(self, name: str, offset: int, size: int) -> None:
        self._check()
        rc = lib.rom_root_set(self._h, _name(name), offset, size)
        if rc:
            _raise(rc)

    def del_root(self, name: str) -> None:
        self._check()
        rc = lib.rom_root_del(self._h, _name(name))
        if rc:
            _raise(rc)

    def roots(self, *, committed: bool = False) -> dict[str, tuple[int, int]]:
        self._check()
        name = ffi.new(f"char[{ROOT_NAME_MAX + 1}]")
        off, size = ffi.new("uint64_t *"), ffi.new("uint64_t *")
        out: dict[str, tuple[int, int]] = {}
        for i in range(MAX_ROOTS):
            if lib.rom_root_at(self._h, i, 1 if committed else 0, name, off, size) == 1:
                out[ffi.string(name).decode(errors="replace")] = (int(off[0]), int(size[0]))
        return out

    # --- statistics ---------------------------------------------------------------------------

    def _raw_stats(self) -> Any:
        st = ffi.new("rom_stats *")
        lib.rom_get_stats(self._h, st)
        return st

    def stats(self) -> PoolStats:
        self._check()
        st = self._raw_stats()
        return PoolStats(**{name: conv(getattr(st, c)) for c, name, _, conv in _STAT_FIELDS})

    # --- benchmark loop and test hooks (native/romulus_bench.h, romulus_sim.h) -------------------
    # Not the engine's API (native/romulus.h): the same compiled module binds them for the
    # benchmarks and the crash tests only; nothing in the backend calls them.

    def bench_swaps(
        self, offset: int, nelems: int, swaps_per_txn: int, ntxn: int, seed: int = 1
    ) -> float:
        """Run ``ntxn`` transactions of random uint64 swaps in C; returns the elapsed seconds."""
        self._check()
        elapsed = ffi.new("double *")
        rc = lib.rom_bench_swaps(self._h, offset, nelems, swaps_per_txn, ntxn, seed, elapsed)
        if rc:
            _raise(rc)
        return float(elapsed[0])

    def sim_arm(
        self,
        crash_at: int = 0,
        kind: Literal["process", "power"] = "process",
        seed: int = 1,
        skip_fences: int = 0,
    ) -> None:
        """Test hook: exit with CRASH_EXIT at the ``crash_at``-th flush/fence (0: only count).

        ``power`` first overwrites the file with what a power failure could leave: the flushed
        and fenced lines plus a random subset of the pending ones. ``skip_fences`` (bit n = the
        n-th fence of each transaction) breaks the protocol on purpose.
        """
        self._check()
        rc = lib.rom_sim_arm(self._h, crash_at, 1 if kind == "process" else 2, seed, skip_fences)
        if rc:
            _raise(rc)


# --- test hooks (native/romulus_sim.h): simulated crashes, for the crash tests only ------------


def sim_copier(pool: Pool, *, hold: bool = False, delay_ms: int = 0) -> None:
    """Test hook: ``hold`` starts each background copy only once a caller waits for it (so a
    simulated crash in the copy lands during that wait); ``delay_ms`` sleeps half-way through."""
    pool._check()
    lib.rom_sim_bg(pool._h, 1 if hold else 0, delay_ms)


#: exit status of a process whose simulated crash fired
CRASH_EXIT: int = lib.ROM_CRASH_EXIT


def sim_disarm() -> None:
    """Disarm the simulated crash (of whichever pool is armed)."""
    lib.rom_sim_disarm()


def sim_events() -> int:
    """Flush/fence events counted since the last :meth:`Pool.sim_arm`."""
    return int(lib.rom_sim_events())
