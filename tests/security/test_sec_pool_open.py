"""Attacks on the ``romulus`` pool file through the real CLI, each in its own process.

The attacker owns every byte of the pool file and may kill plinius at any moment. Whatever they
plant, ``plinius`` must refuse with exit 2 and one clear line (a ``PoolCorruptError`` naming the
field, or a ``FormatError`` for a foreign file): never a signal, a hang, a traceback, and never a
silent re-creation that wipes the victim's roots.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plinius.backends.romulus import Pool

from .conftest import CliRunner, World, assert_refused

POOL_SIZE = "64M"  # the tiny model's mirror plus the 16 MB MNIST sample area
TIMEOUT = 60.0  # a hang (an endless free-list walk under the pool lock) fails the test

# header fields and allocator metadata (offsets within main), see native/romulus.h/.c
H_MAGIC, H_CREATING, H_REGION = 0, 8, 32
M_TOP, M_FREE_BYTES, M_LARGE_FREE, M_FREE_HEAD, M_ROOTS = 8, 16, 40, 64, 344
ROOT_SIZE, MAIN_OFF = 96, 4096
BLK_FREE = 0x45455246424C4B00
CREATING = int.from_bytes(b"PLNCREAT", "little")


def spec(pool: Path, extra: str = "") -> str:
    return f"romulus:{pool}?size={POOL_SIZE}{extra}"


def train(
    run_cli: CliRunner, world: World, pool: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "train",
        "--model",
        "tiny",
        "--iterations",
        "3",
        "--backend",
        spec(pool),
        "--key-file",
        str(world.key),
        "--data",
        str(world.data),
        *extra,
        env=world.env,
        timeout=TIMEOUT,
    )


def verify(run_cli: CliRunner, world: World, pool: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "verify",
        "--backend",
        f"romulus:{pool}",
        "--key-file",
        str(world.key),
        env=world.env,
        timeout=TIMEOUT,
    )


@pytest.fixture
def victim(world: World, run_cli: CliRunner) -> Path:
    """A pool the victim trained into: samples, data set header, mirror roots, all committed."""
    pool = world.shm / "v.pool"
    res = train(run_cli, world, pool)
    assert res.returncode == 0, res.stderr
    return pool


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def region(pool: Path) -> int:
    with open(pool, "rb") as f:
        f.seek(H_REGION)
        return int(struct.unpack("<Q", f.read(8))[0])


def poke(pool: Path, off: int, value: int) -> None:
    with open(pool, "r+b") as f:
        f.seek(off)
        f.write(struct.pack("<Q", value & (2**64 - 1)))


def poke_meta(pool: Path, off: int, value: int) -> None:
    """Write a word of the allocator metadata in main AND its committed twin in back."""
    back = MAIN_OFF + region(pool)
    poke(pool, MAIN_OFF + off, value)
    poke(pool, back + off, value)


def delete_root(pool: Path, prefix: bytes) -> None:
    """Erase the root whose name starts with ``prefix`` from both copies of the table."""
    back = MAIN_OFF + region(pool)
    data = bytearray(pool.read_bytes())
    for i in range(128):
        at = MAIN_OFF + M_ROOTS + i * ROOT_SIZE
        if bytes(data[at : at + len(prefix)]) == prefix:
            for base in (at, back + M_ROOTS + i * ROOT_SIZE):
                data[base : base + ROOT_SIZE] = bytes(ROOT_SIZE)
            pool.write_bytes(data)
            return
    raise AssertionError(f"no root {prefix!r} in {pool}")


def assert_clean(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert res.returncode >= 0, f"killed by signal {-res.returncode}: {res.stderr[-2000:]}"
    assert_refused(res, *needles)


# --- a damaged magic must never re-create the pool -------------------------------------------


@pytest.mark.parametrize("stamp", [0, CREATING], ids=["magic", "magic+stamp"])
def test_zeroed_magic_is_refused_and_the_pool_left_untouched(
    victim: Path, world: World, run_cli: CliRunner, stamp: int
) -> None:
    poke(victim, H_MAGIC, 0)
    poke(victim, H_CREATING, stamp)  # with the stamp it looks like an unfinished creation
    before = digest(victim)
    assert_clean(verify(run_cli, world, victim), "corrupt", str(victim), "create=force")
    assert_clean(train(run_cli, world, victim), "corrupt")
    assert digest(victim) == before  # nothing re-created, nothing written


def test_create_force_is_the_explicit_way_to_start_over(
    victim: Path, world: World, run_cli: CliRunner
) -> None:
    poke(victim, H_MAGIC, 0)
    res = run_cli(
        "train",
        "--model",
        "tiny",
        "--iterations",
        "2",
        "--backend",
        spec(victim, "&create=force"),
        "--key-file",
        str(world.key),
        "--data",
        str(world.data),
        "--fresh",
        env=world.env,
        timeout=TIMEOUT,
    )
    # a new pool: the platform remembers the old mirror, so plinius may refuse the rollback;
    # what matters is that the pool file itself was re-created and opens cleanly
    assert res.returncode in (0, 2) and "Traceback" not in res.stderr, res.stderr
    with Pool(victim) as p:
        assert p.opened_as == "opened"


# --- hostile allocator metadata: refused before any walk or store -------------------------------


@pytest.mark.parametrize(
    "value",
    [0x4141414141414141, -1, 8, 4096 * 4 + 1, 64 * 2**20, 2**63],
    ids=["ascii", "all-ones", "header", "unaligned", "file-size", "huge"],
)
def test_garbage_free_list_head_then_train(
    victim: Path, world: World, run_cli: CliRunner, value: int
) -> None:
    poke_meta(victim, M_FREE_HEAD + 3 * 8, value)
    # train must put the data set again: a large block (samples) and a small one (class 3)
    delete_root(victim, b"records.")
    delete_root(victim, b"dataset.")
    res = train(run_cli, world, victim)
    assert_clean(res, "corrupt", "free-list head of size class 3")


def test_garbage_large_free_list_head_then_train(
    victim: Path, world: World, run_cli: CliRunner
) -> None:
    poke_meta(victim, M_LARGE_FREE, region(victim) - 64)  # its header would reach into back
    delete_root(victim, b"records.")
    assert_clean(train(run_cli, world, victim), "corrupt", "large free-list head")


def test_self_linked_free_block_does_not_hang(
    victim: Path, world: World, run_cli: CliRunner
) -> None:
    """A fake free block whose link points at itself: the old first-fit walk never ended."""
    fake = 8 * 4096 - 64  # a large-block position inside the heap (its data page-aligned)
    for base in (MAIN_OFF, MAIN_OFF + region(victim)):
        poke(victim, base + fake, BLK_FREE)
        poke(victim, base + fake + 8, 4096)  # too small for any request: the walk goes on
        poke(victim, base + fake + 16, fake)  # next = itself
        poke(victim, base + fake + 24, 0xFFFF)
    poke_meta(victim, M_LARGE_FREE, fake)
    poke_meta(victim, M_FREE_BYTES, 4096)
    delete_root(victim, b"records.")
    t0 = time.monotonic()
    assert_clean(train(run_cli, world, victim), "corrupt", "large free")
    assert time.monotonic() - t0 < TIMEOUT


def test_top_past_the_heap(victim: Path, world: World, run_cli: CliRunner) -> None:
    poke_meta(victim, M_TOP, region(victim) + 4096)
    assert_clean(verify(run_cli, world, victim), "corrupt", "allocator top")


def test_root_pointing_outside_its_block(victim: Path, world: World, run_cli: CliRunner) -> None:
    back = MAIN_OFF + region(victim)
    data = victim.read_bytes()
    for i in range(128):
        at = M_ROOTS + i * ROOT_SIZE
        if data[MAIN_OFF + at : MAIN_OFF + at + 6] == b"mirror":
            for base in (MAIN_OFF, back):
                poke(victim, base + at + 80, 2**40)  # size far past the block
            break
    else:
        raise AssertionError("no mirror root")
    assert_clean(verify(run_cli, world, victim), "corrupt", "root 'mirror'")


# --- truncated, sparse and foreign files --------------------------------------------------------


@pytest.mark.parametrize("keep", [100, 4096, 1 << 20, 32 << 20], ids=str)
def test_truncated_pool(victim: Path, world: World, run_cli: CliRunner, keep: int) -> None:
    os.truncate(victim, keep)
    before = digest(victim)
    assert_clean(verify(run_cli, world, victim), "truncated")
    assert_clean(train(run_cli, world, victim), "truncated")
    assert digest(victim) == before


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(4096)


@pytest.mark.parametrize(
    "content",
    [os.urandom(1 << 20), PNG, b"just some notes\n" * 100, bytes(1 << 20)],
    ids=["random", "png", "text", "zeros"],
)
def test_foreign_file_is_refused_and_untouched(
    world: World, run_cli: CliRunner, content: bytes
) -> None:
    pool = world.shm / "foreign.pool"
    pool.write_bytes(content)
    assert_clean(train(run_cli, world, pool), "not a plinius pool")
    assert_clean(verify(run_cli, world, pool), "not a plinius pool")
    assert pool.read_bytes() == content


def test_sparse_multi_gib_file(world: World, run_cli: CliRunner) -> None:
    pool = world.shm / "sparse.pool"
    with open(pool, "wb") as f:
        f.truncate(8 << 30)  # 8 GiB of holes: must not be mapped, populated or written
    assert_clean(verify(run_cli, world, pool), "not a plinius pool")
    st = pool.stat()
    assert st.st_size == 8 << 30 and st.st_blocks == 0


@pytest.mark.parametrize(
    "size",
    ["99999999999999999999G", "9" * 400 + "G", "-1G", "0", "4096", "1T" * 2, "100000T"],
    ids=["overflow", "inf", "negative", "zero", "too-small", "garbage", "too-large"],
)
def test_bad_size_option(world: World, run_cli: CliRunner, size: str) -> None:
    pool = world.shm / "sized.pool"
    res = run_cli(
        "verify",
        "--backend",
        f"romulus:{pool}?size={size}",
        "--key-file",
        str(world.key),
        env=world.env,
        timeout=TIMEOUT,
    )
    assert_clean(res, "size")
    assert not pool.exists() or pool.stat().st_size == 0


def test_nul_in_pool_path_is_refused(world: World) -> None:
    """argv cannot carry a NUL, so this goes through the backend API in a real process."""
    target = world.shm / "p"
    code = (
        "import sys\n"
        "from plinius.backends.registry import open_backend\n"
        "from plinius.core.errors import ConfigError\n"
        "try:\n"
        f"    open_backend('romulus:' + {str(target)!r} + '\\0.evil?size=1M')\n"
        "except ConfigError as e:\n"
        "    print('refused:', e)\n"
        "    sys.exit(2)\n"
    )
    res = subprocess.run(
        [sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert res.returncode == 2 and "NUL" in res.stdout, (res.stdout, res.stderr)
    assert not target.exists()  # the truncated name was never created


# --- killed during creation: the next open finishes the job -------------------------------------


def test_crash_at_every_point_of_creation_then_train(world: World, run_cli: CliRunner) -> None:
    """A creator dies (deterministically, in the engine) at each flush/fence of the creation.

    (Read-only commands never create a pool, so the creation is driven directly.)
    """
    pool = world.shm / "new.pool"
    for at in range(1, 9):  # 3 flushes + fence, magic + fence, stamp cleared + fence
        pool.unlink(missing_ok=True)
        res = subprocess.run(
            [sys.executable, "-P", "-c", _CREATOR, str(pool)],
            env={**world.env, "PLINIUS_ROMULUS_CRASH_AT": str(at)},
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert res.returncode == 77, (at, res.returncode, res.stderr[-2000:])  # CRASH_EXIT
        res = train(run_cli, world, pool, "--fresh")  # the platform saw the last pool's mirror
        assert res.returncode == 0, (at, res.stderr[-2000:])


_CREATOR = """
import sys
from plinius.backends.romulus import Pool
print("ready", flush=True)
Pool(sys.argv[1], 64 << 20).close()
print("done", flush=True)
"""


def test_sigkill_during_creation_many_times(world: World, run_cli: CliRunner) -> None:
    """Real SIGKILLs at random moments of a creation: never a refused or a broken pool."""
    pool = world.shm / "killed.pool"
    rng = random.Random(1234)
    outcomes: dict[str, int] = {}
    for _ in range(25):
        pool.unlink(missing_ok=True)
        child = subprocess.Popen(
            [sys.executable, "-P", "-c", _CREATOR, str(pool)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0, 0.04))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=TIMEOUT)
        if not pool.exists():
            outcomes["not started"] = outcomes.get("not started", 0) + 1
            continue
        with Pool(pool, 64 << 20) as p:
            outcomes[p.opened_as] = outcomes.get(p.opened_as, 0) + 1
            assert p.roots() == {} and p.stats().state == "idle"
    print(f"\nSIGKILL during creation: {outcomes}")
    assert outcomes.get("recreated", 0) + outcomes.get("created", 0) > 0, outcomes
    res = train(run_cli, world, pool, "--fresh")
    assert res.returncode == 0, res.stderr[-2000:]


# --- a full pool is a clean refusal that loses nothing --------------------------------------------


def test_full_pool_is_refused_and_keeps_the_committed_data(
    victim: Path, world: World, run_cli: CliRunner
) -> None:
    with Pool(victim) as p:
        before = {k: bytes(p.view(*v)) for k, v in p.roots().items()}
    res = run_cli(
        "train",
        "--model",
        "size-20",  # a 20 MB mirror: more than the pool has left (17 MB)
        "--iterations",
        "1",
        "--backend",
        spec(victim),
        "--key-file",
        str(world.key),
        "--data",
        str(world.data),
        "--fresh",
        env=world.env,
        timeout=TIMEOUT,
    )
    assert_clean(res, "pool full", "the last committed version is intact")
    with Pool(victim) as p:
        assert p.stats().state == "idle"
        assert {k: bytes(p.view(*v)) for k, v in p.roots().items()} == before
