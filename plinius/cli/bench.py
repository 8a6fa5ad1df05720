"""``plinius bench``: the main job, the paper's whole evaluation on every backend.

With no arguments it runs the embedded default plan (``plinius.lab.plan.DEFAULT_PLAN``): enough
backend *instances* that every comparison is like for like: ``romulus`` and ``tmpfs`` in
/dev/shm (process-crash), ``romulus?mode=msync`` on the disk beside ``ssd`` and ``dax``
(power-fail), plus any registered third-party backend on its default root; the paper's model
sizes plus 64 (zoo models ``size-N``, mirrored with their momentum as training does), the
fastest crypto engine installed, the shipped MNIST data. It prints tables and writes
``results.json``, ``report.md`` (ending with a recommendation per durability level) and PNG
figures to ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from plinius.backends.catalog import loadable
from plinius.backends.registry import open_backend
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
from plinius.core.crypto import generate_key, make_engine
from plinius.core.errors import ConfigError
from plinius.core.units import parse_size
from plinius.lab.bench.answer import markdown as render_answer
from plinius.lab.bench.contenders import DEFAULT_ROUNDS
from plinius.lab.bench.contention import Extension
from plinius.lab.bench.render import (
    CONSOLE_SAVE_COLUMNS,
    ENGINE_COLUMNS,
    SUMMARY_COLUMNS,
    TARGET_COLUMNS,
    UNITS,
    doc_targets,
    engine_rows,
    normalise,
    save_rows,
    summary_rows,
    target_rows,
    write_outputs,
)
from plinius.lab.bench.saverestore import PAPER_SIZES_MB
from plinius.lab.bench.suite import (
    QUICK_ROUNDS,
    SuiteOptions,
    run_suite,
    section_names,
    total_steps,
)
from plinius.lab.bench.workloads import FILE_PREFIX, workload_specs
from plinius.lab.plan import (
    DEFAULT_PLAN,
    InstancePlan,
    all_backend_names,
    plan_instances,
    probe,
    unique_labels,
)
from plinius.lab.profiles import profile
from plinius.lab.reporting.provenance import contention_facts, cpu_times, load_average, provenance
from plinius.nn.zoo import layers_for_size

SCHEMA = "plinius-bench/1"
QUICK_SIZES = (10, 64)
DEFAULT_SIZES = tuple(sorted({*PAPER_SIZES_MB, 64}))
#: real-model workloads of a full run (``--workloads all``: every one); none in --quick
DEFAULT_WORKLOADS = ("resnet50+sgd-momentum",)
#: the answer's defaults: a 100 MiB mirror, one-second steps, a mirror every 100 steps
DEFAULT_MIRROR = "100M"
DEFAULT_STEP_S = 1.0
DEFAULT_EVERY = 100
#: what the answer runs: the backends and, where installed, what users do instead
ANSWER_SECTIONS = ("save", "peers")
#: the answer's rounds end by this many seconds after the start, extended or not (the 3 minutes
#: the whole answer may take, less the set-up and the report)
ANSWER_BUDGET_S = 150.0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark mirrors and storage on every backend (the main job)",
        description="Save/restore of encrypted mirrors per backend and model size, AES-GCM "
        "engines, Romulus SPS, fio, iteration time versus batch size and mirroring overhead, "
        "with provenance. --quick finishes in under 2 minutes.",
    )
    p.add_argument(
        "--mirror-size",
        help="the answer for a mirror of this size (bytes, or K/M/G suffixes: 100M, 2G; "
        f"default {DEFAULT_MIRROR}): a synthetic model whose mirror (weights + momentum) is "
        "that big",
    )
    p.add_argument(
        "--workload",
        help="the answer for a real model's shapes instead: resnet50+adam, bert-base+adam, "
        "gpt2-small+adam, ... (see --workloads), or your own checkpoint: a .safetensors file "
        "(its header is read, nothing else) or a .pt/.pth state_dict (needs torch)",
    )
    p.add_argument(
        "--step-time",
        type=float,
        default=DEFAULT_STEP_S,
        help=f"seconds per training step, for the overhead per step (default {DEFAULT_STEP_S:g})",
    )
    p.add_argument(
        "--every",
        type=int_arg(1, 10**9),
        default=DEFAULT_EVERY,
        help=f"mirror every N steps, for the overhead and the work lost (default {DEFAULT_EVERY})",
    )
    p.add_argument(
        "--paper",
        action="store_true",
        help="the paper's whole evaluation instead of the answer: every size of Fig. 7, the "
        "real-model workloads and every section (tens of minutes on 2 cores)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"models size-N for N in {QUICK_SIZES}, {QUICK_ROUNDS} rounds (fewer than the "
        f"{DEFAULT_ROUNDS} a trustworthy interval wants; the report says so), no real-model "
        "workload, short fio/SPS/batch sweeps",
    )
    p.add_argument(
        "--backends",
        help="comma-separated backend instances: NAME or NAME?opt=v (a fresh instance on the "
        "backend's default root) or a full spec NAME:LOCATION?opt=v (used as given); two "
        "instances of one backend are two rows (default: the like-for-like plan: romulus, "
        "tmpfs, romulus?mode=msync on the disk, dax, ssd)",
    )
    p.add_argument(
        "--sizes",
        help="comma-separated N of the zoo models size-N (N MiB of parameters; the mirror adds "
        "momentum: about 2N MiB) (default: paper + 64)",
    )
    p.add_argument(
        "--rounds",
        "--repeats",
        dest="repeats",
        type=int_arg(1, 1000),
        help=f"interleaved rounds: every backend, peer and limit once per round, order rotated "
        f"(default {DEFAULT_ROUNDS}, quick {QUICK_ROUNDS})",
    )
    p.add_argument(
        "--max-rounds",
        type=int_arg(1, 1000),
        help="while the machine is contended (load above the cores, CPU steal, a slowed CPU "
        "probe), go on up to this many rounds so intervals can still separate (default: twice "
        f"--rounds for the answer, within {ANSWER_BUDGET_S:g} s of the start; --rounds with "
        "--paper)",
    )
    p.add_argument(
        "--workloads",
        help="comma-separated real-model workloads beside the size-N models (resnet50, "
        "resnet50+sgd-momentum, bert-base+adam, gpt2-small+adam, ...), 'all' or 'none' "
        f"(default: {','.join(DEFAULT_WORKLOADS)}; none with --quick or --sizes)",
    )
    p.add_argument(
        "--engine",
        default="auto",
        help="crypto engine: auto (the fastest, measured here), openssl, cryptography, "
        "pycryptodome "
        "or a plug-in's name",
    )
    p.add_argument(
        "--world-size",
        type=int_arg(1, 64),
        help="ranks of the distributed section (torchrun, launched by it; default 2): "
        "TorchMirror against DCP for DDP and FSDP2, plus save time at W = 1, 2, 4; runs that "
        "section alone unless --only names others",
    )
    p.add_argument("--only", help=f"comma-separated sections of {','.join(section_names())}")
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


def _workloads(text: str | None, narrowed: bool) -> tuple[str, ...]:
    """The named workloads: the user's, else the default ones unless --quick or --sizes
    narrowed the run to the models it names."""
    if text is None:
        return () if narrowed else DEFAULT_WORKLOADS
    if text.strip() == "none":
        return ()
    from plinius.lab.bench.workloads import workload_labels

    known = workload_labels(optimizer=True)
    if text.strip() == "all":
        return tuple(known)
    names = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    bad = [n for n in names if n not in known and not n.startswith("size-")]
    if bad or not names:
        raise ConfigError(
            f"--workloads {text!r}: unknown workload(s) {', '.join(bad) or '(none)'}; "
            f"choose from {', '.join(known)}, 'all' or 'none'"
        )
    return names


def _sections(only: str | None, skip: str | None) -> tuple[str, ...]:
    known = section_names()

    def parse(text: str, flag: str) -> set[str]:
        names = {x.strip() for x in text.split(",") if x.strip()}
        bad = names - set(known)
        if bad or not names:
            raise ConfigError(
                f"{flag} {text!r}: unknown section(s) {', '.join(sorted(bad)) or '(none)'}; "
                f"choose from {', '.join(known)}"
            )
        return names

    chosen = parse(only, "--only") if only is not None else set(known)
    if skip is not None:
        chosen -= parse(skip, "--skip")
    if not chosen:
        raise ConfigError("--only/--skip leave no section to run")
    return tuple(s for s in known if s in chosen)


def _plan(text: str | None) -> list[InstancePlan]:
    """The instances to benchmark: the default plan, or the user's ``--backends`` items."""
    if text is None:
        planned = {p.name for p in DEFAULT_PLAN}
        # a registered backend that cannot be loaded (a missing optional dependency) is listed
        # as "not run" with its install hint instead of vanishing from the plan
        extra = [
            InstancePlan(n, optional=n not in loadable())
            for n in all_backend_names()
            if n not in planned and profile(n).extra
        ]
        return unique_labels([*DEFAULT_PLAN, *extra])
    items = [x.strip() for x in text.split(",")]
    if not any(items) or not all(items):
        raise ConfigError(
            f"--backends {text!r}: expected comma-separated backend names or specs, "
            f"e.g. tmpfs,ssd,ssd?direct=1 or ssd:/var/tmp/p "
            f"(registered: {', '.join(all_backend_names())})"
        )
    plan = []
    for item in items:
        p = InstancePlan.from_text(item)
        if p.spec is not None:
            check_backend(p.spec)
        plan.append(p)
    try:
        return unique_labels(plan)
    except ConfigError as exc:
        raise ConfigError(f"--backends {text!r}: {exc}") from None


