"""``plinius crash-test``: SIGKILL the trainer at random moments, with and without mirror."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from plinius.backends.catalog import DEFAULT_SCRATCH
from plinius.cli.common import (
    add_json_flag,
    check_experiment_inputs,
    int_arg,
)
from plinius.experiments.crash import (
    RUNS,
    CrashOptions,
    kill_points,
    markdown,
    plot,
    run_crash_test,
)
from plinius.experiments.placement import run_specs
from plinius.experiments.workspace import publish, workspace
from plinius.trainer import MAX_SEED


def register(sub: Any) -> None:
    p = sub.add_parser(
        "crash-test",
        help="kill the trainer at random moments and restart it (the paper's Fig. 9)",
    )
    p.add_argument("--model", help="zoo name or .cfg (default: batch; quick: tiny)")
    p.add_argument(
        "--backend",
        default=DEFAULT_SCRATCH,
        help="backend name, or NAME:DIRECTORY to keep the run instances there",
    )
    p.add_argument("--key-file", help="owner key (default: a throw-away key)")
    p.add_argument("--iterations", type=int_arg(2), help="default 500 (quick: 60), >= 2")
    p.add_argument("--kills", type=int_arg(0), help="default 9 (quick: 3), >= 0")
    p.add_argument("--seed", type=int_arg(0, MAX_SEED), default=0)
    p.add_argument("--data", help="owner's encrypted dataset (default: embedded MNIST)")
    p.add_argument("--quick", action="store_true", help="tiny model, 60 iterations, 3 kills")
    p.add_argument("--out", default="crash-out", help="directory for results.json, report.md, PNG")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    check_experiment_inputs(args)
    iterations = args.iterations if args.iterations is not None else (60 if args.quick else 500)
    kills = args.kills if args.kills is not None else (3 if args.quick else 9)
    kill_points(iterations, kills, args.seed)  # refuse kills that do not fit before any work
    with workspace(args.key_file, args.data, args.seed, "crash") as ws:
        opts = CrashOptions(
            model=args.model or ("tiny" if args.quick else "batch"),
            backend=args.backend,
            key_file=ws.key_file,
            iterations=iterations,
            kills=kills,
            seed=args.seed,
            data=ws.data,
            state_dir=ws.state_dir,
            platform_dir=ws.platform_dir,
        )
        console.print(
            f"crash-test: {opts.model}, {opts.iterations} iterations, "
            f"{opts.kills} kills, backend {args.backend}"
        )
        with run_specs(args.backend, list(RUNS)) as specs:
            result = run_crash_test(
                opts, specs, ws.tmp / "runs", lambda kind, it: console.print(f"  {kind} at {it}")
            )
    publish(
        "plinius-crash/1", opts.__dict__, result, args.out, "crash.png", markdown, plot, args.json
    )
    return 0 if result["exact_resume"] else 1
