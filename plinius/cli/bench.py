"""``plinius bench``: the main job, the paper's whole evaluation on every backend.

With no arguments it runs on embedded defaults: every registered backend on its default root
(``tmpfs`` and ``romulus`` in /dev/shm, ``ssd`` and ``dax`` on the disk), the paper's model sizes
plus 64 MiB, the fastest crypto engine installed, the shipped MNIST data; it prints tables and
writes ``results.json``, ``report.md`` and PNG figures to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from rich.console import Console

from plinius.backends.registry import open_backend
from plinius.bench.render import (
    ENGINE_COLUMNS,
    SAVE_COLUMNS,
    TARGET_COLUMNS,
    engine_rows,
    save_rows,
    target_rows,
    write_outputs,
)
from plinius.bench.saverestore import PAPER_SIZES_MB
from plinius.bench.suite import SECTIONS, SuiteOptions, run_suite, total_steps
from plinius.cli.common import (
    add_json_flag,
    check_backend,
    int_arg,
    output_dir,
    print_json,
    print_table,
    progress_bar,
    write_text,
)
from plinius.crypto import generate_key, make_engine
from plinius.defaults import all_backend_names, instances
from plinius.errors import ConfigError
from plinius.nn.zoo import layers_for_size
from plinius.provenance import provenance

SCHEMA = "plinius-bench/1"
QUICK_SIZES = (10, 64)
DEFAULT_SIZES = tuple(sorted({*PAPER_SIZES_MB, 64}))


def register(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark mirrors and storage on every backend (the main job)",
        description="Save/restore of encrypted mirrors per backend and model size, AES-GCM "
        "engines, Romulus SPS, fio, iteration time versus batch size and mirroring overhead, "
        "with provenance. --quick finishes in under 2 minutes.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"sizes {QUICK_SIZES} MiB, 3 repeats, short fio/SPS/batch sweeps",
    )
    p.add_argument(
        "--backends",
        help="comma-separated names or full specs (default: all "
        "registered, on their default roots)",
    )
    p.add_argument("--sizes", help="comma-separated model sizes in MiB (default: paper + 64)")
    p.add_argument(
        "--repeats", type=int_arg(1, 1000), help="timed repeats per point (default 5, quick 3)"
    )
    p.add_argument("--engine", default="auto", help="auto, cryptography or pycryptodome")
    p.add_argument("--only", help=f"comma-separated sections of {','.join(SECTIONS)}")
    p.add_argument("--skip", help="comma-separated sections to leave out")
    p.add_argument("--out", default="bench-out", help="directory for results.json, report.md, PNG")
    add_json_flag(p)
    p.set_defaults(func=run)


def _parse_sizes(text: str | None, quick: bool) -> list[float]:
    if text is None:
        return [float(s) for s in (QUICK_SIZES if quick else DEFAULT_SIZES)]
    try:
        sizes = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--sizes {text!r}: expected comma-separated numbers of MiB") from None
    if not sizes or any(not math.isfinite(s) or s <= 0 for s in sizes):
        raise ConfigError(f"--sizes {text!r}: sizes must be finite numbers of MiB > 0")
    for s in sizes:
        try:
            layers_for_size(s)
        except ConfigError as exc:
            raise ConfigError(f"--sizes {text!r}: {exc}") from None
    return sizes


def _sections(only: str | None, skip: str | None) -> tuple[str, ...]:
    def parse(text: str, flag: str) -> set[str]:
        names = {x.strip() for x in text.split(",") if x.strip()}
        bad = names - set(SECTIONS)
        if bad or not names:
            raise ConfigError(
                f"{flag} {text!r}: unknown section(s) {', '.join(sorted(bad)) or '(none)'}; "
                f"choose from {', '.join(SECTIONS)}"
            )
        return names

    chosen = parse(only, "--only") if only is not None else set(SECTIONS)
    if skip is not None:
        chosen -= parse(skip, "--skip")
    if not chosen:
        raise ConfigError("--only/--skip leave no section to run")
    return tuple(s for s in SECTIONS if s in chosen)


def _split_backends(text: str | None) -> tuple[list[str], dict[str, str]]:
    """Names to place on default roots, and explicit specs given by the user."""
    if text is None:
        return all_backend_names(), {}
    names, specs = [], {}
    items = [x.strip() for x in text.split(",")]
    if not any(items) or not all(items):
        raise ConfigError(
            f"--backends {text!r}: expected comma-separated backend names or specs, "
            f"e.g. tmpfs,ssd or ssd:/var/tmp/p (registered: {', '.join(all_backend_names())})"
        )
    for item in items:
        if ":" in item:
            name = item.split(":", 1)[0]
            if name in specs:
                raise ConfigError(f"--backends {text!r}: {name} is given twice")
            specs[name] = check_backend(item)
        else:
            names.append(item)
    return names, specs


def run(args: argparse.Namespace) -> int:
    sizes = _parse_sizes(args.sizes, args.quick)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 5)
    sections = _sections(args.only, args.skip)
    engine = make_engine(generate_key(), None if args.engine == "auto" else args.engine)
    names, explicit = _split_backends(args.backends)
    out = output_dir(args.out)
    console = Console(stderr=True)
    runs_on: dict[str, dict[str, Any]] = {}
    with instances(names, explicit) as specs:
        for name, spec in specs.items():
            with open_backend(spec) as b:
                runs_on[name] = b.describe().as_dict()
    opts = SuiteOptions(names, explicit, sizes, repeats, engine, args.quick, sections)
    with progress_bar("bench", console, args.json) as bar:
        task = bar.add_task("bench", total=total_steps(opts))
        doc = run_suite(opts, tick=lambda: bar.advance(task))
    doc = {
        "schema": SCHEMA,
        "provenance": provenance(engine.name),
        "backends": runs_on,
        "parameters": {
            "sizes_mb": sizes,
            "repeats": repeats,
            "engine": engine.name,
            "quick": args.quick,
            "sections": list(sections),
        },
        **doc,
    }
    doc.setdefault("results", [])
    write_text(out / "results.json", json.dumps(doc, indent=2) + "\n", "results")
    write_outputs(doc, out)
    failed = [k for k, v in doc["sections"].items() if v["status"] == "failed"]
    skipped = [k for k, v in doc["sections"].items() if v["status"] == "skipped"]
    if args.json:
        print_json(doc)
        return 1 if failed else 0
    if doc["results"]:
        print_table(save_rows(doc["results"]), SAVE_COLUMNS, title=f"save/restore ({engine.name})")
    if doc.get("engines"):
        print_table(engine_rows(doc["engines"]), ENGINE_COLUMNS, title="AES-GCM, 64 MiB")
    print_table(target_rows(doc), TARGET_COLUMNS, title="targets measured in this run")
    for name, ro in runs_on.items():
        flag = "EMULATED " if ro["emulated"] else ""
        console.print(
            f"  {name}: {flag}{ro['fs_type']} on {ro['device']}, durability {ro['durability']}"
            + (f" — {'; '.join(ro['notes'])}" if ro["notes"] else ""),
            highlight=False,
        )
    for k in failed:
        console.print(f"[red]section {k} failed[/red]: {doc['sections'][k]['error']}")
    for k in skipped:
        console.print(f"[yellow]section {k} not run[/yellow]: {doc['sections'][k]['error']}")
    console.print(f"wrote {out / 'results.json'}, {out / 'report.md'} and PNG figures")
    return 1 if failed else 0
