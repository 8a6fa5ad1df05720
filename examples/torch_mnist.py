#!/usr/bin/env python3
"""A small PyTorch CNN trained on plinius's 5,000 embedded MNIST digits, killable at any moment.

Its whole training state (weights, SGD momentum or Adam moments, the LR scheduler, every RNG and
the data loader's position) goes into an encrypted, rollback-protected ``plinius`` mirror every
``--every`` steps. Kill the process (even with SIGKILL) and start it again with the same flags:
it continues from the last mirror, and under the deterministic settings below its final weights
are bit-identical to an uninterrupted run (it prints their SHA-256 to show it)::

    plinius keygen --out owner.key
    python examples/torch_mnist.py --backend romulus:/dev/shm/mnist.pool --key-file owner.key
    plinius verify --backend romulus:/dev/shm/mnist.pool --key-file owner.key

Needs ``pip install 'plinius[torch]'``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from typing import Any

import numpy as np
import torch
from torch import nn

from plinius.datasets import load_embedded
from plinius.torch import TorchMirror
from plinius.torch.mnist_cnn import Net  # the model: two convolutions, two linear layers


class Loader:
    """Shuffled mini-batches, epoch after epoch. The permutation of epoch ``e`` comes from a
    generator seeded with ``(seed, e)``, so the loader's whole position is the small dict
    ``position`` (epoch, cursor): that dict is the mirror's ``extra_state``."""

    def __init__(self, n: int, batch: int, seed: int) -> None:
        self.n, self.batch, self.seed = n, batch, seed
        self.position: dict[str, Any] = {"epoch": 0, "cursor": 0}
        self._perm_epoch = -1
        self._perm = np.empty(0, np.int64)

    def next_indices(self) -> np.ndarray:
        pos = self.position
        if pos["cursor"] + self.batch > self.n:  # drop the ragged tail, start the next epoch
            pos["epoch"], pos["cursor"] = pos["epoch"] + 1, 0
        if self._perm_epoch != pos["epoch"]:
            rng = np.random.Generator(np.random.PCG64([self.seed, pos["epoch"]]))
            self._perm, self._perm_epoch = rng.permutation(self.n), pos["epoch"]
        idx = self._perm[pos["cursor"] : pos["cursor"] + self.batch]
        pos["cursor"] += self.batch
        return idx


def model_digest(model: nn.Module) -> hashlib._Hash:
    """SHA-256 over every parameter and buffer (name, then bytes) in name order: what ``plinius
    export --safetensors`` writes hashes the same."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h


def state_digest(model: nn.Module, optimizer: torch.optim.Optimizer) -> str:
    """SHA-256 over every parameter, buffer and optimizer state tensor, in a fixed order."""
    h = model_digest(model)
    for pid, st in sorted(optimizer.state_dict()["state"].items()):
        for key, value in sorted(st.items()):
            h.update(f"{pid}.{key}".encode())
            if isinstance(value, torch.Tensor):
                h.update(value.detach().cpu().contiguous().numpy().tobytes())
            else:
                h.update(repr(value).encode())
    return h.hexdigest()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", required=True, help="backend spec, e.g. romulus:/dev/shm/m.pool")
    p.add_argument("--key-file", required=True, help="the owner's key file (plinius keygen)")
    p.add_argument("--steps", type=int, default=300, help="training steps to reach")
    p.add_argument("--every", type=int, default=10, help="mirror every N steps")
    p.add_argument("--async", dest="asynchronous", action="store_true", help="seal in background")
    p.add_argument("--replica", action="append", default=None, help="replica backend spec")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed: determinism)")
    p.add_argument("--log-every", type=int, default=25, help="print the loss every N steps")
    p.add_argument("--state-dir", help="untrusted sealed state (default $PLINIUS_STATE_DIR)")
    a = p.parse_args(argv)
    if a.steps < 1 or a.every < 1 or a.batch < 1 or a.threads < 1 or a.log_every < 1:
        p.error("--steps, --every, --batch, --threads and --log-every must be >= 1")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.state_dir:  # where the enclave keeps the sealed key; the CLI's --state-dir
        os.environ["PLINIUS_STATE_DIR"] = a.state_dir
    torch.manual_seed(a.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(a.threads)

    data = load_embedded(seed=a.seed)
    x_train = torch.from_numpy(data.x_train).reshape(-1, 1, 28, 28)
    y_train = torch.from_numpy(data.y_train.astype(np.int64))
    loader = Loader(x_train.shape[0], a.batch, a.seed)

    model = Net()
    optimizer: torch.optim.Optimizer
    if a.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=100, gamma=0.5)
    loss_fn = nn.CrossEntropyLoss()

    with TorchMirror(
        model,
        optimizer,
        backend=a.backend,
        key_file=a.key_file,
        every=a.every,
        asynchronous=a.asynchronous,
        replica=a.replica,
        scheduler=scheduler,
        extra_state=loader.position,
    ) as tm:
        start = tm.restore()  # 0 without a mirror; the loader position is restored in place
        print(f"{data.name}: starting at step {start} of {a.steps}", flush=True)
        model.train()
        for it in range(start + 1, a.steps + 1):
            idx = torch.from_numpy(loader.next_indices())
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            optimizer.step()
            scheduler.step()
            tm.step(it)  # mirrors when it % every == 0: a kill from here on resumes after `it`
            if it % a.log_every == 0 or it == a.steps:
                print(f"step {it} loss {loss.item():.4f}", flush=True)

    model.eval()
    with torch.no_grad():
        x_test = torch.from_numpy(data.x_test).reshape(-1, 1, 28, 28)
        pred = model(x_test).argmax(1).numpy()
    accuracy = float((pred == data.y_test).mean())
    print(f"test accuracy {accuracy:.4f} ({data.x_test.shape[0]} digits)", flush=True)
    print(f"model sha256 {model_digest(model).hexdigest()}", flush=True)
    print(f"state sha256 {state_digest(model, optimizer)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
