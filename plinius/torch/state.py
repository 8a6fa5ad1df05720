"""A PyTorch model, optimizer, scheduler and RNGs as one :class:`plinius.core.model.Mirrorable`.

The enclave mirrors it exactly as it mirrors a Darknet network: it seals the arrays
:meth:`TorchState.mirror_buffers` lists (views of the tensors' own storage, so a save copies
nothing and a restore decrypts straight into the model) and puts :meth:`TorchState.training_state`
in the authenticated manifest. Records: layer 0 the model's ``state_dict`` tensors (a tied tensor
once, under its first name), layer 1 the optimizer's per-parameter tensors (``"<index>.<key>"``,
indices as in ``optimizer.state_dict()``), layer 2 the RNG states (torch's, Python's and NumPy's
Mersenne words; mirrors before manifest format 2 kept the last two as JSON), layer 3 the tensors
and arrays of ``extra_state`` (named by their path, ``extra_state.hidden[0]``).

What does not change between mirrors is built once: the description of the model (the
fingerprint's document, the module tree, the torch version: one pre-encoded JSON string in the
manifest) and the record list with its layout rows and array views, rebuilt only when a record's
tensor changes (the optimizer's first step, a new state key, a replaced or resized tensor).
"""

from __future__ import annotations

import array
import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from plinius.core.errors import ConfigError, ModelMismatchError
from plinius.core.memory import align_up
from plinius.core.model import NamedBuffer, check_snapshot_out, packed_offsets, view_at
from plinius.torch.codec import (
    Records,
    decode,
    dtype_from_name,
    dtype_name,
    encode,
    numpy_dtype,
    record_view,
)
from plinius.torch.shards import local
from plinius.torch.staging import Staging

MODEL, OPTIM, RNG, EXTRA = 0, 1, 2, 3
KIND = "torch"
#: in the fingerprint: unchanged, so every earlier mirror still restores
STATE_FORMAT = 1
#: of the manifest: 2 keeps the Python and NumPy RNG states and extra_state's tensors as records
MANIFEST_FORMAT = 2
#: the RNG records' dtypes (torch's states are bytes, the Mersenne Twisters' 32-bit words)
_RNG_DTYPES: dict[str, np.dtype[Any]] = {
    "torch.uint8": np.dtype(np.uint8),
    "torch.uint32": np.dtype(np.uint32),
}
_RNG_NAMES = {dt: name for name, dt in _RNG_DTYPES.items()}
#: an extra_state array's dtype in the layout (tensors give their torch dtype)
_NUMPY_PREFIX = "numpy:"


def _alias_key(t: torch.Tensor) -> tuple[Any, ...]:
    """Same storage, offset, shape and strides: the same tensor (tied weights)."""
    t = local(t)  # a DTensor: its shard's memory
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


@dataclass
class _Record:
    """One record of the current mirror: where its bytes come from and its layout row."""

    layer: int
    name: str
    source: torch.Tensor | np.ndarray
    #: the array sealed from, when it is the source's own memory (else staged at each mirror)
    direct: np.ndarray | None
    row: list[Any]


