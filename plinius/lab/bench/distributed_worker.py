"""One rank of the ``distributed`` section of ``plinius bench`` (launched by torchrun, never alone).

``python -m torch.distributed.run --standalone --nproc-per-node W -m
plinius.lab.bench.distributed_worker --out result.json ...`` (the section,
:mod:`plinius.lab.bench.distributed`, does this inside ``timeout``). Each rank builds the same
real-model workload (:func:`plinius.lab.bench.torch_section.build_workload`: exact shapes,
deterministic data), wraps it as DDP or FSDP2 (``fully_shard`` on every module holding
parameters, then the root), gives its optimizer state with one real step, and runs the
contenders in interleaved rounds, order rotated (:func:`plinius.lab.bench.contenders.run_rounds`,
the same on every rank, so the collectives line up):

* ``torchmirror``: ``save`` is one synchronous :meth:`TorchMirror.mirror` (sealed, written and
  committed across ranks when it returns); ``restore`` closes the saver and constructs a new
  TorchMirror on the same spec and calls ``restore()`` (what a restarted job does); the new one
  saves from then on;
* ``dcp.save``: ``get_state_dict`` + ``dcp.save``; its ``restore`` is ``get_state_dict`` +
  ``dcp.load`` + ``set_state_dict`` of what ``dcp.save`` wrote;
* ``dcp.async_save``: ``get_state_dict`` + ``dcp.async_save``, timed until it returns
  (``save``) and until its upload is done (``save (until written)``).

Every timed operation starts after a barrier; its figure is the slowest rank's seconds (a
save is done when the last rank is). Before a restore the live state is zeroed and afterwards
compared with a reference copy, untimed: a contender that does not restore exactly fails
(on every rank: the error flag is reduced with the seconds) instead of reporting a speed.
Rank 0 writes the samples as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: the contender kinds, in the order they are built
KINDS = ("torchmirror", "dcp.save", "dcp.async_save")
WRAPS = ("ddp", "fsdp")
SAVE, RESTORE, SAVE_DONE = "save", "restore", "save (until written)"
SECTION = "distributed"
#: the TorchMirror backend of each storage place (same directory kind as DCP's files)
BACKEND_OF = {"tmpfs": "tmpfs", "ssd": "ssd"}


@dataclass
class Live:
    """The wrapped model, its optimizer and the reference copy of this rank's tensors."""

    wrap: str
    model: Any  # the DDP or FSDP2 module
    optimizer: Any
    reference: dict[str, Any]
    global_bytes: int
    rank_bytes: int

    def tensors(self) -> dict[str, Any]:
        """This rank's live tensors by a stable name (DTensors as their local shard; optimizer
        state looked up now: a load may replace it)."""
        out = {f"model.{k}": _local(v) for k, v in self.model.state_dict(keep_vars=True).items()}
        for pid, st in self.optimizer.state_dict()["state"].items():
            for k, v in st.items():
                if _is_tensor(v):
                    out[f"optim.{pid}.{k}"] = _local(v)
        return out

    def scramble(self) -> None:
        """Zero what a restore must bring back, so an idle restore cannot pass."""
        import torch

        with torch.no_grad():
            for t in self.tensors().values():
                t.zero_()

    def heal(self) -> None:
        """Put the reference back (after a failed restore: the next contender saves it)."""
        import torch

        with torch.no_grad():
            live = self.tensors()
            for k, v in self.reference.items():
                if k in live and live[k].shape == v.shape:
                    live[k].copy_(v)

    def check(self, who: str) -> None:
        """Raise unless this rank's tensors equal the reference bit for bit."""
        import torch

        from plinius.core.errors import IntegrityError

        live = self.tensors()
        if live.keys() != self.reference.keys():
            raise IntegrityError(
                who, f"restored {len(live)} tensors, expected {len(self.reference)}"
            )
        for k, v in self.reference.items():
            t = live[k]
            if t.dtype != v.dtype or t.shape != v.shape or not torch.equal(t.detach(), v):
                raise IntegrityError(who, f"tensor {k} differs after restore")


def _is_tensor(v: object) -> bool:
    import torch

    return isinstance(v, torch.Tensor)


