"""Freshness: platform-kept monotonic state per mirror slot, the rollback guard for mirrors.

A *slot* is where a mirror lives, named the way the user names it: backend kind, the location
as given (made absolute lexically, never resolved through symlinks, so re-pointing a path at an
older copy does not yield a new slot) and the blob name. Every mirror carries, in its header and
in the associated data of every record, a *stamp*: the run id (random, fixed when a run starts),
its version and a random save id (one per save). The platform keeps for each slot the stamp of
the last committed mirror and of at most one save in flight::

    begin(stamp)   pending := stamp          (durable before the mirror is written)
    ...            the backend commits the mirror atomically
    commit(stamp)  committed := stamp, pending := none

A restore accepts exactly the committed stamp, or the pending one (a crash after the backend
committed but before ``commit``), and settles the slot to what it found; the other stamp is
burnt for ever (``high`` only grows), so neither an older mirror nor a mirror of another run,
model, slot or a spliced "frankenstein" is ever accepted. A slot without state but with a
mirror claiming a version is refused: the state is never read as 0.

The state lives in the platform location (:mod:`plinius.enclave.platform`), which stands in for
SGX's tamper-resistant counter storage; the attacker is assumed not to control it.

With each stamp the record keeps the mirror's *extent* (blob size, sealed manifest length), so a
reader refuses a blob of any other size before it allocates or reads what the (unauthenticated)
header claims (:meth:`MirrorCounters.admit`). Records written before extents existed (``PLNSLOT1``)
still open; their mirrors are then bounded by the machine's memory only, until the next save.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import stat
import struct
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from plinius.core.errors import (
    ConfigError,
    IntegrityError,
    NotFoundError,
    PliniusError,
    RollbackError,
)
from plinius.core.fsutil import check_path, link_new, open_regular, private_dir, write_all
from plinius.enclave.platform import Platform
from plinius.enclave.sealing import seal, unseal
from plinius.format.mirror import ID_BYTES

PLATFORM_MEASUREMENT = hashlib.sha256(b"plinius platform counter service").digest()
_MAGIC_V1 = b"PLNSLOT1"
_MAGIC = b"PLNSLOT2"
_STAMP = struct.Struct(f"<{ID_BYTES}sQ{ID_BYTES}s")
_EXTENT = struct.Struct("<QQ")
_STATE_V1 = struct.Struct(f"<8sQB{_STAMP.size}sB{_STAMP.size}s")
_STATE = struct.Struct(f"<8sQB{_STAMP.size}s{_EXTENT.size}sB{_STAMP.size}s{_EXTENT.size}s")
#: the most a record file may hold (a sealed record is ~160 B)
_MAX_RECORD = 4096


@dataclass(frozen=True)
class Stamp:
    """What identifies one committed mirror: run, version, save."""

    run_id: bytes
    version: int
    save_id: bytes

    def short(self) -> str:
        return f"run {self.run_id.hex()[:8]} version {self.version} save {self.save_id.hex()[:8]}"


_ZERO = Stamp(bytes(ID_BYTES), 0, bytes(ID_BYTES))


@dataclass(frozen=True)
class Extent:
    """How large a committed mirror is: its blob and its sealed manifest, in bytes."""

    size: int
    manifest: int


def _pack_extent(e: Extent | None) -> bytes:
    return _EXTENT.pack(e.size, e.manifest) if e is not None else bytes(_EXTENT.size)


def _unpack_extent(raw: bytes) -> Extent | None:
    size, manifest = _EXTENT.unpack(raw)
    return Extent(size, manifest) if size else None


@dataclass(frozen=True)
class SlotState:
    """The platform's record of one slot (extents: None where the record predates them)."""

    high: int
    committed: Stamp | None
    pending: Stamp | None
    committed_extent: Extent | None = None
    pending_extent: Extent | None = None

    def pack(self) -> bytes:
        c, p = self.committed or _ZERO, self.pending or _ZERO
        return _STATE.pack(
            _MAGIC,
            self.high,
            self.committed is not None,
            _STAMP.pack(c.run_id, c.version, c.save_id),
            _pack_extent(self.committed_extent if self.committed else None),
            self.pending is not None,
            _STAMP.pack(p.run_id, p.version, p.save_id),
            _pack_extent(self.pending_extent if self.pending else None),
        )

    @classmethod
    def unpack(cls, raw: bytes, what: str) -> SlotState:
        if len(raw) == _STATE_V1.size and raw[:8] == _MAGIC_V1:
            _, high, has_c, c, has_p, p = _STATE_V1.unpack(raw)
            ce = pe = bytes(_EXTENT.size)
        elif len(raw) == _STATE.size and raw[:8] == _MAGIC:
            _, high, has_c, c, ce, has_p, p, pe = _STATE.unpack(raw)
        else:
            raise IntegrityError(what, "not a slot state")
        return cls(
            high,
            Stamp(*_STAMP.unpack(c)) if has_c else None,
            Stamp(*_STAMP.unpack(p)) if has_p else None,
            _unpack_extent(ce) if has_c else None,
            _unpack_extent(pe) if has_p else None,
        )

    def extent_of(self, stamp: Stamp) -> Extent | None:
        """The extent recorded with ``stamp`` (committed or pending), None if none was."""
        if stamp == self.pending:
            return self.pending_extent
        if stamp == self.committed:
            return self.committed_extent
        return None

    def settled(self, stamp: Stamp | None) -> SlotState:
        """This record settled to ``stamp`` (the committed or pending one; None: nothing)."""
        if stamp is None:
            return SlotState(self.high, None, None)
        return SlotState(self.high, stamp, None, self.extent_of(stamp))

    @property
    def current_run(self) -> bytes | None:
        s = self.pending or self.committed
        return s.run_id if s else None


