"""The whole benchmark of ``plinius bench``: every section of the paper's evaluation in one run.

Sections: ``save`` (save/restore per backend and model size, Fig. 7 and Table I), beside it in
the same interleaved rounds ``peers`` (torch.save, safetensors, torch.save + AES-GCM + fsync),
``limits`` (memcpy and raw AES-GCM, one thread and all cores) and ``torch`` (the PyTorch
adapter) on the headline workloads, ``engines``
(raw versus sealed AES-GCM), ``sps`` (Romulus swaps per second, Fig. 6, and the cost of one
64 MiB transaction), ``fio`` (storage characterisation, Fig. 2), ``batch`` (iteration time with
encrypted versus plaintext data, Fig. 8) and ``overhead`` (mirroring cost per iteration). A
section that fails is recorded with its error and the others still run: partial results are
kept and marked.
"""

from __future__ import annotations

import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plinius.bench.engine import measure_engines
from plinius.bench.saverestore import RoundsResult, run_workloads, steps
from plinius.crypto import Engine
from plinius.defaults import InstancePlan, plan_instances, root_dir
from plinius.errors import ConfigError, PliniusError, ToolMissingError

SECTIONS = ("save", "peers", "limits", "torch", "engines", "sps", "fio", "batch", "overhead")
#: sections measured in the interleaved rounds (the others run one after the other)
ROUND_SECTIONS = ("save", "peers", "limits", "torch")
SIDE = ("peers", "limits", "torch")
QUICK_BATCHES = (8, 16, 32, 64, 128)
QUICK_ROUNDS = 3
#: the workload the issue's targets are read at (the paper's 64 MiB model), when it ran
TARGET_WORKLOAD = "size-64"


@dataclass
class SuiteOptions:
    plan: list[InstancePlan]  # every backend instance of the save section, labels distinct
    sizes: list[float]
    repeats: int  # interleaved rounds (the name results.json has always used)
    engine: Engine
    quick: bool = False
    sections: tuple[str, ...] = SECTIONS
    fio_options: dict[str, Any] = field(default_factory=dict)
    workloads: tuple[str, ...] = ()  # named real-model workloads beside the size-N models

    @property
    def backends(self) -> list[str]:
        """The backend names of the plan (fio characterises each one's storage once)."""
        return list(dict.fromkeys(p.name for p in self.plan))

    @property
    def rounds(self) -> int:
        return self.repeats

    @property
    def models(self) -> list[str]:
        """Every workload of the rounds: the size-N models, then the named ones."""
        return list(dict.fromkeys([*(f"size-{s:g}" for s in self.sizes), *self.workloads]))

    @property
    def full(self) -> list[str]:
        """The workloads peers, limits and torch run on: the named ones and the paper's
        size-64 model (else the largest size-N), so the paper's size sweep stays affordable."""
        sized = [f"size-{s:g}" for s in self.sizes]
        head = [TARGET_WORKLOAD] if TARGET_WORKLOAD in sized else []
        if self.sizes and not head:
            head = [f"size-{max(self.sizes):g}"]
        return list(dict.fromkeys([*head, *self.workloads]))

    @property
    def in_rounds(self) -> bool:
        return any(s in self.sections for s in ROUND_SECTIONS)


def total_steps(opts: SuiteOptions) -> int:
    """Progress steps :func:`run_suite` takes: one per interleaved round of each workload, one
    per other section."""
    n = steps(len(opts.models), opts.rounds) if opts.in_rounds else 0
    return n + sum(1 for s in opts.sections if s not in ROUND_SECTIONS)


def _section(doc: dict[str, Any], name: str, fn: Callable[[], Any]) -> None:
    t0 = time.perf_counter()
    try:
        doc[name] = fn()
        doc["sections"][name] = {"status": "ok"}
    except ToolMissingError as exc:
        # an optional external tool: the rest of the benchmark stands, the report says why not
        doc["sections"][name] = {"status": "skipped", "error": str(exc)}
    except (PliniusError, OSError, ValueError, RuntimeError) as exc:
        doc["sections"][name] = {
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "where": traceback.format_exc(limit=3).splitlines()[-3:],
        }
    doc["sections"][name]["seconds"] = round(time.perf_counter() - t0, 1)


