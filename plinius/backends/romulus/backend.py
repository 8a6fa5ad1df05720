"""``romulus``: blobs in a byte-addressable persistent-memory pool, replaced by RomulusLog txns.

A blob is one allocation in the pool's ``main`` region, named by a root (the blob name). Writing
a new version is ONE durable transaction: ``begin_write`` starts it and (re)points the root,
``txn.view`` declares the range in the log and hands out memory straight inside ``main`` for the
caller to encrypt into, ``commit`` runs the engine's flush + copy-to-back with its four fences.
A crash or abort before commit rolls main back to the last committed state.

Reads are zero-copy views into the pool: into ``main`` normally, into ``back`` (which holds the
last committed state) while a write transaction is open, so a reader never sees a half-written
version. Spec: ``romulus:/dev/shm/plinius.pool?size=1G&mode=pmem&flush=clwb&device=optane-2dimm``.

BACKGROUND COMMIT. ``commit=background`` (the default) returns from ``commit`` once the
transaction is durable and copies main to back on the pool's copier thread; the next write
transaction waits for that copy (``commit=sync``: copy inside ``commit``). Reads of main never
wait. ``IoStats.flush_s`` of a commit is its critical path; ``describe()`` has the copier's time.

POOL SIZE. A pool has a fixed size, chosen at creation: ``size=`` if given, else the caller's
``size_hint=`` (what it is about to store, as computed by :func:`suggested_pool_size`; ``plinius
train`` passes it), else :data:`DEFAULT_POOL_SIZE`. Both are ignored for an existing pool, which
keeps its size. A pool that turns out too small fails a save with a clear
:class:`~plinius.core.errors.PoolFullError` and keeps the last committed version. Pools do not grow:
growing means moving the twin copy (``back``) and changing the layout in place, a new
crash-recovery protocol for a rare event, while the caller can say up front what it stores.

DEVICE MODEL. ``device=optane-1dimm`` (2, 4, 6 DIMMs; ``none`` = DRAM speed; default
``PLINIUS_PM_DEVICE``) makes the engine wait as modelled Optane DIMMs would: write bandwidth
and a per-fence cost at every fence, read bandwidth and latency once per blob handed out by
:meth:`RomulusBackend.read`. ``map`` (random sample reads) is not modelled. See
:mod:`plinius.backends.romulus.device`; ``describe()`` reports the model, labelled as a model.

Creation never overwrites: ``create=auto`` (the default) creates the pool only when the file is
missing or empty, or when it is an unfinished creation (killed before the pool's magic was
written, so it never held data). A file with any other content is refused: a damaged pool with
:class:`~plinius.core.errors.PoolCorruptError`, a foreign file with
:class:`~plinius.core.errors.FormatError`; its bytes are left untouched. ``create=force``
empties the file and creates a new pool over it (once, deliberately: it destroys what the file
held); ``create=never`` requires an existing pool and creates nothing, no file and no directory: a
missing pool is :class:`~plinius.core.errors.NotFoundError` ("no pool at PATH: nothing to verify"),
for the read-only commands (verify, infer, export). It still runs recovery on an existing pool
(a pool interrupted mid-commit is rolled back or forward, as at every open) and records the
holder's pid in the header: it does not create, it is not a read-only mapping.

The pool file is attacker-controlled storage: the engine validates every header field,
allocator pointer, size and free-list walk it reads, and this backend checks that each root
names an allocated block large enough for its blob, so damage is a ``PoolCorruptError`` naming
the field, never a crash, hang or stray write.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from plinius.backends.base import (
    Backend,
    Blob,
    Durability,
    IoStats,
    RunsOn,
    WriteTxn,
    check_blob_name,
    check_range,
)
from plinius.backends.fsinfo import block_device_facts, mount_of
from plinius.backends.romulus.device import DEVICES, NOTE, DeviceModel, device_model
from plinius.backends.romulus.pool import (
    COMMITS,
    FLUSHES,
    MAX_POOL_SIZE,
    MIN_POOL_SIZE,
    MODES,
    CreatePolicy,
    Pool,
)
from plinius.core.errors import (
    BackendError,
    ConfigError,
    NotFoundError,
    PoolCorruptError,
    PoolFullError,
)
from plinius.core.fsutil import check_path
from plinius.core.memory import StagingBuffer
from plinius.core.units import fmt_bytes, parse_size

#: size of a pool created without ``size=``: room for a 100 MB mirror being replaced by a
#: bigger one (old and new coexist inside the transaction) plus the MNIST sample area
DEFAULT_POOL_SIZE = 1 << 30
_OPTIONS = ("size", "size_hint", "mode", "flush", "create", "device", "commit")
_CREATE: dict[str, CreatePolicy] = {"auto": True, "never": False, "force": "force"}
_MIB = 1 << 20
_PAGE = 4096
#: smallest pool :func:`suggested_pool_size` returns
MIN_SUGGESTED_SIZE = 4 * _MIB


def _block(nbytes: int) -> int:
    """Room one blob of ``nbytes`` takes in main: 64-byte header, page-aligned data, a page."""
    return 0 if nbytes == 0 else (nbytes + 64 + 2 * _PAGE - 1) // _PAGE * _PAGE


def suggested_pool_size(mirror_bytes: int, data_bytes: int = 0, extra_bytes: int = 0) -> int:
    """A pool file size with room for what a trainer stores, for ``size_hint=``.

    ``mirror_bytes``: the encrypted mirror (a save replacing it by one of another size holds
    both inside the transaction, so it counts twice); ``data_bytes``: the training-set sample
    area (the sealed data file's size is a safe estimate); ``extra_bytes``: anything else.
    Main gets that, the allocator metadata and 1 MiB for small blobs (headers, freshness),
    plus 1/8 for fragmentation, rounded up to a MiB; the file holds main twice (its committed
    twin, ``back``) plus the header page. At least :data:`MIN_SUGGESTED_SIZE`.
    """
    for name, n in (("mirror_bytes", mirror_bytes), ("data_bytes", data_bytes)):
        if n < 0:
            raise ConfigError(f"suggested_pool_size: {name}={n} must be >= 0")
    if extra_bytes < 0:
        raise ConfigError(f"suggested_pool_size: extra_bytes={extra_bytes} must be >= 0")
    need = 2 * _block(mirror_bytes) + _block(data_bytes) + _block(extra_bytes)
    need += 64 * 1024 + _MIB  # allocator metadata + root table, small blobs
    need += need // 8
    region = -(-need // _MIB) * _MIB
    size = -(-(_PAGE + 2 * region) // _MIB) * _MIB
    if size > MAX_POOL_SIZE:
        raise ConfigError(
            f"suggested_pool_size: {fmt_bytes(size)} is more than a pool can be "
            f"({fmt_bytes(MAX_POOL_SIZE)})"
        )
    return max(size, MIN_SUGGESTED_SIZE)


def _pool_size(text: str, option: str = "size") -> int:
    """``size=`` as bytes, within what a pool can be (a clear error, never an overflow)."""
    try:
        size = parse_size(text, option)
    except (OverflowError, ValueError):  # e.g. 400 digits: float() gives inf
        raise ConfigError(f"romulus: {option}={text!r} is not a usable size") from None
    if size <= 0:
        raise ConfigError(f"romulus: {option}={text!r} must be positive, e.g. {option}=1G")
    if size < MIN_POOL_SIZE:
        raise ConfigError(
            f"romulus: {option}={text!r} is too small: a pool needs at least "
            f"{fmt_bytes(MIN_POOL_SIZE)}"
        )
    if size > MAX_POOL_SIZE:
        raise ConfigError(
            f"romulus: {option}={text!r} is too large: at most {fmt_bytes(MAX_POOL_SIZE)}"
        )
    return size


class RomulusWriteTxn(WriteTxn):
    """One durable transaction replacing one blob."""

    def __init__(self, backend: RomulusBackend, blob: str, size: int, offset: int) -> None:
        super().__init__(blob, size)
        self._backend = backend
        self._pool = backend.pool
        self._offset = offset
        self._t0 = time.perf_counter()
        self._views: list[memoryview] = []

    def view(self, offset: int, length: int) -> memoryview:
        self._check_range(offset, length)
        mv = self._pool.writable(self._offset + offset, length)
        self._views.append(mv)
        return mv

    def written(self, offset: int, length: int) -> None:
        """The sealed range is final: its lines are flushed now on the pool's reader thread
        while the caller seals the next batch, so the commit flushes only what is left."""
        self._check_range(offset, length)
        self._pool.flush_ahead(self._offset + offset, length)

    def _finish(self) -> None:
        self._done = True
        self._backend._txn = None
        # Views die with the transaction: a store through one after commit would bypass the log.
        for mv in self._views:
            with contextlib.suppress(BufferError):  # still exported (e.g. a numpy array)
                mv.release()
        self._views.clear()

    def commit(self) -> IoStats:
        if self._done:
            raise BackendError(f"write transaction on {self.blob!r} is already finished")
        t0 = time.perf_counter()
        try:
            self._pool.commit()
        finally:
            self._finish()
        t1 = time.perf_counter()
        # the data went straight into PM while it was encrypted: the commit is the flush of the
        # logged lines plus, with commit=sync, the copy to back. With commit=background (the
        # default) the copy runs on the copier thread after this returns: flush_s is the
        # critical path only; describe() reports the copier's time (romulus_bg_copy_s)
        return IoStats(bytes=self.size, write_s=0.0, flush_s=t1 - t0, total_s=t1 - self._t0)

    def abort(self) -> None:
        if self._done:
            return
        try:
            if not self._pool.closed:
                self._pool.abort()
        finally:
            self._finish()


class RomulusBackend(Backend):
    """A RomulusLog pool file (emulated PM on /dev/shm by default, as in the paper)."""

    name = "romulus"
    byte_addressable = True
    summary = "RomulusLog transactions in a byte-addressable PM pool (twin copies, 4 fences)"
    example_location = "/dev/shm/plinius.pool"
    default_root = "shm"
    probe_options: ClassVar[dict[str, str]] = {"size": "4M"}
    ranged_read = True
    durability_levels: ClassVar[tuple[Durability, ...]] = ("power-fail", "process-crash")
    read_only_open = True  # create=never: an existing pool only, no file and no directory made

    @classmethod
    def location_in(cls, directory: str) -> str:
        return f"{directory.rstrip('/')}/romulus.pool"

    @classmethod
    def creation_options(cls, mirror_bytes: int, data_bytes: int) -> dict[str, str | int]:
        """A new pool sized from what it will hold (see :func:`suggested_pool_size`)."""
        return {"size_hint": suggested_pool_size(mirror_bytes, data_bytes)}

    def __init__(self, location: str, **options: Any) -> None:
        super().__init__(location, **options)
        self._private = StagingBuffer()  # reads land here: never checked in the shared pool
        unknown = set(options) - set(_OPTIONS)
        if unknown:
            raise ConfigError(
                f"romulus backend does not take option(s) {', '.join(sorted(unknown))}; it "
                f"knows: size=1G (pool file size, at creation), size_hint= (the same, unless "
                f"size= is given), mode={'|'.join(MODES)}, flush={'|'.join(FLUSHES)}, "
                f"create={'|'.join(_CREATE)}, device={'|'.join(DEVICES)}, "
                f"commit={'|'.join(COMMITS)}"
            )
        size = _pool_size(str(options["size"])) if "size" in options else None
        hint = (
            _pool_size(str(options["size_hint"]), "size_hint") if "size_hint" in options else None
        )
        device: str | DeviceModel | None = None
        if "device" in options:
            raw_device = options["device"]
            if isinstance(raw_device, DeviceModel):
                device = raw_device
            else:
                device = str(raw_device)
                device_model(device, "romulus: device")  # validated before anything is opened
        create = str(options.get("create", "auto"))
        if create not in _CREATE:
            raise ConfigError(
                f"romulus: create={create!r}; use auto (missing or empty file only), never, or "
                "force (empties the file and creates a new pool)"
            )
        mode = options.get("mode")
        flush = options.get("flush")
        if mode is not None and mode not in MODES:
            raise ConfigError(f"romulus: mode={mode!r}; use one of {', '.join(MODES)}")
        if flush is not None and flush not in FLUSHES:
            raise ConfigError(f"romulus: flush={flush!r}; use one of {', '.join(FLUSHES)}")
        commit = options.get("commit")
        if commit is not None and commit not in COMMITS:
            raise ConfigError(
                f"romulus: commit={commit!r}; use background (copy to back off the critical "
                "path, the default) or sync"
            )
        path = Path(check_path(location, "romulus pool"))
        if create == "never" and not path.exists():  # checks only: no file, no directory made
            raise NotFoundError(self._no_pool(path))
        if path.is_dir():
            raise BackendError(
                f"romulus: {path} is a directory; the location is the pool file, "
                f"e.g. {path / 'plinius.pool'}"
            )
        if not path.parent.is_dir():
            raise BackendError(
                f"romulus: parent directory {path.parent} does not exist; create it first"
            )
        self.size_source = "size=" if size is not None else "existing pool"
        if size is None and (create == "force" or not path.exists()):
            size = hint if hint is not None else DEFAULT_POOL_SIZE
            self.size_source = "size_hint=" if hint is not None else "default"
        self.path = path
        try:
            self.pool = Pool(
                path,
                size,
                create=_CREATE[create],
                mode=mode,
                flush=flush,
                device=device,
                commit=commit,
            )
        except NotFoundError:  # removed between the check above and the open
            raise NotFoundError(self._no_pool(path)) from None
        self._txn: RomulusWriteTxn | None = None
        try:
            for blob in self.pool.roots():  # every root must name a block of its blob's size
                self._check_root_name(blob)
                self.pool.blob_root(blob)
        except BaseException:
            self.pool.close()
            raise

    # --- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _no_pool(path: Path) -> str:
        return (
            f"no pool at {path}: nothing to verify or read (create=never opens an existing "
            "pool only; it created nothing)"
        )

    def _check_root_name(self, blob: str) -> None:
        try:
            check_blob_name(blob)
        except ConfigError:
            raise PoolCorruptError(
                f"pool {self.path} is corrupt: root name {blob!r} is not a blob name"
            ) from None

    def _check_idle(self, what: str) -> None:
        if self.pool.closed:
            raise BackendError(f"romulus backend {self.spec} is closed")
        if self._txn is not None:
            raise BackendError(
                f"cannot {what}: the write transaction on {self._txn.blob!r} is still open; "
                "commit or abort it first"
            )

    def _lookup(self, blob: str) -> tuple[int, int, bool] | None:
        """(offset, size, committed-region?) of the last committed version of ``blob``."""
        if self.pool.closed:
            raise BackendError(f"romulus backend {self.spec} is closed")
        committed = self._txn is not None  # main is being rewritten: the truth is in back
        found = self.pool.blob_root(check_blob_name(blob), committed=committed)
        if found is None:
            return None
        return found[0], found[1], committed

    # --- contract ------------------------------------------------------------------------------

    def begin_write(self, blob: str, size: int) -> WriteTxn:
        check_blob_name(blob)
        if size < 0:
            raise BackendError(f"blob size must be >= 0, got {size}")
        self._check_idle(f"start writing {blob!r}")
        pool = self.pool
        pool.begin()
        try:
            current = pool.blob_root(blob)
            old = current[0] if current else 0
            if size == 0:
                offset = 0
            elif old and size <= pool.capacity(old) <= 2 * size + 4096:
                offset = old  # the common case: a mirror of the same size, rewritten in place
            else:
                try:
                    offset = pool.alloc(size)
                except PoolFullError as exc:
                    raise PoolFullError(
                        f"{exc}: blob {blob!r} of {fmt_bytes(size)} does not fit (the last "
                        f"committed version is intact); create a bigger pool (size=) in a new "
                        "file"
                    ) from None
            if old and offset != old:
                pool.free(old)
            pool.set_root(blob, offset, size)
        except BaseException:
            pool.abort()
            raise
        self._txn = RomulusWriteTxn(self, blob, size, offset)
        return self._txn

    def read(self, blob: str, offset: int = 0, length: int | None = None) -> Blob | None:
        t0 = time.perf_counter()
        found = self._lookup(blob)
        if found is None:
            return None
        at, size, committed = found
        n = check_range(repr(blob), offset, length, size)
        # Copied out of the pool into private memory: the pool file is attacker-controlled
        # and shared, so bytes that are checked, authenticated or decrypted must never be
        # read from it twice (a flip between AES-GCM's tag pass and its decrypt pass would
        # reach the plaintext). ``map`` still gives views, for callers that copy first.
        data = self._private.view(n)
        data[:] = self.pool.view(at + offset, n, committed=committed)
        self.pool.model_read(n)  # device model: the restore reads the range from the media
        elapsed = time.perf_counter() - t0
        return Blob(data, IoStats(bytes=n, read_s=elapsed, total_s=elapsed), size)

    def read_into(self, blob: str, offset: int, out: memoryview) -> int:
        """One copy from the pool straight into ``out`` (the pipelined restore's batches)."""
        found = self._lookup(blob)
        if found is None:
            raise NotFoundError(f"blob {blob!r} of backend {self.spec} does not exist")
        at, size, committed = found
        n = check_range(repr(blob), offset, out.nbytes, size)
        out[:n] = self.pool.view(at + offset, n, committed=committed)
        self.pool.model_read(n)
        return n

    def start_read_into(self, blob: str, offset: int, out: memoryview) -> Callable[[], int]:
        """:meth:`read_into` on the pool's reader thread: the copy starts now and runs while the
        caller works (a restore decrypts the previous batch meanwhile, holding the GIL or not);
        the returned function waits for it and gives the byte count. ``out`` must stay alive
        and untouched until that function returned; one read in flight at a time."""
        found = self._lookup(blob)
        if found is None:
            raise NotFoundError(f"blob {blob!r} of backend {self.spec} does not exist")
        at, size, committed = found
        n = check_range(repr(blob), offset, out.nbytes, size)
        pool = self.pool
        pool.read_start(at + offset, out[:n], committed=committed)

        def wait() -> int:
            pool.read_wait()
            pool.model_read(n)
            return n

        return wait

    def map(self, blob: str) -> memoryview | None:
        found = self._lookup(blob)
        if found is None:
            return None
        offset, size, committed = found
        return self.pool.view(offset, size, committed=committed)

    def delete(self, blob: str) -> None:
        check_blob_name(blob)
        self._check_idle(f"delete {blob!r}")
        if self.pool.blob_root(blob) is None:
            return
        with self.pool.transaction():
            current = self.pool.blob_root(blob)
            if current is not None and current[0]:
                self.pool.free(current[0])
            self.pool.del_root(blob)

    def blobs(self) -> list[str]:
        if self.pool.closed:
            raise BackendError(f"romulus backend {self.spec} is closed")
        blobs = sorted(self.pool.roots(committed=self._txn is not None))
        for blob in blobs:  # names come from the pool file: only valid blob names are ours
            self._check_root_name(blob)
        return blobs

    def settle(self) -> float:
        """Wait until the background work of earlier commits is done (the copier's copy of main
        to back); seconds waited. A restore at start-up finds the pool settled: a benchmark
        calls this (untimed) before timing a restore right after a save, so the restore is not
        charged with the save's background copy running on the other core."""
        if self.pool.closed:
            return 0.0
        return self.pool.wait_copy()

    def model_wait_s(self) -> float | None:
        """Seconds this session waited for the modelled PM media (writes and reads), so a
        benchmark can say what the device model added; None without a model."""
        if self.pool.device is None or self.pool.closed:
            return None
        st = self.pool.stats()
        return float(st.dev_write_wait_s + st.dev_read_wait_s)

    def describe(self) -> RunsOn:
        m = mount_of(self.path)
        dev = block_device_facts(m.device)
        pool = self.pool
        notes: list[str] = []
        durability: Durability = "process-crash"
        if (pool.mode == "pmem" and pool.real_pm) or (pool.mode == "msync" and not m.volatile):
            durability = "power-fail"
        if not pool.real_pm:
            notes.append(
                f"emulated PM: the pool is a file on {m.fs_type} mapped without MAP_SYNC, so "
                f"{pool.flush_instruction}+sfence only reach the page cache"
            )
        if m.volatile:
            notes.append(f"{m.fs_type} is RAM-backed: the pool does not survive a reboot")
        if pool.mode == "none":
            notes.append("mode=none: no flushes, survives process crashes only")
        if pool.mode == "msync" and not m.volatile:
            notes.append("mode=msync: every fence msyncs the dirty pages to the device")
        model = pool.device
        if model is not None:
            notes.append(
                f"PM device model {model.name}: writes held to {model.write_gbps:g} GB/s plus "
                f"{model.fence_ns} ns per fence, blob reads to {model.read_gbps:g} GB/s plus "
                f"{model.read_latency_ns} ns ({NOTE})"
            )
        st = pool.stats() if not pool.closed else None
        try:
            fst = os.stat(self.path)
            file_size: int | None = fst.st_size
            allocated: int | None = fst.st_blocks * 512
        except OSError:
            file_size = allocated = None
        return RunsOn.from_mount(
            self.name,
            str(self.path.resolve()),
            m,
            byte_addressable=True,
            durability=durability,
            emulated=not pool.real_pm,
            notes=notes,
            extra={
                "flush_instruction": pool.flush_instruction,
                "durability_mode": pool.mode,
                "real_pm": pool.real_pm,
                "pool_size": file_size if file_size is not None else pool.size,
                "pool_size_source": self.size_source,
                "pool_size_note": (
                    "pool_size is this pool file's real size; a pool created without size= "
                    "gets the caller's size_hint= or pool_size_default "
                    f"({fmt_bytes(DEFAULT_POOL_SIZE)})"
                ),
                "pool_size_default": DEFAULT_POOL_SIZE,
                "pool_file_allocated_bytes": allocated,
                "pool_free": st.free_bytes if st else None,
                # not "device_model": the block device's model string below has that name
                "pm_device_model": model.as_dict() if model is not None else None,
                "pool_opened_as": pool.opened_as,
                "romulus_commit": st.commit if st else None,
                "romulus_commit_note": (
                    "background: a commit returns once durable (COPYING persistent); the copy "
                    "of main to back runs on a copier thread, and the next write transaction "
                    "waits for it (bg_wait_s: the part not hidden)"
                ),
                "romulus_bg_min": st.bg_min if st else None,
                "romulus_bg_copies": st.bg_copies if st else None,
                "romulus_bg_copy_s": st.bg_copy_s if st else None,
                "romulus_last_bg_copy_s": st.last_bg_copy_s if st else None,
                "romulus_bg_wait_s": st.bg_wait_s if st else None,
                **{f"device_{k}": v for k, v in dev.items()},
            },
        )

    def close(self) -> None:
        if self._txn is not None:
            self._txn.abort()
        self.pool.close()
        self._private.close()
