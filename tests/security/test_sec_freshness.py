"""Attacks on secrecy of the CPU secret, freshness and record binding, through the real CLI.

Classes 2 (key theft from the state dir), 3 (rollback: symlinked backends, old state dirs,
another model's or another slot's mirror), 4 (record splicing) and 8 (provisioning before the
mirror is checked). Each attack asserts the refusal (exit 2, one line, the right words) and
that the victim's real mirror still verifies afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from cli_runner import train_args

from plinius.backends.registry import open_backend
from plinius.core.crypto import make_engine, read_key_file
from plinius.format.mirror import HEADER_SIZE, MirrorStore

from .conftest import CliRunner, World, assert_refused

FILE_BACKENDS = ["tmpfs", "ssd"]


@pytest.fixture(params=["sim", "tpm"])
def platform_kind(request: pytest.FixtureRequest) -> str:
    """Every attack here runs against both platforms: the simulated CPU and a real (software)
    TPM 2.0 started by the ``swtpm`` fixture."""
    return str(request.param)


def spec_for(world: World, kind: str, name: str) -> str:
    if kind == "romulus":
        return f"romulus:{world.shm / (name + '.pool')}?size=32M"
    base = world.shm if kind == "tmpfs" else world.root
    return f"{kind}:{base / name}"


def location(spec: str) -> Path:
    return Path(spec.split(":", 1)[1].split("?", 1)[0])


def train(
    run_cli: CliRunner, world: World, spec: str, iterations: int, *extra: str, model: str = "tiny"
) -> None:
    res = run_cli(
        *train_args(spec, world.key, world.data, iterations, *extra, model=model), env=world.env
    )
    assert res.returncode == 0, res.stderr


def verify(run_cli: CliRunner, world: World, spec: str) -> dict[str, object]:
    res = run_cli(
        "verify", "--backend", spec, "--key-file", str(world.key), "--json", env=world.env
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert isinstance(doc, dict)
    return doc


def owner_cmds(world: World, spec: str) -> list[list[str]]:
    k = ["--backend", spec, "--key-file", str(world.key)]
    return [
        ["verify", *k],
        ["infer", *k],
        ["export", *k, "--weights", str(world.root / "out.weights")],
    ]


def assert_all_refuse(run_cli: CliRunner, world: World, spec: str, *needles: str) -> None:
    """verify, infer, export and train all refuse what the attacker put in place."""
    for cmd in owner_cmds(world, spec):
        assert_refused(run_cli(*cmd, env=world.env), *needles)
    res = run_cli(
        "train",
        "--model",
        "tiny",
        "--backend",
        spec,
        "--key-file",
        str(world.key),
        "--data",
        str(world.data),
        "--iterations",
        "50",
        env=world.env,
    )
    assert_refused(res, *needles)
    assert not (world.root / "out.weights").exists()


# --- class 2: the CPU secret is never where the attacker is --------------------------------


@pytest.mark.parametrize("platform_kind", ["sim"])
def test_cpu_secret_is_outside_state_dir_and_backend(run_cli: CliRunner, world: World) -> None:
    spec = spec_for(world, "tmpfs", "m")
    train(run_cli, world, spec, 3)
    fuse = (world.platform / "fuse.key").read_bytes()
    assert len(fuse) == 32
    assert oct(world.platform.stat().st_mode & 0o777) == oct(0o700)
    assert oct((world.platform / "fuse.key").stat().st_mode & 0o777) == oct(0o600)
    attacker_owned = [world.state, location(spec), world.data.parent]
    for root in attacker_owned:
        for p in root.rglob("*"):
            if p.is_file() and not p.is_relative_to(world.platform):
                assert fuse not in p.read_bytes(), p
    # counters and quoting key live with the CPU, not in the state dir
    assert not list(world.state.rglob("fuse.key")) and not list(world.state.rglob("counters"))


@pytest.mark.parametrize("platform_kind", ["sim"])
def test_platform_location_inside_state_dir_is_refused(run_cli: CliRunner, world: World) -> None:
    env = {**world.env, "PLINIUS_PLATFORM_DIR": str(world.state / "cpu")}
    res = run_cli(
        "train", "--model", "tiny", "--backend", spec_for(world, "tmpfs", "m"),
        "--key-file", str(world.key), "--data", str(world.data), "--iterations", "2", env=env,
    )  # fmt: skip
    assert_refused(res, "overlap", "platform location")
    assert not (world.state / "cpu").exists()


# --- class 3: rollback ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", [*FILE_BACKENDS, "romulus"])
def test_repointed_symlink_to_older_copy_is_refused(
    run_cli: CliRunner, world: World, kind: str
) -> None:
    """(a) The slot is the location as named, so re-pointing it at an old copy gains nothing.

    The victim's storage sits under a symlinked volume (``vol -> vol-a``, like ``/data ->
    /mnt/disk1``); the attacker copies an old mirror to ``vol-b`` and re-points ``vol``.
    """
    base = world.shm if kind != "ssd" else world.root
    (base / "vol-a").mkdir()
    (base / "vol-b").mkdir()
    (base / "vol").symlink_to(base / "vol-a")
    name = "victim.pool" if kind == "romulus" else "victim"
    spec = f"{kind}:{base / 'vol' / name}" + ("?size=32M" if kind == "romulus" else "")
    loc = base / "vol-a" / name
    train(run_cli, world, spec, 2)
    old = base / "vol-b" / name
    (shutil.copytree if loc.is_dir() else shutil.copy2)(loc, old)
    train(run_cli, world, spec, 5)
    (base / "vol").unlink()
    (base / "vol").symlink_to(base / "vol-b")
    assert_all_refuse(run_cli, world, spec, "rollback refused", "older copy")
    (base / "vol").unlink()
    (base / "vol").symlink_to(base / "vol-a")
    assert verify(run_cli, world, spec)["iteration"] == 5  # the victim's mirror is intact


def test_symlinked_backend_itself_is_refused(run_cli: CliRunner, world: World) -> None:
    """(a) Pointing the backend path itself at an old copy is refused one way or another."""
    spec = spec_for(world, "tmpfs", "victim")
    loc = location(spec)
    train(run_cli, world, spec, 2)
    old = loc.with_name("victim.old")
    shutil.copytree(loc, old)
    train(run_cli, world, spec, 5)
    real = loc.with_name("victim.real")
    loc.rename(real)
    loc.symlink_to(old)
    for cmd in owner_cmds(world, spec):
        res = run_cli(*cmd, env=world.env)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert "rollback refused" in res.stderr or "symbolic link" in res.stderr, res.stderr
    loc.unlink()
    real.rename(loc)
    assert verify(run_cli, world, spec)["iteration"] == 5


@pytest.mark.parametrize("kind", ["tmpfs", "romulus"])
def test_old_state_dir_with_old_backend_is_refused(
    run_cli: CliRunner, world: World, kind: str
) -> None:
    """(b) The counters are not in the state dir: putting back all of it changes nothing."""
    spec = spec_for(world, kind, "victim")
    loc = location(spec)
    train(run_cli, world, spec, 2)
    snap = world.root / "snap"
    shutil.copytree(world.state, snap / "state")
    (shutil.copytree if loc.is_dir() else shutil.copy2)(loc, snap / "backend")
    train(run_cli, world, spec, 5)
    newest = world.root / "newest"
    shutil.copytree(world.state, newest / "state")
    (shutil.copytree if loc.is_dir() else shutil.copy2)(loc, newest / "backend")

    def put_back(src: Path) -> None:
        shutil.rmtree(world.state)
        shutil.copytree(src / "state", world.state)
        if loc.is_dir():
            shutil.rmtree(loc)
            shutil.copytree(src / "backend", loc)
        else:
            shutil.copy2(src / "backend", loc)

    put_back(snap)
    assert_all_refuse(run_cli, world, spec, "rollback refused")
    shutil.rmtree(world.state)  # deleting the state dir does not reset freshness either
    assert_all_refuse(run_cli, world, spec, "rollback refused")
    put_back(newest)
    assert verify(run_cli, world, spec)["iteration"] == 5


def test_deleted_mirror_is_reported_not_restarted(run_cli: CliRunner, world: World) -> None:
    """A mirror the platform saw committed and that is now gone is data loss, not a fresh run."""
    spec = spec_for(world, "tmpfs", "victim")
    train(run_cli, world, spec, 3)
    saved = world.root / "saved"
    shutil.copytree(location(spec), saved)
    (location(spec) / "mirror").unlink()
    assert_refused(run_cli(*owner_cmds(world, spec)[0], env=world.env), "deleted")
    res = run_cli(
        "train", "--model", "tiny", "--backend", spec, "--key-file", str(world.key),
        "--data", str(world.data), "--iterations", "5", env=world.env,
    )  # fmt: skip
    assert_refused(res, "no mirror", "--fresh")
    shutil.copy2(saved / "mirror", location(spec) / "mirror")
    assert verify(run_cli, world, spec)["iteration"] == 3


def test_another_models_older_mirror_is_refused(run_cli: CliRunner, world: World) -> None:
    """(c) A run of another model on the same backend makes the first model's mirror stale."""
    spec = spec_for(world, "tmpfs", "shared")
    loc = location(spec)
    train(run_cli, world, spec, 3, model="tiny")
    shutil.copytree(loc, world.root / "tiny-copy")
    train(run_cli, world, spec, 2, "--fresh", model="batch")
    victim = world.root / "batch-copy"
    shutil.copytree(loc, victim)
    shutil.copy2(world.root / "tiny-copy" / "mirror", loc / "mirror")
    for cmd in owner_cmds(world, spec):
        assert_refused(run_cli(*cmd, env=world.env), "another run")
    shutil.copy2(victim / "mirror", loc / "mirror")
    assert verify(run_cli, world, spec)["iteration"] == 2


