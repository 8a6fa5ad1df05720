"""``TorchMirror``: a PyTorch training loop mirrored through the one host-side session.

The torch state (:class:`~plinius.torch.state.TorchState`) is one more implementation of the
model protocol, so the very same :class:`~plinius.session.Session` and enclave provision the
key (the host keeps none), seal, persist, restore and check freshness with the platform
counter, mirror asynchronously and copy to replicas, with the same errors
(``ModelMismatchError``, ``StaleMirrorError``/``RollbackError``, ``IntegrityError``) as
``plinius train``.
"""

from __future__ import annotations

import time
import warnings
from types import TracebackType
from typing import Any, cast

import torch

from plinius.core.errors import ConfigError
from plinius.core.model import Trainable
from plinius.enclave.platform import Platform
from plinius.session import BackendLike, Replication, Resumed, Session
from plinius.torch.state import TorchState, mirror_estimate


def _warn(msg: str) -> None:
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _announce(found: Resumed) -> None:
    """A replica stood in for a lost primary: say what was restored and lost."""
    if found.lost is not None:
        _warn(found.lost)


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
        platform: Platform | None = None,
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
        self._closed = False
        self.mirror_s: list[float] = []  # seconds each mirror held the training loop
        # the session mirrors through Mirrorable only; it trains (Trainable) only when asked to
        self._session = Session(
            cast(Trainable, self.state),
            label=f"torch:{type(model).__qualname__}",
            key_file=key_file,
            platform=platform,
            say=_warn,
        )
        try:
            size = mirror_estimate(self.state)
            self.backend = self._session.open(backend, mirror_bytes=size)
            replicas = (
                [] if replica is None else replica if isinstance(replica, list) else [replica]
            )
            self._session.attach(
                self.backend,
                replication=Replication(
                    replicas, 1, replica_max_lag, accept_replica_loss, required=True
                ),
                mirror_bytes=size,
            )
        except BaseException:
            self._session.close()
            raise

    # --- restore -------------------------------------------------------------------------------

    def restore(self) -> int:
        """Load the last mirror into model, optimizer, scheduler, RNGs and ``extra_state``;
        the iteration to continue from (0 when there is no mirror yet). The optimizer state
        PyTorch creates lazily is allocated from the mirror's authenticated layout first."""
        resumed = self._session.restore(announce=_announce)
        return 0 if resumed.iteration is None else resumed.iteration

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
                self._session.enclave.ecall_set_async(False)
                self._session.enclave.ecall_set_async(True)
                self._snap_nbytes = need
        self._session.mirror()
        waited = time.perf_counter() - t0
        self.mirror_s.append(waited)
        return waited

    def flush(self) -> None:
        """Wait for the asynchronous mirror in flight (its error, if any, is raised here)."""
        self._session.flush()

    def close(self) -> None:
        """Drain the pending mirror and replica copies; close the backends opened here."""
        if self._closed:
            return
        self._closed = True
        self._session.close()

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
