"""Tensor lists shaped exactly like real models, built from their architectures (no weights).

Size-N zoo models say how fast bytes move; a checkpoint of a real model also has hundreds of
tensors of very different sizes (a 768-float LayerNorm beside a 150 MB embedding), which is
where per-tensor costs show. These lists reproduce the ``state_dict`` of torchvision's ResNet-50,
Hugging Face ``bert-base-uncased`` (``BertModel`` with pooler) and ``gpt2`` (``GPT2LMHeadModel``,
the tied ``lm_head`` counted once), names, order, shapes and dtypes, in pure Python: no torch
import, nothing downloaded. Optimizer state is modelled as torch keeps it (one momentum buffer,
or Adam's two moments and float32 step, per float parameter).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plinius.core.errors import ConfigError
from plinius.core.memory import aligned_empty


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a workload: its ``state_dict`` name, shape and numpy dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"


# (spec, is_parameter): buffers (BatchNorm running statistics) get no optimizer state
_Entry = tuple[TensorSpec, bool]


def _param(name: str, *shape: int) -> _Entry:
    return TensorSpec(name, tuple(shape)), True


def _buffer(name: str, *shape: int, dtype: str = "float32") -> _Entry:
    return TensorSpec(name, tuple(shape), dtype), False


def _batchnorm(prefix: str, c: int) -> list[_Entry]:
    return [
        _param(f"{prefix}.weight", c),
        _param(f"{prefix}.bias", c),
        _buffer(f"{prefix}.running_mean", c),
        _buffer(f"{prefix}.running_var", c),
        _buffer(f"{prefix}.num_batches_tracked", dtype="int64"),
    ]


def _resnet50() -> list[_Entry]:
    """torchvision ``resnet50()``: bottleneck blocks [3, 4, 6, 3], stride on the 3x3 conv."""
    out = [_param("conv1.weight", 64, 3, 7, 7), *_batchnorm("bn1", 64)]
    inplanes = 64
    for stage, (planes, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), start=1):
        width, expanded = planes, planes * 4
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            out += [
                _param(f"{p}.conv1.weight", width, inplanes, 1, 1),
                *_batchnorm(f"{p}.bn1", width),
                _param(f"{p}.conv2.weight", width, width, 3, 3),
                *_batchnorm(f"{p}.bn2", width),
                _param(f"{p}.conv3.weight", expanded, width, 1, 1),
                *_batchnorm(f"{p}.bn3", expanded),
            ]
            if b == 0:  # the first block of every stage changes width (and stride)
                out += [
                    _param(f"{p}.downsample.0.weight", expanded, inplanes, 1, 1),
                    *_batchnorm(f"{p}.downsample.1", expanded),
                ]
            inplanes = expanded
    out += [_param("fc.weight", 1000, 2048), _param("fc.bias", 1000)]
    return out


def _linear(prefix: str, n_in: int, n_out: int) -> list[_Entry]:
    """``nn.Linear``: weight is (out, in)."""
    return [_param(f"{prefix}.weight", n_out, n_in), _param(f"{prefix}.bias", n_out)]


def _layernorm(prefix: str, c: int) -> list[_Entry]:
    return [_param(f"{prefix}.weight", c), _param(f"{prefix}.bias", c)]


def _bert_base() -> list[_Entry]:
    """``BertModel`` of ``bert-base-uncased``: 12 layers, hidden 768, FFN 3072, vocab 30522.

    ``position_ids``/``token_type_ids`` are non-persistent buffers: not in the ``state_dict``.
    """
    h, ffn = 768, 3072
    out = [
        _param("embeddings.word_embeddings.weight", 30522, h),
        _param("embeddings.position_embeddings.weight", 512, h),
        _param("embeddings.token_type_embeddings.weight", 2, h),
        *_layernorm("embeddings.LayerNorm", h),
    ]
    for i in range(12):
        p = f"encoder.layer.{i}"
        for proj in ("query", "key", "value"):
            out += _linear(f"{p}.attention.self.{proj}", h, h)
        out += _linear(f"{p}.attention.output.dense", h, h)
        out += _layernorm(f"{p}.attention.output.LayerNorm", h)
        out += _linear(f"{p}.intermediate.dense", h, ffn)
        out += _linear(f"{p}.output.dense", ffn, h)
        out += _layernorm(f"{p}.output.LayerNorm", h)
    out += _linear("pooler.dense", h, h)
    return out


def _conv1d(prefix: str, n_in: int, n_out: int) -> list[_Entry]:
    """GPT-2's ``Conv1D``: weight is (in, out), the transpose of ``nn.Linear``."""
    return [_param(f"{prefix}.weight", n_in, n_out), _param(f"{prefix}.bias", n_out)]