def _local(t: Any) -> Any:
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def build(label: str, wrap: str, specs: int | None, seed: int = 0) -> Live:
    """The workload ``label`` (``resnet50+adam``...) wrapped as ``wrap``, optimizer state from
    one step. ``specs``: only the first N tensors of the architecture (tests)."""
    import torch
    from torch import nn

    from plinius.lab.bench.torch_section import build_workload
    from plinius.lab.bench.workloads import parameter_specs

    name, _, opt_name = label.partition("+")
    tensors = parameter_specs(name)
    w = build_workload(name, tensors[:specs] if specs else tensors, seed)
    module = w.model
    if wrap == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for m in list(module.modules()):
            if m is not module and any(True for _ in m.parameters(recurse=False)):
                fully_shard(m)
        model: Any = fully_shard(module)
    elif wrap == "ddp":
        model = nn.parallel.DistributedDataParallel(module)
    else:
        raise ValueError(f"unknown wrap {wrap!r}: {', '.join(WRAPS)}")
    params = list(model.parameters())
    if opt_name in ("", "adam"):
        optimizer: Any = torch.optim.Adam(params, lr=1e-3)
    elif opt_name == "sgd-momentum":
        optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    else:
        raise ValueError(f"unknown optimizer {opt_name!r}")
    for p in params:  # one real step populates the state as training would
        p.grad = p.detach() * 1e-3
    optimizer.step()
    for p in params:
        p.grad = None
    live = Live(wrap, model, optimizer, {}, 0, 0)
    live.reference = {k: v.detach().clone() for k, v in live.tensors().items()}
    live.rank_bytes = sum(t.numel() * t.element_size() for t in live.reference.values())
    full = {f"model.{k}": v for k, v in model.state_dict().items()}
    for pid, st in optimizer.state_dict()["state"].items():
        full.update({f"optim.{pid}.{k}": v for k, v in st.items() if _is_tensor(v)})
    live.global_bytes = sum(v.numel() * v.element_size() for v in full.values())
    return live


class OpFailed(RuntimeError):
    """An operation failed on some rank (every rank raises it, so the rounds stay in step)."""


def together(fn: Callable[[], float | None], world_group: Any = None) -> tuple[float, list[float]]:
    """Run ``fn`` after a barrier on every rank; ``(slowest rank's seconds, every rank's)``.
    ``fn`` returns its own seconds (or None: time the whole call). A failure on any rank raises
    :class:`OpFailed` on all of them."""
    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.api import CheckpointException

    dist.barrier(group=world_group)
    err = ""
    t0 = time.perf_counter()
    secs = 0.0
    try:
        got = fn()
        secs = time.perf_counter() - t0 if got is None else got
    except (Exception, CheckpointException) as exc:  # DCP's is a BaseException
        err = f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"
    world = dist.get_world_size(world_group)
    mine = torch.tensor([secs, 1.0 if err else 0.0], dtype=torch.float64)
    every = [torch.zeros(2, dtype=torch.float64) for _ in range(world)]
    dist.all_gather(every, mine, group=world_group)
    failed = [i for i, t in enumerate(every) if t[1].item() > 0]
    if failed:
        raise OpFailed(err or f"rank(s) {failed} failed")
    per = [float(t[0].item()) for t in every]
    return max(per), per


@dataclass
class Place:
    """What every contender on one storage place shares."""

    live: Live
    place: str
    root: Path
    #: ``[(id, op)]``: every rank's seconds of each sample of that op
    per_rank: dict[tuple[str, str], list[list[float]]]

    def timed(self, ident: str, op: str, fn: Callable[[], float | None]) -> float:
        secs, every = together(fn)
        self.per_rank.setdefault((ident, op), []).append(every)
        return secs

    def restored(self, ident: str, fn: Callable[[], None]) -> Callable[[], float]:
        """A restore: scramble (untimed), ``fn`` (timed), check (untimed)."""
        live = self.live

        def run() -> float:
            live.scramble()
            t0 = time.perf_counter()
            fn()
            secs = time.perf_counter() - t0
            try:
                live.check(ident)
            except Exception:
                live.heal()
                raise
            return secs

        return run

    def facts(self, kind: str, durability: str) -> dict[str, Any]:
        return {"kind": kind, "wrap": self.live.wrap, "place": self.place, "durability": durability}


def _timed_call(fn: Callable[[], object]) -> Callable[[], None]:
    def call() -> None:
        fn()

    return call


