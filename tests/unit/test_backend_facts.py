"""Backends own their storage facts (creation options, locality, ranged reads); how the lab
benchmarks, characterises and draws them (fio, plots, the bench plan, the baseline) is a lab
profile keyed by name (:mod:`plinius.lab.profiles`), so a new backend (a remote one too) plugs in
through its own module alone; and the staged-write base is all a remote store needs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import numpy as np
import pytest

from plinius.backends import open_backend, register_backend
from plinius.backends.base import (
    Backend,
    Durability,
    IoStats,
    RunsOn,
    check_blob_name,
    check_range,
)
from plinius.backends.fsinfo import MountInfo
from plinius.backends.registry import BACKENDS, BUILTIN, backend_class
from plinius.backends.staging import StagedBackend
from plinius.backends.testing import KEY, model_records
from plinius.backends.tmpfs import TmpfsBackend
from plinius.core.crypto import make_engine
from plinius.core.errors import ConfigError
from plinius.core.memory import StagingBuffer
from plinius.format.mirror import MirrorStore, Record
from plinius.lab.bench.saverestore import add_speedups
from plinius.lab.fio.runner import plan_targets
from plinius.lab.plan import all_backend_names, default_plan
from plinius.lab.profiles import (
    PROFILES,
    InstancePlan,
    Profile,
    default_backends,
    fio_root,
    profile,
    register_profile,
)
from plinius.lab.reporting.plots import _style

SERVERS: dict[str, dict[str, bytes]] = {}
#: the paper's four backends (the registry may hold more built-ins)
FOUR = ("romulus", "tmpfs", "dax", "ssd")


class RemoteStub(StagedBackend):
    """A remote store in a dict: the put and the read, as a Redis backend would have them."""

    name = "remotestub"
    byte_addressable = False
    locality = "remote"
    durability_levels: ClassVar[tuple[Durability, ...]] = ("none",)

    def __init__(self, location: str, **options: Any) -> None:
        super().__init__(location, **options)
        self.stored = SERVERS.setdefault(location, {})

    def _put(self, blob: str, data: memoryview, size: int) -> IoStats:
        self.stored[blob] = bytes(data[:size])
        return IoStats(bytes=size)

    def _get(
        self, blob: str, offset: int, length: int | None, stage: StagingBuffer
    ) -> tuple[memoryview, int] | None:
        data = self.stored.get(check_blob_name(blob))
        if data is None:
            return None
        n = check_range(repr(blob), offset, length, len(data))
        view = stage.view(n)
        view[:] = data[offset : offset + n]
        return view, len(data)

    def map(self, blob: str) -> memoryview | None:
        data = self.stored.get(check_blob_name(blob))
        return None if data is None else memoryview(data)

    def delete(self, blob: str) -> None:
        self.stored.pop(check_blob_name(blob), None)

    def blobs(self) -> list[str]:
        return sorted(self.stored)

    def describe(self) -> RunsOn:
        return RunsOn(
            self.name, self.location, "remote", "", self.location, False, False, "none", False
        )


class FastFile(TmpfsBackend):
    """A plug-in that joins the default plan between romulus and tmpfs, with its own marker."""

    name = "fastfile"
    profile = Profile(
        marker="D", order=15, instances=(InstancePlan("", role="a plug-in in the default plan"),)
    )


class OtherBase(TmpfsBackend):
    """A plug-in declaring itself the paper's baseline."""

    name = "otherbase"
    profile = Profile(baseline=True)


@pytest.fixture
def plug() -> Iterator[Callable[[type[Backend]], None]]:
    added: list[str] = []

    def add(cls: type[Backend]) -> None:
        register_backend(cls.name, cls)
        added.append(cls.name)
        lab = getattr(cls, "profile", None)
        if lab is not None:  # the plug-in's lab profile, registered beside it
            register_profile(cls.name, lab)

    yield add
    for name in added:
        BACKENDS.unregister(name)
        PROFILES.pop(name, None)


def test_builtins_declare_their_facts() -> None:
    assert [n for n in default_backends() if n in FOUR] == list(FOUR)
    markers = {n: profile(n).marker for n in FOUR}
    assert markers == {"romulus": "o", "tmpfs": "s", "dax": "^", "ssd": "v"}
    assert [n for n in BUILTIN if profile(n).baseline] == ["ssd"]
    for n in FOUR:
        cls = backend_class(n)
        assert cls.ranged_read and cls.locality == "local"
        assert fio_root(n) == cls.default_root
    # the storage contract carries no lab fact
    for attr in ("plot_marker", "baseline", "bench_order", "bench_instances", "fio_facts"):
        assert not hasattr(Backend, attr), attr
    assert backend_class("tmpfs").durability_levels == ("process-crash",)
    assert backend_class("romulus").creation_options(10 << 20, 16 << 20)["size_hint"] > 26 << 20
    assert backend_class("ssd").creation_options(10 << 20, 16 << 20) == {}


def _mount(fs: str, device: str, options: str = "rw") -> MountInfo:
    return MountInfo("/m", fs, device, options)


