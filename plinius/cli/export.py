"""``plinius export``: the owner's way out, the mirrored model as a Darknet ``.weights`` file."""

from __future__ import annotations

import argparse
from typing import Any

from plinius.backends.registry import open_backend
from plinius.cli.common import STATE_DIR_HELP, check_backend, output_file
from plinius.crypto import make_engine, read_key_file
from plinius.enclave.platform import SimulatedPlatform
from plinius.owner import export_weights


def register(sub: Any) -> None:
    p = sub.add_parser("export", help="decrypt the mirror (owner's key) into a .weights file")
    p.add_argument("--backend", required=True, help="backend spec")
    p.add_argument("--key-file", required=True, help="the owner's key file")
    p.add_argument("--weights", required=True, help="output Darknet .weights file")
    p.add_argument("--state-dir", help=STATE_DIR_HELP)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    output_file(args.weights, "weights file (--weights)")
    engine = make_engine(read_key_file(args.key_file))
    with open_backend(check_backend(args.backend), create="never") as backend:
        iteration, label = export_weights(
            backend, engine, SimulatedPlatform(state_dir=args.state_dir, create=False), args.weights
        )
    print(f"wrote {args.weights}: {label} at iteration {iteration} (Darknet .weights format)")
    return 0