@pytest.mark.parametrize("kind", ["tmpfs", "romulus"])
def test_mirror_copied_between_slots_is_refused(
    run_cli: CliRunner, world: World, kind: str
) -> None:
    """(d) A newer mirror of one backend is not accepted under another backend's name."""
    x, y = spec_for(world, kind, "x"), spec_for(world, kind, "y")
    train(run_cli, world, x, 2)
    train(run_cli, world, y, 6)
    lx, ly = location(x), location(y)
    keep = world.root / "x-keep"
    if kind == "romulus":
        shutil.copy2(lx, keep)
        shutil.copy2(ly, lx)
    else:
        shutil.copytree(lx, keep)
        shutil.copy2(ly / "mirror", lx / "mirror")
    assert_all_refuse(run_cli, world, x, "another run")
    if kind == "romulus":
        shutil.copy2(keep, lx)
    else:
        shutil.copy2(keep / "mirror", lx / "mirror")
    assert verify(run_cli, world, x)["iteration"] == 2
    assert verify(run_cli, world, y)["iteration"] == 6


# --- class 4: record splicing --------------------------------------------------------------


def test_frankenstein_mirror_is_refused(run_cli: CliRunner, world: World) -> None:
    """Records of another mirror of the same model and version do not open in this one."""
    x, y = spec_for(world, "tmpfs", "x"), spec_for(world, "tmpfs", "y")
    train(run_cli, world, x, 3)
    train(run_cli, world, y, 3)
    engine = make_engine(read_key_file(world.key))
    with open_backend(x) as bx:
        info = MirrorStore(bx, engine, None).peek()
    assert info is not None and info.version == 3
    fx, fy = location(x) / "mirror", location(y) / "mirror"
    original = fx.read_bytes()
    donor = fy.read_bytes()
    e = max(info.entries, key=lambda e: e.length)  # the biggest weight buffer
    a, b = e.offset, e.offset + e.length + 28
    assert original[a:b] != donor[a:b]
    fx.write_bytes(original[:a] + donor[a:b] + original[b:])
    assert_all_refuse(run_cli, world, x, "integrity check failed", str(e.name))
    fx.write_bytes(original)
    assert verify(run_cli, world, x)["iteration"] == 3


