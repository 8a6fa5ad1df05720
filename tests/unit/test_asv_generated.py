"""The asv harness is generated from the registered rounds sections: one harness.

Each rounds section's ``ids`` hook (what asv's parameters are made from at import) names exactly
the contenders the section builds, and ``asv_bench/benchmarks/bench_sections.py`` has one class
per such section that builds, times and closes them through the section itself.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from needs import require

from plinius.core.crypto import available_engines, make_engine
from plinius.lab.bench.registry import SuiteOptions, WorkloadContext, section, sections
from plinius.lab.bench.saverestore import BenchModel, bench_model
from plinius.lab.bench.suite import side_dirs
from plinius.lab.plan import default_plan, plan_instances
from plinius.lab.reporting.asvresults import SAVE_CLASS, section_class

BENCH = Path(__file__).resolve().parents[2] / "asv_bench" / "benchmarks" / "bench_sections.py"
KEY = bytes(range(16))
SHIPPED = ("save", "peers", "limits", "torch")


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    """The generated asv module, imported as asv imports it (a file in benchmark_dir)."""
    spec = importlib.util.spec_from_file_location("bench_sections", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_sections"] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_sections", None)


@pytest.fixture
def roots(monkeypatch: pytest.MonkeyPatch, shm_dir: Path, tmp_path: Path) -> dict[str, Path]:
    """Scratch roots of their own (RAM and disk), so a test can see that nothing is left."""
    disk = tmp_path / "disk"
    disk.mkdir()
    monkeypatch.setenv("PLINIUS_SHM_DIR", str(shm_dir))
    monkeypatch.setenv("PLINIUS_DISK_DIR", str(disk))
    return {"shm": shm_dir, "disk": disk}


def _unavailable(name: str) -> str | None:
    if name == "peers":
        from plinius.lab.bench.peers import peers_unavailable

        return peers_unavailable()
    if name == "torch":
        from plinius.lab.bench.torch_section import torch_unavailable

        return torch_unavailable()
    return None


def _tiny_torch(monkeypatch: pytest.MonkeyPatch) -> BenchModel:
    """The torch section on the first tensors of ResNet-50 + SGD-momentum (it takes named
    workloads only): its model is built from these specs instead of the whole architecture."""
    from plinius.lab.bench import torch_section
    from plinius.lab.bench.workloads import parameter_specs

    tiny = [*parameter_specs("resnet50")[:20], parameter_specs("resnet50")[-1]]
    build = torch_section.build_workload

    def small(label: str, specs: Any = None, seed: int = 0) -> Any:
        return build(label, tiny, seed)

    monkeypatch.setattr(torch_section, "build_workload", small)
    return BenchModel("resnet50+sgd-momentum", 0.0, [], 0, 0)


def _built_ids(name: str, opts: SuiteOptions, model: BenchModel) -> list[Any]:
    """The contenders ``section(name)`` builds on ``model`` (closed before returning)."""
    s = section(name)
    assert s.contenders is not None
    with ExitStack() as stack:
        pairs = stack.enter_context(plan_instances(opts.plan))
        ctx = WorkloadContext(
            opts,
            model,
            True,
            stack,
            [(p.label, spec) for p, spec in pairs],
            {p.label: p.role for p in opts.plan},
            side_dirs,
        )
        built = list(s.contenders(ctx))
        for c in built:
            c.close()
    return built


def test_every_shipped_rounds_section_gives_its_ids() -> None:
    rounds = {s.name: s for s in sections() if s.contenders is not None}
    assert set(SHIPPED) <= set(rounds)
    assert all(rounds[n].ids is not None for n in SHIPPED)
    assert all(s.ids is None for s in sections() if s.contenders is None)


@pytest.mark.parametrize("engine", available_engines())
@pytest.mark.parametrize("name", SHIPPED)
def test_ids_are_those_of_the_contenders_really_built(
    name: str,
    engine: str,
    monkeypatch: pytest.MonkeyPatch,
    roots: dict[str, Path],
    bench: ModuleType,
) -> None:
    require(_unavailable(name), torch=name == "torch")
    # the plan without its optional instances (a redis-server, the PM device model)
    plan = [p for p in default_plan() if not p.optional]
    opts = SuiteOptions(plan=plan, sizes=[1.0], repeats=1, engine=make_engine(KEY, engine))
    model = _tiny_torch(monkeypatch) if name == "torch" else bench_model(1)
    built = _built_ids(name, opts, model)
    ids = section(name).ids(opts)  # type: ignore[misc]
    assert ids == [c.id or c.name for c in built]
    assert all(not c.facts.get("status") for c in built)  # none built as "not run"
    assert [c.ident for c in built] == [f"{name}:{i}" for i in ids]
    # the asv class's op parameter covers every operation they have
    ops = set(bench.OPS.get(name, bench.DEFAULT_OPS))
    assert {op for c in built for op in c.ops} <= ops
    assert not list(roots["shm"].iterdir()) and not list(roots["disk"].iterdir())


def test_one_class_per_rounds_section_with_ids_as_its_parameters(bench: ModuleType) -> None:
    made = {n: c for n, c in vars(bench).items() if isinstance(c, type) and hasattr(c, "time_op")}
    want = {
        section_class(s.name): s
        for s in sections()
        if s.contenders is not None and s.ids is not None
    }
    assert set(want) <= set(made)
    assert SAVE_CLASS == "SaveContenders" and SAVE_CLASS in made
    for name, s in want.items():
        cls = made[name]
        assert cls.section_name == s.name
        assert cls.param_names == ["workload", "engine", "contender", "op"]
        workloads, engines, ids, ops = cls.params
        assert workloads == [bench.workload_of(s)] and engines == [bench.OPTIONS.engine.name]
        assert ids == s.ids(bench.OPTIONS) and len(set(ids)) == len(ids)  # type: ignore[misc]
        assert ops == list(bench.OPS.get(s.name, bench.DEFAULT_OPS))
    save = made[SAVE_CLASS]
    assert save.params[0] == ["size-10"]
    assert save.params[2] == [p.label for p in default_plan()]
    # the old hand-written classes are gone: one harness
    for old in ("bench_mirror.py", "bench_peers.py", "bench_torch.py"):
        assert not (BENCH.parent / old).exists()


def _run(bench: ModuleType, cls_name: str, *params: str) -> float:
    """setup, one time_op and teardown of one combination: the seconds asv's clock advanced."""
    obj = getattr(bench, cls_name)()
    obj.setup(*params)
    try:
        before = bench.contender_clock()
        obj.time_op(*params)
        return float(bench.contender_clock() - before)
    finally:
        obj.teardown(*params)


