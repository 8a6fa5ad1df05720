"""``plinius backends``: every registered backend and what it really runs on here."""

from __future__ import annotations

import argparse
from typing import Any

from plinius.backends.registry import backend_class, open_backend
from plinius.cli.common import add_json_flag, print_json, print_table
from plinius.core.errors import PliniusError
from plinius.lab.plan import all_backend_names, scratch_specs


def register(sub: Any) -> None:
    p = sub.add_parser(
        "backends",
        help="list storage backends and what they run on here",
        description="Opens a throw-away instance of each registered backend on its default root "
        "(PLINIUS_SHM_DIR or PLINIUS_DISK_DIR) and reports file system, mount options, device, "
        "DAX, durability and whether the storage is emulated.",
    )
    add_json_flag(p)
    p.set_defaults(func=run)


def describe_all() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in all_backend_names():
        row: dict[str, Any] = {"name": name}
        try:
            cls = backend_class(name)
            row.update(byte_addressable=cls.byte_addressable, summary=cls.summary)
            with scratch_specs([name]) as specs:
                spec = specs[name]
                with open_backend(spec, **cls.probe_options) as b:
                    info = b.describe()
            row.update(available=True, durability=info.durability, runs_on=info.as_dict())
        except (PliniusError, OSError) as exc:
            row.update(available=False, durability=None, runs_on=None, error=str(exc))
        rows.append(row)
    return rows


def run(args: argparse.Namespace) -> int:
    rows = describe_all()
    if args.json:
        print_json(rows)
        return 0
    table = []
    for r in rows:
        ro = r.get("runs_on") or {}
        extra = ro.get("extra", {})
        flush = extra.get("flush_instruction") or ("fsync" if extra.get("fsync") else "-")
        table.append(
            {
                "backend": r["name"],
                "byte-addr": r.get("byte_addressable", ""),
                "durability": r.get("durability") or "unavailable",
                "fs": ro.get("fs_type", ""),
                "device": ro.get("device", ""),
                "dax": ro.get("dax", ""),
                "flush": flush,
                "mode": extra.get("durability_mode", ""),
                "emulated": ro.get("emulated", ""),
                "notes": "; ".join(ro.get("notes", [])) or r.get("error", ""),
            }
        )
    print_table(table, list(table[0]) if table else [], title="plinius backends")
    return 0
