"""The interleaved rounds of every workload, over every registered section that has contenders.

For each workload, every chosen rounds section gives its contenders (backend instances, peers,
limits, the PyTorch adapter: whatever is registered); they all run in the same rotated rounds
(:func:`plinius.lab.bench.contenders.run_rounds`), so each comparison is made in one run. A section
that cannot run (:class:`~plinius.lab.bench.registry.NotRun`) or fails is recorded for that workload
with its reason, and the others go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from plinius.lab.bench.contenders import Contender, run_rounds
from plinius.lab.bench.contention import Watch
from plinius.lab.bench.registry import NotRun, Section, SuiteOptions, WorkloadContext
from plinius.lab.bench.saverestore import samples_json, workload


@dataclass
class RoundsResult:
    """Everything the interleaved rounds of every workload produced (results.json keys)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    contenders: list[dict[str, Any]] = field(default_factory=list)
    rounds: dict[str, Any] = field(default_factory=dict)
    workloads: list[dict[str, Any]] = field(default_factory=list)


def run_workloads(
    opts: SuiteOptions,
    chosen: Sequence[Section],
    instances: Callable[[], AbstractContextManager[list[tuple[str, str]]]],
    tick: Callable[[], None] | None = None,
    roles: dict[str, str] | None = None,
    dirs: Callable[[], AbstractContextManager[dict[str, Path]]] | None = None,
    grow: Callable[[int], None] | None = None,
) -> RoundsResult:
    """Every chosen rounds section on every workload of ``opts``; ``tick`` once per round of
    each workload. ``instances()`` gives fresh ``(label, spec)`` pairs for one workload, so none
    inherits the files of the one before. The machine is watched before and after every round
    (:class:`~plinius.lab.bench.contention.Watch`); while it is contended, ``opts.extension``
    adds rounds, each announced to ``grow`` (one more progress step) before it runs."""
    res = RoundsResult()
    for label in opts.models:
        is_full = label in opts.full
        with ExitStack() as stack:
            ctx = WorkloadContext(
                opts,
                workload(label),
                is_full,
                stack,
                stack.enter_context(instances()),
                dict(roles or {}),
                dirs,
            )
            contenders: list[Contender] = []
            not_run: dict[str, str] = {}
            owners: list[tuple[Section, list[Contender]]] = []
            for s in chosen:
                if s.contenders is None or (s.full_only and not is_full):
                    continue
                try:
                    got = list(s.contenders(ctx))
                except NotRun as exc:
                    not_run[s.name] = str(exc)
                    continue
                except Exception as exc:  # one section failing leaves the others standing
                    not_run[s.name] = f"failed: {type(exc).__name__}: {exc}"
                    continue
                owners.append((s, got))
                contenders += got
            order: list[list[str]] = []
            wrapped = [_recording(c, order) for c in contenders]
            watch = Watch()
            watch.sample()
            more = _more(opts, watch, grow)
            samples = run_rounds(
                wrapped, opts.rounds, _every(len(wrapped), _then(watch.sample, tick)), more
            )
            by_key = {x.contender.key: x for x in samples}
            for s, _got in owners:
                if s.collect is not None:
                    res.rows += s.collect(ctx, by_key)
        res.contenders += [samples_json(x) for x in samples]
        res.rounds[label] = {
            "count": len(order) if order else opts.rounds,
            "planned": opts.rounds,
            "contention": watch.as_json(),
            "contenders": len(contenders),
            "order": order,
            "rotated": True,
            "paired_ratios": True,
        }
        model = ctx.model
        res.workloads.append(
            {
                "workload": label,
                "mirror_bytes": model.mirror_bytes,
                "param_bytes": model.param_bytes,
                "optimizer_bytes": model.optimizer_bytes,
                "tensors": len(model.records),
                "full": is_full,
                "not_run": not_run,
            }
        )
        del ctx, model
    return res


def _then(first: Callable[[], None], tick: Callable[[], None] | None) -> Callable[[], None]:
    def both() -> None:
        first()
        if tick:
            tick()

    return both


def _more(
    opts: SuiteOptions, watch: Watch, grow: Callable[[int], None] | None
) -> Callable[[int], bool] | None:
    """The ``more`` of :func:`run_rounds`: another round while ``opts.extension`` allows it."""
    ext = opts.extension
    if ext is None:
        return None
    started = time.monotonic()

    def more(done: int) -> bool:
        go = ext.more(watch, done, started)
        if go and grow:
            grow(1)
        return go

    return more


def _every(k: int, tick: Callable[[], None] | None) -> Callable[[], None]:
    """A tick for :func:`run_rounds` (one per contender per round) that calls ``tick`` once
    per round; a workload with no contender still advances its rounds."""
    n = 0

    def each() -> None:
        nonlocal n
        n += 1
        if n % max(k, 1) == 0 and tick:
            tick()

    return each


def _recording(c: Contender, order: list[list[str]]) -> Contender:
    """``c`` whose first operation of each round appends its name to ``order`` (one list per
    round), so the report shows the interleaving and rotation that really ran."""
    if not c.ops:  # a contender recorded as not run: nothing runs, nothing to record
        return c
    first = c.ops[0]
    inner = c.run
    calls = 0

    def run(op: str) -> float:
        nonlocal calls
        if op == first:
            while len(order) <= calls:
                order.append([])
            order[calls].append(f"{c.section}:{c.name}")
            calls += 1
        return inner(op)

    return replace(c, run=run)


def steps(n_workloads: int, rounds: int) -> int:
    """Progress steps of :func:`run_workloads`: one per round of each workload."""
    return n_workloads * rounds


@contextmanager
def no_dirs() -> Iterator[dict[str, Path]]:
    yield {}
