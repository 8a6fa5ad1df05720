"""Review of issue 23 (M1, L4): an export on a full disk is an error, never a short file
reported written; a killed export leaves nothing under the output's name, and the scratch
directory it leaves (plaintext weights) is removed by the next export to that name.

A full disk is stood in for by ``RLIMIT_FSIZE`` (``SIGXFSZ`` ignored: ``write`` then writes
what fits, and ``EFBIG`` next), a kill by a real SIGKILL at a chosen point of a real export.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_runner import cli_argv, run_cli
from needs import import_torch

from plinius.core.crypto import generate_key, write_key_file


def _limit_file_size(limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def _run(argv: list[str], limit: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
        preexec_fn=None if limit is None else (lambda: _limit_file_size(limit)),
    )


# A plinius command run in-process by a child that SIGKILLs itself at the point ``HOOK`` sets.
KILLED_CLI = textwrap.dedent(
    """
    import os, signal, sys
    {hook}
    from plinius.cli.main import main
    sys.exit(main(sys.argv[1:]))
    """
)
KILL = "os.kill(os.getpid(), signal.SIGKILL)"


def _killed_export(hook: str, *args: str) -> subprocess.CompletedProcess[str]:
    code = KILLED_CLI.format(hook=textwrap.dedent(hook))
    return _run([sys.executable, "-P", "-c", code, "export", *args])


def test_create_exclusive_on_a_full_disk_raises_and_leaves_no_file(tmp_path: Path) -> None:
    out = tmp_path / "x.bin"
    code = (
        "import errno, sys\n"
        "from plinius.core import fsutil\n"
        "try:\n"
        f"    fsutil.create_exclusive({str(out)!r}, b'x' * 100000)\n"
        "except OSError as exc:\n"
        "    sys.exit(3 if exc.errno == errno.EFBIG else 4)\n"
        "print('returned')\n"
    )
    res = _run([sys.executable, "-c", code], limit=4096)
    assert res.returncode == 3, (res.returncode, res.stdout, res.stderr)
    assert not out.exists()


@pytest.fixture(scope="module")
def torch_mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A key and a committed TorchMirror of a 64x64 linear model (16 KiB of weights)."""
    torch = import_torch()
    from plinius.torch import TorchMirror

    root = tmp_path_factory.mktemp("export-torch")
    shm = Path(tempfile.mkdtemp(prefix="plinius-test-export-", dir="/dev/shm"))
    key = root / "owner.key"
    write_key_file(key, generate_key())
    spec = f"tmpfs:{shm / 'm'}"
    try:
        torch.manual_seed(0)
        model = torch.nn.Linear(64, 64)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with TorchMirror(model, opt, backend=spec, key_file=str(key)) as m:
            m.step(1)
        yield {"key": str(key), "spec": spec}
    finally:
        shutil.rmtree(shm, ignore_errors=True)


def test_export_safetensors_on_a_full_disk_is_one_error(
    torch_mirror: dict[str, str], tmp_path: Path
) -> None:
    """It printed "wrote" and exited 0 with a truncated file under the final name."""
    out = tmp_path / "model.safetensors"
    argv = cli_argv(
        "export", "--backend", torch_mirror["spec"], "--key-file", torch_mirror["key"],
        "--safetensors", str(out),
    )  # fmt: skip
    res = _run(argv, limit=8192)
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write" in lines[0], res.stderr
    assert "wrote" not in res.stdout
    assert list(tmp_path.iterdir()) == []  # no short file, no scratch left


def test_killed_safetensors_export_leaves_no_file_and_is_cleaned_up(
    torch_mirror: dict[str, str], tmp_path: Path
) -> None:
    """Killed at its first write of the tensors: nothing under the output's name (it used to
    be created there first); the next export to that name removes the scratch it left."""
    out = tmp_path / "model.safetensors"
    args = ("--backend", torch_mirror["spec"], "--key-file", torch_mirror["key"])
    hook = f"""
    real = os.write
    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{{fd}}").endswith("/model.safetensors"):
            {KILL}
        return real(fd, data)
    os.write = write
    """
    res = _killed_export(hook, *args, "--safetensors", str(out))
    assert res.returncode == -signal.SIGKILL, (res.returncode, res.stdout, res.stderr)
    assert not os.path.lexists(out)
    res = run_cli("export", *args, "--safetensors", str(out))
    assert res.returncode == 0, res.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_killed_weights_export_leaves_a_scratch_the_next_export_removes(
    darknet_mirror: dict[str, str], tmp_path: Path
) -> None:
    """Killed once the weights are written whole in its scratch directory, before they are
    linked in: nothing under the output's name, and the plaintext left in the 0700 scratch
    directory is gone after the next export to that name (which succeeds)."""
    out = tmp_path / "model.weights"
    args = ("--backend", darknet_mirror["spec"], "--key-file", darknet_mirror["key"])
    hook = f"""
    from plinius.session import owner
    real = owner.save_weights
    def save_weights(net, path):
        real(net, path)
        {KILL}
    owner.save_weights = save_weights
    """
    res = _killed_export(hook, *args, "--weights", str(out))
    assert res.returncode == -signal.SIGKILL, (res.returncode, res.stdout, res.stderr)
    assert not os.path.lexists(out)
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".model.weights.")]
    assert len(left) == 1 and left[0].stat().st_mode & 0o777 == 0o700
    assert (left[0] / "weights").stat().st_size > 0  # the plaintext a kill leaves
    res = run_cli("export", *args, "--weights", str(out))
    assert res.returncode == 0, res.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["model.weights"]