def _identity(src: torch.Tensor | np.ndarray) -> tuple[Any, ...]:
    """What must stay the same for a cached record to still describe ``src``'s memory."""
    if isinstance(src, torch.Tensor):
        return (id(src), src.data_ptr(), src.shape, src.dtype)
    return (id(src), src.ctypes.data, src.shape, src.dtype)


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
        index = {id(p): i for i, p in enumerate(self._params)}
        #: each param group's parameter indices (the groups' structure: fixed, as the fingerprint)
        self._group_params = [
            [index[id(p)] for p in g["params"]]
            for g in (optimizer.param_groups if optimizer is not None else [])
        ]
        self._doc = self._describe()
        self._fp = self._fingerprint()
        self._doc_json = json.dumps(
            {**self._doc, "modules": self._modules, "torch": torch.__version__},
            separators=(",", ":"),
        )
        self._rng: dict[str, np.ndarray] = {}
        self._rng_scalars: dict[str, Any] = {}  # what the RNG records do not hold
        self._cache: tuple[list[tuple[Any, ...]], list[_Record]] | None = None
        self._taken: list[_Record] | None = None  # collected by training_state for the buffers
        self._extra_into: Records = {}  # where a restore puts extra_state's records
        self._restoring = False  # prepared for a restore, not yet loaded
        self.iteration = 0
        #: torch's intra-op threads of the run the last restored mirror was made by
        self.restored_threads: int | None = None
        #: the torch version of that run (None: not recorded, or nothing restored)
        self.restored_torch: str | None = None

    # --- identity ------------------------------------------------------------------------------

    def _describe(self) -> dict[str, Any]:
        """What the tensors mean: the fingerprint's document (kept, to say what differs)."""
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
        return doc

    def _fingerprint(self) -> bytes:
        raw = json.dumps(self._doc, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(b"plinius-torch-v1" + raw).digest()

    def fingerprint(self) -> bytes:
        return self._fp

    @property
    def model_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for _, t in self._tensors)

    def describe_mismatch(self, state: dict[str, Any]) -> str:
        """What differs, by name, between this training state and the one a mirror's
        (authenticated) manifest describes: tensors missing, extra, renamed, reshaped or
        retyped, tied differently, optimizer or scheduler present, absent or another class,
        module types. Called when the fingerprints differ."""
        theirs = _their_doc(state)
        mine = {**self._doc, "modules": self._modules}
        return "; ".join(_differences(theirs, mine)) or "the fingerprints differ"

    # --- the records ---------------------------------------------------------------------------

    def _sources(self) -> list[tuple[int, str, torch.Tensor]]:
        """Every tensor record of model and optimizer state, in mirror order."""
        out = [(MODEL, n, t) for n, t in self._tensors]
        if self.optimizer is not None:
            state = self.optimizer.state
            for i, p in enumerate(self._params):
                st = state.get(p)
                if st:
                    for k, v in st.items():
                        if isinstance(v, torch.Tensor):
                            out.append((OPTIM, f"{i}.{k}", v))
        return out

    def _extra(self) -> tuple[Any, Records]:
        """``extra_state`` as manifest JSON, and its tensors and arrays (records) by path."""
        records: Records = {}
        if self.extra_state is None:
            return None, records
        return encode(self.extra_state, "extra_state", records), records

    def _record(self, layer: int, name: str, src: torch.Tensor | np.ndarray) -> _Record:
        if isinstance(src, np.ndarray):
            direct = src if src.flags.c_contiguous else None
            row = [layer, name, f"{_NUMPY_PREFIX}{src.dtype.str}", list(src.shape), None]
            return _Record(layer, name, src, direct, row)
        if layer == OPTIM:
            on = src.device == self._params[int(name.split(".")[0])].device
        else:
            on = str(src.device) if layer == EXTRA else False
        arr: np.ndarray | None = None
        if self.staging.direct(src):
            view: np.ndarray = record_view(src).numpy()
            arr = view if view.flags.c_contiguous else None
        return _Record(layer, name, src, arr, [layer, name, dtype_name(src.dtype),
                                               list(src.shape), on])  # fmt: skip

    def _records(self, extra: Records) -> list[_Record]:
        """The tensor records (model, optimizer, extra), from the cache while every source is
        the same tensor over the same memory; rebuilt when one is new, replaced or resized."""
        srcs: list[tuple[int, str, torch.Tensor | np.ndarray]] = list(self._sources())
        srcs += [(EXTRA, n, v) for n, v in extra.items()]
        key = [(layer, name, *_identity(src)) for layer, name, src in srcs]
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, [self._record(*s) for s in srcs])
        return self._cache[1]

    def _rng_fill(self) -> None:
        """The RNG records filled with the current states (torch's, CUDA's, Python's, NumPy's)."""
        now: dict[str, np.ndarray] = {"torch_cpu": torch.get_rng_state().numpy()}
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                now[f"cuda:{i}"] = s.numpy()
        py = random.getstate()
        now["python"] = np.frombuffer(array.array("I", py[1]), np.uint32)
        npst = np.random.get_state(legacy=False)
        now["numpy"] = npst["state"]["key"]
        self._rng_scalars = {
            "python": [py[0], py[2]],
            "numpy": {k: v for k, v in npst.items() if k != "state"}
            | {"pos": int(npst["state"]["pos"])},
        }
        for name, s in now.items():
            arr = self._rng.get(name)
            if arr is None or arr.shape != s.shape or arr.dtype != s.dtype:
                arr = self._rng[name] = np.empty(s.shape, s.dtype)
            arr[...] = s

    def _rng_records(self) -> list[NamedBuffer]:
        return [(RNG, name, self._rng[name]) for name in sorted(self._rng)]

    def _take(self) -> list[_Record]:
        """The records :meth:`training_state` collected for this mirror (or collected now)."""
        taken, self._taken = self._taken, None
        if taken is None:
            self._rng_fill()
            taken = self._records(self._extra()[1])
        return taken

    def _host(self, r: _Record, fill: bool) -> np.ndarray:
        if r.direct is not None:
            return r.direct
        if isinstance(r.source, np.ndarray):
            return np.ascontiguousarray(r.source)
        return self.staging.host_array(f"{r.layer}/{r.name}", r.source, fill=fill)

    def mirror_buffers(self) -> list[NamedBuffer]:
        """Views of every tensor (staged copies where not direct) and the RNG states; between
        :meth:`prepare_restore` and :meth:`load_training_state`, where the restore decrypts to."""
        if self._restoring:
            return [(layer, name, arr) for (layer, name), arr in self.restore_buffers().items()]
        out = [(r.layer, r.name, self._host(r, True)) for r in self._take()]
        return out + self._rng_records()

    def restore_buffers(self) -> dict[tuple[int, str], np.ndarray]:
        """Where a restore decrypts to: the tensors' own memory or their staging buffers."""
        self._cache = None  # the optimizer's tensors may just have been allocated
        into = {(r.layer, r.name): self._host(r, False) for r in self._records(self._extra_into)}
        for layer, name, arr in self._rng_records():
            into[(layer, name)] = arr
        return into

    def _like(self) -> list[tuple[int, str, torch.Tensor | np.ndarray, np.ndarray]]:
        """(layer, name, source, a zero-byte array of the record's dtype and shape)."""
        out: list[tuple[int, str, torch.Tensor | np.ndarray, np.ndarray]] = []
        for r in self._take():
            t = r.source
            dt = t.dtype if isinstance(t, np.ndarray) else numpy_dtype(t.dtype)
            out.append((r.layer, r.name, t, np.broadcast_to(np.empty((), dt), tuple(t.shape))))
        for layer, name, arr in self._rng_records():
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

    def training_state(self) -> dict[str, Any]:
        """Manifest JSON: record layout, optimizer groups and scalars, scheduler, the scalars
        of the RNG states, the user's extra state (its tensors as records); taken together with
        the records the next :meth:`mirror_buffers` or :meth:`snapshot_into` seals."""
        self._restoring = False  # a mirror, not a restore, follows (even after a failed one)
        extra, extra_records = self._extra()
        self._rng_fill()
        records = self._records(extra_records)
        doc: dict[str, Any] = {
            "model_kind": KIND,
            "format": MANIFEST_FORMAT,
            "iteration": self.iteration,
            "aliases": self._aliases,
            "model_doc": self._doc_json,
            "threads": torch.get_num_threads(),
            "rng": self._rng_scalars,
            "extra": extra,
            "scheduler": None,
            "optimizer": None,
        }
        if self.scheduler is not None:
            doc["scheduler"] = encode(self.scheduler.state_dict(), "scheduler state")
        if self.optimizer is not None:
            groups = []
            for g, params in zip(self.optimizer.param_groups, self._group_params, strict=True):
                hyper = {k: v for k, v in g.items() if k != "params"}
                groups.append({"params": params, "hyper": encode(hyper, "group")})
            scalars: dict[str, Any] = {}
            order: dict[str, list[str]] = {}
            state = self.optimizer.state
            for i, p in enumerate(self._params):
                st = state.get(p)
                if not st:
                    continue
                order[str(i)] = list(st)
                rest = {k: v for k, v in st.items() if not isinstance(v, torch.Tensor)}
                if rest:
                    scalars[str(i)] = encode(rest, f"optimizer state {i}")
            doc["optimizer"] = {"groups": groups, "scalars": scalars, "order": order}
        rows = [r.row for r in records]
        rows += [[RNG, n, _RNG_NAMES[a.dtype], list(a.shape), False] for _, n, a in
                 self._rng_records()]  # fmt: skip
        doc["layout"] = rows
        self._taken = records
        return doc

    # --- restore -------------------------------------------------------------------------------

    def prepare_restore(self, state: dict[str, Any]) -> None:
        """Allocate what a mirror of this layout decrypts into: the optimizer's per-parameter
        tensors (PyTorch creates them lazily at the first step), the RNG buffers, and the
        tensors and arrays of ``extra_state`` (its own where one of the same kind, dtype, shape
        and device stands at the same key: restored in place; new ones otherwise)."""
        if state.get("model_kind") != KIND:
            raise ModelMismatchError("the mirror does not hold a PyTorch training state")
        theirs = _their_doc(state).get("modules")  # absent in mirrors made before it was kept
        if self.module_types and theirs is not None and theirs != self._modules:
            odd = _module_differences(theirs, self._modules)
            raise ModelMismatchError(
                f"the mirror was made by a model whose modules differ ({'; '.join(odd[:3])}): "
                "use that model, or pass check_module_types=False for a deliberate code change"
            )
        self._taken = None
        self._cache = None
        self._rng = {}
        self._extra_into = {}
        self._restoring = True
        have = self._extra()[1]
        for layer, name, dtype, shape, where in state["layout"]:
            if layer == OPTIM:
                if self.optimizer is None:
                    raise ModelMismatchError("the mirror holds optimizer state; pass the optimizer")
                i, key = name.split(".", 1)
                self._ensure_optim(self._params[int(i)], key, dtype_from_name(dtype), shape, where)
            elif layer == RNG:
                self._rng[name] = np.empty(tuple(shape), _RNG_DTYPES[dtype])
            elif layer == EXTRA:
                self._extra_into[name] = _extra_destination(have.get(name), dtype, shape, where)

    def _ensure_optim(
        self, p: torch.Tensor, key: str, dt: torch.dtype, shape: list[int], on: bool
    ) -> None:
        """The optimizer's ``key`` tensor of ``p`` as the mirror's layout row says (PyTorch
        creates it lazily at the first step)."""
        assert self.optimizer is not None
        now = self.optimizer.state[p].get(key)
        if now is None or list(now.shape) != shape or now.dtype != dt:
            device = p.device if on else torch.device("cpu")
            self.optimizer.state[p][key] = torch.empty(shape, dtype=dt, device=device)

    def load_training_state(self, state: dict[str, Any]) -> None:
        """After the records were decrypted into :meth:`restore_buffers`: staged bytes back
        into their tensors, then the optimizer, scheduler, RNG and extra state."""
        records = self._records(self._extra_into)
        mine = {(r.layer, r.name) for r in records} | {(RNG, n) for n in self._rng}
        theirs = {(r[0], r[1]) for r in state["layout"]}
        if mine != theirs:
            odd = sorted(mine ^ theirs)[:3]
            raise ModelMismatchError(f"the mirror's records and this training state differ: {odd}")
        for r in records:
            if isinstance(r.source, torch.Tensor):
                self.staging.write_back(f"{r.layer}/{r.name}", r.source)
        self._apply(state)

    def _apply(self, state: dict[str, Any]) -> None:
        """What follows the tensors: optimizer groups and scalars, scheduler, RNGs (from
        ``self._rng``), extra state (its records from ``self._extra_into``), iteration."""
        self._load_optimizer(state["optimizer"])
        if self.scheduler is not None:
            if state["scheduler"] is None:
                raise ModelMismatchError("the mirror holds no scheduler state")
            self.scheduler.load_state_dict(decode(state["scheduler"]))
        torch.set_rng_state(torch.from_numpy(self._rng["torch_cpu"]))
        cuda = sorted(k for k in self._rng if k.startswith("cuda:"))
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([torch.from_numpy(self._rng[k]) for k in cuda])
        self._load_rng(state["rng"])
        if self.extra_state is not None:
            extra = decode(state["extra"], self._extra_into) or {}
            self.extra_state.clear()
            self.extra_state.update(extra)
        self._extra_into = {}
        self._cache = None
        self._restoring = False
        self.iteration = int(state["iteration"])
        self.restored_threads = state.get("threads")
        self.restored_torch = _their_doc(state).get("torch")

    def _load_rng(self, doc: dict[str, Any]) -> None:
        """Python's and NumPy's RNGs: words from the records (format 2) or all from JSON."""
        if "python" not in self._rng:  # a mirror of manifest format 1
            random.setstate(decode(doc["python"]))
            np.random.set_state(decode(doc["numpy"]))
            return
        version, gauss = doc["python"]
        random.setstate((version, tuple(self._rng["python"].tolist()), gauss))
        npst = dict(doc["numpy"])
        npst["state"] = {"key": self._rng["numpy"].copy(), "pos": npst.pop("pos")}
        np.random.set_state(npst)

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


