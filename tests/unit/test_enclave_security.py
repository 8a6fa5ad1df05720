"""Simulated SGX pieces: platform, quotes, provisioning channel, sealing and monotonic counters."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from plinius.core.errors import ConfigError, IntegrityError, RollbackError
from plinius.enclave.attestation import (
    AttestationError,
    Quote,
    make_quote,
    report_data_for,
    verify_quote,
)
from plinius.enclave.channel import EphemeralKey, unwrap, wrap
from plinius.enclave.counter import Extent, MirrorCounters, Stamp
from plinius.enclave.platform import SimulatedPlatform
from plinius.enclave.sealing import SealedStore, seal, unseal

M1 = bytes(32 * [1])
M2 = bytes(32 * [2])


@pytest.fixture
def platform(tmp_path: Path) -> SimulatedPlatform:
    return SimulatedPlatform(tmp_path / "platform", state_dir=tmp_path / "state")


def test_platform_files_are_private_and_stable(tmp_path: Path) -> None:
    p1 = SimulatedPlatform(tmp_path / "p", state_dir=tmp_path / "s")
    assert stat.S_IMODE(os.stat(tmp_path / "p").st_mode) == 0o700
    for name in ("fuse.key", "quoting.pem"):
        assert stat.S_IMODE(os.stat(tmp_path / "p" / name).st_mode) == 0o600
    assert not (tmp_path / "s" / "fuse.key").exists()  # the CPU secret is never in the state dir
    p2 = SimulatedPlatform(tmp_path / "p", state_dir=tmp_path / "s")
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


def _stamp(run: int, version: int, save: int) -> Stamp:
    return Stamp(bytes([run]) * 16, version, bytes([save]) * 16)


def test_slot_accepts_only_the_committed_or_in_flight_stamp(platform: SimulatedPlatform) -> None:
    c = MirrorCounters(platform)
    slot = "a" * 32
    assert c.read(slot) is None
    c.check(slot, "here", None, settle=True)  # nothing committed, nothing found: fine
    with pytest.raises(RollbackError, match="never committed"):
        c.check(slot, "here", _stamp(1, 1, 1), settle=False)  # a mirror claims a version
    s1, s2 = _stamp(1, 1, 1), _stamp(1, 2, 2)
    c.begin(slot, s1)
    c.commit(slot, s1)
    c.begin(slot, s2)  # crash here: both the old and the in-flight mirror are acceptable
    assert MirrorCounters(platform).read(slot) is not None
    c.check(slot, "here", s1, settle=False)
    c.check(slot, "here", s2, settle=False)
    c.check(slot, "here", s1, settle=True)  # found the old one: the in-flight one is burnt
    with pytest.raises(RollbackError):
        c.check(slot, "here", s2, settle=False)
    with pytest.raises(ValueError):
        c.begin(slot, _stamp(1, 2, 9))  # a burnt version is never issued again
    for bad, word in (
        (_stamp(1, 1, 7), "spliced"),  # same run and version, another save
        (_stamp(2, 1, 1), "another run"),
        (_stamp(1, 0, 1), "older"),
    ):
        with pytest.raises(RollbackError, match=word):
            c.check(slot, "here", bad, settle=False)
    with pytest.raises(RollbackError, match="deleted"):
        c.check(slot, "here", None, settle=False)
    path = c.dir / slot
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError):
        c.read(slot)


def test_platform_location_must_be_apart_from_the_state_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="overlap"):
        SimulatedPlatform(tmp_path / "s" / "cpu", state_dir=tmp_path / "s")
    with pytest.raises(ConfigError, match="overlap"):
        SimulatedPlatform(tmp_path / "x", state_dir=tmp_path / "x")


def test_slot_records_each_saves_extent_and_admits_only_it(platform: SimulatedPlatform) -> None:
    """Review 22: the record keeps (blob size, manifest length) with each stamp; ``admit``
    refuses another extent, or a stamp it does not hold, before a reader allocates anything.
    A retried begin of the same save is idempotent; settling keeps the extent of what stays."""
    c = MirrorCounters(platform)
    slot = "b" * 32
    s1, s2 = _stamp(1, 1, 1), _stamp(1, 2, 2)
    e1, e2 = Extent(1000, 300), Extent(2000, 400)
    with pytest.raises(RollbackError, match="never committed"):
        c.admit(slot, "here", s1, e1)
    c.begin(slot, s1, e1)
    c.begin(slot, s1, e1)  # the same save again (a replica copy retried)
    with pytest.raises(ValueError):
        c.begin(slot, s1, e2)  # not the same save: its version is not above high
    c.commit(slot, s1)
    assert c.admit(slot, "here", s1, e1) is True
    with pytest.raises(RollbackError, match="recorded 1000 B and 300 B"):
        c.admit(slot, "here", s1, Extent(1000 + 4096, 300))
    with pytest.raises(RollbackError, match="recorded 1000 B"):
        c.admit(slot, "here", s1, Extent(1000, 300 + (4 << 30)))
    c.begin(slot, s2, e2)
    assert c.admit(slot, "here", s1, e1) and c.admit(slot, "here", s2, e2)
    with pytest.raises(RollbackError):
        c.admit(slot, "here", _stamp(1, 3, 3), e2)  # a stamp the record does not hold
    c.check(slot, "here", s2, settle=True)
    state = c.read(slot)
    assert state is not None and state.committed == s2 and state.committed_extent == e2
    assert state.pending is None and state.pending_extent is None
