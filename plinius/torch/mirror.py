"""``TorchMirror``: a PyTorch training loop mirrored through the one host-side session.

The torch state (:class:`~plinius.torch.state.TorchState`) is one more implementation of the
model protocol, so the very same :class:`~plinius.session.Session` and enclave provision the
key (the host keeps none), seal, persist, restore and check freshness with the platform
counter, mirror asynchronously and copy to replicas, with the same errors
(``ModelMismatchError``, ``StaleMirrorError``/``RollbackError``, ``IntegrityError``) as
``plinius train``.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, cast

import torch

from plinius.backends.base import Backend
from plinius.backends.registry import backend_class, parse_spec
from plinius.core.errors import ConfigError, ModelMismatchError, PliniusError
from plinius.core.model import Trainable
from plinius.enclave.platform import Platform
from plinius.enclave.trusted import check_max_in_flight
from plinius.session import BackendLike, Replication, Resumed, Session
from plinius.torch.collectives import TorchLink, world_group
from plinius.torch.part_state import PartState
from plinius.torch.state import TorchState, mirror_estimate

#: the CLI's flags in messages from below (with their value, if any) and the argument here
_SPELLINGS = (
    (re.compile(r"--fresh\b"), "fresh", "True"),
    (re.compile(r"--accept-replica-loss(?: (\d+))?"), "accept_replica_loss", None),
    (re.compile(r"--replica-max-lag(?: (\d+))?"), "replica_max_lag", None),
)


def python_spelling(message: str) -> str:
    """``message`` with the CLI's flags (``--fresh``) named as TorchMirror's arguments."""
    for flag, arg, value in _SPELLINGS:

        def spell(m: re.Match[str], arg: str = arg, value: str | None = value) -> str:
            given = value if value is not None else m.group(1)
            return arg if given is None else f"{arg}={given}"

        message = flag.sub(spell, message)
    return message


def _respelled(exc: PliniusError, message: str) -> PliniusError:
    """An error of ``exc``'s class (and attributes) saying ``message``."""
    new = type(exc).__new__(type(exc))
    new.__dict__.update(exc.__dict__)
    Exception.__init__(new, message)
    return new


@contextmanager
def _as_python() -> Iterator[None]:
    """Errors from the session name ``fresh=True`` where the CLI's say ``--fresh``."""
    try:
        yield
    except PliniusError as exc:
        message = python_spelling(str(exc))
        if message == str(exc):
            raise
        raise _respelled(exc, message).with_traceback(exc.__traceback__) from None


def _warn(msg: str) -> None:
    warnings.warn(python_spelling(msg), RuntimeWarning, stacklevel=3)


def _announce(found: Resumed) -> None:
    """A replica stood in for a lost primary: say what was restored and lost."""
    if found.lost is not None:
        _warn(found.lost)


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """A DDP-wrapped module's own module (its state_dict names carry no ``module.``), so a
    mirror restores into the plain module too (another world size, one process)."""
    inner = getattr(model, "module", None)
    if isinstance(inner, torch.nn.Module) and type(model).__name__ == "DistributedDataParallel":
        return inner
    return model


def _rank_spec(spec: BackendLike, rank: int, world: int) -> BackendLike:
    """Rank ``rank``'s backend: ``{rank}`` in the spec set to it. Backends one process owns
    (files, pools) need it in the location; a shared server (Redis) takes one spec, each rank
    writing its own blobs."""
    if not isinstance(spec, str):
        if world > 1 and spec.locality == "local":
            raise ConfigError(
                "backend: give a spec with {rank} in its location under a process group (each "
                "rank opens its own instance), not a backend object"
            )
        return spec
    if "{rank}" in spec:
        _, location, _ = parse_spec(spec)
        head, _, _ = location.partition("{rank}")
        if head.endswith("/") and os.path.isdir(os.path.dirname(head.rstrip("/")) or "."):
            os.makedirs(head, mode=0o700, exist_ok=True)  # the ranks' directory, made once
        return spec.replace("{rank}", str(rank))
    name, _, _ = parse_spec(spec)
    if world > 1 and backend_class(name).locality == "local":
        raise ConfigError(
            f"backend {spec}: each of the {world} ranks needs its own instance of a local "
            f"backend: put {{rank}} in its location (e.g. {name}:/dev/shm/run/{{rank}})"
        )
    return spec


