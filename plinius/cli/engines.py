"""``plinius engines``: the AES-GCM ways measured on this machine and what ``auto`` picks.

Prints, per way (engine, libcrypto, threads), op and call size, the GB/s of wall time and the CPU
seconds per GiB; which way ``auto`` takes per size and op for a synchronous mirror (least wall
time) and an asynchronous one (least CPU time: it shares the cores with training); where the table
came from (the cache file and its date, or measured now), the CPU and every libcrypto's version
and path. ``--measure`` measures again and rewrites the cache.
"""

from __future__ import annotations

import argparse
from typing import Any

from plinius.cli.common import add_json_flag, print_json, print_table
from plinius.core import crypto_ways
from plinius.core.crypto import MODES
from plinius.core.crypto_choice import choose_plan
from plinius.core.units import fmt_bytes

GiB = 1 << 30


def register(sub: Any) -> None:
    p = sub.add_parser(
        "engines",
        help="measure the AES-GCM engines here and show what `auto` picks",
        description="Shows the speed of every way to run AES-GCM found here (engine, libcrypto, "
        "threads) at the call sizes a mirror makes, measured on this machine and cached, and "
        "which way `auto` picks per size and op for synchronous and asynchronous mirrors.",
    )
    p.add_argument(
        "--measure", action="store_true", help="measure again and rewrite the cached table"
    )
    add_json_flag(p)
    p.set_defaults(func=run)


def _rate(size: int, seconds: float) -> float:
    return size / seconds / 1e9


def _cpu_per_gib(size: int, cpu_s: float) -> float:
    return cpu_s / (size / GiB)


def document(remeasure: bool = False) -> dict[str, Any]:
    """Everything the command prints, as one JSON-ready document."""
    ways = crypto_ways.discover()
    table = crypto_ways.table(ways, remeasure=remeasure)
    cpu = crypto_ways.cpu()
    versions = crypto_ways.versions(ways)
    plans = {mode: choose_plan(table, mode) for mode in MODES}
    return {
        "cpu": cpu,
        "table_source": table.source,
        "cache_path": str(table.path) if table.path else None,
        "created": table.created,
        "load_when_measured": table.load,
        "sizes": table.sizes,
        "ways": [
            {
                "way": w.name,
                "engine": w.engine,
                "threads": w.threads,
                "library": w.library.label if w.library else None,
                "version": w.library.version_text if w.library else versions.get(w.engine),
                "path": w.library.path if w.library else None,
                "origin": w.library.origin if w.library else None,
            }
            for w in ways
        ],
        "results": [
            {
                "way": way,
                "op": op,
                "size": size,
                "wall_s": wall,
                "cpu_s": cpu_s,
                "gbps": _rate(size, wall),
                "cpu_s_per_gib": _cpu_per_gib(size, cpu_s),
            }
            for op, per in table.results.items()
            for way, cells in per.items()
            for size, (wall, cpu_s) in sorted(cells.items())
        ],
        "choice": {
            mode: {"ways": plan.as_dict(), "describe": plan.describe()}
            for mode, plan in plans.items()
        },
    }


def run(args: argparse.Namespace) -> int:
    doc = document(remeasure=args.measure)
    if args.json:
        print_json(doc)
        return 0
    cpu = doc["cpu"]
    print(f"AES-GCM ways measured on this machine, {cpu['model']} ({cpu['cores']} cores)")
    if doc["table_source"] == "cached":
        source = f"cached at {doc['created']} in {doc['cache_path']}"
    elif doc["cache_path"]:
        source = f"measured now, written to {doc['cache_path']}"
    else:
        source = "measured now (the cache directory is not writable: not kept)"
    print(f"table: {source}; load average {doc['load_when_measured']} when measured")
    if doc["load_when_measured"] > cpu["cores"] + 1:  # up to cores + 1 is the measuring itself
        print(
            f"note: others were running when it was measured (load {doc['load_when_measured']} "
            f"on {cpu['cores']} cores): run `plinius engines --measure` on a quiet machine"
        )
    for w in doc["ways"]:
        if w["library"] and w["threads"] == 1:
            print(f"  {w['library']}: {w['version']}, {w['path']} ({w['origin']})")
        elif w["library"] is None:
            print(f"  {w['engine']}: {w['version'] or 'version unknown'} (one core: holds the GIL)")
    sizes = doc["sizes"]
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for r in doc["results"]:
        row = rows.setdefault((r["op"], r["way"]), {"op": r["op"], "way": r["way"]})
        label = fmt_bytes(r["size"])
        row[f"{label} GB/s"] = round(r["gbps"], 2)
        row[f"{label} CPU-s/GiB"] = round(r["cpu_s_per_gib"], 3)
    columns = ["op", "way"]
    for size in sizes:
        columns += [f"{fmt_bytes(size)} GB/s", f"{fmt_bytes(size)} CPU-s/GiB"]
    print_table(
        [rows[k] for k in sorted(rows)],
        columns,
        title="per call of SIZE bytes in 2 MiB buffers (median of interleaved rounds)",
    )
    choice_rows = []
    for mode, choice in doc["choice"].items():
        for op, per_size in choice["ways"].items():
            choice_rows.append({"op": op, "mode": mode, **per_size})
    print_table(
        choice_rows,
        ["op", "mode", *(fmt_bytes(s) for s in sizes)],
        title="auto picks (sync: least wall time; async: least CPU time, cores shared with "
        "training); a call takes the way of the nearest size",
    )
    for mode, choice in doc["choice"].items():
        print(f"auto, {mode}: {choice['describe']}")
    return 0
