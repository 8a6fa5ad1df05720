"""The native Romulus engine through ``backends.romulus.Pool``: transactions, log, allocator, roots,
recovery from each state, and bad input."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from plinius.backends.romulus import FLUSHES, MAX_ROOTS, Pool, cpu_flush, cpu_has
from plinius.core.errors import (
    BackendError,
    ConfigError,
    FormatError,
    NotFoundError,
    PoolCorruptError,
    PoolFullError,
    PoolLockedError,
    TruncatedError,
    UnsupportedVersionError,
)

MiB = 1 << 20
# header fields (file offsets), see native/romulus.h
OFF_MAGIC, OFF_CREATING, OFF_VERSION, OFF_STATE, OFF_USED = 0, 8, 16, 128, 136
IDLE, MUTATING, COPYING = 0, 1, 2


@pytest.fixture
def path(shm_dir: Path) -> Path:
    return shm_dir / "engine.pool"


@pytest.fixture
def pool(path: Path) -> Iterator[Pool]:
    p = Pool(path, 2 * MiB)
    yield p
    p.close()


def poke(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def peek(path: Path, offset: int, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(n)


def twin_equal(p: Pool) -> bool:
    """main and back hold the same bytes over the used size (true whenever no txn is open)."""
    st = p.stats()
    raw = p.raw()
    return raw[st.main_off : st.main_off + st.used] == raw[st.back_off : st.back_off + st.used]


def put(p: Pool, name: str, data: bytes) -> int:
    with p.transaction():
        old = p.root(name)
        off = p.alloc(len(data))
        p.writable(off, len(data))[:] = data
        p.set_root(name, off, len(data))
        if old:
            p.free(old[0])
    return off


def get(p: Pool, name: str) -> bytes:
    found = p.root(name)
    assert found is not None
    return bytes(p.view(*found))


# --- life cycle, fences, log -----------------------------------------------------------------


def test_create_then_reopen(path: Path) -> None:
    with Pool(path, 2 * MiB) as p:
        assert p.opened_as == "created"
        st = p.stats()
        assert st.state == "idle" and st.used == st.meta_size == st.top
        assert st.pool_size == path.stat().st_size == 2 * MiB
        assert p.mode == "pmem" and p.flush_instruction == cpu_flush() and not p.real_pm
        put(p, "a", b"x" * 100)
    assert peek(path, OFF_MAGIC, 8) == b"PLNROMUL"
    with Pool(path) as p:
        assert p.opened_as == "opened"
        assert get(p, "a") == b"x" * 100
        assert p.stats().commits == 1


@pytest.mark.parametrize("lines", [0, 1, 7, 300, "overflow"])
def test_exactly_four_fences_whatever_the_size(pool: Pool, lines: int | str) -> None:
    with pool.transaction():
        big = pool.alloc(MiB // 2)
    before = pool.stats()
    pool.begin()
    n = MiB // 2 if lines == "overflow" else 64 * int(lines)
    if n:
        pool.writable(big, n)[:] = b"\x5a" * n
    pool.commit()
    st = pool.stats()
    assert st.last_fences == 4
    assert st.fences - before.fences == 4
    assert st.full_copies - before.full_copies == (1 if lines == "overflow" else 0)
    assert twin_equal(pool)


def test_log_skips_duplicates_and_rounds_down_to_the_line(pool: Pool) -> None:
    with pool.transaction():
        off = pool.alloc(64 * 64)
    with pool.transaction():
        pool.declare(off, 8)
        pool.declare(off + 8, 8)
        pool.declare(off, 64)
    assert pool.stats().last_log_lines == 1
    with pool.transaction():
        pool.declare(off + 63, 2)  # straddles two lines
    assert pool.stats().last_log_lines == 2
    with pool.transaction():
        pool.declare(off + 64 * 3 + 1, 64)  # unaligned start: lines 3 and 4
        pool.declare(off, 64 * 10)  # only 8 new lines
    assert pool.stats().last_log_lines == 10


def test_commit_copies_exactly_the_logged_lines(pool: Pool) -> None:
    with pool.transaction():
        off = pool.alloc(64 * 64)
    with pool.transaction():
        pool.writable(off + 100, 1)[:] = b"\x01"
    st = pool.stats()
    assert st.last_copy_bytes == 64 and twin_equal(pool)


def test_abort_restores_main_and_allocations(pool: Pool) -> None:
    put(pool, "a", b"committed")
    before = pool.stats()
    pool.begin()
    off = pool.root("a")
    assert off is not None
    pool.writable(off[0], 9)[:] = b"scribbled"
    pool.alloc(100_000)
    pool.set_root("b", 123, 4)
    pool.del_root("a")
    pool.abort()
    assert get(pool, "a") == b"committed"
    assert pool.root("b") is None
    st = pool.stats()
    assert (st.top, st.nallocs, st.alloc_bytes) == (before.top, before.nallocs, before.alloc_bytes)
    assert st.aborts == before.aborts + 1 and st.state == "idle"
    assert twin_equal(pool)


def test_main_equals_back_after_random_transactions(pool: Pool) -> None:
    rng = np.random.default_rng(5)
    with pool.transaction():
        off = pool.alloc(256 * 1024)
    for _ in range(50):
        pool.begin()
        for _ in range(int(rng.integers(1, 40))):
            at = int(rng.integers(0, 256 * 1024 - 100))
            n = int(rng.integers(1, 100))
            pool.writable(off + at, n)[:] = rng.bytes(n)
        if rng.random() < 0.2:
            pool.abort()
        else:
            pool.commit()
        assert twin_equal(pool)


def test_views_need_a_transaction_and_stay_in_bounds(pool: Pool) -> None:
    with pytest.raises(BackendError, match="no write transaction"):
        pool.writable(pool.stats().meta_size, 8)
    with pytest.raises(BackendError, match="outside"):
        pool.view(pool.region_size - 4, 8)
    pool.begin()
    with pytest.raises(BackendError, match="outside"):
        pool.writable(-1, 8)
    pool.abort()


def test_one_writer_at_a_time(pool: Pool) -> None:
    pool.begin()
    with pytest.raises(BackendError, match="already open in this thread"):
        pool.begin()
    events: list[str] = []

    def other() -> None:
        pool.begin()  # blocks (GIL released in C) until the first txn ends
        events.append("other began")
        pool.commit()

    t = threading.Thread(target=other)
    t.start()
    time.sleep(0.1)
    events.append("first commits")
    pool.commit()
    t.join(5)
    assert events == ["first commits", "other began"]


def test_views_outlive_close_without_crashing(path: Path) -> None:
    p = Pool(path, 2 * MiB)
    off = put(p, "a", b"still mapped")
    view = p.view(off, 12)
    p.close()
    assert bytes(view) == b"still mapped"
    with pytest.raises(BackendError, match="closed"):
        p.begin()
    maps = Path("/proc/self/maps").read_text()
    assert str(path) in maps
    del view
    assert str(path) not in Path("/proc/self/maps").read_text()  # unmapped with the last view


# --- allocator -----------------------------------------------------------------------------------


def test_allocations_are_aligned_and_tight(path: Path) -> None:
    pool = Pool(path, 8 * MiB)
    rng = np.random.default_rng(1)
    offs = []
    with pool.transaction():
        for size in [1, 63, 64, 65, 500, 4000, 70_000, 200_000, *rng.integers(1, 60_000, 30)]:
            off = pool.alloc(int(size))
            cap = pool.capacity(off)
            assert off % 64 == 0 and cap >= size
            if size + 64 < 64 * 1024:
                assert cap + 64 <= max(128, (size + 64) * 1.25 + 64)
            else:  # large blocks: page-aligned data, page granularity
                assert (pool.main_off + off) % 4096 == 0 and cap - size < 4096
            offs.append(off)
    assert len(set(offs)) == len(offs)
    st = pool.stats()
    assert st.nallocs == len(offs) and st.used >= st.top
    pool.close()


def test_freed_blocks_are_reused(pool: Pool) -> None:
    with pool.transaction():
        a = pool.alloc(1000)
        pool.alloc(1000)  # keeps a away from the top
    with pool.transaction():
        pool.free(a)
    with pool.transaction():
        assert pool.alloc(990) == a  # same size class


def test_a_growing_model_reuses_what_it_frees(path: Path) -> None:
    """Sizes that sum to more than the pool (like the paper's 10..100 MB series in 400 MB):
    fits only because freed blocks coalesce and are split again."""
    with Pool(path, 8 * MiB) as p:
        region = p.region_size
        off = 0
        sizes = [k * 128 * 1024 for k in range(1, 9)] * 2
        assert sum(sizes) > region
        for size in sizes:
            with p.transaction():
                new = p.alloc(size)
                if off:
                    p.free(off)
                off = new
        assert p.stats().nallocs == 1


def test_free_of_a_bad_offset(pool: Pool) -> None:
    with pool.transaction():
        off = pool.alloc(100)
    pool.begin()
    for bad in (0, 64, off + 64, off + 1, pool.region_size - 64):
        with pytest.raises(BackendError, match="not an allocated block"):
            pool.free(bad)
    pool.free(off)
    with pytest.raises(BackendError, match="not an allocated block"):
        pool.free(off)  # double free
    pool.abort()


def test_allocation_needs_a_transaction(pool: Pool) -> None:
    with pytest.raises(BackendError, match="no write transaction"):
        pool.alloc(10)


def test_pool_full_is_specific_and_loses_nothing(pool: Pool) -> None:
    put(pool, "keep", b"precious" * 1000)
    before = pool.stats()
    pool.begin()
    with pytest.raises(PoolFullError, match=r"pool full: \d+ bytes needed, \d+ free in .*engine"):
        pool.alloc(4 * MiB)
    pool.abort()
    assert get(pool, "keep") == b"precious" * 1000
    assert pool.stats().free_bytes == before.free_bytes


# --- roots ---------------------------------------------------------------------------------------


def test_roots(pool: Pool) -> None:
    assert pool.root("a") is None and pool.roots() == {}
    with pool.transaction():
        pool.set_root("a", 64, 1)
        pool.set_root("b" * 64, 128, 2)
        assert pool.root("a") == (64, 1)
        assert pool.root("a", committed=True) is None  # back: the last commit
    assert pool.roots() == {"a": (64, 1), "b" * 64: (128, 2)}
    assert pool.roots(committed=True) == pool.roots()
    with pool.transaction():
        pool.set_root("a", 192, 3)
        pool.del_root("b" * 64)
    assert pool.roots() == {"a": (192, 3)}
    with pytest.raises(BackendError, match="1 to 64 bytes"):
        pool.root("c" * 65)


def test_root_table_full(pool: Pool) -> None:
    with pool.transaction():
        for i in range(MAX_ROOTS):
            pool.set_root(f"r{i}", i, i)
        with pytest.raises(BackendError, match=f"all {MAX_ROOTS} roots are in use"):
            pool.set_root("one-more", 1, 1)
    assert len(pool.roots()) == MAX_ROOTS


# --- recovery from each state ------------------------------------------------------------------


def _committed_pool(path: Path) -> tuple[int, int, int, bytes]:
    with Pool(path, 2 * MiB) as p:
        data = bytes(range(256)) * 64
        off = put(p, "a", data)
        return off, p.main_off, p.back_off, data


def test_recovery_rolls_back_a_mutating_pool(path: Path) -> None:
    off, main_off, _, data = _committed_pool(path)
    poke(path, main_off + off, b"\xee" * 5000)  # a half-done transaction
    poke(path, OFF_STATE, struct.pack("<Q", MUTATING))
    with Pool(path) as p:
        assert p.opened_as == "rolled back"
        assert get(p, "a") == data and twin_equal(p) and p.stats().state == "idle"


def test_recovery_rolls_forward_a_copying_pool(path: Path) -> None:
    off, main_off, back_off, data = _committed_pool(path)
    poke(path, main_off + off, b"\x11" * 5000)  # the new version, complete in main
    poke(path, back_off + off, b"\x22" * 2000)  # back half copied
    poke(path, OFF_STATE, struct.pack("<Q", COPYING))
    with Pool(path) as p:
        assert p.opened_as == "rolled forward"
        assert get(p, "a") == b"\x11" * 5000 + data[5000:] and twin_equal(p)


def test_recovery_is_idempotent(path: Path) -> None:
    """A crash during recovery leaves the state word as it was: the next open redoes it."""
    off, main_off, _, data = _committed_pool(path)
    poke(path, main_off + off, b"\xee" * 5000)
    poke(path, OFF_STATE, struct.pack("<Q", MUTATING))
    poke(path, main_off + off, data[:2000])  # the first recovery died half way through
    with Pool(path) as p:
        assert p.opened_as == "rolled back" and get(p, "a") == data
    poke(path, OFF_STATE, struct.pack("<Q", MUTATING))  # and once more on a recovered pool
    with Pool(path) as p:
        assert get(p, "a") == data


def test_unfinished_creation_is_redone(path: Path, shm_dir: Path) -> None:
    path.write_bytes(struct.pack("<QQ", 0, int.from_bytes(b"PLNCREAT", "little")) + bytes(MiB))
    with Pool(path) as p:
        assert p.opened_as == "recreated" and p.stats().state == "idle"
    tiny = shm_dir / "tiny.pool"
    tiny.write_bytes(struct.pack("<QQ", 0, int.from_bytes(b"PLNCREAT", "little")))
    with pytest.raises(BackendError, match="unfinished creation"):
        Pool(tiny)
    with Pool(tiny, MiB) as p:
        assert p.opened_as == "recreated" and p.size == MiB


# --- bad input -----------------------------------------------------------------------------------


def test_not_a_pool(shm_dir: Path) -> None:
    for name, content in [("random", os.urandom(MiB)), ("zeros", bytes(MiB)), ("text", b"hi")]:
        f = shm_dir / name
        f.write_bytes(content)
        with pytest.raises(FormatError, match=rf"{name} is not a plinius pool \(bad magic\)"):
            Pool(f)
        assert f.read_bytes() == content
    empty = shm_dir / "empty"
    empty.write_bytes(b"")
    with pytest.raises(FormatError, match="empty file"):
        Pool(empty, create=False)
    with pytest.raises(NotFoundError, match=r"no pool at .*absent \(not created: create=never\)"):
        Pool(shm_dir / "absent", MiB, create=False)
    assert not (shm_dir / "absent").exists()


def test_truncated_pool(path: Path) -> None:
    _committed_pool(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedError, match=r"truncated: 1048576 bytes, created with 2097152"):
        Pool(path)
    path.write_bytes(data[:100])
    with pytest.raises(TruncatedError, match="shorter than its header"):
        Pool(path)


def test_newer_format_and_corrupt_header(path: Path) -> None:
    _committed_pool(path)
    poke(path, OFF_VERSION, struct.pack("<I", 2))
    with pytest.raises(UnsupportedVersionError, match=r"format version 2.*upgrade plinius"):
        Pool(path)
    poke(path, OFF_VERSION, struct.pack("<I", 1))
    poke(path, OFF_STATE, struct.pack("<Q", 7))
    with pytest.raises(FormatError, match="inconsistent header"):
        Pool(path)


def test_other_size(path: Path) -> None:
    Pool(path, 2 * MiB).close()
    with pytest.raises(BackendError, match="created with 2097152 bytes, not 4194304"):
        Pool(path, 4 * MiB)
    with pytest.raises(BackendError, match="too small"):
        Pool(path.with_name("small.pool"), 4096)


def test_locked_in_this_and_in_another_process(path: Path) -> None:
    with Pool(path, 2 * MiB), pytest.raises(PoolLockedError, match="already open in this process"):
        Pool(path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-P",
            "-c",
            "import sys; from plinius.backends.romulus import Pool; "
            "p = Pool(sys.argv[1]); print('ok', "
            "flush=True); sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
        with pytest.raises(
            PoolLockedError, match=rf"engine.pool is in use by .* \(pid {holder.pid}\)"
        ):
            Pool(path)
    finally:
        holder.communicate("")
    Pool(path).close()  # released when the holder exits


def test_unwritable_path() -> None:
    with pytest.raises(BackendError, match=r"cannot open pool /proc/.*: "):
        Pool("/proc/plinius.pool", MiB)


# --- durability modes and flush instructions -----------------------------------------------------


@pytest.mark.parametrize("mode", ["pmem", "msync", "none"])
def test_modes(tmp_path: Path, mode: str) -> None:
    with Pool(tmp_path / "m.pool", MiB, mode=mode) as p:
        assert p.mode == mode
        put(p, "a", b"data" * 100)
        assert p.stats().last_fences == 4
    with Pool(tmp_path / "m.pool", mode=mode) as p:
        assert get(p, "a") == b"data" * 100


@pytest.mark.parametrize("flush", FLUSHES)
def test_flush_instructions(path: Path, flush: str) -> None:
    if not cpu_has(flush):
        with pytest.raises(ConfigError, match=f"this CPU has no {flush}"):
            Pool(path, MiB, flush=flush)
        return
    with Pool(path, MiB, flush=flush) as p:
        assert p.flush_instruction == flush
        put(p, "a", b"x")


def test_environment_overrides(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLINIUS_PM_FLUSH", "clflush")
    monkeypatch.setenv("PLINIUS_PM_MODE", "none")
    with Pool(path, MiB) as p:
        assert (p.flush_instruction, p.mode) == ("clflush", "none")
    with Pool(path, mode="pmem", flush=cpu_flush()) as p:  # explicit options win
        assert (p.flush_instruction, p.mode) == (cpu_flush(), "pmem")
    monkeypatch.setenv("PLINIUS_PM_MODE", "turbo")
    with pytest.raises(ConfigError, match="PLINIUS_PM_MODE=turbo"):
        Pool(path)
    with pytest.raises(ConfigError, match="mode='x'"):
        Pool(path, mode="x")


# --- the benchmark entry point -------------------------------------------------------------------


def test_bench_swaps_permutes_the_array(pool: Pool) -> None:
    n = 10_000
    with pool.transaction():
        off = pool.alloc(8 * n)
        np.frombuffer(pool.writable(off, 8 * n), dtype=np.uint64)[:] = np.arange(n)
    elapsed = pool.bench_swaps(off, n, swaps_per_txn=16, ntxn=200, seed=3)
    assert elapsed > 0
    arr = np.frombuffer(pool.view(off, 8 * n), dtype=np.uint64)
    assert not np.array_equal(arr, np.arange(n))
    assert np.array_equal(np.sort(arr), np.arange(n))
    st = pool.stats()
    assert st.last_fences == 4 and st.last_log_lines <= 32 and twin_equal(pool)
    with pytest.raises(BackendError, match="outside main"):
        pool.bench_swaps(off, pool.region_size, 1, 1)


def test_small_allocations_use_freed_large_blocks_when_the_top_is_full(path: Path) -> None:
    with Pool(path, MiB) as p:
        with p.transaction():
            big = p.alloc(200_000)
            p.alloc(p.stats().free_bytes - 4096 - 64)  # the rest: the top is exhausted
        with p.transaction():
            p.free(big)
        with p.transaction():
            small = p.alloc(100)
        assert big - 64 <= small < big + 200_000


# --- hostile pool files (the attacker owns the storage) -----------------------------------------


def test_a_damaged_magic_is_refused_never_recreated(path: Path) -> None:
    _committed_pool(path)
    poke(path, OFF_MAGIC, bytes(8))
    before = path.read_bytes()
    with pytest.raises(PoolCorruptError, match=r"engine.pool is corrupt: its magic is 0x0"):
        Pool(path, 2 * MiB)
    poke(path, OFF_CREATING, struct.pack("<Q", int.from_bytes(b"PLNCREAT", "little")))
    with pytest.raises(PoolCorruptError, match=r"not an unfinished creation.*1 commits"):
        Pool(path)  # a stamp over committed data is damage, not an interrupted creation
    poke(path, OFF_CREATING, bytes(8))
    assert path.read_bytes() == before
    with Pool(path, create="force") as p:  # only on request
        assert p.opened_as == "created" and p.roots() == {} and p.size == 2 * MiB


def test_create_policies(path: Path, shm_dir: Path) -> None:
    with pytest.raises(NotFoundError, match="no pool at"):
        Pool(path, MiB, create=False)
    assert not path.exists()
    stamp = struct.pack("<QQ", 0, int.from_bytes(b"PLNCREAT", "little")) + bytes(MiB)
    path.write_bytes(stamp)
    with pytest.raises(FormatError, match="unfinished pool creation"):
        Pool(path, create=False)
    assert path.read_bytes() == stamp
    with pytest.raises(ConfigError, match="create='yes'"):
        Pool(path, create="yes")  # type: ignore[arg-type]


def test_nul_in_the_path_and_absurd_sizes(shm_dir: Path) -> None:
    with pytest.raises(ConfigError, match="NUL"):
        Pool(str(shm_dir / "a\0b"), MiB)
    assert not (shm_dir / "a").exists()
    with pytest.raises(ConfigError, match="too large"):
        Pool(shm_dir / "big.pool", 1 << 70)
    # the engine checks too, for callers other than Pool: a counted path, a size that would
    # wrap when rounded up to a page
    from plinius.backends.romulus.pool import ffi, lib

    out = ffi.new("rom_pool **")
    for raw, size, needle in [
        (os.fsencode(shm_dir / "a") + b"\0b", MiB, b"NUL"),
        (os.fsencode(shm_dir / "big.pool"), (1 << 64) - 1 - 4096, b"too large"),
    ]:
        rc = lib.rom_open(raw, len(raw), size, lib.ROM_CREATE_AUTO, -1, -1, out)
        assert rc == lib.ROM_E_INVAL and needle in ffi.string(lib.rom_last_error())
    assert not (shm_dir / "a").exists() and not (shm_dir / "big.pool").exists()


def test_damage_while_open_is_caught_at_use(path: Path) -> None:
    """Words changed through the file while the pool is mapped skip the checks at open."""
    with Pool(path, 2 * MiB) as p:
        put(p, "a", b"x" * 300)
        put(p, "b", b"y" * 300)
        with p.transaction():
            p.free(p.root("a")[0])  # type: ignore[index]
            p.del_root("a")
        main = p.main_off
        poke(path, main + 64 + 3 * 8, struct.pack("<Q", (1 << 64) - 64))  # class-3 head
        p.begin()
        with pytest.raises(PoolCorruptError, match="free-list head of size class 3 points"):
            p.alloc(200)
        p.abort()
        poke(path, main + 40, struct.pack("<Q", p.region_size - 64))  # large head into back
        with (
            pytest.raises(PoolCorruptError, match="large free-list head points outside"),
            p.transaction(),
        ):
            p.alloc(100_000)
        assert get(p, "b") == b"y" * 300


# --- background commit: the copy to back leaves the critical path --------------------------------


@pytest.mark.parametrize("mode", ["pmem", "msync", "none"])
def test_background_commit_copies_back_and_next_begin_waits(path: Path, mode: str) -> None:
    """A held copier (test hook) has not copied when commit returns; the state word already
    says COPYING (durable); the next begin waits, after which back equals main."""
    from plinius.backends.romulus import sim_copier

    n = 1 << 20
    with Pool(path, 8 << 20, mode=mode, commit="background", bg_min=0) as p:
        assert p.commit_mode == "background"
        with p.transaction():
            off = p.alloc(n)
            p.writable(off, n)[:] = b"\1" * n
        sim_copier(p, hold=True)
        p.begin()
        p.writable(off, n)[:] = b"\2" * n
        p.commit()
        # the copier is held: back still has version 1 and COPYING is what the file says
        assert peek(path, 128, 8) == struct.pack("<Q", 2)
        assert peek(path, p.back_off + off, 16) == b"\1" * 16
        assert bytes(p.view(off, 16)) == b"\2" * 16  # main is read without waiting
        p.begin()  # waits for the copier
        assert peek(path, p.back_off + off, n) == b"\2" * n
        p.abort()
        st = p.stats()
        assert st.bg_copies == 2 and st.last_fences == 2  # the abort's two fences
        assert st.bg_copy_s > 0 and st.bg_wait_s > 0 and st.commit == "background"
    with Pool(path) as p:
        assert p.opened_as == "opened" and bytes(p.view(off, n)) == b"\2" * n


def test_committed_reads_wait_for_the_copier(path: Path) -> None:
    from plinius.backends.romulus import sim_copier

    with Pool(path, 4 << 20, commit="background", bg_min=0) as p:
        sim_copier(p, hold=True)
        with p.transaction():
            off = p.alloc(4096)
            p.writable(off, 4096)[:] = b"x" * 4096
            p.set_root("r", off, 4096)
        assert p.root("r", committed=True) == (off, 4096)  # back's table: waited
        assert bytes(p.view(off, 4096, committed=True)) == b"x" * 4096
        assert p.stats().last_copy_bytes > 4096 and p.stats().state == "idle"


def test_sync_commit_and_small_copies_stay_inline(path: Path) -> None:
    with Pool(path, 4 << 20, commit="sync") as p:
        with p.transaction():
            off = p.alloc(1 << 20)
            p.writable(off, 1 << 20)[:] = b"y" * (1 << 20)
        assert p.stats().bg_copies == 0 and p.stats().commit == "sync"
        p.set_commit("background", bg_min=2 << 20)  # above this copy: still inline
        with p.transaction():
            p.writable(off, 1 << 20)[:] = b"z" * (1 << 20)
        assert p.stats().bg_copies == 0
        p.set_commit(bg_min=0)
        with p.transaction():
            p.writable(off, 1 << 20)[:] = b"w" * (1 << 20)
        st = p.stats()
        assert st.bg_copies == 1 and st.last_fences == 4 and st.bg_min == 0
        assert peek(path, p.back_off + off, 1 << 20) == b"w" * (1 << 20)


def test_commit_mode_is_checked(path: Path) -> None:
    with pytest.raises(ConfigError, match="commit='later'"):
        Pool(path, 4 << 20, commit="later")
    with Pool(path, 4 << 20) as p:
        assert p.commit_mode == "background"  # the default
        p.begin()
        with pytest.raises(BackendError, match="inside a transaction"):
            p.set_commit("sync")
        p.abort()
    with env_var("PLINIUS_PM_COMMIT", "sync"), Pool(path) as p:
        assert p.commit_mode == "sync"


@contextmanager
def env_var(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def test_close_waits_for_the_copier_and_reopens_idle(path: Path) -> None:
    from plinius.backends.romulus import sim_copier

    p = Pool(path, 8 << 20, commit="background", bg_min=0)
    sim_copier(p, hold=True)
    with p.transaction():
        off = p.alloc(2 << 20)
        p.writable(off, 2 << 20)[:] = b"c" * (2 << 20)
    p.close()  # releases the held copier and joins it
    assert peek(path, 128, 8) == struct.pack("<Q", 0)
    with Pool(path) as q:
        assert q.opened_as == "opened"
        assert peek(path, q.back_off + off, 2 << 20) == b"c" * (2 << 20)
