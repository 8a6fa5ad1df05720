"""Concurrent in-flight mirrors (``max_in_flight=K``): what mirroring costs a training step for
K = 1, 2, 4 against the mirror interval, on a workload whose persist takes longer than a step.

The workload: a ``size-N`` model of the zoo (weights + momentum, ~2N MiB) mirrored through the
real session and enclave (snapshot, seal, persist, freshness record) into a backend in RAM;
its "training step" is a fixed amount of sleep-free CPU work (float32 matrix products, sized
once so that a step takes about ``1/ratio`` of a persist) plus a write into the model's
buffers, so every mirror holds new state. Each (interval M, K) is a block of steps mirrored
every M steps; the first ``(K + 1) × M`` steps fill the pipeline untimed, then ``steps`` steps
are timed without the final drain (a steady state, as in a long run: the drain of a block is
the same whatever it measured). A block without mirrors is the baseline. Blocks are
interleaved, their order rotated per round; the overhead is ``median(mirrored step) /
median(bare step) - 1`` with a bootstrap 95 % interval paired by round.

What to expect, and why: the persists run one at a time on one thread (the freshness record
holds one save in flight), so in steady state the loop can go no faster than one mirror per
persist time P. When ``P > M × step`` every mirror waits whatever K (a deeper queue only delays
the first wait by K mirrors); when ``P < M × step`` nothing waits, even at K = 1. One thing K = 2
does change there: with K = 1 the only snapshot buffer is busy until the persist ends, so the
next snapshot is taken only then, while the persist thread idles (the period is P + snapshot);
with K >= 2 it is taken while the previous persist runs (the period is P). Beyond that, K > 1
pays where P varies around ``M × step`` (a slow persist absorbed by the queue) and for bursts
of up to K mirrors. The persist thread also competes with the step for the cores (2 on the
reference VM), which no K removes.

``python -m plinius.lab.bench.inflight`` prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from plinius.backends.registry import open_backend
from plinius.core.crypto import generate_key
from plinius.enclave.platform import SimulatedPlatform
from plinius.lab.bench.stats import Interval, median_interval, ratio_interval
from plinius.nn import Network, load_model
from plinius.session import Session

KS = (1, 2, 4)
EVERY = (1, 2, 3, 4, 8)
QUICK_EVERY = (1, 4)
#: persist time / step time of the workload
RATIO = 3.0
MODEL = "size-8"  # ~16 MiB mirrored
BACKENDS = ("tmpfs", "romulus")


@dataclass
class Cell:
    """One (interval, K): its per-step seconds per round and the overhead interval."""

    every: int
    k: int
    step_s: list[float]
    overhead: Interval
    #: seconds per step spent in ``mirror()`` (snapshot + bound wait), over the bare step
    waiting: Interval
    wait_s: list[float]
    #: K=1 per-step time / this one's (paired by round): > 1 beyond its interval, K helped
    vs_k1: Interval | None = None


@dataclass
class InflightResult:
    model: str
    backend: str
    mirror_bytes: int
    rounds: int
    steps: int
    bare_s: list[float]  # per-step seconds without a mirror, per round
    persist_s: list[float]  # one synchronous mirror (snapshot-free persist), per round
    cells: list[Cell] = field(default_factory=list)
    #: the 1-minute load average before and after (others' work on the cores shows here)
    load: tuple[float, float] = (0.0, 0.0)

    @property
    def step(self) -> Interval:
        return median_interval(self.bare_s)

    @property
    def persist(self) -> Interval:
        return median_interval(self.persist_s)

    def as_dict(self) -> dict[str, Any]:
        step, persist = self.step, self.persist
        rows = [
            {
                "every": c.every,
                "k": c.k,
                "step_s": c.step_s,
                "overhead": c.overhead.as_json(),
                "waiting": c.waiting.as_json(),
                "wait_s": c.wait_s,
                "vs_k1": None if c.vs_k1 is None else c.vs_k1.as_json(),
            }
            for c in self.cells
        ]
        return {
            "model": self.model,
            "backend": self.backend,
            "mirror_bytes": self.mirror_bytes,
            "cores": os.cpu_count(),
            "load": list(self.load),
            "rounds": self.rounds,
            "steps": self.steps,
            "step_s": step.as_json(),
            "persist_s": persist.as_json(),
            "persist_over_step": persist.median / step.median,
            "samples": {"bare": self.bare_s, "persist": self.persist_s},
            "rows": rows,
            "finding": finding(rows, persist.median / step.median),
        }


class Work:
    """A fixed amount of sleep-free, single-threaded CPU work: ``reps`` passes of elementwise
    float32 arithmetic over a cache-resident array (numpy's elementwise loops use one core,
    unlike a BLAS product, so the step's work is the same whatever the machine's threads)."""

    def __init__(self, n: int = 1 << 16) -> None:
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal(n, dtype=np.float32)
        self.y = rng.standard_normal(n, dtype=np.float32)
        self.z = np.empty(n, np.float32)
        self.reps = 1

    def once(self) -> None:
        for _ in range(self.reps):
            np.multiply(self.x, self.y, out=self.z)
            np.add(self.z, self.x, out=self.z)

    def size_to(self, seconds: float) -> None:
        """Choose ``reps`` so that :meth:`once` takes about ``seconds`` (the fastest of a few
        timings after a warm-up: the work's own cost, not the machine's noise)."""
        self.reps = 64
        self.once()
        times = []
        for _ in range(9):
            t0 = time.perf_counter()
            self.once()
            times.append(time.perf_counter() - t0)
        self.reps = max(1, round(seconds / (min(times) / 64)))


def _step(net: Network, work: Work) -> None:
    """One training-step stand-in: the CPU work, then new values in the model's buffers."""
    work.once()
    net.seen += net.batch
    first = net.mirror_buffers()[0][2].reshape(-1)
    first[: 1 << 12] += np.float32(1.0)


