"""The file backends' spare: saves rewrite the previous version's file and exchange the names.

A save writes ``.<blob>.spare`` in place (cut to the exact size) and swaps it with ``<blob>``
through ``renameat2(RENAME_EXCHANGE)``. The spare sits in attacker-writable storage: it is only
ever written, never through a link, never listed or read, and anything odd planted there is
removed (or the save takes the new-file path) with its target untouched. Where names cannot be
exchanged, saves fall back to a new file renamed over the blob.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from plinius.backends import files as files_mod
from plinius.backends.base import Backend, IoStats
from plinius.backends.files import FileBackend
from plinius.backends.registry import open_backend
from plinius.core import fsutil
from plinius.core.crypto import make_engine
from plinius.core.errors import ConfigError
from plinius.format.mirror import MirrorStore, Record

SPARE = ".m.spare"
PRECIOUS = b"the owner key: never to be overwritten\n"


@pytest.fixture(params=["tmpfs", "ssd", "ssd?direct=1"])
def spec(request: pytest.FixtureRequest, shm_dir: Path, disk_dir: Path) -> str:
    kind = str(request.param)
    root = shm_dir if kind.startswith("tmpfs") else disk_dir
    name, _, opts = kind.partition("?")
    return f"{name}:{root / 'store'}" + (f"?{opts}" if opts else "")


def _dir(b: Backend) -> Path:
    assert isinstance(b, FileBackend)
    return b.dir


def _put(b: Backend, blob: str, data: bytes) -> IoStats:
    with b.begin_write(blob, len(data)) as txn:
        txn.view(0, len(data))[:] = data
        return txn.commit()


def _get(b: Backend, blob: str) -> bytes:
    got = b.read(blob)
    assert got is not None
    return bytes(got.data)


def _payload(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _names(d: Path) -> list[str]:
    return sorted(os.listdir(d))


@pytest.fixture
def exchanges(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every name exchange the file backends made (through the real helper)."""
    calls: list[tuple[str, str]] = []
    real = files_mod.exchange

    def spy(src: Any, dst: Any, *, dir_fd: int | None = None) -> None:
        real(src, dst, dir_fd=dir_fd)
        calls.append((str(src), str(dst)))

    monkeypatch.setattr(files_mod, "exchange", spy)
    return calls


# --- the exchange path -------------------------------------------------------------------------


def test_spare_is_the_default_and_an_option(shm_dir: Path, disk_dir: Path) -> None:
    """Measured: the spare pays on tmpfs and with fsync on the disk alike."""
    with open_backend(f"tmpfs:{shm_dir / 't'}") as t, open_backend(f"ssd:{disk_dir / 's'}") as s:
        for b in (t, s):
            assert isinstance(b, FileBackend)
            assert b.spare is True and b.describe().extra["spare"] is True
    with open_backend(f"ssd:{disk_dir / 's'}?spare=0") as s2:
        assert isinstance(s2, FileBackend) and s2.spare is False
    with open_backend(f"tmpfs:{shm_dir / 't'}?spare=off") as t2:
        assert isinstance(t2, FileBackend) and t2.spare is False
    with pytest.raises(ConfigError, match="spare="):
        open_backend(f"tmpfs:{shm_dir / 'u'}?spare=maybe")


def test_exchange_leaves_one_blob_and_one_spare(
    spec: str, exchanges: list[tuple[str, str]]
) -> None:
    with open_backend(spec) as b:
        d = _dir(b)
        _put(b, "m", _payload(70_000, 1))  # first save: no previous version, a rename
        assert exchanges == [] and _names(d) == [".lock", "m"]
        first_ino = os.stat(d / "m").st_ino
        _put(b, "m", _payload(80_000, 2))
        assert exchanges == [(SPARE, "m")]
        assert _names(d) == [".lock", SPARE, "m"]
        assert os.stat(d / SPARE).st_ino == first_ino  # the spare holds the previous version
        for v in range(3, 7):
            data = _payload(60_000 + v, v)
            _put(b, "m", data)
            assert _get(b, "m") == data
            assert _names(d) == [".lock", SPARE, "m"]
        assert len(exchanges) == 5
        # two files take turns: no new file was made after the second save
        inos = {os.stat(d / "m").st_ino, os.stat(d / SPARE).st_ino}
        assert first_ino in inos
        for name in ("m", SPARE):
            st = os.stat(d / name, follow_symlinks=False)
            assert stat.S_ISREG(st.st_mode) and st.st_mode & 0o077 == 0 and st.st_nlink == 1
        assert b.blobs() == ["m"]


