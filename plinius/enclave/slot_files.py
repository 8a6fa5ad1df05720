"""The simulated CPU's slot records: one sealed, fixed-size file per slot under the platform
location (``<platform>/counters/<slot>``), which stands in for SGX's tamper-resistant counter
storage; the attacker is assumed not to control it (a TPM keeps them in a counter-bound table
instead, :mod:`plinius.enclave.counter_table`)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
import threading

from plinius.core.errors import ConfigError, NotFoundError, PliniusError
from plinius.core.fsutil import check_path, link_new, open_regular, private_dir, write_all
from plinius.enclave.platform_protocol import Platform
from plinius.enclave.sealing import seal, unseal
from plinius.enclave.slot_state import PLATFORM_MEASUREMENT, Change, SlotState

#: the most a record file may hold (a sealed record is ~160 B)
_MAX_RECORD = 4096


class SlotFiles:
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
        (:meth:`update`; the first one is linked in whole, never over another), so the kept
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

    def update(
        self,
        slot: str,
        change: Change,
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
