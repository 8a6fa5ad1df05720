"""``save``: save and restore of the mirror on every backend instance of the plan (Fig. 7,
Table I), in the interleaved rounds of every workload; the like-for-like targets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from plinius.lab.bench.contenders import Contender, Samples
from plinius.lab.bench.registry import Rows, Section, SuiteOptions, WorkloadContext, register
from plinius.lab.bench.saverestore import BackendRun, add_speedups, backend_row, raw_seal_seconds
from plinius.lab.bench.stats import Interval, speedup
from plinius.lab.bench.targets import (
    headline,
    missing,
    model_rows,
    row_at,
    target_workload,
)
from plinius.lab.bench.verdicts import TargetTable
from plinius.lab.plan import modelled

NAME = "save"
PAPER_PM_VS_SSD = {"save": "3.2–3.5×", "restore": "2.5–3.7×"}


def contenders(ctx: WorkloadContext) -> Sequence[Contender]:
    raw = raw_seal_seconds(ctx.engine, ctx.model.records, 3)
    models = modelled(ctx.options.plan)
    runs: list[BackendRun] = []
    try:
        for label, spec in ctx.instances:
            role = ctx.roles.get(label, "")
            runs.append(BackendRun(label, spec, ctx.model, ctx.engine, role, models.get(label)))
    except BaseException:
        for r in runs:
            r.close()
        raise
    ctx.state[NAME] = (runs, raw)
    return [r.contender for r in runs]


def ids(opts: SuiteOptions) -> list[str]:
    """The plan's instance labels: each instance's contender is named by its label."""
    return [p.label for p in opts.plan]


def collect(ctx: WorkloadContext, samples: Mapping[tuple[str, str, str], Samples]) -> Rows:
    runs, raw = ctx.state[NAME]
    rows = [backend_row(r, samples[r.contender.key], raw) for r in runs]
    return add_speedups([r for r in rows if r is not None])


def _mib(n: float) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


def targets(doc: Mapping[str, Any], t: TargetTable) -> None:
    wl = target_workload(doc)
    rom = row_at(doc, wl, "romulus")
    tmpfs = row_at(doc, wl, "tmpfs")
    for op, bar in (("save", 2.5), ("restore", 2.5)):
        what = f"romulus vs tmpfs {op} ≥ {bar:g}× (process-crash durability)"
        if rom is None or tmpfs is None:
            why = missing([("romulus", rom), ("tmpfs", tmpfs)])
            t.add(f"{op}_romulus_vs_tmpfs", what, bar, None, why=why)
            continue
        iv = speedup(rom["samples"][op], tmpfs["samples"][op])
        t.add(
            f"{op}_romulus_vs_tmpfs",
            what,
            bar,
            iv,
            sides=f"romulus vs tmpfs {op}",
            durability=f"{rom['durability']} vs {tmpfs['durability']}",
        )
    ssd = row_at(doc, wl, "ssd")
    msync = row_at(doc, wl, "romulus?mode=msync")
    for op in ("save", "restore"):
        what = f"romulus?mode=msync vs ssd {op}" + (" (ssd cold)" if op == "restore" else "")
        key = f"{op}_msync_vs_ssd"
        if msync is None or ssd is None:
            why = missing([("romulus?mode=msync", msync), ("ssd", ssd)])
            t.add(key, what, None, None, why=why)
            continue
        mine, a = headline(msync) if op == "restore" else (msync["samples"]["save"], "")
        theirs, b = headline(ssd) if op == "restore" else (ssd["samples"]["save"], "")
        sides = (
            f"romulus?mode=msync restore ({a}) vs ssd restore ({b})"
            if op == "restore"
            else "romulus?mode=msync vs ssd save"
        )
        t.add(
            key,
            what,
            None,
            speedup(mine, theirs),
            sides=sides,
            durability=f"{msync['durability']} vs {ssd['durability']}",
        )
    _models(doc, wl, t)
    _pm_vs_baseline(doc, t)


def _models(doc: Mapping[str, Any], wl: str | None, t: TargetTable) -> None:
    """A device model only adds delays to the instance it models: each is compared with that
    one (same durability), never across durability levels; the paper's figure is context."""
    devices: list[dict[str, Any] | None] = [*model_rows(doc, wl)] or [None]
    for i, device in enumerate(devices):
        label = device["instance"] if device else "romulus (PM device model)"
        # "": the model's own pool (same instance without the model) was not in the plan; then
        # nothing is compared, never another instance (it may not even share its durability)
        base_label = (device or {}).get("models")
        base_label = "romulus" if base_label is None else base_label or "its own pool"
        base = row_at(doc, wl, base_label) if base_label != "its own pool" else None
        for op in ("save", "restore"):
            key = f"{op}_pm_device_vs_romulus" + (f":{label}" if i else "")
            what = f"{label} vs {base_label} {op} (the model against the pool it delays)"
            ref = f"paper's Optane vs SSD: {PAPER_PM_VS_SSD[op]}"
            if device is None or base is None:
                why = missing([(label, device), (base_label, base)])
                t.add(key, what, None, None, why=why, reference=ref)
                continue
            iv = speedup(device["samples"][op], base["samples"][op])
            t.add(
                key,
                what,
                None,
                iv,
                sides=f"{label} vs {base_label} {op}",
                durability=f"{device['durability']} vs {base['durability']}",
                reference=f"{ref}; {_model_note(iv, device, op)}",
            )


