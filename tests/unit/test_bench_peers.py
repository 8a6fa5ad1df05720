"""Peers (numpy.save, pickle, safetensors through numpy, each plain and sealed with AES-GCM +
fsync by hand; torch.save, safetensors through torch and torch.save + AES-GCM where torch is
installed) and limits (memcpy, raw AES-GCM)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from needs import require

from plinius.backends.fsinfo import mount_of
from plinius.core.crypto import make_engine
from plinius.core.errors import BackendError, IntegrityError, MissingExtraError
from plinius.lab.bench.contenders import Contender, run_rounds
from plinius.lab.bench.limits import cores, limit_contenders
from plinius.lab.bench.peers import (
    KINDS,
    available_kinds,
    cold_restore_check,
    drop_cache,
    not_here,
    peer_contenders,
    peer_unavailable,
    peers_unavailable,
    resident_fraction,
)
from plinius.lab.bench.registry import SuiteOptions, section
from plinius.lab.bench.stats import median_interval
from plinius.lab.bench.targets import targets
from plinius.lab.bench.workloads import make_arrays, workload_specs

KEY = bytes(range(16))
#: what the default install (no torch) runs
NO_TORCH = (
    "numpy.save",
    "numpy.save+aes-gcm+fsync",
    "pickle",
    "pickle+aes-gcm+fsync",
    "safetensors-np",
    "safetensors-np+aes-gcm+fsync",
)
TORCH_KINDS = ("torch.save", "safetensors", "torch.save+aes-gcm")
SEALED = tuple(k for k in KINDS if "aes-gcm" in k)
FSYNCED = (*SEALED, "torch.save", "safetensors")


def _arrays() -> list[tuple[str, np.ndarray]]:
    """About 3 MiB of ResNet-50 tensors and Adam state: big and tiny, float and int64, 0-d."""
    specs = workload_specs("resnet50+adam")
    picked = specs[:12] + [s for s in specs if s.name.startswith("opt.layer1.0.conv2")]
    return make_arrays(picked, seed=3)


@pytest.fixture
def disk_dir(tmp_path: Path) -> Path:
    return tmp_path


# --- limits -----------------------------------------------------------------------------------


def test_limits_run_interleaved_rounds(engine_name: str) -> None:
    engine = make_engine(KEY, engine_name)
    nbytes = (3 << 20) + 4096 + 5  # chunks and slices that do not divide evenly
    contenders = limit_contenders(nbytes, "tiny", engine, verify=True)
    samples = run_rounds(contenders, rounds=2)
    names = [s.contender.name for s in samples]
    if cores() > 1:
        native = [] if engine.parallel else ["aes-gcm (all cores, openssl)"]
        assert names == [
            "memcpy (1 thread)",
            f"memcpy ({cores()} threads)",
            "aes-gcm (1 thread)",
            "aes-gcm (all cores)",
            *native,  # beside a serial engine, the native one on every core
        ]
    else:
        assert names == ["memcpy (1 thread)", "aes-gcm (1 thread)"]
    for s in samples:
        assert not s.errors, s.errors
        assert s.contender.section == "limits" and s.contender.nbytes == nbytes
        assert set(s.seconds) == set(s.contender.ops)
        assert all(len(v) == 2 and min(v) > 0 for v in s.seconds.values())
    aes = {s.contender.name: s.contender.facts for s in samples if "aes" in s.contender.name}
    assert aes["aes-gcm (1 thread)"]["engine"] == engine.name
    assert aes["aes-gcm (1 thread)"]["threads"] == 1
    if cores() > 1:
        all_cores = aes["aes-gcm (all cores)"]
        assert all_cores["threads"] > 1
        assert ("encrypt_many" in all_cores["how"]) == engine.parallel
        if not engine.parallel:
            assert aes["aes-gcm (all cores, openssl)"]["engine"] == "openssl"


def test_limits_copy_and_decrypt_really_move_the_bytes() -> None:
    engine = make_engine(KEY)
    contenders = {c.name: c for c in limit_contenders(1 << 20, "tiny", engine, verify=True)}
    for name, c in contenders.items():
        if name.startswith("memcpy"):
            copier = c.run.__self__  # type: ignore[attr-defined]
            copier.dst[:] = 0
            c.run("copy")
            assert copier.dst.nbytes == 1 << 20 and np.array_equal(copier.src, copier.dst)
            copier.src[-1] ^= 0xFF
            copier.copy = lambda: None  # a copy that moves nothing must be caught
            with pytest.raises(IntegrityError):
                c.run("copy")
    aes = contenders["aes-gcm (1 thread)"]
    aes.run("encrypt")
    aes.run("decrypt")
    runner = aes.run.__self__  # type: ignore[attr-defined]
    runner.src[:8] ^= 0xFF  # the plaintext changed after sealing: the check must notice
    with pytest.raises(IntegrityError):
        aes.run("decrypt")
    for c in contenders.values():
        c.close()


def test_limits_refuse_nothing_to_move() -> None:
    with pytest.raises(ValueError):
        limit_contenders(0, "tiny", make_engine(KEY))


# --- peers: what runs where --------------------------------------------------------------------


@pytest.fixture
def no_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default install: ``import torch`` raises ImportError."""
    monkeypatch.setitem(sys.modules, "torch", None)


