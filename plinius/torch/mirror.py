"""``TorchMirror``: a PyTorch training loop mirrored through the enclave's own mirroring path.

The torch state (:class:`~plinius.torch.state.TorchState`) is one more implementation of the
model protocol, so the very same :class:`~plinius.enclave.trusted.Enclave` provisions the key,
seals, persists, restores and checks freshness with the platform counter, mirrors
asynchronously and copies to replicas, with the same errors (``ModelMismatchError``,
``StaleMirrorError``/``RollbackError``, ``IntegrityError``) as ``plinius train``.
"""

from __future__ import annotations

import time
import warnings
from types import TracebackType
from typing import Any, cast

import torch

from plinius.backends.base import Backend
from plinius.backends.registry import backend_class, open_backend, parse_spec
from plinius.crypto import key_id, make_engine, read_key_file
from plinius.enclave.counter import MirrorCounters
from plinius.enclave.platform import SimulatedPlatform
from plinius.enclave.trusted import Enclave, mirror_guard
from plinius.errors import ConfigError, PliniusError
from plinius.fsutil import check_path
from plinius.mirror import MirrorInfo, MirrorStore
from plinius.model import Trainable
from plinius.owner import provision
from plinius.torch.state import TorchState, mirror_estimate

BackendLike = str | Backend
#: how long closing waits for a replica copy in flight
REPLICA_DRAIN_S = 60.0


def _warn(msg: str) -> None:
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


