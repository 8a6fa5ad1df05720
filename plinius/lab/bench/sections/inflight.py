"""``inflight``: mirroring overhead per step with up to K asynchronous mirrors in flight
(``max_in_flight``, K = 1, 2, 4) against the mirror interval, on a workload whose persist takes
longer than a step (:mod:`plinius.lab.bench.inflight`). Not part of the answer (``plinius
bench`` without ``--paper`` runs only ``save`` and ``peers``); it sets no target, the issue
that asked for it set none."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from plinius.lab.bench.registry import Section, SuiteOptions, register

NAME = "inflight"


def run(opts: SuiteOptions) -> dict[str, Any]:
    from plinius.lab.bench import inflight

    if opts.quick:  # a few seconds: two intervals, three rounds
        result = inflight.measure(every=inflight.QUICK_EVERY, rounds=3, steps=24)
    else:
        result = inflight.measure(rounds=max(3, opts.rounds))
    return result.as_dict()


def render(doc: Mapping[str, Any]) -> list[str]:
    from plinius.lab.bench import inflight
    from plinius.lab.reporting.markdown import md_table

    got = doc.get(NAME)
    if not got or not got.get("rows"):
        return []
    return [
        "## Mirrors in flight (max_in_flight K) versus the mirror interval M",
        "",
        inflight.headline(got),
        "",
        md_table(inflight.table_rows(got), inflight.columns(got)),
        "",
        str(got.get("finding") or ""),
        "",
    ]


register(
    Section(
        NAME,
        "mirroring overhead per step with K mirrors in flight vs the mirror interval",
        95,
        run=run,
        render=render,
    )
)
