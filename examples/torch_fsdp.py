#!/usr/bin/env python3
"""The digits CNN trained by several ranks with FSDP2 (``fully_shard``), killable at any moment.

The same loop as ``examples/torch_ddp.py``; here every parameter and Adam moment is a DTensor
sharded by rows, and each rank seals only its own rows (the replicated step counters once, by
one rank). Kill any rank, restart with the same flags (or let ``torchrun --max-restarts`` do
it): the run resumes bit-identically. A mirror saved by 2 ranks restores at 1 or 4::

    plinius keygen --out owner.key
    torchrun --nproc-per-node 2 --max-restarts 3 examples/torch_fsdp.py \\
        --backend 'tmpfs:/dev/shm/fsdp/{rank}' --key-file owner.key

Needs ``pip install 'plinius[torch]'``; ~15 s for the default 120 steps on 2 cores.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_ddp import main

if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main(wrap="fsdp"))
