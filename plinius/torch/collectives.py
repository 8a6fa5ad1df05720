"""The host's collectives between the ranks' enclaves, on a gloo process group of plinius's own
(so its calls never interleave with the training's, even from the background mirror thread).

Only fixed-size integer tensors and byte tensors travel; a length from another rank is checked
against the caller's bound before anything is allocated for it.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from plinius.core.errors import ConfigError, IntegrityError

#: how long a collective of the commit waits for the slowest rank before failing
COMMIT_TIMEOUT = timedelta(minutes=10)


def init_ranks(timeout: timedelta = timedelta(seconds=60)) -> tuple[int, int]:
    """``torch.distributed.init_process_group("gloo")`` from torchrun's environment that also
    works after ``torchrun --max-restarts`` restarted the ranks: the rendezvous keys of each
    attempt go under their own prefix of torchrun's store (with one shared prefix a restarted
    group hangs, or dials a dead rank's address, here 3 times out of 3), and a rank that never
    comes fails the others after ``timeout`` instead of hanging. ``(rank, world size)``."""
    env = os.environ
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        addr, port = env["MASTER_ADDR"], int(env["MASTER_PORT"])
    except (KeyError, ValueError):
        raise ConfigError(
            "init_ranks: RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT are not set: start the "
            "script with torchrun"
        ) from None
    attempt = env.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = dist.TCPStore(addr, port, world, False, timeout=timeout)
    dist.init_process_group(
        "gloo",
        store=dist.PrefixStore(f"plinius-attempt-{attempt}", store),
        rank=rank,
        world_size=world,
        timeout=timeout,
    )
    return rank, world


def world_group(process_group: object | None) -> object | None:
    """The group a TorchMirror spans: ``process_group``, else the world group when
    torch.distributed is initialised; None: one process."""
    if process_group is not None:
        return process_group
    if dist.is_available() and dist.is_initialized():
        return dist.group.WORLD
    return None


class TorchLink:
    """:class:`plinius.enclave.ranks.RankLink` over a new gloo group spanning ``group``'s ranks
    (made here: every rank must construct it, in the same order as its other groups)."""

    def __init__(self, group: object, timeout: timedelta = COMMIT_TIMEOUT) -> None:
        if not dist.is_initialized():
            raise ConfigError("process_group given but torch.distributed is not initialised")
        ranks = dist.get_process_group_ranks(group)
        self.group = dist.new_group(ranks=ranks, backend="gloo", timeout=timeout)
        self.rank = dist.get_rank(self.group)
        self.world = dist.get_world_size(self.group)

    def all_gather_bytes(self, data: bytes, limit: int) -> list[bytes]:
        n = torch.tensor([len(data)], dtype=torch.int64)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
        dist.all_gather(sizes, n, group=self.group)
        lens = [int(s.item()) for s in sizes]
        if any(not 0 <= x <= limit for x in lens):
            raise IntegrityError(f"a rank sent {max(lens)} B where at most {limit} B fit")
        most = max(lens)
        if most == 0:
            return [b"" for _ in lens]
        buf = torch.zeros(most, dtype=torch.uint8)
        if data:
            buf[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        outs = [torch.empty(most, dtype=torch.uint8) for _ in range(self.world)]
        dist.all_gather(outs, buf, group=self.group)
        return [o[:k].numpy().tobytes() for o, k in zip(outs, lens, strict=True)]

    def broadcast_bytes(self, data: bytes | None, limit: int, src: int = 0) -> bytes:
        mine = self.rank == src
        n = torch.tensor([len(data or b"") if mine else 0], dtype=torch.int64)
        dist.broadcast(n, group=self.group, group_src=src)
        size = int(n.item())
        if not 0 <= size <= limit:
            raise IntegrityError(f"rank {src} sent {size} B where at most {limit} B fit")
        if size == 0:
            return b""
        if mine:
            buf = torch.frombuffer(bytearray(data or b""), dtype=torch.uint8)
        else:
            buf = torch.empty(size, dtype=torch.uint8)
        dist.broadcast(buf, group=self.group, group_src=src)
        return data if mine and data is not None else buf.numpy().tobytes()

    def broadcast(self, t: torch.Tensor, src: int) -> None:
        """``t`` (contiguous, CPU) of rank ``src`` into ``t`` of every rank."""
        if t.numel():
            dist.broadcast(t, group=self.group, group_src=src)

    def close(self) -> None:
        dist.destroy_process_group(self.group)


__all__ = ["COMMIT_TIMEOUT", "TorchLink", "init_ranks", "world_group"]