def test_the_kinds_are_the_default_install_then_the_torch_peers() -> None:
    assert (*NO_TORCH, *TORCH_KINDS) == KINDS
    assert all(peer_unavailable(k) is None for k in NO_TORCH)  # safetensors: a dependency
    with pytest.raises(ValueError, match="no peer"):
        peer_unavailable("nosuch")


def test_without_torch_the_torch_peers_say_why_and_the_others_run(
    no_torch: None, shm_dir: Path
) -> None:
    for kind in TORCH_KINDS:
        reason = peer_unavailable(kind)
        assert reason is not None and reason.startswith("not run") and "torch" in reason
        assert "pip install 'plinius[bench]'" in reason
    assert peers_unavailable() is None  # the section runs: numpy and pickle need nothing more
    assert available_kinds() == list(NO_TORCH)
    with pytest.raises(MissingExtraError, match="plinius\\[bench\\]"):
        peer_contenders(_arrays(), "tiny", {"tmpfs": shm_dir}, make_engine(KEY), kinds=KINDS)
    assert list(shm_dir.iterdir()) == []


@pytest.mark.parametrize("module", ["safetensors", "safetensors.numpy"])
def test_without_safetensors_its_peers_say_why(
    module: str, monkeypatch: pytest.MonkeyPatch, shm_dir: Path
) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    gone = ["safetensors-np", "safetensors-np+aes-gcm+fsync"]
    if module == "safetensors":
        gone.append("safetensors")  # through torch (its own safetensors.torch)
    for kind in gone:
        reason = peer_unavailable(kind)
        assert reason is not None and reason.startswith("not run") and module in reason
    assert "pip install 'safetensors" in str(peer_unavailable("safetensors-np"))
    built = peer_contenders(_arrays(), "tiny", {"tmpfs": shm_dir}, make_engine(KEY))
    try:
        assert not any(c.id.partition("@")[0] in gone for c in built)
        assert set(gone) <= set(built[0].facts["not_here"])
    finally:
        for c in built:
            c.close()
    with pytest.raises(MissingExtraError, match="safetensors"):
        peer_contenders(
            _arrays(), "tiny", {"tmpfs": shm_dir}, make_engine(KEY), kinds=("safetensors-np",)
        )
    assert list(shm_dir.iterdir()) == []


