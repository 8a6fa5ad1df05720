"""``plinius spot``: replay a spot price trace, killing and restarting the trainer (Fig. 10)."""

from __future__ import annotations

import argparse
from typing import Any, TypeVar

from rich.console import Console

from plinius.backends.catalog import DEFAULT_SCRATCH
from plinius.cli.common import (
    add_json_flag,
    check_experiment_inputs,
    float_arg,
    int_arg,
)
from plinius.experiments.placement import run_specs
from plinius.experiments.workspace import publish, workspace
from plinius.spot.experiment import RUNS, SpotOptions, markdown, plot, run_spot
from plinius.spot.trace import MAX_PRICE, load_trace
from plinius.trainer import MAX_SEED

_T = TypeVar("_T")
MAX_SLOT_SECONDS = 3600.0  # one replayed 5-minute slot lasting over an hour is a mistake


def register(sub: Any) -> None:
    p = sub.add_parser(
        "spot",
        help="replay a spot price trace (default: the paper's) against the trainer (Fig. 10)",
    )
    p.add_argument(
        "--trace",
        default="paper",
        metavar="NAME|FILE",
        help="'paper': the paper's AWS c3.2xlarge trace, shipped with plinius (default); "
        "'synthetic': a seeded four-week trace like it (seed: --seed); or a file: CSV "
        "price,slot or AWS describe-spot-price-history JSON (./paper for a file named paper)",
    )
    p.add_argument(
        "--bid",
        type=float_arg(0, MAX_PRICE),
        default=0.0955,
        help="maximum bid in USD/hour",
    )
    p.add_argument(
        "--slot-seconds",
        type=float_arg(0, MAX_SLOT_SECONDS, lo_open=True),
        help="real seconds per 5-minute slot, > 0 (default 5; quick 0.15)",
    )
    p.add_argument(
        "--start", type=int_arg(0), help="first trace slot (default: a window with interruptions)"
    )
    p.add_argument(
        "--window",
        type=int_arg(1),
        help="slots searched for interruptions (default 160, quick 32)",
    )
    p.add_argument("--model", help="default batch (quick: tiny)")
    p.add_argument("--iterations", type=int_arg(1), help="default 500 (quick: 200)")
    p.add_argument("--backend", default=DEFAULT_SCRATCH, help="backend name or NAME:DIRECTORY")
    p.add_argument("--key-file", help="owner key (default: a throw-away key)")
    p.add_argument("--data", help="owner's encrypted dataset (default: embedded MNIST)")
    p.add_argument(
        "--seed",
        type=int_arg(0, MAX_SEED),
        default=0,
        help="training seed, and the trace seed of --trace synthetic",
    )
    p.add_argument("--quick", action="store_true", help="tiny model, short trace window")
    p.add_argument("--out", default="spot-out", help="directory for results.json, report.md, PNG")
    add_json_flag(p)
    p.set_defaults(func=run)


def _given(value: _T | None, default: _T) -> _T:
    """``value`` unless the flag was left out (0 is a value, not a request for the default)."""
    return default if value is None else value


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    check_experiment_inputs(args)
    trace = load_trace(args.trace, seed=args.seed)
    with workspace(args.key_file, args.data, args.seed, "spot") as ws:
        opts = SpotOptions(
            model=args.model or ("tiny" if args.quick else "batch"),
            backend=args.backend,
            key_file=ws.key_file,
            iterations=_given(args.iterations, 200 if args.quick else 500),
            bid=args.bid,
            slot_seconds=_given(args.slot_seconds, 0.15 if args.quick else 5.0),
            start=args.start,
            window=_given(args.window, 32 if args.quick else 160),
            seed=args.seed,
            data=ws.data,
            state_dir=ws.state_dir,
            platform_dir=ws.platform_dir,
        )

        def tick(run: str, slot: int, on: bool) -> None:
            state = "running" if on else "OFF (killed)"
            console.print(f"  {run}: slot {slot} {state}", highlight=False)

        with run_specs(args.backend, list(RUNS)) as specs:
            result = run_spot(opts, trace, specs, ws.tmp / "runs", tick)
    publish(
        "plinius-spot/1", opts.__dict__, result, args.out, "spot.png", markdown, plot, args.json
    )
    return 0 if result["complete"] else 1
