"""The targets of the speed issue, computed from one run's samples as ratios with intervals.

Each target compares two things measured in the same interleaved rounds (a backend instance
against a peer, a limit or another instance) at the target workload (the paper's size-64
model when it ran). The ratio's 95 % interval is bootstrapped paired by round
(:mod:`plinius.lab.bench.stats`); the verdict is ``met`` only when the whole interval meets the
bar, ``not met`` when it misses it entirely, ``inconclusive`` when it straddles it,
``reported`` when the issue sets no bar (the figure is shown with its interval), and
``not run`` (with why) when an input is missing. Everything is read from results.json, so
``plinius report`` redraws the table without re-running.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from plinius.lab.bench.registry import TARGET_WORKLOAD, sections
from plinius.lab.bench.verdicts import TargetTable


def target_workload(doc: Mapping[str, Any]) -> str | None:
    """size-64 when it ran, else the first workload the full sections ran on, else the first
    workload at all."""
    names = [w["workload"] for w in doc.get("workloads") or []]
    if TARGET_WORKLOAD in names:
        return TARGET_WORKLOAD
    full = [w["workload"] for w in doc.get("workloads") or [] if w.get("full")]
    return (full or names or [None])[0]


def measured(doc: Mapping[str, Any], wl: str | None, section: str) -> list[dict[str, Any]]:
    """The contenders of ``section`` at workload ``wl`` that have samples."""
    return [
        c
        for c in doc.get("contenders") or []
        if c["section"] == section and c["workload"] == wl and c.get("ops")
    ]


def by_id(
    doc: Mapping[str, Any], wl: str | None, section: str, ident: str
) -> dict[str, Any] | None:
    """The contender ``section:ident`` at ``wl`` (what targets name; never a substring)."""
    full = f"{section}:{ident}"
    return next((c for c in measured(doc, wl, section) if c.get("id") == full), None)


def median(c: Mapping[str, Any], op: str) -> float:
    o = c["ops"].get(op)
    return float(o["interval"]["median"]) if o and o.get("seconds") else float("inf")


def fastest(
    cands: Sequence[dict[str, Any]], ops: Sequence[str]
) -> tuple[dict[str, Any], str] | None:
    """The (contender, op) with the lowest median among ``cands`` and their ``ops``."""
    best = min(
        ((median(c, op), i, op) for i, c in enumerate(cands) for op in ops if op in c["ops"]),
        default=None,
    )
    if best is None or best[0] == float("inf"):
        return None
    return cands[best[1]], best[2]


def row_at(doc: Mapping[str, Any], wl: str | None, instance: str) -> dict[str, Any] | None:
    """The save section's results row of ``instance`` at ``wl`` (with per-round samples)."""
    for r in doc.get("results") or []:
        if r.get("model") == wl and r.get("instance") == instance and r.get("samples"):
            return dict(r)
    return None


def model_rows(doc: Mapping[str, Any], wl: str | None) -> list[dict[str, Any]]:
    """The device models' rows at ``wl`` (rows whose ``models`` names what they delay)."""
    return [
        dict(r)
        for r in doc.get("results") or []
        if r.get("model") == wl and r.get("models") is not None and r.get("samples")
    ]


def headline(r: Mapping[str, Any]) -> tuple[list[float], str]:
    """A row's headline restore samples and which: cold where it has one, else warm."""
    s = r["samples"]
    return (list(s["restore_cold"]), "cold") if s.get("restore_cold") else (s["restore"], "warm")


def missing(what: Sequence[tuple[str, object]]) -> str:
    gone = [name for name, v in what if v is None]
    return "not run: " + ", ".join(gone) + " did not run at this workload" if gone else ""


def why_not(doc: Mapping[str, Any], wl: str | None, section: str, default: str) -> str:
    """Why ``section`` did not run at ``wl``, as its workload recorded it."""
    for w in doc.get("workloads") or []:
        if w["workload"] == wl and section in (w.get("not_run") or {}):
            return str(w["not_run"][section])
    return default


def targets(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every target of every registered section, measured in this run (see the module's
    docstring), as results.json stores them."""
    t = TargetTable(target_workload(doc))
    for s in sections():
        if s.targets is not None:
            s.targets(doc, t)
    return [r.as_dict() for r in t.rows]
