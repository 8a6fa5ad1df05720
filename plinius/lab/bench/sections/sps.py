"""``sps``: Romulus swaps per second (Fig. 6) and the cost of one 64 MiB durable transaction."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from plinius.lab.bench.registry import Section, SuiteOptions, register
from plinius.lab.bench.stats import Interval
from plinius.lab.bench.verdicts import TargetTable

NAME = "sps"
REF_COLUMN = "RomulusLog C++ ref (not this machine)"
MIB = 1 << 20


def run(opts: SuiteOptions) -> dict[str, Any]:
    from plinius.lab.bench import romulus_engine

    if opts.quick:
        result = romulus_engine.sps(
            txn_sizes=(1, 4, 16, 64, 256, 2048), seconds=0.15, repeats=3, python_seconds=0.05
        )
    else:
        result = romulus_engine.sps()
    result["txn_cost"] = romulus_engine.txn_cost(64 << 20, repeats=5, engine=opts.engine.name)
    return result


def targets(doc: Mapping[str, Any], t: TargetTable) -> None:
    txn = (doc.get(NAME) or {}).get("txn_cost")
    if txn:
        v = float(txn["txn_over_seal"])
        t.add(
            "txn_over_seal",
            f"romulus txn cost / encrypt, 64 MiB ({txn.get('mode')}, {txn.get('flush')})",
            0.3,
            Interval(v, v, v, 1),
            at_least=False,
            point=True,
            sides="one durable transaction vs sealing the same bytes (medians)",
            workload="64 MiB transaction",
        )


def reference_note(sps: Mapping[str, Any]) -> str:
    """Where the reference column comes from: never read as a figure of this run."""
    ref = sps.get("reference") or {}
    machine = ref.get("machine") or ref.get("measured_on") or "another machine (an AMD EPYC)"
    date = ref.get("date") or "date not recorded"
    return (
        f"The RomulusLog C++ reference is **not this machine**: measured on {machine}, "
        f"{date}; it is printed for orientation, not compared with this run's figures."
    )


def render(doc: Mapping[str, Any]) -> list[str]:
    from plinius.lab.reporting.markdown import md_table

    sps = doc.get(NAME)
    if not sps:
        return []
    columns = ["mode", "back written by", "swaps/txn", "M swaps/s (C)", "M swaps/s (Python)"]
    parts = [
        "## Romulus swaps per second (Fig. 6), 10^7-byte (9.5 MiB) persistent array",
        "",
        md_table(
            [
                {
                    "mode": r["mode"],
                    "back written by": r.get("back_writes", "-"),
                    "swaps/txn": r["swaps_per_txn"],
                    "M swaps/s (C)": r["sps_c"] / 1e6,
                    "M swaps/s (Python)": (r["sps_python"] or 0) / 1e6,
                    REF_COLUMN: (r["reference_romulus_log"] or 0) / 1e6 or "-",
                }
                for r in sps["rows"]
            ],
            [*columns, REF_COLUMN],
        ),
        "",
        reference_note(sps),
        "",
    ]
    txn = sps.get("txn_cost")
    if txn:
        parts += [
            f"One 64 MiB durable transaction ({txn['mode']}, {txn['flush']}): "
            f"{txn['txn_ms']:.1f} ms ({txn['bytes'] / txn['txn_ms'] * 1e3 / MIB:,.0f} MiB/s) "
            f"against {txn['seal_ms']:.1f} "
            f"ms to seal the same bytes: ratio {txn['txn_over_seal']:.2f}.",
            "",
        ]
    return parts


def plot_rows(sps: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for r in sps.get("rows", []):
        rows.append(
            {
                "series": f"{r['mode']} (C loop)",
                "swaps_per_tx": r["swaps_per_txn"],
                "sps": r["sps_c"],
            }
        )
        if r.get("sps_python"):
            rows.append(
                {
                    "series": f"{r['mode']} (Python)",
                    "swaps_per_tx": r["swaps_per_txn"],
                    "sps": r["sps_python"],
                }
            )
    return rows


def figures(doc: Mapping[str, Any], out: Path) -> list[Path]:
    from plinius.lab.reporting import plots

    if not (doc.get(NAME) or {}).get("rows"):
        return []
    return [plots.sps(plot_rows(doc[NAME]), out / "sps.png")]


register(
    Section(
        NAME,
        "Romulus swaps per second (Fig. 6) and one 64 MiB transaction's cost",
        60,
        run=run,
        targets=targets,
        render=render,
        figures=figures,
    )
)
