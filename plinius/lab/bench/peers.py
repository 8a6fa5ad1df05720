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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from plinius.backends.fsinfo import mount_label, mount_of
from plinius.core.crypto import OVERHEAD, Engine
from plinius.core.errors import BackendError, IntegrityError, MissingExtraError
from plinius.core.fsutil import fsync_dir
from plinius.core.memory import StagingBuffer, aligned_empty
from plinius.lab.bench.contenders import Contender

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


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Peer:
    """One peer on one directory: ``save``, ``restore``, ``restore_cold`` and its checks.

    A restore either returns new arrays (``self.loaded``, name -> array or tensor) or, for the
    peers given ``dest``, copies into those existing arrays. With ``verify`` every restore is
    checked exact against the source arrays (untimed); ``dest`` is zeroed before (untimed), so
    a restore that copies nothing fails the check.
    """

    def __init__(
        self, arrays: Arrays, path: Path, cold: bool, verify: bool, dest: Arrays | None = None
    ) -> None:
        self.arrays = arrays
        self.state = dict(arrays)  # what a user hands the serializer: name -> array
        self.path = path
        self.cold = cold
        self.verify = verify
        self.dest = dest  # shared by the peers that copy into it: they run in turn
        self.loaded: dict[str, Any] | None = None
        self.facts: dict[str, Any] = {}  # the contender's facts: the cold check adds to them

    def save(self) -> None:
        raise NotImplementedError

    def restore(self) -> None:
        raise NotImplementedError

    def restores(self) -> dict[str, Callable[[], None]]:
        """The warm restore operations (op -> function)."""
        return {"restore": self.restore}

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
            return _timed(self.save)
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
        secs = _timed(fn)
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


class _Sealed(_Peer):
    """By hand, as a user without plinius writes it: the serialized bytes sealed as one AES-GCM
    record with the run's engine, written, the file and its directory fsynced; the restore reads
    the file and opens it. The sealed output on save and the opened plaintext on restore go to
    one reused page-aligned buffer (as plinius reuses its own: generous to the peer), shared by
    the sealed peers, which run in turn."""

    aad = b"plinius peers: serialized + AES-GCM"

    def __init__(
        self,
        arrays: Arrays,
        path: Path,
        cold: bool,
        verify: bool,
        engine: Engine,
        staging: StagingBuffer,
        dest: Arrays | None = None,
    ) -> None:
        # the format's own class may take fewer arguments: this sets up the base alone, each
        # sealed kind adds what its format needs
        _Peer.__init__(self, arrays, path, cold, verify, dest)
        self.engine = engine
        self.staging = staging

    def seal_and_write(self, plain: bytes | memoryview) -> None:
        view = memoryview(plain)
        out = self.staging.view(view.nbytes + OVERHEAD)
        self.engine.encrypt_into(self.aad, view, out)
        with open(self.path, "wb") as f:
            f.write(out)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(self.path.parent)

    def read_and_open(self) -> memoryview:
        """The opened plaintext: a view of the shared buffer, valid until the next peer runs."""
        with open(self.path, "rb") as f:
            sealed = f.read()
        if len(sealed) < OVERHEAD:
            raise IntegrityError(str(self.path), "sealed file shorter than its IV and tag")
        plain = self.staging.view(len(sealed) - OVERHEAD)
        self.engine.decrypt_into(self.aad, sealed, plain, str(self.path))
        return plain

    def close(self) -> None:
        super().close()
        self.staging.close()  # safe while another contender still runs: it maps anew


# numpy.save ---------------------------------------------------------------------------------


class _NumpySave(_Peer):
    """Every array in turn into one file with ``numpy.save`` (the names first, as an array of
    strings); ``numpy.load`` in turn, which allocates every array. No fsync."""

    def __init__(self, arrays: Arrays, path: Path, cold: bool, verify: bool) -> None:
        super().__init__(arrays, path, cold, verify)
        self.names = np.array([name for name, _ in arrays])

    def dump(self, f: BinaryIO) -> None:
        np.save(f, self.names, allow_pickle=False)
        for _, a in self.arrays:
            np.save(f, a, allow_pickle=False)

    @staticmethod
    def load(f: BinaryIO) -> dict[str, np.ndarray]:
        names = np.load(f, allow_pickle=False)
        return {str(name): np.load(f, allow_pickle=False) for name in names}

    def save(self) -> None:
        with open(self.path, "wb") as f:
            self.dump(f)

    def restore(self) -> None:
        with open(self.path, "rb") as f:
            self.loaded = self.load(f)


class _NumpySaveSealed(_Sealed, _NumpySave):
    """``numpy.save`` into ``BytesIO``, sealed, written, fsynced; read, opened, ``numpy.load``."""

    def __init__(
        self,
        arrays: Arrays,
        path: Path,
        cold: bool,
        verify: bool,
        engine: Engine,
        staging: StagingBuffer,
    ) -> None:
        _Sealed.__init__(self, arrays, path, cold, verify, engine, staging)
        self.names = np.array([name for name, _ in arrays])

    def save(self) -> None:
        buf = io.BytesIO()
        self.dump(buf)
        with buf.getbuffer() as view:
            self.seal_and_write(view)

    def restore(self) -> None:
        self.loaded = self.load(io.BytesIO(self.read_and_open()))


