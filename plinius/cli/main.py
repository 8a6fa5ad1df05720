"""Entry point of the ``plinius`` command: discovers subcommand modules and maps errors to exits.

Each module in ``plinius.cli`` that defines ``register(subparsers)`` adds one subcommand whose
parser sets ``func=run`` with ``run(args) -> int``. Deliberate errors (``PliniusError``) and
malformed arguments print one clear line on stderr and exit 2. Anything else is a bug: as a last
resort it prints one "internal error" line and exits 70; ``PLINIUS_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

import plinius.cli
from plinius import __version__
from plinius.core.errors import PliniusError

EX_SOFTWARE = 70  # sysexits.h: an internal software error


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (usage stays in ``--help``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
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
    try:
        parser = build_parser()
    except PliniusError as exc:  # e.g. a plug-in that would replace a built-in backend
        print(f"plinius: error: {exc}", file=sys.stderr)
        return 2
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
    except MemoryError:
        print(
            f"plinius {args.command}: error: out of memory; use a smaller model, batch or size",
            file=sys.stderr,
        )
        return 2
    except Exception as exc:
        # Last resort only: every expected failure is a PliniusError raised where it happens.
        if os.environ.get("PLINIUS_DEBUG"):
            traceback.print_exc()
        print(
            f"plinius {args.command}: internal error (a bug in plinius): "
            f"{type(exc).__name__}: {exc}; rerun with PLINIUS_DEBUG=1 for the traceback",
            file=sys.stderr,
        )
        return EX_SOFTWARE


if __name__ == "__main__":
    sys.exit(main())
