#!/usr/bin/env python3
"""The digits CNN trained by several ranks with DistributedDataParallel, killable at any moment.

Every ``--every`` steps each rank seals its part of the training state (with DDP: about
1/world of the replicated weights and Adam moments, each tensor sealed by one rank) and a
two-phase commit makes the save all-or-nothing across ranks. SIGKILL any rank: ``torchrun
--max-restarts`` restarts them all and they resume from the last save every rank committed,
bit-identically to an uninterrupted run (each rank prints the SHA-256 of the whole state and of
its RNGs)::

    plinius keygen --out owner.key
    torchrun --nproc-per-node 2 --max-restarts 3 examples/torch_ddp.py \\
        --backend 'tmpfs:/dev/shm/ddp/{rank}' --key-file owner.key

``{rank}`` gives each rank its own backend instance (a shared Redis server takes one spec).
A mirror saved by 2 ranks restores at 1 or 4 (``--nproc-per-node``): the ranks reshard it.
``examples/torch_fsdp.py`` runs the same loop with FSDP2 (``fully_shard``). CPU and gloo here;
on GPUs with NCCL the training group changes, plinius's own group stays gloo. Needs
``pip install 'plinius[torch]'``; ~15 s for the default 120 steps on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from plinius.datasets import load_embedded
from plinius.torch import TorchMirror, init_ranks
from plinius.torch.mnist_cnn import Net

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_mnist import Loader


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (a DTensor gathered from its shards: a collective)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def digests(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[str, str]:
    """SHA-256 of the whole training state (the same on every rank) and of this rank's RNGs."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode() + full(t).detach().cpu().contiguous().numpy().tobytes())
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        for key, v in sorted(optimizer.state.get(p, {}).items()):
            h.update(f"{i}.{key}".encode())
            if isinstance(v, torch.Tensor):
                h.update(full(v).detach().cpu().contiguous().numpy().tobytes())
    r = hashlib.sha256(torch.get_rng_state().numpy().tobytes())
    r.update(repr(np.random.get_state(legacy=False)).encode() + repr(random.getstate()).encode())
    return h.hexdigest(), r.hexdigest()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--backend", required=True, help="spec with {rank}, e.g. tmpfs:/dev/shm/d/{rank}"
    )
    p.add_argument("--key-file", required=True, help="the owner's key file (plinius keygen)")
    p.add_argument("--steps", type=int, default=120, help="training steps to reach")
    p.add_argument("--every", type=int, default=10, help="mirror every N steps")
    p.add_argument("--async", dest="asynchronous", action="store_true", help="seal in background")
    p.add_argument("--batch", type=int, default=64, help="global batch (split over the ranks)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--log-every", type=int, default=40, help="print the loss every N steps")
    p.add_argument("--digest-out", help="directory: each rank writes rank<N>.txt with digests")
    a = p.parse_args(argv)
    if a.steps < 1 or a.every < 1 or a.batch < 1 or a.log_every < 1:
        p.error("--steps, --every, --batch and --log-every must be >= 1")
    return a


def wrap_ddp(model: nn.Module) -> nn.Module:
    return nn.parallel.DistributedDataParallel(model)


def main(argv: list[str] | None = None, wrap: str = "ddp") -> int:
    a = parse_args(argv)
    rank, world = init_ranks()
    if a.batch % world:
        print(f"--batch {a.batch} does not split over {world} ranks", file=sys.stderr)
        return 2
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)  # every rank builds the same initial model
    model = Net()
    if wrap == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in (model.conv1, model.conv2, model.fc1, model.fc2):
            fully_shard(layer)
        net: nn.Module = fully_shard(model)
    else:
        net = wrap_ddp(model)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    torch.manual_seed(a.seed * 1000 + rank)  # each rank its own dropout stream
    np.random.seed(a.seed * 1000 + rank)  # and its own NumPy and Python streams (mirrored too)
    random.seed(a.seed * 1000 + rank)

    data = load_embedded(seed=a.seed)
    x_train = torch.from_numpy(data.x_train).reshape(-1, 1, 28, 28)
    y_train = torch.from_numpy(data.y_train.astype(np.int64))
    loader = Loader(x_train.shape[0], a.batch, a.seed)
    loss_fn = nn.CrossEntropyLoss()

    with TorchMirror(
        net,
        optimizer,
        backend=a.backend,
        key_file=a.key_file,
        every=a.every,
        asynchronous=a.asynchronous,
        extra_state=loader.position,
    ) as tm:
        start = tm.restore()
        if rank == 0:
            print(f"{world} ranks ({wrap}): starting at step {start} of {a.steps}", flush=True)
        net.train()
        for it in range(start + 1, a.steps + 1):
            idx = torch.from_numpy(loader.next_indices()[rank::world])
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(net(x_train[idx]), y_train[idx])
            loss.backward()
            optimizer.step()
            tm.step(it)  # every rank mirrors at the same steps: one save across ranks
            if rank == 0 and (it % a.log_every == 0 or it == a.steps):
                print(f"step {it} loss {loss.item():.4f}", flush=True)

    state, rng = digests(model, optimizer)
    print(f"rank {rank} state sha256 {state} rng sha256 {rng}", flush=True)
    if a.digest_out:
        Path(a.digest_out, f"rank{rank}.txt").write_text(f"{state} {rng}\n")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