class TorchMirror:
    """Mirror a PyTorch model, optimizer, scheduler, RNGs and ``extra_state``, encrypted.

    ``backend``: a spec as the CLI takes (``"romulus:/dev/shm/run.pool"``) or a backend object
    (left open on :meth:`close`); ``key_file``: the owner's key; ``every``: mirror every N-th
    iteration; ``asynchronous``: snapshot into kept host memory, seal in the background;
    ``replica``: a spec or backend (or a list of them) that gets a copy of every mirror;
    ``replica_max_lag``: never commit a mirror more than this many versions ahead of the
    newest replica copy (default 2; see README's threat model); ``accept_replica_loss``: how
    many mirrors a restore from a replica may lose beyond that bound (default: refuse);
    ``extra_state``: a dict of JSON-able values (e.g. the data loader's position) saved in the
    authenticated manifest and updated in place by :meth:`restore`; ``check_module_types``:
    the model fingerprint covers the class of every module (``named_modules()``), so a mirror
    is refused for a model whose layers changed even where its tensors did not (False: accept
    a deliberate code change; code inside ``forward`` is never covered); ``platform``: the
    simulated CPU holding the key seal and freshness counters (default: this machine's, at
    ``$PLINIUS_PLATFORM_DIR``; benchmarks pass a throw-away one).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        backend: BackendLike,
        key_file: str,
        every: int = 1,
        asynchronous: bool = False,
        replica: BackendLike | list[BackendLike] | None = None,
        scheduler: Any = None,
        extra_state: dict[str, Any] | None = None,
        platform: SimulatedPlatform | None = None,
        replica_max_lag: int | None = None,
        accept_replica_loss: int | None = None,
        check_module_types: bool = True,
    ) -> None:
        if every < 1:
            raise ConfigError(f"every={every}: mirror at least every 1 iteration")
        if not key_file:
            raise ConfigError("key file path is empty: give a file")
        if replica_max_lag is not None and replica_max_lag < 1:
            raise ConfigError(f"replica_max_lag={replica_max_lag}: must be >= 1")
        if accept_replica_loss is not None and accept_replica_loss < 0:
            raise ConfigError(f"accept_replica_loss={accept_replica_loss}: must be >= 0")
        self.state = TorchState(
            model, optimizer, scheduler, extra_state, module_types=check_module_types
        )
        self.every = every
        self.asynchronous = asynchronous
        self._snap_nbytes = 0
        self._owned: list[Backend] = []
        self._closed = False
        self.mirror_s: list[float] = []  # seconds each mirror held the training loop
        key = read_key_file(key_file)
        platform = SimulatedPlatform() if platform is None else platform
        fp = self.state.fingerprint()
        label = f"torch:{type(model).__qualname__}"
        # the enclave mirrors through Mirrorable only; it trains (Trainable) only when asked to
        self._enclave = Enclave(platform, cast(Trainable, self.state), label)
        if not self._enclave.ecall_unseal_key(key_id(key)):
            provision(self._enclave, key, platform.quoting_public_pem, fp)
        try:
            self.backend = self._open(backend, "backend")
            self._counters = MirrorCounters(platform)
            self._enclave.ecall_attach_mirror(self.backend, self._counters)
            self._peek_store = MirrorStore(self.backend, make_engine(key), fp)
            replicas = (
                [] if replica is None else replica if isinstance(replica, list) else [replica]
            )
            self._replicas = [self._open(r, "replica") for r in replicas]
            if self._replicas:
                self._enclave.ecall_attach_replicas(
                    self._replicas,
                    1,
                    _warn,
                    max_lag=replica_max_lag,
                    accept_loss=accept_replica_loss,
                )
        except BaseException:
            self._close_owned()
            raise

    def _open(self, spec: BackendLike, what: str) -> Backend:
        if isinstance(spec, Backend):
            return spec
        if not isinstance(spec, str) or not spec:
            raise ConfigError(f"{what} must be a backend spec string or a Backend")
        name, location, _ = parse_spec(spec)
        check_path(location, f"{what} {name} location")
        opts = backend_class(name).creation_options(mirror_estimate(self.state), 0)
        b = open_backend(spec, **opts)
        self._owned.append(b)
        return b

    # --- restore -------------------------------------------------------------------------------

    def _peek(self) -> MirrorInfo | None:
        """The layout of the mirror a restore will load (header and manifest only), so the
        optimizer state PyTorch creates lazily exists to decrypt into; the restore itself
        checks everything again."""
        guard = mirror_guard(self._counters, self._peek_store, settle=False)
        info = self._peek_store.peek(freshness=guard)
        if info is not None or not self._replicas:
            return info
        best: MirrorInfo | None = None
        for r in self._replicas:
            store = MirrorStore(r, self._peek_store.engine, self._peek_store.fingerprint)
            try:
                got = store.peek(freshness=mirror_guard(self._counters, store, settle=False))
            except PliniusError:
                continue
            if got is not None and (best is None or got.version > best.version):
                best = got
        return best

    def restore(self) -> int:
        """Load the last mirror into model, optimizer, scheduler, RNGs and ``extra_state``;
        the iteration to continue from (0 when there is no mirror yet)."""
        info = self._peek()
        if info is not None:
            self.state.prepare_restore(info.meta["net"])
        it = self._enclave.ecall_restore(_warn)
        lost = self._enclave.ecall_restore_warning()
        if lost is not None:
            _warn(lost)
            self._enclave.ecall_mirror()  # re-seed the primary: its freshness record moves on
            self._enclave.ecall_flush()
        return 0 if it is None else it

    # --- mirroring -----------------------------------------------------------------------------

    def step(self, iteration: int) -> float:
        """Record that ``iteration`` steps are done; mirror when ``iteration % every == 0``.
        Seconds the loop waited for the mirror (the snapshot only, when asynchronous)."""
        if self._closed:
            raise ConfigError("this TorchMirror is closed")
        self.state.iteration = iteration
        if iteration % self.every != 0:
            return 0.0
        return self.mirror()

    def mirror(self) -> float:
        """Mirror now, whatever the iteration; seconds the loop waited."""
        t0 = time.perf_counter()
        if self.asynchronous:
            need = self.state.snapshot_nbytes()
            if need != self._snap_nbytes:  # first mirror, or the optimizer grew its state
                self._enclave.ecall_set_async(False)
                self._enclave.ecall_set_async(True)
                self._snap_nbytes = need
        self._enclave.ecall_mirror()
        waited = time.perf_counter() - t0
        self.mirror_s.append(waited)
        return waited

    def flush(self) -> None:
        """Wait for the asynchronous mirror in flight (its error, if any, is raised here)."""
        self._enclave.ecall_flush()

    def close(self) -> None:
        """Drain the pending mirror and replica copies; close the backends opened here."""
        if self._closed:
            return
        self._closed = True
        try:
            self._enclave.ecall_flush()
            if not self._enclave.ecall_drain_replicas(REPLICA_DRAIN_S):
                _warn(f"a replica copy was still in flight after {REPLICA_DRAIN_S:.0f} s")
        finally:
            self._enclave.ecall_close()
            self._close_owned()

    def _close_owned(self) -> None:
        owned, self._owned = self._owned, []
        for b in owned:
            b.close()

    def __enter__(self) -> TorchMirror:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


__all__ = ["TorchMirror"]
