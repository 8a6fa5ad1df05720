"""Markdown reports with provenance up front, so emulated figures are never read as real ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from plinius.core.errors import ConfigError


def md_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        if isinstance(v, bool):
            return "yes" if v else "no"
        return "" if v is None else str(v).replace("|", "\\|")

    head = "| " + " | ".join(columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def _choice_text(prov: dict[str, Any]) -> str:
    """`` (auto: fastest installed; calls under 16 MiB on ...)`` or nothing."""
    c = prov.get("crypto_engine_choice")
    if not isinstance(c, dict) or c.get("how") == "named":
        return ""
    note = f"; {c['note']}" if c.get("note") else ""
    return f" (auto: {c.get('how')}{note})"


def provenance_md(
    prov: dict[str, Any], backends: dict[str, dict[str, Any]], key_column: str = "backend"
) -> str:
    """Provenance and one row per entry of ``backends`` (named in column ``key_column``)."""
    cpu = prov.get("cpu", {})
    load = prov.get("load_average") or {}

    def avg(v: Any) -> str:
        return " / ".join(f"{x:g}" for x in v) if v else "not recorded"

    lines = [
        "## Provenance",
        "",
        f"- date: {prov.get('date')}; host {prov.get('host')}; kernel {prov.get('kernel')}; "
        f"python {prov.get('python')}; git {prov.get('git_commit')}",
        f"- CPU: {cpu.get('model')} ({cpu.get('cores')} cores; "
        f"flags {' '.join(cpu.get('flags', []))}); cpufreq governor: "
        f"{cpu.get('governor', 'not recorded')}",
        f"- load average (1/5/15 min) before the run: {avg(load.get('before'))}; after: "
        f"{avg(load.get('after'))}",
        f"- crypto engine: {prov.get('crypto_engine')}{_choice_text(prov)}; "
        f"SGX: {prov.get('sgx')}; platform: {prov.get('platform', 'simulated CPU')} (TPM "
        f"device: {prov.get('tpm_device', 'not recorded')}); persistent memory: "
        f"{prov.get('pm')}",
        f"- packages: {', '.join(f'{k} {v}' for k, v in prov.get('packages', {}).items() if v)}",
        "",
        f"### What each {key_column} ran on",
        "",
    ]
    rows = []
    for name, ro in backends.items():
        extra = ro.get("extra", {})
        rows.append(
            {
                key_column: name,
                "path": ro.get("path"),
                "fs": ro.get("fs_type"),
                "mount options": ro.get("mount_options"),
                "device": ro.get("device"),
                "dax": ro.get("dax"),
                "durability": ro.get("durability"),
                "flush": extra.get("flush_instruction")
                or ("fsync" if extra.get("fsync") else "none"),
                "mode": extra.get("durability_mode", ""),
                "emulated": ro.get("emulated"),
                "notes": "; ".join(ro.get("notes", [])),
            }
        )
    cols = [
        key_column,
        "path",
        "fs",
        "mount options",
        "device",
        "dax",
        "durability",
        "flush",
        "mode",
        "emulated",
        "notes",
    ]
    lines.append(md_table(rows, cols))
    return "\n".join(lines)


# -- checking saved documents before rendering them -----------------------------------------------
# A results file handed to ``plinius report`` may be anything; the renderers index it freely, so
# its shape is checked first and a wrong one is named by its JSON path.

_NUMBER = "number"
_OPT_NUMBER = "number or null"
_KINDS: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "list": (list,),
    "string": (str,),
    "bool": (bool,),
}

BENCH_ITEMS: dict[str, dict[str, str]] = {
    "results": {
        "backend": "string",
        "model_mb": _NUMBER,
        "save_s": _NUMBER,
        "save_s_min": _NUMBER,
        "save_s_max": _NUMBER,
        "restore_s": _NUMBER,
        "restore_s_min": _NUMBER,
        "restore_s_max": _NUMBER,
        "save_mbps": _NUMBER,
        "restore_mbps": _NUMBER,
        "save_breakdown": "object",
    },
    "engines": {
        "engine": "string",
        "raw_encrypt_mbps": _NUMBER,
        "seal_mbps": _NUMBER,
        "seal_vs_raw": _NUMBER,
        "raw_decrypt_mbps": _NUMBER,
        "open_mbps": _NUMBER,
        "open_vs_raw": _NUMBER,
    },
    "batch": {
        "model": "string",
        "batch": _NUMBER,
        "encrypted_s": _NUMBER,
        "plaintext_s": _NUMBER,
        "ratio": _NUMBER,
        "decrypt_s": _NUMBER,
    },
    "overhead": {"sync_overhead": _OPT_NUMBER, "async_overhead": _OPT_NUMBER},
    "targets": {"id": "string", "target": "string", "verdict": "string"},
    "contenders": {
        "section": "string",
        "name": "string",
        "workload": "string",
        "nbytes": _NUMBER,
        "ops": "object",
    },
    "workloads": {"workload": "string", "mirror_bytes": _NUMBER, "tensors": _NUMBER},
}
SPS_ROW = {"mode": "string", "swaps_per_txn": _NUMBER, "sps_c": _NUMBER}


class ShapeError(ConfigError):
    """A saved document whose structure is not what plinius wrote."""


def _is(value: Any, kind: str) -> bool:
    if kind in (_NUMBER, _OPT_NUMBER):
        if value is None:
            return kind == _OPT_NUMBER
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, _KINDS[kind])


def need(obj: Any, where: str, kind: str, source: str) -> Any:
    """``obj`` if it is of ``kind``; else a :class:`ShapeError` naming ``source`` and ``where``."""
    if not _is(obj, kind):
        found = "null" if obj is None else type(obj).__name__
        raise ShapeError(
            f"{source} is not a plinius results document: {where} should be a {kind}, found {found}"
        )
    return obj


def _fields(item: Any, where: str, spec: dict[str, str], source: str) -> None:
    need(item, where, "object", source)
    for key, kind in spec.items():
        if key not in item:
            raise ShapeError(f"{source} is not a plinius results document: {where} lacks {key!r}")
        need(item[key], f"{where}.{key}", kind, source)


def check_bench_doc(doc: Any, source: str, schema: str) -> dict[str, Any]:
    """``doc`` if it has the shape of a ``plinius bench`` results.json (what the report reads)."""
    need(doc, "the top level", "object", source)
    if doc.get("schema") != schema:
        raise ShapeError(
            f"{source} is not a plinius bench results.json (schema {doc.get('schema')!r}, "
            f"expected {schema!r})"
        )
    params = doc.get("parameters")
    _fields(params, "parameters", {"sizes_mb": "list", "repeats": _NUMBER}, source)
    need(params.get("engine"), "parameters.engine", "string", source)
    prov = need(doc.get("provenance"), "provenance", "object", source)
    for key in ("cpu", "packages"):
        if key in prov:
            need(prov[key], f"provenance.{key}", "object", source)
    cpu_flags = prov.get("cpu", {}).get("flags", [])
    need(cpu_flags, "provenance.cpu.flags", "list", source)
    for name, ro in need(doc.get("backends"), "backends", "object", source).items():
        need(ro, f"backends.{name}", "object", source)
        for key, kind in (("extra", "object"), ("notes", "list")):
            if key in ro:
                need(ro[key], f"backends.{name}.{key}", kind, source)
    for name, sec in need(doc.get("sections", {}), "sections", "object", source).items():
        _fields(sec, f"sections.{name}", {"status": "string"}, source)
    for key, spec in BENCH_ITEMS.items():
        for i, item in enumerate(need(doc.get(key) or [], key, "list", source)):
            _fields(item, f"{key}[{i}]", spec, source)
    sps = need(doc.get("sps") or {}, "sps", "object", source)
    for i, row in enumerate(need(sps.get("rows") or [], "sps.rows", "list", source)):
        _fields(row, f"sps.rows[{i}]", SPS_ROW, source)
    txn = sps.get("txn_cost")
    if txn:
        _fields(txn, "sps.txn_cost", {"txn_over_seal": _NUMBER}, source)
    if doc.get("fio"):
        need(doc["fio"], "fio", "object", source)
    return doc