def _extra_destination(
    have: torch.Tensor | np.ndarray | None, dtype: str, shape: list[int], device: str | None
) -> torch.Tensor | np.ndarray:
    """The object an extra_state record is restored into: ``have`` when it is of the same
    kind, dtype, shape (and device), else a new one."""
    if dtype.startswith(_NUMPY_PREFIX):
        dt = np.dtype(dtype.removeprefix(_NUMPY_PREFIX))
        if (
            isinstance(have, np.ndarray)
            and have.dtype == dt
            and list(have.shape) == shape
            and have.flags.c_contiguous
            and have.flags.writeable
        ):
            return have
        return np.empty(tuple(shape), dt)
    tdt = dtype_from_name(dtype)
    if (
        isinstance(have, torch.Tensor)
        and have.dtype == tdt
        and list(have.shape) == shape
        and str(have.device) == device
        and 0 not in have.stride()[: have.dim()]  # expanded: many elements, one place
    ):
        return have
    try:
        return torch.empty(shape, dtype=tdt, device=device)
    except RuntimeError as exc:
        raise ConfigError(f"an extra_state tensor on {device} cannot be restored: {exc}") from None


# --- what differs ------------------------------------------------------------------------------


def _their_doc(state: dict[str, Any]) -> dict[str, Any]:
    """The description a mirror's manifest holds; for mirrors made before it was kept, what
    their layout, aliases and module list still say."""
    if isinstance(state.get("model_doc"), str):
        doc: dict[str, Any] = json.loads(state["model_doc"])
        return doc
    rows = {r[1]: [list(r[3]), r[2]] for r in state.get("layout", []) if r[0] == MODEL}
    aliases = state.get("aliases", {})
    tensors = [[n, *v] for n, v in rows.items()]
    tensors += [[a, *rows[f]] for a, f in aliases.items() if f in rows]
    opt = state.get("optimizer")
    return {
        "tensors": tensors,
        "tied": sorted(aliases.items()),
        "optimizer": None if opt is None else {
            "class": None, "groups": [len(g["params"]) for g in opt["groups"]], "params": None
        },
        "scheduler": None if state.get("scheduler") is None else "a scheduler",
        "modules": state.get("modules"),
    }  # fmt: skip


