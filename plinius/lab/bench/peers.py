"""What users pick instead of plinius, saving and restoring the same tensors in the same run.

The ``peers`` section times, on each directory it is given (tmpfs, the ``ssd`` directory):

* ``torch.save`` / ``torch.load(weights_only=True)`` of a dict of CPU tensors (``torch.load``
  materialises every tensor);
* ``safetensors`` (``safetensors.torch.save_file``, the faster writer here) and a restore
  *materialised into the existing arrays*: a lazy mmap that reads nothing is no restore. Both
  copies are timed, ``numpy.copyto`` (op ``restore``) and ``torch.Tensor.copy_`` (op
  ``restore_copy_``), so the report can rank against the faster;
* ``torch.save`` + AES-GCM by hand, what a user without plinius writes: serialize to
  ``BytesIO``, seal it with the run's engine, write, fsync; restore reads, opens, ``torch.load``.

Every save fsyncs the file and its directory. Where ``posix_fadvise(DONTNEED)`` really evicts
files of a directory (checked with ``mincore``; never on tmpfs), each contender also has a
``restore_cold`` op that drops the file from the page cache (untimed) before restoring: a
restarted spot VM has no page cache.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import io
import mmap
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from plinius.backends.fsinfo import mount_label, mount_of
from plinius.core.crypto import OVERHEAD, Engine
from plinius.core.errors import BackendError, IntegrityError, MissingExtraError
from plinius.core.fsutil import fsync_dir
from plinius.core.memory import StagingBuffer, aligned_empty
from plinius.lab.bench.contenders import Contender

SECTION = "peers"
INSTALL_HINT = "pip install 'plinius[bench]'"
#: a cold restore must find at most this fraction of its file still in the page cache
MAX_RESIDENT_COLD = 0.02

Arrays = list[tuple[str, np.ndarray]]


def peers_unavailable() -> str | None:
    """None when torch and safetensors import, else why the section is not run (with the fix)."""
    missing = []
    for module in ("torch", "safetensors", "safetensors.torch"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            missing.append(f"{module} ({exc})")
    if missing:
        return f"not run: {'; '.join(missing)} not importable; {INSTALL_HINT}"
    return None


# --- page cache: eviction and residency -------------------------------------------------------

_libc: Any = None


def _c() -> Any:
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
            ctypes.c_long,
        ]  # fmt: skip
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
    """One peer on one directory: ``save``, ``restore``, ``restore_cold`` and its checks."""

    def __init__(self, arrays: Arrays, path: Path, cold: bool, verify: bool) -> None:
        import torch

        self.torch = torch
        self.arrays = arrays
        self.tensors = {name: torch.from_numpy(a) for name, a in arrays}
        self.path = path
        self.cold = cold
        self.verify = verify
        self.facts: dict[str, Any] = {}  # the contender's facts: the cold check adds to them

    def save(self) -> None:
        raise NotImplementedError

    def restore(self) -> None:
        raise NotImplementedError

    def check(self, got: dict[str, Any]) -> None:
        """Raise unless ``got`` (name -> array or tensor) holds exactly the source arrays."""
        if list(got) != [name for name, _ in self.arrays]:
            raise IntegrityError(str(self.path), "restored tensor names differ from the saved")
        for name, a in self.arrays:
            b = got[name]
            b = b.numpy() if hasattr(b, "numpy") else b
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
        if op != "restore":
            raise ValueError(f"unknown op {op!r}")
        return _timed(self.restore)

    def close(self) -> None:
        self.path.unlink(missing_ok=True)


class _TorchSave(_Peer):
    """``torch.save`` to the file and ``torch.load``, which materialises every tensor."""

    def __init__(self, arrays: Arrays, path: Path, cold: bool, verify: bool) -> None:
        super().__init__(arrays, path, cold, verify)
        self.loaded: dict[str, Any] | None = None

    def save(self) -> None:
        with open(self.path, "wb") as f:
            self.torch.save(self.tensors, f)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(self.path.parent)

    def restore(self) -> None:
        self.loaded = self.torch.load(self.path, weights_only=True, mmap=False)

    def run_restore(self, op: str) -> float:
        self.loaded = None  # free the previous restore outside the timing
        secs = super().run_restore(op)
        if self.verify and self.loaded is not None:
            self.check(self.loaded)
        else:  # a user keeps the state; freeing it is not part of the restore, holding it
            self.loaded = None  # until the next round would hold one copy per contender
        return secs


class _Safetensors(_Peer):
    """``safetensors`` save, and restores that copy into existing arrays (two copy flavours)."""

    def __init__(self, arrays: Arrays, path: Path, cold: bool, verify: bool, dest: Arrays) -> None:
        super().__init__(arrays, path, cold, verify)
        import safetensors.torch

        self.st = safetensors
        self.save_file = safetensors.torch.save_file
        self.dest = dest  # the existing arrays restores copy into (shared: they run in turn)
        self.dest_t = [(name, self.torch.from_numpy(d)) for name, d in self.dest]

    def save(self) -> None:
        self.save_file(self.tensors, str(self.path))
        _fsync_file(self.path)
        fsync_dir(self.path.parent)

    def restore(self) -> None:
        """``numpy.copyto`` from the zero-copy tensors ``safe_open`` hands out."""
        with self.st.safe_open(str(self.path), framework="pt") as f:
            for name, d in self.dest:
                np.copyto(d, f.get_tensor(name).numpy())

    def restore_copy_(self) -> None:
        with self.st.safe_open(str(self.path), framework="pt") as f:
            for name, t in self.dest_t:
                t.copy_(f.get_tensor(name))

    def run_restore(self, op: str) -> float:
        fn = {"restore": self.restore, "restore_copy_": self.restore_copy_}.get(op)
        if fn is None:
            raise ValueError(f"unknown op {op!r}")
        if self.verify:
            for _, d in self.dest:
                d.fill(0)
        secs = _timed(fn)
        if self.verify:
            self.check(dict(self.dest))
        return secs


class _TorchSaveAes(_TorchSave):
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
        super().__init__(arrays, path, cold, verify)
        self.engine = engine
        # sealed output on save, opened plaintext on restore: one reused buffer (as plinius
        # reuses its own; generous to the peer), shared by the contenders, which run in turn
        self.staging = staging

    def save(self) -> None:
        buf = io.BytesIO()
        self.torch.save(self.tensors, buf)
        with buf.getbuffer() as view:
            out = self.staging.view(view.nbytes + OVERHEAD)
            self.engine.encrypt_into(self.aad, view, out)
        with open(self.path, "wb") as f:
            f.write(out)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(self.path.parent)

    def restore(self) -> None:
        with open(self.path, "rb") as f:
            sealed = f.read()
        plain = self.staging.view(len(sealed) - OVERHEAD)
        self.engine.decrypt_into(self.aad, sealed, plain, str(self.path))
        self.loaded = self.torch.load(io.BytesIO(plain), weights_only=True)

    def close(self) -> None:
        super().close()
        self.staging.close()  # safe while another contender still runs: it maps anew


def _zeroed_like(arrays: Arrays) -> Arrays:
    """Page-aligned zeroed arrays shaped like ``arrays`` (touched now, not in a timed restore)."""
    out = []
    for name, a in arrays:
        d = aligned_empty(a.nbytes).view(a.dtype).reshape(a.shape)
        d.fill(0)
        out.append((name, d))
    return out


def _versions() -> dict[str, Any]:
    import safetensors
    import torch

    return {
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def peer_contenders(
    arrays: Arrays,
    workload: str,
    dirs: dict[str, Path],
    engine: Engine,
    *,
    verify: bool = False,
) -> list[Contender]:
    """torch.save, safetensors and torch.save + AES-GCM on each of ``dirs`` (label -> directory).

    Raises :class:`MissingExtraError` (message: :func:`peers_unavailable`) when torch or
    safetensors is missing. ``verify`` checks every restore against ``arrays`` (untimed; tests).
    Files are created in the given directories and removed by each contender's ``close``.
    """
    reason = peers_unavailable()
    if reason is not None:
        raise MissingExtraError(reason)
    nbytes = sum(a.nbytes for _, a in arrays)
    common = _versions()
    dest = _zeroed_like(arrays)
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
                "durability": "fsync of the file and its directory on every save",
                "cold_restore": no_cold or "page cache dropped with posix_fadvise, mincore-checked",
            }
            stem = f"plinius-peer-{os.getpid()}-{workload.replace(os.sep, '_')}"
            kinds: list[tuple[str, _Peer, dict[str, Any]]] = [
                ("torch.save", _TorchSave(arrays, directory / f"{stem}.pt", not no_cold, verify),
                 {"restore": "torch.load(weights_only=True, mmap=False)"}),
                ("safetensors", _Safetensors(
                    arrays, directory / f"{stem}.safetensors", not no_cold, verify, dest),
                 {"save": "safetensors.torch.save_file (faster here than safetensors.numpy)",
                  "restore": "safe_open(framework='pt') + numpy.copyto into existing arrays",
                  "restore_copy_": "safe_open(framework='pt') + torch.Tensor.copy_ into "
                  "existing tensors"}),
                ("torch.save+aes-gcm", _TorchSaveAes(
                    arrays, directory / f"{stem}.pt.aes", not no_cold, verify, engine, staging),
                 {"save": "torch.save to BytesIO, one encrypt_into, write, fsync",
                  "restore": "read, decrypt_into, torch.load(BytesIO)",
                  "engine": engine.name}),
            ]  # fmt: skip
            for kind, peer, how in kinds:
                ops = ["save", "restore"]
                if isinstance(peer, _Safetensors):
                    ops.append("restore_copy_")
                if peer.cold:
                    ops.append("restore_cold")
                peer.facts = {**common, **where, **how, "label": label}
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
        raise
    return out
