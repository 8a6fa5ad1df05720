"""``limits``: the machine's limits on the same bytes (memcpy, raw AES-GCM with one thread and
with all cores), in the same rounds as the backends."""

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
    from plinius.lab.bench.limits import limit_contenders

    return limit_contenders(ctx.model.mirror_bytes, ctx.model.name, ctx.engine)


def ids(opts: SuiteOptions) -> list[str]:
    """What :func:`plinius.lab.bench.limits.limit_contenders` builds here: memcpy and the run's
    engine on one thread and on all cores, and the parallel native engine beside a serial one."""
    from plinius.core import crypto_native
    from plinius.lab.bench.limits import cores

    n, engine = cores(), opts.engine
    out = ["memcpy/1", *([f"memcpy/{n}"] if n > 1 else []), f"aes-gcm/{engine.name}/1"]
    if n > 1:
        out.append(f"aes-gcm/{engine.name}/{n}")
        if not engine.parallel and crypto_native.usable():
            out.append(f"aes-gcm/{crypto_native.OpenSSLEngine.name}/{n}")
    return out


def fastest_aes(doc: Mapping[str, Any], wl: str | None, op: str) -> dict[str, Any] | None:
    """The fastest raw AES-GCM this run measured for ``op``, whichever engine and threads."""
    aes = [c for c in measured(doc, wl, NAME) if str(c.get("id", "")).startswith(AES)]
    aes = [c for c in aes if op in c["ops"]]
    return min(aes, key=lambda c: median(c, op)) if aes else None


def targets(doc: Mapping[str, Any], t: TargetTable) -> None:
    wl = target_workload(doc)
    rom = row_at(doc, wl, "romulus")
    for op, aes_op, bar, key in (
        ("save", "encrypt", 0.80, "save_vs_aes_all_cores"),
        ("restore", "decrypt", 0.85, "restore_vs_aes_all_cores"),
    ):
        what = f"romulus {op} ≥ {bar:.2f}× raw AES-GCM {aes_op} throughput (fastest way measured)"
        aes = fastest_aes(doc, wl, aes_op)
        if rom is None or aes is None:
            why = missing([("romulus", rom), (f"limits: {aes_op}", aes)])
            t.add(key, what, bar, None, why=why)
            continue
        iv = speedup(
            rom["samples"][op], aes["ops"][aes_op]["seconds"], rom["bytes"] / aes["nbytes"]
        )
        sides = f"romulus {op} vs {aes['name']} {aes_op} (throughput)"
        t.add(key, what, bar, iv, sides=sides, durability=rom["durability"])


register(
    Section(
        NAME,
        "memcpy and raw AES-GCM (one thread, all cores) on the same bytes",
        30,
        contenders=contenders,
        targets=targets,
        ids=ids,
    )
)
