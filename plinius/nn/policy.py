"""The ``[net]`` hyper-parameters and Darknet's learning-rate policies.

Rates follow Darknet's ``get_current_rate`` exactly, including ``burn_in`` and the fact that the
batch number is counted *after* the current batch was added to ``seen`` (so the first update of a
``poly`` schedule already uses ``1 - 1/max_batches``, and the last one uses rate 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from plinius.nn.cfg import Section

POLICIES = ("constant", "step", "steps", "poly", "exp", "sig")

# [net] options accepted but not applied: data augmentation is the data loader's business.
IGNORED_NET_OPTIONS = (
    "hue",
    "saturation",
    "exposure",
    "max_crop",
    "min_crop",
    "angle",
    "aspect",
    "jitter",
    "flip",
    "center",
    "random",
    "time_steps",
    "notruth",
)


@dataclass(frozen=True)
class LearningRatePolicy:
    kind: str = "constant"
    learning_rate: float = 0.001
    power: float = 4.0
    max_batches: int = 0
    step: int = 1
    scale: float = 1.0
    steps: tuple[int, ...] = ()
    scales: tuple[float, ...] = ()
    gamma: float = 1.0
    burn_in: int = 0

    def rate(self, batch_num: int) -> float:
        """The learning rate Darknet uses at ``batch_num`` (= images seen // batch)."""
        lr = self.learning_rate
        if batch_num < self.burn_in:
            return lr * float((batch_num / self.burn_in) ** self.power)
        if self.kind == "constant":
            return lr
        if self.kind == "step":
            return lr * self.scale ** (batch_num // self.step)
        if self.kind == "steps":
            for s, sc in zip(self.steps, self.scales, strict=True):
                if s > batch_num:
                    return lr
                lr *= sc
            return lr
        if self.kind == "poly":
            if self.max_batches <= 0:
                return lr
            frac = max(0.0, 1.0 - batch_num / self.max_batches)
            return lr * float(frac**self.power)
        if self.kind == "exp":
            return lr * self.gamma**batch_num
        if self.kind == "sig":
            return lr / (1.0 + math.exp(self.gamma * (batch_num - self.step)))
        raise ValueError(f"unknown policy {self.kind}")


@dataclass(frozen=True)
class NetParams:
    """What ``[net]`` says: input geometry, batch and the optimiser settings."""

    batch: int = 1
    subdivisions: int = 1
    height: int = 0
    width: int = 0
    channels: int = 0
    momentum: float = 0.9
    decay: float = 0.0001
    max_batches: int = 0
    policy: LearningRatePolicy = field(default_factory=LearningRatePolicy)

    @property
    def mini_batch(self) -> int:
        """Images per forward pass (Darknet's ``net->batch``)."""
        return self.batch // self.subdivisions


def parse_net_section(sec: Section) -> NetParams:
    batch = sec.get_int("batch", 1)
    sec.positive("batch", batch)
    subdivisions = sec.get_int("subdivisions", 1)
    sec.positive("subdivisions", subdivisions)
    if batch % subdivisions:
        raise sec.error(f"batch={batch} is not a multiple of subdivisions", "subdivisions")
    inputs = sec.get_int("inputs", 0)
    height = sec.get_int("height", 0)
    width = sec.get_int("width", 0)
    channels = sec.get_int("channels", 0)
    if not (height and width and channels):
        if not inputs:
            raise sec.error("needs height, width and channels (or inputs)")
        height, width, channels = 1, 1, inputs
    for key, v in (("height", height), ("width", width), ("channels", channels)):
        sec.positive(key, v)
    lr = sec.get_float("learning_rate", 0.001)
    momentum = sec.get_float("momentum", 0.9)
    decay = sec.get_float("decay", 0.0001)
    max_batches = sec.get_int("max_batches", 0)
    if sec.get_int("adam", 0):
        raise sec.error("the Adam optimiser is not supported (SGD with momentum only)", "adam")
    kind = sec.get_choice("policy", POLICIES, "constant")
    burn_in = sec.get_int("burn_in", 0)
    power = sec.get_float("power", 4.0)
    step = sec.get_int("step", 1)
    scale = sec.get_float("scale", 1.0)
    gamma = sec.get_float("gamma", 1.0)
    steps: tuple[int, ...] = ()
    scales: tuple[float, ...] = ()
    if kind == "steps":
        steps = tuple(int(s) for s in sec.get_list("steps", int))
        scales = tuple(float(s) for s in sec.get_list("scales", float))
        if not steps:
            raise sec.error("policy=steps needs a 'steps' list", "policy")
        if len(steps) != len(scales):
            raise sec.error(f"{len(steps)} steps but {len(scales)} scales", "scales")
    if kind == "step":
        sec.positive("step", step)
    if kind == "poly" and max_batches <= 0:
        raise sec.error("policy=poly needs max_batches > 0", "max_batches")
    policy = LearningRatePolicy(
        kind, lr, power, max_batches, step, scale, steps, scales, gamma, burn_in
    )
    sec.check_all_used((*IGNORED_NET_OPTIONS, "steps", "scales", "step", "scale", "gamma"))
    return NetParams(
        batch, subdivisions, height, width, channels, momentum, decay, max_batches, policy
    )
