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

The platform keeps the states (:meth:`plinius.enclave.platform.Platform.slot_records`): the
simulated CPU in files under its location, which the attacker is assumed not to control
(:mod:`plinius.enclave.slot_files`); a TPM in one table in attacker-held storage, authenticated
by a TPM-derived key and bound to a TPM NV counter (:mod:`plinius.enclave.counter_table`).

With each stamp the record keeps the mirror's *extent* (blob size, sealed manifest length), so a
reader refuses a blob of any other size before it allocates or reads what the (unauthenticated)
header claims (:meth:`MirrorCounters.admit`). Records written before extents existed (``PLNSLOT1``)
still open; their mirrors are then bounded by the machine's memory only, until the next save.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from plinius.core.errors import RollbackError
from plinius.enclave.platform_protocol import Platform
from plinius.enclave.slot_state import (
    PLATFORM_MEASUREMENT,
    Extent,
    SlotRecords,
    SlotState,
    Stamp,
    slot_name,
)
from plinius.format.mirror import ID_BYTES

__all__ = [
    "ID_BYTES",
    "PLATFORM_MEASUREMENT",
    "Extent",
    "FreshnessGuard",
    "MirrorCounters",
    "SlotState",
    "Stamp",
    "slot_name",
]


class MirrorCounters:
    """The freshness rules over a platform's slot records (:meth:`Platform.slot_records`).

    Every check and change goes through the platform's store: files on the simulated CPU, the
    NV-counter-bound table on a TPM; the rules below are the same for both.
    """

    def __init__(self, platform: Platform, *, create: bool = True) -> None:
        """``create=False``: read-only use; a store that does not exist simply holds no state."""
        self.platform = platform
        self._store: SlotRecords = platform.slot_records(create=create)

    @property
    def dir(self) -> Path:
        """Where the store keeps its files (attacker-held on a TPM, trusted on the simulation)."""
        d = getattr(self._store, "dir", None)
        assert isinstance(d, Path)
        return d

    def read(self, slot: str) -> SlotState | None:
        """The slot's state, or None if no mirror was ever committed to it on this platform."""
        return self._store.read(slot)

    def close(self) -> None:
        """Release what the store keeps open (a later use opens it again)."""
        self._store.close()

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

        self._store.update(slot, change)

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

        self._store.update(slot, change, durable=False)

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
        return self._store.update(slot, lambda state: self._judge(slot, where, stamp, state))

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
