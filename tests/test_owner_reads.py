"""Owner tools open a mirror once: ``verify`` and ``export`` read the blob a single time.

A mirror can be hundreds of MiB; reading it once per step (peek, verify, load) multiplied the
cost of the owner's commands. Every backend read (and ``map``) is counted here. Before the blob
is read, its size is probed and its 128-byte header read and admitted by the platform's record
(review 22: the stored size must not size the read): two reads that move no record.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cli_runner import run_cli

import plinius.cli.export
import plinius.cli.verify
from plinius.backends.base import Backend
from plinius.backends.registry import open_backend
from plinius.cli.main import main
from plinius.crypto import generate_key, write_key_file


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A key, its encrypted data and a committed mirror of ``tiny`` in tmpfs and in a pool."""
    root = tmp_path_factory.mktemp("owner-reads")
    shm = Path(tempfile.mkdtemp(prefix="plinius-test-reads-", dir="/dev/shm"))
    key = root / "owner.key"
    write_key_file(key, generate_key())
    data = root / "data.pld"
    res = run_cli("owner", "encrypt-data", "--key-file", str(key), "--out", str(data))
    assert res.returncode == 0, res.stderr
    specs = {"tmpfs": f"tmpfs:{shm / 'files'}", "romulus": f"romulus:{shm / 'p.pool'}?size=32M"}
    try:
        for spec in specs.values():
            res = run_cli(
                "train", "--model", "tiny", "--backend", spec, "--key-file", str(key),
                "--data", str(data), "--iterations", "3",
            )  # fmt: skip
            assert res.returncode == 0, res.stderr
        yield {"key": str(key), "root": str(root), **specs}
    finally:
        shutil.rmtree(shm, ignore_errors=True)


def counting_reads(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[str]:
    """Make ``module``'s ``open_backend`` hand out backends whose reads are logged."""
    calls: list[str] = []

    @contextmanager
    def opener(spec: str, **kwargs: Any) -> Iterator[Backend]:
        with open_backend(spec, **kwargs) as backend:
            for name in ("read", "map"):
                real = getattr(backend, name)

                def logged(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
                    calls.append(f"{_name}{args}")
                    return _real(*args, **kw)

                setattr(backend, name, logged)
            yield backend

    monkeypatch.setattr(module, "open_backend", opener)
    return calls


@pytest.mark.parametrize("kind", ["tmpfs", "romulus"])
def test_verify_reads_the_mirror_once(
    trained: dict[str, str], kind: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    calls = counting_reads(monkeypatch, plinius.cli.verify)
    assert main(["verify", "--backend", trained[kind], "--key-file", trained["key"]]) == 0
    assert capsys.readouterr().out.startswith("ok: mirror of tiny at iteration 3")
    assert_read_once(calls)


def assert_read_once(calls: list[str]) -> None:
    """A size probe, the header, then the whole blob read once (its admitted size)."""
    assert calls[:2] == ["read('mirror', 0, 0)", "read('mirror', 0, 128)"], calls
    (whole,) = calls[2:]
    head = "read('mirror', 0, "
    assert whole.startswith(head) and int(whole[len(head) : -1]) > 128, calls


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
    assert_read_once(calls)


def test_the_counter_sees_every_read(
    trained: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not blind: reading the blob per step (header first, then records) counts twice."""
    calls = counting_reads(monkeypatch, plinius.cli.verify)
    from plinius.crypto import make_engine, read_key_file
    from plinius.mirror import MirrorStore

    with plinius.cli.verify.open_backend(trained["tmpfs"], create="never") as backend:
        store = MirrorStore(backend, make_engine(read_key_file(trained["key"])), None)
        assert store.peek() is not None and store.verify() is not None
    assert len(calls) >= 2
