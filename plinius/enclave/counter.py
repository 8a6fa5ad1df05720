"""Monotonic counters kept outside the backend: the rollback guard for mirrors.

The trainer saves mirror version v, then advances the counter bound to that mirror's identity to
v; a restore demands version >= counter. Putting back an older copy of every backend file is then
refused. (A crash between the save and the advance leaves a window of one version, the price of
never refusing the newest real mirror.) The default counter is sealed into the platform state
directory, which stands in for SGX's tamper-resistant counter storage; anything with ``read`` and
``advance`` can replace it.
"""

from __future__ import annotations

import hashlib
import os
import struct
from typing import Protocol

from plinius.enclave.platform import SimulatedPlatform
from plinius.enclave.sealing import atomic_write, seal, unseal
from plinius.errors import IntegrityError

PLATFORM_MEASUREMENT = hashlib.sha256(b"plinius platform counter service").digest()


class MonotonicCounter(Protocol):
    def read(self, name: str) -> int:
        """Current value (0 if never advanced)."""
        ...

    def advance(self, name: str, value: int) -> None:
        """Set to ``value``, which must not be lower than the current value."""
        ...


def mirror_identity(backend_name: str, location: str) -> str:
    """What a mirror's counter is bound to: the backend kind and the real path of its storage."""
    return f"{backend_name}:{os.path.realpath(location)}"


def mirror_counter_name(identity: str, fingerprint: bytes, key_id: bytes) -> str:
    return counter_name(identity, "mirror", fingerprint, key_id)


def counter_name(*parts: bytes | str) -> str:
    """A counter name bound to a mirror's identity (backend, key, model fingerprint, key id)."""
    h = hashlib.sha256()
    for p in parts:
        raw = p.encode() if isinstance(p, str) else p
        h.update(struct.pack("<I", len(raw)) + raw)
    return h.hexdigest()[:32]


class SealedFileCounter:
    """Counters as sealed files ``<state>/counters/<name>`` (AES-GCM, name bound)."""

    def __init__(self, platform: SimulatedPlatform) -> None:
        self.platform = platform
        self.dir = platform.dir / "counters"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def read(self, name: str) -> int:
        try:
            blob = (self.dir / name).read_bytes()
        except FileNotFoundError:
            return 0
        raw = unseal(self.platform, PLATFORM_MEASUREMENT, f"counter:{name}", blob)
        if len(raw) != 8:
            raise IntegrityError(f"counter {name}", "bad length")
        return int(struct.unpack("<Q", raw)[0])

    def advance(self, name: str, value: int) -> None:
        current = self.read(name)
        if value < current:
            raise ValueError(f"counter {name} is monotonic: {value} < {current}")
        if value == current and (self.dir / name).exists():
            return
        raw = struct.pack("<Q", value)
        blob = seal(self.platform, PLATFORM_MEASUREMENT, f"counter:{name}", raw)
        path = self.dir / name
        try:
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError:
            atomic_write(path, blob)  # first value: create the file durably
            return
        try:
            # Same size every time and far below one 512-byte sector: one in-place write is
            # atomic on disk, and one fdatasync (instead of tmp + fsync + rename + dir fsync)
            # keeps the per-mirror cost to a single flush.
            if os.fstat(fd).st_size != len(blob):
                os.close(fd)
                fd = -1
                atomic_write(path, blob)
                return
            os.pwrite(fd, blob, 0)
            os.fdatasync(fd)
        finally:
            if fd >= 0:
                os.close(fd)
