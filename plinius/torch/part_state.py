"""One rank's part of a training state split over ranks (DDP, FSDP2 / DTensor).

The same :class:`~plinius.torch.state.TorchState` records, filtered by the sharding table
(:mod:`plinius.torch.shards`): the rank's own rows of every sharded tensor (its DTensor shard's
memory, sealed in place) and the replicated tensors it owns. After a restore at the same world
size each replicated tensor is broadcast from the rank that sealed it; at another world size
(:meth:`PartState.reshard`) each old part is read by rank ``r % world`` and every piece goes to
the ranks whose rows it covers. The RNG states and ``extra_state`` are the rank's own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from plinius.core.errors import ModelMismatchError
from plinius.enclave.ranks import GlobalManifest, agree
from plinius.torch.codec import dtype_from_name, record_dtype, record_view
from plinius.torch.collectives import TorchLink
from plinius.torch.shards import SHARD, chunks, is_dtensor, local, owns, placement, table
from plinius.torch.state import _NUMPY_PREFIX, _RNG_DTYPES, EXTRA, MODEL, OPTIM, RNG, TorchState

#: the largest manifest or RNG/extra record a rank broadcasts to ranks without a part
_MAX_SHARED = 64 << 20


def _strides(shape: list[int]) -> tuple[int, ...]:
    out, acc = [], 1
    for n in reversed(shape):
        out.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(out))


class PartState(TorchState):
    """:class:`TorchState` of rank ``link.rank``: only the records this rank seals."""

    def __init__(self, *args: Any, link: TorchLink, **kwargs: Any) -> None:
        self.link = link
        self._table: list[list[Any]] = []
        self._table_key: list[tuple[Any, ...]] | None = None
        self._locals: dict[int, tuple[tuple[Any, ...], torch.Tensor]] = {}
        super().__init__(*args, **kwargs)

    # --- what this rank seals --------------------------------------------------------------

    def _on(self, layer: int, name: str, t: torch.Tensor) -> bool:
        if layer != OPTIM:
            return False
        return bool(t.device == self._params[int(name.split(".")[0])].device)

    def plan(self) -> tuple[list[tuple[int, str, torch.Tensor]], list[list[Any]]]:
        """Every model and optimizer tensor, and the table (rebuilt when a tensor changes)."""
        full = super()._sources()
        key = [(layer, name, id(t), tuple(t.shape)) for layer, name, t in full]
        if key != self._table_key:
            rows = [(layer, name, t, self._on(layer, name, t)) for layer, name, t in full]
            self._table = table(rows, self.link.world, self.link.rank)
            self._table_key = key
        return full, self._table

    def _local(self, t: torch.Tensor) -> torch.Tensor:
        """The DTensor's shard, the same object while it is the same memory (the record
        cache keys on it)."""
        if not is_dtensor(t):
            return t
        lt = t.to_local()
        key = (lt.data_ptr(), tuple(lt.shape), lt.dtype)
        got = self._locals.get(id(t))
        if got is not None and got[0] == key:
            return got[1]
        self._locals[id(t)] = (key, lt)
        return lt

    def _sources(self) -> list[tuple[int, str, torch.Tensor]]:
        full, rows = self.plan()
        me = self.link.rank
        return [(layer, name, self._local(t)) for (layer, name, t), row in zip(full, rows,
                strict=True) if owns(row, me)]  # fmt: skip

    def training_state(self) -> dict[str, Any]:
        doc = super().training_state()
        doc["table"] = self._table
        return doc

    # --- restore at the same world size --------------------------------------------------------

    def _tensor_of(self, layer: int, name: str) -> torch.Tensor:
        if layer == MODEL:
            for n, t in self._tensors:
                if n == name:
                    return t
        elif layer == OPTIM and self.optimizer is not None:
            i, key = name.split(".", 1)
            got = self.optimizer.state[self._params[int(i)]].get(key)
            if isinstance(got, torch.Tensor):
                return got
        raise ModelMismatchError(f"the mirror's table names {name!r}, which this state lacks")

    def _allocate(self, rows: list[list[Any]]) -> None:
        """Every optimizer tensor of the table, as this rank holds it (a DTensor shard of the
        parameter's mesh, or a whole tensor): PyTorch creates them lazily at the first step."""
        me, world = self.link.rank, self.link.world
        for layer, name, dtype, shape, kind, _, on in rows:
            if layer != OPTIM:
                continue
            if self.optimizer is None:
                raise ModelMismatchError("the mirror holds optimizer state; pass the optimizer")
            i, key = name.split(".", 1)
            p = self._params[int(i)]
            dt = dtype_from_name(dtype)
            sharded = kind == SHARD or (
                is_dtensor(p) and shape == list(p.shape) and placement(p, name, world) == SHARD
            )
            now = self.optimizer.state[p].get(key)
            if (now is not None and list(now.shape) == shape and now.dtype == dt
                    and is_dtensor(now) == (sharded and is_dtensor(p))):  # fmt: skip
                continue
            device = p.device if on else torch.device("cpu")
            if sharded and is_dtensor(p):
                n = chunks(shape[0], world)[me][1]
                lt = torch.empty([n, *shape[1:]], dtype=dt, device=device)
                from torch.distributed.tensor import DTensor

                new: torch.Tensor = DTensor.from_local(
                    lt, p.device_mesh, p.placements, shape=torch.Size(shape),
                    stride=_strides(shape),
                )  # fmt: skip
            else:
                new = torch.empty(shape, dtype=dt, device=device)
            self.optimizer.state[p][key] = new
        self._cache = None

    def prepare_restore(self, state: dict[str, Any]) -> None:
        self._allocate(state.get("table", []))
        super().prepare_restore(state)

    def _ensure_optim(
        self, p: torch.Tensor, key: str, dt: torch.dtype, shape: list[int], on: bool
    ) -> None:
        assert self.optimizer is not None
        now = self.optimizer.state[p].get(key)
        if now is None or list(local(now).shape) != shape or now.dtype != dt:
            raise ModelMismatchError(f"optimizer state {key} of a parameter differs from the part")

    def load_training_state(self, state: dict[str, Any]) -> None:
        """The part's own records and state, then every replicated tensor from its sealer."""
        failed: BaseException | None = None
        try:
            super().load_training_state(state)
        except Exception as exc:  # agreed on, then raised on every rank
            failed = exc
        agree(self.link, failed, "the restore")
        for layer, name, _, _, kind, owner, _ in state["table"]:
            if kind != SHARD:
                self._broadcast_into(self._tensor_of(layer, name), owner)

    def _broadcast_into(self, t: torch.Tensor, src: int) -> None:
        lt = record_view(local(t))
        buf = lt if lt.is_contiguous() and lt.device.type == "cpu" else lt.cpu().contiguous()
        self.link.broadcast(buf, src)
        if buf is not lt:
            lt.copy_(buf)

    # --- restore at another world size --------------------------------------------------------

    def reshard(
        self,
        g: GlobalManifest,
        docs: dict[int, dict[str, Any]],
        arrays: dict[int, dict[tuple[int, str], np.ndarray]],
    ) -> int:
        """Restore from the parts of ``g`` (saved by ``g.world`` ranks) read here (``docs`` and
        ``arrays`` by old rank): every tensor piece goes from the rank that read it to every
        rank, which keeps the rows its own placement covers; RNGs, extra and loop state come
        from old rank ``rank`` (or 0, for a rank beyond the old world). The old rank whose
        state this rank took."""
        link, me = self.link, self.link.rank
        failed: BaseException | None = None
        try:
            self._allocate(g.table)
        except Exception as exc:  # agreed on, then raised on every rank
            failed = exc
        agree(link, failed, f"the restore of save {g.version} at {link.world} ranks")
        with torch.no_grad():
            for layer, name, dtype, shape, kind, where, _ in g.table:
                self._place(layer, name, dtype, shape, kind, where, arrays, g.world)
        source = me if me < g.world else 0
        doc, rng, extra = self._source_state(g, source, docs, arrays)
        self._rng, self._extra_into = rng, extra
        self._cache = None
        self._restoring = False
        self._apply(doc)
        self._extra_into = {}
        return source

    def _place(
        self,
        layer: int,
        name: str,
        dtype: str,
        shape: list[int],
        kind: str,
        where: Any,
        arrays: dict[int, dict[tuple[int, str], np.ndarray]],
        world: int,
    ) -> None:
        """Every piece of one tensor (``world`` old ranks' rows, or its owner's whole) from the
        rank that read it to every rank; each keeps the rows its own placement covers."""
        link, me = self.link, self.link.rank
        dest = self._tensor_of(layer, name)
        lt = record_view(local(dest))
        rdt = record_dtype(dtype_from_name(dtype))
        rows = shape[0] if shape else 0
        lo, n = (0, rows)
        if is_dtensor(dest) and placement(dest, name, link.world) == SHARD:
            lo, n = chunks(rows, link.world)[me]
        pieces = list(enumerate(chunks(rows, world))) if kind == SHARD else [(where, (0, rows))]
        for r, (off, count) in pieces:
            holder = r % link.world
            piece_shape = [count, *shape[1:]] if kind == SHARD else shape
            if holder == me:
                got = arrays[r].get((layer, name))
                if got is None:
                    raise ModelMismatchError(f"rank {r}'s part holds no record {name!r}")
                buf = torch.from_numpy(np.asarray(got, order="C"))
                if list(buf.shape) != piece_shape or buf.dtype != rdt:
                    raise ModelMismatchError(
                        f"rank {r}'s part holds {name!r} as {buf.dtype}{list(buf.shape)}, the "
                        f"table says {rdt}{piece_shape}"
                    )
            else:
                buf = torch.empty(piece_shape, dtype=rdt)
            link.broadcast(buf, holder)
            if not shape:
                lt.copy_(buf.to(lt.device))
                continue
            a, b = max(lo, off), min(lo + n, off + count)
            if a < b:
                lt[a - lo : b - lo].copy_(buf[a - off : b - off].to(lt.device))

    def _source_state(
        self,
        g: GlobalManifest,
        source: int,
        docs: dict[int, dict[str, Any]],
        arrays: dict[int, dict[tuple[int, str], np.ndarray]],
    ) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any]]:
        """The manifest, RNG and extra records of old rank ``source``; part 0's are broadcast
        from rank 0 when the new world is larger than the old one."""
        import json

        link = self.link
        if link.world > g.world:  # ranks without an old part of their own take part 0's
            raw = link.broadcast_bytes(
                json.dumps(docs[0]).encode() if link.rank == 0 else None, _MAX_SHARED
            )
            doc0 = json.loads(raw)
            for layer, name, dtype, shape, _ in doc0["layout"]:
                if layer not in (RNG, EXTRA):
                    continue
                dt = (
                    _RNG_DTYPES[dtype] if layer == RNG
                    else np.dtype(dtype.removeprefix(_NUMPY_PREFIX))
                    if dtype.startswith(_NUMPY_PREFIX)
                    else np.dtype(record_view(torch.empty(0, dtype=dtype_from_name(dtype)))
                                  .numpy().dtype)
                )  # fmt: skip
                mine = arrays.get(0, {}).get((layer, name)) if link.rank == 0 else None
                data = link.broadcast_bytes(
                    None if mine is None else np.ascontiguousarray(mine).tobytes(), _MAX_SHARED
                )
                if link.rank != 0:
                    arr = np.frombuffer(bytearray(data), dt)
                    arrays.setdefault(0, {})[(layer, name)] = arr.reshape(tuple(shape))
            docs.setdefault(0, doc0)
        doc = docs[source]
        rng: dict[str, np.ndarray] = {}
        extra: dict[str, Any] = {}
        for layer, name, dtype, _, where in doc["layout"]:
            if layer not in (RNG, EXTRA):
                continue
            arr = arrays[source][(layer, name)]
            if layer == RNG:
                rng[name] = np.ascontiguousarray(arr)
            elif layer == EXTRA:
                if dtype.startswith(_NUMPY_PREFIX):
                    extra[name] = np.array(arr)
                else:
                    t = torch.from_numpy(np.array(arr)).view(dtype_from_name(dtype))
                    extra[name] = t.to(where) if where else t
        return doc, rng, extra


__all__ = ["PartState"]
