"""A TPM platform's slot records: one table, authenticated by a TPM-derived key and bound to the
value of one TPM NV counter (the pattern of Memoir and ROTE), in attacker-held storage.

The file ``<platform dir>/freshness.table`` holds every slot's state, sealed under a key only
this TPM derives, with the counter value ``v`` it is bound to in its associated data. Every
change moves the counter in two steps around the table's write, so the counter itself says
whether a change was in flight::

    stable at n (table bound to n):  increment to n+1, write the table bound to n+2, increment
    in flight at n (after a crash):  increment twice,  write the table bound to n+3, increment

Accepted: the table bound to the counter's value (stable), or one bound to the value next to it
(a change in flight: the table from before or after it, both holding at most the one save in
flight, as the simulated CPU does). Refused: a table bound to any other value (rolled back,
or from before the counter was redefined), a table that does not authenticate (altered, or
made by another TPM), a missing table where the counter was set up.

One window is left, once per platform and before any mirror: a first setup killed between the
counter's first increment and the first table's write leaves a counter with no table, which
looks exactly like a deleted table (the counter's first value is the TPM's, not ours, so
nothing tells the two apart) and is refused the same way; the message says how to set the
platform up again.

Why two steps: a table is only ever written for a value the writer itself moved the counter
next to, and the TPM reaches each value once, so no two different tables are ever bound to
one value, even when a writer is killed after its write and before its increment and the
next writer starts over. With one step, the table a killed writer left and the one written
after it would share a value, and whoever holds the directory could pick either.

``counter_every`` (:class:`~plinius.enclave.tpm_platform.CounterEvery`) trades that for fewer
increments (hardware NV is slow and wears): changes between two moves rewrite the table at the
same value, and any of them may be put back, a window the platform's description states.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from plinius.core.crypto import OVERHEAD
from plinius.core.errors import ConfigError, IntegrityError, NotFoundError, RollbackError
from plinius.core.fsutil import atomic_write, open_regular, private_dir, read_regular
from plinius.enclave import tpm_link
from plinius.enclave.sealing import MAGIC as SEAL_MAGIC
from plinius.enclave.sealing import seal, unseal
from plinius.enclave.slot_state import PLATFORM_MEASUREMENT, STATE_BYTES, Change, SlotState


class TpmAnchor(Protocol):
    """What the table needs of its TPM platform."""

    dir: Path
    nv_index: int
    where: str
    link: tpm_link.TpmLink
    counter_every: CounterEvery

    def derive(self, purpose: bytes, measurement: bytes, length: int = 16) -> bytes: ...


_EVERY = re.compile(r"^(\d{1,9})(s?)$")
TABLE_FILE = "freshness.table"
LOCK_FILE = "freshness.lock"
_MAGIC = b"PLNTBL01"
#: magic, bound counter value, changes since the counter last moved, when it moved (unix s),
#: slot count, NV index
_HEADER = struct.Struct("<8sQQQII")
_SLOT_BYTES = 16
_ENTRY = _SLOT_BYTES + STATE_BYTES
#: the most slots one platform records (a table of them is ~2.4 MB)
MAX_SLOTS = 16384
_MAX_FILE = _HEADER.size + len(SEAL_MAGIC) + OVERHEAD + MAX_SLOTS * _ENTRY


def _reached(step: str) -> None:
    """Called at each step of a change (tests kill the process here: every step is a crash
    point that must be recovered without a false refusal)."""


class CounterEvery:
    """How often the NV counter moves: every ``changes``-th change of the table, or on the
    first change ``seconds`` after it last moved. ``changes=1`` (the default): every change,
    no rollback window at all."""

    def __init__(self, changes: int = 1, seconds: int = 0) -> None:
        self.changes = changes
        self.seconds = seconds

    @classmethod
    def parse(cls, text: str, where: str) -> CounterEvery:
        m = _EVERY.match(text)
        if not m or int(m.group(1)) < 1:
            raise ConfigError(
                f"{where}: counter_every={text!r} is neither a count of changes (N >= 1) nor "
                "seconds (Ns, e.g. 30s)"
            )
        n = int(m.group(1))
        return cls(seconds=n) if m.group(2) else cls(changes=n)

    def describe(self) -> str:
        if self.seconds:
            return (
                f"the NV counter moves on the first change {self.seconds} s after it last "
                f"moved: whoever holds the platform directory can roll slots back over up to "
                f"{self.seconds} s of saves"
            )
        if self.changes == 1:
            return "the NV counter moves on every change: no rollback window"
        return (
            f"the NV counter moves on every {self.changes}th change (a save is 2): whoever "
            f"holds the platform directory can roll slots back by up to {self.changes - 1} "
            "changes"
        )


@dataclass(frozen=True)
class Table:
    """A verified table: the value it is bound to, and the slots' states."""

    value: int
    lazy: int
    moved_at: int
    states: dict[str, SlotState]