# pickle -------------------------------------------------------------------------------------


class _Pickle(_Peer):
    """``pickle.dump`` of the dict of arrays (protocol 5), ``pickle.load``. No fsync. (A pickle
    runs code from the file it loads: this peer trusts the storage.)"""

    def save(self) -> None:
        with open(self.path, "wb") as f:
            pickle.dump(self.state, f, protocol=PICKLE_PROTOCOL)

    def restore(self) -> None:
        with open(self.path, "rb") as f:
            self.loaded = pickle.load(f)  # our own file, just written


class _PickleSealed(_Sealed, _Pickle):
    """``pickle.dumps``, sealed, written, fsynced; read, opened, ``pickle.loads`` (arrays
    pickled in-band are copied out of the buffer: nothing keeps a view of it)."""

    def save(self) -> None:
        self.seal_and_write(pickle.dumps(self.state, protocol=PICKLE_PROTOCOL))

    def restore(self) -> None:
        self.loaded = pickle.loads(self.read_and_open())  # authenticated first


# safetensors through numpy ------------------------------------------------------------------


class _SafetensorsNp(_Peer):
    """``safetensors.numpy.save_file`` (no fsync); ``safe_open(framework="np")`` and
    ``numpy.copyto`` into the existing arrays."""

    def __init__(self, arrays: Arrays, path: Path, cold: bool, verify: bool, dest: Arrays) -> None:
        super().__init__(arrays, path, cold, verify, dest)
        import safetensors
        import safetensors.numpy

        self.st = safetensors
        self.stnp = safetensors.numpy

    def save(self) -> None:
        self.stnp.save_file(self.state, str(self.path))

    def restore(self) -> None:
        assert self.dest is not None
        with self.st.safe_open(str(self.path), framework="np") as f:
            for name, d in self.dest:
                np.copyto(d, f.get_tensor(name))


class _SafetensorsNpSealed(_Sealed, _SafetensorsNp):
    """``safetensors.numpy.save`` (bytes), sealed, written, fsynced; read, opened,
    ``safetensors.numpy.load`` (it takes ``bytes``) and ``numpy.copyto`` into the existing
    arrays."""

    def __init__(
        self,
        arrays: Arrays,
        path: Path,
        cold: bool,
        verify: bool,
        engine: Engine,
        staging: StagingBuffer,
        dest: Arrays,
    ) -> None:
        _Sealed.__init__(self, arrays, path, cold, verify, engine, staging, dest)
        import safetensors.numpy

        self.stnp = safetensors.numpy

    def save(self) -> None:
        self.seal_and_write(self.stnp.save(self.state))

    def restore(self) -> None:
        assert self.dest is not None
        got = self.stnp.load(bytes(self.read_and_open()))
        for name, d in self.dest:
            np.copyto(d, got[name])


# torch (the bench extra) --------------------------------------------------------------------


class _TorchPeer(_Peer):
    """A peer that hands torch the arrays as CPU tensors (sharing their memory)."""

    def __init__(
        self, arrays: Arrays, path: Path, cold: bool, verify: bool, dest: Arrays | None = None
    ) -> None:
        super().__init__(arrays, path, cold, verify, dest)
        import torch

        self.torch = torch
        self.tensors = {name: torch.from_numpy(a) for name, a in arrays}


class _TorchSave(_TorchPeer):
    """``torch.save`` to the file, fsynced, and ``torch.load``, which materialises every
    tensor."""

    def save(self) -> None:
        with open(self.path, "wb") as f:
            self.torch.save(self.tensors, f)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(self.path.parent)

    def restore(self) -> None:
        self.loaded = self.torch.load(self.path, weights_only=True, mmap=False)


class _Safetensors(_TorchPeer):
    """``safetensors`` save, fsynced, and restores that copy into existing arrays (two copy
    flavours)."""

    def __init__(self, arrays: Arrays, path: Path, cold: bool, verify: bool, dest: Arrays) -> None:
        super().__init__(arrays, path, cold, verify, dest)
        import safetensors.torch

        self.st = safetensors
        self.save_file = safetensors.torch.save_file
        self.dest_t = [(name, self.torch.from_numpy(d)) for name, d in dest]

    def save(self) -> None:
        self.save_file(self.tensors, str(self.path))
        _fsync_file(self.path)
        fsync_dir(self.path.parent)

    def restore(self) -> None:
        """``numpy.copyto`` from the zero-copy tensors ``safe_open`` hands out."""
        assert self.dest is not None
        with self.st.safe_open(str(self.path), framework="pt") as f:
            for name, d in self.dest:
                np.copyto(d, f.get_tensor(name).numpy())

    def restore_copy_(self) -> None:
        with self.st.safe_open(str(self.path), framework="pt") as f:
            for name, t in self.dest_t:
                t.copy_(f.get_tensor(name))

    def restores(self) -> dict[str, Callable[[], None]]:
        return {"restore": self.restore, "restore_copy_": self.restore_copy_}


