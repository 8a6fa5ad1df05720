"""The backend contract: named, atomically replaced blobs that plinius encrypts straight into.

A backend stores opaque ciphertext only. It knows nothing about models or keys. Everything plinius
keeps (the mirror, the training-set sample area) is a *blob* under a short name:

* ``begin_write(blob, size)`` opens a write transaction on a new version of the blob and hands out
  writable memory (``txn.view(offset, length)``): a view straight into persistent memory for
  byte-addressable backends, reusable page-aligned staging memory for file backends. The caller
  encrypts into those views; ``txn.commit()`` makes the new version durable and visible in one
  atomic step. A crash or ``abort()`` before commit leaves the previous version intact and readable.
* ``read(blob, offset=0, length=None)`` returns the last committed version, or just bytes
  [offset, offset+length) of it (file backends read with syscalls into reusable staging memory;
  PM backends return a view into the pool), so a reader of a header does not move the blob.
* ``map(blob)`` returns a byte-addressable read-only view (mmap for files, the pool for PM) so
  single samples can be read by offset without loading the whole blob.
* ``read_into(blob, offset, out)`` copies a range into the caller's memory (a pipelined restore
  reads the next batch of segments into its own reusable buffer while it decrypts this one).
* ``evict(blob)`` drops a file-backed blob from the page cache so the next read is a cold one
  (benchmarks); None where that means nothing (PM, remote stores).

Views are valid until the next call on the same backend that could move them (the next ``read`` or
``map`` of that blob, a commit, ``close``); callers copy or decrypt out of them before that.

A backend class also states the facts the rest of plinius needs about it (capabilities, where
default instances live, how fio and plots treat it, its benchmark instances), so nothing outside
``plinius/backends/`` decides behaviour by a backend's name.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from plinius.core.errors import BackendError, ConfigError, NotFoundError

if TYPE_CHECKING:
    from plinius.backends.fsinfo import MountInfo

Durability = Literal["power-fail", "process-crash", "none"]
DURABILITY_LEVELS: tuple[Durability, ...] = ("power-fail", "process-crash", "none")
#: where a backend's data lives: on this machine, or behind a network connection
Locality = Literal["local", "remote"]
#: the directory default instances live under: "shm" (RAM) or "disk" (see ``plinius.lab.plan``)
Root = Literal["shm", "disk"]

_BLOB_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_range(what: str, offset: int, length: int | None, size: int) -> int:
    """The length of range [offset, offset+length) of a ``size``-byte blob (None: to its end).

    Ranged reads never clamp: a range outside the blob is a caller's bug or a lying header.
    """
    if length is None:
        length = size - offset
    if offset < 0 or length < 0 or offset + length > size:
        raise BackendError(
            f"range [{offset}, {offset + length}) is outside blob {what} of {size} B"
        )
    return length


def check_blob_name(blob: str) -> str:
    """Keys become file names and pool root names, so they are kept short and path-free."""
    if not _BLOB_NAME_RE.match(blob):
        raise ConfigError(
            f"invalid blob name {blob!r}: use 1-64 characters from A-Z a-z 0-9 . _ - "
            "starting with a letter or digit"
        )
    return blob


@dataclass
class IoStats:
    """Where the time of one save or restore went (seconds) and how many bytes moved.

    For the file backends: ``write_s`` opens the file written and writes (and cuts) it,
    ``fsync_s`` is every fsync (the file's, then the directory's after the replace),
    ``replace_s`` the rename (or name exchange) that makes the new version current, nothing
    else. Backends without such a step leave it 0.
    """

    bytes: int = 0
    encrypt_s: float = 0.0
    decrypt_s: float = 0.0
    write_s: float = 0.0
    read_s: float = 0.0
    flush_s: float = 0.0
    fsync_s: float = 0.0
    total_s: float = 0.0
    replace_s: float = 0.0

    def merge(self, other: IoStats) -> IoStats:
        """Field-wise sum: the mirror module adds its crypto time to the backend's I/O time."""
        return IoStats(**{k: getattr(self, k) + getattr(other, k) for k in asdict(self)})

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class RunsOn:
    """What a backend really ran on, recorded in every report."""

    backend: str
    path: str
    fs_type: str
    mount_options: str
    device: str
    dax: bool
    byte_addressable: bool
    durability: Durability
    emulated: bool
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_mount(
        cls,
        backend: str,
        path: str,
        mount: MountInfo,
        *,
        byte_addressable: bool,
        durability: Durability,
        emulated: bool,
        notes: list[str],
        extra: dict[str, Any],
    ) -> RunsOn:
        """A local backend's facts: its file system, mount options, device and DAX from the
        mount it sits on (the mount point joins ``extra``)."""
        return cls(
            backend=backend,
            path=path,
            fs_type=mount.fs_type,
            mount_options=mount.options,
            device=mount.device,
            dax=mount.dax,
            byte_addressable=byte_addressable,
            durability=durability,
            emulated=emulated,
            notes=notes,
            extra={"mount_point": mount.mount_point, **extra},
        )


