"""``plinius fio``: the paper's fio characterization (Fig. 2) and the mirror's I/O on every backend.

Finds fio and checks its version (exit 2 with the install command when it is missing or too old),
runs ``fio_jobs/*.fio`` in a scratch directory on each backend's root, prints a table and writes
``fio.json``, ``fio.md`` and ``fio_fig2.png`` to ``--out``. With ``--client`` the same jobs run
through fio's client mode on each ``fio --server`` and the hosts' results are merged, each row
naming its host and the directory, file system and device measured there (never a local
backend: its storage is not what the server measured). A fio job or target that fails is
reported and kept in the files, marked; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from plinius.cli.common import (
    add_json_flag,
    int_arg,
    output_dir,
    print_json,
    print_table,
    progress_bar,
)
from plinius.core.errors import ConfigError, MissingExtraError, PliniusError
from plinius.core.fsutil import check_path
from plinius.core.units import parse_size
from plinius.lab.fio import FioParams, Target, find_fio, plan_targets, run_fio
from plinius.lab.fio.client import parse_clients
from plinius.lab.fio.remote import run_fio_clients
from plinius.lab.fio.report import (
    TABLE_COLUMNS,
    columns,
    emulation_lines,
    failure_lines,
    is_remote,
    plot_fig2,
    render_markdown,
    table_rows,
)
from plinius.lab.fio.runner import count_steps
from plinius.lab.reporting.plots import PLOT_HINT


def register(sub: Any) -> None:
    p = sub.add_parser(
        "fio",
        help="characterize every backend's storage with fio (the paper's Fig. 2)",
        description="Run the fio job files (fig2: 4 KiB sync I/O, fsync per written block, "
        "1/2/4/8 threads, 512 MiB per thread, 3 runs; mirror: one model-sized write + fsync "
        "and one read) against every backend's directory. Emulated PM/DAX targets are marked.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="CI size: 16 MiB per thread, 1 and 2 threads, 1 run, jobs capped at 2 s",
    )
    p.add_argument(
        "--backends",
        help="comma-separated backend names (default romulus,tmpfs,dax,ssd), or NAME:DIR to "
        "measure NAME in a scratch directory inside DIR",
    )
    p.add_argument("--jobs", default="fig2,mirror", help="job files to run (default fig2,mirror)")
    p.add_argument(
        "--runs", type=int_arg(1, 100), help="runs averaged per job (default 3, quick 1)"
    )
    p.add_argument("--threads", help="comma-separated thread counts (default 1,2,4,8; quick 1,2)")
    p.add_argument("--size", help="fig2 file size per thread (default 512M, quick 16M)")
    p.add_argument("--model-size", help="mirror job size (default 100M, quick 16M)")
    p.add_argument(
        "--runtime",
        type=int_arg(0, 86400),
        help="cap per job in seconds, 0 = none (default 5, quick 2)",
    )
    p.add_argument(
        "--pm-engine",
        default="auto",
        choices=["auto", "sync", "libpmem"],
        help="romulus target engine: auto = libpmem on a DAX mount, sync elsewhere; libpmem "
        "forces it even on non-PM memory (PMEM_IS_PMEM_FORCE=1, labelled emulated)",
    )
    p.add_argument(
        "--each-backend",
        action="store_true",
        help="measure every backend separately even when two share a mount and engine",
    )
    p.add_argument(
        "--jobs-dir",
        help="directory of the *.fio files (default: the job files installed with plinius)",
    )
    p.add_argument(
        "--client",
        metavar="HOST[:PORT][,HOST...]",
        help="run the jobs on these `fio --server` hosts (fio's client mode; port default "
        "8765; [V6]:PORT for IPv6) instead of here, and merge their results",
    )
    p.add_argument(
        "--remote-dir",
        metavar="DIR",
        help="with --client: existing directory on every server to run in (default: the "
        "backend's root path, as a local run would use)",
    )
    p.add_argument("--no-plot", action="store_true", help="do not draw fio_fig2.png")
    p.add_argument("--out", default="fio-out", help="directory for fio.json, fio.md, the plot")
    add_json_flag(p)
    p.set_defaults(func=run)


MAX_THREADS = 1024  # fio threads per job; more is a typo, not a machine


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{what} {text!r}: expected comma-separated integers") from None
    if not vals:
        raise ConfigError(f"{what} {text!r}: give at least one value")
    if any(not 1 <= v <= MAX_THREADS for v in vals):
        raise ConfigError(f"{what} {text!r}: each value must be in 1..{MAX_THREADS}")
    return vals


def _size(text: str, flag: str) -> int:
    """``parse_size`` for a flag, also refusing numbers too big to be sizes at all."""
    try:
        return parse_size(text, flag)
    except OverflowError:
        raise ConfigError(f"{flag}={text[:40]!r} is not a size; use e.g. 4096, 64M or 1G") from None


def params_from_args(args: argparse.Namespace) -> FioParams:
    """Defaults of the chosen mode, overridden by whichever flags were given."""
    base = FioParams.quick() if args.quick else FioParams()
    over: dict[str, Any] = {
        "suites": tuple(s.strip() for s in args.jobs.split(",") if s.strip()),
        "pm_engine": args.pm_engine,
        "share_targets": not args.each_backend,
    }
    if args.runs is not None:
        over["runs"] = args.runs
    if args.threads is not None:
        over["threads"] = _ints(args.threads, "--threads")
    if args.size is not None:
        over["size"] = _size(args.size, "--size")
    if args.model_size is not None:
        over["model_size"] = _size(args.model_size, "--model-size")
    if args.runtime is not None:
        over["runtime_s"] = args.runtime
    params = replace(base, **over)
    params.check()
    return params


def split_backends(text: str | None) -> tuple[list[str] | None, dict[str, str]]:
    """Names placed on their default roots, and NAME:DIR pairs the user chose."""
    if text is None:
        return None, {}
    names: list[str] = []
    dirs: dict[str, str] = {}
    items = [x.strip() for x in text.split(",")]
    if not all(items):
        raise ConfigError(f"--backends {text!r}: expected comma-separated NAME or NAME:DIR items")
    for item in items:
        name, sep, where = item.partition(":")
        if sep:
            if not where:
                raise ConfigError(f"--backends item {item!r}: expected NAME or NAME:DIR")
            dirs[name] = where
        names.append(name)
    return names, dirs


def _print_targets(console: Console, targets: list[Target]) -> None:
    for line in emulation_lines(targets):
        console.print(f"  {line}", highlight=False, markup=False)


def run(args: argparse.Namespace) -> int:
    params = params_from_args(args)
    names, dirs = split_backends(args.backends)
    if args.jobs_dir is not None and not Path(check_path(args.jobs_dir, "--jobs-dir")).is_dir():
        raise ConfigError(f"--jobs-dir {args.jobs_dir} is not a directory of *.fio job files")
    clients = parse_clients(args.client) if args.client is not None else []
    if args.remote_dir is not None and not clients:
        raise ConfigError("--remote-dir names a directory on fio servers: give --client too")
    fio = find_fio()  # before anything is created: a missing fio leaves no trace
    out = output_dir(args.out)
    console = Console(stderr=True)
    with progress_bar("fio", console, args.json) as bar:
        total = count_steps(plan_targets(names, dirs, params, fio), params) * max(1, len(clients))
        task = bar.add_task("fio", total=total)
        if clients:
            report = run_fio_clients(
                clients,
                names,
                dirs,
                params,
                remote_dir=args.remote_dir,
                fio=fio,
                jobs=args.jobs_dir,
                tick=lambda: bar.advance(task),
            )
        else:
            report = run_fio(
                names,
                dirs,
                params,
                fio=fio,
                jobs=args.jobs_dir,
                tick=lambda: bar.advance(task),
            )
    doc = report.as_dict()
    plot_note = ""
    plotted = False
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "fio.json").write_text(json.dumps(doc, indent=2) + "\n")
        (out / "fio.md").write_text(render_markdown(report))
    except OSError as exc:
        raise PliniusError(f"cannot write results to {out}: {exc.strerror}") from None
    if "fig2" in params.suites and not args.no_plot:
        try:
            plot_fig2(report, out / "fio_fig2.png")
            plotted = True
        except (ImportError, MissingExtraError):
            plot_note = f"no plot: {PLOT_HINT}"
    if args.json:
        print_json(doc)
    else:
        title = (
            f"plinius fio on fio servers (fio {report.fio['version']}; rows name what each "
            "server measured)"
            if is_remote(report)
            else f"plinius fio (fio {report.fio['version']}; * = emulated)"
        )
        print_table(table_rows(report), columns(report, TABLE_COLUMNS), title=title)
        _print_targets(console, report.targets)
        written = ["fio.json", "fio.md"] + (["fio_fig2.png"] if plotted else [])
        console.print(f"wrote {', '.join(str(out / w) for w in written)}", highlight=False)
    if plot_note:
        console.print(plot_note, highlight=False)
    fails = failure_lines(report)
    for f in fails:
        console.print(f"[red]failed[/red] {escape(f)}", highlight=False)
    return 0 if report.ok else 1