def mirror_contender(at: Place, key_file: str, platform_dir: Path) -> Any:
    """TorchMirror on ``at``'s storage: sync ``save``; ``restore`` = a new TorchMirror +
    ``restore()`` (the old one closed first, untimed: a restarted job's process is gone)."""
    from plinius.enclave.platform import SimulatedPlatform
    from plinius.lab.bench.contenders import Contender
    from plinius.torch import TorchMirror

    live = at.live
    ident = f"{live.wrap}/torchmirror@{at.place}"
    backend = BACKEND_OF[at.place]
    (at.root / f"tm-{live.wrap}").mkdir(parents=True, exist_ok=True)
    spec = f"{backend}:{at.root / f'tm-{live.wrap}'}/{{rank}}"
    platform = SimulatedPlatform(platform_dir / "cpu", state_dir=platform_dir / "state")

    def open_mirror() -> TorchMirror:
        return TorchMirror(
            live.model,
            live.optimizer,
            backend=spec,
            key_file=key_file,
            platform=platform,
            asynchronous=False,
            mirror_on_close=False,
        )

    holder = [open_mirror()]
    holder[0].restore()  # a new run: nothing to restore yet
    iteration = [0]

    def save() -> None:
        iteration[0] += 1
        holder[0].step(iteration[0])

    def reopen() -> None:
        holder[0] = open_mirror()
        got = holder[0].restore()
        if got != iteration[0]:
            raise RuntimeError(f"restored iteration {got}, saved {iteration[0]}")

    restore = at.restored(ident, reopen)

    def run(op: str) -> float:
        if op == SAVE:
            return at.timed(ident, op, _timed_call(save))
        holder[0].close()  # untimed
        return at.timed(ident, op, restore)

    durability = (
        "RAM (tmpfs, no fsync): survives a process crash, not a reboot"
        if backend == "tmpfs"
        else "fsync + atomic rename on the disk"
    )
    facts = at.facts("torchmirror", durability)
    facts.update(backend=spec, sealed="AES-GCM, freshness: two-phase commit + simulated CPU")
    name = f"TorchMirror {live.wrap.upper()} ({at.place})"
    return Contender(
        SECTION, name, live.wrap, live.global_bytes, (SAVE, RESTORE), run,
        lambda: holder[0].close(), facts, ident,
    )  # fmt: skip


def solo_contender(at: Place, key_file: str, platform_dir: Path) -> Any:
    """TorchMirror of the DDP model on rank 0 alone (a process group of one: W = 1), timed in
    the same rounds as the W-rank one, so the two are paired by round (the W = 2 against W = 1
    target) instead of coming from two launches at different moments of a shared machine.
    The other ranks idle at the barrier; the figure is rank 0's."""
    import torch.distributed as dist

    from plinius.enclave.platform import SimulatedPlatform
    from plinius.lab.bench.contenders import Contender
    from plinius.torch import TorchMirror
    from plinius.torch.collectives import COMMIT_TIMEOUT

    live = at.live
    ident = f"{live.wrap}/torchmirror-w1@{at.place}"
    (at.root / "tm-solo").mkdir(parents=True, exist_ok=True)
    spec = f"{BACKEND_OF[at.place]}:{at.root / 'tm-solo'}/{{rank}}"
    alone = dist.new_group(ranks=[0], backend="gloo")
    mirror: TorchMirror | None = None
    if dist.get_rank() == 0:
        platform = SimulatedPlatform(platform_dir / "cpu", state_dir=platform_dir / "state")
        mirror = TorchMirror(
            live.model, live.optimizer, backend=spec, key_file=key_file, platform=platform,
            asynchronous=False, mirror_on_close=False, process_group=alone,
        )  # fmt: skip
        mirror.restore()
    else:  # TorchMirror makes a gloo group of its ranks: every rank takes part in making it
        dist.new_group(ranks=[0], backend="gloo", timeout=COMMIT_TIMEOUT)
    iteration = [0]

    def save() -> None:
        iteration[0] += 1
        if mirror is not None:
            mirror.step(iteration[0])

    def run(op: str) -> float:
        return at.timed(ident, op, _timed_call(save))

    def close() -> None:
        if mirror is not None:
            mirror.close()

    facts = at.facts("torchmirror-w1", "RAM (tmpfs, no fsync): survives a process crash")
    facts.update(backend=spec, ranks="rank 0 alone (a process group of one)")
    name = f"TorchMirror {live.wrap.upper()} rank 0 alone, W = 1 ({at.place})"
    return Contender(SECTION, name, live.wrap, live.global_bytes, (SAVE,), run, close, facts, ident)


