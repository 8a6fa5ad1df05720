"""The whole benchmark of ``plinius bench``: every registered section in one run.

The sections (:mod:`plinius.lab.bench.sections`, found by :mod:`plinius.lab.bench.registry`)
that time contenders run together in the interleaved rounds of every workload; the others run one
after the other. A section that fails is recorded with its error and the others still run: partial
results are kept and marked.
"""

from __future__ import annotations

import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from plinius.core.errors import PliniusError, ToolMissingError
from plinius.lab.bench.registry import NotRun, SuiteOptions, section_names
from plinius.lab.bench.rounds import RoundsResult, run_workloads, steps
from plinius.lab.plan import plan_instances, root_dir

QUICK_ROUNDS = 3
__all__ = ["QUICK_ROUNDS", "SuiteOptions", "run_suite", "section_names", "total_steps"]


def total_steps(opts: SuiteOptions) -> int:
    """Progress steps :func:`run_suite` takes: one per interleaved round of each workload, one
    per other section."""
    n = steps(len(opts.models), opts.rounds) if opts.in_rounds else 0
    return n + sum(1 for s in opts.chosen() if s.run is not None)


def _section(doc: dict[str, Any], name: str, fn: Callable[[], Any]) -> None:
    t0 = time.perf_counter()
    try:
        doc[name] = fn()
        doc["sections"][name] = {"status": "ok"}
    except (ToolMissingError, NotRun) as exc:
        # an optional external tool: the rest of the benchmark stands, the report says why not
        doc["sections"][name] = {"status": "skipped", "error": str(exc)}
    except (PliniusError, OSError, ValueError, RuntimeError) as exc:
        doc["sections"][name] = {
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "where": traceback.format_exc(limit=3).splitlines()[-3:],
        }
    doc["sections"][name]["seconds"] = round(time.perf_counter() - t0, 1)


def run_suite(
    opts: SuiteOptions,
    tick: Callable[[], None] = lambda: None,
    grow: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Every chosen section; ``tick`` is called exactly :func:`total_steps` times (a section
    that fails early is advanced to its planned count, so the progress bar ends at its total),
    plus once per round a contended machine adds, each announced to ``grow`` first."""
    doc: dict[str, Any] = {"sections": {}}
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        tick()

    def catch_up(to: int) -> None:
        while done < to:
            step()

    if opts.in_rounds:
        _section(doc, "results", lambda: _rounds(opts, step, grow))
        got = doc.pop("results", None)
        if isinstance(got, RoundsResult):
            doc["results"] = got.rows
            doc["contenders"] = got.contenders
            doc["rounds"] = got.rounds
            doc["workloads"] = got.workloads
            _rounds_status(doc, opts, got)
        whole = doc["sections"].pop("results")
        if whole["status"] != "ok":  # the rounds themselves failed: every rounds section did
            for s in opts.chosen():
                if s.contenders is not None:
                    doc["sections"][s.name] = dict(whole)
        catch_up(steps(len(opts.models), opts.rounds))
    for s in opts.chosen():
        if s.run is not None:
            _section(doc, s.name, partial(s.run, opts))
            step()
    return doc


def _rounds(
    opts: SuiteOptions, tick: Callable[[], None], grow: Callable[[int], None] | None
) -> RoundsResult:
    chosen = [s for s in opts.chosen() if s.contenders is not None]
    plan = opts.plan if any(s.collect is not None for s in chosen) else []

    @contextmanager
    def labelled() -> Iterator[list[tuple[str, str]]]:
        with plan_instances(plan) as pairs:
            yield [(p.label, spec) for p, spec in pairs]

    roles = {p.label: p.role for p in plan}
    return run_workloads(opts, chosen, labelled, tick, roles=roles, dirs=side_dirs, grow=grow)


@contextmanager
def side_dirs() -> Iterator[dict[str, Path]]:
    """Fresh directories for the peers: ``tmpfs`` in RAM, ``ssd`` on the disk (removed after)."""
    with (
        tempfile.TemporaryDirectory(prefix="plinius-peers-", dir=root_dir("shm")) as shm,
        tempfile.TemporaryDirectory(prefix="plinius-peers-", dir=root_dir("disk")) as disk,
    ):
        yield {"tmpfs": Path(shm), "ssd": Path(disk)}


def _rounds_status(doc: dict[str, Any], opts: SuiteOptions, got: RoundsResult) -> None:
    """A status per rounds section: ok where it gave contenders (with the workloads that did
    not run it as notes), else skipped or failed with the reason its workloads recorded."""
    for s in opts.chosen():
        if s.contenders is None:
            continue
        ran = any(c["section"] == s.name for c in got.contenders)
        why = [w["not_run"][s.name] for w in got.workloads if s.name in w.get("not_run", {})]
        if ran:
            doc["sections"][s.name] = {"status": "ok", "seconds": 0.0}
            if why:
                doc["sections"][s.name]["notes"] = why
        else:
            reason = why[0] if why else "no workload ran it"
            status = "failed" if reason.startswith("failed") else "skipped"
            doc["sections"][s.name] = {"status": status, "error": reason, "seconds": 0.0}