def test_section_ids_are_the_peers_built_with_and_without_torch(
    monkeypatch: pytest.MonkeyPatch, shm_dir: Path, disk_dir: Path
) -> None:
    engine = make_engine(KEY)
    opts = SuiteOptions(plan=[], sizes=[1.0], repeats=1, engine=engine)
    ids = section("peers").ids
    assert ids is not None
    dirs = {"tmpfs": shm_dir, "ssd": disk_dir}  # the suite's places, in its order

    def built() -> list[str]:
        made = peer_contenders(_arrays(), "tiny", dirs, engine)
        for c in made:
            c.close()
        return [c.id for c in made]

    assert ids(opts) == built() == [f"{k}@{p}" for p in dirs for k in available_kinds()]
    monkeypatch.setitem(sys.modules, "torch", None)
    assert ids(opts) == built() == [f"{k}@{p}" for p in dirs for k in NO_TORCH]
    assert list(shm_dir.iterdir()) == [] and list(disk_dir.iterdir()) == []


# --- page cache -------------------------------------------------------------------------------


def test_tmpfs_offers_no_cold_restore(shm_dir: Path) -> None:
    reason = cold_restore_check(shm_dir)
    assert reason is not None and "resident" in reason
    assert list(shm_dir.iterdir()) == []  # the probe is gone


def test_drop_cache_evicts_where_the_check_says_it_can(disk_dir: Path) -> None:
    f = disk_dir / "blob"
    f.write_bytes(b"x" * (1 << 20))
    f.read_bytes()
    assert resident_fraction(f) == 1.0
    left = drop_cache(f)
    if cold_restore_check(disk_dir) is None:
        assert left <= 0.02
    else:
        assert left > 0.02


# --- peers: save and restore ------------------------------------------------------------------


def _by_id(contenders: list[Contender]) -> dict[str, Contender]:
    return {c.id: c for c in contenders}


def _one(kind: str, directory: Path, **kw: Any) -> Contender:
    require(peer_unavailable(kind), torch=kind in TORCH_KINDS)
    (c,) = peer_contenders(
        kw.pop("arrays", None) or _arrays(),
        "tiny",
        {"tmpfs": directory},
        make_engine(KEY),
        kinds=(kind,),
        **kw,
    )
    return c


def _round_trip(dirs: dict[str, Path], kinds: list[str]) -> None:
    """Every peer in ``kinds`` on every directory: two interleaved rounds, every restore
    checked exact (verify), the facts that say what each ran on, nothing left behind."""
    arrays = _arrays()
    engine = make_engine(KEY)
    contenders = peer_contenders(arrays, "tiny", dirs, engine, verify=True)
    assert [c.id for c in contenders] == [f"{k}@{label}" for label in dirs for k in kinds]
    assert [c.name for c in contenders] == [f"{k} ({label})" for label in dirs for k in kinds]
    missing = [k for k in KINDS if k not in kinds]
    for c in contenders:
        kind, _, label = c.id.partition("@")
        d = dirs[label]
        cold = cold_restore_check(d) is None
        assert ("restore_cold" in c.ops) == cold
        assert c.ops[:2] == ("save", "restore")
        assert ("restore_copy_" in c.ops) == (kind == "safetensors")
        f = c.facts
        assert f["numpy"] and f["dir"] == str(d) and f["label"] == label and f["fs"]
        assert ("safetensors" in f) == ("safetensors" in kind)
        assert ("torch" in f) == (kind in TORCH_KINDS)
        assert (f.get("engine") == engine.name) == (kind in SEALED)
        assert f["fsync"] == (kind in FSYNCED)
        volatile = mount_of(d).volatile
        want = "power-fail" if f["fsync"] and not volatile else "process-crash"
        assert f["durability"] == want, c.id
        assert f["durability_note"] and "torn file" in f["crash_mid_save"]
        assert sorted(f.get("not_here", {})) == sorted(missing)
    dests = {c.id: c.run.__self__.dest for c in contenders}  # type: ignore[attr-defined]

    samples = run_rounds(contenders, rounds=2)
    for s in samples:
        assert not s.errors, (s.contender.id, s.errors)
        assert set(s.seconds) == set(s.contender.ops)
        assert all(len(v) == 2 and min(v) > 0 for v in s.seconds.values())
        assert s.contender.nbytes == sum(a.nbytes for _, a in arrays)
    # the safetensors restores materialised the data into the existing arrays
    for ident, dest in dests.items():
        assert (dest is not None) == ("safetensors" in ident)
        if dest is not None:
            for (name, a), (dname, got) in zip(arrays, dest, strict=True):
                assert name == dname and np.array_equal(a, got)
    for d in dirs.values():
        assert list(d.iterdir()) == []  # closed: removed
    if any(cold_restore_check(d) is None for d in dirs.values()):
        worst = [c.facts["cold_resident_max"] for c in contenders if "restore_cold" in c.ops]
        assert worst and max(worst) <= 0.02