def _block(
    session: Session, work: Work, every: int | None, k: int, steps: int
) -> tuple[float, float]:
    """Seconds per step of ``steps`` steps mirrored every ``every`` (None: never), after
    ``(k + 1) × every`` untimed steps that fill the pipeline (the drain is untimed); and of
    them, the seconds per step the loop spent in ``mirror()`` (the snapshot, and the wait for
    the oldest mirror when K were in flight)."""
    net = session.model
    assert isinstance(net, Network)
    enclave = session.enclave
    enclave.ecall_set_async(True, k)
    n = 0

    def run(count: int) -> float:
        nonlocal n
        waited = 0.0
        for _ in range(count):
            _step(net, work)
            n += 1
            if every is not None and n % every == 0:
                waited += session.mirror()
        return waited

    run((k + 1) * every if every is not None else 2)
    t0 = time.perf_counter()
    waited = run(steps)
    per = (time.perf_counter() - t0) / steps
    session.flush()
    return per, waited / steps


def _persist_once(session: Session) -> float:
    """One synchronous mirror of the model: the persist the background thread does."""
    session.enclave.ecall_set_async(False)
    t0 = time.perf_counter()
    session.mirror()
    return time.perf_counter() - t0


def measure(
    *,
    model: str = MODEL,
    backend: str = "tmpfs",
    every: Sequence[int] = EVERY,
    ks: Sequence[int] = KS,
    rounds: int = 5,
    steps: int = 48,
    ratio: float = RATIO,
    tick: Callable[[], None] | None = None,
) -> InflightResult:
    """Per-step overhead of mirroring every M steps with K in flight (see the module)."""
    load0 = os.getloadavg()[0]
    net = load_model(model)
    mirror_bytes = net.snapshot_nbytes()
    with tempfile.TemporaryDirectory(prefix="plinius-inflight-", dir="/dev/shm") as tmp:
        platform = SimulatedPlatform(Path(tmp) / "cpu", state_dir=Path(tmp) / "state")
        session = Session(
            net, label=model, key=generate_key(), platform=platform, say=lambda m: None
        )
        try:
            where = f"{tmp}/store" if backend != "romulus" else f"{tmp}/run.pool"
            spec = f"{backend}:{where}"
            options = {"size": f"{(mirror_bytes * 3 >> 20) + 16}M"} if backend == "romulus" else {}
            b = session.adopt(open_backend(spec, **options))
            session.attach(b, asynchronous=True, max_in_flight=max(ks))
            for _ in range(3):  # warm-up: pool pages, engine, record layout
                _persist_once(session)
            # the workload: a step of 1/ratio of a persist as fast as this machine does one
            persist = min(_persist_once(session) for _ in range(7))
            work = Work()
            work.size_to(persist / ratio)
            cases: list[tuple[int | None, int]] = [(None, 1)]
            cases += [(m, k) for m in every for k in ks]
            samples: dict[tuple[int | None, int], list[float]] = {c: [] for c in cases}
            waits: dict[tuple[int | None, int], list[float]] = {c: [] for c in cases}
            persist_s: list[float] = []
            for r in range(rounds):
                order = cases[r % len(cases) :] + cases[: r % len(cases)]
                persist_s.append(_persist_once(session))
                for m, k in order:
                    per, waited = _block(session, work, m, k, steps)
                    samples[(m, k)].append(per)
                    waits[(m, k)].append(waited)
                if tick is not None:
                    tick()
            name = b.name
        finally:
            session.close()
    bare = samples[(None, 1)]
    result = InflightResult(model, name, mirror_bytes, rounds, steps, bare, persist_s)
    result.load = (load0, os.getloadavg()[0])
    for m in every:
        for k in ks:
            iv = ratio_interval(samples[(m, k)], bare)
            over = Interval(iv.median - 1, iv.lo - 1, iv.hi - 1, iv.n, iv.paired)
            vs = ratio_interval(samples[(m, 1)], samples[(m, k)]) if k != 1 and 1 in ks else None
            wait = median_interval([w / statistics.median(bare) for w in waits[(m, k)]])
            result.cells.append(Cell(m, k, samples[(m, k)], over, wait, waits[(m, k)], vs))
    return result