def test_header_run_or_save_id_swapped_is_refused(run_cli: CliRunner, world: World) -> None:
    """The stamp in the plaintext header is authenticated: editing it cannot pass freshness."""
    x, y = spec_for(world, "tmpfs", "x"), spec_for(world, "tmpfs", "y")
    train(run_cli, world, x, 3)
    train(run_cli, world, y, 3)
    fx, fy = location(x) / "mirror", location(y) / "mirror"
    original, donor = fx.read_bytes(), fy.read_bytes()
    # give x's body y's header (whose stamp the platform has committed, for slot y)
    fx.write_bytes(donor[:HEADER_SIZE] + original[HEADER_SIZE:])
    for cmd in owner_cmds(world, x):
        res = run_cli(*cmd, env=world.env)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    fx.write_bytes(original)
    assert verify(run_cli, world, x)["iteration"] == 3


# --- class 8: check first, provision after -------------------------------------------------


def test_infer_checks_the_mirror_before_provisioning(run_cli: CliRunner, world: World) -> None:
    spec = spec_for(world, "tmpfs", "victim")
    train(run_cli, world, spec, 3)
    sealed = world.state / "sealed"
    before = sorted(os.listdir(sealed))
    f = location(spec) / "mirror"
    original = f.read_bytes()
    raw = bytearray(original)
    fp_at = 8 + 2 + 2 + 4 + 8 + 8  # the fingerprint field of the plaintext header
    raw[fp_at : fp_at + 32] = os.urandom(32)  # an enclave the attacker picked
    f.write_bytes(bytes(raw))
    res = run_cli("infer", "--backend", spec, "--key-file", str(world.key), env=world.env)
    assert_refused(res, "integrity check failed")
    assert sorted(os.listdir(sealed)) == before  # nothing was provisioned to that enclave
    f.write_bytes(original)
    res = run_cli("infer", "--backend", spec, "--key-file", str(world.key), env=world.env)
    assert res.returncode == 0, res.stderr
