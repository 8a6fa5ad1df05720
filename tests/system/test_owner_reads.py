"""Owner tools open a mirror once: ``verify`` and ``export`` read the blob a single time.

A mirror can be hundreds of MiB; reading it once per step (peek, verify, load) multiplied the
cost of the owner's commands. Every backend read (and ``map``) is counted here. The blob is read
in one read of the size the platform recorded for its save (review 22: the stored size must not
size the read; issue 23: no size probe, no separate header read when the record knows the size).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from darknet_mirrors import train_mirrors

import plinius.cli.export
import plinius.cli.verify
from plinius.backends.base import Backend
from plinius.backends.registry import open_backend, open_read_only
from plinius.cli.main import main
from plinius.core.crypto import make_engine, read_key_file
from plinius.enclave.counter import MirrorCounters, slot_name
from plinius.enclave.platform import open_platform
from plinius.enclave.trusted import mirror_guard
from plinius.format.mirror import PEEK_WHOLE, MirrorStore


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A key, its encrypted data and a committed mirror of ``tiny`` in tmpfs and in a pool."""
    root = tmp_path_factory.mktemp("owner-reads")
    shm = Path(tempfile.mkdtemp(prefix="plinius-test-reads-", dir="/dev/shm"))
    specs = {"tmpfs": f"tmpfs:{shm / 'files'}", "romulus": f"romulus:{shm / 'p.pool'}?size=32M"}
    try:
        key = train_mirrors(root, specs, 3)
        yield {"key": str(key), "root": str(root), **specs}
    finally:
        shutil.rmtree(shm, ignore_errors=True)


def counting_reads(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[str]:
    """Make ``module``'s ``open_read_only`` hand out backends whose reads are logged."""
    calls: list[str] = []

    @contextmanager
    def opener(spec: str) -> Iterator[Backend]:
        with open_read_only(spec) as backend:
            spy_reads(backend, calls)
            yield backend

    monkeypatch.setattr(module, "open_read_only", opener)
    return calls


@pytest.mark.parametrize("kind", ["tmpfs", "romulus"])
def test_verify_reads_the_mirror_once(
    trained: dict[str, str], kind: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    calls = counting_reads(monkeypatch, plinius.cli.verify)
    assert main(["verify", "--backend", trained[kind], "--key-file", trained["key"]]) == 0
    assert capsys.readouterr().out.startswith("ok: mirror of tiny at iteration 3")
    assert_read_once(calls, recorded_size(trained, kind))


def recorded_size(trained: dict[str, str], kind: str) -> int:
    """The blob size the platform recorded for the committed mirror of ``kind``."""
    with plinius.cli.verify.open_read_only(trained[kind]) as backend:
        slot = slot_name(*backend.slot_parts(), "mirror")
    state = MirrorCounters(open_platform(), create=False).read(slot)
    assert state is not None and state.committed_extent is not None
    return state.committed_extent.size


def assert_read_once(calls: list[str], size: int) -> None:
    """One read: the whole blob, of the size the platform recorded (no probe, no header first)."""
    assert calls == [f"read('mirror', 0, {size})"], calls


@pytest.mark.parametrize("kind", ["tmpfs", "romulus"])
def test_a_peek_is_one_read(trained: dict[str, str], kind: str) -> None:
    """Issue 23: a peek of a small mirror (``tiny``: under ``PEEK_WHOLE``) is one read of the
    size the platform recorded: no size probe, no header read, no manifest read apart."""
    size = recorded_size(trained, kind)
    assert size <= PEEK_WHOLE
    with open_backend(trained[kind], create="never") as backend:
        calls = spy_reads(backend)
        store = MirrorStore(backend, make_engine(read_key_file(trained["key"])), None)
        guard = mirror_guard(MirrorCounters(open_platform(), create=False), store, settle=False)
        info = store.peek(freshness=guard)
        assert info is not None and info.iteration == 3
        assert calls == [f"read('mirror', 0, {size})"], calls
        calls.clear()
        assert store.peek() is not None  # no record to size it: a probe, then one read
        assert calls == ["read('mirror', 0, 0)", f"read('mirror', 0, {size})"], calls


def spy_reads(backend: Backend, calls: list[str] | None = None) -> list[str]:
    """Log every ``read`` and ``map`` of ``backend`` (into ``calls``, or a new list)."""
    calls = [] if calls is None else calls
    for name in ("read", "map"):
        real = getattr(backend, name)

        def logged(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            calls.append(f"{_name}{args}")
            return _real(*args, **kw)

        setattr(backend, name, logged)
    return calls


@pytest.mark.parametrize("kind", ["tmpfs", "romulus"])
def test_export_reads_the_mirror_once(
    trained: dict[str, str], kind: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    calls = counting_reads(monkeypatch, plinius.cli.export)
    weights = Path(trained["root"]) / f"{kind}.weights"
    argv = ["export", "--backend", trained[kind], "--key-file", trained["key"]]
    assert main([*argv, "--weights", str(weights)]) == 0
    assert "tiny at iteration 3" in capsys.readouterr().out
    assert weights.stat().st_size > 0
    assert_read_once(calls, recorded_size(trained, kind))


def test_the_counter_sees_every_read(
    trained: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not blind: reading the blob per step (header first, then records) counts twice."""
    calls = counting_reads(monkeypatch, plinius.cli.verify)
    with plinius.cli.verify.open_read_only(trained["tmpfs"]) as backend:
        store = MirrorStore(backend, make_engine(read_key_file(trained["key"])), None)
        assert store.peek() is not None and store.verify() is not None
    assert len(calls) >= 2
