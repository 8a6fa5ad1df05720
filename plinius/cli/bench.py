"""``plinius bench``: the main job. Save/restore of encrypted mirrors on every backend.

With no arguments it runs on embedded defaults: every registered backend on its default root
(``tmpfs`` and ``romulus`` in /dev/shm, ``ssd`` and ``dax`` on the disk), the paper's model sizes,
and the fastest crypto engine installed; it prints a table and writes ``results.json`` and
``report.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from plinius import plots
from plinius.backends.registry import open_backend
from plinius.bench.engine import EngineFigures, measure_engines
from plinius.bench.saverestore import PAPER_SIZES_MB, Point, fmt_ms, run_matrix, steps
from plinius.cli.common import add_json_flag, print_json, print_table
from plinius.crypto import generate_key, make_engine
from plinius.defaults import all_backend_names, scratch_specs
from plinius.errors import ConfigError, PliniusError
from plinius.provenance import provenance
from plinius.reports import md_table, provenance_md

SCHEMA = "plinius-bench/1"
QUICK_SIZES = (10, 64)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark encrypted mirror save/restore on every backend (the main job)",
        description="Save and restore encrypted model mirrors of the paper's sizes on every "
        "backend and report medians, spread, speed-ups versus ssd, and provenance.",
    )
    p.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES} MB, 3 repeats")
    p.add_argument(
        "--backends",
        help="comma-separated backend names or full specs (default: every registered backend "
        "on its default root)",
    )
    p.add_argument("--sizes", help="comma-separated model sizes in MiB (default: paper sizes)")
    p.add_argument("--repeats", type=int, help="timed repeats per point (default 5, quick 3)")
    p.add_argument(
        "--engine", default="auto", help="crypto engine: auto, cryptography, pycryptodome"
    )
    p.add_argument("--out", default="bench-out", help="directory for results.json and report.md")
    add_json_flag(p)
    p.set_defaults(func=run)


def _parse_sizes(text: str | None, quick: bool) -> list[float]:
    if not text:
        return list(QUICK_SIZES if quick else PAPER_SIZES_MB)
    try:
        sizes = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--sizes {text!r}: expected comma-separated numbers of MiB") from None
    if not sizes or any(s <= 0 for s in sizes):
        raise ConfigError(f"--sizes {text!r}: sizes must be positive")
    return sizes


def _split_backends(text: str | None) -> tuple[list[str], dict[str, str]]:
    """Names to place on default roots, and explicit specs given by the user."""
    if not text:
        return all_backend_names(), {}
    names, specs = [], {}
    for item in (x.strip() for x in text.split(",") if x.strip()):
        if ":" in item:
            specs[item.split(":", 1)[0]] = item
        else:
            names.append(item)
    return names, specs


def run(args: argparse.Namespace) -> int:
    sizes = _parse_sizes(args.sizes, args.quick)
    repeats = args.repeats or (3 if args.quick else 5)
    if repeats < 1:
        raise ConfigError("--repeats must be >= 1")
    engine = make_engine(generate_key(), None if args.engine == "auto" else args.engine)
    names, explicit = _split_backends(args.backends)
    console = Console(stderr=True)
    with scratch_specs(names) as scratch:
        specs = {**scratch, **explicit}
        runs_on: dict[str, dict[str, Any]] = {}
        for name, spec in specs.items():
            with open_backend(spec) as b:
                runs_on[name] = b.describe().as_dict()
        with Progress(
            TextColumn("[bold]bench"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
            disable=args.json,
        ) as bar:
            task = bar.add_task("bench", total=steps(len(specs), len(sizes), repeats) + 1)
            engines = measure_engines(mib=64, repeats=repeats)
            bar.advance(task)
            points = run_matrix(specs, sizes, engine, repeats, tick=lambda: bar.advance(task))
    doc = {
        "schema": SCHEMA,
        "provenance": provenance(engine.name),
        "backends": runs_on,
        "parameters": {"sizes_mb": sizes, "repeats": repeats, "engine": engine.name},
        "results": [p.as_dict() for p in points],
        "engines": [e.as_dict() for e in engines],
    }
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
        write_outputs(doc, out)
    except OSError as exc:
        raise PliniusError(f"cannot write results to {out}: {exc.strerror}") from None
    if args.json:
        print_json(doc)
        return 0
    print_table(table_rows(points), TABLE_COLUMNS, title=f"plinius bench ({engine.name})")
    print_table(engine_rows(engines), ENGINE_COLUMNS, title="AES-GCM engines, 64 MiB")
    for name, ro in runs_on.items():
        flag = "EMULATED " if ro["emulated"] else ""
        console.print(
            f"  {name}: {flag}{ro['fs_type']} on {ro['device']}, durability {ro['durability']}"
            + (f" — {'; '.join(ro['notes'])}" if ro["notes"] else "")
        )
    console.print(f"wrote {out / 'results.json'}, {out / 'report.md'} and PNG figures")
    return 0


TABLE_COLUMNS = [
    "backend",
    "MB",
    "save ms",
    "save range",
    "restore ms",
    "restore range",
    "save MB/s",
    "restore MB/s",
    "save ×ssd",
    "restore ×ssd",
    "save/raw AES",
]


def table_rows(points: list[Point]) -> list[dict[str, Any]]:
    rows = []
    for p in points:
        rows.append(
            {
                "backend": p.backend,
                "MB": p.model_mb,
                "save ms (min–max)": _spread(p.save_s, p.save_s_min, p.save_s_max),
                "restore ms (min–max)": _spread(p.restore_s, p.restore_s_min, p.restore_s_max),
                "save MB/s": round(p.save_mbps),
                "restore MB/s": round(p.restore_mbps),
                "save ×ssd": _x(p.speedup_save_vs_ssd),
                "restore ×ssd": _x(p.speedup_restore_vs_ssd),
                "save/raw AES": f"{p.save_vs_raw_seal:.0%}" if p.save_vs_raw_seal else "-",
            }
        )
    return rows


ENGINE_COLUMNS = [
    "engine",
    "raw encrypt MB/s",
    "seal_into MB/s",
    "seal/raw",
    "raw decrypt MB/s",
    "open_into MB/s",
    "open/raw",
]


def engine_rows(engines: list[EngineFigures]) -> list[dict[str, Any]]:
    return [
        {
            "engine": e.engine,
            "raw encrypt MB/s": round(e.raw_encrypt_mbps),
            "seal_into MB/s": round(e.seal_mbps),
            "seal/raw": f"{e.seal_vs_raw:.0%}",
            "raw decrypt MB/s": round(e.raw_decrypt_mbps),
            "open_into MB/s": round(e.open_mbps),
            "open/raw": f"{e.open_vs_raw:.0%}",
        }
        for e in engines
    ]


def _spread(med: float, lo: float, hi: float) -> str:
    return f"{fmt_ms(med)} ({fmt_ms(lo)}–{fmt_ms(hi)})"


def _x(v: float | None) -> str:
    return f"{v:.2f}×" if v is not None else "-"


def write_outputs(doc: dict[str, Any], out: Path) -> list[Path]:
    """report.md and the PNG figures of a bench results document (also used by report)."""
    points = [Point(**p) for p in doc["results"]]
    engines = [
        EngineFigures(**{k: v for k, v in e.items() if k not in ("seal_vs_raw", "open_vs_raw")})
        for e in doc.get("engines", [])
    ]
    written = [out / "report.md"]
    written.append(plots.save_restore(doc["results"], out / "save_restore.png"))
    if any(p.speedup_save_vs_ssd is not None for p in points):
        written.append(plots.speedups(doc["results"], out / "speedup.png"))
    (out / "report.md").write_text(render_markdown(doc, points, engines))
    return written


def render_markdown(doc: dict[str, Any], points: list[Point], engines: list[EngineFigures]) -> str:
    params = doc["parameters"]
    parts = [
        "# plinius bench: encrypted mirror save/restore",
        "",
        f"Model sizes {params['sizes_mb']} MiB (3×3, 256-filter conv layers of 2.25 MiB), "
        f"{params['repeats']} timed repeats after one warm-up, medians with min–max; "
        f"crypto engine `{params['engine']}`. Speed-ups are versus the `ssd` backend in the "
        "same run. Figures from emulated storage are labelled as such below: they are not "
        "real persistent-memory or DAX figures.",
        "",
        md_table(table_rows(points), TABLE_COLUMNS),
        "",
        "### Save breakdown (median seconds: the paper's Table I)",
        "",
        md_table(
            [
                {
                    "backend": p.backend,
                    "MB": p.model_mb,
                    **p.save_breakdown,
                    "encrypt share": f"{p.save_breakdown['encrypt_s'] / p.save_s:.0%}",
                }
                for p in points
            ],
            ["backend", "MB", "encrypt_s", "write_s", "flush_s", "fsync_s", "encrypt share"],
        ),
        "",
        "### AES-GCM engines on one 64 MiB buffer (best of the repeats)",
        "",
        "`seal_into`/`open_into` are plinius' calls into preallocated memory; raw is the "
        "library's own one-shot call on the same bytes at the same address.",
        "",
        md_table(engine_rows(engines), ENGINE_COLUMNS),
        "",
        provenance_md(doc["provenance"], doc["backends"]),
        "",
    ]
    return "\n".join(parts)
