"""The loaded-training row of the ``overhead`` section (issue 26): ResNet-50 trained on every
core with a mirror every 10 steps, judged against the ≤ 5 % async bar, never mistaken for the
numpy trainer's or the example CNN's row."""

from __future__ import annotations

from typing import Any

import pytest

from plinius.lab.bench.sections import overhead
from plinius.lab.bench.verdicts import TargetTable


def _row(model: str, sync: float, asyn: float, **extra: Any) -> dict[str, Any]:
    def iv(v: float) -> dict[str, Any]:
        return {"median": v, "ci95": [v - 0.01, v + 0.01], "n": 5, "paired": True}

    return {
        "model": model,
        "backend": "romulus",
        "no_mirror_s": 1.0,
        "sync_s": 1.0 + sync,
        "async_s": 1.0 + asyn,
        "sync_overhead": sync,
        "async_overhead": asyn,
        "sync_overhead_interval": iv(sync),
        "async_overhead_interval": iv(asyn),
        **extra,
    }


def _targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    t = TargetTable(None)
    overhead.targets({overhead.NAME: rows}, t)
    return {r.id: r for r in t.rows}


def test_the_loaded_row_is_judged_by_its_own_bar_and_confused_with_no_other() -> None:
    loaded = _row("ResNet-50 + SGD-momentum", 0.20, 0.02, loop="resnet50", every=10, threads=2)
    got = _targets([loaded])  # first in the list: it must still not be the numpy trainer's row
    assert got["resnet50_loaded_overhead_async"].bar_value == overhead.LOADED_ASYNC_BAR
    assert got["resnet50_loaded_overhead_async"].verdict == "met"
    assert got["resnet50_loaded_overhead_sync"].verdict == "reported"
    assert "every 10 steps" in got["resnet50_loaded_overhead_async"].target
    assert got["overhead_async"].verdict == "not run"
    assert got["torch_overhead_async"].verdict == "not run"
    got = _targets(
        [
            _row("mnist", 0.5, 0.5),
            {
                **loaded,
                "async_overhead": 0.09,
                "async_overhead_interval": {"median": 0.09, "ci95": [0.07, 0.11], "n": 5},
            },
        ]
    )
    assert got["resnet50_loaded_overhead_async"].verdict == "not met"
    assert got["overhead_async"].verdict == "not met"  # the numpy row's own 3 % bar


def test_a_quick_run_says_why_the_loaded_row_did_not_run() -> None:
    row = {
        "model": "ResNet-50",
        "backend": "romulus",
        "loop": "resnet50",
        "not_run": overhead.QUICK,
    }
    got = _targets([row])
    assert got["resnet50_loaded_overhead_async"].why == overhead.QUICK
    text = "\n".join(overhead.render({overhead.NAME: [_row("mnist", 0.1, 0.0), row]}))
    assert "every core" in text and "not run in --quick" in text


def test_the_resnet50_module_is_the_workload_it_is_timed_as() -> None:
    """The trained network has exactly the tensors the ``resnet50`` workload lists (names,
    order, shapes), so the loaded row mirrors the state the torch section sizes."""
    torch = pytest.importorskip(
        "torch", reason="torch==2.13.0 is installed only in the Python 3.11 envs"
    )
    from plinius.lab.bench.resnet import resnet50_sgd
    from plinius.lab.bench.workloads import parameter_specs

    model, _ = resnet50_sgd()
    have = [
        (k, tuple(v.shape), str(v.dtype).removeprefix("torch."))
        for k, v in model.state_dict().items()
    ]
    want = [(s.name, s.shape, s.dtype) for s in parameter_specs("resnet50")]
    assert have == want
    out = model(torch.zeros(1, 3, 64, 64))
    assert tuple(out.shape) == (1, 1000)


def test_an_unknown_training_loop_is_one_line() -> None:
    pytest.importorskip("torch", reason="torch==2.13.0 is installed only in the Python 3.11 envs")
    from plinius.core.errors import ConfigError
    from plinius.lab.bench.torch_section import train_loop

    with pytest.raises(ConfigError, match="unknown training loop 'vgg'"):
        train_loop("vgg", 8)
