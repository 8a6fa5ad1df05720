"""``batch``: iteration time with encrypted versus plaintext training data (Fig. 8)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from plinius.lab.bench.registry import Section, SuiteOptions, register
from plinius.lab.bench.stats import Interval
from plinius.lab.bench.verdicts import TargetTable

NAME = "batch"
QUICK_BATCHES = (8, 16, 32, 64, 128)


def run(opts: SuiteOptions) -> list[dict[str, Any]]:
    from plinius.lab.bench.iteration import PAPER_BATCHES, batch_sweep

    batches = QUICK_BATCHES if opts.quick else PAPER_BATCHES
    return [p.as_dict() for p in batch_sweep("batch", batches, repeats=3)]


def targets(doc: Mapping[str, Any], t: TargetTable) -> None:
    b128 = next((p for p in doc.get(NAME) or [] if p["batch"] == 128), None)
    what = "encrypted / plaintext data, batch 128"
    if b128 is None:
        t.add("batch128_encrypted_vs_plaintext", what, 1.1, None, at_least=False,
              why="not run: the batch section did not run at batch 128")  # fmt: skip
        return
    v = float(b128["ratio"])
    t.add(
        "batch128_encrypted_vs_plaintext",
        what,
        1.1,
        Interval(v, v, v, 1),
        at_least=False,
        point=True,
        sides="iteration time, encrypted vs plaintext data (medians)",
        workload=str(b128["model"]),
    )


def render(doc: Mapping[str, Any]) -> list[str]:
    from plinius.lab.reporting.markdown import md_table

    if not doc.get(NAME):
        return []
    columns = ["model", "batch", "encrypted s", "plaintext s", "ratio", "decrypt batch ms"]
    rows = [
        {
            "model": p["model"],
            "batch": p["batch"],
            "encrypted s": p["encrypted_s"],
            "plaintext s": p["plaintext_s"],
            "ratio": p["ratio"],
            "decrypt batch ms": p["decrypt_s"] * 1e3,
        }
        for p in doc[NAME]
    ]
    return ["## Iteration time versus batch size (Fig. 8)", "", md_table(rows, columns), ""]


def figures(doc: Mapping[str, Any], out: Path) -> list[Path]:
    from plinius.lab.reporting import plots

    return [plots.batch_times(doc[NAME], out / "batch.png")] if doc.get(NAME) else []


register(
    Section(
        NAME,
        "iteration time with encrypted versus plaintext data (Fig. 8)",
        80,
        run=run,
        targets=targets,
        render=render,
        figures=figures,
    )
)
