"""What every experiment command shares: a throw-away workspace, the owner's key and data, and
writing results.json, report.md and the figure."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plinius.core.crypto import generate_key, read_key_file, write_key_file
from plinius.core.errors import MissingExtraError
from plinius.core.outputs import output_dir, print_json, write_text
from plinius.lab.reporting.provenance import provenance
from plinius.session.owner import default_dataset


@dataclass
class Workspace:
    tmp: Path
    key_file: str
    data: str
    state_dir: str
    platform_dir: str  # a throw-away simulated CPU: experiments leave no slot records behind


@contextmanager
def workspace(key_file: str | None, data: str | None, seed: int, name: str) -> Iterator[Workspace]:
    """A temporary directory with a key (the given one or a throw-away one) and the owner's
    encrypted dataset made once up front, so no run pays for it."""
    with tempfile.TemporaryDirectory(prefix=f"plinius-{name}-") as tmp:
        root = Path(tmp)
        key = key_file
        if key is None:
            key = str(root / "owner.key")
            write_key_file(key, generate_key())
        if data is None:
            data = str(default_dataset(read_key_file(key), root, seed)[0])
        yield Workspace(root, key, data, str(root / "state"), str(root / "platform"))


def publish(
    schema: str,
    parameters: dict[str, Any],
    result: dict[str, Any],
    out_dir: str,
    figure: str,
    markdown: Callable[[dict[str, Any]], str],
    plot: Callable[[dict[str, Any], Path], None],
    as_json: bool,
) -> None:
    """Write results.json, report.md and the PNG; print the report (or the JSON)."""
    doc = {
        "schema": schema,
        "provenance": provenance(),
        "parameters": {**parameters, "key_file": None, "state_dir": None, "platform_dir": None},
        "result": result,
    }
    out = output_dir(out_dir)
    write_text(out / "results.json", json.dumps(doc, indent=2) + "\n", "results")
    write_text(out / "report.md", markdown(doc), "report")
    try:
        plot(doc, out / figure)
        wrote = f"{out / 'results.json'}, {out / 'report.md'}, {out / figure}"
    except MissingExtraError as exc:
        wrote = f"{out / 'results.json'}, {out / 'report.md'} (no figure: {exc})"
    if as_json:
        print_json(doc)
    else:
        print(markdown(doc))
        print(f"wrote {wrote}")
