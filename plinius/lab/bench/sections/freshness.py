"""``freshness``: what one mirror save's freshness work (``begin`` + ``commit``) costs on the
simulated CPU and on swtpm, a software TPM, with ``counter_every`` 1, 8 and 30s, and the raw
swtpm commands that explain it (:mod:`plinius.lab.bench.freshness`). Not part of the answer
(``plinius bench`` without ``--paper`` runs only ``save`` and ``peers``): ``plinius bench
--only freshness`` runs it. It sets no target: the issue that asked for it set none. Without
swtpm or tpm2-pytss its swtpm rows say why they did not run; the simulated row still runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from plinius.lab.bench.registry import Section, SuiteOptions, register

NAME = "freshness"


def run(opts: SuiteOptions) -> dict[str, Any]:
    from plinius.lab.bench import freshness

    if opts.quick:  # a few seconds, swtpm's manufacturing included
        return freshness.measure(
            rounds=freshness.QUICK_ROUNDS, saves=freshness.QUICK_SAVES, calls=freshness.QUICK_CALLS
        )
    return freshness.measure(
        rounds=max(freshness.ROUNDS, opts.rounds), saves=freshness.SAVES, calls=freshness.CALLS
    )


def render(doc: Mapping[str, Any]) -> list[str]:
    from plinius.lab.bench import freshness

    got = doc.get(NAME)
    if not got or not got.get("contenders"):
        return []
    return freshness.markdown(got)


register(
    Section(
        NAME,
        "freshness cost per save: the simulated CPU and swtpm (a software TPM), counter_every",
        96,
        run=run,
        render=render,
    )
)
