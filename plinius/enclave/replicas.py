"""Replicated mirroring: copies of the sealed mirror on other backends (off the machine).

The primary mirror stays authoritative. After it commits, every R-th mirror's sealed bytes are
read back from the primary and copied, unchanged (no second encryption: same format, same stamp),
to each replica by one background thread per replica. Each replica is a slot of its own with its
own freshness record (``begin(stamp)`` / write / ``commit(stamp)``), so a restore accepts from a
replica exactly its last committed copy and never an older one put back.

Per replica at most one copy is in flight and at most one waits; a newer mirror replaces the
waiting one (superseded), so the queue never grows and the training loop pays only the read-back
and one memory copy. A failing copy (server down, ``WAIT`` not met) is counted and warned about
once per streak of failures.

**The lag bound.** A deleted primary is replaced by the newest replica copy, so what a replica
lacks is what such an attack rolls back. After each primary commit the replicator checks the
*lag*: the primary's version minus the newest version any configured replica slot recorded as
committed for this run (unreachable replicas included). Above ``max_lag`` it copies this very
mirror (due or not) and waits for the copies in flight; if the lag is still above the bound, it
raises :class:`~plinius.core.errors.ReplicaLagError` and training stops, instead of piling up
mirrors no replica holds. So the primary is never more than ``max_lag`` versions ahead of the newest
replica copy while training goes on, and a restore refuses any larger loss (see
:meth:`plinius.enclave.trusted.Enclave.ecall_restore`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from plinius.backends.base import Backend
from plinius.core.errors import ReplicaLagError
from plinius.core.memory import StagingBuffer
from plinius.enclave.counter import Extent, FreshnessGuard, MirrorCounters, Stamp, slot_name
from plinius.format.mirror import header_stamp

Warn = Callable[[str], None]


@dataclass
class ReplicaStats:
    """What one replica received during this run (the run report's ``replica`` section)."""

    spec: str
    ok: int = 0
    failed: int = 0
    superseded: int = 0
    last_version: int | None = None
    #: the newest version the platform recorded as committed on this replica's slot
    committed_version: int | None = None
    bytes: int = 0
    seconds: float = 0.0
    last_error: str = ""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class Replica:
    """One replica backend: its slot, a waiting copy and a worker thread that writes it."""

    def __init__(self, backend: Backend, counters: MirrorCounters, blob: str, warn: Warn) -> None:
        self.backend = backend
        self.counters = counters
        self.blob = blob
        self.slot = slot_name(*backend.slot_parts(), blob)
        self.stats = ReplicaStats(backend.spec)
        state = counters.read(self.slot)
        #: the copy the platform recorded as committed on this slot (kept current after copies)
        self.committed = state.committed if state is not None else None
        self.stats.committed_version = self.committed.version if self.committed else None
        self._warn = warn
        self._cond = threading.Condition()
        self._queued: tuple[Stamp, Extent] | None = None
        self._qbuf = StagingBuffer()  # the waiting copy
        self._wbuf = StagingBuffer()  # the copy being written
        self._busy = False
        self._closed = False
        self._streak = False
        self._thread: threading.Thread | None = None

    def guard(self, what: str, *, settle: bool) -> FreshnessGuard:
        """The freshness guard of this replica's own slot."""
        return self.counters.guard(self.slot, what, settle=settle)

    def offer(self, stamp: Stamp, data: memoryview, extent: Extent) -> None:
        """Queue a copy of ``data`` (copied now; ``extent``: what the platform recorded for
        ``stamp`` on the primary), replacing a copy still waiting."""
        with self._cond:
            if self._closed:
                return
            if self._queued is not None:
                self.stats.superseded += 1
            dest = self._qbuf.view(data.nbytes)
            dest[:] = data
            dest.release()
            self._queued = (stamp, extent)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"plinius-replica-{self.slot[:8]}", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def failed(self, why: str) -> None:
        """Count a copy that never reached the queue (the read-back failed)."""
        with self._cond:
            self._fail(why)

    def _fail(self, why: str) -> None:
        self.stats.failed += 1
        self.stats.last_error = why
        if not self._streak:
            self._streak = True
            self._warn(
                f"warning: replica {self.backend.spec} failed ({why}); training goes on, the "
                "primary mirror stays authoritative"
            )

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._queued is None and not self._closed:
                    self._cond.wait()
                if self._queued is None:
                    return
                stamp, extent = self._queued
                size = extent.size
                self._queued = None
                self._qbuf, self._wbuf = self._wbuf, self._qbuf
                self._busy = True
            t0 = time.perf_counter()
            try:
                self._write(stamp, extent)
            except Exception as exc:  # any failure of the replica: counted, never raised
                with self._cond:
                    self._fail(_one_line(exc))
            else:
                with self._cond:
                    s = self.stats
                    s.ok += 1
                    s.last_version = stamp.version
                    self.committed = stamp
                    s.committed_version = stamp.version
                    s.bytes += size
                    s.seconds += time.perf_counter() - t0
                    if self._streak:
                        self._streak = False
                        self._warn(f"replica {self.backend.spec} works again")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _write(self, stamp: Stamp, extent: Extent) -> None:
        size = extent.size
        src = self._wbuf.view(size)
        try:
            head = header_stamp(src)
            if head is None or (head.size, head.manifest) != (extent.size, extent.manifest):
                raise ValueError("the copy's header is not the extent the platform recorded")
            self.counters.begin(self.slot, stamp, extent)
            with self.backend.begin_write(self.blob, size) as txn:
                out = txn.view(0, size)
                out[:] = src
                out.release()
                txn.commit()
            self.counters.commit(self.slot, stamp)
        finally:
            src.release()

    def drain(self, deadline: float) -> bool:
        """Wait until nothing waits or is in flight, or ``deadline`` (perf_counter) passes."""
        with self._cond:
            while self._queued is not None or self._busy:
                left = deadline - time.perf_counter()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self) -> bool:
        """Stop the worker; True when it is idle (the backend may then be closed)."""
        with self._cond:
            self._closed = True
            self._queued = None
            self._cond.notify_all()
            idle = not self._busy
        if idle:
            self._qbuf.close()
            self._wbuf.close()
        return idle


