"""What users pick instead of plinius, saving and restoring the same tensors in the same run.

The ``peers`` section times, on each directory it is given (tmpfs, the ``ssd`` directory), what
a user writes without plinius, each kind plain and sealed by hand:

* ``numpy.save``: every array in turn into one file with :func:`numpy.save` (the names first,
  as an array of strings), restored with :func:`numpy.load` (which allocates every array);
* ``pickle``: the dict of arrays with :func:`pickle.dump` (protocol 5), :func:`pickle.load`;
* ``safetensors-np``: ``safetensors.numpy.save_file`` and a restore *materialised into the
  existing arrays* (``safe_open(framework="np")`` + :func:`numpy.copyto`): a lazy mmap that
  reads nothing is no restore;
* each of them ``+aes-gcm+fsync``: serialized to memory, sealed as one AES-GCM record with the
  run's engine into a reused page-aligned buffer, written, the file and its directory fsynced;
  the restore reads, opens into the same buffer and deserializes.

These need numpy alone (``safetensors-np`` also safetensors, a dependency of plinius). Where torch
is installed (the ``bench`` extra), the torch peers run beside them:

* ``torch.save`` / ``torch.load(weights_only=True)`` of a dict of CPU tensors (``torch.load``
  materialises every tensor);
* ``safetensors`` (``safetensors.torch.save_file``, the faster writer here) and a restore
  materialised into the existing arrays. Both copies are timed, ``numpy.copyto`` (op
  ``restore``) and ``torch.Tensor.copy_`` (op ``restore_copy_``), so the report can rank against
  the faster;
* ``torch.save+aes-gcm``: ``torch.save`` to ``BytesIO``, sealed, written, fsynced; the restore
  reads, opens, ``torch.load``.

The plain numpy, pickle and safetensors-np peers do not fsync; ``torch.save``, ``safetensors``
and every sealed peer fsync the file and its directory on each save. Each peer's facts state
its durability as the file backends do (RAM-backed: process-crash; on the disk: power-fail with
fsync, process-crash without), and that every peer overwrites its file in place: a crash in
the middle of a save leaves a torn file, not the previous checkpoint.

Where ``posix_fadvise(DONTNEED)`` really evicts files of a directory (checked with
``mincore``; never on tmpfs), each contender also has a ``restore_cold`` op that drops the file
from the page cache (untimed) before restoring: a restarted spot VM has no page cache.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import io
import mmap
import os
import pickle
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from plinius.backends.fsinfo import mount_label, mount_of
from plinius.core.crypto import OVERHEAD, Engine
from plinius.core.errors import BackendError, IntegrityError, MissingExtraError
from plinius.core.fsutil import fsync_dir
from plinius.core.memory import StagingBuffer, aligned_empty
from plinius.lab.bench.contenders import Contender, timed

SECTION = "peers"
INSTALL_HINT = "pip install 'plinius[bench]'"
#: safetensors is a dependency of plinius itself: missing only after ``pip install --no-deps``
SAFETENSORS_HINT = "pip install 'safetensors>=0.4' (a dependency of plinius)"
#: a cold restore must find at most this fraction of its file still in the page cache
MAX_RESIDENT_COLD = 0.02
#: pickle protocol of the pickle peers (5: arrays pickled in-band without an extra copy)
PICKLE_PROTOCOL = 5

#: every peer, in the order :func:`peer_contenders` builds them on each directory
KINDS = (
    "numpy.save",
    "numpy.save+aes-gcm+fsync",
    "pickle",
    "pickle+aes-gcm+fsync",
    "safetensors-np",
    "safetensors-np+aes-gcm+fsync",
    "torch.save",
    "safetensors",
    "torch.save+aes-gcm",
)
_TORCH = (("torch",), INSTALL_HINT)
_SAFETENSORS_NP = (("safetensors", "safetensors.numpy"), SAFETENSORS_HINT)
#: what a kind imports beyond numpy and the standard library, and how to install it
NEEDS: dict[str, tuple[tuple[str, ...], str]] = {
    "safetensors-np": _SAFETENSORS_NP,
    "safetensors-np+aes-gcm+fsync": _SAFETENSORS_NP,
    "torch.save": _TORCH,
    "safetensors": (("torch", "safetensors", "safetensors.torch"), INSTALL_HINT),
    "torch.save+aes-gcm": _TORCH,
}

Arrays = list[tuple[str, np.ndarray]]


def peer_unavailable(kind: str) -> str | None:
    """None when peer ``kind`` can run here, else why not (with the fix)."""
    if kind not in KINDS:
        raise ValueError(f"no peer {kind!r}; peers: {', '.join(KINDS)}")
    modules, hint = NEEDS.get(kind, ((), ""))
    missing = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            missing.append(f"{module} ({exc})")
    if missing:
        return f"not run: {'; '.join(missing)} not importable; {hint}"
    return None


def available_kinds() -> list[str]:
    """The peers that can run here, in :data:`KINDS` order (numpy and pickle always can)."""
    return [k for k in KINDS if peer_unavailable(k) is None]


def not_here() -> dict[str, str]:
    """Every peer that cannot run here: kind -> why not (with the fix)."""
    return {k: why for k in KINDS if (why := peer_unavailable(k)) is not None}


def peers_unavailable() -> str | None:
    """None when some peer can run here (numpy and pickle need nothing more: always), else why
    none can."""
    missing = not_here()
    if len(missing) < len(KINDS):
        return None
    return "not run: " + "; ".join(f"{k}: {why}" for k, why in missing.items())


# --- page cache: eviction and residency -------------------------------------------------------

_libc: Any = None


def _c() -> Any:
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_long,
        ]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
        _libc = libc
    return _libc


def resident_fraction(path: Path) -> float:
    """Fraction of ``path``'s pages in the page cache (``mincore`` over a shared mapping)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return 0.0
        libc = _c()
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
        try:
            pages = -(-size // mmap.PAGESIZE)
            vec = ctypes.create_string_buffer(pages)
            if libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore of {path} failed")
            return sum(b & 1 for b in vec.raw[:pages]) / pages
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)