def dcp_contender(at: Place, kind: str) -> Any:
    """``dcp.save`` (``restore``: ``dcp.load`` of what it wrote) or ``dcp.async_save``
    (``save``: until it returns; ``save (until written)``: until its upload is done)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from plinius.lab.bench.contenders import Contender

    live = at.live
    asynchronous = kind == "dcp.async_save"
    ident = f"{live.wrap}/{kind}@{at.place}"
    where = at.root / f"{kind}-{live.wrap}"
    where.mkdir(parents=True, exist_ok=True)

    def state() -> dict[str, Any]:
        model_sd, optim_sd = get_state_dict(live.model, live.optimizer)
        return {"model": model_sd, "optim": optim_sd}

    def save() -> None:
        dcp.save(state(), checkpoint_id=str(where))

    def async_save(op: str) -> float:
        t0 = time.perf_counter()
        got = dcp.async_save(state(), checkpoint_id=str(where))
        returned = time.perf_counter() - t0
        getattr(got, "upload_completion", got).result()  # before any other collective
        return returned if op == SAVE else time.perf_counter() - t0

    def load() -> None:
        sd = state()
        dcp.load(sd, checkpoint_id=str(where))
        set_state_dict(
            live.model, live.optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"]
        )

    restore = at.restored(ident, load)

    def run(op: str) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if op == RESTORE:
                return at.timed(ident, op, restore)
            if asynchronous:
                return at.timed(ident, op, lambda: async_save(op))
            return at.timed(ident, op, _timed_call(save))

    durability = (
        "RAM (tmpfs; DCP fsyncs its files, a no-op on tmpfs): survives a process crash, not a "
        "reboot"
        if at.place == "tmpfs"
        else "fsync of every file (DCP's sync_files=True default) on the disk"
    )
    facts = at.facts(kind, durability)
    facts["sealed"] = "no (plaintext)"
    ops = (SAVE, SAVE_DONE) if asynchronous else (SAVE, RESTORE)
    name = f"{kind} {live.wrap.upper()} ({at.place})"
    return Contender(SECTION, name, live.wrap, live.global_bytes, ops, run, facts=facts, id=ident)


def contenders(at: Place, key_file: str, platform_dir: Path, kinds: Sequence[str]) -> list[Any]:
    """The contenders of ``kinds`` on one storage place, sharing its live model."""
    out = []
    if "torchmirror" in kinds:
        out.append(mirror_contender(at, key_file, platform_dir))
    out += [dcp_contender(at, k) for k in ("dcp.save", "dcp.async_save") if k in kinds]
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every wrap's contenders in ``args.rounds`` rounds on this rank; the samples as JSON."""
    import torch
    import torch.distributed as dist

    from plinius.lab.bench.contenders import run_rounds
    from plinius.torch import init_ranks

    torch.set_num_threads(1)
    rank, world = init_ranks()
    places = dict(p.split("=", 1) for p in args.places.split(","))
    kinds = [k for k in args.kinds.split(",") if k]
    doc: dict[str, Any] = {
        "world": world,
        "rounds": args.rounds,
        "workload": args.workload,
        "torch": str(torch.__version__),
        "contenders": [],
        "errors": [],
    }
    for wrap in args.wraps.split(","):
        t0 = time.perf_counter()
        try:
            live = build(args.workload, wrap, args.specs)
        except Exception as exc:
            doc["errors"].append(f"{wrap}: build failed: {type(exc).__name__}: {exc}")
            continue
        built_s = time.perf_counter() - t0
        per_rank: dict[tuple[str, str], list[list[float]]] = {}
        made = []
        for place, d in places.items():
            at = Place(live, place, Path(d), per_rank)
            made += contenders(at, args.key_file, Path(args.platform), kinds)
            solo = args.solo and wrap == "ddp" and place == "tmpfs" and world > 1
            if solo and "torchmirror" in kinds:
                made.append(solo_contender(at, args.key_file, Path(args.platform)))
        if args.ops:  # e.g. saves only: the save sweep over world sizes
            wanted = args.ops.split(",")
            for c in made:
                c.ops = tuple(op for op in c.ops if op in wanted)
        samples = run_rounds(made, args.rounds)
        for s in samples:
            c = s.contender
            doc["contenders"].append(
                {
                    "id": c.id,
                    "name": c.name,
                    "wrap": wrap,
                    "kind": c.facts["kind"],
                    "place": c.facts["place"],
                    "nbytes": c.nbytes,
                    "rank_bytes": live.rank_bytes,
                    "ops": {
                        op: {"seconds": secs, "per_rank": per_rank.get((c.id, op), [])}
                        for op, secs in s.seconds.items()
                    },
                    "errors": s.errors,
                    "facts": c.facts,
                    "checked": "every restore compared bit for bit with the reference",
                }
            )
        doc.setdefault("build_s", {})[wrap] = round(built_s, 2)
        del live, made, samples
        dist.barrier()
    if rank == 0:
        Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    dist.barrier()
    dist.destroy_process_group()
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m torch.distributed.run ... -m plinius.lab.bench.distributed_worker",
        description="one rank of plinius bench's distributed section",
    )
    p.add_argument("--workload", default="resnet50+adam")
    p.add_argument("--specs", type=int, default=0, help="only the first N tensors (tests)")
    p.add_argument("--wraps", default=",".join(WRAPS))
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument(
        "--solo", action="store_true", help="also DDP's TorchMirror on rank 0 alone (W = 1)"
    )
    p.add_argument("--ops", default="", help="only these ops (default: every one)")
    p.add_argument("--places", required=True, help="PLACE=DIR,...: tmpfs=/dev/shm/x,ssd=/var/tmp/y")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--key-file", required=True)
    p.add_argument("--platform", required=True, help="a throw-away simulated CPU directory")
    p.add_argument("--out", required=True, help="rank 0 writes the samples here (JSON)")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        run(args)
    except Exception:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