def run_suite(opts: SuiteOptions, tick: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Every chosen section; ``tick`` is called exactly :func:`total_steps` times (a section
    that fails early is advanced to its planned count, so the progress bar ends at its total)."""
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
        _section(doc, "results", lambda: _rounds(opts, step))
        got = doc.pop("results", None)
        if isinstance(got, RoundsResult):
            doc["results"] = got.rows
            doc["contenders"] = got.contenders
            doc["rounds"] = got.rounds
            doc["workloads"] = got.workloads
            _side_status(doc, opts, got)
        catch_up(steps(len(opts.models), opts.rounds))
    others: list[tuple[str, Callable[[], Any]]] = [
        ("engines", lambda: [e.as_dict() for e in measure_engines(64, max(3, opts.repeats))]),
        ("sps", lambda: _sps(opts)),
        ("fio", lambda: _fio(opts)),
        ("batch", lambda: _batch(opts)),
        ("overhead", lambda: _overhead(opts)),
    ]
    for name, fn in others:
        if name in opts.sections:
            _section(doc, name, fn)
            step()
    return doc


def _rounds(opts: SuiteOptions, tick: Callable[[], None]) -> RoundsResult:
    plan = opts.plan if "save" in opts.sections else []

    @contextmanager
    def labelled() -> Iterator[list[tuple[str, str]]]:
        with plan_instances(plan) as pairs:
            yield [(p.label, spec) for p, spec in pairs]

    roles = {p.label: p.role for p in plan}
    return run_workloads(
        labelled,
        opts.models,
        opts.engine,
        opts.rounds,
        tick,
        roles=roles,
        full=opts.full,
        side=[s for s in SIDE if s in opts.sections],
        dirs=side_dirs,
    )


@contextmanager
def side_dirs() -> Iterator[dict[str, Path]]:
    """Fresh directories for the peers: ``tmpfs`` in RAM, ``ssd`` on the disk (removed after)."""
    with (
        tempfile.TemporaryDirectory(prefix="plinius-peers-", dir=root_dir("shm")) as shm,
        tempfile.TemporaryDirectory(prefix="plinius-peers-", dir=root_dir("disk")) as disk,
    ):
        yield {"tmpfs": Path(shm), "ssd": Path(disk)}


def _side_status(doc: dict[str, Any], opts: SuiteOptions, got: RoundsResult) -> None:
    """A status per side section (peers, limits, torch): ok where it gave contenders, else
    skipped with the reason its workloads recorded."""
    for name in SIDE:
        if name not in opts.sections:
            continue
        ran = any(c["section"] == name for c in got.contenders)
        why = [w["not_run"][name] for w in got.workloads if name in w.get("not_run", {})]
        if ran:
            doc["sections"][name] = {"status": "ok", "seconds": 0.0}
            if why:
                doc["sections"][name]["notes"] = why
        else:
            reason = why[0] if why else "no workload ran it"
            status = "failed" if reason.startswith("failed") else "skipped"
            doc["sections"][name] = {"status": status, "error": reason, "seconds": 0.0}


def _sps(opts: SuiteOptions) -> dict[str, Any]:
    from plinius.bench import romulus_engine

    if opts.quick:
        result = romulus_engine.sps(
            txn_sizes=(1, 4, 16, 64, 256, 2048), seconds=0.15, repeats=3, python_seconds=0.05
        )
    else:
        result = romulus_engine.sps()
    result["txn_cost"] = romulus_engine.txn_cost(64 << 20, repeats=5, engine=opts.engine.name)
    return result


def _fio(opts: SuiteOptions) -> dict[str, Any]:
    from plinius.fio import FioParams, run_fio

    params = FioParams.quick(**opts.fio_options) if opts.quick else FioParams(**opts.fio_options)
    from plinius.backends import backend_class

    names = opts.backends
    measured = [n for n in names if backend_class(n).fio_root() is not None]
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


def _batch(opts: SuiteOptions) -> list[dict[str, Any]]:
    from plinius.bench.iteration import PAPER_BATCHES, batch_sweep

    batches = QUICK_BATCHES if opts.quick else PAPER_BATCHES
    return [p.as_dict() for p in batch_sweep("batch", batches, repeats=3)]


def _overhead(opts: SuiteOptions) -> list[dict[str, Any]]:
    from plinius.bench.iteration import mirror_overhead, replica_overhead
    from plinius.bench.torch_section import overhead_row

    model = "batch" if opts.quick else "mnist"
    n = max(3, opts.rounds)  # iterations per mode, interleaved: the intervals' samples
    return [
        mirror_overhead(model, iterations=n).as_dict(),
        replica_overhead(model, n).as_dict(),
        overhead_row(blocks=n, steps_per_block=10 if opts.quick else 20).as_dict(),
    ]


def _mib(n: float) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The issues' performance bars, measured in this run (a missing input says so).

    The PM-versus-file bars compare each byte-addressable instance with the file baseline *of
    its own durability level* (``ssd`` at power-fail, ``tmpfs`` at process-crash by default);
    ``durability`` states both sides of every comparison.
    """
    out: list[dict[str, Any]] = []

    def add(
        what: str, value: float | None, bar: str, ok: bool | None, durability: str = "-"
    ) -> None:
        out.append(
            {
                "target": what,
                "durability": durability,
                "measured": value,
                "bar": bar,
                "met": None if value is None else ok,
            }
        )

    results = doc.get("results") or []
    pm = [
        r
        for r in results
        if r.get("byte_addressable") and r["model_mb"] == 64 and r.get("baseline")
    ]
    pm = [r for r in pm if r["baseline"] != r["instance"]]
    if not pm:
        for what, bar in (
            ("PM save vs file baseline of equal durability, size-64", ">= 3×"),
            ("PM restore vs file baseline of equal durability, size-64", ">= 2×"),
            ("PM save / raw AES-GCM, size-64", ">= 0.70"),
        ):
            add(what, None, bar, None)
    for r in pm:
        d = r["durability"]
        model = f"{r.get('model') or 'size-64'} ({_mib(r['bytes'])} mirror)"
        both = f"{d} vs {d}"
        for key, verb, bar, lo in (
            ("speedup_save_vs_baseline", "save", ">= 3×", 3.0),
            ("speedup_restore_vs_baseline", "restore", ">= 2×", 2.0),
        ):
            v = r.get(key)
            add(
                f"{r['instance']} {verb} vs {r['baseline']}, {model}",
                v,
                bar,
                v is not None and v >= lo,
                both,
            )
        v = r.get("save_vs_raw_seal")
        add(
            f"{r['instance']} save / raw AES-GCM, {model}",
            v,
            ">= 0.70",
            v is not None and v >= 0.7,
            d,
        )
    for e in doc.get("engines") or []:
        add(
            f"encrypt_into / raw, {e['engine']}, 64 MiB",
            e["seal_vs_raw"],
            ">= 0.90",
            e["seal_vs_raw"] >= 0.9,
        )
    txn = (doc.get("sps") or {}).get("txn_cost")
    if txn:
        add(
            f"romulus txn cost / encrypt, 64 MiB ({txn.get('mode')}, {txn.get('flush')})",
            txn["txn_over_seal"],
            "<= 0.30",
            txn["txn_over_seal"] <= 0.3,
        )
    b128 = next((p for p in doc.get("batch") or [] if p["batch"] == 128), None)
    add(
        "encrypted / plaintext data, batch 128",
        b128 and b128["ratio"],
        "<= 1.10",
        bool(b128 and b128["ratio"] <= 1.1),
    )
    # the overhead bars are in the targets table, with their intervals (plinius.bench.targets)
    return out
