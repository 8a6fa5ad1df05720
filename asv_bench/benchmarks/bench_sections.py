"""The rounds sections of ``plinius bench`` in asv: one class per section, generated at import.

For every registered section that times contenders in the interleaved rounds (save, peers,
limits, torch, and any plug-in section that gives its ``ids``), this module defines a class
(:func:`plinius.lab.reporting.asvresults.section_class`: ``SaveContenders``, ``PeersContenders``...)
with one benchmark, ``time_op``, over ``(workload, engine, contender, op)``:

* ``workload``: one small fixed workload per section (:data:`SMALL` for the save section, which
  takes every workload, else :data:`FULL`), ``engine``: the crypto engine ``auto`` picks here,
  both single values that make the results self-describing;
* ``contender``: the contender ids the section would give (its ``ids`` hook: ``romulus``,
  ``romulus?mode=msync``, ``safetensors@tmpfs``, ``aes-gcm/openssl/2``, ``torchmirror@romulus``);
* ``op``: the operations its contenders may have (:data:`OPS`).

``setup`` builds the section's contenders through the section's own ``contenders(ctx)``, as
``plinius bench`` does (a real :class:`WorkloadContext`: scratch directories like the suite's,
fresh instances of the default plan), keeps the one asked for, closes the others and warms up
with the contender's operations up to the one timed, in their order (the file a restore reads
exists, the buffer a decrypt opens was sealed with its key). A combination
that does not exist here (an op the contender lacks, a cold restore where the page cache cannot
be dropped, an optional instance the machine cannot run) or a section that cannot run here
(:class:`NotRun`: torch missing) raises NotImplementedError, asv's way of skipping.

asv's clock is the contender's own: ``time_op`` calls ``contender.run(op)``, which returns the
seconds of the operation alone, and :func:`contender_clock` advances by exactly those. So asv
records the figure ``plinius bench`` records, without what the contender keeps outside its
timing (the page-cache drop before a cold restore, zeroing and checking a torch restore).

The ``freshness`` section runs on its own, not in the rounds: its class,
:class:`FreshnessContenders`, is written out below, in the same shape.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from plinius.core.crypto import make_engine
from plinius.lab.bench import distributed, freshness
from plinius.lab.bench.contenders import Contender
from plinius.lab.bench.registry import (
    NotRun,
    Section,
    SuiteOptions,
    WorkloadContext,
    section,
    sections,
)
from plinius.lab.bench.saverestore import workload
from plinius.lab.bench.suite import side_dirs
from plinius.lab.plan import default_plan, plan_instances, probe
from plinius.lab.reporting.asvresults import section_class

KEY = bytes(range(16))
#: the workload of a section that takes every workload (the save section): a small size-N
SMALL = "size-10"
#: the workload of a section that runs on full workloads only (peers, limits, torch): ResNet-50's
#: parameters (about 100 MB; with its optimizer state the torch section's setup takes 3x longer)
FULL = "resnet50"
#: every operation a section's contenders may have (the op parameter; one a contender lacks is
#: skipped); a section not named here: save and restore
OPS = {
    "save": ("save", "restore", "restore_cold"),
    "peers": ("save", "restore", "restore_copy_", "restore_cold"),
    "limits": ("copy", "encrypt", "decrypt"),
    "torch": ("save", "restore", "save (until written)"),
}
DEFAULT_OPS = ("save", "restore")
#: the freshness class: saves per timed block (a multiple of 4: every block of counter_every=8
#: holds as many counter moves) and calls per timed primitive
FRESHNESS_SAVES = 8
FRESHNESS_CALLS = 10

#: what ``plinius bench`` runs by default: the default plan, the engine ``auto`` picks here
OPTIONS = SuiteOptions(plan=list(default_plan()), sizes=[10.0], repeats=1, engine=make_engine(KEY))

_clock = [0.0]


def contender_clock() -> float:
    """asv's timer for these classes: the sum of the seconds every ``contender.run`` returned."""
    return _clock[0]


def workload_of(s: Section) -> str:
    return FULL if s.full_only else SMALL


