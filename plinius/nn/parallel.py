"""All cores for both the matrix products and the memory-bound work between them.

numpy's element-wise loops (im2col, batch norm, activations) run on one core, while BLAS uses all
of them. Handing the element-wise work to a second Python thread alone does not help: OpenBLAS's
own workers keep spinning after every product and take that core. So during a training step we
set BLAS to one thread (through ``threadpoolctl``) and split *everything*, products included, over
our own small pool: numpy releases the GIL inside both BLAS calls and ufunc loops. Each output
element is computed by exactly one call, so results are reproducible run to run.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

_MIN_SPLIT = 2  # never split fewer rows than this per task
_MIN_GEMM_COLS = 256  # below this a product is not worth splitting
_CHUNKS_PER_THREAD = 4

_pool: ThreadPoolExecutor | None = None
_pool_pid = 0
_threads = 0
_controller: Any = None
_controller_checked = False
_local = threading.local()


def threads() -> int:
    """Worker count: ``PLINIUS_NN_THREADS`` or the number of usable CPUs."""
    global _threads
    if _threads == 0:
        env = os.environ.get("PLINIUS_NN_THREADS", "")
        if env.isdigit() and int(env) > 0:
            _threads = int(env)
        else:
            try:
                _threads = len(os.sched_getaffinity(0))
            except AttributeError:  # pragma: no cover - non-Linux
                _threads = os.cpu_count() or 1
    return _threads


def _executor() -> ThreadPoolExecutor:
    global _pool, _pool_pid
    if _pool is None or _pool_pid != os.getpid():  # a forked child has none of the threads
        _pool = ThreadPoolExecutor(max_workers=max(1, threads() - 1), thread_name_prefix="pnn")
        _pool_pid = os.getpid()
    return _pool


def split(
    fn: Callable[[int, int], object],
    n: int,
    min_rows: int = _MIN_SPLIT,
    chunks_per_thread: int | None = None,
) -> None:
    """Call ``fn(lo, hi)`` over a partition of ``range(n)``, in parallel; wait for all.

    The range is cut into a few chunks per thread that the threads take in turn, so a core that
    another process slows down does not leave the other one waiting for its fixed half.
    """
    t = threads()
    per = _CHUNKS_PER_THREAD if chunks_per_thread is None else chunks_per_thread
    parts = min(t * per, max(1, n // min_rows))
    if parts <= 1 or t <= 1:
        fn(0, n)
        return
    bounds = [n * i // parts for i in range(parts + 1)]
    counter = itertools.count()  # next() on a count is atomic under the GIL

    def worker() -> None:
        while (i := next(counter)) < parts:
            fn(bounds[i], bounds[i + 1])

    futures: list[Future[None]] = [_executor().submit(worker) for _ in range(min(t, parts) - 1)]
    worker()
    for f in futures:
        f.result()


def scratch(name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A per-thread, grow-only scratch array (for work done inside :func:`split`)."""
    bufs: dict[str, np.ndarray] | None = getattr(_local, "scratch", None)
    if bufs is None:
        bufs = _local.scratch = {}
    size = 1
    for d in shape:
        size *= d
    buf = bufs.get(name)
    if buf is None or buf.size < size or buf.dtype != dtype:
        buf = bufs[name] = np.zeros(size, dtype)
    return buf[:size].reshape(shape)


def _blas_controller() -> Any:
    global _controller, _controller_checked
    if not _controller_checked:
        _controller_checked = True
        try:
            from threadpoolctl import ThreadpoolController

            ctl = ThreadpoolController()
            _controller = ctl if ctl.select(user_api="blas").lib_controllers else None
        except Exception:  # threadpoolctl missing or unable to see the BLAS: stay serial
            _controller = None
    return _controller


@contextlib.contextmanager
def blas_single_threaded() -> Iterator[None]:
    """Within this block BLAS runs on the calling thread and :func:`matmul` splits products."""
    if getattr(_local, "depth", 0) or threads() <= 1:
        _local.depth = getattr(_local, "depth", 0) + 1
        try:
            yield
        finally:
            _local.depth -= 1
        return
    ctl = _blas_controller()
    if ctl is None:
        yield
        return
    with ctl.limit(limits=1, user_api="blas"):
        _local.depth = 1
        try:
            yield
        finally:
            _local.depth = 0


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = a @ b``, split over the pool when BLAS was made single-threaded."""
    if not getattr(_local, "depth", 0) or threads() <= 1:
        return np.matmul(a, b, out=out)
    m, n = out.shape
    if n >= _MIN_GEMM_COLS * threads():
        # Narrow outputs (weight gradients) re-read all of ``a`` per chunk: fewer chunks there.
        per = _CHUNKS_PER_THREAD if n >= 16 * _MIN_GEMM_COLS else 1
        split(lambda lo, hi: np.matmul(a, b[:, lo:hi], out=out[:, lo:hi]), n, _MIN_GEMM_COLS, per)
    elif m >= 2 * threads():
        split(lambda lo, hi: np.matmul(a[lo:hi], b, out=out[lo:hi]), m, 2, 1)
    else:
        np.matmul(a, b, out=out)
    return out