class WriteTxn(ABC):
    """One pending new version of a blob. Use as a context manager: an exception aborts."""

    def __init__(self, blob: str, size: int) -> None:
        self.blob = blob
        self.size = size
        self._done = False

    def _check_range(self, offset: int, length: int) -> None:
        if self._done:
            raise BackendError(f"write transaction on {self.blob!r} is already finished")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise BackendError(
                f"range [{offset}, {offset + length}) is outside blob {self.blob!r} "
                f"of {self.size} B"
            )

    @abstractmethod
    def view(self, offset: int, length: int) -> memoryview:
        """Writable memory for bytes [offset, offset+length) of the new version."""

    def written(self, offset: int, length: int) -> None:  # noqa: B027 - optional hook
        """Optional hook: bytes [offset, offset+length) are final (sealed). A backend may start
        flushing them while the caller seals the rest; the default does nothing."""

    @abstractmethod
    def commit(self) -> IoStats:
        """Make the new version durable (to the backend's durability level) and current."""

    @abstractmethod
    def abort(self) -> None:
        """Drop the new version; the previous one stays current."""

    def __enter__(self) -> WriteTxn:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._done:
            self.abort()


@dataclass
class Blob:
    """A committed blob as read: a read-only view (the whole blob or the range asked for), the
    cost of getting it, and the blob's full size (so a ranged reader can tell a cut blob)."""

    data: memoryview
    stats: IoStats
    size: int = -1  # -1: the whole blob was read, its size is ``data.nbytes``

    def __post_init__(self) -> None:
        if self.size < 0:
            self.size = self.data.nbytes