def _gpt2_small() -> list[_Entry]:
    """``GPT2LMHeadModel`` of ``gpt2``: 12 layers, hidden 768, context 1024, vocab 50257.

    ``lm_head.weight`` is tied to ``transformer.wte.weight``: stored once. The causal-mask
    buffers are non-persistent: not in the ``state_dict``.
    """
    h = 768
    out = [
        _param("transformer.wte.weight", 50257, h),
        _param("transformer.wpe.weight", 1024, h),
    ]
    for i in range(12):
        p = f"transformer.h.{i}"
        out += _layernorm(f"{p}.ln_1", h)
        out += _conv1d(f"{p}.attn.c_attn", h, 3 * h)
        out += _conv1d(f"{p}.attn.c_proj", h, h)
        out += _layernorm(f"{p}.ln_2", h)
        out += _conv1d(f"{p}.mlp.c_fc", h, 4 * h)
        out += _conv1d(f"{p}.mlp.c_proj", 4 * h, h)
    out += _layernorm("transformer.ln_f", h)
    return out


_ARCHITECTURES: dict[str, Callable[[], list[_Entry]]] = {
    "resnet50": _resnet50,
    "bert-base": _bert_base,
    "gpt2-small": _gpt2_small,
}
#: optimizer name -> per-parameter state tensors as torch names them in ``state_dict()["state"]``
OPTIMIZERS: dict[str, tuple[str, ...]] = {
    "sgd-momentum": ("momentum_buffer",),
    "adam": ("exp_avg", "exp_avg_sq", "step"),
}


def workload_names() -> list[str]:
    """The architectures, smallest first."""
    return list(_ARCHITECTURES)


def _entries(name: str) -> list[_Entry]:
    try:
        build = _ARCHITECTURES[name]
    except KeyError:
        raise ConfigError(
            f"unknown workload {name!r}; known: {', '.join(_ARCHITECTURES)}"
        ) from None
    return build()


def parameter_specs(name: str) -> list[TensorSpec]:
    """Parameters and buffers of architecture ``name``, in ``state_dict`` order."""
    return [spec for spec, _ in _entries(name)]


def optimizer_specs(name: str, optimizer: str) -> list[TensorSpec]:
    """The optimizer state torch keeps for ``name``'s float parameters (not for buffers).

    ``sgd-momentum``: ``opt.<param>.momentum_buffer``; ``adam``: ``opt.<param>.exp_avg``,
    ``.exp_avg_sq`` and the float32 scalar ``.step`` (torch keeps one step tensor per parameter).
    """
    try:
        states = OPTIMIZERS[optimizer]
    except KeyError:
        raise ConfigError(
            f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZERS)}"
        ) from None
    out = []
    for spec, is_param in _entries(name):
        if not is_param or not np.issubdtype(np.dtype(spec.dtype), np.floating):
            continue
        for state in states:
            shape = () if state == "step" else spec.shape
            out.append(TensorSpec(f"opt.{spec.name}.{state}", shape, "float32"))
    return out


FILE_PREFIX = "file:"
#: safetensors dtype names → numpy dtypes of the same width (bfloat16 moves as uint16 bytes)
_ST_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "uint16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}  # fmt: skip
MAX_ST_HEADER = 100 << 20


def file_specs(path: str) -> list[TensorSpec]:
    """The tensors (names, shapes, dtypes) of the user's own checkpoint: a ``.safetensors``
    file (its JSON header only; nothing else is read), or a ``.pt``/``.pth`` ``state_dict``
    (loaded onto torch's meta device: shapes without data; needs torch)."""
    f = Path(path)
    if not f.is_file():
        raise ConfigError(f"--workload {path}: no such file")
    if f.suffix == ".safetensors":
        return _safetensors_specs(f)
    if f.suffix in (".pt", ".pth"):
        return _torch_specs(f)
    raise ConfigError(f"--workload {path}: expected a .safetensors, .pt or .pth file")


