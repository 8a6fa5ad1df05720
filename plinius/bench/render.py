"""Tables, Markdown and figures of a ``plinius bench`` results document.

Everything here works from the saved JSON alone, so ``plinius report --bench`` redraws a run
without repeating it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plinius import plots
from plinius.bench.saverestore import fmt_ms
from plinius.bench.suite import targets
from plinius.reports import md_table, provenance_md

SAVE_COLUMNS = [
    "backend",
    "MB",
    "save ms (min–max)",
    "restore ms (min–max)",
    "save MB/s",
    "restore MB/s",
    "save ×ssd",
    "restore ×ssd",
    "save/raw AES",
]
ENGINE_COLUMNS = [
    "engine",
    "raw encrypt MB/s",
    "seal_into MB/s",
    "seal/raw",
    "raw decrypt MB/s",
    "open_into MB/s",
    "open/raw",
]
TARGET_COLUMNS = ["target", "measured", "bar", "met"]


def _spread(med: float, lo: float, hi: float) -> str:
    return f"{fmt_ms(med)} ({fmt_ms(lo)}–{fmt_ms(hi)})"


def _x(v: float | None) -> str:
    return f"{v:.2f}×" if v is not None else "-"


def save_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "backend": p["backend"],
            "MB": p["model_mb"],
            "save ms (min–max)": _spread(p["save_s"], p["save_s_min"], p["save_s_max"]),
            "restore ms (min–max)": _spread(p["restore_s"], p["restore_s_min"], p["restore_s_max"]),
            "save MB/s": round(p["save_mbps"]),
            "restore MB/s": round(p["restore_mbps"]),
            "save ×ssd": _x(p.get("speedup_save_vs_ssd")),
            "restore ×ssd": _x(p.get("speedup_restore_vs_ssd")),
            "save/raw AES": f"{p['save_vs_raw_seal']:.0%}" if p.get("save_vs_raw_seal") else "-",
        }
        for p in results
    ]


def engine_rows(engines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "engine": e["engine"],
            "raw encrypt MB/s": round(e["raw_encrypt_mbps"]),
            "seal_into MB/s": round(e["seal_mbps"]),
            "seal/raw": f"{e['seal_vs_raw']:.0%}",
            "raw decrypt MB/s": round(e["raw_decrypt_mbps"]),
            "open_into MB/s": round(e["open_mbps"]),
            "open/raw": f"{e['open_vs_raw']:.0%}",
        }
        for e in engines
    ]


def target_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for t in targets(doc):
        v = t["measured"]
        rows.append(
            {
                "target": t["target"],
                "measured": "not measured" if v is None else f"{v:.3g}",
                "bar": t["bar"],
                "met": {True: "yes", False: "NO", None: "-"}[t["met"]],
            }
        )
    return rows


def sps_plot_rows(sps: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for r in sps.get("rows", []):
        rows.append(
            {
                "series": f"{r['mode']} (C loop)",
                "swaps_per_tx": r["swaps_per_txn"],
                "sps": r["sps_c"],
            }
        )
        if r.get("sps_python"):
            rows.append(
                {
                    "series": f"{r['mode']} (Python)",
                    "swaps_per_tx": r["swaps_per_txn"],
                    "sps": r["sps_python"],
                }
            )
    return rows


def write_outputs(doc: dict[str, Any], out: Path) -> list[Path]:
    """report.md and every figure the document has data for."""
    written = [out / "report.md"]
    if doc.get("results"):
        written.append(plots.save_restore(doc["results"], out / "save_restore.png"))
        if any(p.get("speedup_save_vs_ssd") is not None for p in doc["results"]):
            written.append(plots.speedups(doc["results"], out / "speedup.png"))
    if doc.get("sps", {}).get("rows"):
        written.append(plots.sps(sps_plot_rows(doc["sps"]), out / "sps.png"))
    if doc.get("batch"):
        written.append(plots.batch_times(doc["batch"], out / "batch.png"))
    if doc.get("fio"):
        from plinius.fio import FioReport, plot_fig2

        report = FioReport.from_dict(doc["fio"])
        if report.results:
            written.append(Path(plot_fig2(report, out / "fio_fig2.png")))
    (out / "report.md").write_text(render_markdown(doc, [p.name for p in written[1:]]))
    return written


def render_markdown(doc: dict[str, Any], figures: list[str]) -> str:
    params = doc["parameters"]
    parts = [
        "# plinius bench",
        "",
        f"Model sizes {params['sizes_mb']} MiB (3×3, 256-filter conv layers of 2.25 MiB), "
        f"{params['repeats']} timed repeats after one warm-up, medians with min–max; crypto "
        f"engine `{params['engine']}`; {'quick' if params.get('quick') else 'full'} run. "
        "Speed-ups are versus `ssd` in the same run. Figures from emulated storage are "
        "labelled below: they are not real persistent-memory, DAX or SGX figures.",
        "",
        "## Targets",
        "",
        md_table(target_rows(doc), TARGET_COLUMNS),
        "",
    ]
    for status, title in (
        ("failed", "**Partial results** — sections that failed:"),
        ("skipped", "**Not run** — a tool is missing:"),
    ):
        hit = {k: v for k, v in doc.get("sections", {}).items() if v["status"] == status}
        if hit:
            parts += [title, ""]
            parts += [f"- `{k}`: {v['error']}" for k, v in hit.items()]
            parts.append("")
    if doc.get("results"):
        parts += [
            "## Save and restore (Fig. 7)",
            "",
            md_table(save_rows(doc["results"]), SAVE_COLUMNS),
            "",
            "### Save breakdown (median seconds: the paper's Table I)",
            "",
            md_table(
                [
                    {
                        "backend": p["backend"],
                        "MB": p["model_mb"],
                        **p["save_breakdown"],
                        "encrypt share": f"{p['save_breakdown']['encrypt_s'] / p['save_s']:.0%}",
                    }
                    for p in doc["results"]
                ],
                ["backend", "MB", "encrypt_s", "write_s", "flush_s", "fsync_s", "encrypt share"],
            ),
            "",
        ]
    if doc.get("engines"):
        parts += [
            "## AES-GCM engines, one 64 MiB buffer (best of the repeats)",
            "",
            md_table(engine_rows(doc["engines"]), ENGINE_COLUMNS),
            "",
        ]
    sps = doc.get("sps")
    if sps:
        parts += [
            "## Romulus swaps per second (Fig. 6), 10 MB persistent array",
            "",
            md_table(
                [
                    {
                        "mode": r["mode"],
                        "swaps/txn": r["swaps_per_txn"],
                        "M swaps/s (C)": r["sps_c"] / 1e6,
                        "M swaps/s (Python)": (r["sps_python"] or 0) / 1e6,
                        "RomulusLog C++ ref": (r["reference_romulus_log"] or 0) / 1e6 or "-",
                    }
                    for r in sps["rows"]
                ],
                ["mode", "swaps/txn", "M swaps/s (C)", "M swaps/s (Python)", "RomulusLog C++ ref"],
            ),
            "",
        ]
        txn = sps.get("txn_cost")
        if txn:
            parts += [
                f"One 64 MiB durable transaction ({txn['mode']}, {txn['flush']}): "
                f"{txn['txn_ms']:.1f} ms ({txn['txn_gbps']:.1f} GB/s) against {txn['seal_ms']:.1f} "
                f"ms to seal the same bytes: ratio {txn['txn_over_seal']:.2f}.",
                "",
            ]
    if doc.get("fio"):
        from plinius.fio import FioReport, table_rows

        rows = table_rows(FioReport.from_dict(doc["fio"]))
        if rows:
            parts += [
                "## Storage under the backends: fio (Fig. 2)",
                "",
                md_table(rows, list(rows[0])),
                "",
            ]
    if doc.get("batch"):
        parts += [
            "## Iteration time versus batch size (Fig. 8)",
            "",
            md_table(
                [
                    {
                        "model": p["model"],
                        "batch": p["batch"],
                        "encrypted s": p["encrypted_s"],
                        "plaintext s": p["plaintext_s"],
                        "ratio": p["ratio"],
                        "decrypt batch ms": p["decrypt_s"] * 1e3,
                    }
                    for p in doc["batch"]
                ],
                ["model", "batch", "encrypted s", "plaintext s", "ratio", "decrypt batch ms"],
            ),
            "",
        ]
    if doc.get("overhead"):
        parts += [
            "## Mirroring overhead per iteration (mirror every iteration)",
            "",
            md_table(
                [
                    {
                        **o,
                        "sync_overhead": f"{o['sync_overhead']:+.1%}",
                        "async_overhead": f"{o['async_overhead']:+.1%}",
                    }
                    for o in doc["overhead"]
                ],
                [
                    "model",
                    "backend",
                    "no_mirror_s",
                    "sync_s",
                    "async_s",
                    "sync_overhead",
                    "async_overhead",
                ],
            ),
            "",
        ]
    parts += [f"![{f}]({f})" for f in figures]
    parts += ["", provenance_md(doc["provenance"], doc["backends"]), ""]
    return "\n".join(parts)
