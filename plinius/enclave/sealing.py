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
from plinius.errors import ConfigError, IntegrityError, NotFoundError
from plinius.fsutil import atomic_write, private_dir, read_regular

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
    """Sealed blobs as files ``<state>/sealed/<label>``; writes are atomic and durable.

    They live in the untrusted state directory: the attacker may read, delete or replace them,
    which at worst forces a new provisioning (a sealed blob opens only on this platform, in an
    enclave with this measurement, under its own label).
    """

    def __init__(self, platform: SimulatedPlatform, measurement: bytes) -> None:
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
