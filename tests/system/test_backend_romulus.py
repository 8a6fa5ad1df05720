"""The shared contract on the ``romulus`` backend, plus what only a PM pool has."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from plinius.backends import open_backend
from plinius.backends.romulus import Pool
from plinius.backends.romulus.backend import (
    DEFAULT_POOL_SIZE,
    MIN_SUGGESTED_SIZE,
    RomulusBackend,
    suggested_pool_size,
)
from plinius.backends.testing import FP, KEY, BackendContract, model_records, raw_get, raw_put
from plinius.core.crypto import make_engine
from plinius.core.errors import (
    BackendError,
    ConfigError,
    FormatError,
    NotFoundError,
    PoolFullError,
    PoolLockedError,
)
from plinius.format.mirror import MirrorStore


class TestRomulus(BackendContract):
    @pytest.fixture
    def spec(self, shm_dir: Path) -> str:
        return f"romulus:{shm_dir / 'plinius.pool'}?size=48M"


class TestRomulusMsync(BackendContract):
    """The same contract with msync as the fence (power-fail durable on a disk file system)."""

    @pytest.fixture
    def spec(self, tmp_path: Path) -> str:
        return f"romulus:{tmp_path / 'plinius.pool'}?size=48M&mode=msync"


def test_views_point_into_the_pool_and_reads_see_the_committed_version(shm_dir: Path) -> None:
    b = open_backend(f"romulus:{shm_dir / 'p.pool'}?size=8M")
    assert isinstance(b, RomulusBackend)
    raw_put(b, "a", b"old version!")
    txn = b.begin_write("a", 12)  # same size: rewritten in place inside main
    txn.view(0, 12)[:] = b"new version!"
    blob = b.read("a")
    assert blob is not None and bytes(blob.data) == b"old version!"  # served from back
    stats = txn.commit()
    assert stats.write_s == 0.0 and stats.flush_s > 0 and stats.bytes == 12
    assert raw_get(b, "a") == b"new version!"
    assert b.pool.stats().last_fences == 4
    b.close()


def test_same_size_rewrite_reuses_the_allocation(shm_dir: Path) -> None:
    b = open_backend(f"romulus:{shm_dir / 'p.pool'}?size=8M")
    assert isinstance(b, RomulusBackend)
    raw_put(b, "m", bytes(100_000))
    first = b.pool.root("m")
    for i in range(5):
        raw_put(b, "m", bytes([i]) * 100_000)
    assert b.pool.root("m") == first
    assert b.pool.stats().nallocs == 1
    b.close()


def test_pool_full_keeps_the_last_mirror(shm_dir: Path) -> None:
    spec = f"romulus:{shm_dir / 'p.pool'}?size=4M"
    b = open_backend(spec)
    store = MirrorStore(b, make_engine(KEY), FP)
    recs = model_records(1)
    store.save(recs, version=1)
    big = model_records(2, scale=200)  # ~ 4 MB of float32: cannot fit next to version 1
    with pytest.raises(PoolFullError, match=r"pool full: \d+ bytes needed, \d+ free"):
        store.save(big, version=2)
    got = store.load()
    assert got is not None and got.info.version == 1
    b.close()
    with open_backend(spec) as again:
        got = MirrorStore(again, make_engine(KEY), FP).load()
        assert got is not None and got.info.version == 1
        for r in recs:
            assert np.array_equal(got.arrays[(r.layer, r.name)], r.array)


def test_describe_reports_mode_instruction_and_emulation(shm_dir: Path, tmp_path: Path) -> None:
    with open_backend(f"romulus:{shm_dir / 'p.pool'}?size=4M") as b:
        info = b.describe()
    assert info.byte_addressable and info.emulated and info.fs_type == "tmpfs"
    assert info.durability == "process-crash"
    assert info.extra["durability_mode"] == "pmem"
    assert info.extra["flush_instruction"] in {"clwb", "clflushopt", "clflush"}
    assert info.extra["real_pm"] is False
    with open_backend(f"romulus:{tmp_path / 'p.pool'}?size=4M&mode=msync") as b:
        assert b.describe().durability == "power-fail"
    with open_backend(f"romulus:{tmp_path / 'q.pool'}?size=4M&mode=none") as b:
        info = b.describe()
        assert info.durability == "process-crash" and info.extra["durability_mode"] == "none"


def test_second_opener_is_refused(shm_dir: Path) -> None:
    spec = f"romulus:{shm_dir / 'p.pool'}?size=4M"
    with open_backend(spec), pytest.raises(PoolLockedError, match=r"p\.pool"):
        open_backend(spec)


def test_bad_locations_and_options(shm_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="is a directory"):
        open_backend(f"romulus:{shm_dir}")
    with pytest.raises(BackendError, match="does not exist"):
        open_backend(f"romulus:{shm_dir / 'no' / 'such.pool'}")
    with pytest.raises(BackendError, match="cannot open pool"):
        open_backend("romulus:/proc/plinius-cannot-write-here.pool?size=4M")
    with pytest.raises(ConfigError, match="size=1G"):
        open_backend(f"romulus:{shm_dir / 'p.pool'}?bogus=1")
    with pytest.raises(ConfigError, match="mode"):
        open_backend(f"romulus:{shm_dir / 'p.pool'}?mode=fast")
    with pytest.raises(ConfigError, match="not a size"):
        open_backend(f"romulus:{shm_dir / 'p.pool'}?size=big")
    foreign = tmp_path / "foreign.pool"
    foreign.write_bytes(b"not a pool at all" * 1000)
    with pytest.raises(FormatError, match="not a plinius pool"):
        open_backend(f"romulus:{foreign}")
    assert foreign.read_bytes() == b"not a pool at all" * 1000  # never touched


def test_other_size_is_refused(shm_dir: Path) -> None:
    open_backend(f"romulus:{shm_dir / 'p.pool'}?size=4M").close()
    with pytest.raises(BackendError, match="created with 4194304 bytes"):
        open_backend(f"romulus:{shm_dir / 'p.pool'}?size=8M")
    open_backend(f"romulus:{shm_dir / 'p.pool'}").close()  # no size: whatever it has


@pytest.mark.parametrize("case", ["not-a-pool", "truncated", "newer", "other-size", "locked"])
def test_bad_pools_give_a_clear_cli_error(
    shm_dir: Path, tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from plinius.cli.main import main
    from plinius.core.crypto import generate_key, write_key_file

    key_file = tmp_path / "owner.key"
    write_key_file(key_file, generate_key())
    pool = shm_dir / "p.pool"
    spec = f"romulus:{pool}"
    holder = None
    if case == "not-a-pool":
        pool.write_bytes(b"\x7fELF" + bytes(100_000))
        expect = "is not a plinius pool (bad magic)"
    else:
        open_backend(f"{spec}?size=4M").close()
        if case == "truncated":
            with open(pool, "r+b") as f:
                f.truncate(1 << 20)
            expect = "is truncated"
        elif case == "newer":
            with open(pool, "r+b") as f:
                f.seek(16)
                f.write((9).to_bytes(4, "little"))
            expect = "format version 9, this plinius reads up to 1: upgrade plinius"
        elif case == "other-size":
            spec += "?size=8M"
            expect = "was created with 4194304 bytes, not 8388608"
        else:
            holder = open_backend(spec)
            expect = "is already open in this process"
    before = pool.read_bytes()
    try:
        code = main(["verify", "--backend", spec, "--key-file", str(key_file)])
    finally:
        if holder is not None:
            holder.close()
    err = capsys.readouterr().err
    assert code == 2
    assert expect in err and str(pool) in err
    assert err.count("\n") == 1  # one clear line, no traceback
    if case != "locked":
        assert pool.read_bytes() == before  # nothing touched, nothing lost


# --- read-only opens: create=never ------------------------------------------------------------


def test_create_never_on_a_missing_pool_creates_nothing(shm_dir: Path) -> None:
    pool = shm_dir / "p.pool"
    with pytest.raises(NotFoundError, match=rf"no pool at {pool}: nothing to verify"):
        open_backend(f"romulus:{pool}", create="never")  # the registry's override
    with pytest.raises(NotFoundError, match="no pool at"):
        open_backend(f"romulus:{pool}?create=never&size=4M")
    nested = shm_dir / "no" / "such" / "p.pool"
    with pytest.raises(NotFoundError, match=rf"no pool at {nested}"):
        open_backend(f"romulus:{nested}", create="never")
    assert list(shm_dir.iterdir()) == []  # no file, no directory
    # the engine itself refuses too (a pool removed between the backend's check and the open)
    with pytest.raises(NotFoundError, match="no pool at"):
        Pool(pool, create=False)
    assert list(shm_dir.iterdir()) == []
    # an existing pool opens with create=never and keeps its content
    with open_backend(f"romulus:{pool}?size=4M") as b:
        raw_put(b, "k", b"kept")
    with open_backend(f"romulus:{pool}", create="never") as b:
        assert raw_get(b, "k") == b"kept"


def test_read_only_cli_commands_on_a_missing_pool_create_nothing(
    shm_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from plinius.cli.main import main
    from plinius.core.crypto import generate_key, write_key_file

    key_file = tmp_path / "owner.key"
    write_key_file(key_file, generate_key())
    pool = shm_dir / "p.pool"
    code = main(["verify", "--backend", f"romulus:{pool}", "--key-file", str(key_file)])
    err = capsys.readouterr().err
    assert code != 0 and f"no pool at {pool}" in err
    assert not pool.exists() and list(shm_dir.iterdir()) == []


# --- pool size: from what will be stored --------------------------------------------------------


def test_suggested_pool_size_fits_the_need_and_not_a_gigabyte(shm_dir: Path) -> None:
    mirror, data = 1_500_000, 2_000_000  # a small model and an MNIST subset
    size = suggested_pool_size(mirror, data)
    assert size <= 16 << 20 < DEFAULT_POOL_SIZE  # was 1 GiB for this
    assert size % (1 << 20) == 0 and size >= MIN_SUGGESTED_SIZE
    assert MIN_SUGGESTED_SIZE <= suggested_pool_size(0) <= 8 << 20
    assert suggested_pool_size(100 << 20, 50 << 20) > suggested_pool_size(100 << 20)
    with pytest.raises(ConfigError, match="mirror_bytes"):
        suggested_pool_size(-1)
    # what it promises: the data area, and the mirror replaced by a version of another size
    # (old and new coexist inside the transaction)
    with open_backend(f"romulus:{shm_dir / 'p.pool'}", size_hint=size) as b:
        assert isinstance(b, RomulusBackend) and b.pool.size == size
        raw_put(b, "samples", bytes(data))
        raw_put(b, "mirror", bytes(mirror))
        raw_put(b, "mirror", bytes(mirror // 3))  # a new allocation while the old one lives
        raw_put(b, "mirror", bytes(mirror))
        raw_put(b, "data.info", bytes(200))
        assert raw_get(b, "mirror") == bytes(mirror)


def test_size_hint_sizes_new_pools_only(shm_dir: Path) -> None:
    pool = shm_dir / "p.pool"
    with open_backend(f"romulus:{pool}", size_hint="8M") as b:
        assert isinstance(b, RomulusBackend) and b.pool.size == 8 << 20
        assert b.describe().extra["pool_size_source"] == "size_hint="
    # an existing pool keeps its size: a different hint is not a size mismatch
    with open_backend(f"romulus:{pool}", size_hint="16M") as b:
        assert isinstance(b, RomulusBackend) and b.pool.size == 8 << 20
        assert b.describe().extra["pool_size_source"] == "existing pool"
    # an explicit size= wins over the hint
    with open_backend(f"romulus:{shm_dir / 'q.pool'}?size=4M", size_hint="16M") as b:
        assert isinstance(b, RomulusBackend) and b.pool.size == 4 << 20
    with pytest.raises(ConfigError, match="size_hint='tiny' is not a size"):
        open_backend(f"romulus:{shm_dir / 'r.pool'}", size_hint="tiny")
    with pytest.raises(ConfigError, match=r"size_hint=.*too small"):
        open_backend(f"romulus:{shm_dir / 'r.pool'}", size_hint=4096)
    assert not (shm_dir / "r.pool").exists()


def test_describe_reports_the_real_pool_size_and_allocation(shm_dir: Path) -> None:
    pool = shm_dir / "p.pool"
    with open_backend(f"romulus:{pool}?size=6M") as b:
        extra = b.describe().extra
    assert extra["pool_size"] == pool.stat().st_size == 6 << 20
    assert extra["pool_size_source"] == "size="
    assert extra["pool_size_default"] == DEFAULT_POOL_SIZE
    assert "real size" in extra["pool_size_note"]
    # tmpfs: the allocated blocks are RAM (the engine allocates every page at open)
    assert extra["pool_file_allocated_bytes"] == pool.stat().st_blocks * 512 > 0


@pytest.mark.parametrize("commit", ["sync", "background"])
def test_commit_option_and_what_describe_says_of_the_copier(shm_dir: Path, commit: str) -> None:
    """commit=background returns once durable and reports the copier's time; sync copies
    inline. Both leave back equal to main and the data readable."""
    b = open_backend(f"romulus:{shm_dir / 'c.pool'}?size=16M&commit={commit}")
    assert isinstance(b, RomulusBackend)
    data = np.random.default_rng(1).integers(0, 256, 2 << 20, dtype=np.uint8).tobytes()
    for version in (data, data[::-1]):
        raw_put(b, "m", version)  # 2 MiB: above the copier's default bg_min
        assert raw_get(b, "m") == version
    extra = b.describe().extra
    assert extra["romulus_commit"] == commit
    assert (extra["romulus_bg_copies"] > 0) == (commit == "background")
    assert (extra["romulus_bg_copy_s"] > 0) == (commit == "background")
    off, size = b.pool.root("m") or (0, 0)
    assert bytes(b.pool.view(off, size, committed=True)) == data[::-1]
    b.close()
    with pytest.raises(ConfigError, match="commit='later'"):
        open_backend(f"romulus:{shm_dir / 'c.pool'}?commit=later")
