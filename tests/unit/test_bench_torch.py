"""The torch section of ``plinius bench``: every contender restores exactly, on a tiny workload."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="torch==2.13.0 is installed only in the Python 3.11 envs")

from plinius.core.crypto import generate_key, write_key_file
from plinius.core.errors import IntegrityError
from plinius.lab.bench.contenders import run_rounds
from plinius.lab.bench.torch_section import (
    SAVE_DONE,
    build_workload,
    torch_contenders,
    torch_overhead,
    torch_unavailable,
)
from plinius.lab.bench.workloads import optimizer_specs, parameter_specs

# the first 80 tensors of ResNet-50 (about 1 MiB of parameters) and its classifier's bias
TINY = [*parameter_specs("resnet50")[:80], parameter_specs("resnet50")[-1]]


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "owner.key"
    write_key_file(path, generate_key())
    return path


def test_torch_is_available_here() -> None:
    assert torch_unavailable() is None


@pytest.mark.parametrize("optimizer", ["sgd-momentum", "adam"])
def test_workload_module_has_the_architectures_state(optimizer: str) -> None:
    w = build_workload(f"resnet50+{optimizer}", TINY)
    sd = w.model.state_dict()
    assert list(sd) == [s.name for s in TINY]
    assert [tuple(t.shape) for t in sd.values()] == [s.shape for s in TINY]
    assert [str(t.dtype).removeprefix("torch.") for t in sd.values()] == [s.dtype for s in TINY]
    names = {f"opt.{s.name}." for s in TINY}
    want = [
        s for s in optimizer_specs("resnet50", optimizer) if s.name.rsplit(".", 1)[0] + "." in names
    ]
    state = w.optimizer.state_dict()["state"]
    got = sorted(tuple(v.shape) for st in state.values() for v in st.values())
    assert want and got == sorted(s.shape for s in want)


def test_check_catches_an_idle_restore() -> None:
    w = build_workload("resnet50+adam", TINY)
    w.check("as built")
    w.scramble()
    with pytest.raises(IntegrityError, match="differs after restore"):
        w.check("idle")


def test_every_contender_restores_exactly(shm_dir: Path, key: Path) -> None:
    peers = shm_dir / "peers"
    peers.mkdir()
    backends = [f"romulus:{shm_dir / 'tm.pool'}?size=64M", f"tmpfs:{shm_dir / 'tm'}"]
    contenders = torch_contenders(
        "resnet50+sgd-momentum", {"tmpfs": peers}, backends, key, specs=TINY
    )
    names = [c.name for c in contenders]
    assert names == [
        "TorchMirror (romulus)",
        "TorchMirror (tmpfs)",
        "torch.save (tmpfs)",
        "torch.save+AES-GCM+fsync (tmpfs)",
        "safetensors (tmpfs)",
        "dcp.save (tmpfs)",
        "dcp.async_save (tmpfs)",
    ]
    not_run = {c.name: c.facts["status"] for c in contenders if "status" in c.facts}
    assert not not_run, not_run  # everything runs in this env
    results = run_rounds(contenders, rounds=2)
    for s in results:
        assert not s.errors, (s.contender.name, s.errors)
        assert set(s.seconds) == set(s.contender.ops), s.contender.name
        assert all(len(v) == 2 and all(x > 0 for x in v) for v in s.seconds.values())
    model_only = next(c for c in contenders if c.name.startswith("safetensors"))
    assert 0 < model_only.nbytes < contenders[0].nbytes  # no optimizer state in safetensors
    assert SAVE_DONE in next(c for c in contenders if c.name.startswith("dcp.async")).ops


def test_overhead_blocks_are_per_step_seconds(shm_dir: Path, key: Path) -> None:
    out = torch_overhead(
        f"tmpfs:{shm_dir / 'sync'}",
        f"tmpfs:{shm_dir / 'async'}",
        key,
        every=2,
        blocks=2,
        steps_per_block=3,
        batch=8,
    )
    assert set(out["samples"]) == {"none", "sync", "async"}
    for v in out["samples"].values():
        assert len(v) == 2 and all(math.isfinite(x) and x > 0 for x in v)


def test_the_overhead_model_is_the_example_model() -> None:
    """The overhead row measures the model ``examples/torch_mnist.py`` trains: one class,
    defined once in the package (the example is a script, not shipped in the wheel)."""
    import importlib.util

    from plinius.lab.bench.torch_section import example_model
    from plinius.torch.mnist_cnn import Net

    path = Path(__file__).resolve().parents[2] / "examples" / "torch_mnist.py"
    spec = importlib.util.spec_from_file_location("torch_mnist_example", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)  # imports Net; training runs only under __main__
    assert example.Net is Net
    assert type(example_model()) is Net
