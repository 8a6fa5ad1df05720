"""The answer of ``plinius bench``: where should *this* mirror live, and what does each choice cost?

From the save section's rows at the user's one workload (every backend instance, measured in the
same interleaved rounds), one table per durability level: save, cold and warm restore (medians
with their 95 % intervals), the mirroring overhead per training step at the user's step time and
mirror interval, the work lost per failure, the bytes per save. Then one recommendation per level
by one stated rule: the fastest save wins only where its whole interval lies below the next
option's; otherwise the options are *tied* and the report says what to choose by. The same rows
and the same intervals feed the targets table, so the two never disagree. Options of different
durability are never ranked against each other; one labelled "cost of durability" line says
what the stronger level costs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from plinius.lab.bench.stats import Interval, median_interval

RULE = (
    "an option wins only where its whole save interval lies below the next option's; "
    "otherwise they are tied"
)
#: the durability levels, strongest first (the order of the answer's tables)
LEVELS = ("power-fail", "process-crash", "none")
TITLES = {"power-fail": "power failure", "process-crash": "process crash"}


@dataclass(frozen=True)
class Option:
    """One backend instance at the user's workload, as the answer shows it."""

    instance: str
    durability: str
    emulated: bool
    role: str
    mirror_bytes: int
    save: Interval
    restore_warm: Interval
    restore_cold: Interval | None
    #: seconds of save per training step (save / (every × step time)), as a fraction
    overhead: Interval
    #: training seconds lost by one failure: half an interval on average plus the restore
    lost_s: float

    @property
    def restore(self) -> Interval:
        """The headline restore: cold where the backend has a page cache to evict."""
        return self.restore_cold or self.restore_warm


@dataclass(frozen=True)
class Verdict:
    durability: str
    text: str
    winner: str | None  # None: tied (or a single option)


def options(doc: Mapping[str, Any], workload: str, step_s: float, every: int) -> list[Option]:
    """Every instance measured at ``workload``, fastest save first."""
    out = []
    interval_s = step_s * every
    for r in doc.get("results") or []:
        if r.get("model") != workload or not r.get("samples"):
            continue
        s = r["samples"]
        save = median_interval(s["save"])
        warm = median_interval(s["restore"])
        cold = median_interval(s["restore_cold"]) if s.get("restore_cold") else None
        over = save.scaled(1.0 / interval_s)
        restore = cold or warm
        out.append(
            Option(
                instance=str(r["instance"]),
                durability=str(r["durability"]),
                emulated=bool(r.get("emulated")),
                role=str(r.get("role") or ""),
                mirror_bytes=int(r["bytes"]),
                save=save,
                restore_warm=warm,
                restore_cold=cold,
                overhead=over,
                lost_s=interval_s / 2 + restore.median,
            )
        )
    return sorted(out, key=lambda o: o.save.median)


def recommend(opts: Sequence[Option], durability: str) -> Verdict:
    """The one rule (:data:`RULE`) applied to the options of one durability level. A device
    model (an option that only adds delays to another) is shown but never wins."""
    real = [o for o in opts if o.durability == durability and not o.role.endswith("model")]
    if not real:
        return Verdict(durability, "nothing measured at this level", None)
    if len(real) == 1:
        only = real[0]
        return Verdict(durability, f"`{only.instance}` (the only option measured)", only.instance)
    best, nxt = real[0], real[1]
    if best.save.hi < nxt.save.lo:
        ratio = nxt.save.median / best.save.median
        text = (
            f"**`{best.instance}`**: its save is {ratio:.1f}× faster than the next option "
            f"(`{nxt.instance}`), beyond the noise"
        )
        return Verdict(durability, text, best.instance)
    tied = [o.instance for o in real if o.save.lo <= best.save.hi]
    by_restore = min((o for o in real if o.instance in tied), key=lambda o: o.restore.median)
    text = (
        f"**tied** on save: {', '.join(f'`{t}`' for t in tied)} (intervals overlap); choose by "
        f"restore (fastest: `{by_restore.instance}`), by what you run already, or by cost"
    )
    return Verdict(durability, text, None)


def _ms(iv: Interval | None) -> str:
    if iv is None:
        return "n/a"
    return f"{iv.median * 1e3:,.1f} [{iv.lo * 1e3:,.1f}–{iv.hi * 1e3:,.1f}]"


