"""What users pick instead (torch.save, safetensors, torch.save + AES-GCM) and the limits.

The asv side of ``plinius bench``'s ``peers`` and ``limits`` sections on the ResNet-50 workload
(about 100 MB): the same contenders (:mod:`plinius.bench.peers`, :mod:`plinius.bench.limits`),
each operation timed by asv. Peers save on tmpfs and on the disk directory
(``$PLINIUS_DISK_DIR``, default ``/var/tmp``); ``restore_cold`` runs only where the page cache
can be dropped (asv's timing of it includes the ``posix_fadvise`` drop and ``mincore`` check,
a few ms; ``plinius bench`` leaves them out). Without torch or safetensors (installed only for
Python 3.11) setup raises NotImplementedError, asv's way of skipping a benchmark.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from plinius.bench.contenders import Contender
from plinius.bench.limits import limit_contenders
from plinius.bench.peers import peer_contenders, peers_unavailable
from plinius.bench.workloads import make_arrays, nbytes, workload_specs
from plinius.crypto import make_engine
from plinius.defaults import root_dir

WORKLOAD = "resnet50"
KEY = bytes(range(16))
PEERS = ["torch.save", "safetensors", "torch.save+aes-gcm"]
PLACES = {"tmpfs": "shm", "ssd": "disk"}


class Peers:
    """Seconds per save and restore of ResNet-50's state dict with each peer."""

    params = (PEERS, list(PLACES), ["save", "restore", "restore_copy_", "restore_cold"])
    param_names = ["peer", "dir", "op"]
    timeout = 600
    number = 1
    repeat = (3, 7, 20.0)

    def setup(self, peer: str, place: str, op: str) -> None:
        reason = peers_unavailable()
        if reason:
            raise NotImplementedError(reason)
        self.dir = Path(tempfile.mkdtemp(prefix="plinius-asv-peers-", dir=root_dir(PLACES[place])))
        self.contender: Contender | None = None
        built = peer_contenders(
            make_arrays(workload_specs(WORKLOAD)), WORKLOAD, {place: self.dir}, make_engine(KEY)
        )
        for c in built:
            if c.name == f"{peer} ({place})" and op in c.ops:
                self.contender = c
            else:
                c.close()
        if self.contender is None:
            self.teardown()
            raise NotImplementedError(f"{peer} on {place} has no {op!r}")
        self.contender.run("save")  # the file the restores read; warms allocations
        if op != "save":
            self.contender.run(op)

    def teardown(self, *args: Any) -> None:
        if self.contender is not None:
            self.contender.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def time_op(self, peer: str, place: str, op: str) -> None:
        assert self.contender is not None
        self.contender.run(op)


class Limits:
    """memcpy and raw AES-GCM of ResNet-50's bytes, one thread and all cores."""

    params = (["memcpy", "aes-gcm"], ["1 thread", "all cores"], ["copy", "encrypt", "decrypt"])
    param_names = ["what", "threads", "op"]
    timeout = 300
    number = 1
    repeat = (5, 10, 10.0)

    def setup(self, what: str, threads: str, op: str) -> None:
        built = limit_contenders(nbytes(workload_specs(WORKLOAD)), WORKLOAD, make_engine(KEY))
        mine = [c for c in built if c.name.startswith(what) and op in c.ops]
        one = [c for c in mine if c.name.endswith("(1 thread)")]
        pick = one if threads == "1 thread" else [c for c in mine if c not in one]
        for c in built:
            if c not in pick[:1]:
                c.close()
        if not pick:
            raise NotImplementedError(f"no {what} {op} with {threads} here")
        self.contender = pick[0]
        self.contender.run(op)

    def teardown(self, *args: Any) -> None:
        # asv tears down after a setup that skipped (NotImplementedError) too
        contender = getattr(self, "contender", None)
        if contender is not None:
            contender.close()

    def time_op(self, what: str, threads: str, op: str) -> None:
        self.contender.run(op)
