"""The enclave measurement (stand-in for MRENCLAVE): trusted code plus model architecture.

Hashes the source of every module that runs inside the enclave and the model's architecture
fingerprint. A change to either gives another measurement: the owner's attestation notices, and
keys sealed by the old enclave cannot be unsealed by the new one.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

import plinius

TRUSTED = (
    "enclave",
    "nn",
    "core/crypto.py",
    "format",
)


@cache
def code_hash() -> bytes:
    """SHA-256 over the trusted modules' sources, in a fixed order."""
    root = Path(plinius.__file__).resolve().parent
    h = hashlib.sha256(b"plinius-enclave-code-v1")
    for name in TRUSTED:
        p = root / name
        files = sorted(p.rglob("*.py")) if p.is_dir() else [p]
        for f in files:
            rel = f.relative_to(root).as_posix().encode()
            data = f.read_bytes()
            h.update(len(rel).to_bytes(4, "little") + rel + len(data).to_bytes(8, "little") + data)
    return h.digest()


def measurement(model_fingerprint: bytes) -> bytes:
    return hashlib.sha256(b"plinius-mrenclave-v1" + code_hash() + model_fingerprint).digest()
