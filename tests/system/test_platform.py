"""The platform seam: a root of trust chosen by spec, named in every run report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from cli_runner import run_cli, train_args

from plinius.core.crypto import generate_key, write_key_file
from plinius.core.errors import ConfigError
from plinius.enclave.platform import FUSE_BYTES, Platform, SimulatedPlatform, open_platform


def test_specs_name_the_simulated_cpu_or_fail_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    p = open_platform(f"sim:{tmp_path / 'cpu'}", state_dir=state)
    assert isinstance(p, SimulatedPlatform) and p.dir == tmp_path / "cpu"
    assert p.describe()["kind"] == "simulated" and "no SGX or TPM" in p.describe()["note"]
    monkeypatch.setenv("PLINIUS_PLATFORM", f"sim:{tmp_path / 'env'}")
    assert open_platform(state_dir=state).dir == tmp_path / "env"
    with pytest.raises(ConfigError, match="unknown kind 'x'; this build knows sim, tpm"):
        open_platform("x:y", state_dir=state)
    for bad, why in [
        ("tpm:", "name the TPM with device="),
        ("tpm:swtpm=h", "swtpm= takes HOST:PORT"),
        ("tpm:device=rel", "absolute path"),
        ("tpm:swtpm=127.0.0.1:1,nv=0x81000000", "not in the owner NV range"),
        ("tpm:swtpm=127.0.0.1:1,counter_every=0", "counter_every='0'"),
        ("tpm:swtpm=127.0.0.1:1,colour=red", "'colour=red' is not one of"),
        ("tpm:swtpm=10.1.2.3:2321", "must be on this machine"),
    ]:
        with pytest.raises(ConfigError, match=why) as err:
            open_platform(bad, state_dir=state)
        assert "\n" not in str(err.value)
    typed: Platform = p  # the simulated CPU is one implementation of the protocol
    quote = typed.attest(bytes(32), bytes(64))
    assert b"signature" in quote
    assert len(p.sign_quote(b"body")) == 64


def test_train_and_verify_on_a_platform_given_by_spec(tmp_path: Path) -> None:
    """``--platform sim:DIR`` holds the freshness records; verify needs the same one."""
    key = tmp_path / "k.key"
    write_key_file(key, generate_key())
    env = {**os.environ, "PLINIUS_STATE_DIR": str(tmp_path / "state")}
    env.pop("PLINIUS_PLATFORM", None)
    env["PLINIUS_PLATFORM_DIR"] = str(tmp_path / "default-cpu")
    data = tmp_path / "d.pld"
    assert run_cli("owner", "encrypt-data", "--key-file", str(key), "--out", str(data), env=env)
    spec = f"tmpfs:{tmp_path / 'm'}"
    cpu = f"sim:{tmp_path / 'cpu'}"
    res = run_cli(*train_args(spec, key, data, 2), "--platform", cpu, "--json", env=env)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["platform"]["location"] == str(tmp_path / "cpu")
    ok = run_cli("verify", "--backend", spec, "--key-file", str(key), "--platform", cpu, env=env)
    assert ok.returncode == 0, ok.stderr
    other = run_cli("verify", "--backend", spec, "--key-file", str(key), env=env)
    assert other.returncode == 2  # the default CPU never committed this mirror
    bad = run_cli("verify", "--backend", spec, "--key-file", str(key), "--platform", "x", env=env)
    assert bad.returncode == 2 and "unknown kind 'x'" in bad.stderr


# The child opens a new simulated CPU and SIGKILLs itself at its first write of the platform file
# ``argv[2]`` (its own name or a staged copy of it), before a byte of it is written: what a crash
# between the file's creation and its write leaves behind.
KILLED_AT_WRITE = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from plinius.enclave.platform import SimulatedPlatform

    cpu, name = Path(sys.argv[1]), sys.argv[2]
    real = os.write

    def write(fd, data):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path.startswith(str(cpu) + os.sep) and os.path.basename(path) == name:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(fd, data)

    os.write = write
    SimulatedPlatform(cpu, state_dir=Path(sys.argv[3]))
    print("not killed")
    """
)