def _names(names: list[str], most: int = 4) -> str:
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def _module_differences(theirs: list[list[str]], mine: list[list[str]]) -> list[str]:
    a: dict[str, str] = {n: c for n, c in theirs}
    b: dict[str, str] = {n: c for n, c in mine}
    return [f"{n or '(root)'}: {a.get(n, 'none')} -> {b.get(n, 'none')}"
            for n in sorted(set(a) | set(b)) if a.get(n) != b.get(n)]  # fmt: skip


def _differences(theirs: dict[str, Any], mine: dict[str, Any]) -> list[str]:
    """Each difference as a phrase, mirror's side first: ``what: mirror -> this run``."""
    out: list[str] = []
    a = {n: (s, d) for n, s, d in theirs["tensors"]}
    b = {n: (s, d) for n, s, d in mine["tensors"]}
    gone, new = [n for n in a if n not in b], [n for n in b if n not in a]
    renamed = []
    for n in list(gone):
        twin = next((m for m in new if b[m] == a[n]), None)
        if twin is not None and len(gone) == len(new):
            renamed.append(f"{n} -> {twin}")
            new.remove(twin)
            gone.remove(n)
    if renamed:
        out.append(f"tensors renamed: {_names(renamed)}")
    if gone:
        out.append(f"tensors in the mirror, not in this model: {_names(gone)}")
    if new:
        out.append(f"tensors in this model, not in the mirror: {_names(new)}")
    for n in a.keys() & b.keys():
        (s0, d0), (s1, d1) = a[n], b[n]
        if s0 != s1:
            out.append(f"{n} shape {s0} -> {s1}")
        if d0 != d1:
            out.append(f"{n} dtype {d0.removeprefix('torch.')} -> {d1.removeprefix('torch.')}")
    if theirs.get("tied") is not None and [list(t) for t in theirs["tied"]] != [
        list(t) for t in mine["tied"]
    ]:
        out.append(f"tied weights {dict(theirs['tied'])} -> {dict(mine['tied'])}")
    o0, o1 = theirs.get("optimizer"), mine.get("optimizer")
    if o0 is not None and o1 is None:
        out.append(f"optimizer {o0['class'] or '(one)'} -> none: pass the optimizer")
    elif o0 is None and o1 is not None:
        out.append(f"optimizer none -> {o1['class']}: the mirror holds no optimizer state")
    elif o0 is not None and o1 is not None:
        if o0["class"] is not None and o0["class"] != o1["class"]:
            out.append(f"optimizer {o0['class']} -> {o1['class']}")
        if o0["groups"] != o1["groups"]:
            out.append(f"optimizer param groups (sizes) {o0['groups']} -> {o1['groups']}")
        elif o0["params"] is not None and o0["params"] != o1["params"]:
            out.append("the optimizer's parameters (shapes or dtypes) differ")
    s0, s1 = theirs.get("scheduler"), mine.get("scheduler")
    if s0 != s1 and not (s0 == "a scheduler" and s1 is not None):
        out.append(f"scheduler {s0 or 'none'} -> {s1 or 'none'}")
    if theirs.get("modules") is not None and theirs["modules"] != mine["modules"]:
        odd = _module_differences(theirs["modules"], mine["modules"])
        if odd:
            out.append(f"modules {_names(odd, 3)}")
    return out


def mirror_estimate(state: TorchState, *, moments: int = 2) -> int:
    """Bytes to size a new backend instance for: the model, and room for ``moments`` optimizer
    tensors per parameter (created only at the first step, so not yet measurable)."""
    now = sum(t.numel() * t.element_size() for _, _, t in state._sources())
    now += sum(int(v.nbytes) for v in state._extra()[1].values())  # extra_state's records
    guess = state.model_bytes * (1 + (moments if state.optimizer is not None else 0))
    return align_up(max(now, guess), 1 << 20) + (1 << 20)


__all__ = [
    "EXTRA",
    "KIND",
    "MODEL",
    "OPTIM",
    "RNG",
    "TorchState",
    "mirror_estimate",
    "model_tensors",
]
