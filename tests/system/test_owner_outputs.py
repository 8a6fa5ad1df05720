"""Issue 24: the owner's commands on a mirror they cannot or must not write from.

``plinius export`` never overwrites a file, whatever the format (``--weights`` replaced it
silently while ``--safetensors`` refused); ``plinius infer`` on a PyTorch mirror says what the
mirror is and the way out instead of "no sections: expected [net]".
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cli_runner import run_cli
from needs import import_torch

from plinius.backends.registry import open_backend
from plinius.core.crypto import generate_key, make_engine, read_key_file, write_key_file
from plinius.core.errors import ConfigError
from plinius.enclave.platform import open_platform
from plinius.session.owner import export_weights, open_owned

OLD = b"the owner's earlier export, never to be replaced\n"


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("flag", ["--weights", "--safetensors"])
@pytest.mark.parametrize("planted", ["file", "symlink"])
def test_export_never_overwrites(
    darknet_mirror: dict[str, str], tmp_path: Path, flag: str, planted: str
) -> None:
    """An existing file (or a symlink, even a dangling one) at the output is one line, exit 2,
    and stays exactly as it was; a new path then exports."""
    out = tmp_path / "model.out"
    target = tmp_path / "elsewhere"
    if planted == "file":
        out.write_bytes(OLD)
    else:
        os.symlink(target, out)
    owned = ("--backend", darknet_mirror["spec"], "--key-file", darknet_mirror["key"])
    res = run_cli("export", *owned, flag, str(out))
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "exists" in one_line(res.stderr) and "never overwrites" in res.stderr
    if planted == "file":
        assert out.read_bytes() == OLD
    else:
        assert os.readlink(out) == str(target) and not target.exists()
    if flag == "--weights":
        fresh = tmp_path / "new.weights"
        res = run_cli("export", *owned, flag, str(fresh))
        assert res.returncode == 0, res.stderr
        assert fresh.stat().st_mode & 0o777 == 0o600
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_export_weights_itself_refuses_an_existing_file(
    darknet_mirror: dict[str, str], tmp_path: Path
) -> None:
    """The library's way out keeps the promise too (a file made between the CLI's check and
    the write): no replacement, no temporary file left behind."""
    out = tmp_path / "raced.weights"
    out.write_bytes(OLD)
    engine = make_engine(read_key_file(darknet_mirror["key"]))
    with open_backend(darknet_mirror["spec"], create="never") as backend:
        opened = open_owned(backend, engine, open_platform(create=False))
        with pytest.raises(ConfigError, match="exists: plinius export never overwrites"):
            export_weights(opened, out)
    assert out.read_bytes() == OLD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raced.weights"]


def test_infer_on_a_pytorch_mirror_says_what_it_is(shm_dir: Path, tmp_path: Path) -> None:
    torch = import_torch()
    from plinius.torch import TorchMirror

    key = tmp_path / "owner.key"
    write_key_file(key, generate_key())
    spec = f"tmpfs:{shm_dir / 'm'}"
    model = torch.nn.Linear(4, 2)
    with TorchMirror(model, backend=spec, key_file=str(key)) as m:
        m.restore()
        m.step(1)
    res = run_cli("infer", "--backend", spec, "--key-file", str(key))
    assert res.returncode == 2, (res.stdout, res.stderr)
    line = one_line(res.stderr)
    assert "PyTorch mirror (TorchMirror)" in line, line
    assert "TorchMirror(" in line and ".restore()" in line, line
    assert "plinius export --safetensors" in line, line
    assert "no sections" not in line, line
