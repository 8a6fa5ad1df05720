"""A Darknet network: layers, one parameter arena, SGD with momentum, and resumable state.

Every parameter buffer (Darknet's ``biases``, ``scales``, ``rolling_mean``, ``rolling_variance``,
``weights``) and every momentum buffer (``*_momentum``, Darknet's ``*_updates``) is a C-contiguous
float32 view into one page-aligned arena allocated at construction and never reallocated, so the
mirror can encrypt them in place and decrypt straight back into them. Parameters come first, in
``.weights`` file order, then the momentum buffers; each buffer starts on a 64-byte boundary (a page
boundary when it is at least a page long).

A training step depends only on the batch it is given, the arena and ``rng`` (which draws dropout
masks): persisting the arena, :meth:`Network.training_state` and the data cursor resumes training
bit-identically (on the same kind of machine: the same thread count splits the work the same way).
``Network`` implements :class:`plinius.core.model.Trainable`, the protocol the enclave mirrors and
trains through; the one arena makes its asynchronous snapshot a single copy.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import resource
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from plinius.core.errors import ConfigError
from plinius.core.memory import PAGE, align_up, aligned_empty
from plinius.core.model import NamedBuffer, check_snapshot_out, view_at
from plinius.nn import parallel
from plinius.nn.cfg import NetConfig
from plinius.nn.layers import ConvLayer, DropoutLayer, Layer, build_layer
from plinius.nn.layers.base import Workspace
from plinius.nn.layers.misc import _LossLayer
from plinius.nn.policy import NetParams, parse_net_section

ARCH_FORMAT = "plinius.nn/arch-1"
BUFFER_ALIGN = 64
DEFAULT_COL_BUDGET = 1 << 30  # bytes of im2col matrices kept between forward and backward
MOMENTUM_SUFFIX = "_momentum"
GIB = 1 << 30


@dataclass(frozen=True)
class BufferInfo:
    """Where one named buffer lives in the arena."""

    layer: int
    name: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def build_layers(cfg: NetConfig, dtype: Any = np.float32) -> tuple[NetParams, list[Layer]]:
    """Parse ``[net]`` and infer every layer's shapes; allocates no parameter memory."""
    net = parse_net_section(cfg.net)
    shape = (net.channels, net.height, net.width)
    layers: list[Layer] = []
    for i, sec in enumerate(cfg.layers):
        layer = build_layer(i, sec, shape, np.dtype(dtype))
        layers.append(layer)
        shape = layer.out_shape
    for layer in layers[:-1]:
        if isinstance(layer, _LossLayer) and layer.kind == "cost":
            raise ConfigError(f"{cfg.path}: [cost] must be the last layer")
    return net, layers


def memory_needed(layers: list[Layer], mini_batch: int, itemsize: int) -> int:
    """A lower bound of the bytes a network takes: parameters, momentum, and for one mini-batch
    every layer's output and input gradient (computed from shapes, nothing allocated)."""
    total = 0
    for layer in layers:
        for spec in layer.param_specs():
            total += spec.size * itemsize * (2 if spec.trainable else 1)
        total += (math.prod(layer.in_shape) + math.prod(layer.out_shape)) * mini_batch * itemsize
    return total


def memory_limit() -> tuple[int, str]:
    """Bytes this process can still get, and where the bound comes from: the address-space
    limit, the cgroup's limit, or the memory and swap the machine has available now."""
    limits: list[tuple[int, str]] = []
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append((soft, "allowed by the address-space limit (ulimit -v)"))
    try:
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if text.isdigit():
            limits.append((int(text), "allowed by this cgroup (memory.max)"))
    except OSError:
        pass
    try:
        info = {
            k: int(v.split()[0]) * 1024
            for k, v in (
                line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines()
            )
            if k in ("MemAvailable", "SwapFree")
        }
        if "MemAvailable" in info:
            limits.append((sum(info.values()), "this machine has available (memory and swap)"))
    except (OSError, ValueError):
        pass
    if not limits:
        return 1 << 62, "addressable"
    return min(limits)


def check_memory(path: str, layers: list[Layer], mini_batch: int, itemsize: int) -> None:
    """Refuse, before allocating anything, a model that cannot fit: a clear error instead of a
    MemoryError traceback or the OOM killer."""
    need = memory_needed(layers, mini_batch, itemsize)
    avail, source = memory_limit()
    if need > avail:
        raise ConfigError(
            f"model {path} at mini-batch {mini_batch} needs at least {need / GIB:,.1f} GiB of "
            f"memory, more than the {avail / GIB:,.1f} GiB {source}: use fewer or smaller "
            "layers (filters, size) or a smaller batch"
        )