def _model_note(iv: Interval, device: Mapping[str, Any], op: str) -> str:
    """What a model-vs-pool ratio means: a model only adds waits, so it can tie with the pool
    (its waits hidden in the noise) but never beat it; a "win" is the noise of a busy run."""
    wait = (device.get("save_breakdown") or {}).get("model_wait_s")
    waited = (
        f" (its modelled media added {wait * 1e3:,.1f} ms per save, the background copy's included)"
        if op == "save" and wait
        else ""
    )
    if iv.lo > 1:
        return (
            f"faster than the pool it only delays{waited}: impossible without noise, so this "
            "run's noise (see contention at the top) exceeds the model's waits"
        )
    if iv.hi >= 1:
        return f"a tie: the model's waits{waited} are within the noise"
    return f"slower, as a model that adds waits must be{waited}"


def _pm_vs_baseline(doc: Mapping[str, Any], t: TargetTable) -> None:
    """Every byte-addressable instance at 64 MiB against the file baseline of its own
    durability, and its save against raw AES-GCM of the same bytes."""
    pm = [
        r
        for r in doc.get("results") or []
        if r.get("byte_addressable")
        and r.get("models") is None  # a device model is compared with its pool only
        and r["model_mb"] == 64
        and r.get("baseline")
        and r["baseline"] != r["instance"]
    ]
    if not pm:
        for key, what, bar in (
            ("pm_save_vs_baseline", "PM save vs file baseline of equal durability, size-64", 3.0),
            ("pm_restore_vs_baseline", "PM restore vs file baseline, size-64", 2.0),
            ("pm_save_vs_raw_seal", "PM save / raw AES-GCM, size-64", 0.7),
        ):
            t.add(key, what, bar, None, why="not run: no PM instance beside a baseline at size-64")
    for r in pm:
        d = r["durability"]
        model = f"{r.get('model') or 'size-64'} ({_mib(r['bytes'])} mirror)"
        ivs = r.get("intervals") or {}
        for key, verb, bar in (
            ("speedup_save_vs_baseline", "save", 3.0),
            ("speedup_restore_vs_baseline", "restore", 2.0),
        ):
            v = r.get(key)
            raw_iv = ivs.get(key)
            iv = None if v is None else _interval(raw_iv, float(v))
            t.add(
                f"pm_{verb}_vs_baseline:{r['instance']}",
                f"{r['instance']} {verb} vs {r['baseline']}, {model}",
                bar,
                iv,
                sides=f"{r['instance']} vs {r['baseline']} {verb}",
                durability=f"{d} vs {d}",
                point=not isinstance(raw_iv, dict),
            )
        v = r.get("save_vs_raw_seal")
        t.add(
            f"pm_save_vs_raw_seal:{r['instance']}",
            f"{r['instance']} save / raw AES-GCM, {model}",
            0.7,
            None if v is None else Interval(float(v), float(v), float(v), 1),
            sides=f"{r['instance']} save vs raw encrypt of the same bytes (medians)",
            durability=d,
            point=True,
        )


def _interval(raw: Any, v: float) -> Interval:
    return Interval.from_json(raw) if isinstance(raw, dict) else Interval(v, v, v, 1)


def render(doc: Mapping[str, Any]) -> list[str]:
    from plinius.lab.bench.render import (
        BREAKDOWN_COLUMNS,
        SAVE_COLUMNS,
        breakdown_rows,
        instance_lines,
        save_rows,
    )
    from plinius.lab.reporting.markdown import md_table

    if not doc.get("results"):
        return []
    parts = ["## Save and restore (Fig. 7)", ""]
    lines = instance_lines(dict(doc))
    if lines:
        parts += [*lines, ""]
    rows = save_rows(doc["results"])
    for d in dict.fromkeys(r["durability"] for r in rows):
        parts += [
            f"### Durability {d}",
            "",
            md_table([r for r in rows if r["durability"] == d], SAVE_COLUMNS),
            "",
        ]
    return [
        *parts,
        "File backends: the **cold** restore (file evicted from the page cache after the "
        "save, as after a restart) is the headline, the warm restore the second figure; "
        "`n/a`: the backend has no page cache to evict (RAM, persistent memory, a server).",
        "",
        "### Save breakdown (median seconds: the paper's Table I)",
        "",
        "`background_s`: the work a save leaves running after it returns (romulus: the copy "
        "of main to back), waited for untimed before the next contender runs; it competes "
        "with training for the cores (the overhead section measures that).",
        "",
        md_table(breakdown_rows(doc["results"]), BREAKDOWN_COLUMNS),
        "",
    ]


def figures(doc: Mapping[str, Any], out: Path) -> list[Path]:
    from plinius.lab.reporting import plots

    results = doc.get("results") or []
    if not results:
        return []
    written = [plots.save_restore(results, out / "save_restore.png")]
    if any(
        p.get("speedup_save_vs_baseline") is not None and p.get("baseline") != p["instance"]
        for p in results
    ):
        written.append(plots.speedups(results, out / "speedup.png"))
    return written


register(
    Section(
        NAME,
        "save/restore of the mirror per backend instance and workload (Fig. 7, Table I)",
        10,
        contenders=contenders,
        collect=collect,
        full_only=False,
        targets=targets,
        render=render,
        figures=figures,
        ids=ids,
    )
)
