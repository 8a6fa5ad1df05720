"""SGX-style sealing: data only an enclave with the same measurement on this platform can open.

The enclave seals the provisioned data key so that a restart after a crash needs no new
provisioning; a changed binary or model configuration (another measurement) cannot unseal it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from Crypto.Cipher import AES

from plinius.enclave.platform import SimulatedPlatform
from plinius.errors import ConfigError, IntegrityError

MAGIC = b"PLNSEAL1"
_LABEL_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def seal(platform: SimulatedPlatform, measurement: bytes, label: str, data: bytes) -> bytes:
    key = platform.derive(b"seal", measurement)
    iv = os.urandom(12)
    c = AES.new(key, AES.MODE_GCM, nonce=iv)
    c.update(MAGIC + label.encode())
    ct, tag = c.encrypt_and_digest(data)
    return MAGIC + iv + ct + tag


def unseal(platform: SimulatedPlatform, measurement: bytes, label: str, blob: bytes) -> bytes:
    what = f"sealed {label}"
    if len(blob) < len(MAGIC) + 28 or not blob.startswith(MAGIC):
        raise IntegrityError(what, "not sealed data")
    key = platform.derive(b"seal", measurement)
    body = blob[len(MAGIC) :]
    c = AES.new(key, AES.MODE_GCM, nonce=body[:12])
    c.update(MAGIC + label.encode())
    try:
        return bytes(c.decrypt_and_verify(body[12:-16], body[-16:]))
    except ValueError:
        raise IntegrityError(
            what,
            "cannot unseal: sealed by an enclave with another measurement (trusted code or "
            "model configuration changed), on another platform, or tampered",
        ) from None


class SealedStore:
    """Sealed blobs as files ``<state>/sealed/<label>``; writes are atomic and durable."""

    def __init__(self, platform: SimulatedPlatform, measurement: bytes) -> None:
        self.platform = platform
        self.measurement = measurement
        self.dir = platform.dir / "sealed"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, label: str) -> Path:
        if not _LABEL_RE.match(label):
            raise ConfigError(f"invalid sealed-data label {label!r}")
        return self.dir / label

    def put(self, label: str, data: bytes) -> None:
        atomic_write(self._path(label), seal(self.platform, self.measurement, label, data))

    def get(self, label: str) -> bytes | None:
        try:
            blob = self._path(label).read_bytes()
        except FileNotFoundError:
            return None
        return unseal(self.platform, self.measurement, label, blob)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old or the new content."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
