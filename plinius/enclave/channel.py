"""The provisioning channel: X25519 ECDH, HKDF-SHA256, and the data key wrapped with AES-GCM."""

from __future__ import annotations

import hashlib
import os

from Crypto.Cipher import AES
from Crypto.Hash import SHA256
from Crypto.Protocol.DH import key_agreement
from Crypto.Protocol.KDF import HKDF
from Crypto.PublicKey import ECC

from plinius.errors import IntegrityError

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


def wrap(channel_key: bytes, secret: bytes, aad: bytes) -> bytes:
    iv = os.urandom(12)
    c = AES.new(channel_key, AES.MODE_GCM, nonce=iv)
    c.update(aad)
    ct, tag = c.encrypt_and_digest(secret)
    return iv + ct + tag


def unwrap(channel_key: bytes, blob: bytes, aad: bytes, what: str) -> bytes:
    if len(blob) < 28:
        raise IntegrityError(what, "message too short")
    c = AES.new(channel_key, AES.MODE_GCM, nonce=blob[:12])
    c.update(aad)
    try:
        return bytes(c.decrypt_and_verify(blob[12:-16], blob[-16:]))
    except ValueError:
        raise IntegrityError(what, "tag mismatch (altered in transit or wrong session)") from None
