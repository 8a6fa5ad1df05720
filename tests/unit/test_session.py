"""The one host-side session: what ``plinius train``, ``TorchMirror`` and the bench share."""

from __future__ import annotations

from pathlib import Path

import pytest

from plinius.backends.base import Backend
from plinius.core.crypto import generate_key, write_key_file
from plinius.core.errors import BackendError, ConfigError
from plinius.enclave.platform import SimulatedPlatform
from plinius.nn import load_model
from plinius.session import Replication, Session

DEAD = "redis://127.0.0.1:1/0?deadline=2"  # nothing listens on port 1


def session(tmp_path: Path, said: list[str]) -> Session:
    """A session on a simulated CPU and key of ``tmp_path``'s own (made on first use)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    key = tmp_path / "k.key"
    if not key.exists():
        write_key_file(key, generate_key())
    platform = SimulatedPlatform(tmp_path / "cpu", state_dir=tmp_path / "state")
    return Session(
        load_model("tiny"), label="tiny", key_file=key, platform=platform, say=said.append
    )


def test_the_host_keeps_no_key_and_closes_what_it_opened(tmp_path: Path) -> None:
    said: list[str] = []
    s = session(tmp_path, said)
    assert s.provisioned  # a new enclave: attested and provisioned
    assert not any(isinstance(v, bytes) and len(v) == 16 for v in vars(s).values())
    backend = s.open(f"tmpfs:{tmp_path / 'm'}", mirror_bytes=1 << 20)
    s.attach(backend)
    assert s.restore().iteration is None  # nothing mirrored yet: a new run
    s.mirror()
    s.close()
    with pytest.raises(BackendError, match="closed"):
        backend.read("mirror")
    again = session(tmp_path, [])  # the same CPU and key: the sealed key is reused
    assert not again.provisioned
    again.close()


def test_a_replica_that_does_not_open_is_said_and_reported_or_refused(tmp_path: Path) -> None:
    said: list[str] = []
    s = session(tmp_path, said)
    backend = s.open(f"tmpfs:{tmp_path / 'm'}", mirror_bytes=1 << 20)
    s.attach(backend, replication=Replication([DEAD]), mirror_bytes=1 << 20)
    assert any(f"replica {DEAD} is unavailable" in m for m in said)
    report = s.replica_report()
    assert report is not None and report["replicas"][-1]["spec"] == DEAD
    s.close()
    strict = session(tmp_path / "strict", [])
    b2 = strict.open(f"tmpfs:{tmp_path / 'm2'}", mirror_bytes=1 << 20)
    with pytest.raises(BackendError):
        strict.attach(b2, replication=Replication([DEAD], required=True), mirror_bytes=1 << 20)
    strict.close()


def test_a_backend_object_stays_the_callers_and_a_bad_spec_is_one_line(tmp_path: Path) -> None:
    s = session(tmp_path, [])
    mine = s.open(f"tmpfs:{tmp_path / 'm'}", mirror_bytes=1 << 20)
    s.close()
    s2 = session(tmp_path, [])
    from plinius.backends import open_backend

    with open_backend(f"tmpfs:{tmp_path / 'n'}") as given:
        assert s2.open(given, mirror_bytes=0) is given
        s2.close()
        assert isinstance(given, Backend) and given.read("mirror") is None  # still open
    with pytest.raises(ConfigError):
        s2.open("", mirror_bytes=0)
    del mine
