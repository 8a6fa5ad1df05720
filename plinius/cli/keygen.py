"""``plinius keygen --out FILE``: a new random 128-bit key file (mode 0600, never overwritten)."""

from __future__ import annotations

import argparse
from typing import Any

from plinius.core.crypto import generate_key, key_id, write_key_file
from plinius.core.fsutil import check_path


def register(sub: Any) -> None:
    p = sub.add_parser("keygen", help="create a new 128-bit AES key file (mode 0600)")
    add_options(p)
    p.set_defaults(func=run)


def add_options(p: Any) -> None:
    """The options of the one keygen (``plinius owner keygen`` is its deprecated alias)."""
    p.add_argument("--out", required=True, help="path of the new key file (must not exist)")


def run(args: argparse.Namespace) -> int:
    check_path(args.out, "key file (--out)")
    key = generate_key()
    write_key_file(args.out, key)
    print(f"wrote {args.out} (key id {key_id(key).hex()}); keep it secret and backed up")
    return 0
