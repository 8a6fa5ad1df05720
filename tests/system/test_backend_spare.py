"""The shared contract (SIGKILLed saves included) on the file backends' new-file save path.

The file backends save through their spare by default (the contract runs that in
test_backend_tmpfs.py, test_backend_ssd.py and test_backend_dax.py); ``spare=0`` keeps the
new-file path, run here on both file systems (RAM, and the disk with fsync), so both paths are
killed at random moments on both.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from plinius.backends import open_backend
from plinius.backends.files import FileBackend
from plinius.backends.testing import KILLS, BackendContract


class TestSsdNewFiles(BackendContract):
    @pytest.fixture
    def spec(self, disk_dir: Path) -> str:
        return f"ssd:{disk_dir / 'store'}?spare=0"


class TestTmpfsNewFiles(BackendContract):
    @pytest.fixture
    def spec(self, shm_dir: Path) -> str:
        return f"tmpfs:{shm_dir / 'store'}?spare=0"


#: a child that commits ever newer versions of one large blob forever (sizes growing and
#: shrinking, so kills land while the spare is rewritten, cut, or exchanged), printing each; the
#: content is made straight into the staging view, so the child's time goes to the commits
SPARE_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from plinius.backends import open_backend
    sys.path.insert(0, sys.argv[2])
    from test_backend_spare import fill, size_of
    b = open_backend(sys.argv[1])
    got = b.read("blob", 0, 8)
    v = 0 if got is None else int.from_bytes(got.data, "little")
    print("ready", flush=True)
    while True:
        v += 1
        n = size_of(v)
        with b.begin_write("blob", n) as txn:
            fill(np.frombuffer(txn.view(0, n), np.uint8), v)
            txn.commit()
        print(v, flush=True)
    """
)
_BASE = (np.arange(32 << 20, dtype=np.uint64) * 2654435761 >> 13).astype(np.uint8)


def size_of(version: int) -> int:
    """The size of version ``version``: 4-16 MiB and some, growing and shrinking."""
    return (4 + (version * 5) % 13) * (1 << 20) + (version * 977) % 4097


def fill(out: np.ndarray, version: int) -> None:
    """Version ``version``'s bytes into ``out``: its number, then a pattern of its own."""
    out[:8] = np.frombuffer(version.to_bytes(8, "little"), np.uint8)
    np.add(_BASE[: out.size - 8], np.uint8(version * 37 % 256), out=out[8:])


def content(version: int) -> bytes:
    out = np.empty(size_of(version), np.uint8)
    fill(out, version)
    return out.tobytes()


@pytest.mark.parametrize("kind", ["tmpfs", "ssd"])
def test_killed_spare_saves_leave_one_whole_version(
    kind: str, shm_dir: Path, disk_dir: Path
) -> None:
    """SIGKILL a child saving 4-16 MiB blobs through the spare: the blob is always exactly the
    last committed version or the one in flight, whole, never the spare's bytes or a mix."""
    rng = random.Random(f"spare-{kind}")
    spec = f"{kind}:{(shm_dir if kind == 'tmpfs' else disk_dir) / 'store'}"
    here = str(Path(__file__).resolve().parent)
    last = 0
    for _ in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, "-P", "-c", SPARE_CHILD, spec, here],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        printed = [int(x) for x in out.split()]
        if printed:
            last = max(last, printed[-1])
        with open_backend(spec) as b:
            assert isinstance(b, FileBackend) and b.spare
            got = b.read("blob")
            if got is None:
                assert last == 0
                continue
            data = bytes(got.data)
            assert b.blobs() == ["blob"]
        v = int.from_bytes(data[:8], "little")
        assert v in (last, last + 1), (v, last)
        assert data == content(v), f"version {v} is not whole"
        last = v
    assert last > 2, "the child never got to reuse its spare"
    names = os.listdir(spec.split(":", 1)[1])
    assert sorted(names) == [".blob.spare", ".lock", "blob"]
