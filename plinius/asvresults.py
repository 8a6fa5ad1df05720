"""Read asv result files (schema version 2) into flat rows, machine by machine.

asv stores one JSON file per machine, commit and environment; each benchmark's values are listed
over the cartesian product of its parameters. Files of another schema are not guessed at: they
are reported as skipped, and the rows of the readable ones are kept.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plinius.errors import ConfigError

SCHEMA = 2


@dataclass
class AsvRows:
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "file: reason"
    machines: dict[str, dict[str, Any]] = field(default_factory=dict)


def _param_value(text: str) -> Any:
    try:
        return json.loads(text.replace("'", '"'))
    except ValueError:
        return text


def load(results_dir: str | Path) -> AsvRows:
    """All benchmark values under an asv ``results`` directory (one sub-directory per machine)."""
    root = Path(results_dir)
    if not root.is_dir():
        raise ConfigError(f"{root} is not a directory of asv results (asv_bench/results)")
    out = AsvRows()
    for f in sorted(root.glob("*/*.json")):
        if f.name == "machine.json":
            try:
                out.machines[f.parent.name] = json.loads(f.read_text())
            except ValueError:
                out.skipped.append(f"{f}: unreadable machine.json")
            continue
        try:
            doc = json.loads(f.read_text())
        except ValueError as exc:
            out.skipped.append(f"{f}: not JSON ({exc})")
            continue
        if doc.get("version") != SCHEMA or "result_columns" not in doc:
            out.skipped.append(
                f"{f}: asv results schema {doc.get('version')!r}, this reader knows {SCHEMA} "
                "(re-run the benchmarks with asv >= 0.6)"
            )
            continue
        cols = doc["result_columns"]
        machine = str(doc.get("params", {}).get("machine", f.parent.name))
        for name, entry in doc["results"].items():
            rec = dict(zip(cols, entry, strict=False))
            values = rec.get("result")
            params = rec.get("params") or []
            if values is None:
                continue
            combos = list(itertools.product(*params)) if params else [()]
            for combo, value in zip(combos, values, strict=False):
                out.rows.append(
                    {
                        "machine": machine,
                        "commit": doc.get("commit_hash", "")[:10],
                        "env": doc.get("env_name", ""),
                        "benchmark": name,
                        "params": [_param_value(str(p)) for p in combo],
                        "value": value,
                    }
                )
    if not out.rows and not out.skipped:
        raise ConfigError(f"no asv results under {root}: run `asv run` first")
    return out


def save_restore_rows(data: AsvRows, engine: str | None = None) -> list[dict[str, Any]]:
    """Rows shaped like ``plinius bench`` results (per machine) from SaveRestore time_*."""
    by_key: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in data.rows:
        bench = r["benchmark"].rsplit(".", 1)
        if len(bench) != 2 or not bench[0].endswith("SaveRestore"):
            continue
        kind = bench[1]
        if kind not in ("time_save", "time_restore") or r["value"] is None:
            continue
        backend, mb, eng = r["params"]
        if engine is not None and eng != engine:
            continue
        key = (r["machine"], r["commit"], backend, float(mb), eng)
        row = by_key.setdefault(
            key,
            {
                "machine": r["machine"],
                "commit": r["commit"],
                "backend": backend,
                "model_mb": float(mb),
                "engine": eng,
            },
        )
        sec = float(r["value"])
        field_name = "save" if kind == "time_save" else "restore"
        row[f"{field_name}_s"] = sec
        row[f"{field_name}_s_min"] = sec
        row[f"{field_name}_s_max"] = sec
    rows = [r for r in by_key.values() if "save_s" in r and "restore_s" in r]
    for r in rows:
        r["series"] = f"{r['machine']}/{r['backend']}"
    return rows
