"""Tables, Markdown and figures of a ``plinius bench`` results document.

Everything here works from the saved JSON alone, so ``plinius report --bench`` redraws a run
without repeating it. Every save/restore row is a backend *instance* (name and options) with the
durability and emulation its ``describe()`` reported; speed-ups only pair equal durability, and the
report ends with a recommendation per durability level. One unit system: MiB = 2^20 bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plinius.backends.base import DURABILITY_LEVELS
from plinius.core.errors import MissingExtraError
from plinius.lab.bench import answer
from plinius.lab.bench.registry import sections
from plinius.lab.bench.saverestore import MIB, add_speedups, fmt_ms
from plinius.lab.bench.stats import Interval
from plinius.lab.bench.targets import targets
from plinius.lab.reporting import plots
from plinius.lab.reporting.markdown import md_table, provenance_md

UNITS = (
    "Units: MiB = 2^20 bytes and MiB/s = 2^20 bytes per second everywhere in this report "
    "(fio included); ms = 10^-3 s."
)
NOISE_RULE = (
    "a difference is *beyond the noise* when the two rows' 95 % bootstrap intervals of the "
    "median do not overlap (rows without intervals, from older runs: when their min–max "
    "ranges over the timed repeats do not overlap)"
)
STATS_NOTE = (
    "Statistics: every figure is the median of the interleaved rounds (each contender once per "
    "round, order rotated from round to round) with its 95 % percentile-bootstrap confidence "
    "interval in brackets (2000 resamples, seeded); ratios are bootstrapped paired by round. "
    "A target is *met* only when its whole interval meets the bar, *not met* when the whole "
    "interval misses it, *inconclusive* when the interval straddles it."
)
SAVE_COLUMNS = [
    "instance",
    "durability",
    "emulated",
    "model",
    "mirror B",
    "save ms [95% CI]",
    "cold restore ms [95% CI]",
    "restore ms [95% CI]",
    "save MiB/s",
    "restore MiB/s",
    "baseline",
    "save ×baseline",
    "restore ×baseline",
    "save/raw AES",
]
#: the terminal's narrower table (report.md has every column)
CONSOLE_SAVE_COLUMNS = [
    "instance",
    "durability",
    "emulated",
    "model",
    "mirror MiB",
    "save ms [95% CI]",
    "cold restore ms [95% CI]",
    "restore ms [95% CI]",
    "save ×baseline",
    "restore ×baseline",
]
BREAKDOWN_COLUMNS = [
    "instance",
    "durability",
    "model",
    "encrypt_s",
    "write_s",
    "flush_s",
    "fsync_s",
    "replace_s",
    "model_wait_s",
    "background_s",
    "encrypt share",
]
ENGINE_COLUMNS = [
    "engine",
    "raw encrypt MiB/s",
    "encrypt_into MiB/s",
    "seal/raw",
    "raw decrypt MiB/s",
    "decrypt_into MiB/s",
    "open/raw",
]
TARGET_COLUMNS = [
    "target",
    "compared",
    "durability (both sides)",
    "ratio [95% CI]",
    "verdict",
    "note",
]
#: the report's fuller targets table
TARGET_MD_COLUMNS = [
    "target",
    "workload",
    "compared",
    "durability (both sides)",
    "ratio [95% CI]",
    "bar",
    "verdict",
    "note",
]
CONTENDER_COLUMNS = ["section", "contender", "op", "ms [95% CI]", "MiB/s [95% CI]", "runs on"]
SUMMARY_COLUMNS = ["durability", "instances compared", "save", "restore"]
RECOMMEND_COLUMNS = [
    "durability",
    "model",
    "mirror MiB",
    "fastest save",
    "save ms",
    "save × next",
    "save beyond noise",
    "fastest restore",
    "restore ms",
    "restore × next",
    "restore beyond noise",
]


def _spread(med: float, lo: float, hi: float) -> str:
    return f"{fmt_ms(med)} ({fmt_ms(lo)}–{fmt_ms(hi)})"


def _x(v: float | None) -> str:
    return f"{v:.2f}×" if v is not None else "-"


def _iv(d: dict[str, Any] | None) -> Interval | None:
    return Interval.from_json(d) if d else None


def ms_text(iv: Interval) -> str:
    return f"{fmt_ms(iv.median)} [{fmt_ms(iv.lo)}–{fmt_ms(iv.hi)}]"


def _ms(p: dict[str, Any], op: str) -> str:
    """``median [lo–hi]`` ms of ``op`` from the row's intervals; older rows: median (min–max);
    ``-`` where the op does not apply (a cold restore of a backend that cannot evict)."""
    iv = _iv((p.get("intervals") or {}).get(f"{op}_s"))
    if iv is not None:
        return ms_text(iv)
    if op == "restore_cold":
        return "n/a" if "intervals" in p else "-"
    return _spread(p[f"{op}_s"], p[f"{op}_s_min"], p[f"{op}_s_max"])


def _xiv(p: dict[str, Any], key: str) -> str:
    iv = _iv((p.get("intervals") or {}).get(key))
    if iv is not None:
        return f"{iv.median:.2f}× [{iv.lo:.2f}–{iv.hi:.2f}]"
    return _x(p.get(key))


def _level(d: str) -> int:
    return DURABILITY_LEVELS.index(d) if d in DURABILITY_LEVELS else len(DURABILITY_LEVELS)


def tag(r: dict[str, Any]) -> str:
    """``instance`` with an ``[emulated]`` mark: how recommendation rows name an instance."""
    return str(r["instance"]) + (" (emulated)" if r.get("emulated") else "")


def normalise(doc: dict[str, Any]) -> dict[str, Any]:
    """Give the rows of an older results.json (before instances) their instance label,
    durability and emulation from its ``backends`` section, and like-for-like speed-ups."""
    rows = doc.get("results") or []
    if rows and any("instance" not in r or "durability" not in r for r in rows):
        runs_on = doc.get("backends") or {}
        for r in rows:
            ro = runs_on.get(r.get("instance") or r["backend"]) or {}
            r.setdefault("instance", r["backend"])
            r.setdefault("durability", ro.get("durability", "unknown"))
            r.setdefault("emulated", bool(ro.get("emulated")))
            r.setdefault("byte_addressable", bool(ro.get("byte_addressable")))
        add_speedups(rows)
    return doc


def ordered(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows grouped by durability level (power-fail first), then model, then plan order."""
    return sorted(results, key=lambda r: (_level(r["durability"]), r["model_mb"]))