def test_default_install_peers_round_trip_on_tmpfs_and_disk(
    no_torch: None, shm_dir: Path, disk_dir: Path
) -> None:
    _round_trip({"tmpfs": shm_dir, "ssd": disk_dir}, list(NO_TORCH))


def test_every_peer_round_trips_on_tmpfs_and_disk(shm_dir: Path, disk_dir: Path) -> None:
    require("; ".join(f"{k}: {why}" for k, why in not_here().items()) or None, torch=True)
    assert available_kinds() == list(KINDS)
    _round_trip({"tmpfs": shm_dir, "ssd": disk_dir}, list(KINDS))


@pytest.mark.parametrize("kind", KINDS)
def test_peer_check_catches_a_restore_that_differs(shm_dir: Path, kind: str) -> None:
    arrays = _arrays()
    c = _one(kind, shm_dir, arrays=arrays, verify=True)
    try:
        c.run("save")
        c.run("restore")
        arrays[0][1].reshape(-1)[0] += 1  # the source moved on after the save
        with pytest.raises(IntegrityError):
            c.run("restore")
    finally:
        c.close()
    assert list(shm_dir.iterdir()) == []


@pytest.mark.parametrize("kind", ["numpy.save", "pickle+aes-gcm+fsync", "safetensors-np"])
def test_a_restore_that_restores_nothing_fails_the_check(shm_dir: Path, kind: str) -> None:
    c = _one(kind, shm_dir, verify=True)
    peer = c.run.__self__  # type: ignore[attr-defined]
    try:
        c.run("save")
        c.run("restore")
        peer.restore = lambda: None  # new arrays never returned, existing ones never written
        with pytest.raises(IntegrityError):
            c.run("restore")
    finally:
        c.close()


@pytest.mark.parametrize("kind", SEALED)
def test_a_tampered_sealed_file_fails_to_open(shm_dir: Path, kind: str) -> None:
    c = _one(kind, shm_dir)
    try:
        c.run("save")
        (path,) = [p for p in shm_dir.iterdir() if p.name.endswith(".aes")]
        raw = bytearray(path.read_bytes())
        raw[100] ^= 1
        path.write_bytes(bytes(raw))
        with pytest.raises(IntegrityError):
            c.run("restore")
        path.write_bytes(bytes(raw[:20]))  # shorter than its IV and tag
        with pytest.raises(IntegrityError):
            c.run("restore")
    finally:
        c.close()
    assert list(shm_dir.iterdir()) == []


def test_peers_refuse_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="does not exist"):
        peer_contenders(_arrays(), "tiny", {"ssd": tmp_path / "nope"}, make_engine(KEY))


def test_peers_refuse_an_unknown_kind(shm_dir: Path) -> None:
    with pytest.raises(ValueError, match="no peer"):
        peer_contenders(_arrays(), "tiny", {"tmpfs": shm_dir}, make_engine(KEY), kinds=("x",))


# --- peers: targets ---------------------------------------------------------------------------


