"""Which rank seals which tensor of a training state split over ranks, and which rows.

A DTensor sharded on dim 0 over a 1-D mesh (FSDP2's parameters and optimizer state) is sealed
by every rank, its own rows (torch.chunk's split: the first ranks get ``ceil(n / world)``); a
replicated tensor (a DDP parameter, a buffer, Adam's ``step``, a ``Replicate()`` DTensor) is
sealed once, by the rank with the fewest bytes so far, largest tensors first (as DCP's dedup
does), so a DDP save seals ~1/world of the state per rank. Every rank computes the same table
from the same tensors; the commit checks that they did.

A table row: ``[layer, name, dtype, global shape, "shard", None, on_param_device]`` (rank r
holds rows ``chunks(shape[0], world)[r]``: the table grows with the tensors, not the ranks) or
``[layer, name, dtype, global shape, "rep", owner rank, on]``.
"""

from __future__ import annotations

from typing import Any

import torch

from plinius.core.errors import ConfigError
from plinius.torch.codec import dtype_name

try:  # torch.distributed is in every CPU and CUDA wheel; a build without it has no DTensor
    from torch.distributed.tensor import DTensor, Replicate, Shard
except ImportError:  # pragma: no cover - torch built without distributed
    DTensor = None

SHARD, REP = "shard", "rep"


def is_dtensor(t: object) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def chunks(rows: int, world: int) -> list[tuple[int, int]]:
    """``(first row, rows)`` of each rank's piece of ``rows`` rows (torch.chunk's split)."""
    size = -(-rows // world) if rows else 0
    return [(min(r * size, rows), max(0, min(size, rows - r * size))) for r in range(world)]


def placement(t: torch.Tensor, name: str, world: int) -> str:
    """SHARD or REP for a tensor; anything else is refused with the placement found."""
    if not is_dtensor(t):
        return REP
    mesh, places = t.device_mesh, t.placements
    if mesh.ndim != 1 or mesh.size() != world:
        raise ConfigError(
            f"{name} is a DTensor on a {tuple(mesh.shape)} mesh: plinius mirrors 1-D meshes of "
            f"the mirror's process group ({world} ranks)"
        )
    p = places[0]
    if isinstance(p, Shard) and p.dim == 0 and t.dim() > 0:
        return SHARD
    if isinstance(p, Replicate):
        return REP
    raise ConfigError(f"{name} is a DTensor placed {p}: plinius mirrors Shard(0) and Replicate()")


def local(t: torch.Tensor) -> torch.Tensor:
    """The rank's own memory of ``t`` (the local shard of a DTensor)."""
    return t.to_local() if is_dtensor(t) else t


def table(
    sources: list[tuple[int, str, torch.Tensor, bool]], world: int, rank: int
) -> list[list[Any]]:
    """The table of ``(layer, name, tensor, on its parameter's device)`` in mirror order."""
    rows: list[list[Any]] = []
    loads = [0] * world
    reps: list[tuple[int, int]] = []  # (bytes, row index)
    for layer, name, t, on in sources:
        shape = list(t.shape)
        kind = placement(t, name, world)
        row: list[Any] = [layer, name, dtype_name(t.dtype), shape, kind, None, on]
        if kind == SHARD:
            pieces = chunks(shape[0], world)
            mine = local(t).shape[0]
            if mine != pieces[rank][1]:
                raise ConfigError(
                    f"{name}: this rank holds {mine} rows of {shape[0]}, torch.chunk's split "
                    f"gives {pieces[rank][1]}: only even (torch.chunk) Shard(0) splits are mirrored"
                )
            per_row = t.numel() // max(1, shape[0]) * t.element_size()
            for r, (_, n) in enumerate(pieces):
                loads[r] += n * per_row
            row[5] = None  # the rows follow from the shape and the world size
        else:
            reps.append((t.numel() * t.element_size(), len(rows)))
        rows.append(row)
    for nbytes, i in sorted(reps, key=lambda x: (-x[0], x[1])):
        owner = min(range(world), key=lambda r: (loads[r], r))
        loads[owner] += nbytes
        rows[i][5] = owner
    return rows


def owns(row: list[Any], rank: int) -> bool:
    """Does ``rank`` seal this row (its rows of a shard, or the replicated tensor it owns)?"""
    return row[4] == SHARD or row[5] == rank


__all__ = ["REP", "SHARD", "chunks", "is_dtensor", "local", "owns", "placement", "table"]