def save_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "instance": p.get("instance", p["backend"]),
            "durability": p.get("durability", "-"),
            "emulated": "yes" if p.get("emulated") else "no",
            "model": p.get("model") or f"size-{p['model_mb']:g}",
            "mirror B": f"{p['bytes']:,}",
            "mirror MiB": f"{p['bytes'] / MIB:.1f}",
            "save ms [95% CI]": _ms(p, "save"),
            "cold restore ms [95% CI]": _ms(p, "restore_cold"),
            "restore ms [95% CI]": _ms(p, "restore"),
            "save MiB/s": round(p["save_mbps"]),
            "restore MiB/s": round(p["restore_mbps"]),
            "baseline": p.get("baseline") or "-",
            "save ×baseline": _xiv(p, "speedup_save_vs_baseline"),
            "restore ×baseline": _xiv(p, "speedup_restore_vs_baseline"),
            "save/raw AES": f"{p['save_vs_raw_seal']:.0%}" if p.get("save_vs_raw_seal") else "-",
        }
        for p in ordered(results)
    ]


def breakdown_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "instance": p.get("instance", p["backend"]),
            "durability": p.get("durability", "-"),
            "model": p.get("model") or f"size-{p['model_mb']:g}",
            **p["save_breakdown"],
            "encrypt share": f"{p['save_breakdown']['encrypt_s'] / p['save_s']:.0%}",
        }
        for p in ordered(results)
    ]


def engine_rows(engines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "engine": e["engine"],
            "raw encrypt MiB/s": round(e["raw_encrypt_mbps"]),
            "encrypt_into MiB/s": round(e["seal_mbps"]),
            "seal/raw": f"{e['seal_vs_raw']:.0%}",
            "raw decrypt MiB/s": round(e["raw_decrypt_mbps"]),
            "decrypt_into MiB/s": round(e["open_mbps"]),
            "open/raw": f"{e['open_vs_raw']:.0%}",
        }
        for e in engines
    ]


