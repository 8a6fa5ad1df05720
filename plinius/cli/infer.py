"""``plinius infer``: secure inference; the model is decrypted only inside the enclave."""

from __future__ import annotations

import argparse
from typing import Any

from plinius.backends.registry import open_read_only
from plinius.cli.common import add_json_flag, add_state_flags, check_backend, print_json
from plinius.core.crypto import key_id, make_engine, read_key_file
from plinius.core.errors import ConfigError
from plinius.enclave.counter import MirrorCounters
from plinius.enclave.platform import open_platform
from plinius.enclave.trusted import Enclave
from plinius.nn.mirrored import network_from_opened
from plinius.session.owner import (
    TORCH_KIND,
    mirror_kind,
    provision,
    torch_mirror_hint,
    verify_mirror,
)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "infer",
        help="top-1 accuracy of the mirrored model on the stored test split, inside the enclave",
    )
    p.add_argument("--backend", required=True, help="backend spec holding mirror and data")
    p.add_argument("--key-file", required=True, help="the owner's key file (for provisioning)")
    p.add_argument("--split", default="test", help="stored split to evaluate (default test)")
    add_state_flags(p)
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    key = read_key_file(args.key_file)
    with open_read_only(check_backend(args.backend)) as backend:
        platform = open_platform(args.platform, state_dir=args.state_dir, create=False)
        # Check first, provision after: the owner authenticates the whole mirror and its
        # freshness with the key it holds, so the enclave it provisions is measured from an
        # authenticated model fingerprint, never from a header the attacker wrote.
        info = verify_mirror(backend, make_engine(key), platform)
        if mirror_kind(info) == TORCH_KIND:  # authenticated: the kind is the owner's own
            raise ConfigError(torch_mirror_hint(info))
        fp = info.fingerprint
        enclave = Enclave(platform, None, fingerprint=fp)
        if not enclave.ecall_unseal_key(key_id(key)):
            provision(enclave, key, platform.owner_verifier(), fp)
        enclave.ecall_attach_mirror(backend, MirrorCounters(platform, create=False))
        label, iteration = enclave.ecall_model_from_mirror(network_from_opened)
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
