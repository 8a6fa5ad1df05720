"""What a benchmark round runs: named contenders, each timing a few operations on one workload.

Every section that compares things (backends, peers such as ``torch.save``, the memcpy and raw
AES-GCM limits, the PyTorch adapter) hands :func:`run_rounds` a list of :class:`Contender`. The
rounds are interleaved: in each round every contender runs each of its operations once, in an
order rotated from round to round, so slow drifts of a noisy VM (other tenants, turbo, page
cache) spread over all contenders instead of biasing whichever ran last. Statistics over the
samples (medians, bootstrap intervals, ratios) are :mod:`plinius.lab.bench.stats`'s job.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: at least this many rounds by default: fewer make a 95 % bootstrap interval meaningless
DEFAULT_ROUNDS = 7


@dataclass
class Contender:
    """One thing measured: ``run(op)`` performs operation ``op`` once and returns its seconds.

    ``ops`` run in this order within a round (a ``restore`` follows the ``save`` of the same
    round). ``run`` times only the operation itself; preparing inputs belongs in the contender's
    construction or in untimed parts of ``run``. ``facts`` records what it really ran on
    (directory, file system, device, engine, threads, durability) for the report.
    """

    section: str  # "save", "peers", "limits", "torch", ...
    name: str  # "romulus", "torch.save (tmpfs)", "memcpy (2 threads)", ...
    workload: str  # "mnist-64", "resnet50", "resnet50+sgd", ...
    nbytes: int  # bytes of tensor data one operation moves (throughput = nbytes / seconds)
    ops: tuple[str, ...]
    run: Callable[[str], float]
    close: Callable[[], None] = lambda: None
    facts: dict[str, Any] = field(default_factory=dict)
    #: what targets name it by: ``kind@place`` (``safetensors@tmpfs``, ``aes-gcm/openssl/4``);
    #: the display ``name`` may change, the id does not
    id: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.section, self.name, self.workload)

    @property
    def ident(self) -> str:
        """``section:id`` (``section:name`` when the section gave no id)."""
        return f"{self.section}:{self.id or self.name}"


@dataclass
class Samples:
    """Seconds per operation of one contender, one sample per round (in round order)."""

    contender: Contender
    seconds: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def rotated(items: Sequence[Contender], round_index: int) -> list[Contender]:
    """``items`` rotated by ``round_index``: each contender leads once every ``len`` rounds."""
    if not items:
        return []
    k = round_index % len(items)
    return [*items[k:], *items[:k]]


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn()`` took: what a contender's ``run`` returns for one operation."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_rounds(
    contenders: Sequence[Contender],
    rounds: int = DEFAULT_ROUNDS,
    tick: Callable[[], None] = lambda: None,
    more: Callable[[int], bool] | None = None,
) -> list[Samples]:
    """Run every contender's operations once per round, rounds interleaved and rotated.

    ``tick`` is called once per contender per round. After the ``rounds`` planned ones, ``more``
    (given the rounds done) decides whether one more round runs: a contended machine gets more
    rounds (:mod:`plinius.lab.bench.contention`). A contender whose operation raises is
    recorded with the error and left out of later rounds; the others go on. Contenders are
    closed at the end, also on errors.
    """
    if rounds < 1:
        raise ValueError("at least one round")
    results = {c.key: Samples(c) for c in contenders}
    if len(results) != len(contenders):
        raise ValueError("contender keys (section, name, workload) must be distinct")
    try:
        r = 0
        while r < rounds or (more is not None and more(r)):
            for c in rotated(contenders, r):
                s = results[c.key]
                if not s.errors:
                    for op in c.ops:
                        try:
                            secs = c.run(op)
                        except Exception as exc:  # recorded in the report, the others go on
                            s.errors.append(f"round {r + 1} {op}: {type(exc).__name__}: {exc}")
                            break
                        s.seconds.setdefault(op, []).append(secs)
                tick()
            r += 1
    finally:
        for c in contenders:
            try:
                c.close()
            except Exception as exc:
                results[c.key].errors.append(f"close: {type(exc).__name__}: {exc}")
    return list(results.values())


def steps(contenders: Sequence[Contender], rounds: int) -> int:
    """Progress ticks :func:`run_rounds` makes."""
    return len(contenders) * rounds