class Network:
    """A trainable network built from a parsed ``.cfg``.

    ``batch`` overrides the ``[net]`` batch (images per training step). ``seed`` fixes the
    initial weights and the dropout masks. ``col_budget`` caps the bytes of im2col matrices kept
    from forward to backward (default 1 GiB or ``$PLINIUS_NN_COL_BUDGET_MB``); layers beyond it
    rebuild theirs, trading a copy for memory on big models. ``dtype`` is float32 except in
    tests that check gradients in float64.
    """

    def __init__(
        self,
        cfg: NetConfig,
        *,
        batch: int | None = None,
        seed: int = 0,
        dtype: Any = np.float32,
        col_budget: int | None = None,
    ) -> None:
        net, layers = build_layers(cfg, dtype)
        if batch is not None:
            if batch <= 0 or batch % net.subdivisions:
                raise ConfigError(
                    f"batch {batch} must be a positive multiple of subdivisions={net.subdivisions}"
                )
            net = NetParams(**{**net.__dict__, "batch": batch})
        self.cfg_path = cfg.path
        self.net = net
        self.layers = layers
        self.dtype = np.dtype(dtype)
        check_memory(cfg.path, layers, net.mini_batch, self.dtype.itemsize)
        self.seed = seed
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.seen = 0
        self.avg_loss = -1.0
        self.last_loss = float("nan")
        self._layout_arena()
        for layer in self.layers:
            layer.init_params(self.rng)
            if isinstance(layer, DropoutLayer):
                layer.rng = self.rng
        self.workspace = Workspace()
        if col_budget is None:
            env = os.environ.get("PLINIUS_NN_COL_BUDGET_MB", "")
            col_budget = int(env) << 20 if env.isdigit() else DEFAULT_COL_BUDGET
        self.col_budget = col_budget
        self._allocated_batch = 0
        self._allocate(net.mini_batch)

    # -- geometry ---------------------------------------------------------------------------
    @property
    def batch(self) -> int:
        """Images per training step (Darknet's ``batch``, all subdivisions together)."""
        return self.net.batch

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.net.channels, self.net.height, self.net.width)

    @property
    def inputs(self) -> int:
        return math.prod(self.input_shape)

    @property
    def outputs(self) -> int:
        return math.prod(self.layers[-1].out_shape)

    @property
    def iteration(self) -> int:
        """Training steps done (Darknet's ``get_current_batch``: images seen // batch)."""
        return self.seen // self.batch

    @property
    def max_batches(self) -> int:
        return self.net.max_batches

    def learning_rate(self) -> float:
        """The rate the *next* update will use (Darknet counts the batch being trained)."""
        return self.net.policy.rate((self.seen + self.batch) // self.batch)

    # -- arena ------------------------------------------------------------------------------
    def _layout_arena(self) -> None:
        itemsize = self.dtype.itemsize
        params: list[BufferInfo] = []
        moments: list[BufferInfo] = []
        off = 0

        def place(layer: int, name: str, shape: tuple[int, ...]) -> BufferInfo:
            nonlocal off
            nbytes = math.prod(shape) * itemsize
            off = align_up(off, PAGE if nbytes >= PAGE else BUFFER_ALIGN)
            info = BufferInfo(layer, name, shape, off, nbytes)
            off += nbytes
            return info

        for layer in self.layers:
            for spec in layer.param_specs():
                params.append(place(layer.index, spec.name, spec.shape))
        param_end = off
        off = align_up(off, PAGE)
        moment_start = off
        for layer in self.layers:
            for spec in layer.param_specs():
                if spec.trainable:
                    moments.append(place(layer.index, spec.name + MOMENTUM_SUFFIX, spec.shape))
        total = align_up(max(off, 1), PAGE)
        self.arena = aligned_empty(total)
        self.arena.fill(0)  # touch every page now, not during the first iteration
        self.param_region = self.arena[:param_end]
        self.optimizer_region = self.arena[moment_start:off]

        def view(info: BufferInfo) -> np.ndarray:
            raw = self.arena[info.offset : info.offset + info.nbytes]
            arr: np.ndarray = raw.view(self.dtype).reshape(info.shape)
            return arr

        by_layer: dict[int, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = {
            layer.index: ({}, {}) for layer in self.layers
        }
        self._params: list[NamedBuffer] = []
        self._moments: list[NamedBuffer] = []
        for info in params:
            arr = view(info)
            by_layer[info.layer][0][info.name] = arr
            self._params.append((info.layer, info.name, arr))
        for info in moments:
            arr = view(info)
            by_layer[info.layer][1][info.name.removesuffix(MOMENTUM_SUFFIX)] = arr
            self._moments.append((info.layer, info.name, arr))
        self._offsets = [info.offset for info in params + moments]  # of mirror_buffers()
        for layer in self.layers:
            p, u = by_layer[layer.index]
            layer.bind(p, u)

    def param_buffers(self) -> list[NamedBuffer]:
        """``(layer index, Darknet name, array)`` of every parameter, in ``.weights`` order."""
        return list(self._params)

    def optimizer_buffers(self) -> list[NamedBuffer]:
        """``(layer index, name, array)`` of every momentum buffer (``weights_momentum``...)."""
        return list(self._moments)

    def n_params(self) -> int:
        return sum(a.size for _, _, a in self._params)

    # -- the mirror protocol (plinius.core.model.Mirrorable) ------------------------------------
    def mirror_buffers(self) -> list[NamedBuffer]:
        """Parameters then momentum buffers: the mirror's record order."""
        return self._params + self._moments

    def snapshot_nbytes(self) -> int:
        return int(self.arena.nbytes)

    def snapshot_into(self, out: np.ndarray) -> list[NamedBuffer]:
        """One copy of the whole arena, then views at the buffers' arena offsets."""
        check_snapshot_out(out, self.arena.nbytes)
        np.copyto(out[: self.arena.nbytes], self.arena)
        return [
            (layer, name, view_at(out, off, arr))
            for (layer, name, arr), off in zip(self.mirror_buffers(), self._offsets, strict=True)
        ]

    # -- identity and state -------------------------------------------------------------------
    def architecture(self) -> dict[str, Any]:
        """The canonical description hashed by :meth:`fingerprint`."""
        return architecture(self.input_shape, self.layers)

    def fingerprint(self) -> bytes:
        """SHA-256 of the architecture: layer types, shapes, activations, batch norm, pooling.

        It excludes the weights and every training setting that leaves the meaning of the stored
        buffers unchanged (batch, subdivisions, learning-rate policy, momentum, decay,
        max_batches, dropout probability), so a mirror can resume with a different batch size or
        schedule but never into a network whose buffers would mean something else.
        """
        return fingerprint_of(self.input_shape, self.layers)

    def rng_state(self) -> dict[str, Any]:
        """The dropout generator's state (JSON-serialisable)."""
        return dict(self.rng.bit_generator.state)

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state

    def training_state(self) -> dict[str, Any]:
        """Everything besides the arena that the next step depends on."""
        return {"seen": self.seen, "avg_loss": self.avg_loss, "rng": self.rng_state()}

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.seen = int(state["seen"])
        self.avg_loss = float(state["avg_loss"])
        self.set_rng_state(state["rng"])

    # -- buffers ------------------------------------------------------------------------------
    def _allocate(self, batch: int) -> None:
        if batch == self._allocated_batch:
            return
        budget = self.col_budget
        for layer in self.layers:
            layer.workspace = self.workspace
            if isinstance(layer, ConvLayer):
                _, oh, ow = layer.out_shape
                need = layer.ksize * batch * oh * ow * self.dtype.itemsize
                layer.keep_col = need <= budget
                if layer.keep_col:
                    budget -= need
            layer.allocate(batch)
        c, h, w = self.input_shape
        self._xin = np.zeros((c, h, w, batch), self.dtype)
        self._truth = np.zeros((self.outputs, batch), self.dtype)
        self._allocated_batch = batch

    def _load_input(self, x: np.ndarray) -> np.ndarray:
        c, h, w = self.input_shape
        b = x.shape[0]
        np.copyto(self._xin, np.asarray(x).reshape(b, c, h, w).transpose(1, 2, 3, 0))
        return self._xin

    def _check_x(self, x: np.ndarray) -> None:
        if x.ndim < 2 or math.prod(x.shape[1:]) != self.inputs:
            raise ValueError(
                f"expected images of {self.inputs} values ({self.input_shape}), got {x.shape}"
            )

    # -- passes -------------------------------------------------------------------------------
    def _forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        a = self._load_input(x)
        with parallel.blas_single_threaded():
            for layer in self.layers:
                a = layer.forward(a, train)
        return a

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Inference on at most ``mini_batch`` images: ``(n, outputs)`` (a fresh array)."""
        x = np.asarray(x)
        self._check_x(x)
        n = x.shape[0]
        mb = self.net.mini_batch
        if n > mb:
            raise ValueError(f"forward takes at most {mb} images; use predict() for more")
        if n < mb:
            padded = np.zeros((mb, self.inputs), self.dtype)
            padded[:n] = x.reshape(n, -1)
            x = padded
        out = self._forward(x.reshape(mb, -1), train=False)
        return np.ascontiguousarray(out.reshape(self.outputs, mb).T[:n])

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Outputs for any number of images, in chunks of the mini-batch (BN uses rolling stats)."""
        x = np.asarray(x)
        self._check_x(x)
        mb = self.net.mini_batch
        out = np.empty((x.shape[0], self.outputs), self.dtype)
        for lo in range(0, x.shape[0], mb):
            out[lo : lo + mb] = self.forward(x[lo : lo + mb])
        return out

    def accuracy(self, x: np.ndarray, labels: np.ndarray) -> float:
        """Top-1 accuracy (fraction in [0, 1]) on images ``x`` with integer ``labels``."""
        labels = np.asarray(labels)
        if labels.shape[0] != np.asarray(x).shape[0]:
            raise ValueError("x and labels differ in length")
        if labels.shape[0] == 0:
            raise ValueError("accuracy of an empty set")
        pred = np.argmax(self.predict(x), axis=1)
        return float(np.mean(pred == labels))

    def _set_truth(self, y: np.ndarray) -> None:
        y = np.asarray(y)
        b = self._truth.shape[1]
        if y.ndim == 1:
            if y.shape[0] != b:
                raise ValueError(f"expected {b} labels, got {y.shape[0]}")
            if y.min() < 0 or y.max() >= self.outputs:
                raise ValueError(f"labels must be in [0, {self.outputs}), got {y.min()}..{y.max()}")
            self._truth.fill(0)
            self._truth[y.astype(np.intp), np.arange(b)] = 1
        elif y.shape == (b, self.outputs):
            np.copyto(self._truth, y.T)
        else:
            raise ValueError(f"expected {b} labels or a ({b}, {self.outputs}) one-hot matrix")

    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        """One SGD step on ``batch`` images; returns the batch's mean loss per image.

        ``x`` is ``(batch, C*H*W)`` (or ``(batch, C, H, W)``), ``y`` integer labels or one-hot
        rows. Updates ``seen``, the arena, ``avg_loss`` (the paper's ``0.9*avg + 0.1*loss``)
        and draws dropout masks from ``rng``, nothing else.
        """
        x = np.asarray(x)
        self._check_x(x)
        if x.shape[0] != self.batch:
            raise ValueError(
                f"train_step needs exactly batch={self.batch} images, got {x.shape[0]}"
            )
        last = self.layers[-1]
        if not isinstance(last, _LossLayer):
            raise ConfigError(
                f"{self.cfg_path}: the last layer is [{last.kind}]; training needs [softmax] "
                "or [cost] last"
            )
        mb = self.net.mini_batch
        y = np.asarray(y)
        total = 0.0
        for s in range(self.net.subdivisions):
            part = slice(s * mb, (s + 1) * mb)
            self.seen += mb
            self._forward(x[part], train=True)
            self._set_truth(y[part])
            last.set_truth(self._truth)
            loss, g = last.loss_and_grad()
            total += loss
            grad: np.ndarray | None = g
            with parallel.blas_single_threaded():
                for layer in reversed(self.layers[:-1]):
                    assert grad is not None
                    grad = layer.backward(grad, need_dx=layer.index > 0)
            for layer in self.layers:
                for name, u in layer.updates.items():
                    u -= layer.grads[name]  # Darknet accumulates -gradient into *_updates
        self._update()
        loss = total / self.batch
        self.last_loss = loss
        self.avg_loss = loss if self.avg_loss < 0 else self.avg_loss * 0.9 + loss * 0.1
        return loss

    def _update(self) -> None:
        """Darknet's update: decay into the momentum, step ``lr/batch``, then scale by momentum."""
        b = self.batch
        lr = self.net.policy.rate(self.seen // b)
        t = self.dtype.type
        step, decay, momentum = t(lr / b), t(-self.net.decay * b), t(self.net.momentum)
        for layer in self.layers:
            decayed = {s.name for s in layer.param_specs() if s.decay}
            for name, u in layer.updates.items():
                p, scratch = layer.params[name], layer.grads[name]
                if name in decayed:
                    np.multiply(p, decay, out=scratch)
                    u += scratch
                np.multiply(u, step, out=scratch)
                p += scratch
                u *= momentum

    # -- description ----------------------------------------------------------------------------
    def summary(self) -> Iterator[dict[str, Any]]:
        """One row per layer: index, description, output shape, parameters."""
        for layer in self.layers:
            yield {
                "layer": layer.index,
                "type": layer.kind,
                "description": layer.describe(),
                "output": "x".join(str(d) for d in layer.out_shape),
                "parameters": layer.n_params(),
            }


def architecture(input_shape: tuple[int, int, int], layers: list[Layer]) -> dict[str, Any]:
    return {
        "format": ARCH_FORMAT,
        "input": list(input_shape),
        "layers": [layer.arch() for layer in layers],
    }


def fingerprint_of(input_shape: tuple[int, int, int], layers: list[Layer]) -> bytes:
    canon = json.dumps(architecture(input_shape, layers), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).digest()
