"""``plinius spot``: replay a spot price trace, killing and restarting the trainer (Fig. 10).

Prints one summary (the report: trace, bid, each arm's cost and progress, totals); the state of
every replayed slot only with ``--verbose``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console

from plinius.apps.trainer import MAX_SEED
from plinius.backends.catalog import DEFAULT_SCRATCH
from plinius.cli.common import (
    add_json_flag,
    check_experiment_inputs,
    float_arg,
    int_arg,
)
from plinius.cli.crashtest import add_vm_loss_flags, check_vm_loss_args
from plinius.lab.experiments import vmreport
from plinius.lab.experiments.placement import run_specs
from plinius.lab.experiments.vmloss import VM_RUNS, replica_target
from plinius.lab.experiments.workspace import publish, workspace
from plinius.lab.spot.experiment import (
    DEFAULT_BID,
    RUNS,
    SpotOptions,
    markdown,
    plot,
    run_spot,
    run_spot_vm_loss,
)
from plinius.lab.spot.trace import MAX_PRICE, SpotTrace, load_trace

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
        default=DEFAULT_BID,
        help="maximum bid in USD/hour",
    )
    p.add_argument(
        "--slot-seconds",
        type=float_arg(0, MAX_SLOT_SECONDS, lo_open=True),
        help="real seconds per 5-minute slot, > 0 (default 5, --vm-loss 1.5; quick 0.15, 0.25)",
    )
    p.add_argument(
        "--start", type=int_arg(0), help="first trace slot (default: a window with interruptions)"
    )
    p.add_argument(
        "--window",
        type=int_arg(1),
        help="slots searched for interruptions (default 160, quick 32); with --vm-loss also the "
        "slots replayed (default 160): its switch-offs are the loss schedule every arm replays",
    )
    p.add_argument("--model", help="default batch (quick: tiny)")
    p.add_argument("--iterations", type=int_arg(1), help="default 500, --vm-loss 250 (quick: 200)")
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
    add_vm_loss_flags(
        p, "slot 1.5 s (quick 0.25), 250 iterations, window 160, from the trace's first slots"
    )
    p.add_argument("--out", default="spot-out", help="directory for results.json, report.md, PNG")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also print every replayed slot of every run as it happens (on stderr)",
    )
    add_json_flag(p)
    p.set_defaults(func=run)


def _given(value: _T | None, default: _T) -> _T:
    """``value`` unless the flag was left out (0 is a value, not a request for the default)."""
    return default if value is None else value


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    check_experiment_inputs(args)
    check_vm_loss_args(args)
    trace = load_trace(args.trace, seed=args.seed)
    if args.vm_loss:  # three arms in < 5 minutes: shorter slots and runs, the early window
        quick_slot, long_slot, long_iterations, quick_window = 0.25, 1.5, 250, 160
    else:
        quick_slot, long_slot, long_iterations, quick_window = 0.15, 5.0, 500, 32
    with workspace(args.key_file, args.data, args.seed, "spot") as ws:
        opts = SpotOptions(
            model=args.model or ("tiny" if args.quick else "batch"),
            backend=args.backend,
            key_file=ws.key_file,
            iterations=_given(args.iterations, 200 if args.quick else long_iterations),
            bid=args.bid,
            slot_seconds=_given(args.slot_seconds, quick_slot if args.quick else long_slot),
            start=args.start,
            window=_given(args.window, quick_window if args.quick else 160),
            seed=args.seed,
            data=ws.data,
            state_dir=ws.state_dir,
            platform_dir=ws.platform_dir,
        )

        def tick(run: str, slot: int, on: bool) -> None:
            if args.verbose:
                state = "running" if on else "OFF (killed)"
                console.print(f"  {run}: slot {slot} {state}", highlight=False)

        if args.vm_loss:
            return _vm_loss(args, opts, trace, ws.tmp / "runs", tick)
        with run_specs(args.backend, list(RUNS)) as specs:
            result = run_spot(opts, trace, specs, ws.tmp / "runs", tick)
    publish(
        "plinius-spot/1", opts.__dict__, result, args.out, "spot.png", markdown, plot, args.json
    )
    return 0 if result["complete"] else 1


def _vm_loss(
    args: argparse.Namespace,
    opts: SpotOptions,
    trace: SpotTrace,
    workdir: Path,
    tick: Callable[[str, int, bool], None],
) -> int:
    """The three ``--vm-loss`` arms through the same trace window, one report and figure."""
    with replica_target(args.replica) as target, run_specs(args.backend, list(VM_RUNS)) as specs:
        if target.spec is None:
            Console(stderr=True).print(f"  local_replica: {target.reason}")
        result = run_spot_vm_loss(opts, trace, specs, workdir, target, args.replica_every, tick)
    setup = (
        f"Trace {result['trace']} from slot {result['start_slot']} to slot "
        f"{result['end_slot'] - 1} (the replayed window), bid {opts.bid}, one 5-minute slot "
        f"replayed as {opts.slot_seconds} s; model `{opts.model}` to {opts.iterations} "
        f"iterations; backend `{opts.backend}`. Above the bid the VM is reclaimed: the "
        "window's switch-offs are one loss schedule, drawn before any arm ran and replayed by "
        "every arm. Cost: the running slots each arm used, at the trace's prices."
    )
    publish(
        "plinius-spot-vm-loss/1",
        {**opts.__dict__, "replica_every": args.replica_every},
        result,
        args.out,
        "spot-vm-loss.png",
        lambda doc: vmreport.markdown(doc, "plinius spot", setup),
        lambda doc, path: vmreport.plot(doc, path, "plinius spot"),
        args.json,
    )
    return 0 if result["complete"] and result["same_losses"] else 1
