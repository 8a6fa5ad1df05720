"""``limits``: the machine's limits on the same bytes (memcpy, raw AES-GCM with one thread and
with all cores, every way of running it), in the same rounds as the backends; and the targets
romulus save and restore ≥ 0.85× the fastest raw AES-GCM way, at size-64 and at the ResNet-50
workload. Both sides write into kept, touched memory: the raw decrypt into a preallocated
buffer, the restore into the bench model's arrays, as a real restore into a model's memory."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from plinius.lab.bench.contenders import Contender
from plinius.lab.bench.registry import Section, SuiteOptions, WorkloadContext, register
from plinius.lab.bench.stats import speedup
from plinius.lab.bench.targets import measured, median, missing, row_at, target_workload
from plinius.lab.bench.verdicts import TargetTable

NAME = "limits"
AES = "limits:aes-gcm/"


def contenders(ctx: WorkloadContext) -> Sequence[Contender]:
    from plinius.lab.bench.limits import all_ways, limit_contenders

    ways = all_ways(ctx.engine)
    return limit_contenders(ctx.model.mirror_bytes, ctx.model.name, ctx.engine, ways=ways)


def ids(opts: SuiteOptions) -> list[str]:
    """What :func:`contenders` builds here: memcpy on one thread and on all cores, and every
    way of :func:`plinius.lab.bench.limits.all_ways` (the run's engine, then every engine way
    discovered here: the fastest of them is the limit)."""
    from plinius.lab.bench.limits import all_ways, cores

    n = cores()
    ways = [w.ident for w in all_ways(opts.engine, n)]
    return ["memcpy/1", *([f"memcpy/{n}"] if n > 1 else []), *ways]


def fastest_aes(
    doc: Mapping[str, Any], wl: str | None, op: str, *, besides: str | None = None
) -> dict[str, Any] | None:
    """The fastest raw AES-GCM this run measured for ``op``, whichever way (engine, threads);
    ``besides``: of the ways not run by that engine."""
    aes = [c for c in measured(doc, wl, NAME) if str(c.get("id", "")).startswith(AES)]
    aes = [c for c in aes if op in c["ops"]]
    if besides is not None:
        aes = [c for c in aes if not str(c["id"]).startswith(f"{AES}{besides}/")]
    return min(aes, key=lambda c: median(c, op)) if aes else None


#: the real-model workload the romulus-vs-AES targets are also judged at (its first match)
REAL_WORKLOAD = "resnet50"
BAR = 0.85


def real_workload(doc: Mapping[str, Any]) -> str | None:
    """The ResNet-50 workload of this run (``resnet50``, ``resnet50+sgd-momentum``, ...)."""
    names = [str(w["workload"]) for w in doc.get("workloads") or []]
    return next((n for n in names if n.split("+")[0] == REAL_WORKLOAD), None)


def _suffix(wl: str) -> str:
    return "_" + "".join(ch if ch.isalnum() else "_" for ch in wl)


def targets(doc: Mapping[str, Any], t: TargetTable) -> None:
    """romulus save and restore against the fastest raw AES-GCM way of the same run, at the
    target workload (size-64: the keys without suffix) and at the ResNet-50 workload (keys
    ``..._resnet50...``; said not run when the run had none)."""
    at: list[tuple[str | None, str, str]] = [(target_workload(doc), "", "")]
    real = real_workload(doc)
    if real is not None:
        at.append((real, _suffix(real), ""))
    else:
        why = f"not run: no {REAL_WORKLOAD} workload in this run (--workloads {REAL_WORKLOAD})"
        at.append((REAL_WORKLOAD, _suffix(REAL_WORKLOAD), why))
    for wl, suffix, not_run in at:
        rom = row_at(doc, wl, "romulus") if not not_run else None
        for op, aes_op, key in (
            ("save", "encrypt", "save_vs_aes_all_cores"),
            ("restore", "decrypt", "restore_vs_aes_all_cores"),
        ):
            key += suffix
            what = (
                f"romulus {op} ≥ {BAR:.2f}× raw AES-GCM {aes_op} throughput (fastest way "
                f"measured)" + (f", {wl}" if suffix else "")
            )
            if not_run:
                t.add(key, what, BAR, None, why=not_run, workload=wl)
                continue
            aes = fastest_aes(doc, wl, aes_op)
            if rom is None or aes is None:
                why = missing([("romulus", rom), (f"limits: {aes_op}", aes)])
                t.add(key, what, BAR, None, why=why, workload=wl)
                continue
            iv = speedup(
                rom["samples"][op], aes["ops"][aes_op]["seconds"], rom["bytes"] / aes["nbytes"]
            )
            sides = f"romulus {op} vs {aes['name']} {aes_op} (throughput)"
            t.add(key, what, BAR, iv, sides=sides, durability=rom["durability"], workload=wl)
    chosen_targets(doc, t)


#: the run's engine, called as a mirror calls it, within this fraction of the fastest way: the
#: engines' own noise between interleaved rounds (a choice by measurement cannot beat the
#: fastest way it chose from; it can only fall behind it)
CHOSEN_BAR = 0.95


def run_engine(doc: Mapping[str, Any]) -> str:
    return str((doc.get("provenance") or {}).get("crypto_engine") or "")


def chosen_way(doc: Mapping[str, Any], wl: str | None) -> dict[str, Any] | None:
    """The run's engine as a mirror calls it: one batch (``encrypt_many``) on all cores when the
    engine is parallel (``auto`` is: it hands the batch to the way it chose), else one thread."""
    name = run_engine(doc)
    rows = [c for c in measured(doc, wl, NAME) if str(c.get("id", "")).startswith(f"{AES}{name}/")]
    return max(rows, key=lambda c: int((c.get("facts") or {}).get("threads") or 1), default=None)


def chosen_targets(doc: Mapping[str, Any], t: TargetTable) -> None:
    """The run's engine (``auto`` unless forced) against the fastest other way measured (every
    engine, library and thread count but its own), at the target workload: the choice by
    measurement is right when no way it could have taken is faster."""
    wl = target_workload(doc)
    for aes_op in ("encrypt", "decrypt"):
        key = f"engine_vs_fastest_aes_{aes_op}"
        what = (
            f"the run's engine {aes_op}s ≥ {CHOSEN_BAR:.2f}× the fastest other AES-GCM way measured"
        )
        run = chosen_way(doc, wl)
        best = fastest_aes(doc, wl, aes_op, besides=run_engine(doc))
        if run is None or best is None or aes_op not in run["ops"]:
            why = missing([("the run's engine", run), (f"limits: {aes_op}", best)])
            t.add(key, what, CHOSEN_BAR, None, why=why, workload=wl)
            continue
        iv = speedup(run["ops"][aes_op]["seconds"], best["ops"][aes_op]["seconds"], 1.0)
        ways = (str(c["id"]).removeprefix(f"{NAME}:") for c in (run, best))
        sides = " vs ".join(ways) + f" {aes_op} (throughput)"
        t.add(key, what, CHOSEN_BAR, iv, sides=sides, workload=wl)


register(
    Section(
        NAME,
        "memcpy and raw AES-GCM (every way: engine and threads) on the same bytes, into "
        "kept memory as romulus restores into the model's",
        30,
        contenders=contenders,
        targets=targets,
        ids=ids,
    )
)