def _probe_optional(plan: list[InstancePlan]) -> tuple[list[InstancePlan], list[dict[str, Any]]]:
    """Drop optional instances their backend does not accept (yet); say why in the plan record."""
    kept, record = [], []
    for p in plan:
        reason = probe(p) if p.optional else None
        entry = {
            "instance": p.label,
            "backend": p.name,
            "options": dict(p.options),
            "role": p.role,
            "root": None if p.spec or reason else p.root_kind(),
            "spec": p.spec,
            "status": "not run" if reason else "run",
        }
        if reason:
            entry["reason"] = reason
        else:
            kept.append(p)
        record.append(entry)
    return kept, record


def _answer_workload(
    args: argparse.Namespace,
) -> tuple[list[float], tuple[str, ...], str, int | None]:
    """``(sizes, workloads, the workload answered, the mirror bytes asked for)``."""
    if args.workload is not None:
        if args.mirror_size is not None:
            raise ConfigError("--mirror-size and --workload name the mirror twice: give one")
        if Path(args.workload).suffix in (".safetensors", ".pt", ".pth"):
            label = FILE_PREFIX + str(Path(args.workload).resolve())
            workload_specs(label)  # a file that is not a checkpoint: one line, before the run
            return [], (label,), label, None
        (name,) = _workloads(args.workload, True) or ("",)
        if not name or "," in args.workload:
            raise ConfigError(f"--workload {args.workload!r}: give one workload")
        return [], (name,), name, None
    text = args.mirror_size or DEFAULT_MIRROR
    try:
        nbytes = parse_size(text, "--mirror-size")
    except ConfigError as exc:
        raise ConfigError(f"{exc} (e.g. --mirror-size 100M)") from None
    if nbytes < 1 << 20:
        raise ConfigError(f"--mirror-size {text}: at least 1M")
    # size-N holds N MiB of parameters and as much momentum: the mirror is about 2N MiB
    n = round(nbytes / (1 << 20) / 2, 2)
    layers_for_size(n)  # refuses a size the zoo cannot build, in one line
    return [n], (), f"size-{n:g}", nbytes