def test_sizes_are_exact_when_the_new_blob_is_smaller(spec: str) -> None:
    with open_backend(spec) as b:
        d = _dir(b)
        for v, n in enumerate([1 << 20, 3 << 20, 5000, 4096, 3, 0, 4097, (1 << 20) + 3, 1]):
            data = _payload(n, v)
            _put(b, "m", data)
            assert os.stat(d / "m").st_size == n
            assert _get(b, "m") == data
        # a mirror (which refuses a blob longer than its header says) round-trips at every size
        store = MirrorStore(b, make_engine(bytes(16)), bytes(32))
        for v, n in enumerate([200_000, 10, 50_000, 0, 3], start=1):
            arr = np.arange(n, dtype=np.float32)
            store.save([Record(0, "w", arr)], version=v)
            got = store.load()
            assert got is not None and got.info.version == v
            assert np.array_equal(got.arrays[(0, "w")], arr)


def test_breakdown_books_the_replace_apart(shm_dir: Path, disk_dir: Path) -> None:
    for spec in (
        f"tmpfs:{shm_dir / 't'}",
        f"tmpfs:{shm_dir / 'n'}?spare=0",
        f"ssd:{disk_dir / 's'}",
        f"ssd:{disk_dir / 'x'}?spare=0",
    ):
        with open_backend(spec) as b:
            for v in range(3):
                s = _put(b, "m", _payload(300_000, v))
            assert s.replace_s > 0 and s.write_s > 0
            assert "replace_s" in s.as_dict()
            fsynced = spec.startswith("ssd")
            assert (s.fsync_s > 0) is fsynced
            assert s.total_s >= s.write_s + s.fsync_s + s.replace_s


def test_bench_breakdown_shows_replace() -> None:
    from plinius.lab.bench.render import BREAKDOWN_COLUMNS, breakdown_rows

    assert BREAKDOWN_COLUMNS.index("replace_s") == BREAKDOWN_COLUMNS.index("fsync_s") + 1
    row = {
        "backend": "tmpfs",
        "durability": "process-crash",
        "model_mb": 64,
        "save_s": 0.1,
        "save_breakdown": {
            "encrypt_s": 0.05,
            "write_s": 0.02,
            "flush_s": 0.0,
            "fsync_s": 0.0,
            "replace_s": 1e-5,
        },
    }
    (out,) = breakdown_rows([row])
    assert out["replace_s"] == 1e-5


# --- what is planted as the spare --------------------------------------------------------------


def _victim(where: Path) -> Path:
    v = where / "precious.key"
    v.write_bytes(PRECIOUS)
    v.chmod(0o600)
    return v


@pytest.mark.parametrize("dangling", [False, True])
def test_symlink_planted_as_the_spare_is_not_followed(
    spec: str, tmp_path: Path, dangling: bool
) -> None:
    victim = _victim(tmp_path)
    with open_backend(spec) as b:
        d = _dir(b)
        _put(b, "m", _payload(5000, 0))
        target = tmp_path / "nothing-here" if dangling else victim
        (d / SPARE).symlink_to(target)
        for v in (1, 2, 3):
            data = _payload(9000 + v, v)
            _put(b, "m", data)
            assert _get(b, "m") == data
            assert not (d / "m").is_symlink() and not (d / SPARE).is_symlink()
    assert victim.read_bytes() == PRECIOUS
    assert not (tmp_path / "nothing-here").exists()


def test_hard_link_planted_as_the_spare_is_not_written(disk_dir: Path) -> None:
    """A second name of a file of ours (the owner key beside the store) is never rewritten."""
    victim = _victim(disk_dir)
    with open_backend(f"ssd:{disk_dir / 'store'}") as b:
        d = _dir(b)
        _put(b, "m", _payload(5000, 0))
        os.link(victim, d / SPARE)
        data = _payload(7000, 1)
        _put(b, "m", data)
        assert _get(b, "m") == data
    assert victim.read_bytes() == PRECIOUS and os.stat(victim).st_nlink == 1