@pytest.mark.parametrize("name", ["fuse.key", "quoting.pem"])
def test_a_kill_while_a_platform_key_is_written_leaves_no_partial_key(
    tmp_path: Path, name: str
) -> None:
    """Killed between a key file's creation and its write: no file under its name (an empty
    root secret used to be left there, and every later open refused the platform as damaged);
    the next open creates a whole one, and the staged copy the kill left is removed."""
    cpu, state = tmp_path / "cpu", tmp_path / "state"
    res = subprocess.run(
        [sys.executable, "-c", KILLED_AT_WRITE, str(cpu), name, str(state)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode == -signal.SIGKILL, (res.returncode, res.stdout, res.stderr)
    assert not os.path.lexists(cpu / name)  # no key at all, never an empty or partial one
    p = SimulatedPlatform(cpu, state_dir=state)
    assert len((cpu / "fuse.key").read_bytes()) == FUSE_BYTES
    assert p.derive(b"x", bytes(32)) == SimulatedPlatform(cpu, state_dir=state).derive(
        b"x", bytes(32)
    )
    assert len(p.sign_quote(b"body")) == 64
    assert sorted(os.listdir(cpu)) == ["fuse.key", "quoting.pem"]  # the staged copy is gone


@pytest.mark.parametrize(("name", "left"), [("fuse.key", b""), ("quoting.pem", b"-----BEGIN")])
def test_a_partial_key_an_older_plinius_left_is_refused_in_one_line(
    tmp_path: Path, name: str, left: bytes
) -> None:
    """What the two-step creation of older versions left after a kill is never used as a key:
    the open refuses in one line naming the file, and leaves it as it is."""
    cpu, state = tmp_path / "cpu", tmp_path / "state"
    cpu.mkdir(mode=0o700)
    if name == "quoting.pem":
        SimulatedPlatform(cpu, state_dir=state)
        (cpu / name).unlink()
    (cpu / name).write_bytes(left)
    os.chmod(cpu / name, 0o600)
    with pytest.raises(ConfigError, match="the platform location is damaged") as err:
        SimulatedPlatform(cpu, state_dir=state)
    assert str(cpu / name) in str(err.value) and "\n" not in str(err.value)
    assert (cpu / name).read_bytes() == left


def _train_on(platform: str, tmp_path: Path, env_extra: dict[str, str] | None = None) -> Any:
    key = tmp_path / "k.key"
    if not key.exists():
        write_key_file(key, generate_key())
    env = {**os.environ, "PLINIUS_STATE_DIR": str(tmp_path / "state"), **(env_extra or {})}
    env.pop("PLINIUS_PLATFORM", None)
    return run_cli(
        "train", "--model", "tiny", "--iterations", "1", "--backend", f"tmpfs:{tmp_path / 'm'}",
        "--key-file", str(key), "--platform", platform, "--json", env=env,
    )  # fmt: skip


def test_tpm_platform_without_its_extra_or_its_tpm_fails_in_one_line(tmp_path: Path) -> None:
    """No tpm2-pytss: the install hint; no TPM listening: where it looked. Exit 2 each."""
    fake = tmp_path / "fake" / "tpm2_pytss"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("not installed")\n')
    spec = f"tpm:swtpm=127.0.0.1:9,dir={tmp_path / 'p'}"
    res = _train_on(spec, tmp_path, {"PYTHONPATH": str(tmp_path / "fake")})
    assert res.returncode == 2 and "pip install 'plinius[tpm]'" in res.stderr, res.stderr
    res = _train_on(spec, tmp_path)
    assert res.returncode == 2, res.stderr
    assert "cannot reach the TPM at swtpm 127.0.0.1:9" in res.stderr
    for r in (res,):
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_tpm_platform_needs_the_owners_trust_root_to_provision(swtpm: Any, tmp_path: Path) -> None:
    """Without ``ca=`` (or ``$PLINIUS_TPM_CA``) the owner has nothing to check the EK against:
    no key is provisioned; with it the run goes, and its report names the software TPM."""
    bare = f"tpm:swtpm={swtpm.address},dir={tmp_path / 'p'}"
    res = _train_on(bare, tmp_path, {"PLINIUS_TPM_CA": ""})
    assert res.returncode == 2 and "no trust root for the TPM's EK certificate" in res.stderr
    ok = _train_on(swtpm.spec(tmp_path / "p"), tmp_path)
    assert ok.returncode == 0, ok.stderr
    plat = json.loads(ok.stdout)["platform"]
    assert plat["kind"] == "tpm" and "software TPM (swtpm)" in plat["note"]


def test_one_tpm_spelled_two_ways_is_one_lock(tmp_path: Path) -> None:
    """Review of issue 27: the platform lock is named after the TPM, not after its spelling."""
    from plinius.enclave.tpm_platform import _tpm_id, parse_tpm_spec

    ids = {
        _tpm_id(parse_tpm_spec(s))
        for s in ("tpm:swtpm=127.0.0.1:2321", "tpm:swtpm=localhost:2321", "tpm:swtpm=[::1]:2321")
    }
    assert ids == {"swtpm:2321"}
    assert _tpm_id(parse_tpm_spec("tpm:device=/dev/tpm0")) == _tpm_id(
        parse_tpm_spec("tpm:device=/dev/tpmrm0")
    )
