"""Markdown reports with provenance up front, so emulated figures are never read as real ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


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


def provenance_md(prov: dict[str, Any], backends: dict[str, dict[str, Any]]) -> str:
    cpu = prov.get("cpu", {})
    lines = [
        "## Provenance",
        "",
        f"- date: {prov.get('date')}; host {prov.get('host')}; kernel {prov.get('kernel')}; "
        f"python {prov.get('python')}; git {prov.get('git_commit')}",
        f"- CPU: {cpu.get('model')} ({cpu.get('cores')} cores; "
        f"flags {' '.join(cpu.get('flags', []))})",
        f"- crypto engine: {prov.get('crypto_engine')}; SGX: {prov.get('sgx')}; "
        f"persistent memory: {prov.get('pm')}",
        f"- packages: {', '.join(f'{k} {v}' for k, v in prov.get('packages', {}).items() if v)}",
        "",
        "### What each backend ran on",
        "",
    ]
    rows = []
    for name, ro in backends.items():
        extra = ro.get("extra", {})
        rows.append(
            {
                "backend": name,
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
        "backend",
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
