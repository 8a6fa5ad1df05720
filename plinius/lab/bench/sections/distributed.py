"""``distributed``: TorchMirror across torchrun ranks against ``dcp.save``, ``dcp.async_save``
and ``dcp.load`` for DDP and FSDP2, and save time against world size
(:mod:`plinius.lab.bench.distributed`). It launches its own ranks, so it runs on its own, not in
the rounds. Not part of the answer (``plinius bench`` without ``--paper`` runs only ``save``
and ``peers``): ``plinius bench --only distributed`` or ``--world-size N`` runs it (141–165 s at
W = 2 with the run's 7 rounds on a loaded 2-core VM; about 70 s with ``--quick``, which cuts
the workload to its first tensors); ``--quick`` with other sections leaves it out unless
``--world-size`` asks for it. Its targets are read at W = 2; without torch it is not run,
saying why."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from plinius.lab.bench.registry import NotRun, Section, SuiteOptions, register
from plinius.lab.bench.verdicts import TargetTable

NAME = "distributed"


def run(opts: SuiteOptions) -> dict[str, Any]:
    from plinius.lab.bench import distributed

    why = distributed.torch_missing()
    if why:
        raise NotRun(why)
    world = opts.world_size
    if opts.quick and world is None and tuple(opts.sections) != (NAME,):
        raise NotRun(
            "not run in --quick with other sections (it launches torchrun ranks); "
            "plinius bench --only distributed --quick, or --world-size N, runs it"
        )
    return distributed.measure(
        world_size=distributed.DEFAULT_WORLD if world is None else world,
        rounds=opts.rounds,  # the run's rounds: 7 by default, 3 with --quick, or --rounds
        workload=distributed.workload_of(opts.workloads),
        specs=distributed.QUICK_SPECS if opts.quick else None,
        quick=opts.quick,
    )


def targets(doc: Mapping[str, Any], t: TargetTable) -> None:
    from plinius.lab.bench import distributed

    if NAME in doc or (doc.get("sections") or {}).get(NAME):
        distributed.targets(doc, t)


def render(doc: Mapping[str, Any]) -> list[str]:
    from plinius.lab.bench import distributed

    got = doc.get(NAME)
    if not got or not got.get("runs"):
        return []
    return distributed.markdown(got)


register(
    Section(
        NAME,
        "TorchMirror across ranks against dcp.save/async_save/load (DDP, FSDP2), save vs W",
        97,
        run=run,
        targets=targets,
        render=render,
    )
)