def _samples(center: float, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(center * (1 + 0.05 * rng.standard_normal(7)))


def _peer_doc(peers: dict[str, tuple[float, dict[str, Any]]]) -> dict[str, Any]:
    """A run's document at size-64: romulus (RAM) and romulus?mode=msync (the disk) saving in
    10 ms, and ``peers`` (id -> save seconds, facts)."""
    nbytes = 64 << 20
    rom = {
        "instance": "romulus",
        "durability": "process-crash",
        "model": "size-64",
        "bytes": nbytes,
        "samples": {"save": _samples(0.010, 1), "restore": _samples(0.008, 2)},
        "role": "",
    }
    contenders = []
    for i, (ident, (save, facts)) in enumerate(peers.items()):
        ops = {"save": _samples(save, 3 + i), "restore": _samples(save / 2, 9 + i)}
        contenders.append(
            {
                "section": "peers",
                "id": f"peers:{ident}",
                "name": ident.replace("@", " (") + ")",
                "workload": "size-64",
                "nbytes": nbytes,
                "ops": {
                    op: {"seconds": s, "interval": median_interval(s).as_json()}
                    for op, s in ops.items()
                },
                "facts": facts,
                "errors": [],
            }
        )
    msync = {**rom, "instance": "romulus?mode=msync", "durability": "power-fail"}
    return {
        "workloads": [{"workload": "size-64", "full": True, "not_run": {}}],
        "results": [rom, msync],
        "contenders": contenders,
    }


def test_numpy_aes_fsync_target_is_reported_and_torch_targets_say_why_not() -> None:
    why_torch = "not run: torch (No module named 'torch') not importable; pip install ..."
    facts = {"durability": "power-fail", "not_here": dict.fromkeys(TORCH_KINDS, why_torch)}
    doc = _peer_doc(
        {
            "numpy.save+aes-gcm+fsync@ssd": (0.2, facts),
            "numpy.save@tmpfs": (0.02, {**facts, "durability": "process-crash"}),
        }
    )
    rows = {t["id"]: t for t in targets(doc)}
    numpy_aes = rows["save_vs_numpy_aes_fsync_ssd"]
    assert numpy_aes["verdict"] == "reported" and numpy_aes["bar"] == "no target"
    assert 15 < numpy_aes["measured"] < 25  # 200 ms against 10 ms
    # against the romulus instance of the peer's own durability: never across levels
    assert numpy_aes["sides"] == "romulus?mode=msync save vs numpy.save+aes-gcm+fsync (ssd) save"
    assert numpy_aes["durability"] == "power-fail vs power-fail"
    # the existing targets keep their meaning: against the torch peers, here not run and why
    for key, ident in (
        ("save_vs_safetensors_tmpfs", "safetensors@tmpfs"),
        ("save_vs_torch_aes_fsync_ssd", "torch.save+aes-gcm@ssd"),
        ("restore_vs_safetensors_tmpfs", "safetensors@tmpfs"),
    ):
        assert rows[key]["verdict"] == "not run"
        assert rows[key]["why"] == f"{ident} {why_torch}"


def test_torch_targets_still_read_the_torch_peers() -> None:
    doc = _peer_doc(
        {
            "safetensors@tmpfs": (0.03, {"durability": "process-crash"}),
            "torch.save+aes-gcm@ssd": (0.2, {"durability": "power-fail"}),
            "safetensors-np@tmpfs": (0.0001, {"durability": "process-crash"}),  # never taken
        }
    )
    rows = {t["id"]: t for t in targets(doc)}
    assert rows["save_vs_safetensors_tmpfs"]["verdict"] == "met"  # 3× against 2
    assert "safetensors (tmpfs) save" in rows["save_vs_safetensors_tmpfs"]["sides"]
    assert rows["save_vs_torch_aes_fsync_ssd"]["verdict"] == "met"  # 20× against 15
    assert rows["save_vs_numpy_aes_fsync_ssd"]["verdict"] == "not run"