class _SectionBenchmark:
    """``time_op`` of one contender of one section; the generated classes set ``section_name``."""

    section_name = ""
    param_names = ["workload", "engine", "contender", "op"]
    timer = staticmethod(contender_clock)
    timeout = 600
    number = 1
    repeat = (3, 7, 20.0)

    def setup(self, workload_label: str, engine: str, contender: str, op: str) -> None:
        self.contender: Contender | None = None
        self.stack = ExitStack()
        try:
            self.contender = self._build(
                section(self.section_name), workload_label, engine, contender
            )
            if op not in self.contender.ops:
                raise NotImplementedError(f"{contender} has no {op!r} here")
            # warm-up: the contender's ops up to the one timed, in their order (a save before
            # a restore, an encrypt before a decrypt); the later ones are not run (each costs
            # a pass over a ResNet-50 mirror)
            ops = list(self.contender.ops)
            for o in ops[: ops.index(op) + 1]:
                self.contender.run(o)
        except BaseException:
            self.teardown()
            raise

    def _build(self, s: Section, workload_label: str, engine: str, contender: str) -> Contender:
        assert s.contenders is not None and s.ids is not None
        if contender not in s.ids(OPTIONS):
            raise NotImplementedError(f"{s.name} gives no contender {contender!r} here")
        plan = [p for p in OPTIONS.plan if p.label == contender] or OPTIONS.plan
        if len(plan) == 1 and plan[0].optional:
            why = probe(plan[0])
            if why:
                raise NotImplementedError(f"{contender} cannot run here: {why}")
        opts = SuiteOptions(
            plan=plan, sizes=OPTIONS.sizes, repeats=1, engine=make_engine(KEY, engine)
        )
        pairs = self.stack.enter_context(plan_instances(plan))
        ctx = WorkloadContext(
            opts,
            workload(workload_label),
            True,  # a full workload: every section runs on it
            self.stack,
            [(p.label, spec) for p, spec in pairs],
            {p.label: p.role for p in plan},
            side_dirs,  # tmpfs and ssd scratch directories, as plinius bench gives them
        )
        try:
            built = list(s.contenders(ctx))
        except NotRun as exc:
            raise NotImplementedError(str(exc)) from None
        keep = next((c for c in built if (c.id or c.name) == contender), None)
        for c in built:
            if c is not keep:
                c.close()
        if keep is None:
            raise NotImplementedError(f"{s.name} gives no contender {contender!r} here")
        if "status" in keep.facts:  # built as "not run" (the torch section's way)
            keep.close()
            raise NotImplementedError(f"{contender}: {keep.facts['status']}")
        return keep

    def teardown(self, *args: Any) -> None:
        # asv tears down after a setup that skipped (NotImplementedError) too
        contender, self.contender = getattr(self, "contender", None), None
        stack = getattr(self, "stack", None)
        try:
            if contender is not None:
                contender.close()
        finally:
            if stack is not None:
                stack.close()  # the scratch directories and backend instances

    def time_op(self, workload_label: str, engine: str, contender: str, op: str) -> None:
        assert self.contender is not None
        _clock[0] += self.contender.run(op)


def _generate() -> dict[str, type]:
    """One class per rounds section with ``ids``, named by :func:`section_class`."""
    out: dict[str, type] = {}
    for s in sections():
        if s.contenders is None or s.ids is None:
            continue
        ids = list(dict.fromkeys(s.ids(OPTIONS)))
        if not ids:
            continue
        name = section_class(s.name)
        out[name] = type(
            name,
            (_SectionBenchmark,),
            {
                "__doc__": f"``plinius bench`` section {s.name!r}: {s.summary}",
                "__module__": __name__,
                "section_name": s.name,
                "params": (
                    [workload_of(s)],
                    [OPTIONS.engine.name],
                    ids,
                    list(OPS.get(s.name, DEFAULT_OPS)),
                ),
            },
        )
    return out


globals().update(_generate())


