"""Distributed mirrors under real ``torchrun`` ranks (gloo, CPU): DDP and FSDP2 runs killed at
every step of a save (and at random moments) resume bit-identically; mirrors reshard between
world sizes; and every attack on the parts, the global manifest or a rank's record is refused
with one line naming the rank.

Each run is ``examples/torch_ddp.py`` through ``tests/torch_dist_child.py`` (the kill points).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="torch==2.13.0 is installed only in the Python 3.11 envs")

from plinius.backends.registry import backend_class
from plinius.core.crypto import generate_key, write_key_file
from plinius.enclave.counter import slot_name

CHILD = Path(__file__).resolve().parents[1] / "torch_dist_child.py"
STEPS, EVERY, BATCH = 16, 4, 32
#: a run that hangs is a failure, not a stuck CI (torchrun can wait for a dead rank for ever)
RUN_TIMEOUT = 240


class Run:
    """One torchrun of the example in ``root`` (its own platform, state, key and storage)."""

    def __init__(self, root: Path, wrap: str, backend: str = "tmpfs", redis: str = "") -> None:
        self.root, self.wrap = root, wrap
        root.mkdir(parents=True, exist_ok=True)
        self.key = root / "owner.key"
        if not self.key.exists():
            write_key_file(self.key, generate_key())
        where = "/dev/shm" if backend == "tmpfs" and Path("/dev/shm").is_dir() else str(root)
        self.store = Path(where) / f"plinius-dist-{os.getpid()}-{id(self)}"
        tail = "{rank}.pool" if backend == "romulus" else "{rank}"
        self.spec = f"{backend}:{self.store}/{tail}"
        if backend == "redis":  # one shared server: one spec, each rank its own blobs
            self.spec = f"{redis}?prefix=t{os.getpid()}x{id(self)}"
        self.pids = root / "pids"
        self.pids.mkdir(exist_ok=True)

    def cleanup(self) -> None:
        shutil.rmtree(self.store, ignore_errors=True)

    def __call__(
        self,
        steps: int = STEPS,
        nproc: int = 2,
        *,
        restarts: int = 0,
        kill: str = "",
        asynchronous: bool = False,
        killer: threading.Thread | None = None,
    ) -> subprocess.CompletedProcess[str]:
        shutil.rmtree(self.pids, ignore_errors=True)
        self.pids.mkdir()
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PLINIUS_PLATFORM_DIR": str(self.root / "platform"),
            "PLINIUS_STATE_DIR": str(self.root / "state"),
            "PLINIUS_TEST_PIDS": str(self.pids),
            "PLINIUS_TEST_KILL": kill,
        }
        argv = [
            sys.executable, "-P", "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(nproc), "--max-restarts", str(restarts),
            "--monitor-interval", "0.3", str(CHILD), self.wrap,
            "--backend", self.spec, "--key-file", str(self.key), "--steps", str(steps),
            "--every", str(EVERY), "--batch", str(BATCH), "--log-every", "1000",
            "--digest-out", str(self.root),
        ] + (["--async"] if asynchronous else [])  # fmt: skip
        for old in self.root.glob("rank*.txt"):
            old.unlink()
        if killer is not None:
            killer.start()
        out = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
        )
        if killer is not None:
            killer.join()
        return out

    def digests(self, nproc: int = 2) -> list[str]:
        return [(self.root / f"rank{r}.txt").read_text().split()[0] for r in range(nproc)]

    def rngs(self, nproc: int = 2) -> list[str]:
        return [(self.root / f"rank{r}.txt").read_text().split()[1] for r in range(nproc)]


def _ok(out: subprocess.CompletedProcess[str]) -> None:
    assert out.returncode == 0, out.stderr[-3000:]


def _no_refusal(out: subprocess.CompletedProcess[str]) -> None:
    """No rank refused anything or aborted a save on its own: a kill only cuts the ranks'
    connections (gloo's errors), it never makes plinius refuse."""
    said = [ln for ln in out.stderr.splitlines() if "plinius." in ln and "Error:" in ln]
    assert not said, said[:4]


def _refused(out: subprocess.CompletedProcess[str], *phrases: str) -> str:
    """The refusal line a rank printed (every phrase in it)."""
    assert out.returncode != 0, "the attack was not refused"
    lines = [ln for ln in out.stderr.splitlines() if "plinius.core.errors." in ln]
    assert lines, out.stderr[-3000:]
    hit = [ln for ln in lines if all(p in ln for p in phrases)]
    assert hit, f"no refusal says {phrases}: {lines[:4]}"
    return hit[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, bool], list[str]]:
    """Digests (whole state, then each rank's RNGs) of uninterrupted runs, per (wrap, async)."""
    got: dict[tuple[str, bool], list[str]] = {}
    for wrap in ("ddp", "fsdp"):
        for asynchronous in (False, True):
            run = Run(tmp_path_factory.mktemp(f"ref-{wrap}-{asynchronous}"), wrap)
            try:
                _ok(run(asynchronous=asynchronous))
                got[(wrap, asynchronous)] = run.digests() + run.rngs()
            finally:
                run.cleanup()
    return got


