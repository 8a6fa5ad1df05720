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

import hashlib
import os
import struct
from dataclasses import dataclass
from typing import Protocol

from plinius.enclave.platform import Platform
from plinius.enclave.sealing import seal, unseal
from plinius.errors import IntegrityError, NotFoundError, RollbackError
from plinius.fsutil import create_exclusive, private_dir, read_regular

ID_BYTES = 16
PLATFORM_MEASUREMENT = hashlib.sha256(b"plinius platform counter service").digest()
_MAGIC_V1 = b"PLNSLOT1"
_MAGIC = b"PLNSLOT2"
_STAMP = struct.Struct(f"<{ID_BYTES}sQ{ID_BYTES}s")
_EXTENT = struct.Struct("<QQ")
_STATE_V1 = struct.Struct(f"<8sQB{_STAMP.size}sB{_STAMP.size}s")
_STATE = struct.Struct(f"<8sQB{_STAMP.size}s{_EXTENT.size}sB{_STAMP.size}s{_EXTENT.size}s")


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
    """Slot states as sealed, fixed-size files ``<platform>/counters/<slot>``."""

    def __init__(self, platform: Platform, *, create: bool = True) -> None:
        """``create=False``: read-only use; a missing directory simply holds no state."""
        self.platform = platform
        d = platform.dir / "counters"
        self.dir = private_dir(d, "platform counter directory") if create or d.exists() else d

    def _what(self, slot: str) -> str:
        return f"platform counter {slot}"

    @staticmethod
    def _label(slot: str) -> str:
        """The sealing label of a slot's record: a record sealed for one slot opens for no other."""
        return f"slot:{slot}"

    def read(self, slot: str) -> SlotState | None:
        """The slot's state, or None if no mirror was ever committed to it on this platform."""
        try:
            blob = read_regular(self.dir / slot, self._what(slot), nofollow=True, max_bytes=4096)
        except NotFoundError:
            return None
        raw = unseal(self.platform, PLATFORM_MEASUREMENT, self._label(slot), blob)
        return SlotState.unpack(raw, self._what(slot))

    def _write(self, slot: str, state: SlotState, *, durable: bool = True) -> None:
        blob = seal(self.platform, PLATFORM_MEASUREMENT, self._label(slot), state.pack())
        path = self.dir / slot
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            create_exclusive(path, blob)
            return
        try:
            # Always the same size and far below one 512-byte sector: an in-place write is
            # atomic on disk, and one fdatasync keeps the per-mirror cost to a single flush.
            os.pwrite(fd, blob, 0)
            os.ftruncate(fd, len(blob))
            if durable:
                os.fdatasync(fd)
        finally:
            os.close(fd)

    def begin(self, slot: str, stamp: Stamp, extent: Extent | None = None) -> None:
        """Record a save in flight (and the ``extent`` of the mirror it writes): durable before
        the backend writes the mirror."""
        state = self.read(slot)
        high = state.high if state else 0
        if state is not None and state.pending == stamp and state.pending_extent == extent:
            return  # the same save tried again (a replica copy retried): already recorded
        if stamp.version <= high:
            raise ValueError(f"slot {slot}: version {stamp.version} is not above {high}")
        committed = state.committed if state else None
        c_extent = state.committed_extent if state else None
        self._write(slot, SlotState(stamp.version, committed, stamp, c_extent, extent))

    def commit(self, slot: str, stamp: Stamp) -> None:
        """The backend committed ``stamp``'s mirror: it is now the only fresh one.

        Not flushed: a process kill keeps it (page cache), and a power failure that loses it
        leaves ``pending == stamp``, which a restore accepts and settles exactly as if the
        crash had come just before this call; the next ``begin`` makes it durable anyway.
        One flush per save instead of two.
        """
        state = self.read(slot)
        if state is None or state.pending != stamp:
            raise ValueError(f"slot {slot}: commit of {stamp.short()} without its begin")
        self._write(slot, state.settled(stamp), durable=False)

    def check(
        self, slot: str, where: str, stamp: Stamp | None, *, settle: bool
    ) -> SlotState | None:
        """Refuse anything but the committed (or in-flight) mirror; settle the slot if asked.

        ``stamp`` is the authenticated stamp of the mirror found (None: no mirror there).
        """
        state = self.read(slot)
        if stamp is None:
            if state is not None and state.committed is not None:
                c = state.committed
                raise RollbackError(
                    f"no mirror in {where}, but the platform recorded a committed one "
                    f"({c.short()}): the mirror was deleted or the location re-pointed; "
                    "restore it, or start over with --fresh"
                )
            if settle and state is not None and state.pending is not None:
                self._write(slot, state.settled(None))
            return state
        if state is None:
            raise RollbackError(
                f"{where} holds a mirror ({stamp.short()}) that was never committed there on "
                "this platform: it was copied from elsewhere, or the platform location was "
                "reset; refusing it (start over with --fresh)"
            )
        if stamp == state.committed:
            if settle and state.pending is not None:
                self._write(slot, state.settled(stamp))
            return state
        if stamp == state.pending:
            if settle:
                self._write(slot, state.settled(stamp))
            return state
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
        """A callback for :class:`plinius.mirror.MirrorStore` that checks the stamp it found."""
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

    def admit(self, run_id: bytes, version: int, save_id: bytes, size: int, manifest: int) -> bool:
        """Before anything the header claims is allocated or read: see
        :meth:`MirrorCounters.admit`."""
        return self.counters.admit(
            self.slot, self.where, Stamp(run_id, version, save_id), Extent(size, manifest)
        )

    def absent(self) -> None:
        """No mirror was found: refused if the platform recorded a committed one."""
        self.counters.check(self.slot, self.where, None, settle=self.settle)
