"""TorchMirror against ``torch.save``/``torch.load`` on ResNet-50 with SGD-momentum state.

The asv side of ``plinius bench``'s torch section (:mod:`plinius.bench.torch_section`, which also
has safetensors, dcp and the sealed ``torch.save``): the same live model and contenders, timed
by asv. Every restore is checked bit for bit outside the timing. Without torch (it is installed
only for Python 3.11) setup raises NotImplementedError, asv's way of skipping a benchmark.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from plinius.bench.torch_section import RESTORE, SAVE, torch_unavailable

CONTENDERS = ["TorchMirror (romulus)", "TorchMirror (tmpfs)", "torch.save (tmpfs)"]
WORKLOAD = "resnet50+sgd-momentum"


class TorchSaveRestore:
    params = (CONTENDERS,)
    param_names = ["contender"]
    timeout = 600
    number = 1
    repeat = (5, 10, 60.0)

    def setup(self, contender: str) -> None:
        reason = torch_unavailable()
        if reason:
            raise NotImplementedError(reason)
        from plinius.bench.torch_section import build_workload, torch_contenders
        from plinius.crypto import generate_key, write_key_file

        self.root = Path(tempfile.mkdtemp(prefix="plinius-asv-torch-", dir="/dev/shm"))
        # a throw-away simulated CPU: the freshness records of these scratch mirrors die with it
        os.environ["PLINIUS_PLATFORM_DIR"] = str(self.root / "platform")
        key = self.root / "owner.key"
        write_key_file(key, generate_key())
        peers = self.root / "peers"
        peers.mkdir()
        backend = {
            "TorchMirror (romulus)": [f"romulus:{self.root / 'tm.pool'}"],
            "TorchMirror (tmpfs)": [f"tmpfs:{self.root / 'tm'}"],
        }.get(contender, [])
        dirs = {} if backend else {"tmpfs": peers}
        workload = build_workload(WORKLOAD)
        built = torch_contenders(WORKLOAD, dirs, backend, key, workload=workload)
        found = [c for c in built if c.name == contender]
        for c in built:
            if c not in found:
                c.close()
        if len(found) != 1 or "status" in found[0].facts:
            raise RuntimeError(f"{contender}: {found[0].facts if found else 'not built'}")
        self.contender = found[0]
        self.contender.run(SAVE)  # warm: allocations, pool growth, page cache
        self.contender.run(RESTORE)  # checked bit for bit against the reference
        workload.checking = False  # asv times the whole call: no zeroing, no comparing

    def teardown(self, *args: Any) -> None:
        # asv tears down after a setup that skipped (NotImplementedError) too
        contender = getattr(self, "contender", None)
        if contender is not None:
            contender.close()
        root = getattr(self, "root", None)
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)

    def time_save(self, contender: str) -> None:
        self.contender.run(SAVE)

    def time_restore(self, contender: str) -> None:
        self.contender.run(RESTORE)
