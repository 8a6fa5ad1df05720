"""The backend contract: named, atomically replaced blobs that plinius encrypts straight into.

A backend stores opaque ciphertext only. It knows nothing about models or keys. Everything plinius
keeps (the mirror, the training-set record area) is a *blob* under a short key:

* ``begin_write(key, size)`` opens a write transaction on a new version of the blob and hands out
  writable memory (``txn.view(offset, length)``): a view straight into persistent memory for
  byte-addressable backends, reusable page-aligned staging memory for file backends. The caller
  encrypts into those views; ``txn.commit()`` makes the new version durable and visible in one
  atomic step. A crash or ``abort()`` before commit leaves the previous version intact and readable.
* ``read(key)`` returns the last committed version (file backends read it with syscalls into
  reusable staging memory; PM backends return a view into the pool).
* ``map(key)`` returns a byte-addressable read-only view (mmap for files, the pool for PM) so single
  records can be read by offset without loading the whole blob.

Views are valid until the next call on the same backend that could move them (the next ``read`` or
``map`` of that key, a commit, ``close``); callers copy or decrypt out of them before that.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Literal

from plinius.errors import BackendError, ConfigError

Durability = Literal["power-fail", "process-crash", "none"]
DURABILITY_LEVELS: tuple[Durability, ...] = ("power-fail", "process-crash", "none")

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_key(key: str) -> str:
    """Keys become file names and pool root names, so they are kept short and path-free."""
    if not _KEY_RE.match(key):
        raise ConfigError(
            f"invalid blob key {key!r}: use 1-64 characters from A-Z a-z 0-9 . _ - "
            "starting with a letter or digit"
        )
    return key


@dataclass
class IoStats:
    """Where the time of one save or restore went (seconds) and how many bytes moved."""

    bytes: int = 0
    encrypt_s: float = 0.0
    decrypt_s: float = 0.0
    write_s: float = 0.0
    read_s: float = 0.0
    flush_s: float = 0.0
    fsync_s: float = 0.0
    total_s: float = 0.0

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


class WriteTxn(ABC):
    """One pending new version of a blob. Use as a context manager: an exception aborts."""

    def __init__(self, key: str, size: int) -> None:
        self.key = key
        self.size = size
        self._done = False

    def _check_range(self, offset: int, length: int) -> None:
        if self._done:
            raise BackendError(f"write transaction on {self.key!r} is already finished")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise BackendError(
                f"range [{offset}, {offset + length}) is outside blob {self.key!r} of {self.size} B"
            )

    @abstractmethod
    def view(self, offset: int, length: int) -> memoryview:
        """Writable memory for bytes [offset, offset+length) of the new version."""

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
    """A committed blob as read: a read-only view and the cost of getting it."""

    data: memoryview
    stats: IoStats


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
    default_root: ClassVar[Literal["shm", "disk"]] = "disk"
    #: spec options that make a throw-away instance cheap (``plinius backends`` probes with them)
    probe_options: ClassVar[dict[str, str]] = {}

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

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.location}"

    @abstractmethod
    def begin_write(self, key: str, size: int) -> WriteTxn:
        """Start replacing blob ``key`` with a new version of ``size`` bytes."""

    @abstractmethod
    def read(self, key: str) -> Blob | None:
        """The last committed version of ``key``, or None if it was never written."""

    @abstractmethod
    def map(self, key: str) -> memoryview | None:
        """A byte-addressable read-only view of ``key`` for random access, or None."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` atomically (no-op if absent)."""

    @abstractmethod
    def keys(self) -> list[str]:
        """The committed blob keys, sorted."""

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
