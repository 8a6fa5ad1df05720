"""Peers (torch.save, safetensors, torch.save + AES-GCM) and limits (memcpy, raw AES-GCM)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from plinius.core.crypto import make_engine
from plinius.core.errors import IntegrityError, MissingExtraError
from plinius.lab.bench.contenders import Contender, run_rounds
from plinius.lab.bench.limits import cores, limit_contenders
from plinius.lab.bench.peers import (
    cold_restore_check,
    drop_cache,
    peer_contenders,
    peers_unavailable,
    resident_fraction,
)
from plinius.lab.bench.workloads import make_arrays, workload_specs

TORCH_REASON = "torch==2.13.0 is installed only in the Python 3.11 envs"
KEY = bytes(range(16))


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


# --- peers: not run ---------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["torch", "safetensors"])
def test_peers_say_not_run_when_a_dependency_is_missing(
    module: str, monkeypatch: pytest.MonkeyPatch, shm_dir: Path
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    reason = peers_unavailable()
    assert reason is not None
    assert reason.startswith("not run") and module in reason
    assert "pip install 'plinius[bench]'" in reason
    with pytest.raises(MissingExtraError, match="plinius\\[bench\\]"):
        peer_contenders(_arrays(), "tiny", {"tmpfs": shm_dir}, make_engine(KEY))
    assert list(shm_dir.iterdir()) == []


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


def _by_name(contenders: list[Contender]) -> dict[str, Contender]:
    return {c.name: c for c in contenders}


def test_peers_round_trip_on_tmpfs_and_disk(shm_dir: Path, disk_dir: Path) -> None:
    pytest.importorskip("torch", reason=TORCH_REASON)
    pytest.importorskip("safetensors", reason=TORCH_REASON)
    assert peers_unavailable() is None
    arrays = _arrays()
    engine = make_engine(KEY)
    dirs = {"tmpfs": shm_dir, "ssd": disk_dir}
    contenders = peer_contenders(arrays, "tiny", dirs, engine, verify=True)
    by_name = _by_name(contenders)
    kinds = ["torch.save", "safetensors", "torch.save+aes-gcm"]
    assert list(by_name) == [f"{k} ({label})" for label in dirs for k in kinds]
    cold_on_disk = cold_restore_check(disk_dir) is None
    for c in contenders:
        on_disk = c.name.endswith("(ssd)")
        assert ("restore_cold" in c.ops) == (on_disk and cold_on_disk)
        assert c.ops[:2] == ("save", "restore")
        assert ("restore_copy_" in c.ops) == c.name.startswith("safetensors")
        assert c.facts["torch"] and c.facts["safetensors"] and c.facts["dir"]
    assert by_name["torch.save+aes-gcm (tmpfs)"].facts["engine"] == engine.name
    st = by_name["safetensors (ssd)"]
    st_dest = st.run.__self__.dest  # type: ignore[attr-defined]

    samples = run_rounds(contenders, rounds=2)
    for s in samples:
        assert not s.errors, (s.contender.name, s.errors)
        assert set(s.seconds) == set(s.contender.ops)
        assert all(len(v) == 2 for v in s.seconds.values())
        assert s.contender.nbytes == sum(a.nbytes for _, a in arrays)
    # the last restore op materialised the data into the existing arrays
    for (name, a), (dname, d) in zip(arrays, st_dest, strict=True):
        assert name == dname and np.array_equal(a, d)
    assert list(shm_dir.iterdir()) == [] and list(disk_dir.iterdir()) == []  # closed: removed
    if cold_on_disk:
        assert st.facts["cold_resident_max"] <= 0.02


def test_torch_load_restores_the_saved_tensors(shm_dir: Path) -> None:
    pytest.importorskip("torch", reason=TORCH_REASON)
    arrays = _arrays()
    contenders = peer_contenders(arrays, "tiny", {"tmpfs": shm_dir}, make_engine(KEY), verify=True)
    for c in contenders:
        if c.name.startswith("safetensors"):
            continue
        c.run("save")
        c.run("restore")
        loaded = c.run.__self__.loaded  # type: ignore[attr-defined]
        assert list(loaded) == [n for n, _ in arrays]
        for name, a in arrays:
            assert np.array_equal(loaded[name].numpy(), a), (c.name, name)
        c.close()
    assert list(shm_dir.iterdir()) == []


@pytest.mark.parametrize("kind", ["torch.save", "safetensors", "torch.save+aes-gcm"])
def test_peer_check_catches_a_restore_that_differs(shm_dir: Path, kind: str) -> None:
    pytest.importorskip("torch", reason=TORCH_REASON)
    arrays = _arrays()
    contenders = peer_contenders(arrays, "tiny", {"tmpfs": shm_dir}, make_engine(KEY), verify=True)
    c = _by_name(contenders)[f"{kind} (tmpfs)"]
    try:
        c.run("save")
        c.run("restore")
        arrays[0][1].reshape(-1)[0] += 1  # the source moved on after the save
        with pytest.raises(IntegrityError):
            c.run("restore")
    finally:
        for x in contenders:
            x.close()


def test_tampered_torch_save_aes_file_fails_to_open(shm_dir: Path) -> None:
    pytest.importorskip("torch", reason=TORCH_REASON)
    contenders = peer_contenders(_arrays(), "tiny", {"tmpfs": shm_dir}, make_engine(KEY))
    c = _by_name(contenders)["torch.save+aes-gcm (tmpfs)"]
    try:
        c.run("save")
        (path,) = [p for p in shm_dir.iterdir() if p.name.endswith(".pt.aes")]
        raw = bytearray(path.read_bytes())
        raw[100] ^= 1
        path.write_bytes(bytes(raw))
        with pytest.raises(IntegrityError):
            c.run("restore")
    finally:
        for x in contenders:
            x.close()


def test_peers_refuse_a_missing_directory(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason=TORCH_REASON)
    from plinius.core.errors import BackendError

    with pytest.raises(BackendError, match="does not exist"):
        peer_contenders(_arrays(), "tiny", {"ssd": tmp_path / "nope"}, make_engine(KEY))