def _pct(iv: Interval) -> str:
    if iv.hi < 0.00005:
        return "< 0.005 %"
    return f"{iv.median:.2%} [{iv.lo:.2%}–{iv.hi:.2%}]"


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


def contention(doc: Mapping[str, Any]) -> list[str]:
    """Why this run's figures may be noisy: load above the cores, CPU steal, a wide spread of
    the save samples. Empty when the machine looked quiet."""
    why = []
    cores = os.cpu_count() or 1
    env = doc.get("contention") or {}
    loads = [v for v in (env.get("load_before"), env.get("load_after")) if v is not None]
    if loads and max(loads) > cores:
        why.append(f"load average {max(loads):.1f} on {cores} cores")
    steal = env.get("steal_fraction")
    if steal is not None and steal > 0.05:
        why.append(f"CPU steal {steal:.0%} during the run")
    spread = env.get("max_spread")
    if spread is not None and spread > 0.5:
        why.append(f"save samples spread up to {spread:.0%} of their median")
    return why


def markdown(doc: Mapping[str, Any], workload: str, step_s: float, every: int) -> list[str]:
    """The first screen of report.md: the whole answer, about 40 lines."""
    opts = options(doc, workload, step_s, every)
    wl: Mapping[str, Any] = next(
        (w for w in doc.get("workloads") or [] if w["workload"] == workload), {}
    )
    size = _mib(int(wl.get("mirror_bytes") or (opts[0].mirror_bytes if opts else 0)))
    asked = (doc.get("parameters") or {}).get("answer", {}).get("mirror_bytes")
    measured = int(wl.get("mirror_bytes") or 0)
    note = ""
    if asked and measured and abs(measured - asked) > 0.05 * asked:
        note = f" (you asked for {_mib(int(asked))}: this is the closest synthetic model)"
    lines = [
        f"# Where should a {size} encrypted mirror live?",
        "",
        f"Workload `{workload}` ({size} per save{note}, AES-GCM sealed), one mirror every {every} "
        f"training steps of {step_s:g} s. Medians of {doc.get('parameters', {}).get('rounds', '?')}"
        " interleaved rounds with 95 % intervals; times in ms. "
        "Emulated storage is marked *emulated*: not a hardware figure.",
        "",
    ]
    noisy = contention(doc)
    if noisy:
        lines += [
            f"> **Contended machine**: {'; '.join(noisy)}. Figures are noisier than usual; "
            "verdicts below need their intervals to separate even so.",
            "",
        ]
    verdicts = []
    for level in LEVELS:
        mine = [o for o in opts if o.durability == level]
        if not mine:
            continue
        lines += [
            f"## Survives a {TITLES[level]}" if level != "none" else "## No durability",
            "",
            "| option | save ms | restore cold ms | restore warm ms | overhead per step "
            "| work lost per failure | bytes per save |",
            "|---|---|---|---|---|---|---|",
        ]
        for o in mine:
            tag = " *(emulated)*" if o.emulated else ""
            if o.role.endswith("model"):
                tag += " *(a model of real PM: compare with the pool it delays)*"
            lines.append(
                f"| `{o.instance}`{tag} | {_ms(o.save)} | {_ms(o.restore_cold)} | "
                f"{_ms(o.restore_warm)} | {_pct(o.overhead)} | {o.lost_s:,.1f} s | "
                f"{_mib(o.mirror_bytes)} |"
            )
        v = recommend(opts, level)
        verdicts.append(v)
        lines += ["", f"**Recommendation ({level})**: {v.text}.", ""]
    strong = [o for o in opts if o.durability == "power-fail" and not o.role.endswith("model")]
    weak = [o for o in opts if o.durability == "process-crash" and not o.role.endswith("model")]
    if strong and weak:
        lines += [
            f"Cost of durability: surviving a power failure costs "
            f"{strong[0].save.median / weak[0].save.median:.1f}× the fastest save that survives "
            f"only a process crash (`{strong[0].instance}` vs `{weak[0].instance}`).",
            "",
        ]
    lines += [
        f"Rule: {RULE}. Overhead per step = save / ({every} × {step_s:g} s), synchronous "
        "mirroring (`--async-mirror` hides most of it); work lost per failure = half an "
        "interval on average plus the restore.",
        "",
        "---",
        "",
    ]
    return lines
