"""plinius.torch: PyTorch training state through the enclave's mirrors (round trips, safety)."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="torch==2.13.0 is installed only in the Python 3.11 envs"
)

from cli_runner import run_cli  # noqa: E402

from plinius.core.crypto import generate_key, write_key_file  # noqa: E402
from plinius.core.errors import (  # noqa: E402
    ConfigError,
    IntegrityError,
    ModelMismatchError,
    RollbackError,
)
from plinius.core.model import Mirrorable  # noqa: E402
from plinius.torch import Staging, TorchMirror, TorchState  # noqa: E402


@pytest.fixture
def key(tmp_path: Path) -> str:
    path = tmp_path / "owner.key"
    write_key_file(path, generate_key())
    return str(path)


Module: Any = torch.nn.Module  # torch is untyped for mypy (pyproject)


class Mixed(Module):
    """Tied weights, a bfloat16 parameter, an int64 buffer and a transposed (non-contiguous)
    buffer: every way a tensor can be awkward to seal in place."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(12, 6)
        self.hidden = torch.nn.Linear(6, 6)
        self.out = torch.nn.Linear(6, 12, bias=False)
        self.out.weight = self.emb.weight  # tied
        self.scale = torch.nn.Parameter(torch.ones(6, dtype=torch.bfloat16))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        self.register_buffer("proj", torch.randn(6, 4).t())  # non-contiguous
        assert not self.proj.is_contiguous()

    def forward(self, x: Any) -> Any:
        self.count += 1
        h = torch.tanh(self.hidden(self.emb(x)) * self.scale.float())
        self.proj.mul_(0.99)  # a buffer that changes in place, through its strides
        return self.out(h) + self.proj.sum()


def make(opt: str, seed: int = 0) -> tuple[Any, Any, Any]:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    model = Mixed()
    if opt == "sgd":
        o = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    else:
        o = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.95))
    return model, o, torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5)


def train(model: Any, o: Any, sched: Any, extra: dict[str, Any], start: int, stop: int) -> None:
    for it in range(start, stop):
        x = torch.randint(0, 12, (8,))
        noise = float(np.random.random()) + random.random()
        loss = model(x).square().mean() * (1 + noise)
        o.zero_grad()
        loss.backward()
        o.step()
        sched.step()
        extra["seen"] = extra.get("seen", 0) + 8
        extra["trail"] = (it, [noise])


def state_of(model: Any, o: Any, sched: Any) -> dict[str, Any]:
    return {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "opt": o.state_dict(),
        "sched": sched.state_dict(),
        "rng": (torch.get_rng_state(), random.random(), np.random.random()),
    }


