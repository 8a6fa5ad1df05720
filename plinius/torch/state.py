"""A PyTorch model, optimizer, scheduler and RNGs as one :class:`plinius.core.model.Mirrorable`.

The enclave mirrors it exactly as it mirrors a Darknet network: it seals the arrays
:meth:`TorchState.mirror_buffers` lists (views of the tensors' own storage, so a save copies
nothing and a restore decrypts straight into the model) and puts :meth:`TorchState.training_state`
in the authenticated manifest. Records: layer 0 the model's ``state_dict`` tensors (a tied tensor
once, under its first name), layer 1 the optimizer's per-parameter tensors (``"<index>.<key>"``,
indices as in ``optimizer.state_dict()``), layer 2 the torch RNG states.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

import numpy as np
import torch

from plinius.core.errors import ConfigError, ModelMismatchError
from plinius.core.memory import align_up
from plinius.core.model import NamedBuffer, check_snapshot_out, packed_offsets, view_at
from plinius.torch.codec import (
    decode,
    dtype_from_name,
    dtype_name,
    encode,
    numpy_dtype,
)
from plinius.torch.staging import Staging

MODEL, OPTIM, RNG = 0, 1, 2
KIND = "torch"
STATE_FORMAT = 1


def _alias_key(t: torch.Tensor) -> tuple[Any, ...]:
    """Same storage, offset, shape and strides: the same tensor (tied weights)."""
    return (
        str(t.device),
        t.untyped_storage().data_ptr(),
        t.storage_offset(),
        tuple(t.shape),
        t.stride(),
        t.dtype,
    )


def model_tensors(model: torch.nn.Module) -> tuple[list[tuple[str, torch.Tensor]], dict[str, str]]:
    """The ``state_dict`` tensors, each storage once, and ``{alias: first name}`` of the rest."""
    seen: dict[tuple[Any, ...], str] = {}
    tensors: list[tuple[str, torch.Tensor]] = []
    aliases: dict[str, str] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if not isinstance(t, torch.Tensor):
            raise ConfigError(
                f"model state {name!r} is a {type(t).__name__}, not a tensor (a module's "
                "get_extra_state): pass such state through extra_state= instead"
            )
        key = _alias_key(t)
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            tensors.append((name, t))
    return tensors, aliases


class TorchState:
    """Everything a PyTorch training run resumes from, seen as mirror records and manifest."""

    model_kind = KIND
    batch = 0  # the enclave's manifest names a batch size; a torch loop keeps its own

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        extra_state: dict[str, Any] | None = None,
        staging: Staging | None = None,
        module_types: bool = True,
    ) -> None:
        """``module_types``: a restore checks the class of every module in the tree against
        the one the mirror recorded (authenticated, in the manifest), so a model with the same
        tensors but another layer (Tanh for ReLU) is refused; False accepts a deliberate code
        change that keeps the tensors."""
        if extra_state is not None and not isinstance(extra_state, dict):
            raise ConfigError("extra_state must be a dict (updated in place by restore)")
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.extra_state = extra_state
        self.staging = staging if staging is not None else Staging()
        self.module_types = module_types
        #: what computes with the tensors, as far as the module tree says (not ``forward``'s code)
        self._modules = [
            [name, f"{type(m).__module__}.{type(m).__qualname__}"]
            for name, m in model.named_modules()
        ]
        self._tensors, self._aliases = model_tensors(model)
        self._params: list[torch.Tensor] = []
        if optimizer is not None:
            self._params = [p for g in optimizer.param_groups for p in g["params"]]
        self._fp = self._fingerprint()
        self._rng: dict[str, np.ndarray] = {}
        self.iteration = 0

    # --- identity ------------------------------------------------------------------------------

    def _fingerprint(self) -> bytes:
        doc: dict[str, Any] = {
            "kind": f"{KIND}-{STATE_FORMAT}",
            "tensors": [
                [n, list(t.shape), dtype_name(t.dtype)]
                for n, t in self.model.state_dict(keep_vars=True).items()
            ],
            "tied": sorted(self._aliases.items()),
            "optimizer": None,
            "scheduler": type(self.scheduler).__qualname__ if self.scheduler is not None else None,
        }
        if self.optimizer is not None:
            doc["optimizer"] = {
                "class": type(self.optimizer).__qualname__,
                "groups": [len(g["params"]) for g in self.optimizer.param_groups],
                "params": [[list(p.shape), dtype_name(p.dtype)] for p in self._params],
            }
        raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(b"plinius-torch-v1" + raw).digest()

    def fingerprint(self) -> bytes:
        return self._fp

    @property
    def model_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for _, t in self._tensors)

    # --- the records ---------------------------------------------------------------------------

    def _sources(self) -> list[tuple[int, str, torch.Tensor]]:
        """Every tensor record in mirror order (model, then optimizer state)."""
        out = [(MODEL, n, t) for n, t in self._tensors]
        if self.optimizer is not None:
            state = self.optimizer.state
            for i, p in enumerate(self._params):
                for k, v in state.get(p, {}).items():
                    if isinstance(v, torch.Tensor):
                        out.append((OPTIM, f"{i}.{k}", v))
        return out

    def _rng_now(self) -> dict[str, torch.Tensor]:
        states = {"torch_cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                states[f"cuda:{i}"] = s
        return states

    def _rng_arrays(self, fill: bool) -> list[NamedBuffer]:
        """The RNG records (kept uint8 arrays; filled with the current states to save)."""
        out: list[NamedBuffer] = []
        if fill:
            for name, s in self._rng_now().items():
                arr = self._rng.get(name)
                if arr is None or arr.shape != tuple(s.shape):
                    arr = self._rng[name] = np.empty(tuple(s.shape), np.uint8)
                arr[...] = s.numpy()
        for name in sorted(self._rng):
            out.append((RNG, name, self._rng[name]))
        return out

    def mirror_buffers(self) -> list[NamedBuffer]:
        """Views of every tensor (staged copies where not direct) and the RNG states."""
        out: list[NamedBuffer] = []
        for layer, name, t in self._sources():
            out.append((layer, name, self.staging.host_array(f"{layer}/{name}", t)))
        return out + self._rng_arrays(fill=True)

    def restore_buffers(self) -> dict[tuple[int, str], np.ndarray]:
        """Where a restore decrypts to: the tensors' own memory or their staging buffers."""
        into: dict[tuple[int, str], np.ndarray] = {}
        for layer, name, t in self._sources():
            into[(layer, name)] = self.staging.host_array(f"{layer}/{name}", t, fill=False)
        for layer, name, arr in self._rng_arrays(fill=False):
            into[(layer, name)] = arr
        return into

    def _like(self) -> list[tuple[int, str, torch.Tensor | np.ndarray, np.ndarray]]:
        """(layer, name, source, a zero-byte array of the record's dtype and shape)."""
        out: list[tuple[int, str, torch.Tensor | np.ndarray, np.ndarray]] = []
        for layer, name, t in self._sources():
            like = np.broadcast_to(np.empty((), numpy_dtype(t.dtype)), tuple(t.shape))
            out.append((layer, name, t, like))
        for layer, name, arr in self._rng_arrays(fill=True):
            out.append((layer, name, arr, arr))
        return out

    def snapshot_nbytes(self) -> int:
        return packed_offsets([(lay, n, like) for lay, n, _, like in self._like()])[1]

    def snapshot_into(self, out: np.ndarray) -> list[NamedBuffer]:
        """One copy of every tensor, from wherever it lives, into ``out`` (asynchronous mode)."""
        items = self._like()
        offsets, total = packed_offsets([(lay, n, like) for lay, n, _, like in items])
        check_snapshot_out(out, total)
        views: list[NamedBuffer] = []
        for (layer, name, src, like), off in zip(items, offsets, strict=True):
            dst = view_at(out, off, like)
            if isinstance(src, torch.Tensor):
                self.staging.copy_into(dst, src)
            else:
                np.copyto(dst, src)
            views.append((layer, name, dst))
        return views

    # --- the manifest --------------------------------------------------------------------------

    def _layout(self) -> list[list[Any]]:
        rows: list[list[Any]] = []
        for layer, name, t in self._sources():
            on_param = layer == OPTIM and t.device == self._params[int(name.split(".")[0])].device
            rows.append([layer, name, dtype_name(t.dtype), list(t.shape), on_param])
        for _, name, arr in self._rng_arrays(fill=False):
            rows.append([RNG, name, "torch.uint8", list(arr.shape), False])
        return rows

    def training_state(self) -> dict[str, Any]:
        """Manifest JSON: record layout, optimizer groups and scalars, scheduler, Python and
        NumPy RNGs, the user's extra state."""
        doc: dict[str, Any] = {
            "model_kind": KIND,
            "format": STATE_FORMAT,
            "iteration": self.iteration,
            "aliases": self._aliases,
            "modules": self._modules,
            "rng": {
                "python": encode(random.getstate(), "python RNG"),
                "numpy": encode(np.random.get_state(legacy=False), "numpy RNG"),
            },
            "extra": encode(self.extra_state, "extra_state")
            if self.extra_state is not None
            else None,
            "scheduler": None,
            "optimizer": None,
        }
        if self.scheduler is not None:
            doc["scheduler"] = encode(self.scheduler.state_dict(), "scheduler state")
        if self.optimizer is not None:
            index = {id(p): i for i, p in enumerate(self._params)}
            groups = []
            for g in self.optimizer.param_groups:
                hyper = {k: v for k, v in g.items() if k != "params"}
                groups.append(
                    {"params": [index[id(p)] for p in g["params"]], "hyper": encode(hyper, "group")}
                )
            scalars: dict[str, Any] = {}
            order: dict[str, list[str]] = {}
            for i, p in enumerate(self._params):
                if self.optimizer.state.get(p):
                    order[str(i)] = list(self.optimizer.state[p])
                rest = {
                    k: v
                    for k, v in self.optimizer.state.get(p, {}).items()
                    if not isinstance(v, torch.Tensor)
                }
                if rest:
                    scalars[str(i)] = encode(rest, f"optimizer state {i}")
            doc["optimizer"] = {"groups": groups, "scalars": scalars, "order": order}
        self._rng_arrays(fill=True)  # the torch RNG records, taken with the states above
        doc["layout"] = self._layout()
        return doc

    # --- restore -------------------------------------------------------------------------------

    def prepare_restore(self, state: dict[str, Any]) -> None:
        """Allocate what a mirror of this layout decrypts into: the optimizer's per-parameter
        tensors (PyTorch creates them lazily at the first step) and the RNG buffers."""
        if state.get("model_kind") != KIND:
            raise ModelMismatchError("the mirror does not hold a PyTorch training state")
        theirs = state.get("modules")  # absent in mirrors made before it was recorded
        if self.module_types and theirs is not None and theirs != self._modules:
            a, b = dict(map(tuple, theirs)), dict(map(tuple, self._modules))
            odd = [f"{n or '(root)'}: {a.get(n, 'none')} -> {b.get(n, 'none')}"
                   for n in sorted(set(a) | set(b)) if a.get(n) != b.get(n)]  # fmt: skip
            raise ModelMismatchError(
                f"the mirror was made by a model whose modules differ ({'; '.join(odd[:3])}): "
                "use that model, or pass check_module_types=False for a deliberate code change"
            )
        for layer, name, dtype, shape, on_param in state["layout"]:
            if layer == OPTIM:
                if self.optimizer is None:
                    raise ModelMismatchError("the mirror holds optimizer state; pass the optimizer")
                i, key = name.split(".", 1)
                p = self._params[int(i)]
                have = self.optimizer.state[p].get(key)
                dt = dtype_from_name(dtype)
                if have is None or list(have.shape) != shape or have.dtype != dt:
                    device = p.device if on_param else torch.device("cpu")
                    self.optimizer.state[p][key] = torch.empty(shape, dtype=dt, device=device)
            elif layer == RNG:
                arr = self._rng.get(name)
                if arr is None or list(arr.shape) != shape:
                    self._rng[name] = np.empty(tuple(shape), np.uint8)

    def load_training_state(self, state: dict[str, Any]) -> None:
        """After the records were decrypted into :meth:`restore_buffers`: staged bytes back
        into their tensors, then the optimizer, scheduler, RNG and extra state."""
        mine = {(r[0], r[1]) for r in self._layout()}
        theirs = {(r[0], r[1]) for r in state["layout"]}
        if mine != theirs:
            odd = sorted(mine ^ theirs)[:3]
            raise ModelMismatchError(f"the mirror's records and this training state differ: {odd}")
        for layer, name, t in self._sources():
            self.staging.write_back(f"{layer}/{name}", t)
        self._load_optimizer(state["optimizer"])
        if self.scheduler is not None:
            if state["scheduler"] is None:
                raise ModelMismatchError("the mirror holds no scheduler state")
            self.scheduler.load_state_dict(decode(state["scheduler"]))
        torch.set_rng_state(torch.from_numpy(self._rng["torch_cpu"]))
        cuda = sorted(k for k in self._rng if k.startswith("cuda:"))
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([torch.from_numpy(self._rng[k]) for k in cuda])
        random.setstate(decode(state["rng"]["python"]))
        np_state = decode(state["rng"]["numpy"])
        np.random.set_state(np_state)
        if self.extra_state is not None:
            self.extra_state.clear()
            self.extra_state.update(decode(state["extra"]) or {})
        self.iteration = int(state["iteration"])

    def _load_optimizer(self, doc: dict[str, Any] | None) -> None:
        if self.optimizer is None:
            return
        if doc is None:
            raise ModelMismatchError("the mirror holds no optimizer state")
        groups = self.optimizer.param_groups
        if len(doc["groups"]) != len(groups):
            raise ModelMismatchError("the mirror's optimizer has another number of param groups")
        at = 0
        for g, saved in zip(groups, doc["groups"], strict=True):
            if saved["params"] != list(range(at, at + len(g["params"]))):
                raise ModelMismatchError("the mirror's optimizer groups hold other parameters")
            at += len(g["params"])
            g.update(decode(saved["hyper"]))
        scalars = doc["scalars"]
        for i, p in enumerate(self._params):
            st = self.optimizer.state[p]
            for k in [k for k, v in st.items() if not isinstance(v, torch.Tensor)]:
                del st[k]
            st.update(decode(scalars.get(str(i), {})))
            if not st:
                del self.optimizer.state[p]
                continue
            # the keys in the order the optimizer made them: state_dict() comes out the same
            ordered = {k: st[k] for k in doc["order"].get(str(i), [])}
            if ordered.keys() != st.keys():
                raise ModelMismatchError(f"the mirror's optimizer state {i} has other keys")
            st.clear()
            st.update(ordered)


def mirror_estimate(state: TorchState, *, moments: int = 2) -> int:
    """Bytes to size a new backend instance for: the model, and room for ``moments`` optimizer
    tensors per parameter (created only at the first step, so not yet measurable)."""
    now = sum(t.numel() * t.element_size() for _, _, t in state._sources())
    guess = state.model_bytes * (1 + (moments if state.optimizer is not None else 0))
    return align_up(max(now, guess), 1 << 20) + (1 << 20)


__all__ = ["KIND", "MODEL", "OPTIM", "RNG", "TorchState", "mirror_estimate", "model_tensors"]
