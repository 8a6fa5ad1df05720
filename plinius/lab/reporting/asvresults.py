"""Read asv result files (schema version 2) into flat rows, machine by machine.

asv stores one JSON file per machine, commit and environment; each benchmark's values are listed
over the cartesian product of its parameters. Files of another schema are not guessed at: they
are reported as skipped, and the rows of the readable ones are kept.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plinius.core import fsutil
from plinius.core.errors import ConfigError

SCHEMA = 2
FILE_MAX_BYTES = 64 << 20  # asv result files are KiB to a few MiB


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


def _read_json(f: Path) -> Any:
    """The JSON in ``f``; a :class:`ConfigError` (kept as a skip reason) if it is not one."""
    raw = fsutil.read_regular(f, "asv result file", max_bytes=FILE_MAX_BYTES)
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ConfigError(f"not JSON ({exc})") from None


def _rows_of(doc: dict[str, Any], f: Path) -> list[dict[str, Any]]:
    """The rows of one schema-2 result file; ``ConfigError`` when its structure is off."""
    cols, results = doc.get("result_columns"), doc.get("results")
    if not isinstance(cols, list) or not isinstance(results, dict):
        raise ConfigError("result_columns is not a list or results is not an object")
    params_doc = doc.get("params")
    machine = f.parent.name
    if isinstance(params_doc, dict) and "machine" in params_doc:
        machine = str(params_doc["machine"])
    rows: list[dict[str, Any]] = []
    for name, entry in results.items():
        if not isinstance(entry, list):
            raise ConfigError(f"results.{name} is not a list")
        rec = dict(zip(cols, entry, strict=False))
        values = rec.get("result")
        params = rec.get("params") or []
        if values is None:
            continue
        if (
            not isinstance(values, list)
            or not isinstance(params, list)
            or not all(isinstance(p, list) for p in params)
        ):
            raise ConfigError(f"results.{name}: result or params is not a list")
        combos = list(itertools.product(*params)) if params else [()]
        for combo, value in zip(combos, values, strict=False):
            rows.append(
                {
                    "machine": machine,
                    "commit": str(doc.get("commit_hash", ""))[:10],
                    "env": str(doc.get("env_name", "")),
                    "benchmark": str(name),
                    "params": [_param_value(str(p)) for p in combo],
                    "value": value,
                }
            )
    return rows


def find_results_dir(given: str | None, cwd: Path | None = None) -> Path:
    """The asv results directory meant by ``given``.

    ``given`` may be the results directory itself, a directory holding ``asv.conf.json`` (such
    as ``asv_bench``), or None: then ``asv.conf.json`` is looked for in the current directory
    and in ``asv_bench/`` below it, so the command works from the repository root and from
    inside ``asv_bench/`` alike. The results directory is the config's ``results_dir``.
    """
    here = cwd or Path.cwd()
    if given is not None:
        p = Path(fsutil.check_path(given, "asv results directory (--asv)"))
        p = p if p.is_absolute() else here / p
        if (p / "asv.conf.json").is_file():
            return _results_dir_of(p / "asv.conf.json")
        return p
    for conf in (here / "asv.conf.json", here / "asv_bench" / "asv.conf.json"):
        if conf.is_file():
            return _results_dir_of(conf)
    raise ConfigError(
        f"no asv.conf.json in {here} or {here / 'asv_bench'}: give the results directory "
        "with --asv DIR (e.g. asv_bench/results)"
    )


def _results_dir_of(conf: Path) -> Path:
    doc = _read_json(conf)
    rel = doc.get("results_dir", "results") if isinstance(doc, dict) else "results"
    if not isinstance(rel, str):
        raise ConfigError(f"{conf}: results_dir is not a string")
    return conf.parent / rel


def load(results_dir: str | Path) -> AsvRows:
    """All benchmark values under an asv ``results`` directory (one sub-directory per machine).

    A file that is not a regular file, not JSON or not of schema 2 is listed in ``skipped`` with
    the reason, never guessed at; the rows of the readable ones are kept.
    """
    root = Path(fsutil.check_path(results_dir, "asv results directory (--asv)"))
    if not root.is_dir():
        raise ConfigError(f"{root} is not a directory of asv results (asv_bench/results)")
    out = AsvRows()
    for f in sorted(root.glob("*/*.json")):
        try:
            doc = _read_json(f)
        except ConfigError as exc:
            out.skipped.append(f"{f}: {exc}")
            continue
        if f.name == "machine.json":
            if isinstance(doc, dict):
                out.machines[f.parent.name] = doc
            else:
                out.skipped.append(f"{f}: unreadable machine.json (not an object)")
            continue
        if not isinstance(doc, dict) or doc.get("version") != SCHEMA:
            version = doc.get("version") if isinstance(doc, dict) else None
            out.skipped.append(
                f"{f}: asv results schema {version!r}, this reader knows {SCHEMA} "
                "(re-run the benchmarks with asv >= 0.6)"
            )
            continue
        try:
            out.rows += _rows_of(doc, f)
        except ConfigError as exc:
            out.skipped.append(f"{f}: malformed asv results ({exc})")
    if not out.rows and not out.skipped:
        raise ConfigError(f"no asv results under {root}: run `asv run` first")
    if not out.rows:
        raise ConfigError(
            f"no readable asv results under {root}: {len(out.skipped)} file(s) skipped, the "
            f"first {out.skipped[0]}"
        )
    return out


def section_class(section: str) -> str:
    """The name of the asv class ``asv_bench/benchmarks/bench_sections.py`` generates for the
    rounds section ``section`` (``save`` -> ``SaveContenders``)."""
    parts = [p for p in re.split(r"[^0-9A-Za-z]+", section) if p]
    return "".join(p[:1].upper() + p[1:] for p in parts) + "Contenders"


#: the generated class of the ``save`` section: ``time_op`` over (workload, engine, contender, op)
SAVE_CLASS = section_class("save")
#: its parameters, in asv's order
SECTION_PARAMS = ("workload", "engine", "contender", "op")


def save_restore_rows(data: AsvRows, engine: str | None = None) -> list[dict[str, Any]]:
    """Rows shaped like ``plinius bench`` results (per machine) from the generated save class:
    ``time_op`` of each backend instance (its contender id) on the ``size-N`` workload, ops
    ``save`` and ``restore`` (the warm one)."""
    by_key: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in data.rows:
        bench = r["benchmark"].rsplit(".", 2)
        if len(bench) != 3 or bench[1] != SAVE_CLASS or bench[2] != "time_op":
            continue
        if r["value"] is None or len(r["params"]) != len(SECTION_PARAMS):
            continue  # a skipped point, or not the (workload, engine, contender, op) layout
        workload, eng, instance, op = (str(p) for p in r["params"])
        if op not in ("save", "restore") or not workload.startswith("size-"):
            continue
        if engine is not None and eng != engine:
            continue
        try:
            size_mb, sec = float(workload.removeprefix("size-")), float(r["value"])
        except (TypeError, ValueError):
            continue  # asv writes NaN/null for failed points; nothing to plot
        if not (math.isfinite(size_mb) and math.isfinite(sec)):
            continue
        key = (r["machine"], r["commit"], instance, size_mb, eng)
        row = by_key.setdefault(
            key,
            {
                "machine": r["machine"],
                "commit": r["commit"],
                "backend": instance,
                "model_mb": size_mb,
                "engine": eng,
            },
        )
        row[f"{op}_s"] = sec
        row[f"{op}_s_min"] = sec
        row[f"{op}_s_max"] = sec
    rows = [r for r in by_key.values() if "save_s" in r and "restore_s" in r]
    for r in rows:
        r["series"] = f"{r['machine']}/{r['backend']}"
    return rows
