"""Concurrent in-flight mirrors (``max_in_flight=K``): up to K snapshots wait for their persist,
which run one at a time and commit in version order; a mirror waits only when K are pending;
the first error surfaces at the next mirror, flush or close and the mirrors queued after it
are never written.

Persist timing is controlled by a backend whose writes wait on a gate the test opens: no
sleep is a claim about speed (a short ``join`` timeout only checks that a call is still
blocked, which a slow machine can only make pass more often, never fail)."""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from plinius.backends.base import WriteTxn
from plinius.backends.tmpfs import TmpfsBackend
from plinius.core.crypto import generate_key, write_key_file
from plinius.core.errors import BackendError, ConfigError
from plinius.enclave.counter import MirrorCounters
from plinius.enclave.platform import SimulatedPlatform
from plinius.enclave.trusted import Enclave, check_max_in_flight
from plinius.format.mirror import Record
from plinius.nn import Network, load_model
from plinius.session import Session

BLOCKED_S = 0.2  # how long a call that must block is watched before the gate opens
DONE_S = 30.0  # how long a call that must return may take (a generous bound, never a claim)


class GatedBackend(TmpfsBackend):
    """tmpfs whose every write transaction first says it started, then waits for the gate
    (one ``release()`` per write), or fails with a BackendError when told to."""

    def __init__(self, location: str, **options: Any) -> None:
        super().__init__(location, **options)
        self.started: queue.Queue[int] = queue.Queue()
        self.gate = threading.Semaphore(0)
        self.writes = 0
        self.fail_next = False
        self.open_gate = False

    def begin_write(self, blob: str, size: int) -> WriteTxn:
        self.writes += 1
        self.started.put(self.writes)
        if not self.open_gate and not self.gate.acquire(timeout=DONE_S):
            raise BackendError("test gate never opened")
        if self.fail_next:
            self.fail_next = False
            raise BackendError("gated backend: this write fails")
        return super().begin_write(blob, size)

    def release(self, n: int = 1) -> None:
        for _ in range(n):
            self.gate.release()


@pytest.fixture
def run(tmp_path: Path) -> Iterator[tuple[Session, GatedBackend]]:
    key = tmp_path / "k.key"
    write_key_file(key, generate_key())
    platform = SimulatedPlatform(tmp_path / "cpu", state_dir=tmp_path / "state")
    s = Session(load_model("tiny"), label="tiny", key_file=key, platform=platform, say=print)
    backend = GatedBackend(str(tmp_path / "m"))
    s.adopt(backend)
    yield s, backend
    backend.open_gate = True
    backend.release(100)
    s.close()


def _net(s: Session) -> Network:
    assert isinstance(s.model, Network)
    return s.model


def _advance(s: Session, value: float) -> None:
    """A training step stand-in: one more iteration, every buffer set to ``value``."""
    net = _net(s)
    net.seen += net.batch
    net.arena.fill(np.float32(value))