class TorchMirror:
    """Mirror a PyTorch model, optimizer, scheduler, RNGs and ``extra_state``, encrypted.

    ``backend``: a spec as the CLI takes (``"romulus:/dev/shm/run.pool"``) or a backend object
    (left open on :meth:`close`); ``key_file``: the owner's key; ``every``: mirror every N-th
    iteration; ``asynchronous``: snapshot into kept host memory, seal in the background;
    ``replica``: a spec or backend (or a list of them) that gets a copy of every mirror;
    ``replica_max_lag``: never commit a mirror more than this many versions ahead of the
    newest replica copy (default 2; see README's threat model); ``accept_replica_loss``: how
    many mirrors a restore from a replica may lose beyond that bound (default: refuse);
    ``extra_state``: a dict of the loop's own state, updated in place by :meth:`restore`: JSON
    values (a loader's position, a best loss) in the authenticated manifest, tensors and NumPy
    arrays anywhere in it (an LSTM's carried hidden state) as sealed records, restored into the
    tensor or array standing at the same key when its dtype, shape and device match, else
    replaced by a new one; ``check_module_types``: the model fingerprint covers the class of
    every module (``named_modules()``), so a mirror is refused for a model whose layers changed
    even where its tensors did not (False: accept a deliberate code change; code inside
    ``forward`` is never covered); ``fresh``: start over, as ``plinius train --fresh`` (an
    existing mirror is not read; the first new mirror makes it stale); ``mirror_on_close``:
    :meth:`close` (and leaving the ``with`` block without an exception) mirrors the last
    :meth:`step` when it is newer than the last mirror; ``platform``: the simulated CPU holding
    the key seal and freshness counters (default: this machine's, at ``$PLINIUS_PLATFORM_DIR``;
    benchmarks pass a throw-away one); ``process_group``: the ranks whose run this mirrors
    (default: the world group when torch.distributed is initialised; README's "Distributed
    training"): each rank seals its part (``{rank}`` in ``backend`` gives each its own
    instance), a two-phase commit makes every save all-or-nothing across ranks, and a restore
    at another world size reshards; every rank calls restore, step, mirror and close alike.
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
        max_in_flight: int = 1,
        replica: BackendLike | list[BackendLike] | None = None,
        scheduler: Any = None,
        extra_state: dict[str, Any] | None = None,
        platform: Platform | None = None,
        replica_max_lag: int | None = None,
        accept_replica_loss: int | None = None,
        check_module_types: bool = True,
        fresh: bool = False,
        mirror_on_close: bool = True,
        process_group: Any = None,
    ) -> None:
        if every < 1:
            raise ConfigError(f"every={every}: mirror at least every 1 iteration")
        if not key_file:
            raise ConfigError("key file path is empty: give a file")
        if replica_max_lag is not None and replica_max_lag < 1:
            raise ConfigError(f"replica_max_lag={replica_max_lag}: must be >= 1")
        if accept_replica_loss is not None and accept_replica_loss < 0:
            raise ConfigError(f"accept_replica_loss={accept_replica_loss}: must be >= 0")
        self.max_in_flight = check_max_in_flight(max_in_flight, asynchronous)
        group = world_group(process_group)
        self.link: TorchLink | None = None
        template = backend
        if group is not None:
            if replica is not None:
                raise ConfigError("replica= is not supported with a process group (yet)")
            self.link = TorchLink(group)
            model = _unwrapped(model)
            self.state: TorchState = PartState(
                model, optimizer, scheduler, extra_state, module_types=check_module_types,
                link=self.link,
            )  # fmt: skip
            template, backend = backend, _rank_spec(backend, self.link.rank, self.link.world)
        else:
            self.state = TorchState(
                model, optimizer, scheduler, extra_state, module_types=check_module_types
            )
        self.every = every
        self.asynchronous = asynchronous
        self.fresh = fresh
        self.mirror_on_close = mirror_on_close
        self._snap_nbytes = 0
        self._closed = False
        self._restored = False
        self._stepped: int | None = None  # the last iteration step() recorded
        self._mirrored: int | None = None  # the iteration of the last mirror made here
        self._epoch: tuple[int, int] | None = None  # (epoch, batches per epoch) of epochs()
        self.mirror_s: list[float] = []  # seconds each mirror held the training loop
        # the session mirrors through Mirrorable only; it trains (Trainable) only when asked to
        with _as_python():
            self._session = Session(
                cast(Trainable, self.state),
                label=f"torch:{type(model).__qualname__}",
                key_file=key_file,
                platform=platform,
                say=_warn,
            )
        try:
            size = mirror_estimate(self.state)
            replicas = (
                [] if replica is None else replica if isinstance(replica, list) else [replica]
            )
            with _as_python():
                self.backend = self._session.open(backend, mirror_bytes=size)
                self._session.attach(
                    self.backend,
                    replication=Replication(
                        replicas, 1, replica_max_lag, accept_replica_loss, required=True
                    ),
                    mirror_bytes=size,
                )
                if self.link is not None:
                    self._session.attach_ranks(self.link, self._backend_of(template, size))
        except BaseException:
            self._session.close()
            raise

    def _backend_of(self, spec: BackendLike, size: int) -> Callable[[int], Backend]:
        """Rank ``r``'s storage (a restore at another world size reads old ranks' parts):
        the spec with ``{rank}`` set to ``r``, or this rank's own backend when it is shared."""

        opened: dict[int, Backend] = {}

        def of(r: int) -> Backend:
            if not isinstance(spec, str) or "{rank}" not in spec or r == self.rank:
                return self.backend
            if r not in opened:
                with _as_python():
                    where = spec.replace("{rank}", str(r))
                    opened[r] = self._session.open(where, mirror_bytes=size)
            return opened[r]

        return of

    # --- restore -------------------------------------------------------------------------------

    def restore(self, *, fresh: bool = False) -> int:
        """Load the last mirror into model, optimizer, scheduler, RNGs and ``extra_state``;
        the iteration to continue from (0 when there is no mirror yet, or with ``fresh``, here
        or given to the constructor: the run starts over, as ``plinius train --fresh``). The
        optimizer state PyTorch creates lazily is allocated from the mirror's authenticated
        layout first. A model that differs from the mirror's is refused saying what differs."""
        self._restored = True
        try:
            with _as_python():
                resumed = self._session.restore(fresh=fresh or self.fresh, announce=_announce)
        except ModelMismatchError as exc:
            if " belongs to model " not in str(exc):
                raise  # the torch state's own checks name what differs already
            why = self._session.enclave.ecall_explain_mismatch() or "the fingerprints differ"
            what = str(exc).split(" belongs to model ")[0]
            raise ModelMismatchError(
                f"{what} was made by another training state ({why}): use the model, optimizer "
                "and scheduler it was made with, or start over with fresh=True"
            ) from None
        self._mirrored = resumed.iteration
        return 0 if resumed.iteration is None else resumed.iteration

    def position(self, batches_per_epoch: int) -> tuple[int, int]:
        """``(epoch, batch)`` the run stands at (both from 0): the next batch to train."""
        if batches_per_epoch < 1:
            raise ConfigError(f"batches_per_epoch={batches_per_epoch}: must be >= 1")
        epoch, batch = divmod(self.state.iteration, batches_per_epoch)
        return epoch, batch

    # --- epoch loops ---------------------------------------------------------------------------

    def epochs(self, epochs: int, batches_per_epoch: int) -> Iterator[int]:
        """The epochs left, from the restored one (restoring first if :meth:`restore` was not
        called). Iterate :meth:`batches` inside; what follows that inner loop in the body
        (evaluation, saving the best model, an LR change) is the epoch's end: it is mirrored
        together with the epoch's last batch when the body ends, so a kill before that (even
        mid-evaluation) resumes at the last batch and redoes the end. Iterations count
        batches: ``epoch * batches_per_epoch + batch``."""
        if epochs < 0:
            raise ConfigError(f"epochs={epochs}: must be >= 0")
        if not self._restored:
            self.restore()
        start, _ = self.position(batches_per_epoch)
        for epoch in range(start, epochs):
            self._epoch = (epoch, batches_per_epoch)
            yield epoch
            end = (epoch + 1) * batches_per_epoch
            if self.state.iteration != end:
                at = self.state.iteration - epoch * batches_per_epoch
                raise ConfigError(
                    f"epoch {epoch} ended at batch {at} of {batches_per_epoch}: iterate "
                    "mirror.batches() to its end in every epoch"
                )
            self._stepped = end
            self.mirror()  # the last batch with the epoch's end
        self._epoch = None

    def batches(self) -> Iterator[int]:
        """The batches of the current epoch of :meth:`epochs` left to train (all but the
        restored ones); each is recorded (and mirrored as :meth:`step` does) once the body
        that trained it ends, except the last, which the epoch's end mirrors."""
        if self._epoch is None:
            raise ConfigError("mirror.batches() runs inside a loop over mirror.epochs()")
        epoch, per = self._epoch
        for batch in range(self.state.iteration - epoch * per, per):
            yield batch
            done = epoch * per + batch + 1
            if batch + 1 < per:
                self.step(done)
            else:
                self.state.iteration = done

    # --- mirroring -----------------------------------------------------------------------------

    def step(self, iteration: int) -> float:
        """Record that ``iteration`` steps are done; mirror when ``iteration % every == 0``.
        Seconds the loop waited for the mirror (the snapshot only, when asynchronous)."""
        if self._closed:
            raise ConfigError("this TorchMirror is closed")
        self.state.iteration = iteration
        self._stepped = iteration
        if iteration % self.every != 0:
            return 0.0
        return self.mirror()

    def mirror(self) -> float:
        """Mirror now, whatever the iteration; seconds the loop waited."""
        t0 = time.perf_counter()
        with _as_python():
            if self.asynchronous:
                need = self.state.snapshot_nbytes()
                if need != self._snap_nbytes:  # first mirror, or the optimizer grew its state
                    self._session.enclave.ecall_set_async(False)
                    self._session.enclave.ecall_set_async(True, self.max_in_flight)
                    self._snap_nbytes = need
            self._session.mirror()
        self._mirrored = self.state.iteration
        waited = time.perf_counter() - t0
        self.mirror_s.append(waited)
        return waited

    def flush(self) -> None:
        """Wait for every asynchronous mirror in flight (the first error is raised here; the
        mirrors queued after a failed one are dropped unwritten)."""
        with _as_python():
            self._session.flush()

    # --- determinism ---------------------------------------------------------------------------

    def check_determinism(self) -> list[str]:
        """What keeps this run from resuming bit-identically, as far as torch can tell (warned
        in one line; none: []). Call it after :meth:`restore`: it also compares the thread count
        and torch version with the restored mirror's. It cannot see a data loader's seeding or
        ``forward``'s code (README's determinism guide)."""
        found: list[str] = []
        if not torch.are_deterministic_algorithms_enabled():
            found.append("torch.use_deterministic_algorithms(True) is not set")
        threads, theirs = torch.get_num_threads(), self.state.restored_threads
        if theirs is not None and theirs != threads:
            found.append(f"torch runs {threads} threads, the mirror's run {theirs}")
        if self.state.restored_torch not in (None, torch.__version__):
            found.append(f"torch {torch.__version__}, the mirror's {self.state.restored_torch}")
        if torch.cuda.is_available():
            if torch.backends.cudnn.benchmark:
                found.append("torch.backends.cudnn.benchmark is on")
            if os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in (":4096:8", ":16:8"):
                found.append("CUBLAS_WORKSPACE_CONFIG is not :4096:8")
        if found:
            warnings.warn(
                "this run may not resume bit-identically: " + "; ".join(found),
                RuntimeWarning,
                stacklevel=2,
            )
        return found

    # --- the end -------------------------------------------------------------------------------

    def close(self) -> None:
        """Mirror the last :meth:`step` if it is newer than the last mirror (unless
        ``mirror_on_close=False``), drain the pending mirrors and replica copies, close the
        backends opened here."""
        self._close(tail=self.mirror_on_close)

    def _close(self, *, tail: bool) -> None:
        if self._closed:
            return
        try:
            if tail and self._stepped is not None and self._stepped != self._mirrored:
                self.mirror()
        finally:
            self._closed = True
            with _as_python():
                self._session.close()

    @property
    def rank(self) -> int:
        """This process's rank in the mirror's group (0 for one process)."""
        return self.link.rank if self.link is not None else 0

    @property
    def world_size(self) -> int:
        return self.link.world if self.link is not None else 1

    def __enter__(self) -> TorchMirror:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """A normal exit mirrors the tail (see :meth:`close`); an exception does not (the
        state may be half a step)."""
        self._close(tail=self.mirror_on_close and exc_type is None)


__all__ = ["TorchMirror"]