def drop_cache(path: Path) -> float:
    """Evict ``path`` from the page cache; return the fraction still resident afterwards."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # DONTNEED leaves dirty pages behind
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return resident_fraction(path)


def cold_restore_check(directory: Path) -> str | None:
    """None when files in ``directory`` can be evicted from the page cache, else why not."""
    if not hasattr(os, "posix_fadvise"):
        return "no posix_fadvise on this platform"
    probe = directory / f".plinius-cold-probe-{os.getpid()}"
    try:
        probe.write_bytes(os.urandom(64 * mmap.PAGESIZE))
        left = drop_cache(probe)
    except OSError as exc:
        return f"cache drop failed: {exc}"
    finally:
        probe.unlink(missing_ok=True)
    if left > MAX_RESIDENT_COLD:
        return f"posix_fadvise(DONTNEED) left {left:.0%} of a file resident (page-cache-backed fs)"
    return None


# --- the contenders ---------------------------------------------------------------------------


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: what a restore gives: new arrays or tensors (name -> array or tensor), or None when it copied
#: into the existing arrays it was given
Loaded = dict[str, Any] | None


class _Serializer:
    """How one library writes the state to a file and reads it back (a plain peer is its
    serializer), and to bytes in memory and back (what :class:`_Sealed` seals: a sealed peer is
    the same serializer wrapped).

    A restore returns new arrays or tensors; a serializer that ``fills_dest`` copies into the
    existing arrays ``dest`` instead and returns None.
    """

    #: the plain peer fsyncs the file and its directory after every save
    fsync = False
    #: restores copy into ``dest`` (shared by the peers that do: they run in turn)
    fills_dest = False
    #: the plain peer's facts: how it saves and how it restores
    how_save = ""
    how_restore = ""
    #: how :meth:`dumps` and :meth:`loads` work, for the sealed peer's facts ("" without one)
    how_dumps = ""
    how_loads = ""

    def __init__(self, arrays: Arrays, dest: Arrays) -> None:
        self.arrays = arrays
        self.state = dict(arrays)  # what a user hands the serializer: name -> array
        self.dest = dest if self.fills_dest else None

    def write(self, path: Path) -> None:
        raise NotImplementedError

    def restore(self, path: Path) -> Loaded:
        raise NotImplementedError

    def dumps(self) -> bytes | memoryview:
        raise NotImplementedError

    def loads(self, plain: memoryview) -> Loaded:
        raise NotImplementedError

    def save(self, path: Path) -> None:
        self.write(path)
        if self.fsync:
            _fsync_file(path)
            fsync_dir(path.parent)

    def how(self) -> dict[str, str]:
        """The facts of how it saves and restores (op -> how)."""
        return {"save": self.how_save, "restore": self.how_restore}

    def restores(self, path: Path) -> dict[str, Callable[[], Loaded]]:
        """Restores of ``path`` besides ``restore`` (op -> function)."""
        return {}

    def close(self) -> None:
        """Nothing held."""


class _Sealed:
    """A serializer sealed by hand, as a user without plinius writes it: the serialized bytes
    sealed as one AES-GCM record with the run's engine, written, the file and its directory
    fsynced; the restore reads the file, opens it and deserializes. The sealed output on save
    and the opened plaintext on restore go to one reused page-aligned buffer (as plinius reuses
    its own: generous to the peer), shared by the sealed peers, which run in turn."""

    aad = b"plinius peers: serialized + AES-GCM"
    fsync = True

    def __init__(self, inner: _Serializer, engine: Engine, staging: StagingBuffer) -> None:
        if not inner.how_dumps:
            raise ValueError(f"{type(inner).__name__} serializes to no bytes: nothing to seal")
        self.inner = inner
        self.engine = engine
        self.staging = staging
        self.dest = inner.dest

    def save(self, path: Path) -> None:
        view = memoryview(self.inner.dumps())
        out = self.staging.view(view.nbytes + OVERHEAD)
        self.engine.encrypt_into(self.aad, view, out)
        with open(path, "wb") as f:
            f.write(out)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(path.parent)

    def restore(self, path: Path) -> Loaded:
        """Deserialized from the opened plaintext: a view of the shared buffer, valid until the
        next peer runs (authenticated before anything reads it)."""
        with open(path, "rb") as f:
            sealed = f.read()
        if len(sealed) < OVERHEAD:
            raise IntegrityError(str(path), "sealed file shorter than its IV and tag")
        plain = self.staging.view(len(sealed) - OVERHEAD)
        self.engine.decrypt_into(self.aad, sealed, plain, str(path))
        return self.inner.loads(plain)

    def how(self) -> dict[str, str]:
        return {
            "save": f"{self.inner.how_dumps}, one encrypt_into, write, fsync",
            "restore": f"read, decrypt_into, {self.inner.how_loads}",
            "engine": self.engine.name,
        }

    def restores(self, path: Path) -> dict[str, Callable[[], Loaded]]:
        return {}

    def close(self) -> None:
        self.staging.close()  # safe while another contender still runs: it maps anew


class _Peer:
    """One peer on one directory: ``save``, ``restore``, ``restore_cold`` and its checks; how it
    writes and reads is its ``codec``, a serializer (plain) or one :class:`_Sealed`.

    A restore either returns new arrays (``self.loaded``, name -> array or tensor) or copies
    into the existing arrays ``dest``. With ``verify`` every restore is checked exact against
    the source arrays (untimed); ``dest`` is zeroed before (untimed), so a restore that copies
    nothing fails the check.
    """

    def __init__(
        self, codec: _Serializer | _Sealed, arrays: Arrays, path: Path, cold: bool, verify: bool
    ) -> None:
        self.codec = codec
        self.arrays = arrays
        self.path = path
        self.cold = cold
        self.verify = verify
        self.dest = codec.dest
        self.loaded: Loaded = None
        self.facts: dict[str, Any] = {}  # the contender's facts: the cold check adds to them

    def save(self) -> None:
        self.codec.save(self.path)

    def restore(self) -> None:
        self.loaded = self.codec.restore(self.path)

    def restores(self) -> dict[str, Callable[[], object]]:
        """The warm restore operations (op -> function)."""
        return {"restore": self.restore, **self.codec.restores(self.path)}

    def check(self, got: dict[str, Any]) -> None:
        """Raise unless ``got`` (name -> array or tensor) holds exactly the source arrays."""
        if len(got) != len(self.arrays) or set(got) != {name for name, _ in self.arrays}:
            raise IntegrityError(str(self.path), "restored tensor names differ from the saved")
        for name, a in self.arrays:
            b = got[name]
            b = b.numpy() if hasattr(b, "numpy") else np.asarray(b)
            if b.dtype != a.dtype or b.shape != a.shape or not np.array_equal(a, b):
                raise IntegrityError(str(self.path), f"restored {name} differs from the saved")

    def run(self, op: str) -> float:
        if op == "save":
            return timed(self.save)
        if op == "restore_cold":
            if not self.cold:
                raise ValueError(f"no cold restore on {self.path.parent}")
            left = drop_cache(self.path)
            worst = max(float(self.facts.get("cold_resident_max", 0.0)), left)
            self.facts["cold_resident_max"] = worst
            if left > MAX_RESIDENT_COLD:
                raise BackendError(
                    f"cache drop left {left:.0%} of {self.path} resident: not a cold restore"
                )
            op = "restore"
        return self.run_restore(op)

    def run_restore(self, op: str) -> float:
        fn = self.restores().get(op)
        if fn is None:
            raise ValueError(f"unknown op {op!r}")
        self.loaded = None  # free the previous restore outside the timing
        if self.verify and self.dest is not None:
            for _, d in self.dest:
                d.fill(0)
        secs = timed(fn)
        if self.verify:
            got = dict(self.dest) if self.dest is not None else self.loaded
            if got is None:
                raise IntegrityError(str(self.path), "the restore returned nothing")
            self.check(got)
        # a user keeps the state; freeing it is not part of the restore, holding it until the
        # next round would hold one copy per contender
        self.loaded = None
        return secs

    def close(self) -> None:
        self.path.unlink(missing_ok=True)
        self.codec.close()


# numpy.save ---------------------------------------------------------------------------------


class _NumpySave(_Serializer):
    """Every array in turn into one file with ``numpy.save`` (the names first, as an array of
    strings); ``numpy.load`` in turn, which allocates every array. No fsync."""

    how_save = "numpy.save of each array in turn into one file, names first"
    how_restore = "numpy.load of each in turn (new arrays)"
    how_dumps = "numpy.save of each array to BytesIO"
    how_loads = "numpy.load(BytesIO) of each (new arrays)"

    def __init__(self, arrays: Arrays, dest: Arrays) -> None:
        super().__init__(arrays, dest)
        self.names = np.array([name for name, _ in arrays])

    def dump(self, f: BinaryIO) -> None:
        np.save(f, self.names, allow_pickle=False)
        for _, a in self.arrays:
            np.save(f, a, allow_pickle=False)

    @staticmethod
    def load(f: BinaryIO) -> dict[str, np.ndarray]:
        names = np.load(f, allow_pickle=False)
        return {str(name): np.load(f, allow_pickle=False) for name in names}

    def write(self, path: Path) -> None:
        with open(path, "wb") as f:
            self.dump(f)

    def restore(self, path: Path) -> Loaded:
        with open(path, "rb") as f:
            return self.load(f)

    def dumps(self) -> memoryview:
        buf = io.BytesIO()
        self.dump(buf)
        return buf.getbuffer()

    def loads(self, plain: memoryview) -> Loaded:
        return self.load(io.BytesIO(plain))


# pickle -------------------------------------------------------------------------------------


class _Pickle(_Serializer):
    """``pickle.dump`` of the dict of arrays (protocol 5), ``pickle.load``. No fsync. (A pickle
    runs code from the file it loads: this peer trusts the storage; arrays pickled in-band are
    copied out of what ``pickle.loads`` reads: nothing keeps a view of it.)"""

    how_save = f"pickle.dump of the dict of arrays (protocol {PICKLE_PROTOCOL})"
    how_restore = "pickle.load (new arrays; trusts the file: a pickle runs code)"
    how_dumps = f"pickle.dumps (protocol {PICKLE_PROTOCOL})"
    how_loads = "pickle.loads (new arrays)"

    def write(self, path: Path) -> None:
        with open(path, "wb") as f:
            pickle.dump(self.state, f, protocol=PICKLE_PROTOCOL)

    def restore(self, path: Path) -> Loaded:
        with open(path, "rb") as f:
            return pickle.load(f)  # our own file, just written

    def dumps(self) -> bytes:
        return pickle.dumps(self.state, protocol=PICKLE_PROTOCOL)

    def loads(self, plain: memoryview) -> Loaded:
        return pickle.loads(plain)  # authenticated first


# safetensors through numpy ------------------------------------------------------------------


class _SafetensorsNp(_Serializer):
    """``safetensors.numpy.save_file`` (no fsync); ``safe_open(framework="np")`` and
    ``numpy.copyto`` into the existing arrays. In memory ``safetensors.numpy.save`` (bytes) and
    ``safetensors.numpy.load`` (it takes ``bytes``)."""

    fills_dest = True
    how_save = "safetensors.numpy.save_file"
    how_restore = "safe_open(framework='np') + numpy.copyto into existing arrays"
    how_dumps = "safetensors.numpy.save (bytes)"
    how_loads = "safetensors.numpy.load(bytes) + numpy.copyto into existing arrays"

    def __init__(self, arrays: Arrays, dest: Arrays) -> None:
        super().__init__(arrays, dest)
        import safetensors
        import safetensors.numpy

        self.st = safetensors
        self.stnp = safetensors.numpy

    def write(self, path: Path) -> None:
        self.stnp.save_file(self.state, str(path))

    def restore(self, path: Path) -> Loaded:
        assert self.dest is not None
        with self.st.safe_open(str(path), framework="np") as f:
            for name, d in self.dest:
                np.copyto(d, f.get_tensor(name))
        return None

    def dumps(self) -> bytes:
        return self.stnp.save(self.state)

    def loads(self, plain: memoryview) -> Loaded:
        assert self.dest is not None
        got = self.stnp.load(bytes(plain))
        for name, d in self.dest:
            np.copyto(d, got[name])
        return None


# torch (the bench extra) --------------------------------------------------------------------


class _TorchSerializer(_Serializer):
    """A serializer that hands torch the arrays as CPU tensors (sharing their memory)."""

    def __init__(self, arrays: Arrays, dest: Arrays) -> None:
        super().__init__(arrays, dest)
        import torch

        self.torch = torch
        self.tensors = {name: torch.from_numpy(a) for name, a in arrays}


class _TorchSave(_TorchSerializer):
    """``torch.save`` to the file, fsynced, and ``torch.load``, which materialises every
    tensor; in memory ``torch.save`` to and ``torch.load`` from ``BytesIO``."""

    fsync = True
    how_save = "torch.save to the file, fsync"
    how_restore = "torch.load(weights_only=True, mmap=False)"
    how_dumps = "torch.save to BytesIO"
    how_loads = "torch.load(BytesIO)"

    def write(self, path: Path) -> None:
        with open(path, "wb") as f:
            self.torch.save(self.tensors, f)

    def restore(self, path: Path) -> Loaded:
        return self.torch.load(path, weights_only=True, mmap=False)

    def dumps(self) -> memoryview:
        buf = io.BytesIO()
        self.torch.save(self.tensors, buf)
        return buf.getbuffer()

    def loads(self, plain: memoryview) -> Loaded:
        return self.torch.load(io.BytesIO(plain), weights_only=True)


class _Safetensors(_TorchSerializer):
    """``safetensors`` save, fsynced, and restores that copy into existing arrays (two copy
    flavours)."""

    fsync = True
    fills_dest = True
    how_save = "safetensors.torch.save_file (faster here than safetensors.numpy), fsync"
    how_restore = "safe_open(framework='pt') + numpy.copyto into existing arrays"

    def __init__(self, arrays: Arrays, dest: Arrays) -> None:
        super().__init__(arrays, dest)
        import safetensors.torch

        self.st = safetensors
        self.save_file = safetensors.torch.save_file
        self.dest_t = [(name, self.torch.from_numpy(d)) for name, d in dest]

    def write(self, path: Path) -> None:
        self.save_file(self.tensors, str(path))

    def restore(self, path: Path) -> Loaded:
        """``numpy.copyto`` from the zero-copy tensors ``safe_open`` hands out."""
        assert self.dest is not None
        with self.st.safe_open(str(path), framework="pt") as f:
            for name, d in self.dest:
                np.copyto(d, f.get_tensor(name).numpy())
        return None

    def restore_copy_(self, path: Path) -> Loaded:
        with self.st.safe_open(str(path), framework="pt") as f:
            for name, t in self.dest_t:
                t.copy_(f.get_tensor(name))
        return None

    def how(self) -> dict[str, str]:
        copy_ = "safe_open(framework='pt') + torch.Tensor.copy_ into existing tensors"
        return {**super().how(), "restore_copy_": copy_}

    def restores(self, path: Path) -> dict[str, Callable[[], Loaded]]:
        return {"restore_copy_": partial(self.restore_copy_, path)}


# --- building them ----------------------------------------------------------------------------


def _zeroed_like(arrays: Arrays) -> Arrays:
    """Page-aligned zeroed arrays shaped like ``arrays`` (touched now, not in a timed restore)."""
    out = []
    for name, a in arrays:
        d = aligned_empty(a.nbytes).view(a.dtype).reshape(a.shape)
        d.fill(0)
        out.append((name, d))
    return out


def _versions(kind: str) -> dict[str, Any]:
    """The versions of what ``kind`` runs on."""
    out: dict[str, Any] = {"numpy": np.__version__}
    modules = NEEDS.get(kind, ((), ""))[0]
    if "safetensors" in modules:
        import safetensors

        out["safetensors"] = safetensors.__version__
    if "torch" in modules:
        import torch

        out["torch"] = torch.__version__
        out["torch_threads"] = torch.get_num_threads()
    if kind.startswith("pickle"):
        out["pickle_protocol"] = PICKLE_PROTOCOL
    return out


def durability(directory: Path, fsync: bool) -> tuple[str, str]:
    """``(level, why)`` of a completed save in ``directory``, by the file backends' rule: on a
    RAM-backed mount process-crash; on the disk power-fail with fsync, process-crash without."""
    m = mount_of(directory)
    if m.volatile:
        note = f"{m.fs_type} is RAM-backed: a saved file survives a process crash, not a reboot"
        return "process-crash", note + (" (fsync cannot change that)" if fsync else "")
    if fsync:
        return "power-fail", "fsync of the file and its directory on every save"
    return (
        "process-crash",
        "no fsync: a saved file survives a process crash, not a power failure before the "
        "kernel writes it back",
    )


#: every peer truncates and rewrites its one file
IN_PLACE = (
    "overwrites its file in place: a crash in the middle of a save leaves a torn file, not the "
    "previous checkpoint"
)


#: each kind's serializer: the kinds with ``aes-gcm`` in their name seal it (:class:`_Sealed`)
SERIALIZERS: dict[str, type[_Serializer]] = {
    "numpy.save": _NumpySave,
    "numpy.save+aes-gcm+fsync": _NumpySave,
    "pickle": _Pickle,
    "pickle+aes-gcm+fsync": _Pickle,
    "safetensors-np": _SafetensorsNp,
    "safetensors-np+aes-gcm+fsync": _SafetensorsNp,
    "torch.save": _TorchSave,
    "safetensors": _Safetensors,
    "torch.save+aes-gcm": _TorchSave,
}


def _build(
    kind: str,
    arrays: Arrays,
    path: Path,
    cold: bool,
    verify: bool,
    engine: Engine,
    staging: StagingBuffer,
    dest: Arrays,
) -> _Peer:
    """The peer ``kind`` writing ``path``: its serializer, sealed when ``kind`` says so."""
    if kind not in SERIALIZERS:
        raise ValueError(f"no peer {kind!r}")
    serializer = SERIALIZERS[kind](arrays, dest)
    codec = _Sealed(serializer, engine, staging) if "aes-gcm" in kind else serializer
    return _Peer(codec, arrays, path, cold, verify)


#: the file each kind writes, after the stem
SUFFIX = {
    "numpy.save": ".npy",
    "numpy.save+aes-gcm+fsync": ".npy.aes",
    "pickle": ".pkl",
    "pickle+aes-gcm+fsync": ".pkl.aes",
    "safetensors-np": ".np.safetensors",
    "safetensors-np+aes-gcm+fsync": ".np.safetensors.aes",
    "torch.save": ".pt",
    "safetensors": ".safetensors",
    "torch.save+aes-gcm": ".pt.aes",
}


def peer_contenders(
    arrays: Arrays,
    workload: str,
    dirs: dict[str, Path],
    engine: Engine,
    *,
    verify: bool = False,
    kinds: tuple[str, ...] | None = None,
) -> list[Contender]:
    """Every peer that can run here (:func:`available_kinds`; or those of ``kinds``) on each
    of ``dirs`` (label -> directory), in :data:`KINDS` order per directory; id ``kind@label``.

    A peer whose dependency is missing is left out; every contender's facts name those
    (``not_here``: kind -> why not, with the fix). Raises :class:`MissingExtraError` when a
    peer asked for in ``kinds`` cannot run here. ``verify`` checks every restore against
    ``arrays`` (untimed; tests). Files are created in the given directories and removed by each
    contender's ``close``.
    """
    missing = not_here()
    if kinds is None:
        chosen = [k for k in KINDS if k not in missing]
    else:
        unknown = [k for k in kinds if k not in KINDS]
        if unknown:
            raise ValueError(f"no peer {', '.join(unknown)}; peers: {', '.join(KINDS)}")
        gone = [f"{k}: {missing[k]}" for k in kinds if k in missing]
        if gone:
            raise MissingExtraError("; ".join(gone))
        chosen = [k for k in KINDS if k in kinds]
    nbytes = sum(a.nbytes for _, a in arrays)
    dest = _zeroed_like(arrays) if any("safetensors" in k for k in chosen) else []
    staging = StagingBuffer()
    out: list[Contender] = []
    try:
        for label, directory in dirs.items():
            directory = Path(directory)
            if not directory.is_dir():
                raise BackendError(f"peers directory {directory} ({label}) does not exist")
            no_cold = cold_restore_check(directory)
            where = {
                "dir": str(directory),
                "fs": mount_label(mount_of(directory)),
                "cold_restore": no_cold or "page cache dropped with posix_fadvise, mincore-checked",
                "crash_mid_save": IN_PLACE,
            }
            stem = f"plinius-peer-{os.getpid()}-{workload.replace(os.sep, '_')}"
            for kind in chosen:
                path = directory / f"{stem}{SUFFIX[kind]}"
                peer = _build(kind, arrays, path, not no_cold, verify, engine, staging, dest)
                fsyncs = peer.codec.fsync
                level, why = durability(directory, fsyncs)
                ops = ["save", *peer.restores()]
                if peer.cold:
                    ops.append("restore_cold")
                peer.facts = {
                    **_versions(kind),
                    **where,
                    **peer.codec.how(),
                    "fsync": fsyncs,
                    "durability": level,
                    "durability_note": why,
                    "label": label,
                }
                if missing:
                    peer.facts["not_here"] = dict(missing)
                out.append(
                    Contender(
                        section=SECTION,
                        name=f"{kind} ({label})",
                        workload=workload,
                        nbytes=nbytes,
                        ops=tuple(ops),
                        run=peer.run,
                        close=peer.close,
                        facts=peer.facts,
                        id=f"{kind}@{label}",
                    )
                )
    except BaseException:
        for c in out:
            c.close()
        staging.close()
        raise
    return out
