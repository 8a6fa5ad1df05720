"""A TPM platform's slot records: one table, authenticated by a TPM-derived key and bound to the
value of one TPM NV counter (the pattern of Memoir and ROTE), in attacker-held storage.

The file ``<platform dir>/freshness.table`` holds every slot's state, sealed under a key only
this TPM derives, with the counter value ``v`` it is bound to in its associated data. A reader
with the counter at ``c`` accepts a table bound to ``c`` or to ``c ± 1`` and refuses any other
(rolled back, or from before the counter was redefined), one that does not authenticate
(altered, or made by another TPM) and a missing one where the counter exists. A change::

    stable (table bound to c):        increment to c+1, write the table bound to c+2, increment
    behind (bound to c-1: a change    first write the states found bound to c+1 (no increment),
      cut after its first increment)    then as ahead
    ahead (bound to c+1: a change     increment to c+1 (now stable), then as stable
      cut before its last increment)

Every increment is read back (another writer meanwhile: the change stops, never returns), and
the table is written whole (temporary file, fsync, rename) before the counter moves past it.
So the counter is never more than one away from the table on disk, whatever step a kill or a
failed write stops, and a crash is recovered without a refusal. Tables are only bound to
values of one parity (the *stable* ones); the counter's other values mark a change in flight.

Why no rollback: a change returns only once the counter reached its table's value ``v``. At a
stable value only tables bound to it are accepted, and the one of a change that returned is the
only table ever bound to ``v`` (another needs the counter at ``v-1`` later, which the TPM never
goes back to). In flight at ``v+1``, the tables bound to ``v+2`` hold the states of ``v`` plus
at most the change in flight (written by the change itself or by a recovery that rewrote
``v``'s states): accepting any of them loses nothing that returned. Changers take turns through
a lock outside storage (:func:`platform_lock`, plus an ``flock`` for other namespaces): every
writer of one TPM and counter must take it (a writer that does not could overwrite a returned
change's table while recovering; the read-backs then refuse the change, but not in time).

``counter_every`` (:class:`CounterEvery`) trades the window for fewer increments (hardware NV
is slow and wears): the changes between two moves rewrite the table at the same value, only
over the table this process wrote last (a table put back, or a new process, moves the
counter), and any of those tables may be put back: at most ``N-1`` changes, or the seconds
since the process's last move (on its monotonic clock: a wall clock stepped back gains nothing).

One window is left, once per platform and before any mirror: a first setup killed (or whose
write failed, a full disk) between the counter's first increment and the first table's write
leaves a counter with no table, which
looks exactly like a deleted table (the counter's first value is the TPM's, not ours, so
nothing tells the two apart) and is refused the same way; the message says how to set the
platform up again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import socket
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
    #: one name per TPM however its spec spells it (the lock's name)
    tpm_id: str
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
        #: the table bytes this object last wrote (a lazy rewrite goes on only from them)
        self._mine: bytes | None = None
        #: the bytes of the table the last load accepted
        self._loaded: bytes | None = None
        #: when this object last moved the counter (``time.monotonic``; counter_every=Ns)
        self._moved_mono: float | None = None

    # --- the lock across processes -------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One user of this platform's counter and table at a time, across processes: a
        socket bound in the abstract Unix namespace, named after the TPM (however the spec
        spells it) and the counter (:func:`platform_lock`), which whoever holds the storage
        cannot remove or replace; and an ``flock`` on ``freshness.lock`` beside the table,
        which also reaches processes of other network namespaces (containers) sharing the
        directory. Both are released by the kernel when their process dies."""
        with self._lock, platform_lock(self.platform.tpm_id, self.platform.nv_index):
            path = self.dir / LOCK_FILE
            flags = os.O_RDWR | (os.O_CREAT if self._create else 0)
            try:
                fd = open_regular(path, "freshness lock", nofollow=True, flags=flags)
            except NotFoundError:
                yield  # read-only use of a platform never changed here
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
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
                "committed a mirror, its first setup was killed or failed: give it another "
                f"nv= index, or undefine this one: tpm2_nvundefine -C o "
                f"{self.platform.nv_index:#x})"
            )
        table = self._parse(raw)
        self._loaded = raw
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
        with self._locked(), self.platform.link.session() as e:
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
        with self._locked(), self.platform.link.session() as e:
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
        self._loaded = self._mine
        return handle, value, empty

    def _lazy(self, value: int, table: Table) -> bool:
        """May this change rewrite the table at the same value (``counter_every``)? Only over
        the very table this object wrote last: a table put back, or one another process
        wrote, moves the counter (else a table put back after every change would keep its
        ``lazy`` count, and the window, from ever closing)."""
        every = self.platform.counter_every
        if table.value != value or self._mine is None or self._loaded != self._mine:
            return False
        if every.seconds:  # this process's own clock since its own last move: no clock step
            moved = self._moved_mono
            return moved is not None and time.monotonic() - moved < every.seconds
        return table.lazy + 1 < every.changes

    def _increment(self, e: Any, handle: Any, expect: int) -> None:
        """Move the counter and read it back: anything but ``expect`` means another writer
        moved it meanwhile, and this change must not go on (nor return)."""
        tpm_link.counter_increment(e, handle)
        got = tpm_link.counter_value(e, handle)
        if got != expect:
            raise RollbackError(
                f"NV counter {self.platform.nv_index:#x} is at {got}, not the {expect} this "
                "change moved it to: another writer changed this platform's table at the same "
                "time; this change did not happen (run it again)"
            )

    def _move(
        self, e: Any, handle: Any, value: int, table: Table, states: dict[str, SlotState]
    ) -> None:
        """Write ``states`` and move the counter past the table (module docstring)."""
        if len(states) > MAX_SLOTS:
            raise ConfigError(
                f"this TPM platform records {MAX_SLOTS} slots already: use another platform "
                "directory and nv= for more mirrors"
            )
        if self._lazy(value, table):
            self._write(Table(value, table.lazy + 1, table.moved_at, states))
            _reached("lazy-write")
            return
        if table.value == value - 1:  # behind: a change was cut after its first increment
            table = Table(value + 1, 0, int(time.time()), dict(table.states))
            self._write(table)  # the states as found, bound to the next value
            _reached("behind-written")
        if table.value == value + 1:  # ahead: a change was cut before its last increment
            value += 1
            self._increment(e, handle, value)
            _reached("ahead-increment")
        self._increment(e, handle, value + 1)  # stable at value
        _reached("increment-before")
        self._write(Table(value + 2, 0, int(time.time()), states))
        _reached("table-written")
        self._increment(e, handle, value + 2)
        self._moved_mono = time.monotonic()
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
        self._mine = raw

    def close(self) -> None:
        """Nothing is kept open between changes."""


@contextlib.contextmanager
def platform_lock(tpm_id: str, index: int, timeout_s: float = 120.0) -> Iterator[None]:
    """Hold the lock of (TPM, NV counter) in this network namespace: a socket bound to an
    abstract Unix address (Linux). Any local process could bind it first: a denial of service,
    as any local process can also use the TPM (README)."""
    name = hashlib.sha256(f"{tpm_id}|{index:#x}".encode()).hexdigest()[:32]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + timeout_s
    wait = 0.0005
    try:
        while True:
            try:
                sock.bind(b"\0plinius-freshness-" + name.encode())
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise ConfigError(f"cannot take the platform's lock: {exc.strerror}") from None
                if time.monotonic() > deadline:
                    raise ConfigError(
                        f"another process has held this TPM platform's lock for {timeout_s:g} s "
                        "(a hung trainer on this machine?)"
                    ) from None
                time.sleep(wait)
                wait = min(wait * 2, 0.02)
        yield
    finally:
        sock.close()


class _Unset(Exception):
    """No table and no counter value: the platform was never set up (or a setup was killed
    before its first increment, when nothing could have been recorded yet)."""