def finding(rows: Sequence[dict[str, Any]], persist_over_step: float) -> str:
    """One sentence from the figures: where K > 1 changed the overhead beyond the noise (K = 1's
    step time over K's, paired by round, outside 1), and why (the persist time against the
    mirror interval)."""

    def over(m: int, k: int) -> float | None:
        r = next((r for r in rows if r["every"] == m and r["k"] == k), None)
        return None if r is None or not r.get("overhead") else float(r["overhead"]["median"])

    def where(better: bool) -> list[str]:
        out: dict[int, str] = {}
        for r in rows:
            if not isinstance(r.get("vs_k1"), dict):
                continue
            iv = Interval.from_json(r["vs_k1"])
            m, k = int(r["every"]), int(r["k"])
            if ((iv.lo > 1) if better else (iv.hi < 1)) and m not in out:
                one, mine = over(m, 1), over(m, k)
                change = "" if one is None or mine is None else f" ({one:+.0%} → {mine:+.0%})"
                out[m] = f"{m}{change}"
        return [out[m] for m in sorted(out)]

    helped, hurt = where(True), where(False)
    every = sorted({int(r["every"]) for r in rows})
    slow = [m for m in every if persist_over_step > m]
    fast = [m for m in every if persist_over_step <= m]
    said = (
        f"K > 1 lowered the overhead beyond the noise at M = {', '.join(helped)}"
        if helped
        else "K > 1 lowered the overhead beyond the noise at no interval"
    )
    if hurt:
        said += f" and raised it at M = {', '.join(hurt)}"
    why = []
    if slow:
        why.append(
            f"at M = {', '.join(map(str, slow))} a persist ({persist_over_step:.1f} steps "
            "measured alone) outlasts the interval, so in steady state the loop waits in "
            "mirror() for the oldest one whatever K (persists run one at a time): K >= 2 only "
            "lets the next snapshot be taken while the persist runs, where K = 1's one buffer "
            "waits for its end, and a deeper queue only delays the first wait"
        )
    if fast:
        why.append(
            f"at M = {', '.join(map(str, fast))} it fits in the interval, so even K = 1 "
            "waits for little beyond the snapshot, and the rest of the overhead is the "
            "persist thread's share of the cores"
        )
    return said + ("; " + "; ".join(why) if why else "") + "."


