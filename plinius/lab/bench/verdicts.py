"""Target rows: one comparison of a run, its ratio with an interval, its bar and its verdict.

Every section that sets a bar adds its rows to one :class:`TargetTable`; the table, the report
and results.json (key ``targets``) all read the same :class:`TargetRow` records.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from plinius.lab.bench.stats import Interval, verdict


@dataclass(frozen=True)
class TargetRow:
    """One target as results.json stores it (the keys are a public interface)."""

    id: str
    target: str
    workload: str | None
    sides: str
    durability: str
    bar: str
    bar_value: float | None
    at_least: bool
    interval: dict[str, Any] | None
    measured: float | None
    reference: str
    point_estimate: bool
    unit: str
    verdict: str
    why: str = ""

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.why:
            del out["why"]
        return out


class TargetTable:
    """The targets of one run, in the order the sections add them."""

    def __init__(self, workload: str | None) -> None:
        self.wl = workload
        self.rows: list[TargetRow] = []

    def add(
        self,
        key: str,
        target: str,
        bar: float | None,
        iv: Interval | None,
        *,
        sides: str = "",
        durability: str = "-",
        why: str = "",
        at_least: bool = True,
        reference: str = "",
        point: bool = False,
        workload: str | None = None,
        fraction: bool = False,
    ) -> None:
        """``iv`` None: not run (``why`` says what was missing); ``bar`` None: reported only.
        An overhead (``fraction``) whose interval reaches zero or below is no measurable
        overhead: said so with its upper bound, never counted as a met target."""
        sign = ">=" if at_least else "<="
        if iv is None:
            judged, why = "not run", why or "an input did not run"
        elif fraction and iv.lo <= 0:
            judged = "no measurable overhead"
            why = f"< {max(iv.hi, 0.0):.1%}: the interval reaches zero (noise, not a speed-up)"
        elif bar is None:
            judged, why = "reported", ""
        else:
            judged, why = verdict(iv, bar, at_least), ""
        self.rows.append(
            TargetRow(
                id=key,
                target=target,
                workload=workload or self.wl,
                sides=sides,
                durability=durability,
                bar=f"{sign} {bar:g}" if bar is not None else "no target",
                bar_value=bar,
                at_least=at_least,
                interval=None if iv is None else iv.as_json(),
                measured=None if iv is None else iv.median,
                reference=reference,
                point_estimate=point,
                unit="fraction" if fraction else "ratio",
                verdict=judged,
                why=why,
            )
        )