# --- kills ---------------------------------------------------------------------------------

#: (wrap, async, backend, kills): two kills per run at named points of a save, each on the rank
#: given; every point of the save is covered on each wrap, sync and async, on two local
#: backends; and on one Redis server the ranks share
KILLS = [
    ("ddp", False, "tmpfs", "0:seal:1:2,1:record:0:1"),
    ("ddp", False, "romulus", "0:part:0:2,1:global:0:1"),
    ("ddp", True, "tmpfs", "0:record:1:2,1:seal:0:1"),
    ("ddp", True, "romulus", "0:global:0:3,1:step:1:3"),
    ("fsdp", False, "tmpfs", "0:global:0:2,1:part:1:1"),
    ("fsdp", False, "romulus", "0:record:0:2,1:seal:1:1"),
    ("fsdp", True, "tmpfs", "0:part:1:2,1:record:1:1"),
    ("fsdp", True, "romulus", "0:step:0:6,1:global:0:1"),
    ("ddp", False, "tmpfs", "0:step:0:8,1:part:0:1"),  # rank 1 began save 2, rank 0 never
    ("ddp", True, "redis", "0:part:1:2,1:record:0:1"),
    ("fsdp", False, "redis", "0:seal:0:3,1:global:0:1"),
]


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A private ``redis-server`` (AOF always) the ranks share."""
    from plinius.backends.redis_server import RedisServer

    with RedisServer(appendonly=True, appendfsync="always") as srv:
        yield srv.url


@pytest.mark.parametrize(("wrap", "asynchronous", "backend", "kill"), KILLS)
def test_killed_rank_resumes_bit_identically(
    tmp_path: Path,
    reference: dict[tuple[str, bool], list[str]],
    request: pytest.FixtureRequest,
    wrap: str,
    asynchronous: bool,
    backend: str,
    kill: str,
) -> None:
    url = request.getfixturevalue("redis_url") if backend == "redis" else ""
    run = Run(tmp_path, wrap, backend, url)
    try:
        out = run(restarts=4, kill=kill, asynchronous=asynchronous)
        _ok(out)
        attempts = {p.name.split(".")[0] for p in run.pids.iterdir()}
        assert {"a0", "a1", "a2"} <= attempts, f"both kills must land: {sorted(attempts)}"
        _no_refusal(out)  # an extra restart (a transport error under load) is no refusal
        assert run.digests() + run.rngs() == reference[(wrap, asynchronous)]
    finally:
        run.cleanup()


@pytest.mark.parametrize("wrap", ["ddp", "fsdp"])
def test_random_moment_kills_resume_bit_identically(
    tmp_path: Path, reference: dict[tuple[str, bool], list[str]], wrap: str
) -> None:
    """A random rank SIGKILLed at random moments (from outside) in three attempts."""
    run = Run(tmp_path, wrap)
    rng = random.Random(f"{wrap}-kills")
    landed: list[str] = []

    def killer() -> None:
        for attempt in range(3):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                pids = sorted(run.pids.glob(f"a{attempt}.r*"))
                if len(pids) == 2:
                    break
                time.sleep(0.05)
            else:
                return
            time.sleep(rng.uniform(1.5, 4.0))  # ranks start in ~1.5 s, train ~3 s
            victim = rng.choice(pids)
            try:
                os.kill(int(victim.read_text()), signal.SIGKILL)
                landed.append(victim.name)
            except ProcessLookupError:
                return

    out = run(restarts=4, killer=threading.Thread(target=killer))
    try:
        _ok(out)
        assert landed, "no kill landed"
        _no_refusal(out)
        assert run.digests() + run.rngs() == reference[(wrap, False)]
    finally:
        run.cleanup()


# --- resharding ----------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", ["ddp", "fsdp"])
def test_reshards_two_to_one_to_two_and_four(tmp_path: Path, wrap: str) -> None:
    """A mirror of 2 ranks restores at 1 to the same whole state, and 1's at 2 and 4."""
    run = Run(tmp_path, wrap)
    try:
        _ok(run(steps=8))
        at8 = run.digests()[0]
        _ok(run(steps=8, nproc=1))  # restores at step 8, trains nothing
        assert run.digests(1) == [at8]
        _ok(run(steps=12, nproc=1))  # saves at 12 as one rank
        at12 = run.digests(1)[0]
        _ok(run(steps=12, nproc=2))
        assert run.digests(2) == [at12, at12]
        _ok(run(steps=12, nproc=4))
        assert run.digests(4) == [at12] * 4
        _ok(run(steps=16, nproc=2))  # trains on from the resharded state
    finally:
        run.cleanup()


