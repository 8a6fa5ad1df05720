"""``plinius spot``: replay a spot price trace, killing and restarting the trainer (Fig. 10)."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console

from plinius.cli.common import add_json_flag, print_json
from plinius.crypto import generate_key, read_key_file, write_key_file
from plinius.experiments.placement import run_specs
from plinius.experiments.spot import RUNS, SpotOptions, markdown, plot, run_spot
from plinius.owner import default_dataset
from plinius.provenance import provenance
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
    with tempfile.TemporaryDirectory(prefix="plinius-spot-") as tmp:
        key = args.key_file
        if key is None:
            key = str(Path(tmp) / "owner.key")
            write_key_file(key, generate_key())
        data = args.data
        if data is None:  # the owner's step once, so no run pays for it
            data = str(default_dataset(read_key_file(key), Path(tmp), args.seed)[0])
        opts = SpotOptions(
            model=args.model or ("tiny" if args.quick else "batch"),
            backend=args.backend,
            key_file=key,
            iterations=args.iterations or (200 if args.quick else 500),
            bid=args.bid,
            slot_seconds=args.slot_seconds or (0.15 if args.quick else 5.0),
            start=args.start,
            window=args.window or (32 if args.quick else 160),
            seed=args.seed,
            data=data,
            state_dir=str(Path(tmp) / "state"),
        )

        def tick(run: str, slot: int, on: bool) -> None:
            console.print(
                f"  {run}: slot {slot} {'running' if on else 'OFF (killed)'}", highlight=False
            )

        with run_specs(args.backend, list(RUNS)) as specs:
            result = run_spot(opts, trace, specs, Path(tmp) / "runs", tick)
    doc = {
        "schema": "plinius-spot/1",
        "provenance": provenance(),
        "parameters": {**opts.__dict__, "key_file": None, "state_dir": None},
        "result": result,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "report.md").write_text(markdown(doc))
    plot(doc, out / "spot.png")
    if args.json:
        print_json(doc)
    else:
        print(markdown(doc))
        print(f"wrote {out / 'results.json'}, {out / 'report.md'}, {out / 'spot.png'}")
    return 0 if result["complete"] else 1
