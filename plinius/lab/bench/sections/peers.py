"""``peers``: what users would do instead, on the same tensors, in RAM and on the disk, in the
same rounds as the backends: ``numpy.save``, ``pickle`` and ``safetensors`` through numpy, each
plain and with AES-GCM + fsync by hand (the default install), and where torch is installed
``torch.save``, ``safetensors`` through torch and ``torch.save`` + AES-GCM + fsync."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from plinius.lab.bench.contenders import Contender
from plinius.lab.bench.registry import NotRun, Section, SuiteOptions, WorkloadContext, register
from plinius.lab.bench.stats import speedup
from plinius.lab.bench.targets import by_id, fastest, measured, row_at, target_workload, why_not
from plinius.lab.bench.verdicts import TargetTable

NAME = "peers"
#: the directories the suite's workloads give (:func:`plinius.lab.bench.suite.side_dirs`)
PLACES = ("tmpfs", "ssd")


def contenders(ctx: WorkloadContext) -> Sequence[Contender]:
    from plinius.lab.bench import peers

    why = peers.peers_unavailable()
    if why:
        raise NotRun(why)
    arrays = [(f"{r.layer}.{r.name}", r.array) for r in ctx.model.records]
    return peers.peer_contenders(arrays, ctx.model.name, ctx.scratch_dirs(), ctx.engine)


def ids(opts: SuiteOptions) -> list[str]:
    """``kind@place``: every peer that can run here on every directory, as :func:`contenders`
    builds them (the torch peers only where torch is installed)."""
    from plinius.lab.bench.peers import available_kinds

    kinds = available_kinds()
    return [f"{kind}@{place}" for place in PLACES for kind in kinds]


def _restore_ops(c: Mapping[str, Any]) -> list[str]:
    """A peer's warm restore operations (every ``restore*`` but the cold one): a peer may time
    more than one way to materialise (numpy.copyto, torch copy_); the faster one is ranked."""
    return [op for op in c["ops"] if op.startswith("restore") and "cold" not in op]


def _why_missing(doc: Mapping[str, Any], wl: str | None, ident: str, default: str) -> str:
    """Why peer ``ident`` (``kind@place``) did not run at ``wl``: the reason the other peers
    recorded (a missing dependency and its fix), else ``default``."""
    kind = ident.partition("@")[0]
    for c in measured(doc, wl, NAME):
        why = ((c.get("facts") or {}).get("not_here") or {}).get(kind)
        if why:
            return f"{ident} {why}"
    return default


#: ``(target id, what, bar (None: reported only), peer id, op)``
TARGETS: tuple[tuple[str, str, float | None, str, str], ...] = (
    (
        "save_vs_safetensors_tmpfs",
        "romulus save ≥ 2× safetensors save (tmpfs)",
        2.0,
        "safetensors@tmpfs",
        "save",
    ),
    (
        "save_vs_torch_aes_fsync_ssd",
        "romulus save ≥ 15× torch.save + AES-GCM + fsync (ssd)",
        15.0,
        "torch.save+aes-gcm@ssd",
        "save",
    ),
    (
        "restore_vs_safetensors_tmpfs",
        "romulus restore ≥ 2× materialised safetensors load (tmpfs, the faster copy)",
        2.0,
        "safetensors@tmpfs",
        "restore",
    ),
    (
        "save_vs_numpy_aes_fsync_ssd",
        "romulus save vs numpy.save + AES-GCM + fsync (ssd; no torch needed)",
        None,
        "numpy.save+aes-gcm+fsync@ssd",
        "save",
    ),
)


#: the romulus instances a peer is compared with: the one of the peer's own durability
ROMULUS = ("romulus", "romulus?mode=msync")


def targets(doc: Mapping[str, Any], t: TargetTable) -> None:
    """Each bar against the romulus instance of the peer's own durability (RAM against RAM,
    fsynced disk against the pool msynced to the disk): never a ratio across levels."""
    wl = target_workload(doc)
    roms = [r for r in (row_at(doc, wl, name) for name in ROMULUS) if r is not None]
    why = why_not(doc, wl, NAME, "not run: no peers at this workload")
    for key, what, bar, ident, op in TARGETS:
        peer = by_id(doc, wl, NAME, ident)
        best = None
        if peer is not None:
            best = fastest([peer], ["save"] if op == "save" else _restore_ops(peer))
        theirs = ((best[0].get("facts") or {}).get("durability") if best else None) or "-"
        rom = next((r for r in roms if r["durability"] == theirs), None)
        if rom is None or best is None:
            if best is None:
                reason = _why_missing(doc, wl, ident, why) if peer is None else why
            else:
                reason = f"not run: no romulus instance of the peer's durability ({theirs}) here"
            t.add(key, what, bar, None, why=reason)
            continue
        them, their_op = best
        iv = speedup(
            rom["samples"][op], them["ops"][their_op]["seconds"], rom["bytes"] / them["nbytes"]
        )
        sides = f"{rom['instance']} {op} vs {them['name']} {their_op}"
        t.add(key, what, bar, iv, sides=sides, durability=f"{rom['durability']} vs {theirs}")


register(
    Section(
        NAME,
        "numpy.save, pickle, safetensors (+ AES-GCM + fsync by hand); torch.save and its "
        "sealed twin where torch is installed; on the same tensors",
        20,
        contenders=contenders,
        targets=targets,
        ids=ids,
    )
)
