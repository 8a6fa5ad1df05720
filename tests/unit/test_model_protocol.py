"""The model protocol: the enclave mirrors any model that implements it, not only ``nn.Network``."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from plinius.backends.base import Backend
from plinius.backends.registry import open_backend
from plinius.core.crypto import generate_key, key_id, make_engine
from plinius.core.errors import ModelMismatchError
from plinius.core.memory import CACHE_LINE, PAGE, aligned_empty
from plinius.core.model import Mirrorable, NamedBuffer, Trainable, pack_into, packed_offsets
from plinius.enclave.counter import MirrorCounters
from plinius.enclave.platform import SimulatedPlatform
from plinius.enclave.trusted import Enclave
from plinius.format.mirror import MirrorStore
from plinius.nn import Network, load_model
from plinius.session.owner import provision


class Toy:
    """The smallest trainable model: two separate arrays (no arena), a step count and an RNG."""

    batch, inputs, outputs = 2, 4, 2

    def __init__(self, width: int = 1024, seed: int = 0) -> None:
        self.w = np.zeros(width, np.float32)  # 4 KiB at the default width: page-aligned
        self.m = np.zeros(7, np.float64)
        self.steps = 0
        self.avg_loss = -1.0
        self.rng = np.random.Generator(np.random.PCG64(seed))

    @property
    def iteration(self) -> int:
        return self.steps

    def fingerprint(self) -> bytes:
        return hashlib.sha256(f"toy {self.w.shape} {self.m.shape}".encode()).digest()

    def mirror_buffers(self) -> list[NamedBuffer]:
        return [(0, "w", self.w), (1, "m", self.m)]

    def training_state(self) -> dict[str, Any]:
        return {"steps": self.steps, "avg": self.avg_loss, "rng": self.rng.bit_generator.state}

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.steps, self.avg_loss = int(state["steps"]), float(state["avg"])
        self.rng.bit_generator.state = state["rng"]

    def snapshot_nbytes(self) -> int:
        return packed_offsets(self.mirror_buffers())[1]

    def snapshot_into(self, out: np.ndarray) -> list[NamedBuffer]:
        return pack_into(self.mirror_buffers(), out)

    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        self.w += self.rng.standard_normal(self.w.shape, np.float32)
        self.m += self.rng.random(self.m.shape)
        self.steps += 1
        self.avg_loss = float(self.m.sum())
        return self.avg_loss

    def step(self) -> None:
        self.train_step(np.empty((0, self.inputs)), np.empty((0, self.outputs)))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.zeros((x.shape[0], self.outputs), np.float32)


class NoSnapshot:
    """Buffers and state, but no snapshot facility: not mirrorable."""

    iteration = 0

    def fingerprint(self) -> bytes:
        return bytes(32)

    def mirror_buffers(self) -> list[NamedBuffer]:
        return []

    def training_state(self) -> dict[str, Any]:
        return {}

    def load_training_state(self, state: dict[str, Any]) -> None:
        pass


def _state(model: Mirrorable) -> tuple[list[tuple[int, str, bytes]], dict[str, Any]]:
    return [(la, n, a.tobytes()) for la, n, a in model.mirror_buffers()], model.training_state()


@pytest.fixture
def world(tmp_path: Path, shm_dir: Path) -> Iterator[tuple[SimulatedPlatform, Backend, bytes]]:
    platform = SimulatedPlatform(tmp_path / "platform", state_dir=tmp_path / "state")
    with open_backend(f"tmpfs:{shm_dir}") as backend:
        yield platform, backend, generate_key()


def _enclave(world: tuple[SimulatedPlatform, Backend, bytes], model: Trainable) -> Enclave:
    platform, backend, key = world
    enclave = Enclave(platform, model, "toy", "", 0)
    if not enclave.ecall_unseal_key(key_id(key)):
        provision(enclave, key, platform.quoting_public_pem, model.fingerprint())
    enclave.ecall_attach_mirror(backend, MirrorCounters(platform))
    return enclave


def test_network_and_toy_satisfy_the_protocol() -> None:
    net = load_model("tiny")
    assert isinstance(net, Trainable) and isinstance(net, Mirrorable)
    assert isinstance(Toy(), Trainable)
    assert not isinstance(NoSnapshot(), Mirrorable)
    assert not isinstance(np.zeros(3), Mirrorable)


def test_network_buffers_are_parameters_then_momentum() -> None:
    net = load_model("tiny")
    want = net.param_buffers() + net.optimizer_buffers()
    got = net.mirror_buffers()
    assert [(la, n) for la, n, _ in got] == [(la, n) for la, n, _ in want]
    assert all(a is b for (_, _, a), (_, _, b) in zip(got, want, strict=True))


@pytest.mark.parametrize("make", [lambda: load_model("tiny"), Toy], ids=["network", "toy"])
def test_snapshot_equals_the_buffers_and_is_a_copy(make: Any) -> None:
    model: Mirrorable = make()
    rng = np.random.default_rng(1)
    for _, _, arr in model.mirror_buffers():
        arr[...] = rng.standard_normal(arr.shape)
    out = aligned_empty(model.snapshot_nbytes())
    snap = model.snapshot_into(out)
    bufs = model.mirror_buffers()
    assert [(la, n, a.dtype, a.shape) for la, n, a in snap] == [
        (la, n, a.dtype, a.shape) for la, n, a in bufs
    ]
    for (_, name, s), (_, _, a) in zip(snap, bufs, strict=True):
        assert s.tobytes() == a.tobytes(), name
        assert np.shares_memory(s, out) and not np.shares_memory(s, a)
        assert s.flags.c_contiguous
        assert s.ctypes.data % (PAGE if s.nbytes >= PAGE else CACHE_LINE) == 0
    before = [s.copy() for _, _, s in snap]
    for _, _, arr in bufs:
        arr += 1  # training goes on while the snapshot is sealed
    assert all(np.array_equal(b, s) for b, (_, _, s) in zip(before, snap, strict=True))
    with pytest.raises(ValueError, match="needs"):
        model.snapshot_into(aligned_empty(model.snapshot_nbytes() - 1))


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_toy_model_round_trips_through_the_enclave(
    world: tuple[SimulatedPlatform, Backend, bytes], asynchronous: bool
) -> None:
    toy = Toy(seed=5)
    enclave = _enclave(world, toy)
    enclave.ecall_set_async(asynchronous)
    for _ in range(3):
        toy.step()
    saved = _state(toy)
    digest = enclave.ecall_weights_digest()
    enclave.ecall_mirror()
    toy.step()  # the next iteration runs while an asynchronous mirror is sealed
    enclave.ecall_close()
    assert _state(toy) != saved

    again = Toy(seed=99)
    restored = _enclave(world, again)
    assert restored.ecall_restore() == 3
    assert _state(again) == saved
    assert restored.ecall_weights_digest() == digest
    twin = Toy()  # the saved state, put back by hand, continues exactly as the restored one
    for (_, _, arr), (_, _, raw) in zip(twin.mirror_buffers(), saved[0], strict=True):
        arr[...] = np.frombuffer(raw, arr.dtype).reshape(arr.shape)
    twin.load_training_state(saved[1])
    again.step()
    twin.step()
    assert _state(again) == _state(twin)


def test_a_mirror_is_refused_by_a_model_with_another_fingerprint(
    world: tuple[SimulatedPlatform, Backend, bytes],
) -> None:
    toy = Toy()
    toy.step()
    enclave = _enclave(world, toy)
    enclave.ecall_mirror()
    enclave.ecall_close()
    other = Toy(width=2048)
    assert other.fingerprint() != toy.fingerprint()
    with pytest.raises(ModelMismatchError, match="belongs to model"):
        _enclave(world, other).ecall_restore()
    assert other.iteration == 0 and not other.w.any()


def test_the_network_mirror_keeps_its_records_and_manifest_keys(
    world: tuple[SimulatedPlatform, Backend, bytes],
) -> None:
    """The protocol changed no byte of the format: records in parameter-then-momentum order,
    Darknet names, and the manifest metadata keys of format 2."""
    _, backend, key = world
    net: Network = load_model("tiny")
    enclave = _enclave(world, net)
    enclave.ecall_set_async(True)
    enclave.ecall_mirror()
    enclave.ecall_close()
    info = MirrorStore(backend, make_engine(key), None).verify()
    assert info is not None
    assert [(e.layer, e.name, e.shape) for e in info.entries] == [
        (la, n, a.shape) for la, n, a in net.param_buffers() + net.optimizer_buffers()
    ]
    assert sorted(info.meta) == [
        "batch",
        "batches_drawn",
        "cfg",
        "data_rng",
        "dataset_id",
        "model",
        "net",
        "seed",
    ]
    assert sorted(info.meta["net"]) == ["avg_loss", "rng", "seen"]
