"""``plinius train``: train in the (simulated) enclave with an encrypted mirror in a backend."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import TextColumn

from plinius.apps.trainer import MAX_SEED, TrainOptions, run_training
from plinius.cli.common import (
    add_json_flag,
    add_state_flags,
    int_arg,
    output_file,
    print_json,
    progress_bar,
    write_text,
)
from plinius.enclave.trusted import StepResult


def register(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train a model in the enclave, mirroring it encrypted into a backend",
        description="Trains MODEL inside the simulated enclave. After every --mirror-every "
        "iterations the whole training state is sealed into the backend in one atomic save; "
        "a later run resumes from it automatically (exactly: same final weights).",
    )
    p.add_argument("--model", required=True, help="zoo name (mnist, tiny, batch, size-N) or .cfg")
    p.add_argument("--backend", required=True, help="backend spec, e.g. romulus:/dev/shm/p.pool")
    p.add_argument("--key-file", required=True, help="the owner's key file (plinius keygen)")
    p.add_argument(
        "--iterations",
        type=int_arg(1),
        help="total iterations to reach, >= 1 (default: the cfg's max_batches)",
    )
    p.add_argument("--mirror-every", type=int_arg(1), default=1, help="mirror every K iterations")
    p.add_argument("--seed", type=int_arg(0, MAX_SEED), default=0, help="0..2^32-1")
    p.add_argument("--fresh", action="store_true", help="ignore an existing mirror")
    p.add_argument("--crash-at", type=int_arg(1), help="SIGKILL this process at iteration K")
    p.add_argument("--log", help="append per-iteration losses to FILE (.csv or .jsonl)")
    p.add_argument("--data", help="the owner's encrypted dataset (plinius owner encrypt-data)")
    p.add_argument("--async-mirror", action="store_true", help="seal and persist in background")
    p.add_argument(
        "--max-in-flight",
        type=int_arg(1),
        default=1,
        metavar="K",
        help="with --async-mirror: up to K snapshots wait for their persist (K snapshots of "
        "memory; they commit one at a time, in order) before a mirror waits (default 1)",
    )
    p.add_argument("--batch", type=int_arg(1), help="override the cfg's batch size")
    add_state_flags(p)
    p.add_argument("--no-mirror", action="store_true", help="train without any mirror")
    p.add_argument(
        "--replica",
        action="append",
        default=[],
        metavar="SPEC",
        help="also copy the sealed mirror to this backend in the background (repeatable); a "
        "restore takes the newest fresh mirror among the primary and its replicas",
    )
    p.add_argument(
        "--replica-every",
        type=int_arg(1),
        default=1,
        metavar="R",
        help="copy every R-th mirror to the replicas (default 1: every mirror)",
    )
    p.add_argument(
        "--replica-max-lag",
        type=int_arg(1),
        metavar="L",
        help="never commit a mirror more than L versions ahead of the newest replica copy: "
        "wait for the copy in flight, stop with an error if copies fail (default 2R); a deleted "
        "primary then rolls back at most L mirrors",
    )
    p.add_argument(
        "--accept-replica-loss",
        type=int_arg(0),
        metavar="N",
        help="when the primary mirror is missing, accept restoring a replica copy up to N "
        "mirrors older than the platform's record even beyond --replica-max-lag or below a "
        "newer copy on an unreachable replica (default: refuse)",
    )
    p.add_argument("--report", help="write the run report as JSON to FILE")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    opts = TrainOptions(
        model=args.model,
        backend=args.backend,
        key_file=args.key_file,
        iterations=args.iterations,
        mirror_every=args.mirror_every,
        seed=args.seed,
        fresh=args.fresh,
        crash_at=args.crash_at,
        log=args.log,
        data=args.data,
        async_mirror=args.async_mirror,
        max_in_flight=args.max_in_flight,
        batch=args.batch,
        state_dir=args.state_dir,
        no_mirror=args.no_mirror,
        replicas=list(args.replica),
        replica_every=args.replica_every,
        replica_max_lag=args.replica_max_lag,
        accept_replica_loss=args.accept_replica_loss,
        platform=args.platform,
    )
    if args.report is not None:
        output_file(args.report, "run report (--report)")
    console = Console(stderr=True)
    # The bar starts with the first step, so an error before training stays one line.
    bar = progress_bar(
        "train",
        console,
        args.json,
        TextColumn("loss {task.fields[loss]}  avg {task.fields[avg]}  mirror {task.fields[ms]} ms"),
    )
    task = bar.add_task("train", total=None, loss="-", avg="-", ms="-")
    started = False

    def on_step(step: StepResult, target: int) -> None:
        nonlocal started
        if not started:
            bar.start()
            started = True
        bar.update(
            task,
            total=target,
            completed=step.iteration,
            loss=f"{step.loss:.4f}",
            avg=f"{step.avg_loss:.4f}",
            ms=f"{step.mirror_s * 1e3:.1f}",
        )

    def say(message: str) -> None:
        # one message, one line (never wrapped: warnings are grepped); specs are not markup
        console.print(message, soft_wrap=True, markup=False, highlight=False)

    try:
        report = run_training(opts, on_step=on_step, say=say)
    finally:
        if started:
            bar.stop()
    doc = report.as_dict()
    if args.report:
        write_text(Path(args.report), json.dumps(doc, indent=2), "run report (--report)")
    if args.json:
        print_json(doc)
        return 0
    print(
        f"{report.model} on {report.dataset}: iterations {report.start_iteration} → "
        f"{report.final_iteration} ({report.iterations_run} run), median iteration "
        f"{report.iteration_s_median * 1e3:.1f} ms, median mirror {report.mirror_ms_median:.2f} ms "
        f"({report.mirrors} mirrors, {report.buffers_per_mirror} buffers, "
        f"{report.metadata_bytes_per_mirror} B of encryption metadata each)"
    )
    ro = report.backend
    print(
        f"backend {ro['backend']}: {ro['fs_type']} on {ro['device']}, durability "
        f"{ro['durability']}{' (EMULATED)' if ro['emulated'] else ''}; engine {report.engine}; "
        f"sgx {report.sgx}; platform {report.platform.get('kind', '?')}"
        + (f" ({report.platform['tpm']})" if report.platform.get("tpm") else "")
    )
    if report.platform.get("counter_every"):
        print(f"  freshness: {report.platform['counter_every']}")
    for n in report.notes[1:]:
        print(f"  {n}")
    for r in (report.replica or {}).get("replicas", []):
        print(
            f"replica {r['spec']}: {r.get('ok', 0)} copies ok, {r.get('failed', 0)} failed, "
            f"{r.get('superseded', 0)} superseded, last version {r.get('last_version')}"
        )
    print(f"weights sha256 {report.weights_sha256}")
    return 0