def slot_name(family: str, where: str, blob: str) -> str:
    """The one place a mirror slot's identity is hashed: ``(family, where)`` come from the
    backend (:meth:`plinius.backends.base.Backend.slot_parts`), which alone knows what names the
    same storage (a directory as named, a Redis server + db + prefix)."""
    h = hashlib.sha256(b"plinius-slot-v1")
    for part in (family, where, blob):
        raw = part.encode()
        h.update(struct.pack("<I", len(raw)) + raw)
    return h.hexdigest()[:32]


class MirrorCounters:
    """Slot states as sealed, fixed-size files ``<platform>/counters/<slot>``.

    The state of each slot is kept in (trusted) memory with the sealed bytes it was written as
    or read from, so a save (:meth:`begin`, :meth:`commit`) and a restore's checks unseal
    nothing: each reads the small record file through the descriptor it writes with and
    compares it with those bytes, unsealing only a record some other enclave instance wrote
    since. Each change is one seal and one write.
    """

    def __init__(self, platform: Platform, *, create: bool = True) -> None:
        """``create=False``: read-only use; a missing directory simply holds no state."""
        self.platform = platform
        d = platform.dir / "counters"
        self.dir = private_dir(d, "platform counter directory") if create or d.exists() else d
        #: per slot: the record's sealed bytes as last written or read here, and its state
        self._known: dict[str, tuple[bytes, SlotState]] = {}
        self._lock = threading.RLock()
        self._paths: dict[str, str] = {}
        #: per slot: its record file, kept open for reading and writing (:meth:`_held`)
        self._fds: dict[str, int] = {}

    def _what(self, slot: str) -> str:
        return f"platform counter {slot}"

    @staticmethod
    def _label(slot: str) -> str:
        """The sealing label of a slot's record: a record sealed for one slot opens for no other."""
        return f"slot:{slot}"

    def read(self, slot: str) -> SlotState | None:
        """The slot's state, or None if no mirror was ever committed to it on this platform.

        The record file is read every time (it is the one truth: another enclave instance, in
        this process or another, may have written it since), under a shared ``flock`` (never
        while another writes it), but unsealed only when its bytes are not exactly the ones this
        object last sealed or unsealed for the slot: then the state kept in (trusted) memory is
        theirs. An empty record (an older plinius killed between creating its first record and
        writing it, before any mirror was written) holds no state."""
        with self._lock:
            held = self._fds.get(slot)
            fd = held if held is not None else self._open(slot, os.O_RDONLY)
            raw = b""
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH)
                    raw = self._read_fd(slot, fd)
                finally:
                    if held is None:
                        os.close(fd)
                    else:
                        fcntl.flock(fd, fcntl.LOCK_UN)
            if not raw:
                self._known.pop(slot, None)
                return None
            return self._state_of(slot, raw)

    def _path(self, slot: str) -> str:
        path = self._paths.get(slot)
        if path is None:
            path = check_path(self.dir / slot, self._what(slot))
            self._paths[slot] = path
        return path

    def _held(self, slot: str) -> int | None:
        """The slot's record file, opened for reading and writing on first use and kept open
        (None: there is none yet). A record is never replaced, only rewritten in place
        (:meth:`_update`; the first one is linked in whole, never over another), so the kept
        descriptor is the record's file for as long as the platform location is not reset."""
        fd = self._fds.get(slot)
        if fd is None:
            fd = self._open(slot, os.O_RDWR)
            if fd is not None:
                self._fds[slot] = fd
        return fd

    def close(self) -> None:
        """Close the record files kept open (a later use opens them again)."""
        with self._lock:
            fds, self._fds = self._fds, {}
            for fd in fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            with contextlib.suppress(OSError):
                os.close(fd)

    def _open(self, slot: str, flags: int) -> int | None:
        """The slot's record file (never through a symlink, never anything but a regular
        file, as :func:`plinius.core.fsutil.open_regular` refuses them), or None if it is absent."""
        path = self._path(slot)
        try:
            fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError:
            fd = -1
        if fd >= 0 and stat.S_ISREG(os.fstat(fd).st_mode):
            return fd  # O_NONBLOCK means nothing for a regular file
        if fd >= 0:
            os.close(fd)
        try:  # not a plain regular file: the one-line refusal every such open gives
            return open_regular(path, self._what(slot), nofollow=True, flags=flags)
        except NotFoundError:
            return None

    def _read_fd(self, slot: str, fd: int) -> bytes:
        """The record file's bytes (a record is far below 4 KiB: more is refused unread)."""
        chunks: list[bytes] = []
        at = 0
        while True:
            want = _MAX_RECORD + 1 - at
            chunk = os.pread(fd, want, at)
            chunks.append(chunk)
            at += len(chunk)
            if at <= _MAX_RECORD and len(chunk) < want:  # a regular file's short read: its end
                return b"".join(chunks)
            if at > _MAX_RECORD:
                raise ConfigError(
                    f"{self._what(slot)} {self.dir / slot} is more than the {_MAX_RECORD} B "
                    "expected"
                )

    def _state_of(self, slot: str, raw: bytes) -> SlotState:
        """The state sealed in ``raw``: the one kept in memory when ``raw`` is the very record
        it was sealed to or unsealed from (same bytes, same plaintext), else unsealed now."""
        known = self._known.get(slot)
        if known is not None and known[0] == raw:
            return known[1]
        state = SlotState.unpack(
            unseal(self.platform, PLATFORM_MEASUREMENT, self._label(slot), raw), self._what(slot)
        )
        self._known[slot] = (raw, state)
        return state

    def _update(
        self,
        slot: str,
        change: Callable[[SlotState | None], SlotState | None],
        *,
        durable: bool = True,
    ) -> SlotState | None:
        """Read the slot's record, ``change`` it (None: nothing to write) and write the new one
        through the same descriptor: one seal and one write, no unseal unless another writer
        changed the file. Returns the state found (before the change).

        The read-modify-write holds an exclusive ``flock`` on the record, so two processes on
        one slot (two trainers of a remote slot, which no backend lock serialises) take turns:
        neither lowers ``high`` nor drops the other's pending stamp. The first record is made
        whole under another name and linked in (:meth:`_create`): a kill leaves no record or a
        complete one, and a record another process created first is changed, never replaced."""
        with self._lock:
            while True:
                fd = self._held(slot)
                if fd is None:
                    new = change(None)
                    if new is None:
                        return None
                    blob = seal(self.platform, PLATFORM_MEASUREMENT, self._label(slot), new.pack())
                    if not self._create(slot, blob):
                        continue  # another process created it meanwhile: change theirs
                    self._known[slot] = (blob, new)
                    return None
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)  # released in finally (the fd is kept)
                    raw = self._read_fd(slot, fd)
                    state = self._state_of(slot, raw) if raw else None
                    new = change(state)
                    if new is None:
                        return state
                    blob = seal(self.platform, PLATFORM_MEASUREMENT, self._label(slot), new.pack())
                    # Always the same size and far below one 512-byte sector: an in-place write
                    # is atomic on disk, and one fdatasync keeps the per-mirror cost to a single
                    # flush. The size changes only when an older (shorter) record is upgraded,
                    # or an empty one (an older plinius killed in its first create) is written.
                    os.pwrite(fd, blob, 0)
                    if len(raw) != len(blob):
                        os.ftruncate(fd, len(blob))
                    if durable:
                        os.fdatasync(fd)
                    self._known[slot] = (blob, new)
                    return state
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)

    def _create(self, slot: str, blob: bytes) -> bool:
        """Make the slot's first record: ``blob`` written and flushed under a temporary name in
        the counter directory, then linked to the record's name (directory flushed) and the
        temporary name removed. False: a record was there already (another creator's, kept).

        A kill leaves no record or the whole one, never an empty record (at worst a stray
        ``.SLOT.XXXXXXXX.tmp``, which nothing reads)."""
        path = self._path(slot)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{slot}.", suffix=".tmp", dir=self.dir)
        except OSError as exc:
            raise ConfigError(f"cannot write {self._what(slot)} {path}: {exc.strerror}") from None
        try:
            try:
                write_all(fd, blob)
                os.fsync(fd)
            finally:
                os.close(fd)
            link_new(tmp, path)  # never over a record; flushes the directory
        except PliniusError:
            raise  # (NotFoundError is an OSError too)
        except FileExistsError:
            return False
        except OSError as exc:
            raise ConfigError(f"cannot write {self._what(slot)} {path}: {exc.strerror}") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return True

    def begin(self, slot: str, stamp: Stamp, extent: Extent | None = None) -> None:
        """Record a save in flight (and the ``extent`` of the mirror it writes): durable before
        the backend writes the mirror.

        One seal, one write and one ``fdatasync`` of the record; no unseal (the state kept in
        memory is the record's, see :meth:`read`). A retried ``begin`` of the same save (a
        replica copy tried again) writes nothing."""

        def change(state: SlotState | None) -> SlotState | None:
            high = state.high if state else 0
            if state is not None and state.pending == stamp and state.pending_extent == extent:
                return None  # the same save tried again (a replica copy retried): recorded
            if stamp.version <= high:
                raise ValueError(f"slot {slot}: version {stamp.version} is not above {high}")
            committed = state.committed if state else None
            c_extent = state.committed_extent if state else None
            return SlotState(stamp.version, committed, stamp, c_extent, extent)

        self._update(slot, change)

    def commit(self, slot: str, stamp: Stamp) -> None:
        """The backend committed ``stamp``'s mirror: it is now the only fresh one.

        One seal and one write of the record, no unseal, not flushed.

        Why this write cannot be dropped, nor merged into the next :meth:`begin`: until it is
        made, the record names the previous mirror committed and this one in flight, and a
        restore must accept both: the previous one because a kill *before* the backend's commit
        leaves exactly that mirror in storage (refusing it would lose the run), this one because
        a kill just *after* it leaves the new one. Storage is the attacker's, so the previous
        mirror put back after the backend committed looks exactly like a save that never
        committed: only this record can tell them apart, and only if it is written after the
        backend's commit and before the save returns. Deferred to the next ``begin``, a kill
        at any moment between this save's return and the next save's ``begin`` (the whole
        training interval; for ever after the last save) followed by the previous mirror put
        back would get that mirror accepted: a rollback of a save that had returned.

        Not flushed: a process kill keeps it (the page cache is the kernel's). A power failure
        may lose it; the record then names this save in flight and the previous one committed,
        as if the power had failed just before this call, and the next restore accepts either
        (so after a power failure, not a kill, the previous mirror put back is accepted once).
        The next ``begin`` writes over it durably. One flush per save instead of two.
        """

        def change(state: SlotState | None) -> SlotState:
            if state is None or state.pending != stamp:
                raise ValueError(f"slot {slot}: commit of {stamp.short()} without its begin")
            return state.settled(stamp)

        self._update(slot, change, durable=False)

    def check(
        self, slot: str, where: str, stamp: Stamp | None, *, settle: bool
    ) -> SlotState | None:
        """Refuse anything but the committed (or in-flight) mirror; settle the slot if asked.

        ``stamp`` is the authenticated stamp of the mirror found (None: no mirror there).
        Returns the slot's state as found (before settling).
        """
        if not settle:
            state = self.read(slot)
            self._judge(slot, where, stamp, state)
            return state
        return self._update(slot, lambda state: self._judge(slot, where, stamp, state))

    @staticmethod
    def _judge(
        slot: str, where: str, stamp: Stamp | None, state: SlotState | None
    ) -> SlotState | None:
        """Refuse ``stamp`` unless ``state`` holds it; the state settled to it (None: nothing
        to settle)."""
        if stamp is None:
            if state is not None and state.committed is not None:
                c = state.committed
                raise RollbackError(
                    f"no mirror in {where}, but the platform recorded a committed one "
                    f"({c.short()}): the mirror was deleted or the location re-pointed; "
                    "restore it, or start over with --fresh"
                )
            if state is not None and state.pending is not None:
                return state.settled(None)
            return None
        if state is None:
            raise RollbackError(
                f"{where} holds a mirror ({stamp.short()}) that was never committed there on "
                "this platform: it was copied from elsewhere, or the platform location was "
                "reset; refusing it (start over with --fresh)"
            )
        if stamp == state.committed:
            return state.settled(stamp) if state.pending is not None else None
        if stamp == state.pending:
            return state.settled(stamp)
        expected = state.pending or state.committed
        assert expected is not None
        if stamp.run_id != (state.current_run or b""):
            why = (
                "it belongs to another run (another model, an earlier run of this slot, or "
                "another slot's mirror copied here)"
            )
        elif stamp.version < expected.version:
            why = "an older copy of the mirror was put back"
        else:
            why = "it is not the mirror this save committed (records spliced or re-used)"
        raise RollbackError(
            f"{where} holds {stamp.short()}, but the platform committed {expected.short()}: "
            f"{why}; rollback refused"
        )

    def admit(self, slot: str, where: str, stamp: Stamp, extent: Extent) -> bool:
        """Before a reader allocates or reads past a mirror's header: refuse a header whose
        (unauthenticated) stamp is not the committed or in-flight one, or whose sizes are not
        the ones recorded with that stamp. Nothing is settled here; the full check follows once
        the manifest has authenticated the header. True: the extent was checked against the
        platform's record; False: the record predates extents (bound the sizes otherwise)."""
        state = self.check(slot, where, stamp, settle=False)
        assert state is not None  # check() refuses a stamp on a slot without state
        recorded = state.extent_of(stamp)
        if recorded is None:
            return False
        if recorded != extent:
            raise RollbackError(
                f"{where} holds {stamp.short()} as {extent.size} B with a {extent.manifest} B "
                f"manifest, but the platform recorded {recorded.size} B and {recorded.manifest} "
                "B for that save: the blob was altered; refusing to read it"
            )
        return True

    def guard(self, slot: str, where: str, *, settle: bool) -> FreshnessGuard:
        """A callback for :class:`~plinius.format.mirror.MirrorStore`: checks the stamp it found."""
        return FreshnessGuard(self, slot, where, settle)


