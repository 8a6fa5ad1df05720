"""The enclave trainer end to end, in real processes: exact resume after SIGKILL, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_runner import run_cli as plinius
from cli_runner import train_args

from plinius.backends import backend_class
from plinius.core.crypto import generate_key, write_key_file
from plinius.lab.plan import default_spec

ITER = 12


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A platform state dir, an owner key and the owner's encrypted dataset, shared."""
    root = tmp_path_factory.mktemp("world")
    key = root / "owner.key"
    write_key_file(key, generate_key())
    env = {**os.environ, "PLINIUS_STATE_DIR": str(root / "state")}
    data = root / "data.pld"
    res = plinius("owner", "encrypt-data", "--key-file", str(key), "--out", str(data), env=env)
    assert res.returncode == 0, res.stderr
    return {"key": str(key), "data": str(data), "env_state": str(root / "state")}


@pytest.fixture
def env(world: dict[str, str]) -> dict[str, str]:
    return {**os.environ, "PLINIUS_STATE_DIR": world["env_state"]}


@pytest.fixture(params=["tmpfs", "ssd", "dax", "romulus"])
def spec(request: pytest.FixtureRequest, tmp_path: Path, shm_dir: Path) -> Iterator[str]:
    """A new instance on its class's default root kind (RAM or disk), with no options: the
    trainer sizes it from what it stores (``Backend.creation_options``)."""
    name = str(request.param)
    root = shm_dir if backend_class(name).default_root == "shm" else tmp_path
    yield default_spec(name, root)


def train(
    world: dict[str, str], env: dict[str, str], spec: str, *extra: str, iterations: int = ITER
) -> subprocess.CompletedProcess[str]:
    return plinius(
        *train_args(spec, world["key"], world["data"], iterations, "--json", *extra), env=env
    )