def assert_same(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b, (a, b)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("asynchronous", [False, True])
def test_resume_is_bit_identical(shm_dir: Path, key: str, opt: str, asynchronous: bool) -> None:
    """Stopping after 3 of 6 steps and resuming in new objects ends exactly where an
    uninterrupted run ends: weights, momentum/Adam moments and step counts, param groups,
    scheduler, every RNG and the extra state."""
    model, o, s = make(opt)
    extra: dict[str, Any] = {}
    train(model, o, s, extra, 0, 6)
    want, want_extra = state_of(model, o, s), dict(extra)

    spec = f"tmpfs:{shm_dir / 'm'}"
    model, o, s = make(opt)
    extra = {}
    with TorchMirror(
        model, o, backend=spec, key_file=key, scheduler=s, extra_state=extra,
        asynchronous=asynchronous,
    ) as m:  # fmt: skip
        assert m.restore() == 0
        for it in range(3):
            train(model, o, s, extra, it, it + 1)
            m.step(it + 1)
    random.seed(99), np.random.seed(99), torch.manual_seed(99)  # what restore must undo

    model, o, s = make(opt, seed=7)
    extra = {"stale": True}
    with TorchMirror(model, o, backend=spec, key_file=key, scheduler=s, extra_state=extra) as m:
        assert m.restore() == 3
        assert "stale" not in extra and extra["seen"] == 24 and extra["trail"][0] == 2
        assert isinstance(
            o.param_groups[0]["betas" if opt == "adam" else "momentum"], tuple | float
        )
        train(model, o, s, extra, 3, 6)
    assert_same(state_of(model, o, s), want)
    assert extra == want_extra


def test_records_are_the_tensors_own_memory(key: str) -> None:
    """Contiguous CPU tensors are sealed from their storage; a tied tensor is one record; only
    the transposed buffer goes through a (kept) staging buffer; bfloat16 is viewed as int16."""
    model, o, s = make("adam")
    train(model, o, s, {}, 0, 1)
    st = TorchState(model, o, s)
    assert isinstance(st, Mirrorable)
    bufs = {(layer, name): arr for layer, name, arr in st.mirror_buffers()}
    assert (0, "out.weight") not in bufs and (0, "emb.weight") in bufs  # tied: once
    w = bufs[(0, "hidden.weight")]
    assert w.ctypes.data == model.hidden.weight.data_ptr()
    assert bufs[(0, "scale")].dtype == np.int16 and bufs[(0, "scale")].ctypes.data == (
        model.scale.data_ptr()
    )
    assert bufs[(0, "count")].dtype == np.int64
    i = next(i for i, p in enumerate(o.param_groups[0]["params"]) if p is model.emb.weight)
    assert bufs[(1, f"{i}.exp_avg")].ctypes.data == o.state[model.emb.weight]["exp_avg"].data_ptr()
    proj = bufs[(0, "proj")]
    assert proj.flags.c_contiguous and proj.ctypes.data != model.proj.data_ptr()
    assert np.array_equal(proj, model.proj.numpy())
    assert st.staging.staged_bytes == proj.nbytes
    again = {(layer, name): arr for layer, name, arr in st.mirror_buffers()}
    assert again[(0, "proj")].ctypes.data == proj.ctypes.data  # the staging buffer is kept


def test_snapshot_matches_records(key: str) -> None:
    model, o, s = make("sgd")
    train(model, o, s, {}, 0, 2)
    st = TorchState(model, o, s)
    st.training_state()
    out = np.zeros(st.snapshot_nbytes(), np.uint8)
    snap = st.snapshot_into(out)
    direct = st.mirror_buffers()
    assert [(a, b) for a, b, _ in snap] == [(a, b) for a, b, _ in direct]
    for (_, name, x), (_, _, y) in zip(snap, direct, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), name


class FakeDevice:
    """Tensors marked as 'on the device' and copies that count what crossed the bus."""

    def __init__(self) -> None:
        self.marked: set[int] = set()
        self.d2h = 0
        self.h2d = 0
        self.pinned: list[tuple[int, ...]] = []

    def on_host(self, t: Any) -> bool:
        return t.data_ptr() not in self.marked

    def to_host(self, dst: Any, src: Any) -> None:
        self.d2h += 1
        dst.copy_(src)

    def to_device(self, dst: Any, src: Any) -> None:
        self.h2d += 1
        dst.copy_(src)

    def alloc(self, shape: tuple[int, ...], dtype: Any, pinned: bool) -> Any:
        if pinned:
            self.pinned.append(shape)
        return torch.empty(shape, dtype=dtype)


def test_accelerator_tensors_go_through_kept_pinned_buffers(shm_dir: Path, key: str) -> None:
    """The device path (no accelerator here: a fake one): every device tensor is copied to a
    pinned host buffer allocated once, and copied back to the device on restore."""
    torch.manual_seed(1)
    model = torch.nn.Linear(5, 3)
    dev = FakeDevice()
    dev.marked = {model.weight.data_ptr(), model.bias.data_ptr()}
    staging = Staging(to_host=dev.to_host, to_device=dev.to_device, alloc=dev.alloc,
                      on_host=dev.on_host)  # fmt: skip
    st = TorchState(model, staging=staging)
    for _ in range(2):
        bufs = {name: arr for _, name, arr in st.mirror_buffers()}
    assert sorted(dev.pinned) == [(3,), (3, 5)]  # allocated once, pinned, reused
    assert dev.d2h == 4
    assert bufs["weight"].ctypes.data != model.weight.data_ptr()
    assert np.array_equal(bufs["weight"], model.weight.detach().numpy())

    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    from plinius.backends.registry import open_backend
    from plinius.core.crypto import make_engine, read_key_file
    from plinius.format.mirror import MirrorStore, Record

    with open_backend(f"tmpfs:{shm_dir / 'd'}") as backend:
        store = MirrorStore(backend, make_engine(read_key_file(key)), st.fingerprint())
        meta = st.training_state()
        store.save([Record(*b) for b in st.mirror_buffers()], 1, 0, {"net": meta})
        with torch.no_grad():
            model.weight.zero_(), model.bias.zero_()
        st.prepare_restore(meta)
        got = store.load(into={(la, n): a for la, n, a in st.mirror_buffers()})
        assert got is not None
        st.load_training_state(got.info.meta["net"])
    assert dev.h2d == 2
    assert_same(model.state_dict(), saved)


def test_wrong_model_is_refused(shm_dir: Path, key: str) -> None:
    spec = f"tmpfs:{shm_dir / 'm'}"
    model, o, s = make("sgd")
    with TorchMirror(model, o, backend=spec, key_file=key, scheduler=s) as m:
        m.restore()
        train(model, o, s, {}, 0, 1)
        m.step(1)
    other = torch.nn.Linear(4, 4)
    with pytest.raises(ModelMismatchError), TorchMirror(other, backend=spec, key_file=key) as m:
        m.restore()
    model, _, _ = make("sgd")  # same model, another optimizer: another training state
    adam = torch.optim.Adam(model.parameters())
    with (
        pytest.raises(ModelMismatchError),
        TorchMirror(model, adam, backend=spec, key_file=key) as m,
    ):
        m.restore()


def test_another_layer_with_the_same_tensors_is_refused(shm_dir: Path, key: str) -> None:
    """Review 22: the fingerprint covers the module tree's classes, so Tanh for ReLU (same
    state_dict names, shapes and dtypes) is refused; check_module_types=False accepts it."""
    spec = f"tmpfs:{shm_dir / 'm'}"

    def net(act: Any) -> Any:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(4, 4), act(), torch.nn.Linear(4, 2))

    model = net(torch.nn.ReLU)
    with TorchMirror(model, backend=spec, key_file=key) as m:
        m.restore()
        m.step(1)
    other = net(torch.nn.Tanh)
    assert other.state_dict().keys() == model.state_dict().keys()
    with (
        pytest.raises(ModelMismatchError, match=r"1: torch.nn.modules.activation.ReLU -> "),
        TorchMirror(other, backend=spec, key_file=key) as m,
    ):
        m.restore()
    with TorchMirror(other, backend=spec, key_file=key, check_module_types=False) as m:
        assert m.restore() == 1  # a deliberate code change, accepted on request


