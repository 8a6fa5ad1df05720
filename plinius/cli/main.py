"""Entry point of the ``plinius`` command: discovers subcommand modules and maps errors to exits.

Each module in ``plinius.cli`` that defines ``register(subparsers)`` adds one subcommand whose
parser sets ``func=run`` with ``run(args) -> int``. Deliberate errors (``PliniusError``) print one
clear line on stderr and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

import plinius.cli
from plinius import __version__
from plinius.errors import PliniusError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plinius",
        description="Secure, crash-resilient ML training with encrypted model mirrors.",
    )
    parser.add_argument("--version", action="version", version=f"plinius {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(plinius.cli.__path__), key=lambda m: m.name):
        if info.name in {"main", "common"}:
            continue
        module = importlib.import_module(f"plinius.cli.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except PliniusError as exc:
        print(f"plinius {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # Output piped into `head` and friends: not an error of ours.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"plinius {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
