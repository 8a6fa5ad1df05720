"""``plinius crash-test``: SIGKILL the trainer at random moments, with and without mirror."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

from plinius.apps.trainer import MAX_SEED
from plinius.backends.catalog import DEFAULT_SCRATCH
from plinius.backends.registry import backend_class, parse_spec
from plinius.cli.common import (
    add_json_flag,
    check_experiment_inputs,
    int_arg,
)
from plinius.core.errors import ConfigError
from plinius.lab.experiments import vmreport
from plinius.lab.experiments.crash import (
    RUNS,
    CrashOptions,
    kill_points,
    markdown,
    plot,
    run_crash_test,
    run_summary,
)
from plinius.lab.experiments.placement import run_specs
from plinius.lab.experiments.vmloss import VM_RUNS, replica_target, run_mark_arms
from plinius.lab.experiments.workspace import publish, workspace
from plinius.lab.spot.experiment import DEFAULT_BID
from plinius.lab.spot.trace import load_trace


def add_vm_loss_flags(p: argparse.ArgumentParser, defaults: str) -> None:
    """``--vm-loss`` and its replica flags (shared with ``plinius spot``)."""
    p.add_argument(
        "--vm-loss",
        action="store_true",
        help="each interruption loses the VM: the run's local backend instances are deleted; "
        "compares local only, local + replica and no mirror in one report (defaults: "
        f"{defaults}; the platform location is kept, as a counter service)",
    )
    p.add_argument(
        "--replica",
        metavar="SPEC",
        help="with --vm-loss: an existing replica server, e.g. redis://HOST:PORT/0 (default: a "
        "throw-away redis-server started here)",
    )
    p.add_argument(
        "--replica-every",
        type=int_arg(1),
        default=1,
        metavar="R",
        help="with --vm-loss: copy every R-th mirror to the replica (default 1)",
    )


def check_vm_loss_args(args: argparse.Namespace) -> None:
    """``--replica`` only with ``--vm-loss``, and a spec naming a known backend."""
    if args.replica is None:
        return
    if not args.vm_loss:
        raise ConfigError("--replica goes with --vm-loss (it names the replica arm's server)")
    backend_class(parse_spec(args.replica)[0])


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
    p.add_argument(
        "--iterations", type=int_arg(2), help="default 500, --vm-loss 200 (quick: 60), >= 2"
    )
    p.add_argument("--kills", type=int_arg(0), help="default 9, --vm-loss 3 (quick: 3), >= 0")
    p.add_argument("--seed", type=int_arg(0, MAX_SEED), default=0)
    p.add_argument("--data", help="owner's encrypted dataset (default: embedded MNIST)")
    p.add_argument("--quick", action="store_true", help="tiny model, 60 iterations, 3 kills")
    add_vm_loss_flags(p, "batch model, 200 iterations, 3 VM losses")
    p.add_argument("--out", default="crash-out", help="directory for results.json, report.md, PNG")
    add_json_flag(p)
    p.set_defaults(func=run)


def _given(value: int | None, default: int) -> int:
    return default if value is None else value


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    check_experiment_inputs(args)
    check_vm_loss_args(args)
    long_iterations, long_kills = (200, 3) if args.vm_loss else (500, 9)  # --vm-loss: < 5 min
    iterations = _given(args.iterations, 60 if args.quick else long_iterations)
    kills = _given(args.kills, 3 if args.quick else long_kills)
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
            f"{opts.kills} {'VM losses' if args.vm_loss else 'kills'}, backend {args.backend}"
        )
        if args.vm_loss:
            return _vm_loss(args, opts, ws.tmp / "runs", console)
        with run_specs(args.backend, list(RUNS)) as specs:
            result = run_crash_test(
                opts, specs, ws.tmp / "runs", lambda kind, it: console.print(f"  {kind} at {it}")
            )
    publish(
        "plinius-crash/1", opts.__dict__, result, args.out, "crash.png", markdown, plot, args.json
    )
    return 0 if result["exact_resume"] else 1


def _vm_loss(args: argparse.Namespace, opts: CrashOptions, workdir: Path, console: Console) -> int:
    """The three ``--vm-loss`` arms replaying one loss schedule (the seeded kill marks), in one
    report and one figure."""
    price = load_trace("paper").mean_paid_price(DEFAULT_BID)
    marks = kill_points(opts.iterations, opts.kills, opts.seed)
    with replica_target(args.replica) as target, run_specs(args.backend, list(VM_RUNS)) as specs:
        if target.spec is None:
            console.print(f"  local_replica: {target.reason}")
        result = run_mark_arms(
            opts,
            specs,
            workdir,
            target,
            args.replica_every,
            marks,
            price,
            lambda sup: run_summary(sup, sup.spec.backend),
            opts.timeout_s,
            lambda kind, it: console.print(f"  VM loss ({kind}) at {it}"),
        )
    setup = (
        f"Model `{opts.model}`, {opts.iterations} iterations, backend `{opts.backend}`, seed "
        f"{opts.seed}. One loss schedule, drawn once and replayed by every arm: {opts.kills} VM "
        f"losses, each after the seeded kill mark of executed iterations "
        f"{result['kill_marks']} and a seeded fraction of the next iteration. Cost: each arm's "
        f"up-time at the mean spot price paid on the paper's trace at bid {DEFAULT_BID} "
        f"(${price:.4f}/hour)."
    )
    publish(
        "plinius-crash-vm-loss/1",
        {**opts.__dict__, "replica_every": args.replica_every},
        result,
        args.out,
        "crash-vm-loss.png",
        lambda doc: vmreport.markdown(doc, "plinius crash-test", setup),
        lambda doc, path: vmreport.plot(doc, path, "plinius crash-test"),
        args.json,
    )
    return 0 if result["same_final_weights"] and result["same_losses"] else 1
