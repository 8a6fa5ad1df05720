"""Helpers shared by subcommands: tables or exact JSON out, and checked inputs and outputs in."""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from plinius.backends.registry import parse_spec
from plinius.core import fsutil
from plinius.core.crypto import read_key_file
from plinius.core.errors import ConfigError

# Output checks and writers live in the library (experiments write results too); the
# subcommands take them from here with the rest of their helpers.
from plinius.core.outputs import output_dir as output_dir
from plinius.core.outputs import output_file as output_file
from plinius.core.outputs import print_json as print_json
from plinius.core.outputs import write_text as write_text


def add_json_flag(parser: Any) -> None:
    parser.add_argument("--json", action="store_true", help="print exact JSON instead of a table")


class _StepProgress(Progress):
    """Rich's bar on a terminal; in a log (stderr not a terminal: CI, ``nohup``, a pipe) one
    plain line per step instead, at most one a second and always the last one."""

    def __init__(self, label: str, *columns: ProgressColumn, **kw: Any) -> None:
        super().__init__(*columns, **kw)
        self._label = label
        self._lines = not kw.get("disable") and not self.console.is_terminal
        self._last = 0.0

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._line(task_id)

    def update(self, task_id: TaskID, **kw: Any) -> None:
        super().update(task_id, **kw)
        self._line(task_id)

    def _line(self, task_id: TaskID) -> None:
        if not self._lines:
            return
        task = next(t for t in self.tasks if t.id == task_id)
        now = time.monotonic()
        if not task.finished and now - self._last < 1.0:
            return
        self._last = now
        total = f"/{int(task.total)}" if task.total else ""
        self.console.print(
            f"{self._label}: {int(task.completed)}{total} ({task.elapsed or 0.0:.0f} s)",
            markup=False,
            highlight=False,
        )


def progress_bar(label: str, console: Console, disable: bool, *fields: ProgressColumn) -> Progress:
    """The one progress look of every long command: label, bar, n/total, ``fields``, time on a
    terminal; a plain line per step in a log."""
    return _StepProgress(
        label,
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        *fields,
        TimeElapsedColumn(),
        console=console,
        disable=disable,
    )


def print_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], title: str | None = None
) -> None:
    """Render ``rows`` (dicts) as a table with the given column keys as headers."""
    table = Table(title=title, show_lines=False)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*(_fmt(row.get(col, "")) for col in columns))
    Console(soft_wrap=False, width=max(160, Console().width)).print(table)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


# -- input checking ------------------------------------------------------------------------------
# Every path and number an operator gives is checked where the CLI first meets it, so a mistake
# (a FIFO, a device, a 4 GiB sparse file, a missing directory, a negative count) ends in one line
# naming the input and exit 2, never a traceback or a hang.

JSON_MAX = 64 << 20  # results documents plinius writes are a few MiB at most
INT32_MAX = (1 << 31) - 1  # Darknet keeps iteration counts and batch sizes in C ints


def input_file(path: str, what: str, max_bytes: int | None = None) -> str:
    """``path`` if it is a regular file of at most ``max_bytes`` (FIFOs never block here)."""
    if not path:
        raise ConfigError(f"{what} path is empty: give a file")
    fd = fsutil.open_regular(path, what)
    try:
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if max_bytes is not None and size > max_bytes:
        raise ConfigError(
            f"{what} {path} is {fsize(size)}, more than the {fsize(max_bytes)} a {what} can be: "
            "give the right file"
        )
    return path


def check_backend(spec: str) -> str:
    """``spec`` if it parses and its location is a usable path (no NUL, no name over 255 B)."""
    name, location, _ = parse_spec(spec)
    fsutil.check_path(location, f"backend {name} location")
    return spec


def read_json(path: str, what: str, max_bytes: int = JSON_MAX) -> Any:
    """The JSON document in the regular file ``path``, with a one-line error for bad content."""
    raw = fsutil.read_regular(path, what, max_bytes=max_bytes)
    if not raw.strip():
        raise ConfigError(f"{what} {path} is empty: give the file plinius wrote")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {exc.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{what} {path} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise ConfigError(f"{what} {path} is nested too deeply to be a plinius document") from None


def fsize(n: int) -> str:
    """Bytes as a short human size (GiB when big)."""
    if n >= 1 << 30:
        return f"{n / (1 << 30):,.1f} GiB"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB"
    return f"{n} B"


def int_arg(lo: int, hi: int = INT32_MAX) -> Callable[[str], int]:
    """An argparse type: an integer in ``lo..hi`` (argparse reports the flag and the range)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is outside {lo}..{hi}")
        return value

    parse.__name__ = "integer"
    return parse


def float_arg(lo: float, hi: float = math.inf, *, lo_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in ``lo..hi`` (``(lo..hi`` when ``lo_open``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        low_ok = value > lo if lo_open else value >= lo
        if not math.isfinite(value) or not low_ok or value > hi:
            bound = f"> {lo:g}" if lo_open else f">= {lo:g}"
            upper = f" and <= {hi:g}" if math.isfinite(hi) else ""
            raise argparse.ArgumentTypeError(f"{text!r}: expected a finite number {bound}{upper}")
        return value

    parse.__name__ = "number"
    return parse


STATE_DIR_HELP = (
    "untrusted sealed state: sealed data keys, the sealed data set cache (default "
    "$PLINIUS_STATE_DIR); the simulated CPU (root secret, freshness counters) is "
    "$PLINIUS_PLATFORM_DIR"
)


PLATFORM_HELP = (
    "the root of trust: sim (the simulated CPU at $PLINIUS_PLATFORM_DIR) or sim:DIR "
    "(default $PLINIUS_PLATFORM, else sim)"
)


def add_state_flags(p: argparse.ArgumentParser) -> None:
    """``--state-dir`` (untrusted sealed state) and ``--platform`` (the root of trust)."""
    p.add_argument("--state-dir", help=STATE_DIR_HELP)
    p.add_argument("--platform", metavar="SPEC", help=PLATFORM_HELP)


def check_experiment_inputs(args: Any) -> None:
    """What every experiment command refuses before any work: its output directory, a
    NAME:DIR backend, the key file and the data file (``--out``, ``--backend``, ``--key-file``,
    ``--data``)."""
    output_dir(args.out)
    if ":" in args.backend:
        check_backend(args.backend)
    if args.key_file is not None:
        read_key_file(args.key_file)
    if args.data is not None:
        input_file(args.data, "dataset (--data)")
