"""Hostile review of issue 23's hot-path changes (counter cache, sized peek, export publish).

Each test asserts the SECURE behaviour: a failing test is a finding.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import resource
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from plinius.backends.base import Backend, Blob
from plinius.backends.registry import open_backend
from plinius.core import fsutil
from plinius.core.crypto import generate_key, make_engine, write_key_file
from plinius.core.errors import PliniusError
from plinius.enclave.counter import Extent, MirrorCounters, Stamp, slot_name
from plinius.enclave.platform import SimulatedPlatform
from plinius.enclave.trusted import mirror_guard
from plinius.format.mirror import MirrorStore, Record

KEY = bytes(range(16))
FP = hashlib.sha256(b"review model").digest()


class W:
    def __init__(self, backend: Backend, tmp: Path) -> None:
        self.backend = backend
        self.store = MirrorStore(backend, make_engine(KEY), FP)
        self.counters = MirrorCounters(SimulatedPlatform(tmp / "cpu"))
        self.slot = slot_name(*backend.slot_parts(), self.store.blob)
        self.version = 0
        self.reads: list[tuple[int, int | None]] = []
        real = backend.read

        def read(blob: str, offset: int = 0, length: int | None = None) -> Blob | None:
            self.reads.append((offset, length))
            return real(blob, offset, length)

        backend.read = read  # type: ignore[method-assign]

    def guard(self, settle: bool = False) -> Any:
        return mirror_guard(self.counters, self.store, settle=settle)

    def save(self, nbytes: int, commit: bool = True, run: bytes = b"r" * 16) -> bytes:
        self.version += 1
        stamp = Stamp(run, self.version, os.urandom(16))
        arr = np.random.default_rng(self.version).random(nbytes // 4, dtype=np.float32)

        def begin(size: int, manifest: int) -> None:
            self.counters.begin(self.slot, stamp, Extent(size, manifest))

        self.store.save([Record(0, "w", arr)], self.version, run_id=stamp.run_id,
                        save_id=stamp.save_id, before_write=begin)  # fmt: skip
        if commit:
            self.counters.commit(self.slot, stamp)
        got = self.backend.read(self.store.blob)
        assert got is not None
        return bytes(got.data)

    def put(self, blob: bytes) -> None:
        with self.backend.begin_write(self.store.blob, len(blob)) as txn:
            txn.view(0, len(blob))[:] = blob
            txn.commit()
        self.reads.clear()


@pytest.fixture
def w(tmp_path: Path, shm_dir: Path) -> Iterator[W]:
    with open_backend(f"tmpfs:{shm_dir / 'm'}") as b:
        yield W(b, tmp_path)


def _mutations(rng: random.Random, blobs: list[bytes]) -> Iterator[tuple[str, bytes]]:
    """Hostile variants: header fields edited, cut, grown, spliced across saves."""
    fields = {"size": (64, "<Q"), "m_at": (72, "<Q"), "m_len": (80, "<I"), "count": (84, "<I"),
              "version": (24, "<Q"), "segment": (120, "<I"), "fmt": (8, "<H")}  # fmt: skip
    for _ in range(300):
        src = bytearray(rng.choice(blobs))
        kind = rng.choice(["field", "cut", "grow", "splice", "byte", "headswap"])
        if kind == "field":
            name, (at, f) = rng.choice(list(fields.items()))
            n = struct.calcsize(f)
            val = rng.choice([0, 1, 127, 128, len(src), len(src) - 1, len(src) + 1,
                              (1 << (8 * n)) - 1, 1 << (8 * n - 2), rng.randrange(1 << (8 * n))])  # fmt: skip
            struct.pack_into(f, src, at, val % (1 << (8 * n)))
            yield f"field {name}={val}", bytes(src)
        elif kind == "cut":
            k = rng.randrange(0, len(src))
            yield f"cut {k}", bytes(src[:k])
        elif kind == "grow":
            yield "grow", bytes(src) + os.urandom(rng.choice([1, 28, 4096, 300000]))
        elif kind == "splice":
            other = rng.choice(blobs)
            k = rng.randrange(128, min(len(src), len(other)))
            yield f"splice {k}", bytes(src[:k]) + other[k:]
        elif kind == "headswap":
            other = rng.choice(blobs)
            yield "headswap", other[:128] + bytes(src[128:])
        else:
            k = rng.randrange(len(src))
            src[k] ^= 1 << rng.randrange(8)
            yield f"byte {k}", bytes(src)


@pytest.mark.parametrize("big", [False, True])
def test_hostile_blobs_never_read_past_the_record_nor_accepted(w: W, big: bool) -> None:
    """Issue 23 item 2: sized first read; hostile blobs get a PliniusError, never a read longer
    than the largest recorded size, never acceptance of a blob that is not byte-identical."""
    n = (9 << 20) if big else (20 << 10)
    b1 = w.save(n)
    b2 = w.save(n + 8192)
    b3 = w.save(n + 4096, commit=False)  # killed between backend commit and record commit
    recorded = max(len(b2), len(b3))
    rng = random.Random(23 + big)
    for what, blob in _mutations(rng, [b1, b2, b3]):
        w.put(blob)
        for op in ("peek", "open", "load"):
            w.reads.clear()
            try:
                fn = getattr(w.store, op)
                got = fn(freshness=w.guard())
                if op == "open" and got is not None:
                    got = got.load()
            except PliniusError:
                pass
            else:
                if got is None:
                    raise AssertionError(f"{what}: {op} found no mirror")
                info = got if op == "peek" else got.info
                assert info.version in (2, 3), f"{what}: {op} accepted version {info.version}"
                if op != "peek":  # gaps are unauthenticated by design: compare plaintext
                    want = np.random.default_rng(info.version).random(
                        (n + (8192 if info.version == 2 else 4096)) // 4, dtype=np.float32)
                    assert np.array_equal(got.arrays[(0, "w")], want), f"{what}: {op} wrong data"
            assert all((ln or 0) <= recorded for _, ln in w.reads), (what, op, w.reads)


def test_blob_shrunk_during_the_read_is_one_plinius_error(
    w: W, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attacker truncates the file between the reader's fstat and its pread (same inode):
    the reader must refuse with a PliniusError (one line), not struct.error / ValueError."""
    blob = w.save(20 << 10)
    path = Path(w.backend.dir) / "mirror"  # type: ignore[attr-defined]
    real_fstat = os.fstat
    armed = {"on": True}

    def fstat(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        if armed["on"] and os.readlink(f"/proc/self/fd/{fd}") == str(path):
            armed["on"] = False
            os.truncate(path, 60)  # what a concurrent attacker does at this instant
        return st

    monkeypatch.setattr(os, "fstat", fstat)
    try:
        w.store.open(freshness=w.guard())
    except PliniusError:
        pass
    monkeypatch.undo()
    assert len(blob) > 60


def test_blob_shrunk_after_header_is_one_plinius_error(
    w: W, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same, cut inside the records (header intact): OpenedMirror gets short data."""
    blob = w.save(20 << 10)
    path = Path(w.backend.dir) / "mirror"  # type: ignore[attr-defined]
    real_fstat = os.fstat
    armed = {"on": True}

    def fstat(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        if armed["on"] and os.readlink(f"/proc/self/fd/{fd}") == str(path):
            armed["on"] = False
            os.truncate(path, len(blob) // 2)
        return st

    monkeypatch.setattr(os, "fstat", fstat)
    try:
        w.store.open(freshness=w.guard())
    except PliniusError:
        pass


# --- counter ------------------------------------------------------------------------------------


def test_kill_during_first_record_create_does_not_brick_the_slot(tmp_path: Path) -> None:
    """create_exclusive() creates the record file under its final name, then writes it: a
    SIGKILL in between leaves an empty record (what this test plants, as the kill would) and
    every later run of the slot, --fresh included, fails until a platform file is deleted by
    hand. (Availability only; the platform dir is trusted.)"""
    platform = SimulatedPlatform(tmp_path / "cpu")
    c = MirrorCounters(platform)
    slot = "e" * 32
    (c.dir / slot).touch(mode=0o600)  # state after a kill between O_CREAT and write
    c2 = MirrorCounters(platform)
    try:
        state = c2.read(slot)
    except PliniusError as exc:
        pytest.fail(f"slot bricked by a kill during its first save: {exc}")
    assert state is None


def test_create_exclusive_short_write_is_not_success(tmp_path: Path) -> None:
    """os.write may write less than asked (ENOSPC mid-write, RLIMIT_FSIZE, > 2 GiB): the
    file must not be left short and reported written. Child process: RLIMIT_FSIZE 4 KiB."""
    out = tmp_path / "x.safetensors"
    code = (
        "import resource,signal,sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE,(4096,4096))\n"
        "from plinius.core import fsutil\n"
        f"fsutil.create_exclusive({str(out)!r}, b'x'*100000)\n"
        "print('returned')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if res.returncode == 0:
        assert not out.exists() or out.stat().st_size == 100000, (
            f"create_exclusive returned normally leaving {out.stat().st_size} of 100000 B"
        )


def test_export_safetensors_short_write_reports_success(tmp_path: Path, shm_dir: Path) -> None:
    """The real CLI: `plinius export --safetensors` on a full disk (RLIMIT_FSIZE stands in)
    prints 'wrote' and exits 0 with a truncated file under the final name."""
    torch = pytest.importorskip("torch")
    from plinius.torch import TorchMirror

    key = tmp_path / "k.key"
    write_key_file(key, generate_key())
    spec = f"tmpfs:{shm_dir / 'm'}"
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with TorchMirror(model, opt, backend=spec, key_file=str(key)) as m:
        m.step(1)
    out = tmp_path / "model.safetensors"

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    res = subprocess.run(
        [sys.executable, "-P", "-m", "plinius.cli.main", "export", "--backend", spec,
         "--key-file", str(key), "--safetensors", str(out)],
        capture_output=True, text=True, preexec_fn=limited, env=os.environ.copy(),
    )  # fmt: skip
    size = out.stat().st_size if out.exists() else None
    assert res.returncode != 0 or size is None or size > 8192, (
        f"exit {res.returncode}, stdout {res.stdout.strip()!r}, file {size} B (truncated)"
    )


def test_export_weights_fallback_short_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """export_weights on a file system without hard links (os.link EPERM) falls back to
    create_exclusive: a short write there is reported as success too."""
    from plinius.session import owner

    target = tmp_path / "out.weights"
    staged_bytes = b"w" * 50000

    def fake_link(src: Any, dst: Any, **kw: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    real_write = os.write

    def short_write(fd: int, data: Any) -> int:
        if os.readlink(f"/proc/self/fd/{fd}") == str(target):
            return real_write(fd, bytes(data)[:1000])  # what ENOSPC mid-write returns
        return real_write(fd, data)

    staged = tmp_path / "staged"
    staged.write_bytes(staged_bytes)
    monkeypatch.setattr(os, "link", fake_link)
    monkeypatch.setattr(os, "write", short_write)
    try:
        owner._link_new(staged, target)
    except PliniusError:
        return
    finally:
        monkeypatch.undo()
    assert target.stat().st_size == len(staged_bytes), (
        f"_link_new returned with {target.stat().st_size} of {len(staged_bytes)} B"
    )
