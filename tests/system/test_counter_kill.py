"""Review of issue 23 (L1): a real SIGKILL while a slot's first freshness record is written
never bricks the slot. An older plinius created the record under its final name and then wrote
it: killed in between, it left an empty record and every later run of the slot (``--fresh``
too) failed with "not sealed data" until a platform file was deleted by hand."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from plinius.enclave.counter import Extent, MirrorCounters, Stamp
from plinius.enclave.platform import SimulatedPlatform

SLOT = "e" * 32

# The child makes the slot's first record and is killed at its first write of any file in the
# counter directory: before it wrote a byte of the record.
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from plinius.enclave.counter import Extent, MirrorCounters, Stamp
    from plinius.enclave.platform import SimulatedPlatform

    counters = MirrorCounters(SimulatedPlatform(Path(sys.argv[1])))
    where = str(counters.dir) + os.sep
    real = os.write

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(where):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(fd, data)

    os.write = write
    counters.begin(sys.argv[2], Stamp(b"r" * 16, 1, b"s" * 16), Extent(1000, 300))
    print("not killed")
    """
)


def test_kill_during_the_first_record_leaves_a_usable_slot(tmp_path: Path) -> None:
    cpu = tmp_path / "cpu"
    res = subprocess.run(
        [sys.executable, "-c", CHILD, str(cpu), SLOT],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode == -signal.SIGKILL, (res.returncode, res.stdout, res.stderr)
    counters = MirrorCounters(SimulatedPlatform(cpu))
    assert not (counters.dir / SLOT).exists()  # no record at all, never an empty one
    assert counters.read(SLOT) is None  # the slot is as new
    counters.check(SLOT, "here", None, settle=True)  # the next run finds nothing to refuse
    stamp = Stamp(b"q" * 16, 1, b"t" * 16)
    counters.begin(SLOT, stamp, Extent(1000, 300))
    counters.commit(SLOT, stamp)
    state = MirrorCounters(SimulatedPlatform(cpu)).read(SLOT)
    assert state is not None and state.committed == stamp and state.high == 1
