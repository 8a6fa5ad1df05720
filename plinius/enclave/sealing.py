"""SGX-style sealing: data only an enclave with the same measurement on this platform can open.

The enclave seals the provisioned data key so that a restart after a crash needs no new
provisioning; a changed binary or model configuration (another measurement) cannot unseal it.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Protocol

from plinius.core.crypto import OVERHEAD, Engine, make_engine
from plinius.core.errors import ConfigError, IntegrityError, NotFoundError
from plinius.core.fsutil import atomic_write, private_dir, read_regular
from plinius.enclave.platform_protocol import Platform

MAGIC = b"PLNSEAL1"


class KeySource(Protocol):
    """Whatever derives the sealing key: a platform (the simulated CPU, a TPM)."""

    def derive(self, purpose: bytes, measurement: bytes, length: int = 16) -> bytes: ...


_LABEL_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


@functools.lru_cache(maxsize=8)
def _engine(key: bytes, engine: str | None) -> Engine:
    """One engine per sealing key (a platform derives one per measurement): every mirror
    commit seals and unseals the counter state, and setting up an engine costs more than that."""
    return make_engine(key, engine)


def seal(
    platform: KeySource,
    measurement: bytes,
    label: str,
    data: bytes,
    engine: str | None = None,
) -> bytes:
    """``MAGIC || IV || ciphertext || tag``, AAD ``MAGIC || label``, through crypto engine
    ``engine`` (default: the fastest installed; every engine writes the same record)."""
    key = platform.derive(b"seal", measurement)
    blob = bytearray(len(MAGIC) + len(data) + OVERHEAD)
    blob[: len(MAGIC)] = MAGIC
    aead = _engine(key, engine)
    aead.encrypt_into(MAGIC + label.encode(), data, memoryview(blob)[len(MAGIC) :])
    return bytes(blob)


def unseal(
    platform: KeySource,
    measurement: bytes,
    label: str,
    blob: bytes,
    engine: str | None = None,
) -> bytes:
    what = f"sealed {label}"
    if len(blob) < len(MAGIC) + OVERHEAD or not blob.startswith(MAGIC):
        raise IntegrityError(what, "not sealed data")
    key = platform.derive(b"seal", measurement)
    out = bytearray(len(blob) - len(MAGIC) - OVERHEAD)
    try:
        _engine(key, engine).decrypt_into(
            MAGIC + label.encode(), memoryview(blob)[len(MAGIC) :], out, what
        )
    except IntegrityError:
        raise IntegrityError(
            what,
            "cannot unseal: sealed by an enclave with another measurement (trusted code or "
            "model configuration changed), on another platform, or tampered",
        ) from None
    return bytes(out)


class SealedStore:
    """Sealed blobs as files ``<state>/sealed/<label>``; writes are atomic and durable.

    They live in the untrusted state directory: the attacker may read, delete or replace them,
    which at worst forces a new provisioning (a sealed blob opens only on this platform, in an
    enclave with this measurement, under its own label).
    """

    def __init__(self, platform: Platform, measurement: bytes) -> None:
        self.platform = platform
        self.measurement = measurement
        self.dir = private_dir(platform.state_dir / "sealed", "sealed-data directory")

    def _path(self, label: str) -> Path:
        if not _LABEL_RE.match(label):
            raise ConfigError(f"invalid sealed-data label {label!r}")
        return self.dir / label

    def put(self, label: str, data: bytes) -> None:
        atomic_write(self._path(label), seal(self.platform, self.measurement, label, data))

    def get(self, label: str) -> bytes | None:
        try:
            blob = read_regular(self._path(label), "sealed data", nofollow=True, max_bytes=1 << 20)
        except NotFoundError:
            return None
        return unseal(self.platform, self.measurement, label, blob)