def test_fio_facts_and_engines_are_the_profiles() -> None:
    ram, disk, dax = (
        _mount("tmpfs", "tmpfs"),
        _mount("ext4", "/dev/sda1"),
        _mount("ext4", "/dev/pmem0", "rw,dax"),
    )

    def facts(n: str, engine: str, m: MountInfo) -> tuple[bool, list[str]]:
        return profile(n).fio_facts(backend_class(n), engine, m)

    assert facts("ssd", "sync", ram) == (True, ["not a disk: tmpfs is RAM-backed"])
    assert facts("ssd", "sync", disk) == (False, [])
    assert facts("tmpfs", "sync", disk) == (True, ["not RAM-backed: ext4 on /dev/sda1"])
    assert facts("dax", "sync", dax) == (False, ["DAX mount: ext4 on /dev/pmem0"])
    assert facts("dax", "sync", disk)[0] is True
    assert facts("romulus", "libpmem", dax) == (
        False,
        ["real PM: libpmem engine on DAX ext4 on /dev/pmem0"],
    )
    emulated, notes = facts("romulus", "sync", ram)
    assert emulated and notes[0].startswith("PM emulated: sync engine on tmpfs")
    romulus = profile("romulus")
    assert romulus.fio_engine("auto", dax, ["sync", "libpmem"]) == ("libpmem", {})
    assert romulus.fio_engine("auto", dax, ["sync"]) == (None, {})
    assert romulus.fio_engine("libpmem", ram, None) == ("libpmem", {"PMEM_IS_PMEM_FORCE": "1"})
    assert profile("ssd").fio_engine("libpmem", dax, None) == (None, {})


def test_a_remote_backend_fits_with_no_change_elsewhere(
    plug: Callable[[type[Backend]], None],
) -> None:
    plug(RemoteStub)
    assert "remotestub" in all_backend_names() and "remotestub" not in default_backends()
    assert "remotestub" not in {p.name for p in default_plan()}
    assert all(b.backend != "remotestub" for t in plan_targets() for b in t.backends)
    with pytest.raises(ConfigError, match="not file-backed"):
        plan_targets(["remotestub"])
    assert _style([{"backend": "remotestub"}], "remotestub")["marker"] == "x"
    assert RemoteStub.creation_options(1 << 20, 1 << 20) == {}

    with open_backend("remotestub:server-1") as b:
        store = MirrorStore(b, make_engine(KEY), bytes(32 * [7]))
        big = np.random.default_rng(0).random(1 << 18, dtype=np.float32)
        recs = [Record(99, "weights", big), *model_records(2)]
        store.save(recs, version=3, iteration=7)
        got = store.load()
        assert got is not None and got.info.version == 3
        for r in recs:
            assert np.array_equal(got.arrays[(r.layer, r.name)], r.array)
        info = store.peek()
        assert info is not None and info.iteration == 7

        # staged memory is reused: bytes no view covered are zero, never an earlier blob's
        with b.begin_write("z", 4096) as txn:
            txn.view(0, 4096)[:] = b"\xff" * 4096
            txn.commit()
        with b.begin_write("z", 100) as txn:
            txn.view(10, 10)[:] = b"x" * 10
            txn.commit()
        assert SERVERS["server-1"]["z"] == bytes(10) + b"x" * 10 + bytes(80)
        with b.begin_write("z", 3) as txn:
            txn.view(0, 3)[:] = b"new"
            txn.abort()
        blob = b.read("z", 10, 5)
        assert blob is not None and bytes(blob.data) == b"xxxxx" and blob.size == 100


def test_a_plugin_joins_the_default_plan_and_plots(
    plug: Callable[[type[Backend]], None],
) -> None:
    plug(FastFile)
    assert [p.label for p in default_plan()] == [
        "romulus",
        "fastfile",
        "tmpfs",
        "romulus?mode=msync",
        "dax",
        "ssd",
        "romulus?device=optane-1dimm",
        "redis",
        "redis@disk",
    ]
    assert _style([{"backend": "fastfile"}], "fastfile")["marker"] == "D"
    assert _style([{"backend": "gone-elsewhere"}], "x")["marker"] == "x"


def test_the_default_plan_has_redis_at_both_durability_levels() -> None:
    """A private server with its AOF in RAM (process-crash) and one with its AOF on the disk
    (power-fail, appendfsync always), under distinct labels that say where; whether redis-server
    really reports those levels is tests/system/test_bench_redis_durability.py's."""
    redis = [p for p in default_plan() if p.name == "redis"]
    assert [(p.label, p.root_kind()) for p in redis] == [("redis", "shm"), ("redis@disk", "disk")]
    assert all(p.optional and p.spec is None for p in redis)  # no redis-server: "not run"
    assert "process-crash" in redis[0].role and "in RAM" in redis[0].role
    assert "power-fail" in redis[1].role and "on the disk" in redis[1].role
    assert all("appendfsync always" in p.role for p in redis)
    assert len({p.label for p in default_plan()}) == len(default_plan())


def _row(backend: str, save: float) -> dict[str, Any]:
    return {
        "instance": backend,
        "backend": backend,
        "model_mb": 1,
        "durability": "power-fail",
        "save_s": save,
        "restore_s": save,
        "emulated": False,
        "byte_addressable": False,
    }


def test_the_baseline_is_a_profile_fact(plug: Callable[[type[Backend]], None]) -> None:
    plug(OtherBase)
    rows = add_speedups([_row("tmpfs", 0.01), _row("otherbase", 0.04)])
    assert rows[0]["speedup_save_vs_ssd"] == pytest.approx(4.0)
    rows = add_speedups([_row("tmpfs", 0.01), _row("ssd", 0.02), _row("nowhere", 0.04)])
    assert rows[0]["speedup_save_vs_ssd"] == pytest.approx(2.0)
    assert add_speedups([_row("tmpfs", 0.01)])[0]["speedup_save_vs_ssd"] is None


def test_the_session_asks_the_class_for_creation_options(tmp_path: Any) -> None:
    from plinius.nn import load_model
    from plinius.session import sizing

    net = load_model("tiny")
    mirror = sum(a.nbytes for _, _, a in net.mirror_buffers())
    assert sizing(f"ssd:{tmp_path}/s", mirror, 1 << 20) == {}
    sized = sizing(f"romulus:{tmp_path}/p.pool", mirror, 1 << 20)
    assert set(sized) == {"size_hint"} and int(sized["size_hint"]) >= 4 << 20
