"""A PyTorch training run mirrored by TorchMirror, killed and resumed by test_torch_kill.py.

``python torch_kill_child.py SPEC KEY ITERATIONS ASYNC [PLATFORM]``: prints each iteration done,
then the digest of everything the run would go on from (weights, optimizer, scheduler, RNGs,
extra). ``PLATFORM``: a platform spec given to ``TorchMirror(platform=...)``.
"""

from __future__ import annotations

import hashlib
import random
import sys

import numpy as np
import torch

from plinius.enclave.platform import open_platform
from plinius.torch import TorchMirror


def main() -> None:
    spec, key, iterations, asynchronous = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 256),
        torch.nn.BatchNorm1d(256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.7)
    extra: dict[str, int] = {"cursor": 0}
    platform = open_platform(sys.argv[5]) if len(sys.argv) > 5 else None
    with TorchMirror(
        model, opt, backend=spec, key_file=key, scheduler=sched, extra_state=extra,
        asynchronous=asynchronous == "1", platform=platform,
    ) as mirror:  # fmt: skip
        for it in range(mirror.restore(), iterations):
            x = torch.randn(32, 64) + float(np.random.random())
            y = torch.randint(0, 10, (32,))
            loss = torch.nn.functional.cross_entropy(model(x), y) * (1 + random.random())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            extra["cursor"] += 32
            mirror.step(it + 1)
            print(it + 1, flush=True)
    h = hashlib.sha256()
    for t in model.state_dict().values():
        h.update(t.numpy().tobytes())
    for st in opt.state.values():
        for v in st.values():
            h.update(v.numpy().tobytes())
    h.update(repr((sched.state_dict(), extra, random.random(), np.random.random())).encode())
    h.update(torch.rand(4).numpy().tobytes())
    print("DONE", h.hexdigest(), flush=True)


if __name__ == "__main__":
    main()
