"""``plinius verify``: authenticate the stored mirror with the owner's key; exit 0 if sound."""

from __future__ import annotations

import argparse
from typing import Any

from plinius.backends.registry import open_read_only
from plinius.cli.common import add_json_flag, add_state_flags, check_backend, print_json
from plinius.core.crypto import make_engine, read_key_file
from plinius.enclave.platform import open_platform
from plinius.session.owner import verify_mirror


def register(sub: Any) -> None:
    p = sub.add_parser(
        "verify",
        help="check the stored mirror: every tag, the model binding and freshness",
        description="Exit 0 and print the iteration when every buffer authenticates and the "
        "mirror is the newest committed one; otherwise exit non-zero with the reason.",
    )
    p.add_argument("--backend", required=True, help="backend spec")
    p.add_argument("--key-file", required=True, help="the owner's key file")
    add_state_flags(p)
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    engine = make_engine(read_key_file(args.key_file))
    with open_read_only(check_backend(args.backend)) as backend:
        info = verify_mirror(
            backend, engine, open_platform(args.platform, state_dir=args.state_dir, create=False)
        )
    doc = {
        "ok": True,
        "iteration": info.iteration,
        "version": info.version,
        "model": info.meta.get("model"),
        # a plinius.torch mirror names itself in its training state (export --safetensors)
        "kind": (info.meta.get("net") or {}).get("model_kind", "darknet"),
        "buffers": len(info.entries),
        "bytes": info.size,
        "metadata_bytes": info.metadata_bytes,
        "fingerprint": info.fingerprint.hex(),
    }
    if args.json:
        print_json(doc)
    else:
        print(
            f"ok: mirror of {doc['model']} at iteration {info.iteration} (version "
            f"{info.version}, {len(info.entries)} buffers, {info.size} B) "
            "authenticates and is fresh"
        )
    return 0
