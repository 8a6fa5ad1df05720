"""The model zoo: the paper's models by name, generated models of a given size, or any ``.cfg``.

Names: ``mnist`` (the paper's 12-conv MNIST model), ``tiny`` (fast tests), ``batch`` (the
batch-size experiment's 4-conv model) and ``size-N`` (the save/restore benchmark's models: the
MNIST skeleton with as many 3x3, 256-filter conv layers, 2.25 MiB each, as bring it closest to
N MiB). Anything else is taken as a path to a Darknet ``.cfg`` file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from plinius.core import fsutil
from plinius.core.errors import ConfigError
from plinius.nn.cfg import NetConfig, parse_cfg_text, read_cfg_file
from plinius.nn.layers import ConvLayer
from plinius.nn.network import Network, build_layers, fingerprint_of

MIB = 1 << 20
FIXED = {
    "mnist": "The paper's MNIST model: 12 leaky conv layers, poly lr 0.1, 500 iterations",
    "tiny": "A tiny model for fast tests (2 conv + connected)",
    "batch": "The paper's batch-size experiment model (4 conv layers)",
}
PAPER_SIZES_MB = (10, 22, 33, 44, 56, 67, 78, 89, 100)
_SIZE = re.compile(r"^size-(\d+(?:\.\d+)?)$")
MAX_SIZE_LAYERS = 2000

_SIZE_HEAD = """[net]
# Generated: the save/restore benchmark model with {n} 3x3, 256-filter conv layers.
batch=128
subdivisions=1
height=28
width=28
channels=1
learning_rate=0.1
policy=poly
power=4
max_batches=500
momentum=0.9
decay=0.0005

[convolutional]
batch_normalize=1
filters=32
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2
"""
_SIZE_CONV = """
[convolutional]
batch_normalize=1
filters={filters}
size=3
stride=1
pad=1
activation=leaky
"""
_SIZE_TAIL = """
[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=128
size=3
stride=1
pad=1
activation=leaky

[dropout]
probability=.5

[convolutional]
filters=10
size=1
stride=1
pad=1
activation=leaky

[avgpool]

[softmax]
groups=1
"""


def size_model_cfg(layers: int) -> str:
    """The benchmark model with ``layers`` 256-filter conv layers (as in the paper's prototype)."""
    if layers < 1:
        raise ConfigError("a size model needs at least one 256-filter layer")
    body = "".join(_SIZE_CONV.format(filters=256) for _ in range(layers))
    return _SIZE_HEAD.format(n=layers) + body + _SIZE_TAIL


def size_model_bytes(layers: int) -> int:
    """Parameter bytes of :func:`size_model_cfg` (computed, nothing allocated)."""
    conv1 = 32 * 9 + 4 * 32
    first = 256 * 32 * 9 + 4 * 256
    more = (layers - 1) * (256 * 256 * 9 + 4 * 256)
    last = 128 * 256 * 9 + 4 * 128 + 10 * 128 + 10
    return 4 * (conv1 + first + more + last)


def layers_for_size(mb: float) -> int:
    """The number of 256-filter layers whose model is closest to ``mb`` MiB."""
    target = mb * MIB
    per = 4 * (256 * 256 * 9 + 4 * 256)
    guess = max(1, round((target - size_model_bytes(1)) / per) + 1)
    best = min(
        (n for n in (guess - 1, guess, guess + 1) if n >= 1),
        key=lambda n: abs(size_model_bytes(n) - target),
    )
    if best > MAX_SIZE_LAYERS:
        raise ConfigError(f"size-{mb:g} is too big (at most {MAX_SIZE_LAYERS} layers)")
    return best


def _zoo_text(name: str) -> str:
    return resources.files("plinius.nn").joinpath("cfg", f"{name}.cfg").read_text(encoding="utf-8")


def cfg_text(spec: str) -> tuple[str, str]:
    """``(label, cfg text)`` of a zoo name, ``size-N`` or ``.cfg`` path.

    The text is what a mirror stores (sealed), so owner tools can rebuild the exact network.
    """
    if spec in FIXED:
        return f"zoo:{spec}.cfg", _zoo_text(spec)
    m = _SIZE.match(spec)
    if m:
        mb = float(m.group(1))
        if mb <= 0:
            raise ConfigError(f"{spec}: the size must be > 0 MiB")
        return f"zoo:{spec}", size_model_cfg(layers_for_size(mb))
    if not spec:
        raise ConfigError("the model name is empty: give a zoo name or a path to a .cfg file")
    path = Path(fsutil.check_path(spec, "model cfg"))
    if path.suffix == ".cfg" or os.path.lexists(path):
        return str(path), read_cfg_file(path)
    names = ", ".join([*FIXED, "size-N"])
    raise ConfigError(f"unknown model '{spec}': use one of {names} or a path to a .cfg file")


def load_cfg(spec: str) -> NetConfig:
    """Resolve a zoo name, ``size-N`` or a ``.cfg`` path to a parsed config."""
    label, text = cfg_text(spec)
    return parse_cfg_text(text, label)


def load_model(
    spec: str, *, batch: int | None = None, seed: int = 0, col_budget: int | None = None
) -> Network:
    """Build a trainable :class:`Network` from a zoo name or ``.cfg`` path."""
    return Network(load_cfg(spec), batch=batch, seed=seed, col_budget=col_budget)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    layers: int
    conv_layers: int
    parameters: int
    bytes: int
    batch: int
    input: str
    fingerprint: str

    @property
    def mib(self) -> float:
        return self.bytes / MIB

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["mib"] = round(self.mib, 3)
        return d


def describe(spec: str, description: str = "") -> ModelInfo:
    """Sizes and fingerprint of a model without allocating its parameters."""
    cfg = load_cfg(spec)
    net, layers = build_layers(cfg, np.float32)
    params = sum(layer.n_params() for layer in layers)
    shape = (net.channels, net.height, net.width)
    if not description:
        m = _SIZE.match(spec)
        description = FIXED.get(spec, "")
        if m:
            n = layers_for_size(float(m.group(1)))
            description = f"Save/restore benchmark model, {n} 256-filter conv layers"
        elif not description:
            description = f"Darknet cfg {cfg.path}"
    return ModelInfo(
        name=spec,
        description=description,
        layers=len(layers),
        conv_layers=sum(isinstance(layer, ConvLayer) for layer in layers),
        parameters=params,
        bytes=4 * params,
        batch=net.batch,
        input="x".join(str(d) for d in shape),
        fingerprint=fingerprint_of(shape, layers).hex(),
    )


def list_models(sizes: tuple[float, ...] = PAPER_SIZES_MB) -> list[ModelInfo]:
    """The fixed zoo models, then the ``size-N`` models for the given sizes."""
    out = [describe(name) for name in FIXED]
    out += [describe(f"size-{mb:g}") for mb in sizes]
    return out