def doc_targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's targets table: as saved, else computed from its samples (older documents)."""
    if not doc.get("targets"):
        doc["targets"] = targets(doc)
    return list(doc["targets"])


def _ratio_text(t: dict[str, Any]) -> str:
    iv = _iv(t.get("interval"))
    if iv is None:
        return "-"
    if t.get("point_estimate"):
        v = iv.median
        return f"{v:+.1%} (point estimate: medians only)" if not t["at_least"] else f"{v:.3g}"
    if t.get("unit") == "fraction":  # an overhead: +4.2 % of the step time
        return f"{iv.median:+.1%} [{iv.lo:+.1%}–{iv.hi:+.1%}]"
    return f"{iv.median:.3g}× [{iv.lo:.3g}–{iv.hi:.3g}]"


def target_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target of the issue: the ratio with its interval, the bar and the verdict."""
    rows = []
    for t in doc_targets(doc):
        note = t.get("why") or t.get("reference") or ""
        if t.get("point_estimate"):
            note = (note + "; " if note else "") + "no interval: the section records medians"
        bar = t["bar"]
        fraction = t.get("point_estimate") or t.get("unit") == "fraction"
        if t.get("bar_value") is not None and not fraction:
            bar = f"{bar}×"
        elif fraction and t.get("bar_value") is not None:
            bar = f"{'>=' if t['at_least'] else '<='} {t['bar_value']:.0%}"
        rows.append(
            {
                "target": t["target"],
                "workload": t.get("workload") or "-",
                "compared": t.get("sides") or "-",
                "durability (both sides)": t.get("durability", "-"),
                "ratio [95% CI]": _ratio_text(t),
                "bar": bar,
                "verdict": t["verdict"],
                "note": note,
            }
        )
    return rows


def _runs_on(c: dict[str, Any]) -> str:
    f = c.get("facts") or {}
    if c["section"] == "save":
        bits = [str(f.get("durability", "?"))]
        if f.get("emulated"):
            bits.append("emulated")
        if f.get("cold_restore", "").startswith("not"):
            bits.append("no cold restore")
        return ", ".join(bits)
    keep = ("label", "fs", "engine", "threads", "how", "durability")
    return "; ".join(f"{k} {f[k]}" for k in keep if k in f and f[k] not in (None, ""))


def contender_rows(doc: dict[str, Any], workload: str) -> list[dict[str, Any]]:
    """Every contender of ``workload``'s rounds, one row per operation, medians with CI."""
    rows = []
    for c in doc.get("contenders") or []:
        if c["workload"] != workload:
            continue
        for op, o in c["ops"].items():
            iv = Interval.from_json(o["interval"])
            thr = Interval.from_json(o["mibps"])
            rows.append(
                {
                    "section": c["section"],
                    "contender": c["name"],
                    "op": op,
                    "ms [95% CI]": ms_text(iv),
                    "MiB/s [95% CI]": f"{thr.median:,.0f} [{thr.lo:,.0f}–{thr.hi:,.0f}]",
                    "runs on": _runs_on(c),
                }
            )
        status = (c.get("facts") or {}).get("status")
        if not c["ops"] and status:
            rows.append(
                {"section": c["section"], "contender": c["name"], "op": "-", "runs on": status}
            )
        if c.get("errors"):
            rows.append(
                {
                    "section": c["section"],
                    "contender": c["name"],
                    "op": "error",
                    "runs on": "; ".join(c["errors"]),
                }
            )
    return rows


def rounds_md(doc: dict[str, Any]) -> list[str]:
    """Per workload: its sections in the same rounds, every contender, the order that ran."""
    parts: list[str] = []
    for w in doc.get("workloads") or []:
        name = w["workload"]
        r = (doc.get("rounds") or {}).get(name) or {}
        parts += [
            f"### Workload {name} ({w['mirror_bytes'] / MIB:,.1f} MiB in {w['tensors']} "
            f"tensors; optimizer state {w['optimizer_bytes'] / MIB:,.1f} MiB)",
            "",
        ]
        order = r.get("order") or []
        if order:
            shown = "; ".join(f"round {i + 1}: {', '.join(o)}" for i, o in enumerate(order[:2]))
            parts += [
                f"{r.get('count')} interleaved rounds of {r.get('contenders')} contenders, order "
                f"rotated each round ({shown}; every round's order is in results.json).",
                "",
            ]
        for section, why in (w.get("not_run") or {}).items():
            parts += [f"- `{section}`: {why}"]
        if w.get("not_run"):
            parts.append("")
        rows = contender_rows(doc, name)
        if rows:
            parts += [md_table(rows, CONTENDER_COLUMNS), ""]
    return parts