@dataclass(frozen=True)
class MissingReplica:
    """A configured replica that did not open: no copies go to it, but its slot's record still
    counts for the restore floor and the lag (an attacker who makes it unreachable must not
    gain a deeper rollback)."""

    spec: str
    slot: str
    committed: Stamp | None


#: how long a commit waits for the replica copies in flight when the lag bound is reached
REPLICA_WAIT_S = 600.0


class Replicator:
    """The replicas of one mirror slot, the schedule (every R-th mirror version) and the lag
    bound (``max_lag`` versions; see the module docstring)."""

    def __init__(
        self,
        backends: list[Backend],
        counters: MirrorCounters,
        blob: str,
        every: int,
        warn: Warn,
        *,
        max_lag: int | None = None,
        missing: list[tuple[str, tuple[str, str]]] | None = None,
    ) -> None:
        """``missing``: (spec, slot parts) of configured replicas that did not open."""
        if every < 1:
            raise ValueError("replica schedule must be >= 1")
        self.every = every
        self.max_lag = default_max_lag(every) if max_lag is None else max_lag
        if self.max_lag < 1:
            raise ValueError("replica max lag must be >= 1")
        self.replicas = [Replica(b, counters, blob, warn) for b in backends]
        self.missing: list[MissingReplica] = []
        for spec, parts in missing or []:
            slot = slot_name(*parts, blob)
            state = counters.read(slot)
            self.missing.append(MissingReplica(spec, slot, state.committed if state else None))
        self.blob = blob
        self._base: tuple[bytes, int] | None = None

    @property
    def slots(self) -> list[tuple[str, str]]:
        """(spec, slot) of every configured replica, reachable or not."""
        return [(r.backend.spec, r.slot) for r in self.replicas] + [
            (m.spec, m.slot) for m in self.missing
        ]

    def due(self, version: int) -> bool:
        return bool(self.replicas) and version % self.every == 0

    def newest(self, run: bytes) -> tuple[int, str] | None:
        """The newest copy of ``run`` any configured replica slot recorded as committed, and
        that replica's spec (None: no replica holds a copy of this run)."""
        best: tuple[int, str] | None = None
        committed = [(r.committed, r.backend.spec) for r in self.replicas]
        for stamp, spec in committed + [(m.committed, m.spec) for m in self.missing]:
            if stamp is None or stamp.run_id != run:
                continue
            if best is None or stamp.version > best[0]:
                best = (stamp.version, spec)
        return best

    def lag(self, run: bytes, version: int) -> int:
        """Mirrors a deleted primary at ``version`` would lose: versions above the newest
        replica copy of ``run`` (or above where this run began here, when none holds one)."""
        newest = self.newest(run)
        if newest is not None:
            return version - newest[0]
        if self._base is None or self._base[0] != run:
            self._base = (run, version - 1)
        return version - self._base[1]

    def before_commit(
        self,
        primary: Backend,
        run: bytes,
        version: int,
        last: Callable[[], tuple[Stamp, Extent | None] | None],
    ) -> None:
        """Before the primary commits ``version``: keep it within ``max_lag`` of the newest
        replica copy. Above the bound, copy the primary's last committed mirror (``last()``)
        and wait for the copies in flight; still above it, raise :class:`ReplicaLagError`."""
        prev = last() if self.lag(run, version) > self.max_lag else None
        if self._within(run, version, prev):
            return
        self.drain(REPLICA_WAIT_S)  # the copies in flight may close the gap
        if self._within(run, version, prev):
            return
        # nothing in flight now: copy the primary's newest mirror and wait for it
        newest = self.newest(run)
        newer = prev is not None and (newest is None or prev[0].version > newest[0])
        if prev is not None and prev[1] is not None and prev[0].run_id == run and newer:
            self.submit(primary, prev[0], prev[1])
            self.drain(REPLICA_WAIT_S)
        if self._within(run, version, prev):
            return
        lag = self.lag(run, version)
        newest = self.newest(run)
        held = f"version {newest[0]} on {newest[1]}" if newest else "no copy of this run"
        errors = "; ".join(
            f"{r.backend.spec}: {r.stats.last_error}" for r in self.replicas if r.stats.last_error
        )
        unavailable = ", ".join(m.spec for m in self.missing)
        why = errors or (f"unavailable: {unavailable}" if unavailable else "")
        why = why or (
            f"no copy completed within {REPLICA_WAIT_S:.0f} s" if self.replicas else "none opened"
        )
        raise ReplicaLagError(
            f"mirror version {version} would be {lag} versions ahead of the newest replica copy "
            f"({held}), above --replica-max-lag {self.max_lag} ({why}): stopping before it is "
            "written, so that a deleted primary cannot roll training back further; fix the "
            "replicas and run again (the primary mirror is intact), or raise --replica-max-lag"
        )

    def _within(self, run: bytes, version: int, prev: tuple[Stamp, Extent | None] | None) -> bool:
        """Committing ``version`` keeps the bound: the lag is at most ``max_lag``, or a replica
        already holds the primary's last committed mirror ``prev`` (then this commit risks one
        mirror: versions between are saves cut short by a crash, which hold no mirror)."""
        if self.lag(run, version) <= self.max_lag:
            return True
        newest = self.newest(run)
        return (
            prev is not None
            and newest is not None
            and prev[0].run_id == run
            and newest[0] >= prev[0].version
        )

    def after_commit(
        self, primary: Backend, stamp: Stamp, extent: Extent, *, force: bool = False
    ) -> None:
        """The primary committed ``stamp`` (of ``extent``): copy it to the replicas if due (or
        ``force``: the primary re-seeded from a replica, whose copies must catch up)."""
        if self.due(stamp.version) or (force and self.replicas):
            self.submit(primary, stamp, extent)

    def submit(self, primary: Backend, stamp: Stamp, extent: Extent) -> None:
        """Copy the committed mirror ``stamp`` from ``primary`` to every replica's queue; only
        the ``extent.size`` bytes recorded for it are read back, whatever the storage holds."""
        try:
            blob = primary.read(self.blob, 0, extent.size)
            found = header_stamp(blob.data) if blob is not None else None
        except Exception as exc:  # a failed read-back costs this copy only
            for r in self.replicas:
                r.failed(f"reading the mirror back from {primary.spec}: {_one_line(exc)}")
            return
        same = found is not None and (found.run_id, found.version, found.save_id) == (
            stamp.run_id,
            stamp.version,
            stamp.save_id,
        )
        if blob is None or not same or blob.size != extent.size:
            for r in self.replicas:
                r.failed(f"{primary.spec} no longer holds mirror version {stamp.version}")
            return
        for r in self.replicas:
            r.offer(stamp, blob.data, extent)

    def drain(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s in all) until every copy is written or has failed."""
        deadline = time.perf_counter() + timeout
        return all([r.drain(deadline) for r in self.replicas])

    def close(self) -> list[Backend]:
        """Stop the workers; the replica backends that are idle and may be closed."""
        return [r.backend for r in self.replicas if r.close()]

    def report(self) -> dict[str, Any]:
        """Copies ok/failed/superseded, last version replicated, bytes, seconds per replica."""
        return {
            "every": self.every,
            "max_lag": self.max_lag,
            "replicas": [asdict(r.stats) for r in self.replicas],
        }


def default_max_lag(every: int) -> int:
    """``--replica-max-lag`` when not given: two copy intervals, so one copy may be in flight
    for a whole interval before training waits for it."""
    return 2 * every
