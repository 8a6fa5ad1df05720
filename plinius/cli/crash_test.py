"""``plinius crash-test``: SIGKILL the trainer at random moments, with and without mirror."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console

from plinius.cli.common import add_json_flag, print_json
from plinius.crypto import generate_key, read_key_file, write_key_file
from plinius.experiments.crash import RUNS, CrashOptions, markdown, plot, run_crash_test
from plinius.experiments.placement import run_specs
from plinius.owner import default_dataset
from plinius.provenance import provenance


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
    with tempfile.TemporaryDirectory(prefix="plinius-crash-") as tmp:
        key = args.key_file
        if key is None:
            key = str(Path(tmp) / "owner.key")
            write_key_file(key, generate_key())
        data = args.data
        if data is None:  # the owner's step once, so no run pays for it
            data = str(default_dataset(read_key_file(key), Path(tmp), args.seed)[0])
        opts = CrashOptions(
            model=args.model or ("tiny" if args.quick else "batch"),
            backend=args.backend,
            key_file=key,
            iterations=args.iterations or (60 if args.quick else 500),
            kills=args.kills if args.kills is not None else (3 if args.quick else 9),
            seed=args.seed,
            data=data,
            state_dir=str(Path(tmp) / "state"),
        )
        with run_specs(args.backend, list(RUNS)) as specs:

            def tick(kind: str, it: int) -> None:
                console.print(f"  {kind} at iteration {it}")

            console.print(
                f"crash-test: {opts.model}, {opts.iterations} iterations, "
                f"{opts.kills} kills, backend {args.backend}"
            )
            result = run_crash_test(opts, specs, Path(tmp) / "runs", tick)
    doc = {
        "schema": "plinius-crash/1",
        "provenance": provenance(),
        "parameters": {**opts.__dict__, "key_file": None, "state_dir": None},
        "result": result,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "report.md").write_text(markdown(doc))
    plot(doc, out / "crash.png")
    if args.json:
        print_json(doc)
    else:
        print(markdown(doc))
        print(f"wrote {out / 'results.json'}, {out / 'report.md'}, {out / 'crash.png'}")
    return 0 if result["exact_resume"] else 1