class CounterTable:
    """The :class:`~plinius.enclave.slot_state.SlotRecords` of a TPM platform."""

    FILE = TABLE_FILE

    def __init__(self, platform: TpmAnchor, *, create: bool = True) -> None:
        self.platform = platform
        self.dir = platform.dir
        if create:
            private_dir(self.dir, "platform directory")
        self.path = self.dir / TABLE_FILE
        self._create = create
        self._lock = threading.RLock()
        self._known: tuple[bytes, Table] | None = None

    # --- the lock across processes -------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        """One changer at a time across processes (an ``flock`` on a file beside the table;
        whoever holds the directory can only deny service through it)."""
        with self._lock:
            path = self.dir / LOCK_FILE
            flags = os.O_RDWR | (os.O_CREAT if self._create else 0)
            try:
                fd = open_regular(path, "freshness lock", nofollow=True, flags=flags)
            except NotFoundError:
                yield  # read-only use of a platform never changed here: nothing to exclude
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
                yield
            finally:
                os.close(fd)

    # --- reading -------------------------------------------------------------------------

    def _label(self, value: int, lazy: int, moved_at: int, count: int) -> str:
        return f"freshness-table:{self.platform.nv_index:08x}:{value}:{lazy}:{moved_at}:{count}"

    def _parse(self, raw: bytes) -> Table:
        what = f"freshness table {self.path}"
        if self._known is not None and self._known[0] == raw:
            return self._known[1]
        if len(raw) < _HEADER.size or raw[:8] != _MAGIC:
            raise IntegrityError(what, "not a freshness table")
        _, value, lazy, moved_at, count, index = _HEADER.unpack_from(raw)
        body = raw[_HEADER.size :]
        if count > MAX_SLOTS or len(body) != len(SEAL_MAGIC) + OVERHEAD + count * _ENTRY:
            raise IntegrityError(what, f"its size does not hold the {count} slots it claims")
        if index != self.platform.nv_index:
            raise RollbackError(
                f"{what} is bound to NV counter {index:#x}, not this platform's "
                f"{self.platform.nv_index:#x}: it belongs to another platform; refused"
            )
        try:
            plain = unseal(
                self.platform, PLATFORM_MEASUREMENT, self._label(value, lazy, moved_at, count), body
            )
        except IntegrityError:
            raise IntegrityError(
                what,
                "does not authenticate under this TPM's key: altered, or made by another TPM "
                "(a platform directory copied between machines)",
            ) from None
        states: dict[str, SlotState] = {}
        for i in range(count):
            entry = plain[i * _ENTRY : (i + 1) * _ENTRY]
            states[entry[:_SLOT_BYTES].hex()] = SlotState.unpack(entry[_SLOT_BYTES:], what)
        table = Table(value, lazy, moved_at, states)
        self._known = (raw, table)
        return table

    def _read_file(self) -> bytes | None:
        try:
            return read_regular(self.path, "freshness table", nofollow=True, max_bytes=_MAX_FILE)
        except NotFoundError:
            return None

    def _counter(self, e: Any) -> tuple[Any, int | None]:
        """The counter's handle and value (None: defined, never incremented); refused if it
        is not there or not a counter (an ordinary index could be written back)."""
        found = tpm_link.open_counter(e, self.platform.nv_index)
        idx = f"NV index {self.platform.nv_index:#x} on {self.platform.where}"
        if found is None:
            return None, None
        handle, info = found
        if not info.is_counter:
            raise RollbackError(
                f"{idx} is not a monotonic counter (attributes {info.attributes:#x}): it was "
                "replaced by whoever holds the owner hierarchy; freshness cannot be checked, "
                "refusing"
            )
        return handle, tpm_link.counter_value(e, handle) if info.written else None

    def _load(self, e: Any) -> tuple[Any, int, Table]:
        """The counter (handle, value) and the table it accepts; refuses anything else."""
        handle, value = self._counter(e)
        raw = self._read_file()
        idx = f"NV counter {self.platform.nv_index:#x}"
        if raw is None:
            if handle is None or value is None:
                raise _Unset()
            raise RollbackError(
                f"the freshness table {self.path} is missing but {idx} is at {value}: it was "
                "deleted; refusing to start over without the records (if this platform never "
                "committed a mirror, its first setup was killed: give it another nv= index, "
                f"or undefine this one: tpm2_nvundefine -C o {self.platform.nv_index:#x})"
            )
        table = self._parse(raw)
        if handle is None or value is None:
            raise RollbackError(
                f"{self.path} records slots but {idx} is {'gone' if handle is None else 'new'}: "
                "the counter was deleted or redefined; freshness cannot be checked, refusing"
            )
        if abs(table.value - value) > 1:
            why = (
                "an older table was put back"
                if table.value < value
                else "the counter was redefined or the table comes from elsewhere"
            )
            raise RollbackError(
                f"{self.path} is bound to counter value {table.value} but {idx} is at {value}: "
                f"{why}; rollback refused"
            )
        return handle, value, table

    def read(self, slot: str) -> SlotState | None:
        with self._locked(False), self.platform.link.session() as e:
            try:
                _, _, table = self._load(e)
            except _Unset:
                return None
            return table.states.get(slot)

    # --- changing ------------------------------------------------------------------------

    def update(self, slot: str, change: Change, *, durable: bool = True) -> SlotState | None:
        """Apply ``change`` under the lock; the table moves with the counter (module doc).
        ``durable`` is moot: every table write is flushed before the counter moves past it."""
        del durable
        with self._locked(True), self.platform.link.session() as e:
            try:
                handle, value, table = self._load(e)
            except _Unset:
                handle, value, table = self._set_up(e)
            state = table.states.get(slot)
            new = change(state)
            if new is None:
                return state
            states = dict(table.states)
            states[slot] = new
            self._move(e, handle, value, table, states)
            return state

    def _set_up(self, e: Any) -> tuple[Any, int, Table]:
        """The platform's first change: define the counter if needed, move it once and write
        the empty table bound to its value."""
        if not self._create:
            raise NotFoundError("this TPM platform holds no freshness records yet")
        handle, _ = self._counter(e)
        if handle is None:
            _reached("define")
            tpm_link.define_counter(e, self.platform.nv_index, tpm_link.owner_auth())
            handle, _ = self._counter(e)
        tpm_link.counter_increment(e, handle)
        value = tpm_link.counter_value(e, handle)
        _reached("setup-increment")
        empty = Table(value, 0, int(time.time()), {})
        self._write(empty)
        return handle, value, empty

    def _lazy(self, value: int, table: Table) -> bool:
        """May this change rewrite the table at the same value (``counter_every``)?"""
        every = self.platform.counter_every
        if table.value != value:
            return False  # a change in flight is settled by moving the counter
        if every.seconds:
            return time.time() - table.moved_at < every.seconds
        return table.lazy + 1 < every.changes

    def _move(
        self, e: Any, handle: Any, value: int, table: Table, states: dict[str, SlotState]
    ) -> None:
        if len(states) > MAX_SLOTS:
            raise ConfigError(
                f"this TPM platform records {MAX_SLOTS} slots already: use another platform "
                "directory and nv= for more mirrors"
            )
        if self._lazy(value, table):
            self._write(Table(value, table.lazy + 1, table.moved_at, states))
            _reached("lazy-write")
            return
        steps = 1 if table.value == value else 2  # in flight: step over the next value too
        for _ in range(steps):
            tpm_link.counter_increment(e, handle)
            _reached("increment-before")
        target = value + steps + 1
        self._write(Table(target, 0, int(time.time()), states))
        _reached("table-written")
        tpm_link.counter_increment(e, handle)
        _reached("increment-after")

    def _write(self, table: Table) -> None:
        count = len(table.states)
        plain = b"".join(
            bytes.fromhex(slot) + table.states[slot].pack() for slot in sorted(table.states)
        )
        label = self._label(table.value, table.lazy, table.moved_at, count)
        head = _HEADER.pack(
            _MAGIC, table.value, table.lazy, table.moved_at, count, self.platform.nv_index
        )
        raw = head + seal(self.platform, PLATFORM_MEASUREMENT, label, plain)
        atomic_write(self.path, raw)
        self._known = (raw, table)

    def close(self) -> None:
        """Nothing is kept open between changes."""


class _Unset(Exception):
    """No table and no counter value: the platform was never set up (or a setup was killed
    before its first increment, when nothing could have been recorded yet)."""