class _Stamped(Protocol):
    run_id: bytes
    version: int
    save_id: bytes


@dataclass
class FreshnessGuard:
    """Called with a mirror's authenticated header: refuses all but the committed mirror."""

    counters: MirrorCounters
    slot: str
    where: str
    settle: bool

    def __call__(self, info: _Stamped) -> None:
        self.counters.check(
            self.slot,
            self.where,
            Stamp(info.run_id, info.version, info.save_id),
            settle=self.settle,
        )

    def recorded_sizes(self) -> tuple[int, ...]:
        """The blob sizes the platform recorded for this slot (its committed mirror and the
        save in flight), trusted: a reader may size its first read by them. Empty when there
        is no record, or a stamp in it has no recorded extent (written by an older plinius)."""
        state = self.counters.read(self.slot)
        if state is None:
            return ()
        sizes: list[int] = []
        for stamp, extent in (
            (state.committed, state.committed_extent),
            (state.pending, state.pending_extent),
        ):
            if stamp is None:
                continue
            if extent is None:
                return ()
            sizes.append(extent.size)
        return tuple(sizes)

    def admit(self, run_id: bytes, version: int, save_id: bytes, size: int, manifest: int) -> bool:
        """Before anything the header claims is allocated or read: see
        :meth:`MirrorCounters.admit`."""
        return self.counters.admit(
            self.slot, self.where, Stamp(run_id, version, save_id), Extent(size, manifest)
        )

    def absent(self) -> None:
        """No mirror was found: refused if the platform recorded a committed one."""
        self.counters.check(self.slot, self.where, None, settle=self.settle)