@pytest.mark.parametrize("kind", ["fifo", "empty-dir", "full-dir", "loose-mode", "foreign"])
def test_odd_spares_are_replaced_or_bypassed(shm_dir: Path, kind: str) -> None:
    if kind == "foreign" and os.geteuid() != 0:
        pytest.skip("making a file of another owner needs root")
    with open_backend(f"tmpfs:{shm_dir / 'store'}") as b:
        d = _dir(b)
        _put(b, "m", _payload(5000, 0))
        planted = d / SPARE
        keep_fd = -1
        if kind == "fifo":
            os.mkfifo(planted)
        elif kind in ("empty-dir", "full-dir"):
            planted.mkdir()
            if kind == "full-dir":
                (planted / "f").write_bytes(PRECIOUS)
        else:
            planted.write_bytes(PRECIOUS)
            planted.chmod(0o644 if kind == "loose-mode" else 0o600)
            if kind == "foreign":
                os.chown(planted, 4242, 4242)
            keep_fd = os.open(planted, os.O_RDONLY)  # whatever happens to the name, the file
        try:
            for v in (1, 2, 3):
                data = _payload(6000 + v, v)
                _put(b, "m", data)
                assert _get(b, "m") == data
                assert b.blobs() == ["m"]
            if keep_fd >= 0:
                assert os.pread(keep_fd, 1000, 0) == PRECIOUS  # removed, never written
        finally:
            if keep_fd >= 0:
                os.close(keep_fd)
        if kind == "full-dir":  # cannot be removed: saves take the new-file path around it
            assert (planted / "f").read_bytes() == PRECIOUS
            assert _names(d) == [".lock", SPARE, "m"]
        else:
            st = os.lstat(planted)
            assert stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()
            assert st.st_mode & 0o077 == 0


