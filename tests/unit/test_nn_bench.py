"""The engine benchmark runs end to end on the tiny model and reports what it ran."""

from __future__ import annotations

from plinius.core.datasets import load_embedded
from plinius.lab.bench.nn_step import accuracy_run, run_benchmark


def test_benchmark_figures_on_tiny_model() -> None:
    res = run_benchmark("tiny", batch=8, iterations=2, warmup=1, torch=False, accuracy=False)
    assert res["ours"]["s_per_iter"] > 0 and len(res["ours"]["all_s"]) == 2
    assert res["torch"] is None and res["ratio_vs_torch"] is None
    assert res["environment"]["threads"] >= 1 and res["environment"]["numpy"]


def test_accuracy_run_names_its_dataset() -> None:
    ds = load_embedded(seed=0)
    res = accuracy_run("tiny", iterations=60, dataset=ds, log_every=20)
    assert res["dataset"] == ds.name and res["iterations"] == 60
    assert [i for i, _ in res["loss_curve"]] == [20, 40, 60]
    assert res["test_images"] == 1000
    assert res["top1_accuracy"] > 0.5  # 60 steps of batch 32 on real digits: far above chance
