"""Shared fixtures: crypto engines, RAM-backed scratch directories under /dev/shm, and a key
with a committed mirror made by the real CLI (system tests only)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from plinius.core.crypto import ENGINES

#: The test pyramid: ``tests/unit/`` (in-process: no subprocess, no server; checked by
#: ``tests/unit/test_unit_purity.py``), ``tests/system/`` (real processes, servers, kills) and
#: ``tests/security/`` (the attack suite). Plain ``pytest`` runs the unit tests and the quick
#: system tests; the system modules below (servers, SIGKILL loops, experiments, the CLI end to
#: end), like all of ``tests/security/``, are marked ``system``: ``tox`` runs them on Python 3.11
#: (``-m ""``), the 3.12/3.13 envs run the rest.
SYSTEM = frozenset(
    {
        "test_backend_redis.py",
        "test_bench_likeforlike.py",
        "test_cli.py",
        "test_experiments.py",
        "test_fio.py",
        "test_fio_client.py",
        "test_inflight_kill.py",
        "test_redis_hostile.py",
        "test_replica.py",
        "test_romulus_crash.py",
        "test_supervisor.py",
        "test_torch_example.py",
        "test_torch_kill.py",
        "test_torch_distributed.py",
        "test_tpm_platform.py",
        "test_trainer.py",
        "test_vm_loss.py",
    }
)
TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath)).resolve()
        marked = path.parent == TESTS / "system" and path.name in SYSTEM
        if marked or path.parent == TESTS / "security":
            item.add_marker(pytest.mark.system)


def pytest_configure(config: pytest.Config) -> None:
    """Tests never touch the user's real simulated CPU: one throw-away platform location.

    Subprocesses inherit it; tests that need their own (the attack suite) set it per test.
    """
    os.environ["PLINIUS_PLATFORM_DIR"] = tempfile.mkdtemp(prefix="plinius-test-platform-")
    os.environ["PLINIUS_STATE_DIR"] = tempfile.mkdtemp(prefix="plinius-test-state-")
    # one cache of the measured crypto engine table for the whole run: the first `auto` engine
    # measures (a few seconds), every later one, in any test, worker (xdist workers inherit the
    # controller's) or subprocess, reads it
    os.environ.setdefault("PLINIUS_CACHE_DIR", tempfile.mkdtemp(prefix="plinius-test-cache-"))


@pytest.fixture(params=list(ENGINES))
def engine_name(request: pytest.FixtureRequest) -> str:
    """Every crypto engine; a missing one fails (CI installs the ``fast`` extra)."""
    return str(request.param)


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A fresh directory on /dev/shm (tmpfs), removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="plinius-test-", dir="/dev/shm"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def disk_dir() -> Iterator[Path]:
    """A fresh directory on the disk (/var/tmp: ext4 here), never /dev/shm: where the ssd
    backend lives; removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="plinius-test-disk-", dir="/var/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def darknet_mirror(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """``{"key": KEY FILE, "spec": BACKEND SPEC}``: a new owner key and a mirror of ``tiny``
    committed by ``plinius train`` (2 iterations) in tmpfs, removed after the module.

    It runs the real CLI: for ``tests/system/`` and ``tests/security/`` only (the unit tier
    stays in-process, see ``tests/unit/test_unit_purity.py``)."""
    if TESTS / "unit" in Path(str(request.path)).resolve().parents:
        pytest.fail("darknet_mirror runs plinius in subprocesses: not for tests/unit/")
    from darknet_mirrors import train_mirrors

    root = tmp_path_factory.mktemp("darknet-mirror")
    shm = Path(tempfile.mkdtemp(prefix="plinius-test-mirror-", dir="/dev/shm"))
    spec = f"tmpfs:{shm / 'm'}"
    try:
        key = train_mirrors(root, {"tmpfs": spec}, 2)
        yield {"key": str(key), "spec": spec}
    finally:
        shutil.rmtree(shm, ignore_errors=True)


@pytest.fixture(scope="session")
def swtpm_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One manufactured software TPM (EK, EK certificate, its own local CA) per test process;
    every ``swtpm`` starts from a copy of its state. ``.ci/run`` installs swtpm: without it
    this fails (never skips)."""
    from plinius.lab.swtpm import manufacture

    base = tmp_path_factory.mktemp("swtpm-template")
    manufacture(base)
    return base


@pytest.fixture
def swtpm(swtpm_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A running ``swtpm socket --tpm2`` of its own (free loopback ports, temporary state),
    stopped afterwards."""
    from plinius.lab.swtpm import Swtpm

    with Swtpm(tmp_path_factory.mktemp("swtpm"), template=swtpm_template) as tpm:
        yield tpm
