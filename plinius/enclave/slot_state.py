"""What the platform records per mirror slot (:class:`SlotState`) and the protocol of the stores
that keep those records (:class:`SlotRecords`): files on the simulated CPU
(:mod:`plinius.enclave.slot_files`), one table bound to a TPM NV counter on a TPM
(:mod:`plinius.enclave.counter_table`). The rules that read and move the records are
:mod:`plinius.enclave.counter`'s, the same for every store."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from plinius.core.errors import IntegrityError
from plinius.format.mirror import ID_BYTES

#: the measurement the platform's own counter service seals its records with
PLATFORM_MEASUREMENT = hashlib.sha256(b"plinius platform counter service").digest()
_MAGIC_V1 = b"PLNSLOT1"
_MAGIC = b"PLNSLOT2"
_STAMP = struct.Struct(f"<{ID_BYTES}sQ{ID_BYTES}s")
_EXTENT = struct.Struct("<QQ")
_STATE_V1 = struct.Struct(f"<8sQB{_STAMP.size}sB{_STAMP.size}s")
_STATE = struct.Struct(f"<8sQB{_STAMP.size}s{_EXTENT.size}sB{_STAMP.size}s{_EXTENT.size}s")
#: the size of a packed :class:`SlotState` (the current layout)
STATE_BYTES = _STATE.size


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


#: what a store's ``update`` applies: the state found (None: none) to the new one (None: no write)
Change = Callable[[SlotState | None], SlotState | None]


class SlotRecords(Protocol):
    """Where a platform keeps its slot states: trusted reads, and atomic, durable changes."""

    def read(self, slot: str) -> SlotState | None:
        """The slot's state (None: nothing was ever committed to it on this platform)."""
        ...

    def update(self, slot: str, change: Change, *, durable: bool = True) -> SlotState | None:
        """Apply ``change`` to the slot's state atomically (one writer at a time, across
        processes); ``durable=False``: a process kill keeps it, a power failure may not (see
        :meth:`plinius.enclave.counter.MirrorCounters.commit`). Returns the state found."""
        ...

    def close(self) -> None:
        """Release what the store keeps open (a later use opens it again)."""
        ...