def test_the_spare_is_never_listed_or_read(shm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_backend(f"tmpfs:{shm_dir / 'store'}") as b:
        d = _dir(b)
        store = MirrorStore(b, make_engine(bytes(16)), bytes(32))
        recs = [Record(0, "w", np.arange(5000, dtype=np.float32))]
        for v in (1, 2, 3):
            store.save(recs, version=v)
        assert (d / ".mirror.spare").exists()
        assert b.blobs() == ["mirror"]
        with pytest.raises(ConfigError, match="invalid blob name"):
            b.read(".mirror.spare")
        # garbage in the spare changes nothing a reader sees
        fd = os.open(d / ".mirror.spare", os.O_WRONLY | os.O_TRUNC)
        os.write(fd, b"\xff" * 100)
        os.close(fd)
        opened: list[str] = []
        real_open = os.open

        def spy(path: Any, flags: int, *args: Any, **kw: Any) -> int:
            opened.append(os.fsdecode(path))
            return int(real_open(path, flags, *args, **kw))

        monkeypatch.setattr(files_mod.os, "open", spy)
        got = store.load()
        assert got is not None and got.info.version == 3
        assert store.peek() is not None
        view = b.map("mirror")
        assert view is not None and view.nbytes > 0
        out = bytearray(16)
        b.read_into("mirror", 0, memoryview(out))
        b.evict("mirror")
        assert opened and not [n for n in opened if n.endswith(".spare")]


def test_delete_removes_the_spare_and_open_cleans_orphans(shm_dir: Path) -> None:
    where = shm_dir / "store"
    with open_backend(f"tmpfs:{where}") as b:
        for v in range(3):
            _put(b, "m", _payload(4000, v))
            _put(b, "n", _payload(3000, v))
        assert _names(where) == [".lock", SPARE, ".n.spare", "m", "n"]
        b.delete("m")
        assert _names(where) == [".lock", ".n.spare", "n"]
        (where / SPARE).write_bytes(b"left by a first save cut short")
        b.delete("m")  # no blob, but its spare still goes
        assert _names(where) == [".lock", ".n.spare", "n"]
        (where / SPARE).write_bytes(b"an orphan")
    with open_backend(f"tmpfs:{where}") as b:  # a spare without its blob goes at open
        assert _names(where) == [".lock", ".n.spare", "n"]
        (where / SPARE).mkdir()
        (where / SPARE / "f").write_bytes(b"planted")
        _put(b, "m", b"x")
        b.delete("m")  # a spare that cannot go does not keep the blob
        assert _names(where) == [".lock", SPARE, ".n.spare", "n"] and b.blobs() == ["n"]
        shutil.rmtree(where / SPARE)
    with open_backend(f"tmpfs:{where}?spare=0") as b:  # spares off: none kept
        assert _names(where) == [".lock", "n"]
        _put(b, "n", _payload(3000, 9))
        _put(b, "n", _payload(3000, 10))
        assert _names(where) == [".lock", "n"]


def test_a_mapped_previous_version_is_not_rewritten(shm_dir: Path) -> None:
    """A view a caller still holds of the file that became the spare keeps its bytes (and its
    length: rewriting in place could cut the file under it, a SIGBUS on access)."""
    with open_backend(f"tmpfs:{shm_dir / 'store'}") as b:
        old = _payload(3 * 4096 + 5, 1)
        _put(b, "m", old)
        view = b.map("m")
        assert view is not None and bytes(view) == old
        for v in (2, 3, 4):
            data = _payload(100 + v, v)
            _put(b, "m", data)
            assert _get(b, "m") == data
            again = b.map("m")
            assert again is not None and bytes(again) == data
            del again
        assert bytes(view) == old  # still the version it was taken of, whole
        del view


# --- failures and fallbacks --------------------------------------------------------------------


@pytest.mark.parametrize("err", [errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP])
def test_fallback_when_names_cannot_be_exchanged(
    spec: str, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    calls: list[str] = []

    def unsupported(src: Any, dst: Any, *, dir_fd: int | None = None) -> None:
        calls.append(str(src))
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(files_mod, "exchange", unsupported)
    with open_backend(spec) as b:
        assert isinstance(b, FileBackend)
        d = _dir(b)
        for v, n in enumerate([50_000, 70_000, 20_000, 1, 40_000]):
            data = _payload(n, v)
            _put(b, "m", data)
            assert _get(b, "m") == data and os.stat(d / "m").st_size == n
            assert _names(d) == [".lock", "m"]
        assert calls == [SPARE]  # found out once, never tried again
        assert b.spare is False


def test_exchange_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a").write_bytes(b"A")
    (tmp_path / "b").write_bytes(b"B")
    fsutil.exchange(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "a").read_bytes() == b"B" and (tmp_path / "b").read_bytes() == b"A"
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fsutil.exchange("a", "b", dir_fd=dfd)
        assert (tmp_path / "a").read_bytes() == b"A"
        with pytest.raises(FileNotFoundError):
            fsutil.exchange("a", "missing", dir_fd=dfd)
        monkeypatch.setattr(fsutil, "_renameat2", lambda: None)
        with pytest.raises(OSError) as info:
            fsutil.exchange("a", "b", dir_fd=dfd)
        assert info.value.errno == errno.ENOSYS
    finally:
        os.close(dfd)


def test_a_failed_write_or_exchange_keeps_the_previous_version(
    spec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from plinius.core.errors import BackendError

    with open_backend(spec) as b:
        d = _dir(b)
        committed = _payload(30_000, 1)
        _put(b, "m", _payload(20_000, 0))
        _put(b, "m", committed)
        real_write = files_mod._write_all

        def half_then_fail(fd: int, data: memoryview, path: Path) -> None:
            os.write(fd, data[:4096])
            raise BackendError(f"no space left writing {path}")

        monkeypatch.setattr(files_mod, "_write_all", half_then_fail)
        with pytest.raises(BackendError, match="no space"):
            _put(b, "m", _payload(40_000, 2))
        assert _get(b, "m") == committed
        monkeypatch.setattr(files_mod, "_write_all", real_write)

        def broken(src: Any, dst: Any, *, dir_fd: int | None = None) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr(files_mod, "exchange", broken)
        with pytest.raises(BackendError, match="previous version is untouched"):
            _put(b, "m", _payload(40_000, 3))
        assert _get(b, "m") == committed
        assert _names(d) == [".lock", "m"]  # the unusable spare is gone
        monkeypatch.undo()
        data = _payload(10_000, 4)
        _put(b, "m", data)
        assert _get(b, "m") == data


def test_a_spare_swapped_after_its_checks_fails_the_save_closed(
    shm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attacker links another file at the spare's name after our descriptor was checked:
    the exchange then names *their* file ``m``. The save must fail (so the platform never
    commits it), their file stays unwritten, and the error is one line."""
    victim = shm_dir / "victim"
    victim.write_bytes(b"precious\n" * 10)
    victim.chmod(0o600)
    real_fstat = os.fstat
    armed = False
    with open_backend(f"tmpfs:{shm_dir / 'store'}") as b:
        assert isinstance(b, FileBackend)
        d = b.dir
        _put(b, "m", b"a" * 5000)
        _put(b, "m", b"b" * 5001)  # a spare exists now

        def fstat(fd: int) -> os.stat_result:
            nonlocal armed
            st = real_fstat(fd)
            if armed and stat.S_ISREG(st.st_mode):
                armed = False
                os.unlink(d / ".m.spare")
                os.link(victim, d / ".m.spare")
            return st

        monkeypatch.setattr(files_mod.os, "fstat", fstat)
        armed = True
        with pytest.raises(Exception, match="is not the file this save wrote") as err:
            _put(b, "m", b"c" * 7000)
        monkeypatch.undo()
        assert "\n" not in str(err.value)
    assert victim.read_bytes() == b"precious\n" * 10
