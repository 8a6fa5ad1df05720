"""Tensors as mirror records and training state as manifest JSON, never as pickles.

A record is a NumPy array over the tensor's own bytes: dtypes NumPy has map one to one, the rest
(bfloat16, float8, complex32) are viewed as an integer of the same width and their torch dtype is
kept in the manifest. Non-tensor state (param groups, scheduler, RNGs, the user's extra state)
goes through :func:`encode`/:func:`decode`: plain JSON plus tagged tuples, non-string-keyed dicts
and small tensors, so a round trip gives back the same Python types. Given ``records``, tensors and
arrays of any size leave the JSON instead: each is collected under its path and the JSON keeps only
a reference to it (the user's ``extra_state``: its tensors become sealed records).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from plinius.core.errors import ConfigError

#: torch dtypes whose tensors ``.numpy()`` can view directly
_NUMPY: dict[torch.dtype, np.dtype[Any]] = {
    torch.float64: np.dtype(np.float64),
    torch.float32: np.dtype(np.float32),
    torch.float16: np.dtype(np.float16),
    torch.int64: np.dtype(np.int64),
    torch.int32: np.dtype(np.int32),
    torch.int16: np.dtype(np.int16),
    torch.int8: np.dtype(np.int8),
    torch.uint8: np.dtype(np.uint8),
    torch.bool: np.dtype(np.bool_),
    torch.complex64: np.dtype(np.complex64),
    torch.complex128: np.dtype(np.complex128),
}
#: the integer a dtype without a NumPy twin is viewed as (same width, so the shape stays)
_BY_WIDTH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_DTYPES = {str(d): d for d in vars(torch).values() if isinstance(d, torch.dtype)}

_TUPLE, _DICT, _TENSOR, _RECORD = "__tuple__", "__dict__", "__tensor__", "__record__"
#: ``{path: tensor or array}``: what :func:`encode` took out of the JSON as records
Records = dict[str, torch.Tensor | np.ndarray]
#: tensors up to this many elements may sit in the manifest (an lr tensor, a step count)
SMALL_TENSOR = 1024


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype)


def dtype_from_name(name: str) -> torch.dtype:
    """The torch dtype a manifest names (refused when this torch has no such dtype)."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise ConfigError(f"the mirror holds a tensor of dtype {name}, unknown to torch") from None


def record_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a tensor of ``dtype`` is viewed as to become a NumPy record."""
    if dtype in _NUMPY:
        return dtype
    width = torch.empty((), dtype=dtype).element_size()
    return _BY_WIDTH[width]


def numpy_dtype(dtype: torch.dtype) -> np.dtype[Any]:
    """The NumPy dtype of the record a tensor of ``dtype`` becomes."""
    return _NUMPY[record_dtype(dtype)]


def record_view(t: torch.Tensor) -> torch.Tensor:
    """``t`` detached and seen in its record dtype: the same memory, no copy."""
    d = t.detach()
    rd = record_dtype(d.dtype)
    return d if rd == d.dtype else d.view(rd)


def encode(obj: Any, where: str, records: Records | None = None) -> Any:
    """``obj`` as JSON-able data that :func:`decode` turns back into the same types.

    ``records``: tensors and NumPy arrays go there under their path (``where``, ``.key``,
    ``[i]``), each replaced by a reference, instead of into the JSON."""
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, tuple | list) and all(type(v) is int for v in obj):
        # the fast path of integer lists (a cursor, a shape), encoded at every mirror
        return {_TUPLE: list(obj)} if isinstance(obj, tuple) else list(obj)
    if isinstance(obj, tuple):
        return {_TUPLE: [encode(v, f"{where}[{i}]", records) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode(v, f"{where}[{i}]", records) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not _tagged(obj):
            return {k: encode(v, f"{where}.{k}", records) for k, v in obj.items()}
        return {
            _DICT: [[encode(k, where), encode(v, f"{where}.{k}", records)] for k, v in obj.items()]
        }
    if records is not None and isinstance(obj, torch.Tensor | np.ndarray):
        if isinstance(obj, np.ndarray) and (obj.dtype.hasobject or obj.dtype.kind not in "biufc"):
            raise ConfigError(
                f"{where} is a numpy array of dtype {obj.dtype}: only bool, integer, float and "
                "complex arrays are sealed as records (never pickled)"
            )
        if where in records:
            raise ConfigError(f"{where} names two tensors: rename a key of extra_state")
        records[where] = obj
        return {_RECORD: where}
    if isinstance(obj, torch.Tensor):
        if obj.numel() > SMALL_TENSOR:
            raise ConfigError(f"{where} is a tensor of {obj.numel()} elements: too big for JSON")
        t = obj.detach().cpu()
        return {
            _TENSOR: {
                "dtype": dtype_name(t.dtype),
                "shape": list(t.shape),
                "device": str(obj.device),
                "data": t.reshape(-1).tolist(),
            }
        }
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "biuf" and obj.size <= 1 << 16:
        return {"__ndarray__": {"dtype": obj.dtype.str, "data": obj.tolist()}}
    if isinstance(obj, np.generic):
        return encode(obj.item(), where)
    raise ConfigError(
        f"{where} is a {type(obj).__name__}, which plinius does not store (it never pickles): "
        "keep training state to numbers, strings, lists, tuples, dicts, tensors and arrays"
    )


def _tagged(d: dict[str, Any]) -> bool:
    return len(d) == 1 and next(iter(d)) in (_TUPLE, _DICT, _TENSOR, _RECORD, "__ndarray__")


def decode(obj: Any, records: Records | None = None) -> Any:
    """What :func:`encode` was given (tensors come back on the device they were on; a record
    reference as the tensor or array ``records`` holds under its path)."""
    if isinstance(obj, list):
        return [decode(v, records) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if _tagged(obj):
        tag, val = next(iter(obj.items()))
        if tag == _TUPLE:
            return tuple(decode(v, records) for v in val)
        if tag == _DICT:
            return {decode(k): decode(v, records) for k, v in val}
        if tag == _RECORD:
            if records is None or val not in records:
                raise ConfigError(f"the mirror's manifest names a record {val!r} it does not hold")
            return records[val]
        if tag == "__ndarray__":
            return np.array(val["data"], dtype=np.dtype(val["dtype"]))
        t = torch.tensor(val["data"], dtype=dtype_from_name(val["dtype"]))
        return t.reshape(val["shape"]).to(val["device"])
    return {k: decode(v, records) for k, v in obj.items()}


__all__ = [
    "Records",
    "decode",
    "dtype_from_name",
    "dtype_name",
    "encode",
    "numpy_dtype",
    "record_dtype",
    "record_view",
]