def missing_tools(sections: Sequence[str], backends: Sequence[str]) -> list[str]:
    """What this run will do without, found before it starts: one line each, with the
    install hint (plain text: never read as console markup)."""
    out = []
    try:
        import matplotlib  # noqa: F401 - only whether it imports
    except ImportError:
        out.append("no matplotlib: figures are skipped (pip install 'plinius[plot]')")
    if "fio" in sections and shutil.which("fio") is None:
        out.append("no fio: the fio section is skipped (apt-get install fio)")
    if any(b.startswith("redis") for b in backends) and shutil.which("redis-server") is None:
        out.append("no redis-server: the redis rows are not run (apt-get install redis-server)")
    wants_torch = {"peers", "torch"} & set(sections)
    if wants_torch and importlib.util.find_spec("torch") is None:
        out.append(
            f"no torch: the torch rows of {', '.join(sorted(wants_torch))} are not run "
            "(pip install 'plinius[bench]', Python 3.11)"
        )
    return out


def _answer_mode(args: argparse.Namespace) -> bool:
    paper = args.paper or args.quick or args.sizes is not None or args.workloads is not None
    if paper and (args.mirror_size is not None or args.workload is not None):
        raise ConfigError(
            "--mirror-size/--workload ask for the answer; --paper, --quick, --sizes and "
            "--workloads run the paper's grid: use one or the other"
        )
    if not math.isfinite(args.step_time) or args.step_time <= 0:
        raise ConfigError(f"--step-time {args.step_time}: seconds > 0")
    return not paper