@dataclass
class EvictResult:
    """What :meth:`Backend.evict` achieved, checked with ``mincore`` rather than assumed."""

    #: True only when no page of the blob is resident any more
    evicted: bool
    pages_total: int
    resident_before: int
    resident_after: int
    #: why it is not evicted (a RAM file system, pages still mapped), empty when it is
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Backend(ABC):
    """Base of every storage backend. Subclasses set the class attributes and the six methods."""

    #: registry name, e.g. ``"ssd"``
    name: ClassVar[str]
    #: True when ``view``/``map`` point into persistent memory itself (zero-copy)
    byte_addressable: ClassVar[bool]
    #: one-line description for ``plinius backends``
    summary: ClassVar[str] = ""
    #: example location for help texts
    example_location: ClassVar[str] = ""
    #: where default (benchmark) instances live: "shm" (/dev/shm, RAM) or "disk"
    default_root: ClassVar[Root] = "disk"
    #: spec options that make a throw-away instance cheap (``plinius backends`` probes with them)
    probe_options: ClassVar[dict[str, str]] = {}
    #: True when ``read(blob, offset, length)`` moves only that range (a mirror peek then reads
    #: the header and manifest, not the blob); False: it reads the whole blob and slices it
    ranged_read: ClassVar[bool] = False
    #: "local" (storage of this machine) or "remote" (a server: no directory for fio to measure)
    locality: ClassVar[Locality] = "local"
    #: the durability levels an instance can report in ``describe()`` (by options and mount)
    durability_levels: ClassVar[tuple[Durability, ...]] = DURABILITY_LEVELS
    #: True when the class takes ``create="never"`` (and ``create="auto"``, its default): open
    #: an existing location only; a missing one is a one-line
    #: :class:`~plinius.core.errors.NotFoundError` and nothing is created. plinius' read-only
    #: commands (``verify``, ``export``, ``infer``) then pass it, through
    #: :func:`~plinius.backends.registry.open_read_only`. False (the default): they open the
    #: class plainly, with the spec's own options, so its plain open of a missing location must
    #: create nothing either (fail, or make storage only when something is written). The
    #: shipped contract checks whichever is declared (``BackendContract.test_read_only_open``).
    read_only_open: ClassVar[bool] = False

    def __init__(self, location: str, **options: Any) -> None:
        if not location:
            raise ConfigError(f"backend {self.name!r} needs a location, e.g. {self.spec_example()}")
        self.location = location
        self.options = options

    @classmethod
    def spec_example(cls) -> str:
        return f"{cls.name}:{cls.example_location}"

    @classmethod
    def location_in(cls, directory: str) -> str:
        """The location of a default instance inside ``directory`` (a sub-directory or a file)."""
        return f"{directory.rstrip('/')}/{cls.name}"

    @classmethod
    def creation_options(cls, mirror_bytes: int, data_bytes: int) -> dict[str, str | int]:
        """Spec options that size a *new* instance for what it will store (a mirror of
        ``mirror_bytes``, a sample area of ``data_bytes``); an existing one ignores them."""
        return {}

    @classmethod
    def slot_parts_of(cls, location: str, options: Mapping[str, Any]) -> tuple[str, str]:
        """``(family, where)``: what identifies the storage a spec names for the platform's
        freshness records, computed from the spec alone (a replica that cannot be opened still
        has its slot's record consulted). Two spellings of the same storage must give the same
        parts, and two different storages different parts. Default: the backend name and the
        location as the user names it (absolute, symlinks deliberately not resolved: a
        re-pointed link is another slot, never the old one's record). Override this, not
        :meth:`slot_parts`."""
        return cls.name, os.path.abspath(os.path.expanduser(location))

    def slot_parts(self) -> tuple[str, str]:
        """This instance's :meth:`slot_parts_of`."""
        return type(self).slot_parts_of(self.location, self.options)

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.location}"

    @abstractmethod
    def begin_write(self, blob: str, size: int) -> WriteTxn:
        """Start replacing ``blob`` with a new version of ``size`` bytes."""

    @abstractmethod
    def read(self, blob: str, offset: int = 0, length: int | None = None) -> Blob | None:
        """Bytes [offset, offset+length) of the last committed version of ``blob`` (length None:
        to its end), or None if it was never written. A range outside it is a BackendError."""

    def read_into(self, blob: str, offset: int, out: memoryview) -> int:
        """Copy bytes [offset, offset+len(out)) of the last committed ``blob`` into ``out``
        (writable caller memory) and return how many were copied (all of them). A missing blob
        is a NotFoundError, a range outside it a BackendError. Default: :meth:`read` and a
        copy; file backends read straight into ``out``."""
        got = self.read(blob, offset, out.nbytes)
        if got is None:
            raise NotFoundError(f"blob {blob!r} of backend {self.spec} does not exist")
        n = got.data.nbytes
        out[:n] = got.data
        return n

    def evict(self, blob: str) -> EvictResult | None:
        """Drop ``blob`` from the page cache so that the next read comes from the device (a
        cold restore), and say how far that went. None: not applicable (not file-backed: a
        persistent-memory pool, a remote store)."""
        return None

    @abstractmethod
    def map(self, blob: str) -> memoryview | None:
        """A byte-addressable read-only view of ``blob`` for random access, or None."""

    @abstractmethod
    def delete(self, blob: str) -> None:
        """Remove ``blob`` atomically (no-op if absent)."""

    @abstractmethod
    def blobs(self) -> list[str]:
        """The committed blob names, sorted."""

    @abstractmethod
    def describe(self) -> RunsOn:
        """What this backend runs on: device, file system, mount options, durability, emulation."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends need it
        """Release files, mappings and locks. Idempotent."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec}>"
