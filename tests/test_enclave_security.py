"""Simulated SGX pieces: platform, quotes, provisioning channel, sealing and monotonic counters."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from plinius.enclave.attestation import (
    AttestationError,
    Quote,
    make_quote,
    report_data_for,
    verify_quote,
)
from plinius.enclave.channel import EphemeralKey, unwrap, wrap
from plinius.enclave.counter import SealedFileCounter, counter_name
from plinius.enclave.platform import SimulatedPlatform
from plinius.enclave.sealing import SealedStore, seal, unseal
from plinius.errors import IntegrityError

M1 = bytes(32 * [1])
M2 = bytes(32 * [2])


@pytest.fixture
def platform(tmp_path: Path) -> SimulatedPlatform:
    return SimulatedPlatform(tmp_path / "platform")


def test_platform_files_are_private_and_stable(tmp_path: Path) -> None:
    p1 = SimulatedPlatform(tmp_path / "p")
    for name in ("fuse.key", "quoting.pem"):
        assert stat.S_IMODE(os.stat(tmp_path / "p" / name).st_mode) == 0o600
    p2 = SimulatedPlatform(tmp_path / "p")
    assert p1.derive(b"x", M1) == p2.derive(b"x", M1)
    assert p1.derive(b"x", M1) != p1.derive(b"x", M2)
    assert p1.quoting_public_pem == p2.quoting_public_pem
    assert SimulatedPlatform(tmp_path / "other").derive(b"x", M1) != p1.derive(b"x", M1)


def test_quote_verifies_and_binds_everything(platform: SimulatedPlatform, tmp_path: Path) -> None:
    enclave_key = EphemeralKey()
    q = make_quote(platform, M1, report_data_for(enclave_key.public))
    pem = platform.quoting_public_pem
    verify_quote(Quote.from_bytes(q.to_bytes()), pem, M1, enclave_key.public)
    with pytest.raises(AttestationError, match="measurement"):
        verify_quote(q, pem, M2, enclave_key.public)
    with pytest.raises(AttestationError, match="channel key"):
        verify_quote(q, pem, M1, EphemeralKey().public)
    forged = Quote(M2, q.report_data, q.signature)
    with pytest.raises(AttestationError, match="signature"):
        verify_quote(forged, pem, M2, enclave_key.public)
    other_platform = SimulatedPlatform(tmp_path / "evil")
    with pytest.raises(AttestationError, match="signature"):
        verify_quote(q, other_platform.quoting_public_pem, M1, enclave_key.public)
    with pytest.raises(AttestationError, match="malformed"):
        Quote.from_bytes(b"{not json")


def test_channel_agrees_and_detects_tampering() -> None:
    owner, enclave = EphemeralKey(), EphemeralKey()
    transcript = b"quote" + owner.public + enclave.public
    k_owner = owner.channel_key(enclave.public, transcript)
    k_enclave = enclave.channel_key(owner.public, transcript)
    assert k_owner == k_enclave and len(k_owner) == 16
    assert enclave.channel_key(owner.public, transcript + b"x") != k_owner
    msg = wrap(k_owner, b"data key 16bytes", b"aad")
    assert unwrap(k_enclave, msg, b"aad", "key") == b"data key 16bytes"
    bad = bytearray(msg)
    bad[20] ^= 1
    with pytest.raises(IntegrityError, match="provisioned key"):
        unwrap(k_enclave, bytes(bad), b"aad", "provisioned key")
    with pytest.raises(IntegrityError):
        unwrap(k_enclave, msg, b"other aad", "provisioned key")


def test_sealing_is_bound_to_measurement_and_label(platform: SimulatedPlatform) -> None:
    blob = seal(platform, M1, "data-key", b"secret")
    assert b"secret" not in blob
    assert unseal(platform, M1, "data-key", blob) == b"secret"
    with pytest.raises(IntegrityError, match="another measurement"):
        unseal(platform, M2, "data-key", blob)
    with pytest.raises(IntegrityError):
        unseal(platform, M1, "other-label", blob)
    store = SealedStore(platform, M1)
    assert store.get("k") is None
    store.put("k", b"v1")
    store.put("k", b"v2")
    assert store.get("k") == b"v2"
    assert SealedStore(platform, M2).dir == store.dir
    with pytest.raises(IntegrityError):
        SealedStore(platform, M2).get("k")


def test_counter_is_monotonic_persistent_and_sealed(platform: SimulatedPlatform) -> None:
    c = SealedFileCounter(platform)
    name = counter_name("romulus:/x", "mirror", M1)
    assert c.read(name) == 0
    c.advance(name, 3)
    c.advance(name, 3)
    c.advance(name, 7)
    assert SealedFileCounter(platform).read(name) == 7
    with pytest.raises(ValueError, match="monotonic"):
        c.advance(name, 6)
    assert c.read(name) == 7
    other = counter_name("romulus:/y", "mirror", M1)
    assert other != name and c.read(other) == 0
    path = c.dir / name
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError):
        c.read(name)