def _safetensors_specs(f: Path) -> list[TensorSpec]:
    with f.open("rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= n <= MAX_ST_HEADER:
            raise ConfigError(f"--workload {f}: not a safetensors file (header length {n})")
        raw = fh.read(n)
    try:
        table = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ConfigError(f"--workload {f}: not a safetensors file (header is not JSON)") from None
    if not isinstance(table, dict):
        raise ConfigError(f"--workload {f}: not a safetensors file (header is not a table)")
    specs = []
    for name, t in table.items():
        if name == "__metadata__":
            continue
        ok = isinstance(t, dict) and t.get("dtype") in _ST_DTYPES
        shape = t.get("shape") if isinstance(t, dict) else None
        if (
            not ok
            or not isinstance(shape, list)
            or not all(isinstance(d, int) and 0 <= d < 1 << 40 for d in shape)
        ):
            raise ConfigError(f"--workload {f}: tensor {name!r} has no valid dtype and shape")
        specs.append(TensorSpec(str(name), tuple(shape), _ST_DTYPES[t["dtype"]]))
    if not specs:
        raise ConfigError(f"--workload {f}: the file holds no tensor")
    return specs


def _torch_specs(f: Path) -> list[TensorSpec]:
    try:
        import torch
    except ImportError:
        raise ConfigError(
            f"--workload {f}: reading a .pt file needs torch (pip install 'plinius[torch]'); "
            "a .safetensors file needs nothing"
        ) from None
    try:
        state = torch.load(f, map_location="meta", weights_only=True)
    except Exception as exc:  # a file torch cannot read: said in one line
        raise ConfigError(f"--workload {f}: torch cannot load it ({type(exc).__name__})") from None
    specs: list[TensorSpec] = []

    def walk(prefix: str, obj: object) -> None:
        if isinstance(obj, torch.Tensor):
            dtype = str(obj.dtype).removeprefix("torch.")
            specs.append(
                TensorSpec(prefix, tuple(obj.shape), "uint16" if dtype == "bfloat16" else dtype)
            )
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(f"{prefix}.{i}", v)

    walk("", state)
    if not specs:
        raise ConfigError(f"--workload {f}: the file holds no tensor")
    return specs


def workload_specs(label: str) -> list[TensorSpec]:
    """Tensors of a workload label: ``"resnet50"``, ``"<architecture>+<optimizer>"`` or
    ``"file:PATH"`` (the user's own checkpoint, :func:`file_specs`)."""
    if label.startswith(FILE_PREFIX):
        return file_specs(label.removeprefix(FILE_PREFIX))
    name, plus, optimizer = label.partition("+")
    specs = parameter_specs(name)
    if plus:
        specs += optimizer_specs(name, optimizer)
    return specs


def workload_labels(optimizer: bool = True) -> list[str]:
    """Every workload label: the architectures, and with ``optimizer`` each with each optimizer."""
    labels = []
    for name in _ARCHITECTURES:
        labels.append(name)
        if optimizer:
            labels += [f"{name}+{opt}" for opt in OPTIMIZERS]
    return labels


def _count(spec: TensorSpec) -> int:
    return math.prod(spec.shape)


def nbytes(specs: Sequence[TensorSpec]) -> int:
    """Bytes of tensor data in ``specs``."""
    return sum(_count(s) * np.dtype(s.dtype).itemsize for s in specs)


_POOL_FLOATS = 1 << 20  # 4 MiB of random floats, reused at shifting offsets: generating is slow


def make_arrays(specs: Sequence[TensorSpec], seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """One page-aligned array per spec, filled with deterministic pseudo-random data.

    A float32 pool is drawn once and copied at a seed-dependent shifting offset, so different
    tensors hold different bytes (a restore that swaps two of them is caught) at memcpy speed.
    """
    rng = np.random.default_rng(seed)
    pool = rng.standard_normal(2 * _POOL_FLOATS, dtype=np.float32)
    offset = int(rng.integers(0, _POOL_FLOATS))
    out = []
    for i, spec in enumerate(specs):
        dtype = np.dtype(spec.dtype)
        count = _count(spec)
        arr = aligned_empty(count * dtype.itemsize).view(dtype)
        if dtype.kind == "f":
            src = pool.astype(dtype, copy=False)
            done = 0
            while done < count:
                start = (offset + 7919 * (i + done)) % _POOL_FLOATS
                n = min(count - done, _POOL_FLOATS)
                np.copyto(arr[done : done + n], src[start : start + n], casting="unsafe")
                done += n
        else:  # counters (num_batches_tracked): small deterministic integers
            arr[:] = (np.arange(count) + offset + i) % 1000
        out.append((spec.name, arr.reshape(spec.shape)))
    return out
