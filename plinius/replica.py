"""Replicated mirroring: copies of the sealed mirror on other backends (off the machine).

The primary mirror stays authoritative. After it commits, every R-th mirror's sealed bytes are
read back from the primary and copied, unchanged (no second encryption: same format, same stamp),
to each replica by one background thread per replica. Each replica is a slot of its own with its
own freshness record (``begin(stamp)`` / write / ``commit(stamp)``), so a restore accepts from a
replica exactly its last committed copy and never an older one put back.

Per replica at most one copy is in flight and at most one waits; a newer mirror replaces the
waiting one (superseded), so the queue never grows and the training loop pays only the read-back
and one memory copy. A failing replica (server down, ``WAIT`` not met) never stops training: the
failure is counted, and warned about once per streak of failures.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from plinius.backends.base import Backend
from plinius.enclave.counter import FreshnessGuard, MirrorCounters, Stamp, slot_name
from plinius.memory import StagingBuffer
from plinius.mirror import header_stamp

Warn = Callable[[str], None]


@dataclass
class ReplicaStats:
    """What one replica received during this run (the run report's ``replica`` section)."""

    spec: str
    ok: int = 0
    failed: int = 0
    superseded: int = 0
    last_version: int | None = None
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
        self._warn = warn
        self._cond = threading.Condition()
        self._queued: tuple[Stamp, int] | None = None
        self._qbuf = StagingBuffer()  # the waiting copy
        self._wbuf = StagingBuffer()  # the copy being written
        self._busy = False
        self._closed = False
        self._streak = False
        self._thread: threading.Thread | None = None

    def guard(self, what: str, *, settle: bool) -> FreshnessGuard:
        """The freshness guard of this replica's own slot."""
        return self.counters.guard(self.slot, what, settle=settle)

    def offer(self, stamp: Stamp, data: memoryview) -> None:
        """Queue a copy of ``data`` (copied now), replacing a copy still waiting."""
        with self._cond:
            if self._closed:
                return
            if self._queued is not None:
                self.stats.superseded += 1
            dest = self._qbuf.view(data.nbytes)
            dest[:] = data
            dest.release()
            self._queued = (stamp, data.nbytes)
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
                stamp, size = self._queued
                self._queued = None
                self._qbuf, self._wbuf = self._wbuf, self._qbuf
                self._busy = True
            t0 = time.perf_counter()
            try:
                self._write(stamp, size)
            except Exception as exc:  # any failure of the replica: counted, never raised
                with self._cond:
                    self._fail(_one_line(exc))
            else:
                with self._cond:
                    s = self.stats
                    s.ok += 1
                    s.last_version = stamp.version
                    s.bytes += size
                    s.seconds += time.perf_counter() - t0
                    if self._streak:
                        self._streak = False
                        self._warn(f"replica {self.backend.spec} works again")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _write(self, stamp: Stamp, size: int) -> None:
        src = self._wbuf.view(size)
        try:
            self.counters.begin(self.slot, stamp)
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


class Replicator:
    """The replicas of one mirror slot and the schedule (every R-th mirror version)."""

    def __init__(
        self,
        backends: list[Backend],
        counters: MirrorCounters,
        blob: str,
        every: int,
        warn: Warn,
    ) -> None:
        if every < 1:
            raise ValueError("replica schedule must be >= 1")
        self.every = every
        self.replicas = [Replica(b, counters, blob, warn) for b in backends]
        self.blob = blob

    def due(self, version: int) -> bool:
        return bool(self.replicas) and version % self.every == 0

    def submit(self, primary: Backend, stamp: Stamp) -> None:
        """Copy the committed mirror ``stamp`` from ``primary`` to every replica's queue."""
        try:
            blob = primary.read(self.blob)
            found = header_stamp(blob.data) if blob is not None else None
        except Exception as exc:  # a failed read-back costs this copy only
            for r in self.replicas:
                r.failed(f"reading the mirror back from {primary.spec}: {_one_line(exc)}")
            return
        if blob is None or found != (stamp.run_id, stamp.version, stamp.save_id):
            for r in self.replicas:
                r.failed(f"{primary.spec} no longer holds mirror version {stamp.version}")
            return
        for r in self.replicas:
            r.offer(stamp, blob.data)

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
            "replicas": [asdict(r.stats) for r in self.replicas],
        }