def test_a_combination_runs_through_the_section_and_leaves_nothing(
    bench: ModuleType, roots: dict[str, Path]
) -> None:
    engine = bench.OPTIONS.engine.name
    for op in ("save", "restore"):
        assert _run(bench, SAVE_CLASS, "size-1", engine, "tmpfs", op) > 0
    assert _run(bench, "LimitsContenders", "size-1", engine, "memcpy/1", "copy") > 0
    assert not list(roots["shm"].iterdir()) and not list(roots["disk"].iterdir())


@pytest.mark.parametrize(
    ("cls_name", "contender", "op"),
    [
        (SAVE_CLASS, "tmpfs", "restore_cold"),  # RAM: no page cache to drop
        (SAVE_CLASS, "no-such-instance", "save"),
        ("LimitsContenders", "memcpy/1", "encrypt"),
        ("TorchContenders", "torchmirror@romulus", "save"),  # not on size-N: NotRun
    ],
)
def test_a_combination_that_does_not_exist_here_is_skipped(
    bench: ModuleType, roots: dict[str, Path], cls_name: str, contender: str, op: str
) -> None:
    obj = getattr(bench, cls_name)()
    params = ("size-1", bench.OPTIONS.engine.name, contender, op)
    with pytest.raises(NotImplementedError):
        obj.setup(*params)
    obj.teardown(*params)  # as asv does after a skip
    assert not list(roots["shm"].iterdir()) and not list(roots["disk"].iterdir())
