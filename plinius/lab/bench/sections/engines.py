"""``engines``: raw AES-GCM against the sealing path (``encrypt_into``/``decrypt_into``) of
every installed crypto engine, one 64 MiB buffer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from plinius.lab.bench.registry import Section, SuiteOptions, register
from plinius.lab.bench.stats import Interval
from plinius.lab.bench.verdicts import TargetTable

NAME = "engines"


def run(opts: SuiteOptions) -> list[dict[str, Any]]:
    from plinius.lab.bench.engine import measure_engines

    return [e.as_dict() for e in measure_engines(64, max(3, opts.repeats))]


def targets(doc: Mapping[str, Any], t: TargetTable) -> None:
    for e in doc.get(NAME) or []:
        v = float(e["seal_vs_raw"])
        t.add(
            f"seal_vs_raw:{e['engine']}",
            f"encrypt_into / raw, {e['engine']}, 64 MiB",
            0.9,
            Interval(v, v, v, 1),
            sides="encrypt_into vs raw encrypt (best of the repeats)",
            point=True,
            workload="64 MiB buffer",
        )


def render(doc: Mapping[str, Any]) -> list[str]:
    from plinius.lab.bench.render import ENGINE_COLUMNS, engine_rows
    from plinius.lab.reporting.markdown import md_table

    if not doc.get(NAME):
        return []
    return [
        "## AES-GCM engines, one 64 MiB buffer (best of the repeats, MiB/s)",
        "",
        md_table(engine_rows(doc[NAME]), ENGINE_COLUMNS),
        "",
    ]


register(
    Section(
        NAME,
        "raw AES-GCM versus the sealing path, every crypto engine",
        50,
        run=run,
        targets=targets,
        render=render,
    )
)