def _mirror(spec: str, key: str, steps: range) -> None:
    model, o, s = make("adam")
    with TorchMirror(model, o, backend=spec, key_file=key, scheduler=s) as m:
        start = m.restore()
        for it in steps:
            if it >= start:
                train(model, o, s, {}, it, it + 1)
                m.step(it + 1)


def _restore(spec: str, key: str) -> int:
    model, o, s = make("adam")
    with TorchMirror(model, o, backend=spec, key_file=key, scheduler=s) as m:
        return m.restore()


def test_tampered_record_is_refused(shm_dir: Path, key: str) -> None:
    spec = f"tmpfs:{shm_dir / 'm'}"
    _mirror(spec, key, range(2))
    blob = shm_dir / "m" / "mirror"
    raw = bytearray(blob.read_bytes())
    raw[len(raw) // 3] ^= 0x01
    blob.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="integrity"):
        _restore(spec, key)


def test_replayed_old_mirror_is_refused(shm_dir: Path, key: str) -> None:
    """Putting back an older mirror is a rollback the platform counter catches (the trainer's
    error: RollbackError, an IntegrityError)."""
    spec = f"tmpfs:{shm_dir / 'm'}"
    _mirror(spec, key, range(2))
    shutil.copy2(shm_dir / "m" / "mirror", shm_dir / "old")
    _mirror(spec, key, range(4))
    assert _restore(spec, key) == 4
    shutil.copy2(shm_dir / "old", shm_dir / "m" / "mirror")
    with pytest.raises(RollbackError, match="older copy"):
        _restore(spec, key)


@pytest.mark.parametrize("replica", ["", 42, [Path("/x/r")]])
def test_a_replica_that_is_no_spec_is_one_config_error(
    shm_dir: Path, key: str, replica: Any
) -> None:
    """Neither silently dropped ("") nor an AttributeError (a Path, a number)."""
    model, o, _ = make("sgd")
    with pytest.raises(ConfigError, match="replica must be a backend spec string or a Backend"):
        TorchMirror(model, o, backend=f"tmpfs:{shm_dir / 'm'}", key_file=key, replica=replica)


def test_every_n_and_extra_state_must_be_a_dict(shm_dir: Path, key: str) -> None:
    from plinius.core.errors import ConfigError

    model, o, _ = make("sgd")
    with pytest.raises(ConfigError, match="dict"):
        TorchMirror(model, o, backend=f"tmpfs:{shm_dir / 'x'}", key_file=key, extra_state=[])  # type: ignore[arg-type]
    with TorchMirror(model, o, backend=f"tmpfs:{shm_dir / 'm'}", key_file=key, every=3) as m:
        waited = [m.step(i) for i in range(1, 7)]
    assert len(m.mirror_s) == 2 and [w > 0 for w in waited] == [False, False, True] * 2


def test_verify_and_export_cli(shm_dir: Path, key: str, tmp_path: Path) -> None:
    """``plinius verify`` and ``export --safetensors`` on a TorchMirror mirror: the export is
    the model's state_dict (tied names included), mode 0600, never overwritten."""
    from safetensors.torch import load_file

    spec = f"tmpfs:{shm_dir / 'm'}"
    model, o, s = make("adam")
    with TorchMirror(model, o, backend=spec, key_file=key, scheduler=s) as m:
        train(model, o, s, {}, 0, 3)
        m.step(3)
    res = run_cli("verify", "--backend", spec, "--key-file", key)
    assert res.returncode == 0 and "iteration 3" in res.stdout, res.stderr
    out = tmp_path / "model.safetensors"
    res = run_cli("export", "--backend", spec, "--key-file", key, "--safetensors", str(out))
    assert res.returncode == 0, res.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    assert_same(load_file(str(out)), {k: v.detach() for k, v in model.state_dict().items()})
    again = run_cli("export", "--backend", spec, "--key-file", key, "--safetensors", str(out))
    assert again.returncode != 0 and "exists" in again.stderr
    darknet = run_cli("export", "--backend", spec, "--key-file", key, "--weights", str(out) + "w")
    assert darknet.returncode != 0 and "--safetensors" in darknet.stderr
