"""Output helpers shared by subcommands: human tables by default, exact JSON with ``--json``."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table


def add_json_flag(parser: Any) -> None:
    parser.add_argument("--json", action="store_true", help="print exact JSON instead of a table")


def progress_bar(label: str, console: Console, disable: bool, *fields: ProgressColumn) -> Progress:
    """The one progress-bar look of every long command: label, bar, n/total, ``fields``, time."""
    return Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        *fields,
        TimeElapsedColumn(),
        console=console,
        disable=disable,
    )


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


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