def _text(iv: dict[str, Any]) -> str:
    i = Interval.from_json(iv)
    return f"{i.median:+.0%} [{i.lo:+.0%}–{i.hi:+.0%}]"


def table_rows(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per interval M: the overhead per step (% of the bare step) for each K."""
    by: dict[int, dict[str, Any]] = {}
    ratio = float(doc["persist_over_step"])
    for r in doc["rows"]:
        row = by.setdefault(
            int(r["every"]),
            {"M (mirror every)": int(r["every"]), "persist / (M × step)": ratio / r["every"]},
        )
        wait = Interval.from_json(r["waiting"]).median if r.get("waiting") else None
        row[f"K={r['k']}"] = _text(r["overhead"]) + (
            f" · in mirror() {wait:+.0%}" if wait is not None else ""
        )
    return [by[m] for m in sorted(by)]


def columns(doc: Mapping[str, Any]) -> list[str]:
    ks = sorted({int(r["k"]) for r in doc["rows"]})
    return ["M (mirror every)", "persist / (M × step)", *(f"K={k}" for k in ks)]


def headline(doc: Mapping[str, Any]) -> str:
    step = Interval.from_json(doc["step_s"]).scaled(1e3)
    persist = Interval.from_json(doc["persist_s"]).scaled(1e3)
    return (
        f"{doc['model']} ({doc['mirror_bytes'] / (1 << 20):.1f} MiB mirrored) on "
        f"{doc['backend']}: step {step.text('{:.2f}')} ms, persist {persist.text('{:.2f}')} ms "
        f"({doc['persist_over_step']:.1f} steps); {doc['rounds']} interleaved rounds of "
        f"{doc['steps']} timed steps per cell on {doc.get('cores')} cores (load "
        f"{'–'.join(f'{x:.1f}' for x in doc.get('load') or [])}); overhead per step over the "
        "bare step, median "
        "[95 % interval], and the median part of it spent in mirror() (snapshot + waits)."
    )


def main(argv: Sequence[str] | None = None) -> int:
    from plinius.lab.reporting.markdown import md_table

    p = argparse.ArgumentParser(
        prog="python -m plinius.lab.bench.inflight",
        description="mirroring overhead per step for max_in_flight K vs the mirror interval",
    )
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=48, help="timed steps per cell and round")
    p.add_argument("--every", default=",".join(map(str, EVERY)), help="intervals M, e.g. 1,2,4")
    p.add_argument("--k", default=",".join(map(str, KS)), help="values of K, e.g. 1,2,4")
    p.add_argument("--model", default=MODEL)
    p.add_argument("--backend", choices=BACKENDS, default="tmpfs")
    p.add_argument("--ratio", type=float, default=RATIO, help="persist / step of the workload")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    result = measure(
        model=args.model,
        backend=args.backend,
        every=[int(x) for x in args.every.split(",")],
        ks=[int(x) for x in args.k.split(",")],
        rounds=args.rounds,
        steps=args.steps,
        ratio=args.ratio,
    )
    doc = result.as_dict()
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    print(headline(doc))
    print()
    print(md_table(table_rows(doc), columns(doc)))
    print()
    print(doc["finding"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["InflightResult", "main", "measure"]