def digest(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, res.stderr
    return str(json.loads(res.stdout)["weights_sha256"])


def test_exact_resume_after_sigkill(
    world: dict[str, str], env: dict[str, str], spec: str, tmp_path: Path
) -> None:
    reference = digest(train(world, env, spec, "--fresh", "--no-mirror"))
    log = tmp_path / "loss.csv"
    crashed = train(world, env, spec, "--fresh", "--crash-at", "7", "--log", str(log))
    assert crashed.returncode == -9, crashed.stderr
    resumed = train(world, env, spec, "--log", str(log))
    doc = json.loads(resumed.stdout)
    assert doc["resumed"] and doc["start_iteration"] == 6  # iteration 7 was never mirrored
    assert digest(resumed) == reference
    rows = log.read_text().splitlines()[1:]
    its = [int(r.split(",")[0]) for r in rows]
    assert its == [*range(1, 7), *range(7, ITER + 1)]  # 7 lost in the crash, recomputed


def test_mirror_every_and_async_resume_exactly(
    world: dict[str, str], env: dict[str, str], shm_dir: Path
) -> None:
    spec = f"tmpfs:{shm_dir / 's'}"
    reference = digest(train(world, env, spec, "--fresh", "--no-mirror"))
    crashed = train(
        world, env, spec, "--fresh", "--mirror-every", "5", "--async-mirror", "--crash-at", "9"
    )
    assert crashed.returncode == -9
    resumed = train(world, env, spec, "--mirror-every", "5", "--async-mirror")
    assert json.loads(resumed.stdout)["start_iteration"] in (0, 5)
    assert digest(resumed) == reference


def test_verify_infer_export(
    world: dict[str, str], env: dict[str, str], shm_dir: Path, tmp_path: Path
) -> None:
    spec = f"romulus:{shm_dir / 'p.pool'}?size=64M"
    assert train(world, env, spec).returncode == 0
    v = plinius("verify", "--backend", spec, "--key-file", world["key"], "--json", env=env)
    assert v.returncode == 0, v.stderr
    assert json.loads(v.stdout)["iteration"] == ITER
    i = plinius("infer", "--backend", spec, "--key-file", world["key"], "--json", env=env)
    assert i.returncode == 0, i.stderr
    doc = json.loads(i.stdout)
    assert doc["images"] == 1000 and 0.0 <= doc["top1"] <= 1.0
    out = tmp_path / "m.weights"
    e = plinius(
        "export", "--backend", spec, "--key-file", world["key"], "--weights", str(out), env=env
    )
    assert e.returncode == 0, e.stderr
    from plinius.nn import load_model, load_weights

    net = load_model("tiny")
    load_weights(net, out)
    assert net.seen == ITER * net.batch


def test_only_ciphertext_reaches_the_backend(
    world: dict[str, str], env: dict[str, str], tmp_path: Path
) -> None:
    spec = f"ssd:{tmp_path / 'store'}"
    assert train(world, env, spec).returncode == 0
    out = tmp_path / "m.weights"
    assert (
        plinius(
            "export", "--backend", spec, "--key-file", world["key"], "--weights", str(out), env=env
        ).returncode
        == 0
    )
    weights = out.read_bytes()[20:]  # skip the Darknet header
    stored = b"".join(p.read_bytes() for p in (tmp_path / "store").iterdir())
    for start in range(0, len(weights) - 32, len(weights) // 16):
        assert weights[start : start + 32] not in stored


def test_wrong_key_refused_and_mirror_kept(
    world: dict[str, str], env: dict[str, str], tmp_path: Path
) -> None:
    spec = f"ssd:{tmp_path / 'store'}"
    assert train(world, env, spec).returncode == 0
    other = tmp_path / "other.key"
    write_key_file(other, generate_key())
    res = plinius(
        "train",
        "--model",
        "tiny",
        "--backend",
        spec,
        "--key-file",
        str(other),
        "--iterations",
        "20",
        env=env,
    )
    assert res.returncode == 2
    assert "key id" in res.stderr
    v = plinius("verify", "--backend", spec, "--key-file", world["key"], "--json", env=env)
    assert v.returncode == 0 and json.loads(v.stdout)["iteration"] == ITER


def test_replayed_old_copy_refused(
    world: dict[str, str], env: dict[str, str], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    spec = f"ssd:{store}"
    assert train(world, env, spec, iterations=4).returncode == 0
    shutil.copytree(store, tmp_path / "old")
    assert train(world, env, spec, iterations=8).returncode == 0
    shutil.rmtree(store)
    shutil.copytree(tmp_path / "old", store)  # every backend file put back
    res = train(world, env, spec, iterations=10)
    assert res.returncode == 2
    assert "rollback refused" in res.stderr
    v = plinius("verify", "--backend", spec, "--key-file", world["key"], env=env)
    assert v.returncode == 2 and "rollback refused" in v.stderr


def test_other_model_and_tampering(
    world: dict[str, str], env: dict[str, str], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    spec = f"tmpfs:{store}"
    assert train(world, env, spec, iterations=3).returncode == 0
    res = plinius(
        "train",
        "--model",
        "batch",
        "--backend",
        spec,
        "--key-file",
        world["key"],
        "--data",
        world["data"],
        "--iterations",
        "4",
        env=env,
    )
    assert res.returncode == 2 and "belongs to model" in res.stderr
    mirror = store / "mirror"
    raw = bytearray(mirror.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    mirror.write_bytes(bytes(raw))
    res = train(world, env, spec, iterations=5)
    assert res.returncode == 2 and "integrity check failed" in res.stderr
    v = plinius("verify", "--backend", spec, "--key-file", world["key"], env=env)
    assert v.returncode == 2 and "integrity check failed" in v.stderr


def test_bad_dataset(world: dict[str, str], env: dict[str, str], tmp_path: Path) -> None:
    spec = f"ssd:{tmp_path / 'store'}"
    res = plinius(
        "train",
        "--model",
        "tiny",
        "--backend",
        spec,
        "--key-file",
        world["key"],
        "--data",
        str(tmp_path / "missing.pld"),
        env=env,
    )
    assert res.returncode == 2 and "does not exist" in res.stderr
    cut = tmp_path / "cut.pld"
    cut.write_bytes(Path(world["data"]).read_bytes()[:100_000])
    res = plinius(
        "train",
        "--model",
        "tiny",
        "--backend",
        spec,
        "--key-file",
        world["key"],
        "--data",
        str(cut),
        env=env,
    )
    assert res.returncode == 2 and "truncated" in res.stderr
    bad = tmp_path / "bad.pld"
    raw = bytearray(Path(world["data"]).read_bytes())
    raw[5000] ^= 1  # inside the first training sample
    bad.write_bytes(bytes(raw))
    res = plinius(
        "train",
        "--model",
        "tiny",
        "--backend",
        spec,
        "--key-file",
        world["key"],
        "--data",
        str(bad),
        "--iterations",
        "300",
        "--fresh",
        env=env,
    )
    assert res.returncode == 2 and "integrity check failed" in res.stderr


def test_tampered_provisioning_leaves_no_key(tmp_path: Path) -> None:
    from plinius.core.errors import IntegrityError
    from plinius.enclave.channel import EphemeralKey, wrap
    from plinius.enclave.platform import SimulatedPlatform
    from plinius.enclave.trusted import PROVISION_AAD, Enclave, EnclaveStateError
    from plinius.nn import load_model

    net = load_model("tiny")
    enclave = Enclave(SimulatedPlatform(tmp_path / "p", state_dir=tmp_path / "s"), net, "tiny", "")
    quote, pub = enclave.ecall_attest()
    owner = EphemeralKey()
    chan = owner.channel_key(pub, quote + owner.public + pub)
    msg = bytearray(wrap(chan, generate_key(), PROVISION_AAD + enclave.measurement))
    msg[-1] ^= 1
    with pytest.raises(IntegrityError):
        enclave.ecall_provision(owner.public, bytes(msg))
    with pytest.raises(EnclaveStateError):
        enclave.ecall_provision(owner.public, bytes(msg))  # the attestation is spent
    with pytest.raises(EnclaveStateError, match="no data key"):
        _ = enclave.engine_name
    assert not list((tmp_path / "s" / "sealed").iterdir())


def test_full_pool_is_a_clear_error(
    world: dict[str, str], env: dict[str, str], shm_dir: Path
) -> None:
    spec = f"romulus:{shm_dir / 'small.pool'}?size=4M"  # 16 MB of training samples do not fit
    res = train(world, env, spec, iterations=2)
    assert res.returncode == 2
    assert "pool full" in res.stderr and "bytes needed" in res.stderr
