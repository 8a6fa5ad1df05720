"""The numpy engine: one training iteration, inference, and accuracy after the paper's schedule.

Figures: seconds per ``train_step`` (the paper's Fig. 8 axis) for the zoo models across batch
sizes, seconds per inference batch, and held-out top-1 accuracy of the MNIST model after its
500 iterations on the dataset ``plinius.core.datasets.load_dataset()`` picks (the report names it).
"""

from __future__ import annotations

import numpy as np

from plinius.nn import load_model


class TimeTrainStep:
    """Seconds per SGD iteration (forward, backward, update)."""

    params = (["tiny", "batch", "mnist"], [32, 128])
    repeat = (5, 10, 30.0)
    param_names = ["model", "batch"]
    timeout = 300

    def setup(self, model: str, batch: int) -> None:
        self.net = load_model(model, batch=batch, seed=0)
        rng = np.random.default_rng(0)
        self.x = rng.random((batch, self.net.inputs), dtype=np.float32)
        self.y = rng.integers(0, self.net.outputs, batch)
        self.net.train_step(self.x, self.y)  # first touch of every buffer

    def time_train_step(self, model: str, batch: int) -> None:
        self.net.train_step(self.x, self.y)


class TimeInference:
    """Seconds to classify one batch (batch norm with rolling statistics, no dropout)."""

    params = (["mnist"], [128])
    param_names = ["model", "batch"]

    def setup(self, model: str, batch: int) -> None:
        self.net = load_model(model, batch=batch, seed=0)
        self.x = np.random.default_rng(0).random((batch, self.net.inputs), dtype=np.float32)
        self.net.forward(self.x)

    def time_forward(self, model: str, batch: int) -> None:
        self.net.forward(self.x)


class TrackAccuracy:
    """Held-out top-1 accuracy (%) of the paper's MNIST model after its 500 iterations."""

    timeout = 1800
    number = 1
    repeat = 1

    def track_mnist_top1(self) -> float:
        from plinius.lab.bench.nn_step import accuracy_run

        return 100.0 * float(accuracy_run("mnist")["top1_accuracy"])

    track_mnist_top1.unit = "%"  # type: ignore[attr-defined]


class TimeTorchTrainStep:
    """The same MNIST iteration (batch 128) in PyTorch on the CPU, beside ``TimeTrainStep``.

    A timing benchmark with asv's samples (the ratio to ours is computed in reports, never
    stored as a single-sample figure). Needs torch (the tox ``bench`` env installs it).
    """

    params = (["mnist"], [128])
    param_names = ["model", "batch"]
    timeout = 600

    def setup(self, model: str, batch: int) -> None:
        from plinius.lab.bench.nn_step import torch_step

        try:
            self.step = torch_step(model, batch)
        except ImportError as exc:
            raise NotImplementedError("torch is not installed (pip install torch)") from exc
        self.step()

    def time_torch_train_step(self, model: str, batch: int) -> None:
        self.step()
