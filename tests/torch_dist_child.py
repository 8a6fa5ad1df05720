"""One rank of ``examples/torch_ddp.py`` (or ``torch_fsdp.py``) under torchrun, for the
distributed kill and attack tests (``test_torch_distributed.py``).

``torchrun ... torch_dist_child.py ddp|fsdp EXAMPLE-ARGS...``. The rank writes its pid to
``$PLINIUS_TEST_PIDS/a<attempt>.r<rank>``; ``$PLINIUS_TEST_KILL`` (``attempt:point:rank:nth``,
comma-separated) makes rank ``rank`` of attempt ``attempt`` SIGKILL itself at the ``nth`` time
it reaches ``point``:

- ``step``: TorchMirror.step (the training step done, before its mirror);
- ``seal``: a batch of sealed segments about to go into the open write (part half written);
- ``part``: the rank's part durable, before the ranks exchange reports;
- ``global``: rank 0 about to seal and write the global manifest;
- ``record``: the global manifest durable, before this rank's record moves to the save.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import plinius.enclave.ranks as ranks_module
import plinius.format.mirror as mirror_format
from plinius.enclave.counter import MirrorCounters
from plinius.torch import TorchMirror

POINTS: dict[str, tuple[Any, str]] = {
    "step": (TorchMirror, "step"),
    "seal": (mirror_format._SealBatch, "flush"),
    "part": (ranks_module.RankMirror, "commit"),
    "global": (ranks_module, "seal_global"),
    "record": (MirrorCounters, "commit"),
}


def arm(point: str, nth: int) -> None:
    owner, attr = POINTS[point]
    original: Callable[..., Any] = getattr(owner, attr)
    seen = [0]

    def reached(*args: Any, **kwargs: Any) -> Any:
        seen[0] += 1
        if seen[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(owner, attr, reached)


def main() -> int:
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    rank = int(os.environ["RANK"])
    pids = os.environ.get("PLINIUS_TEST_PIDS")
    if pids:
        Path(pids, f"a{attempt}.r{rank}").write_text(str(os.getpid()))
    for item in filter(None, os.environ.get("PLINIUS_TEST_KILL", "").split(",")):
        a, point, r, nth = item.split(":")
        if int(a) == attempt and int(r) == rank:
            arm(point, int(nth))
    from torch_ddp import main as example

    return example(sys.argv[2:], wrap=sys.argv[1])


if __name__ == "__main__":
    sys.exit(main())
