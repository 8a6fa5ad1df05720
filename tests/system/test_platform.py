"""The platform seam: a root of trust chosen by spec, named in every run report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cli_runner import run_cli, train_args

from plinius.core.crypto import generate_key, write_key_file
from plinius.core.errors import ConfigError
from plinius.enclave.platform import Platform, SimulatedPlatform, open_platform


def test_specs_name_the_simulated_cpu_or_fail_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    p = open_platform(f"sim:{tmp_path / 'cpu'}", state_dir=state)
    assert isinstance(p, SimulatedPlatform) and p.dir == tmp_path / "cpu"
    assert p.describe()["kind"] == "simulated" and "no SGX or TPM" in p.describe()["note"]
    monkeypatch.setenv("PLINIUS_PLATFORM", f"sim:{tmp_path / 'env'}")
    assert open_platform(state_dir=state).dir == tmp_path / "env"
    with pytest.raises(ConfigError, match="unknown kind 'tpm'; this build knows sim"):
        open_platform("tpm:device=/dev/tpmrm0", state_dir=state)
    typed: Platform = p  # the simulated CPU is one implementation of the protocol
    quote = typed.sign_quote(b"body")
    assert len(quote) == 64


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
