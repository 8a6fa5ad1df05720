"""Review of issue 23 (M1, L4): a short ``write`` is never a file reported written, and an
export's scratch directory that a kill left behind is removed by the next export to that name.

``os.write`` may write less than asked (a full disk, ``RLIMIT_FSIZE``, more than 2 GiB in one
call): stood in for here by a patched ``os.write``. The real limits are in
``tests/system/test_export_short_writes.py``.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Any

import pytest

from plinius.core import fsutil
from plinius.core.errors import ConfigError


def _short_writes(
    monkeypatch: pytest.MonkeyPatch, path: Path, *, at_most: int, fail_after: int | None = None
) -> list[int]:
    """``os.write`` to ``path`` writes at most ``at_most`` B per call (what ENOSPC mid-write
    returns), and fails with ENOSPC once ``fail_after`` B are written; the sizes asked for."""
    real = os.write
    asked: list[int] = []
    done = [0]

    def write(fd: int, data: Any) -> int:
        try:
            mine = os.readlink(f"/proc/self/fd/{fd}") == str(path)
        except OSError:
            mine = False
        if not mine:
            return real(fd, data)
        asked.append(len(data))
        if fail_after is not None and done[0] >= fail_after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real(fd, bytes(data)[:at_most])
        done[0] += n
        return n

    monkeypatch.setattr(os, "write", write)
    return asked


def test_create_exclusive_writes_every_byte_despite_short_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "x.bin"
    data = os.urandom(50_000)
    asked = _short_writes(monkeypatch, out, at_most=1000)
    fsutil.create_exclusive(out, data)
    monkeypatch.undo()
    assert out.read_bytes() == data
    assert len(asked) == 50  # it went on after each short write


def test_create_exclusive_raises_and_removes_the_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills after 4 KiB: the OSError is raised and no short file is left."""
    out = tmp_path / "x.bin"
    _short_writes(monkeypatch, out, at_most=4096, fail_after=4096)
    with pytest.raises(OSError) as err:
        fsutil.create_exclusive(out, b"x" * 100_000)
    monkeypatch.undo()
    assert err.value.errno == errno.ENOSPC
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_export_fallback_without_hard_links_writes_every_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Darknet export on a file system without hard links (``os.link``: EPERM) creates the
    file exclusively instead: short writes there still give the whole file."""
    from plinius.session import owner

    target = tmp_path / "out.weights"
    staged = tmp_path / "staged"
    staged.write_bytes(os.urandom(50_000))

    def no_link(src: Any, dst: Any, **kw: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    _short_writes(monkeypatch, target, at_most=1000)
    owner._link_new(staged, target)
    monkeypatch.undo()
    assert target.read_bytes() == staged.read_bytes()
    assert target.stat().st_mode & 0o777 == 0o600


def test_export_fallback_full_disk_is_one_error_and_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from plinius.session import owner

    target = tmp_path / "out.weights"
    staged = tmp_path / "staged"
    staged.write_bytes(os.urandom(50_000))

    def no_link(src: Any, dst: Any, **kw: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    _short_writes(monkeypatch, target, at_most=1000, fail_after=3000)
    with pytest.raises(ConfigError, match="cannot write"):
        owner._link_new(staged, target)
    monkeypatch.undo()
    assert not target.exists()


# --- L4: scratch directories a killed export left ---------------------------------------------


def _stale(directory: Path, name: str, tail: str = "k1ll3d_x") -> Path:
    """What a SIGKILLed export leaves: ``.NAME.XXXXXXXX/`` (0700) with plaintext weights."""
    d = directory / f".{name}.{tail}"
    d.mkdir(mode=0o700)
    (d / "weights").write_bytes(b"plaintext weights")
    (d / "weights").chmod(0o600)
    return d


def test_next_scratch_of_the_same_name_removes_stale_ones(tmp_path: Path) -> None:
    target = tmp_path / "model.weights"
    stale = [_stale(tmp_path, "model.weights"), _stale(tmp_path, "model.weights", "abc_0123")]
    with fsutil.scratch_beside(target) as scratch:
        assert scratch.parent == tmp_path and scratch.name.startswith(".model.weights.")
        assert os.stat(scratch).st_mode & 0o777 == 0o700
        (scratch / "weights").write_bytes(b"new")
        for d in stale:
            assert not d.exists()
    assert list(tmp_path.iterdir()) == []


def test_scratch_removal_spares_other_names_live_exports_and_symlinks(tmp_path: Path) -> None:
    target = tmp_path / "model.weights"
    other = _stale(tmp_path, "other.weights")  # another target's
    odd = tmp_path / ".model.weights.notmkdtemp"  # not the pattern
    odd.mkdir(mode=0o700)
    loose = _stale(tmp_path, "model.weights", "0pen_0k0")  # not 0700: not ours
    loose.chmod(0o755)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_bytes(b"keep")
    link = tmp_path / ".model.weights.symlinkk"  # the pattern, but a symlink to a directory
    link.symlink_to(victim)
    live = _stale(tmp_path, "model.weights", "l1ve_exp")  # held by a running export
    fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with fsutil.scratch_beside(target):
            pass
    finally:
        os.close(fd)
    assert (other / "weights").exists() and odd.is_dir() and (loose / "weights").exists()
    assert link.is_symlink() and (victim / "keep").read_bytes() == b"keep"
    assert (live / "weights").exists()


def test_scratch_is_removed_on_error_too(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), fsutil.scratch_beside(tmp_path / "m.weights") as scratch:
        (scratch / "weights").write_bytes(b"partial")
        raise RuntimeError("export failed")
    assert list(tmp_path.iterdir()) == []
