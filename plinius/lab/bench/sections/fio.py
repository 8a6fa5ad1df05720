"""``fio``: the storage under each backend's default root (Fig. 2), measured by fio."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from plinius.core.errors import ConfigError
from plinius.lab.bench.registry import Section, SuiteOptions, register

NAME = "fio"


def run(opts: SuiteOptions) -> dict[str, Any]:
    from plinius.backends import backend_class
    from plinius.lab.fio import FioParams, run_fio
    from plinius.lab.profiles import fio_root

    params = FioParams.quick(**opts.fio_options) if opts.quick else FioParams(**opts.fio_options)
    names = opts.backends
    measured = [n for n in names if fio_root(n) is not None]
    skipped = [
        {"backend": n, "reason": f"not file-backed ({backend_class(n).locality}): no storage here"}
        for n in names
        if n not in measured
    ]
    if not measured:
        raise ConfigError("no file-backed backend in the plan: fio has no storage to characterise")
    out = dict(run_fio(backends=measured, params=params).as_dict())
    out["not_characterised"] = skipped
    return out


def render(doc: Mapping[str, Any]) -> list[str]:
    from plinius.lab.fio import FioReport, table_rows
    from plinius.lab.reporting.markdown import md_table

    if not doc.get(NAME):
        return []
    rows = table_rows(FioReport.from_dict(doc[NAME]))
    if not rows:
        return []
    return [
        "## Storage under the backends: fio (Fig. 2)",
        "",
        "fio characterises the storage under each backend's default root (not a backend "
        "instance: no mirror, no durability protocol); MiB/s = 2^20 bytes per second. "
        "Backends marked * are emulated there.",
        "",
        md_table(rows, list(rows[0])),
        "",
    ]


def figures(doc: Mapping[str, Any], out: Path) -> list[Path]:
    from plinius.lab.fio import FioReport, plot_fig2

    if not doc.get(NAME):
        return []
    report = FioReport.from_dict(doc[NAME])
    return [Path(plot_fig2(report, out / "fio_fig2.png"))] if report.results else []


register(
    Section(
        NAME,
        "fio on the storage under each backend (Fig. 2)",
        70,
        run=run,
        render=render,
        figures=figures,
    )
)
