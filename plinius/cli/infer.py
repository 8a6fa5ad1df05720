"""``plinius infer``: secure inference; the model is decrypted only inside the enclave."""

from __future__ import annotations

import argparse
from typing import Any

from plinius.backends.registry import open_backend
from plinius.cli.common import add_json_flag, print_json
from plinius.crypto import key_id, read_key_file
from plinius.enclave.counter import SealedFileCounter
from plinius.enclave.platform import SimulatedPlatform
from plinius.enclave.trusted import Enclave
from plinius.mirror import read_header_fingerprint
from plinius.owner import provision


def register(sub: Any) -> None:
    p = sub.add_parser(
        "infer",
        help="top-1 accuracy of the mirrored model on the stored test split, inside the enclave",
    )
    p.add_argument("--backend", required=True, help="backend spec holding mirror and data")
    p.add_argument("--key-file", required=True, help="the owner's key file (for provisioning)")
    p.add_argument("--split", default="test", help="stored split to evaluate (default test)")
    p.add_argument("--state-dir", help="simulated platform state")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    key = read_key_file(args.key_file)
    platform = SimulatedPlatform(args.state_dir)
    with open_backend(args.backend) as backend:
        fp = read_header_fingerprint(backend)
        enclave = Enclave(platform, None, fingerprint=fp)
        if not enclave.ecall_unseal_key(key_id(key)):
            provision(enclave, key, platform.quoting_public_pem, fp)
        enclave.ecall_attach_mirror(backend, SealedFileCounter(platform))
        label, iteration = enclave.ecall_model_from_mirror()
        acc, n = enclave.ecall_infer(backend, args.split)
    doc = {
        "model": label,
        "iteration": iteration,
        "split": args.split,
        "images": n,
        "top1": acc,
        "sgx": "simulated",
    }
    if args.json:
        print_json(doc)
    else:
        print(
            f"{label} at iteration {iteration}: top-1 {acc:.2%} on {n} {args.split} images "
            "(decrypted only inside the simulated enclave)"
        )
    return 0