def _digest(records: list[Record]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(np.ascontiguousarray(r.array).tobytes())
    return h.hexdigest()


class Spy:
    """Wraps the enclave's persist: versions and iterations in the order they ran, the digest
    of what each wrote, and the most mirrors in flight seen while one ran."""

    def __init__(self, enclave: Enclave) -> None:
        self.enclave = enclave
        self.ran: list[tuple[int, int, str]] = []
        self.most_in_flight = 0
        real: Callable[..., Any] = enclave._persist

        def persist(
            records: list[Record], version: int, iteration: int, meta: Any, *more: Any
        ) -> Any:
            self.most_in_flight = max(self.most_in_flight, enclave.ecall_in_flight())
            out = real(records, version, iteration, meta, *more)
            self.ran.append((version, iteration, _digest(records)))
            return out

        enclave._persist = persist  # type: ignore[method-assign]


def _in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def body() -> None:
        try:
            fn()
        except BaseException as exc:  # handed to the test
            errors.append(exc)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, errors


def _committed(s: Session) -> int | None:
    guard = s.enclave._guard
    assert guard is not None
    state = MirrorCounters(s.platform).read(guard.slot)
    return None if state is None or state.committed is None else state.committed.version


def _attach(s: Session, b: GatedBackend, k: int) -> Spy:
    s.attach(b, asynchronous=True, max_in_flight=k)
    return Spy(s.enclave)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_the_loop_waits_only_when_k_snapshots_are_pending(
    run: tuple[Session, GatedBackend], k: int
) -> None:
    s, b = run
    spy = _attach(s, b, k)
    assert len(s.enclave._snapshots) == k  # K buffers, allocated once
    buffers = [id(a) for a in s.enclave._snapshots]
    for i in range(k):  # every persist held at the gate: none of these mirrors may wait
        _advance(s, i)
        t, errors = _in_thread(s.mirror)
        t.join(DONE_S)
        assert not t.is_alive() and not errors, "a mirror waited with fewer than K pending"
        assert s.enclave.ecall_in_flight() == i + 1
    b.started.get(timeout=DONE_S)  # the oldest is being written, the rest wait behind it
    _advance(s, k)
    t, errors = _in_thread(s.mirror)  # K pending: this one waits for the oldest
    t.join(BLOCKED_S)
    assert t.is_alive(), "a mirror did not wait with K snapshots pending"
    assert s.enclave.ecall_in_flight() == k
    b.release()  # the oldest commits: the waiting mirror goes on
    t.join(DONE_S)
    assert not t.is_alive() and not errors
    assert s.enclave.ecall_in_flight() == k
    b.open_gate = True
    b.release(k + 1)
    s.flush()
    assert s.enclave.ecall_in_flight() == 0
    assert [id(a) for a in s.enclave._snapshots] == buffers  # reused, never reallocated
    assert spy.most_in_flight <= k
    assert [v for v, _, _ in spy.ran] == list(range(1, k + 2))
    assert _committed(s) == k + 1


def test_each_queued_persist_commits_in_order_what_was_snapshotted(
    run: tuple[Session, GatedBackend],
) -> None:
    s, b = run
    spy = _attach(s, b, 4)
    want = []
    for i in range(4):
        _advance(s, 10 + i)
        want.append((i + 1, _net(s).iteration, _digest(_records_now(s))))
        s.mirror()
    _advance(s, 99)  # the live state moves on while the four wait: their snapshots do not
    b.open_gate = True
    b.release(4)
    s.flush()
    assert spy.ran == want
    assert _committed(s) == 4


def _records_now(s: Session) -> list[Record]:
    return [Record(layer, name, arr) for layer, name, arr in _net(s).mirror_buffers()]


def test_flush_waits_for_every_pending_mirror(run: tuple[Session, GatedBackend]) -> None:
    s, b = run
    _attach(s, b, 3)
    for i in range(3):
        _advance(s, i)
        s.mirror()
    t, errors = _in_thread(s.flush)
    for n in range(3):
        b.started.get(timeout=DONE_S)
        t.join(BLOCKED_S)
        assert t.is_alive(), f"flush returned with {3 - n} mirrors not written"
        b.release()
    t.join(DONE_S)
    assert not t.is_alive() and not errors
    assert s.enclave.ecall_in_flight() == 0 and _committed(s) == 3


@pytest.mark.parametrize("surface", ["mirror", "flush", "close"])
def test_a_failed_persist_surfaces_once_and_nothing_queued_after_it_commits(
    run: tuple[Session, GatedBackend], surface: str
) -> None:
    s, b = run
    spy = _attach(s, b, 3)
    b.open_gate = True
    _advance(s, 1)
    s.mirror()
    s.flush()  # version 1 committed
    b.open_gate = False
    b.fail_next = True
    for i in range(3):  # versions 2 (fails), 3 and 4 (queued behind it)
        _advance(s, 2 + i)
        s.mirror()
    b.release()
    call = {"mirror": s.mirror, "flush": s.flush, "close": s.close}[surface]
    with pytest.raises(BackendError, match="this write fails"):
        call()
    assert b.writes == 2  # versions 3 and 4 never reached the backend
    assert [v for v, _, _ in spy.ran] == [1]
    assert _committed(s) == 1
    assert s.enclave.ecall_in_flight() == 0
    if surface == "close":
        return
    b.open_gate = True  # the error was said once: mirroring goes on
    s.flush()
    _advance(s, 7)
    s.mirror()
    s.flush()
    assert _committed(s) == spy.ran[-1][0] and spy.ran[-1][0] > 4
    assert len(s.enclave._free) == 3


def test_close_drains_every_pending_mirror_and_a_restore_gets_the_last(
    run: tuple[Session, GatedBackend], tmp_path: Path
) -> None:
    s, b = run
    _attach(s, b, 4)
    for i in range(3):
        _advance(s, 20 + i)
        s.mirror()
    last = _digest(_records_now(s))
    iteration = _net(s).iteration
    t, errors = _in_thread(s.close)
    t.join(BLOCKED_S)
    assert t.is_alive(), "close returned before the pending mirrors were written"
    b.release(3)
    t.join(DONE_S)
    assert not t.is_alive() and not errors
    again = Session(
        load_model("tiny"),
        label="tiny",
        key_file=tmp_path / "k.key",
        platform=s.platform,
        say=print,
    )
    try:
        again.attach(again.open(f"tmpfs:{tmp_path / 'm'}", mirror_bytes=1 << 20))
        assert again.restore().iteration == iteration
        assert _digest(_records_now(again)) == last
    finally:
        again.close()


def test_max_in_flight_is_checked_in_one_line(run: tuple[Session, GatedBackend]) -> None:
    s, b = run
    for bad in (0, -1, True, 1.5, "2"):
        with pytest.raises(ConfigError, match=r"^max_in_flight=.*: must be an int >= 1$"):
            s.attach(b, asynchronous=True, max_in_flight=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^max_in_flight=2: .*asynchronous"):
        s.attach(b, asynchronous=False, max_in_flight=2)
    assert check_max_in_flight(1, False) == 1 and check_max_in_flight(3) == 3
    s.attach(b, asynchronous=True, max_in_flight=2)
    s.enclave.ecall_set_async(True, 3)  # another K: flushed, then K buffers again
    assert len(s.enclave._snapshots) == 3
    s.enclave.ecall_set_async(False)
    assert s.enclave._snapshots == []


def test_the_trainer_flag_is_checked(tmp_path: Path) -> None:
    from plinius.apps.trainer import TrainOptions, check_options

    key = tmp_path / "k.key"
    write_key_file(key, generate_key())
    base = {"model": "tiny", "backend": f"tmpfs:{tmp_path / 'm'}", "key_file": str(key)}
    with pytest.raises(ConfigError, match=r"^--max-in-flight 2: .*--async-mirror$"):
        check_options(TrainOptions(**base, max_in_flight=2))
    with pytest.raises(ConfigError, match=r"^--max-in-flight 0 is outside 1\.\."):
        check_options(TrainOptions(**base, async_mirror=True, max_in_flight=0))
    check_options(TrainOptions(**base, async_mirror=True, max_in_flight=4))


def test_torch_mirror_checks_it_before_anything(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import torch

    from plinius.torch import TorchMirror

    model = torch.nn.Linear(2, 2)
    key = tmp_path / "k.key"
    write_key_file(key, generate_key())
    with pytest.raises(ConfigError, match=r"^max_in_flight=2: "):
        TorchMirror(model, backend=f"tmpfs:{tmp_path / 'm'}", key_file=str(key), max_in_flight=2)
    assert not (tmp_path / "m").exists()
    platform = SimulatedPlatform(tmp_path / "cpu", state_dir=tmp_path / "state")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with TorchMirror(
        model,
        opt,
        backend=f"tmpfs:{tmp_path / 'm'}",
        key_file=str(key),
        asynchronous=True,
        max_in_flight=3,
        platform=platform,
    ) as m:
        for it in range(1, 6):
            model(torch.ones(1, 2)).sum().backward()
            opt.step()
            m.step(it)
        assert len(m._session.enclave._snapshots) == 3
        m.flush()
        assert m._session.enclave.ecall_in_flight() == 0


def test_the_bench_runs_and_says_what_it_found() -> None:
    """The measurement end to end at its smallest (no figure is asserted: a speed is not a
    unit test's business), and its table and sentence from a result document."""
    from plinius.lab.bench import inflight
    from plinius.lab.bench.sections.inflight import render

    result = inflight.measure(every=(1, 2), ks=(1, 2), rounds=1, steps=4)
    doc = result.as_dict()
    assert {(r["every"], r["k"]) for r in doc["rows"]} == {(1, 1), (1, 2), (2, 1), (2, 2)}
    assert doc["persist_over_step"] > 0 and doc["mirror_bytes"] > 1 << 20
    lines = render({"inflight": doc})
    assert lines[0].startswith("## Mirrors in flight") and "| K=1 | K=2 |" in lines[4]
    assert lines[-2] == doc["finding"] and doc["finding"].startswith("K > 1 lowered")
    assert render({}) == []


def test_the_finding_follows_the_figures() -> None:
    from plinius.lab.bench.inflight import finding
    from plinius.lab.bench.stats import Interval

    def row(m: int, k: int, lo: float) -> dict[str, object]:
        vs = None if k == 1 else Interval(1.2, lo, 1.5, 7, True).as_json()
        return {"every": m, "k": k, "vs_k1": vs}

    rows = [row(1, 1, 0), row(1, 4, 0.9), row(4, 1, 0), row(4, 4, 1.05)]
    said = finding(rows, 2.0)
    assert said.startswith("K > 1 lowered the overhead beyond the noise at M = 4;")
    assert "at M = 1 a persist (2.0 steps measured alone) outlasts" in said
    assert "at M = 4 it fits in the interval" in said
    assert "at no interval" in finding([row(1, 1, 0), row(1, 4, 0.9)], 3.0)


def test_k_has_an_upper_bound_in_one_line() -> None:
    from plinius.enclave.trusted import MAX_IN_FLIGHT

    assert check_max_in_flight(MAX_IN_FLIGHT) == MAX_IN_FLIGHT
    with pytest.raises(ConfigError, match=f"at most {MAX_IN_FLIGHT}"):
        check_max_in_flight(MAX_IN_FLIGHT + 1)


def test_the_background_seal_uses_the_engine_chosen_for_asynchronous_mirrors(
    run: tuple[Session, GatedBackend],
) -> None:
    """Asynchronous mirrors share the cores with training: their seal goes through the engine
    ``make_engine(key, mode="async")`` built for the data key, a synchronous one through the
    enclave's main engine."""
    s, b = run
    b.open_gate = True
    enclave = s.enclave
    assert enclave._async_engine is not None and enclave._engine is not None
    assert enclave._async_engine.key_id == enclave._engine.key_id
    calls = {"sync": 0, "async": 0}
    for mode, eng in (("sync", enclave._engine), ("async", enclave._async_engine)):
        original = eng.encrypt_many

        def counted(jobs: Any, _orig: Any = original, _mode: str = mode) -> None:
            calls[_mode] += 1
            _orig(jobs)

        eng.encrypt_many = counted  # type: ignore[method-assign]
    if enclave._async_engine is enclave._engine:
        pytest.fail("one engine object for both modes: the count cannot tell them apart")
    s.attach(b, asynchronous=True)
    enclave.ecall_mirror()
    enclave.ecall_flush()
    assert calls["async"] >= 1 and calls["sync"] == 0
    s.attach(b, asynchronous=False)
    enclave.ecall_mirror()
    assert calls["sync"] >= 1
