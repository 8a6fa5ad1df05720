"""The shared contract on the ``romulus`` backend, plus what only a PM pool has."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from backend_contract import FP, KEY, BackendContract, model_records, raw_get, raw_put

from plinius.backends import open_backend
from plinius.backends.romulus import RomulusBackend
from plinius.crypto import make_engine
from plinius.errors import BackendError, ConfigError, FormatError, PoolFullError, PoolLockedError
from plinius.mirror import MirrorStore


class TestRomulus(BackendContract):
    @pytest.fixture
    def spec(self, shm_dir: Path, request: pytest.FixtureRequest) -> str:
        # pools are sized at creation: the 256 MiB mirror test needs room for it in main
        size = "640M" if "256_mib" in request.node.name else "48M"
        return f"romulus:{shm_dir / 'plinius.pool'}?size={size}"


class TestRomulusMsync(BackendContract):
    """The same contract with msync as the fence (power-fail durable on a disk file system)."""

    @pytest.fixture
    def spec(self, tmp_path: Path, request: pytest.FixtureRequest) -> str:
        size = "640M" if "256_mib" in request.node.name else "48M"
        return f"romulus:{tmp_path / 'plinius.pool'}?size={size}&mode=msync"


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
    from plinius.crypto import generate_key, write_key_file

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
