"""``plinius spot``: replay a spot price trace, killing and restarting the trainer (Fig. 10)."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from plinius.cli.common import add_json_flag
from plinius.experiments.placement import run_specs
from plinius.experiments.spot import RUNS, SpotOptions, markdown, plot, run_spot
from plinius.experiments.workspace import publish, workspace
from plinius.spot.trace import load_trace, synthetic_trace


def register(sub: Any) -> None:
    p = sub.add_parser("spot", help="replay a spot price trace against the trainer (Fig. 10)")
    p.add_argument("--trace", help="CSV price,slot or AWS JSON (default: seeded synthetic week)")
    p.add_argument("--bid", type=float, default=0.0955, help="maximum bid in USD/hour")
    p.add_argument(
        "--slot-seconds", type=float, help="real seconds per 5-minute slot (default 5; quick 0.15)"
    )
    p.add_argument(
        "--start", type=int, help="first trace slot (default: a window with interruptions)"
    )
    p.add_argument(
        "--window", type=int, help="slots searched for interruptions (default 160, quick 32)"
    )
    p.add_argument("--model", help="default batch (quick: tiny)")
    p.add_argument("--iterations", type=int, help="default 500 (quick: 200)")
    p.add_argument("--backend", default="tmpfs", help="backend name or NAME:DIRECTORY")
    p.add_argument("--key-file", help="owner key (default: a throw-away key)")
    p.add_argument("--data", help="owner's encrypted dataset (default: embedded MNIST)")
    p.add_argument("--seed", type=int, default=0, help="training seed and synthetic trace seed")
    p.add_argument("--quick", action="store_true", help="tiny model, short trace window")
    p.add_argument("--out", default="spot-out", help="directory for results.json, report.md, PNG")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    trace = load_trace(args.trace) if args.trace else synthetic_trace(seed=args.seed)
    with workspace(args.key_file, args.data, args.seed, "spot") as ws:
        opts = SpotOptions(
            model=args.model or ("tiny" if args.quick else "batch"),
            backend=args.backend,
            key_file=ws.key_file,
            iterations=args.iterations or (200 if args.quick else 500),
            bid=args.bid,
            slot_seconds=args.slot_seconds or (0.15 if args.quick else 5.0),
            start=args.start,
            window=args.window or (32 if args.quick else 160),
            seed=args.seed,
            data=ws.data,
            state_dir=ws.state_dir,
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