def _extension(args: argparse.Namespace, answer: bool, repeats: int, t0: float) -> Extension:
    """How far a contended run may extend its rounds (:mod:`plinius.lab.bench.contention`)."""
    if args.max_rounds is not None:
        if args.max_rounds < repeats:
            raise ConfigError(f"--max-rounds {args.max_rounds}: at least --rounds ({repeats})")
        return Extension(args.max_rounds, t0 + ANSWER_BUDGET_S if answer else None)
    if answer:
        return Extension(2 * repeats, t0 + ANSWER_BUDGET_S)
    return Extension(repeats)


def run(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    load_before = load_average()
    cpu_before = cpu_times()
    answer = _answer_mode(args)
    answered, asked = "", None
    if answer:
        sizes, workloads, answered, asked = _answer_workload(args)
    else:
        sizes = _parse_sizes(args.sizes, args.quick)
        workloads = _workloads(args.workloads, args.quick or args.sizes is not None)
    repeats = (
        args.repeats
        if args.repeats is not None
        else (QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS)
    )
    extension = _extension(args, answer, repeats, t0)
    if args.world_size is not None and args.only is None:
        args.only = "distributed"  # --world-size asks for the distributed section
    sections = _sections(args.only, args.skip)
    if args.world_size is not None and "distributed" not in sections:
        raise ConfigError(
            "--world-size sets the distributed section's ranks: --only/--skip "
            "leave that section out"
        )
    if answer and not set(sections) & set(ANSWER_SECTIONS):
        answer = False  # only sections the answer page does not hold: their own report
    if answer and args.only is None:
        sections = tuple(s for s in sections if s in ANSWER_SECTIONS)
    engine = make_engine(generate_key(), None if args.engine == "auto" else args.engine)
    plan, plan_record = _probe_optional(_plan(args.backends))
    out = output_dir(args.out)
    console = Console(stderr=True)
    if not args.json:
        for line in missing_tools(sections, [p.name for p in plan]):
            console.print(line, markup=False, highlight=False)
    runs_on: dict[str, dict[str, Any]] = {}
    with plan_instances(plan) as pairs:
        for p, spec in pairs:
            with open_backend(spec) as b:
                runs_on[p.label] = {"instance": p.label, "role": p.role, **b.describe().as_dict()}
    for entry in plan_record:
        if entry["instance"] in runs_on:
            entry["durability"] = runs_on[entry["instance"]]["durability"]
            entry["emulated"] = runs_on[entry["instance"]]["emulated"]
    opts = SuiteOptions(
        plan,
        sizes,
        repeats,
        engine,
        args.quick,
        sections,
        workloads=workloads,
        extension=extension,
        world_size=args.world_size,
    )
    with progress_bar("bench", console, args.json) as bar:
        task = bar.add_task("bench", total=total_steps(opts))

        def grow(n: int) -> None:
            now = next(t for t in bar.tasks if t.id == task)
            bar.update(task, total=(now.total or 0) + n)

        doc = run_suite(opts, tick=lambda: bar.advance(task), grow=grow)
    doc = {
        "schema": SCHEMA,
        "provenance": provenance(engine.name, load_before),
        "contention": contention_facts(load_before, cpu_before, doc.get("results") or []),
        "backends": runs_on,
        "plan": plan_record,
        "parameters": {
            "sizes_mb": sizes,
            "repeats": repeats,
            "rounds": repeats,
            "rounds_note": (
                f"quick run: {repeats} rounds (a full run takes {DEFAULT_ROUNDS})"
                if args.quick and repeats < DEFAULT_ROUNDS
                else f"{repeats} interleaved rounds, order rotated"
            ),
            "workloads": list(opts.models),
            "full_workloads": list(opts.full),
            "statistics": "median, 95 % percentile bootstrap (2000 resamples, seed 0), "
            "ratios paired by round",
            "engine": engine.name,
            "quick": args.quick,
            "sections": list(sections),
            "units": "MiB = 2^20 bytes; MiB/s = 2^20 bytes per second",
            **(
                {
                    "answer": {
                        "workload": answered,
                        "step_s": args.step_time,
                        "every": args.every,
                        **({"mirror_bytes": asked} if asked else {}),
                    }
                }
                if answer
                else {}
            ),
        },
        **doc,
    }
    doc.setdefault("results", [])
    normalise(doc)
    doc_targets(doc)
    write_text(out / "results.json", json.dumps(doc, indent=2) + "\n", "results")
    write_outputs(doc, out)
    failed = [k for k, v in doc["sections"].items() if v["status"] == "failed"]
    skipped = [k for k, v in doc["sections"].items() if v["status"] == "skipped"]
    if args.json:
        print_json(doc)
        return 1 if failed else 0
    if answer:
        # the answer, as report.md opens with it (the details stay in the file)
        for line in render_answer(doc, answered, args.step_time, args.every)[:-2]:
            print(line)
        for k in failed:
            console.print(f"[red]section {k} failed[/red]: {escape(doc['sections'][k]['error'])}")
        console.print(f"wrote {out / 'results.json'}, {out / 'report.md'} and PNG figures")
        return 1 if failed else 0
    console.print(UNITS, highlight=False)
    if doc["results"]:
        print_table(
            save_rows(doc["results"]),
            CONSOLE_SAVE_COLUMNS,
            title=f"save/restore ({engine.name}), mirror = weights + momentum",
        )
    if doc.get("engines"):
        print_table(engine_rows(doc["engines"]), ENGINE_COLUMNS, title="AES-GCM, 64 MiB")
    if any(t.get("verdict") != "not run" for t in doc.get("targets", [])):
        print_table(
            target_rows(doc),
            TARGET_COLUMNS,
            title=f"targets measured in this run ({doc['parameters']['rounds_note']}; "
            "median [95% CI])",
        )
    if doc["results"]:
        print_table(
            summary_rows(doc["results"]),
            SUMMARY_COLUMNS,
            title="recommendation per durability level (details in report.md)",
        )
    for entry in plan_record:
        if entry["status"] != "run":
            console.print(
                f"  not run: {entry['instance']} ({entry['role']}): {entry.get('reason')}",
                highlight=False,
            )
    if not doc["results"]:  # only sections with reports of their own (freshness, fio...)
        from plinius.lab.bench.registry import each

        for sec in each(list(sections)):
            for line in sec.render(doc) if sec.render is not None else []:
                print(line)
        runs_on = {}  # no backend ran a save here: nothing to say what it ran on
    for name, ro in runs_on.items():
        flag = "EMULATED " if ro["emulated"] else ""
        console.print(
            f"  {name}: {flag}{ro['fs_type']} on {ro['device']}, durability {ro['durability']}"
            + (f" — {'; '.join(ro['notes'])}" if ro["notes"] else ""),
            highlight=False,
        )
    for k in failed:
        console.print(f"[red]section {k} failed[/red]: {escape(doc['sections'][k]['error'])}")
    for k in skipped:
        why = escape(doc["sections"][k]["error"])
        console.print(f"[yellow]section {k} not run[/yellow]: {why}")
    console.print(f"wrote {out / 'results.json'}, {out / 'report.md'} and PNG figures")
    return 1 if failed else 0
