"""``plinius report``: plots and Markdown from saved results, without re-running anything.

``--asv [DIR]`` reads asv's results directory (any number of machines, merged into one picture
per figure); ``--bench FILE`` redraws a ``plinius bench`` results.json.
"""

from __future__ import annotations

import argparse
from typing import Any

from plinius.cli.common import output_dir, read_json, write_text
from plinius.lab.reporting import plots
from plinius.lab.reporting.asvresults import find_results_dir, load, save_restore_rows
from plinius.lab.reporting.markdown import check_bench_doc, md_table

BENCH_SCHEMA = "plinius-bench/1"


def register(sub: Any) -> None:
    p = sub.add_parser("report", help="render plots and Markdown from asv or bench results")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--asv",
        nargs="?",
        const="",
        metavar="DIR",
        help="asv results: the results directory, the asv_bench directory, or nothing to find "
        "asv.conf.json from the current directory (repository root or asv_bench/)",
    )
    src.add_argument("--bench", help="results.json written by plinius bench")
    p.add_argument("--engine", help="crypto engine to plot from asv results (default: all)")
    p.add_argument("--out", default="report-out", help="output directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.bench is not None:
        doc = check_bench_doc(
            read_json(args.bench, "bench results (--bench)"), args.bench, BENCH_SCHEMA
        )
        out = output_dir(args.out)
        from plinius.lab.bench.render import write_outputs

        written = write_outputs(doc, out)
        print("wrote " + ", ".join(str(p) for p in written))
        return 0
    data = load(find_results_dir(args.asv or None))
    out = output_dir(args.out)
    rows = save_restore_rows(data, args.engine)
    for r in rows:
        if args.engine is None:
            r["series"] = f"{r['machine']}/{r['backend']}/{r['engine']}"
    lines = ["# plinius report from asv results", ""]
    for name, m in sorted(data.machines.items()):
        lines.append(
            f"- machine `{name}`: {m.get('cpu', '?')}, {m.get('num_cpu', '?')} CPUs, "
            f"{m.get('os', '?')}, RAM {m.get('ram', '?')}"
        )
    if data.skipped:
        lines += ["", "**Skipped (partial results):**", ""]
        lines += [f"- {s}" for s in data.skipped]
    lines += [""]
    written = [out / "report.md"]
    if rows:
        table = [
            {
                "series": r["series"],
                "model": f"size-{r['model_mb']:g}",
                "save ms": r["save_s"] * 1e3,
                "restore ms": r["restore_s"] * 1e3,
            }
            for r in sorted(rows, key=lambda r: (r["series"], r["model_mb"]))
        ]
        lines += [
            "Models are the zoo's `size-N`, saved as training mirrors them (weights + momentum, "
            "about 2N MiB); times are asv's medians.",
            "",
            md_table(table, ["series", "model", "save ms", "restore ms"]),
            "",
        ]
        written.append(
            plots.save_restore(
                rows, out / "save_restore.png", "Save/restore per machine and backend (asv)"
            )
        )
        lines.append("![save/restore](save_restore.png)")
    else:
        lines.append("No save results (SaveContenders) found.")
    write_text(out / "report.md", "\n".join(lines) + "\n", "report")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
