"""``plinius crash-test``: SIGKILL the trainer at random moments, with and without mirror."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from plinius.cli.common import add_json_flag
from plinius.experiments.crash import RUNS, CrashOptions, markdown, plot, run_crash_test
from plinius.experiments.placement import run_specs
from plinius.experiments.workspace import publish, workspace


def register(sub: Any) -> None:
    p = sub.add_parser(
        "crash-test",
        help="kill the trainer at random moments and restart it (the paper's Fig. 9)",
    )
    p.add_argument("--model", help="zoo name or .cfg (default: batch; quick: tiny)")
    p.add_argument(
        "--backend",
        default="tmpfs",
        help="backend name, or NAME:DIRECTORY to keep the run instances there",
    )
    p.add_argument("--key-file", help="owner key (default: a throw-away key)")
    p.add_argument("--iterations", type=int, help="default 500 (quick: 60)")
    p.add_argument("--kills", type=int, help="default 9 (quick: 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="owner's encrypted dataset (default: embedded MNIST)")
    p.add_argument("--quick", action="store_true", help="tiny model, 60 iterations, 3 kills")
    p.add_argument("--out", default="crash-out", help="directory for results.json, report.md, PNG")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    with workspace(args.key_file, args.data, args.seed, "crash") as ws:
        opts = CrashOptions(
            model=args.model or ("tiny" if args.quick else "batch"),
            backend=args.backend,
            key_file=ws.key_file,
            iterations=args.iterations or (60 if args.quick else 500),
            kills=args.kills if args.kills is not None else (3 if args.quick else 9),
            seed=args.seed,
            data=ws.data,
            state_dir=ws.state_dir,
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