class FreshnessContenders:
    """``plinius bench`` section ``freshness`` (it runs on its own, not in the rounds, so no
    class is generated for it): ``time_op`` over ``(contender, op)``, built, timed and closed
    as the section does (:class:`plinius.lab.bench.freshness.FreshnessBench`). ``save``: the
    seconds per save of a block of :data:`FRESHNESS_SAVES` saves (``begin`` + ``commit``) on the
    simulated CPU or on swtpm, a software TPM, at ``counter_every`` 1, 8 and 30s; the ops of
    ``swtpm-primitives``: the seconds per call of each raw swtpm command. An op the contender
    lacks, or a contender that cannot run here (no swtpm, no tpm2-pytss: its one-line reason),
    raises NotImplementedError."""

    section_name = "freshness"
    param_names = ["contender", "op"]
    params = (list(freshness.IDS), list(freshness.OPS))
    timer = staticmethod(contender_clock)
    timeout = 600
    number = 1
    repeat = (3, 7, 20.0)

    def setup(self, contender: str, op: str) -> None:
        self.contender: Contender | None = None
        self.bench: freshness.FreshnessBench | None = None
        if op not in freshness.ops_of(contender):
            raise NotImplementedError(f"{contender} has no {op!r}")
        try:
            self.bench = freshness.FreshnessBench(
                [contender], saves=FRESHNESS_SAVES, calls=FRESHNESS_CALLS
            )
            if contender in self.bench.not_run:
                raise NotImplementedError(f"{contender}: {self.bench.not_run[contender]}")
            (self.contender,) = self.bench.contenders
            self.contender.run(op)  # warm-up, as the other classes warm up
        except BaseException:
            self.teardown()
            raise

    def teardown(self, *args: Any) -> None:
        contender, self.contender = getattr(self, "contender", None), None
        bench, self.bench = getattr(self, "bench", None), None
        try:
            if contender is not None:
                contender.close()
        finally:
            if bench is not None:
                bench.close()  # swtpm stopped, scratch directory removed

    def time_op(self, contender: str, op: str) -> None:
        assert self.contender is not None
        _clock[0] += self.contender.run(op)


class DistributedContenders:
    """``plinius bench`` section ``distributed`` (it launches its own torchrun ranks, so no
    class is generated for it): ``time_op`` over ``(world, wrap, contender, op)``.
    ``setup_cache`` launches each world size once (:func:`plinius.lab.bench.distributed.
    measure_all`: ResNet-50 + Adam cut to its first tensors, on tmpfs; every wrap, contender and
    op after a barrier, the slowest rank's seconds, every restore checked exactly), so the whole
    class costs two launches, not one per combination. The ops run in the ranks, not in this
    process, so ``time_op`` advances asv's clock by the seconds the ranks measured. A world
    size above this machine's cores (timing the scheduler, not the save), an op the contender
    lacks, or no torch raises NotImplementedError."""

    section_name = "distributed"
    param_names = ["world", "wrap", "contender", "op"]
    params = (
        [1, 2],
        list(distributed.WRAPS),
        list(distributed.KINDS),
        [distributed.SAVE, distributed.SAVE_DONE, distributed.RESTORE],
    )
    timer = staticmethod(contender_clock)
    timeout = 900
    number = 1
    repeat = (3, 5, 60.0)

    def setup_cache(self) -> dict[int, dict[tuple[str, str, str], float]]:
        if distributed.torch_missing():
            return {}
        worlds = [w for w in self.params[0] if w <= distributed.cores()]
        return {w: distributed.measure_all(w, specs=distributed.QUICK_SPECS) for w in worlds}

    def setup(
        self,
        cache: dict[int, dict[tuple[str, str, str], float]],
        world: int,
        wrap: str,
        contender: str,
        op: str,
    ) -> None:
        self.seconds: float | None = None
        why = distributed.torch_missing()
        if why:
            raise NotImplementedError(why)
        if op not in distributed.ops_of(contender):
            raise NotImplementedError(f"{contender} has no {op!r}")
        if world not in cache:
            raise NotImplementedError(f"{world} ranks on {distributed.cores()} cores: not timed")
        self.seconds = cache[world][(wrap, contender, op)]

    def time_op(
        self,
        cache: dict[int, dict[tuple[str, str, str], float]],
        world: int,
        wrap: str,
        contender: str,
        op: str,
    ) -> None:
        assert self.seconds is not None
        _clock[0] += self.seconds