class _TorchSaveSealed(_Sealed, _TorchSave):
    """``torch.save`` to memory, one AES-GCM record over it, write + fsync: by hand."""

    aad = b"plinius peers: torch.save + AES-GCM"

    def __init__(
        self,
        arrays: Arrays,
        path: Path,
        cold: bool,
        verify: bool,
        engine: Engine,
        staging: StagingBuffer,
    ) -> None:
        _Sealed.__init__(self, arrays, path, cold, verify, engine, staging)
        import torch

        self.torch = torch
        self.tensors = {name: torch.from_numpy(a) for name, a in arrays}

    def save(self) -> None:
        buf = io.BytesIO()
        self.torch.save(self.tensors, buf)
        with buf.getbuffer() as view:
            self.seal_and_write(view)

    def restore(self) -> None:
        self.loaded = self.torch.load(io.BytesIO(self.read_and_open()), weights_only=True)


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


def _build(
    kind: str,
    arrays: Arrays,
    path: Path,
    cold: bool,
    verify: bool,
    engine: Engine,
    staging: StagingBuffer,
    dest: Arrays,
) -> tuple[_Peer, bool, dict[str, Any]]:
    """The peer ``kind`` writing ``path``: ``(peer, fsyncs?, how it saves and restores)``."""
    sealed = {"engine": engine.name}
    if kind == "numpy.save":
        how = {
            "save": "numpy.save of each array in turn into one file, names first",
            "restore": "numpy.load of each in turn (new arrays)",
        }
        return _NumpySave(arrays, path, cold, verify), False, how
    if kind == "numpy.save+aes-gcm+fsync":
        how = {
            "save": "numpy.save of each array to BytesIO, one encrypt_into, write, fsync",
            "restore": "read, decrypt_into, numpy.load(BytesIO) of each (new arrays)",
            **sealed,
        }
        return _NumpySaveSealed(arrays, path, cold, verify, engine, staging), True, how
    if kind == "pickle":
        how = {
            "save": f"pickle.dump of the dict of arrays (protocol {PICKLE_PROTOCOL})",
            "restore": "pickle.load (new arrays; trusts the file: a pickle runs code)",
        }
        return _Pickle(arrays, path, cold, verify), False, how
    if kind == "pickle+aes-gcm+fsync":
        how = {
            "save": f"pickle.dumps (protocol {PICKLE_PROTOCOL}), one encrypt_into, write, fsync",
            "restore": "read, decrypt_into, pickle.loads (new arrays)",
            **sealed,
        }
        return _PickleSealed(arrays, path, cold, verify, engine, staging), True, how
    if kind == "safetensors-np":
        how = {
            "save": "safetensors.numpy.save_file",
            "restore": "safe_open(framework='np') + numpy.copyto into existing arrays",
        }
        return _SafetensorsNp(arrays, path, cold, verify, dest), False, how
    if kind == "safetensors-np+aes-gcm+fsync":
        how = {
            "save": "safetensors.numpy.save (bytes), one encrypt_into, write, fsync",
            "restore": "read, decrypt_into, safetensors.numpy.load(bytes) + numpy.copyto "
            "into existing arrays",
            **sealed,
        }
        peer = _SafetensorsNpSealed(arrays, path, cold, verify, engine, staging, dest)
        return peer, True, how
    if kind == "torch.save":
        how = {
            "save": "torch.save to the file, fsync",
            "restore": "torch.load(weights_only=True, mmap=False)",
        }
        return _TorchSave(arrays, path, cold, verify), True, how
    if kind == "safetensors":
        how = {
            "save": "safetensors.torch.save_file (faster here than safetensors.numpy), fsync",
            "restore": "safe_open(framework='pt') + numpy.copyto into existing arrays",
            "restore_copy_": "safe_open(framework='pt') + torch.Tensor.copy_ into existing tensors",
        }
        return _Safetensors(arrays, path, cold, verify, dest), True, how
    if kind == "torch.save+aes-gcm":
        how = {
            "save": "torch.save to BytesIO, one encrypt_into, write, fsync",
            "restore": "read, decrypt_into, torch.load(BytesIO)",
            **sealed,
        }
        return _TorchSaveSealed(arrays, path, cold, verify, engine, staging), True, how
    raise ValueError(f"no peer {kind!r}")


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
                peer, fsyncs, how = _build(
                    kind, arrays, path, not no_cold, verify, engine, staging, dest
                )
                level, why = durability(directory, fsyncs)
                ops = ["save", *peer.restores()]
                if peer.cold:
                    ops.append("restore_cold")
                peer.facts = {
                    **_versions(kind),
                    **where,
                    **how,
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