# -- the answer -----------------------------------------------------------------------------------


def beyond_noise(fast: dict[str, Any], slow: dict[str, Any], key: str) -> bool:
    """True when the 95 % intervals of ``key`` (``save``/``restore``) do not overlap; rows
    without intervals (older runs): when their min–max ranges do not overlap."""
    a = _iv((fast.get("intervals") or {}).get(f"{key}_s"))
    b = _iv((slow.get("intervals") or {}).get(f"{key}_s"))
    if a is not None and b is not None:
        return a.hi < b.lo
    return bool(fast[f"{key}_s_max"] < slow[f"{key}_s_min"])


def recommendation(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per durability level and model: the fastest instance for save and for restore, how much
    faster than the next one of the *same* durability, and whether that is beyond the noise."""
    out: list[dict[str, Any]] = []
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in ordered(results):
        groups.setdefault((r["durability"], r["model_mb"]), []).append(r)
    for (durability, mb), rows in groups.items():
        rec: dict[str, Any] = {
            "durability": durability,
            "model_mb": mb,
            "model": rows[0].get("model") or f"size-{mb:g}",
            "mirror_bytes": rows[0]["bytes"],
            "instances": [r["instance"] for r in rows],
        }
        for key in ("save", "restore"):
            ranked = sorted(rows, key=lambda r: r[f"{key}_s"])
            best = ranked[0]
            rec[f"{key}_fastest"] = best["instance"]
            rec[f"{key}_fastest_tag"] = tag(best)
            rec[f"{key}_s"] = best[f"{key}_s"]
            if len(ranked) > 1:
                nxt = ranked[1]
                rec[f"{key}_next"] = nxt["instance"]
                rec[f"{key}_ratio"] = nxt[f"{key}_s"] / best[f"{key}_s"]
                rec[f"{key}_beyond_noise"] = beyond_noise(best, nxt, key)
            else:
                rec[f"{key}_next"] = None
                rec[f"{key}_ratio"] = None
                rec[f"{key}_beyond_noise"] = None
        out.append(rec)
    return out


def _yes(v: bool | None) -> str:
    return {True: "yes", False: "no", None: "-"}[v]


def recommend_rows(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for c in recs:
        row = {
            "durability": c["durability"],
            "model": c["model"],
            "mirror MiB": f"{c['mirror_bytes'] / MIB:.1f}",
        }
        for key in ("save", "restore"):
            ratio = c[f"{key}_ratio"]
            row[f"fastest {key}"] = c[f"{key}_fastest_tag"]
            row[f"{key} ms"] = fmt_ms(c[f"{key}_s"])
            row[f"{key} × next"] = (
                f"{ratio:.2f}× vs {c[f'{key}_next']}" if ratio is not None else "only one"
            )
            row[f"{key} beyond noise"] = _yes(c[f"{key}_beyond_noise"])
        rows.append(row)
    return rows


def verdict(recs: list[dict[str, Any]], key: str) -> str:
    """One durability level's answer for ``key`` (``save``/``restore``) across its models."""
    if not recs:
        return "-"
    if all(c[f"{key}_ratio"] is None for c in recs):
        return f"{recs[0][f'{key}_fastest_tag']} (the only instance: nothing to compare)"
    wins: dict[str, list[dict[str, Any]]] = {}
    for c in recs:
        wins.setdefault(c[f"{key}_fastest_tag"], []).append(c)
    clear = [c for c in recs if c[f"{key}_beyond_noise"]]
    if not clear:
        names = ", ".join(wins)
        return f"no clear winner: within the noise at all {len(recs)} models (fastest: {names})"
    parts = []
    for name, won in sorted(wins.items(), key=lambda kv: -len(kv[1])):
        ratios = [c[f"{key}_ratio"] for c in won]
        n_clear = sum(1 for c in won if c[f"{key}_beyond_noise"])
        parts.append(
            f"{name} at {len(won)}/{len(recs)} models, {min(ratios):.2f}–{max(ratios):.2f}× "
            f"faster than the next (beyond the noise at {n_clear})"
        )
    return "; ".join(parts)


def summary_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per durability level: who wins save and restore, across the models measured."""
    recs = recommendation(results)
    rows = []
    for d in dict.fromkeys(c["durability"] for c in recs):
        mine = [c for c in recs if c["durability"] == d]
        insts = list(dict.fromkeys(tag(r) for r in ordered(results) if r["durability"] == d))
        rows.append(
            {
                "durability": d,
                "instances compared": ", ".join(insts),
                "save": verdict(mine, "save"),
                "restore": verdict(mine, "restore"),
            }
        )
    return rows


def _cross_durability(results: list[dict[str, Any]]) -> list[str]:
    """The price of power-fail durability: a cross-durability ratio, labelled as such."""
    lines = []
    for mb in sorted({r["model_mb"] for r in results}, reverse=True)[:1]:
        at = [r for r in results if r["model_mb"] == mb]
        pf = [r for r in at if r["durability"] == "power-fail"]
        pc = [r for r in at if r["durability"] == "process-crash"]
        model = at[0].get("model") or f"size-{mb:g}"
        if pf and pc:
            for key in ("save", "restore"):
                a = min(pf, key=lambda r: r[f"{key}_s"])
                b = min(pc, key=lambda r: r[f"{key}_s"])
                lines.append(
                    f"- Cross-durability ratio (not a like-for-like speed-up: what power-fail "
                    f"durability costs here), {model} {key}: the fastest "
                    f"power-fail instance ({tag(a)}, {fmt_ms(a[f'{key}_s'])} ms) takes "
                    f"{a[f'{key}_s'] / b[f'{key}_s']:.2f}× the time of the fastest process-crash "
                    f"one ({tag(b)}, {fmt_ms(b[f'{key}_s'])} ms)."
                )
    return lines


def recommendation_md(doc: dict[str, Any]) -> str:
    results = doc.get("results") or []
    parts = ["## Recommendation", ""]
    if not results:
        parts += ["No save/restore results in this run: nothing to recommend.", ""]
        return "\n".join(parts)
    parts += [
        "Where should the encrypted mirror live? Only instances of **equal durability** are "
        "compared: pick the durability you need (power-fail: survives power loss and reboot; "
        "process-crash: survives a killed process only), then the fastest instance of that "
        f"level. Medians of {doc['parameters']['repeats']} timed rounds; {NOISE_RULE}. "
        "`(emulated)` instances ran on stand-in storage (see provenance). " + UNITS,
        "",
        md_table(summary_rows(results), SUMMARY_COLUMNS),
        "",
        "Per model (`× next`: how much slower the runner-up of the same durability is):",
        "",
        md_table(recommend_rows(recommendation(results)), RECOMMEND_COLUMNS),
        "",
    ]
    cross = _cross_durability(results)
    if cross:
        parts += [*cross, ""]
    lines = instance_lines(doc)
    if lines:
        parts += ["Instances compared (durability and emulation as their backends reported):", ""]
        parts += [*lines, ""]
    return "\n".join(parts)


def instance_lines(doc: dict[str, Any]) -> list[str]:
    """One line per planned instance: label, why it is in the plan, durability, emulation."""
    lines = []
    for p in doc.get("plan") or []:
        ro = (doc.get("backends") or {}).get(p["instance"], {})
        facts = [str(ro.get("durability") or p.get("durability") or "?")]
        if ro.get("emulated"):
            facts.append("emulated")
        where = f" on {ro['fs_type']} ({ro['device']})" if ro.get("fs_type") else ""
        role = f" — {p['role']}" if p.get("role") else ""
        if p.get("status") == "run":
            lines.append(f"- `{p['instance']}`{role}: {', '.join(facts)}{where}")
        else:
            lines.append(f"- `{p['instance']}`{role}: not run: {p.get('reason')}")
    return lines


def write_outputs(doc: dict[str, Any], out: Path) -> list[Path]:
    """report.md and every figure the document has data for; without matplotlib the report
    is still written and says the figures were skipped."""
    normalise(doc)
    written = [out / "report.md"]
    try:
        written += _figures(doc, out)
    except MissingExtraError as exc:
        doc["figures_skipped"] = str(exc)
    (out / "report.md").write_text(render_markdown(doc, [p.name for p in written[1:]]))
    return written


def _figures(doc: dict[str, Any], out: Path) -> list[Path]:
    written: list[Path] = []
    ask = doc["parameters"].get("answer")
    if ask:  # the answer's one figure; the paper's figures belong to --paper
        opts = answer.options(doc, ask["workload"], ask["step_s"], ask["every"])
        opts += answer.peers(doc, ask["workload"], ask["step_s"], ask["every"])
        panels = [(lv, [o for o in opts if o.durability == lv]) for lv in answer.LEVELS]
        size = opts[0].mirror_bytes / (1 << 20) if opts else 0
        title = f"Where should a {size:,.1f} MiB mirror live? ({ask['workload']})"
        written.append(plots.answer(panels, out / "answer.png", title))
    for s in sections() if not ask else []:
        if s.figures is not None:
            written += s.figures(doc, out)
    shown = [
        t
        for t in doc_targets(doc)
        if t.get("interval") and not t.get("point_estimate") and t.get("unit") != "fraction"
    ]
    if shown and not ask:
        written.append(plots.targets(shown, out / "targets.png"))
    return written


def render_markdown(doc: dict[str, Any], figures: list[str]) -> str:
    normalise(doc)
    params = doc["parameters"]
    ask = params.get("answer")
    head = answer.markdown(doc, ask["workload"], ask["step_s"], ask["every"]) if ask else []
    parts = [
        *head,
        "# plinius bench: the details" if ask else "# plinius bench",
        "",
        UNITS,
        "",
        f"Models size-N for N in {params['sizes_mb']} (N MiB of parameters: 3×3, 256-filter conv "
        "layers of 2.25 MiB); each is saved as `plinius train` mirrors it, parameters **plus** "
        "momentum buffers, so a mirror holds about 2N MiB (exact bytes per row). "
        f"{params['repeats']} interleaved rounds after one warm-up"
        f"{' (quick run: fewer rounds than the full run)' if params.get('quick') else ''}; "
        f"crypto engine `{params['engine']}`; {'quick' if params.get('quick') else 'full'} run. "
        "Every row "
        "is a backend *instance* (name and options) with the durability and emulation its "
        "backend reported; speed-ups are only against the baseline of the same durability "
        "(the first non-emulated file instance of that level), never RAM against a disk. "
        "Figures from emulated storage are marked: they are not real persistent-memory, DAX or "
        "SGX figures. The answer is the **Recommendation** at the end.",
        "",
        STATS_NOTE,
        "",
        "## Targets",
        "",
        "Ratios measured in this run, in the same interleaved rounds (× = how many times the "
        "first side's throughput; cold = restore after the file was evicted from the page "
        "cache).",
        "",
        md_table(target_rows(doc), TARGET_MD_COLUMNS),
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
    listed = False
    for s in sections():
        if s.contenders is None and not listed and doc.get("workloads"):
            parts += _rounds_part(doc)
            listed = True
        if s.render is not None:
            parts += s.render(doc)
    if not listed and doc.get("workloads"):
        parts += _rounds_part(doc)
    parts += [f"![{f}]({f})" for f in figures]
    if doc.get("figures_skipped"):
        parts += ["", f"Figures not drawn: {doc['figures_skipped']}."]
    parts += ["", provenance_md(doc["provenance"], doc["backends"], "instance"), ""]
    parts += [recommendation_md(doc), ""]
    return "\n".join(parts)


def _rounds_part(doc: dict[str, Any]) -> list[str]:
    return [
        "## Every contender per workload (backends, peers, limits, PyTorch)",
        "",
        "What users would pick instead (peers) and the machine's limits (memcpy, raw "
        "AES-GCM with one thread and with all cores) ran in the same rounds as the "
        "backends, on the same tensors.",
        "",
        *rounds_md(doc),
    ]
