"""The whole benchmark of ``plinius bench``: every section of the paper's evaluation in one run.

Sections: ``save`` (save/restore per backend and model size, Fig. 7 and Table I), ``engines``
(raw versus sealed AES-GCM), ``sps`` (Romulus swaps per second, Fig. 6, and the cost of one
64 MiB transaction), ``fio`` (storage characterisation, Fig. 2), ``batch`` (iteration time with
encrypted versus plaintext data, Fig. 8) and ``overhead`` (mirroring cost per iteration). A
section that fails is recorded with its error and the others still run: partial results are
kept and marked.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from plinius.bench.engine import measure_engines
from plinius.bench.saverestore import run_matrix, steps
from plinius.crypto import Engine
from plinius.defaults import instances
from plinius.errors import PliniusError, ToolMissingError

SECTIONS = ("save", "engines", "sps", "fio", "batch", "overhead")
QUICK_BATCHES = (8, 16, 32, 64, 128)


@dataclass
class SuiteOptions:
    names: list[str]  # backends placed on fresh scratch instances
    explicit: dict[str, str]  # backends the user gave a spec for (reused as given)
    sizes: list[float]
    repeats: int
    engine: Engine
    quick: bool = False
    sections: tuple[str, ...] = SECTIONS
    fio_options: dict[str, Any] = field(default_factory=dict)

    @property
    def backends(self) -> list[str]:
        return [*self.names, *self.explicit]


def total_steps(opts: SuiteOptions) -> int:
    n = steps(len(opts.backends), len(opts.sizes), opts.repeats) if "save" in opts.sections else 0
    return n + sum(1 for s in opts.sections if s != "save")


def _section(
    doc: dict[str, Any], name: str, fn: Callable[[], Any], tick: Callable[[], None]
) -> None:
    try:
        doc[name] = fn()
        doc["sections"][name] = {"status": "ok"}
    except ToolMissingError as exc:
        # an optional external tool: the rest of the benchmark stands, the report says why not
        doc["sections"][name] = {"status": "skipped", "error": str(exc)}
    except (PliniusError, OSError, ValueError, RuntimeError) as exc:
        doc["sections"][name] = {
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "where": traceback.format_exc(limit=3).splitlines()[-3:],
        }
    if name != "save":
        tick()


def run_suite(opts: SuiteOptions, tick: Callable[[], None] = lambda: None) -> dict[str, Any]:
    doc: dict[str, Any] = {"sections": {}}
    if "save" in opts.sections:
        _section(
            doc,
            "results",
            lambda: [
                p.as_dict()
                for p in run_matrix(
                    lambda: instances(opts.names, opts.explicit),
                    opts.sizes,
                    opts.engine,
                    opts.repeats,
                    tick,
                )
            ],
            tick,
        )
    if "engines" in opts.sections:
        _section(
            doc,
            "engines",
            lambda: [e.as_dict() for e in measure_engines(64, max(3, opts.repeats))],
            tick,
        )
    if "sps" in opts.sections:
        _section(doc, "sps", lambda: _sps(opts), tick)
    if "fio" in opts.sections:
        _section(doc, "fio", lambda: _fio(opts), tick)
    if "batch" in opts.sections:
        _section(doc, "batch", lambda: _batch(opts), tick)
    if "overhead" in opts.sections:
        _section(doc, "overhead", lambda: _overhead(opts), tick)
    return doc


def _sps(opts: SuiteOptions) -> dict[str, Any]:
    from plinius.pm import bench as pm_bench

    if opts.quick:
        result = pm_bench.sps(
            txn_sizes=(1, 4, 16, 64, 256, 2048), seconds=0.15, repeats=3, python_seconds=0.05
        )
    else:
        result = pm_bench.sps()
    result["txn_cost"] = pm_bench.txn_cost(64 << 20, repeats=5, engine=opts.engine.name)
    return result


def _fio(opts: SuiteOptions) -> dict[str, Any]:
    from plinius.fio import FioParams, run_fio

    params = FioParams.quick(**opts.fio_options) if opts.quick else FioParams(**opts.fio_options)
    report = run_fio(backends=opts.backends, params=params)
    return dict(report.as_dict())


def _batch(opts: SuiteOptions) -> list[dict[str, Any]]:
    from plinius.bench.iteration import PAPER_BATCHES, batch_sweep

    batches = QUICK_BATCHES if opts.quick else PAPER_BATCHES
    return [p.as_dict() for p in batch_sweep("batch", batches, repeats=3)]


def _overhead(opts: SuiteOptions) -> list[dict[str, Any]]:
    from plinius.bench.iteration import mirror_overhead

    model = "batch" if opts.quick else "mnist"
    return [mirror_overhead(model, iterations=3 if opts.quick else 5).as_dict()]


def _at(results: list[dict[str, Any]], backend: str, mb: float) -> dict[str, Any] | None:
    return next((r for r in results if r["backend"] == backend and r["model_mb"] == mb), None)


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The issues' performance bars, measured in this run (a missing input says so)."""
    out: list[dict[str, Any]] = []

    def add(what: str, value: float | None, bar: str, ok: bool | None) -> None:
        out.append(
            {"target": what, "measured": value, "bar": bar, "met": None if value is None else ok}
        )

    results = doc.get("results") or []
    rom = _at(results, "romulus", 64)
    for key, what, bar, lo in (
        ("speedup_save_vs_ssd", "romulus save vs ssd, 64 MB", ">= 3×", 3.0),
        ("speedup_restore_vs_ssd", "romulus restore vs ssd, 64 MB", ">= 2×", 2.0),
        ("save_vs_raw_seal", "romulus save / raw AES-GCM, 64 MB", ">= 0.70", 0.7),
    ):
        v = None if rom is None else rom.get(key)
        add(what, v, bar, v is not None and v >= lo)
    for e in doc.get("engines") or []:
        add(
            f"seal_into / raw, {e['engine']}, 64 MiB",
            e["seal_vs_raw"],
            ">= 0.90",
            e["seal_vs_raw"] >= 0.9,
        )
    txn = (doc.get("sps") or {}).get("txn_cost")
    if txn:
        add(
            "romulus txn cost / encrypt, 64 MiB",
            txn["txn_over_seal"],
            "<= 0.30",
            txn["txn_over_seal"] <= 0.3,
        )
    b128 = next((p for p in doc.get("batch") or [] if p["batch"] == 128), None)
    add(
        "encrypted / plaintext data, batch 128",
        b128 and b128["ratio"],
        "<= 1.10",
        bool(b128 and b128["ratio"] <= 1.1),
    )
    for o in doc.get("overhead") or []:
        add(
            f"sync mirror overhead, {o['model']} on {o['backend']}",
            o["sync_overhead"],
            "<= 0.10",
            o["sync_overhead"] <= 0.10,
        )
        add(
            f"async mirror overhead, {o['model']} on {o['backend']}",
            o["async_overhead"],
            "<= 0.03",
            o["async_overhead"] <= 0.03,
        )
    return out