# --- attacks -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Run, Path, Path]]:
    """A DDP run saved at steps 4 and 8 (its storage kept in ``old``), then at 12 and 16; and
    a copy of storage, platform and state as they are then (``keep``)."""
    root = tmp_path_factory.mktemp("saved")
    run = Run(root / "run", "ddp")
    _ok(run(steps=8))
    old = root / "old"
    shutil.copytree(run.store, old)
    _ok(run(steps=16))
    keep = root / "keep"
    for src, name in ((run.store, "store"), (run.root / "platform", "platform"),
                      (run.root / "state", "state")):  # fmt: skip
        shutil.copytree(src, keep / name)
    yield run, old, keep
    run.cleanup()


@pytest.fixture()
def saved(pristine: tuple[Run, Path, Path]) -> tuple[Run, Path]:
    """The saved run as ``pristine`` left it (each attack starts from the same storage)."""
    run, old, keep = pristine
    for name, dst in (("store", run.store), ("platform", run.root / "platform"),
                      ("state", run.root / "state")):  # fmt: skip
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(keep / name, dst)
    return run, old


def _blob(run: Run, rank: int, name: str) -> Path:
    return run.store / str(rank) / name


def _live(store: Path, rank: int) -> str:
    """The name of rank ``rank``'s part blob written last (the one the manifest lists)."""
    parts = [store / str(rank) / f"mirror.r{rank}.{b}" for b in (0, 1)]
    return max((p for p in parts if p.exists()), key=lambda p: p.stat().st_mtime_ns).name


def _refuses(run: Run, *phrases: str) -> str:
    return _refused(run(steps=20), *phrases)


def test_swapped_parts_refused(saved: tuple[Run, Path]) -> None:
    run, _ = saved
    a, b = _blob(run, 0, _live(run.store, 0)), _blob(run, 1, _live(run.store, 1))
    tmp = a.with_name("swap")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    _refuses(run, "rank 0", "parts swapped or mixed")


def test_older_part_of_one_rank_replayed_refused(saved: tuple[Run, Path]) -> None:
    run, old = saved
    name = _live(run.store, 1)
    assert name == _live(old, 1)  # saves 2 and 4 went to the same blob
    shutil.copy(old / "1" / name, _blob(run, 1, name))  # save 2 over save 4
    _refuses(run, "rank 1", "an older part replayed")


def test_parts_of_two_saves_mixed_refused(saved: tuple[Run, Path]) -> None:
    run, old = saved
    for name in ("mirror.global", _live(old, 0)):  # save 2's manifest and rank 0's part
        shutil.copy(old / "0" / name, _blob(run, 0, name))
    line = _refuses(run, "rank 0", "rollback refused")
    assert "version 4" in line  # the platform committed save 4


def test_dropped_part_refused(saved: tuple[Run, Path]) -> None:
    run, _ = saved
    _blob(run, 1, _live(run.store, 1)).unlink()
    _refuses(run, "rank 1", "is missing")


def test_global_manifest_replayed_with_its_parts_refused(saved: tuple[Run, Path]) -> None:
    """A whole consistent older save put back: every rank's record committed a newer one."""
    run, old = saved
    shutil.copy(old / "0" / "mirror.global", _blob(run, 0, "mirror.global"))
    for r in (0, 1):
        name = _live(old, r)
        shutil.copy(old / str(r) / name, _blob(run, r, name))
    _refuses(run, "rank 0", "an older copy of the mirror was put back")


def test_global_manifest_altered_refused(saved: tuple[Run, Path]) -> None:
    run, _ = saved
    g = _blob(run, 0, "mirror.global")
    raw = bytearray(g.read_bytes())
    raw[-40] ^= 1
    g.write_bytes(bytes(raw))
    _refuses(run, "integrity check failed", "global manifest")


def test_world_size_changed_in_storage_refused(saved: tuple[Run, Path], tmp_path: Path) -> None:
    """The global manifest of a one-rank run of the same model and key, put in its place."""
    run, _ = saved
    solo = Run(tmp_path / "solo", "ddp")
    shutil.copy(run.key, solo.key)
    try:
        _ok(solo(steps=4, nproc=1))
        shutil.copy(solo.store / "0" / "mirror.global", _blob(run, 0, "mirror.global"))
    finally:
        solo.cleanup()
    _refuses(run, "rank 0", "belong to different runs")


def test_rank_platform_reset_refused(saved: tuple[Run, Path]) -> None:
    """Rank 1's record deleted from the node's platform (as if its platform were reset)."""
    run, _ = saved
    parts = backend_class("tmpfs").slot_parts_of(str(run.store / "1"), {})
    record = run.root / "platform" / "counters" / slot_name(*parts, "mirror.r1")
    assert record.exists()
    record.unlink()
    _refuses(run, "rank 1", "never committed there on this platform")


def test_refused_attack_loses_nothing(saved: tuple[Run, Path]) -> None:
    """A refusal writes nothing: undo the attack and the run goes on from the last save."""
    run, _ = saved
    part = _blob(run, 1, _live(run.store, 1))
    kept = part.read_bytes()
    part.unlink()
    _refuses(run, "rank 1", "is missing")
    part.write_bytes(kept)
    _ok(run(steps=20))
