"""The optional PM device model: waits are floors derived from the model, never speed targets.

Every timing assertion here is a LOWER bound: the engine busy-waits on the monotonic clock until
the modelled time has passed, so "at least bytes / bandwidth" holds on any machine, however
loaded. Nothing asserts how fast anything is.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from plinius.backends import open_backend
from plinius.backends.romulus import DEVICES, DeviceModel, Pool, RomulusBackend
from plinius.backends.romulus.device import ENV, NOTE, device_model
from plinius.core.errors import ConfigError

MIB = 1 << 20


@contextmanager
def _romulus(spec: str) -> Iterator[RomulusBackend]:
    b = open_backend(spec)
    assert isinstance(b, RomulusBackend)
    with b:
        yield b


def _save(b: RomulusBackend, key: str, payload: bytes) -> float:
    """Seconds from begin_write to the end of commit (fence 1 .. fence 4 inside)."""
    t0 = time.perf_counter()
    txn = b.begin_write(key, len(payload))
    txn.view(0, len(payload))[:] = payload
    txn.commit()
    return time.perf_counter() - t0


def test_the_documented_parameters() -> None:
    assert set(DEVICES) == {"none", "optane-1dimm", "optane-2dimm", "optane-4dimm", "optane-6dimm"}
    one = device_model("optane-1dimm")
    assert one is not None
    assert (one.dimms, one.write_gbps, one.read_gbps) == (1, 2.3, 6.6)
    assert (one.read_latency_ns, one.fence_ns) == (305, 90)
    six = device_model("optane-6dimm")
    assert six is not None and six.dimms == 6
    assert six.write_gbps == pytest.approx(6 * 2.3) and six.read_gbps == pytest.approx(6 * 6.6)
    assert six.read_latency_ns == one.read_latency_ns  # interleaving scales bandwidth only
    assert device_model("none") is None and device_model("") is None
    assert one.as_dict()["note"] == "a model, not a measurement of PM hardware" == NOTE


def test_save_under_optane_1dimm_takes_at_least_the_modelled_write_time(shm_dir: Path) -> None:
    n = 16 * MIB
    payload = os.urandom(MIB) * 16
    with _romulus(f"romulus:{shm_dir / 'p.pool'}?size=48M&device=optane-1dimm") as b:
        _save(b, "m", payload)  # first version: allocates
        before = b.pool.stats()
        elapsed = _save(b, "m", payload)  # rewritten in place: every line logged
        st = b.pool.stats()
    # the commit flushes the n logged bytes of main (fences 1 -> 2) and streams them to back
    # (fences 3 -> 4): each leg is held to n / 2.3 GB/s by the model's busy-wait. With
    # background commit the second leg runs on the copier thread, after the commit returns
    floor = n / 2.3e9
    assert elapsed >= floor
    assert st.bg_copies > before.bg_copies and elapsed + st.last_bg_copy_s >= 2 * floor
    charged = st.dev_write_bytes - before.dev_write_bytes
    assert 2 * n <= charged <= 2 * n + 64 * 1024  # the data twice, plus header/metadata lines
    assert st.dev_write_wait_s > 0


def test_without_a_model_nothing_is_charged_or_waited(shm_dir: Path) -> None:
    with _romulus(f"romulus:{shm_dir / 'p.pool'}?size=8M&device=none") as b:
        _save(b, "m", bytes(MIB))
        assert b.read("m") is not None
        st = b.pool.stats()
        assert b.pool.device is None
    assert (st.dev_write_bytes, st.dev_write_wait_s, st.dev_read_bytes) == (0, 0.0, 0)


def test_every_fence_costs_the_modelled_drain_latency(shm_dir: Path) -> None:
    slow_fence = DeviceModel("test-slow-fence", 1, 100.0, 100.0, 5_000_000, 0)  # 5 ms per fence
    with Pool(shm_dir / "p.pool", 4 * MIB, device=slow_fence) as pool:
        t0 = time.perf_counter()
        with pool.transaction():
            pool.writable(pool.stats().meta_size, 8)[:] = (7).to_bytes(8, "little")
        elapsed = time.perf_counter() - t0
        assert pool.stats().last_fences == 4
    assert elapsed >= 4 * 5e-3


def test_a_restore_read_costs_at_least_the_modelled_read_time(shm_dir: Path) -> None:
    n = 8 * MIB
    with _romulus(f"romulus:{shm_dir / 'p.pool'}?size=24M&device=optane-1dimm") as b:
        _save(b, "m", bytes(n))
        t0 = time.perf_counter()
        blob = b.read("m")
        elapsed = time.perf_counter() - t0
        assert blob is not None and blob.data.nbytes == n
        assert blob.stats.read_s >= n / 6.6e9 + 305e-9
        st = b.pool.stats()
    assert elapsed >= n / 6.6e9 + 305e-9
    assert st.dev_read_bytes == n


def test_unknown_device_is_a_clear_error_naming_the_valid_ones(
    shm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = shm_dir / "p.pool"
    valid = "none, optane-1dimm, optane-2dimm, optane-4dimm, optane-6dimm"
    with pytest.raises(ConfigError, match=f"device='optane-3dimm' is not a known.*{valid}"):
        open_backend(f"romulus:{pool}?size=4M&device=optane-3dimm")
    monkeypatch.setenv(ENV, "nvdimm")
    with pytest.raises(ConfigError, match=f"{ENV}='nvdimm' is not a known.*{valid}"):
        open_backend(f"romulus:{pool}?size=4M")
    assert not pool.exists()  # refused before anything was created
    for bad in (0.0, float("nan"), -1.0):
        with pytest.raises(ConfigError, match="write_gbps"):
            DeviceModel("x", 1, bad, 1.0, 0, 0)


def test_env_override_and_explicit_option(shm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "optane-2dimm")
    with _romulus(f"romulus:{shm_dir / 'a.pool'}?size=4M") as b:
        assert b.pool.device is not None and b.pool.device.name == "optane-2dimm"
    # an explicit option wins over the environment, "none" included
    with _romulus(f"romulus:{shm_dir / 'a.pool'}?device=none") as b:
        assert b.pool.device is None
    with _romulus(f"romulus:{shm_dir / 'a.pool'}?device=optane-4dimm") as b:
        assert b.pool.device is not None and b.pool.device.write_gbps == pytest.approx(9.2)


def test_describe_reports_the_model_as_a_model(shm_dir: Path) -> None:
    with _romulus(f"romulus:{shm_dir / 'p.pool'}?size=4M&device=optane-6dimm") as b:
        info = b.describe()
    model = info.extra["pm_device_model"]
    assert model["name"] == "optane-6dimm" and model["dimms"] == 6
    assert model["write_gbps"] == pytest.approx(13.8) and model["read_gbps"] == pytest.approx(39.6)
    assert model["fence_ns"] == 90 and model["read_latency_ns"] == 305
    assert model["note"] == "a model, not a measurement of PM hardware"
    assert "Izraelevitz" in model["source"] and "map()" in model["not_modelled"]
    assert any("a model, not a measurement of PM hardware" in n for n in info.notes)
    assert info.emulated  # a model does not make the pool real PM
    with _romulus(f"romulus:{shm_dir / 'q.pool'}?size=4M") as b:
        assert b.describe().extra["pm_device_model"] is None


def test_a_pool_saved_under_a_model_reopens_without_one(shm_dir: Path) -> None:
    """The model only adds waiting: the bytes are the same as at DRAM speed."""
    spec = f"romulus:{shm_dir / 'p.pool'}?size=8M"
    payload = os.urandom(3 * MIB + 5)
    with _romulus(spec + "&device=optane-1dimm") as b:
        _save(b, "m", payload)
    with _romulus(spec + "&device=none") as b:
        blob = b.read("m")
        assert blob is not None and bytes(blob.data) == payload
