"""The provisioning channel: X25519 ECDH, HKDF-SHA256, and the data key wrapped with AES-GCM.

The wrap is one AES-GCM record (``IV || ciphertext || tag``) through the crypto engine interface,
so every engine reads what any other wrote.
"""

from __future__ import annotations

import hashlib

from Crypto.Hash import SHA256
from Crypto.Protocol.DH import key_agreement
from Crypto.Protocol.KDF import HKDF
from Crypto.PublicKey import ECC

from plinius.core.crypto import OVERHEAD, make_engine
from plinius.core.errors import IntegrityError

INFO = b"plinius provisioning channel v1"


class EphemeralKey:
    """One side's X25519 key pair for one provisioning session."""

    def __init__(self) -> None:
        self._priv = ECC.generate(curve="curve25519")

    @property
    def public(self) -> bytes:
        return bytes(self._priv.public_key().export_key(format="DER"))

    def channel_key(self, peer_public: bytes, transcript: bytes) -> bytes:
        """Shared 128-bit key bound to the session transcript (both public keys and the quote)."""
        try:
            peer = ECC.import_key(peer_public)
        except (ValueError, IndexError, TypeError):
            raise IntegrityError("peer channel key", "not an X25519 public key") from None
        if peer.curve.lower() not in ("curve25519", "x25519"):
            raise IntegrityError("peer channel key", f"curve {peer.curve}, expected X25519")
        salt = hashlib.sha256(transcript).digest()

        def kdf(secret: bytes) -> bytes:
            out = HKDF(secret, 16, salt=salt, hashmod=SHA256, context=INFO)
            assert isinstance(out, bytes)
            return out

        key = key_agreement(static_priv=self._priv, static_pub=peer, kdf=kdf)
        assert isinstance(key, bytes)
        return key


def wrap(channel_key: bytes, secret: bytes, aad: bytes, engine: str | None = None) -> bytes:
    out = bytearray(len(secret) + OVERHEAD)
    make_engine(channel_key, engine).encrypt_into(aad, secret, memoryview(out))
    return bytes(out)


def unwrap(
    channel_key: bytes, blob: bytes, aad: bytes, what: str, engine: str | None = None
) -> bytes:
    if len(blob) < OVERHEAD:
        raise IntegrityError(what, "message too short")
    out = bytearray(len(blob) - OVERHEAD)
    try:
        make_engine(channel_key, engine).decrypt_into(aad, blob, out, what)
    except IntegrityError:
        raise IntegrityError(what, "tag mismatch (altered in transit or wrong session)") from None
    return bytes(out)
