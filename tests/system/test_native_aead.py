"""The native ``openssl`` engine (native/aead.c): same records as the Python engines, batches on
several threads, every tag checked, the first failing job named, sizes refused before C."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from plinius.core import crypto_choice, crypto_native
from plinius.core.crypto import (
    IV_BYTES,
    OVERHEAD,
    TAG_BYTES,
    CryptographyEngine,
    Engine,
    PycryptodomeEngine,
    associated_data,
    available_engines,
    make_engine,
)
from plinius.core.crypto_native import OpenSSLEngine
from plinius.core.errors import ConfigError, IntegrityError
from plinius.core.memory import aligned_empty

KEY = bytes(range(16))
SIZES = [0, 1, 15, 16, 17, (1 << 20) + 3, 5, 4096, 100_000]


def aad(i: int) -> bytes:
    return associated_data(b"m" * 32, i, f"buf{i}", 7)


def plaintexts(seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in SIZES]


def seal_many(engine: Engine, data: list[bytes]) -> list[bytearray]:
    outs = [bytearray(len(d) + OVERHEAD) for d in data]
    engine.encrypt_many(
        [(aad(i), d, memoryview(o)) for i, (d, o) in enumerate(zip(data, outs, strict=True))]
    )
    return outs


def open_many(engine: Engine, sealed: list[bytearray], sizes: list[int]) -> list[bytes]:
    backs = [bytearray(n) for n in sizes]
    engine.decrypt_many(
        [
            (aad(i), s, memoryview(b), f"job {i}")
            for i, (s, b) in enumerate(zip(sealed, backs, strict=True))
        ]
    )
    return [bytes(b) for b in backs]


@pytest.fixture(params=[1, 3], ids=["1-thread", "3-threads"])
def native(request: pytest.FixtureRequest) -> Iterator[OpenSSLEngine]:
    yield OpenSSLEngine(KEY, threads=request.param)


def test_built_and_auto_measured_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # CI installs libssl-dev: the native engine must build there and be one of the ways "auto"
    # measured (which way wins where is measured per machine: tests/unit/test_crypto_ways.py)
    assert crypto_native.usable()
    assert available_engines()[0] == "openssl"
    monkeypatch.delenv(crypto_choice.ENV, raising=False)
    engine = make_engine(KEY)
    choice = crypto_choice.last_choice
    assert choice["chosen"] == engine.name and choice["how"].startswith("measured here")
    assert choice["libcrypto"] and choice["table_source"]


def test_every_call_runs_in_c(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small or big, one buffer or a batch: the native engine never hands a call elsewhere
    (splitting calls between ways is auto's job, by measurement)."""
    engine = OpenSSLEngine(KEY, threads=2)
    calls: list[str] = []
    lib = engine._lib

    class Spy:
        def __getattr__(self, name: str) -> object:
            calls.append(name)
            return getattr(lib, name)

    monkeypatch.setattr(engine, "_lib", Spy())
    small = [b"x" * 1000, b"y" * 5000]
    big = [bytes(range(256)) * 4096, b"z" * 100]
    for data in (small, big):
        calls.clear()
        sealed = seal_many(engine, data)
        assert open_many(CryptographyEngine(KEY), sealed, [len(d) for d in data]) == data
        assert open_many(engine, sealed, [len(d) for d in data]) == data
        assert calls == ["plx_aead_seal_many", "plx_aead_open_many"]
    calls.clear()
    out = bytearray(len(big[0]) + OVERHEAD)
    engine.encrypt_into(b"a", big[0], memoryview(out))
    assert calls == ["plx_aead_seal"]
    tampered = bytearray(sealed[0])
    tampered[-1] ^= 1
    with pytest.raises(IntegrityError, match="job 0"):
        open_many(engine, [bytes(tampered), sealed[1]], [len(d) for d in big])


def test_auto_can_be_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("openssl", "pycryptodome"):
        monkeypatch.setenv(crypto_choice.ENV, name)
        assert make_engine(KEY).name == name
    monkeypatch.setenv(crypto_choice.ENV, "rot13")
    with pytest.raises(ConfigError, match="PLINIUS_CRYPTO_ENGINE='rot13'"):
        make_engine(KEY)


@pytest.mark.parametrize("python_engine", [CryptographyEngine, PycryptodomeEngine])
def test_interop_both_ways(native: OpenSSLEngine, python_engine: type[Engine]) -> None:
    other = python_engine(KEY)
    data = plaintexts()
    assert open_many(other, seal_many(native, data), SIZES) == data
    assert open_many(native, seal_many(other, data), SIZES) == data
    for i, d in enumerate(data):  # the single-buffer calls too
        out = bytearray(len(d) + OVERHEAD)
        native.encrypt_into(aad(i), d, memoryview(out))
        back = bytearray(len(d))
        other.decrypt_into(aad(i), out, back, "x")
        assert back == d
        other.encrypt_into(aad(i), d, memoryview(out))
        native.decrypt_into(aad(i), out, back, "x")
        assert back == d


def test_fresh_iv_per_job(native: OpenSSLEngine) -> None:
    sealed = seal_many(native, [b"same"] * 8)
    assert len({bytes(s[:IV_BYTES]) for s in sealed}) == 8


def test_thread_count_does_not_change_records(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the IVs pinned, 1 thread, 3 threads and ``cryptography`` write identical bytes."""
    data = plaintexts(1) * 3
    ivs = os.urandom(IV_BYTES * len(data))
    monkeypatch.setattr(crypto_native, "random_bytes", lambda n: ivs[:n])
    one = seal_many(OpenSSLEngine(KEY, threads=1), data)
    many = seal_many(OpenSSLEngine(KEY, threads=3), data)
    assert one == many
    reference = CryptographyEngine(KEY)
    for i, d in enumerate(data):
        ct = bytearray(len(d) + TAG_BYTES)
        reference._encrypt(
            ivs[IV_BYTES * i : IV_BYTES * (i + 1)], aad(i), memoryview(d), memoryview(ct)
        )
        assert one[i] == ivs[IV_BYTES * i : IV_BYTES * (i + 1)] + ct


def test_numpy_arrays_in_place(native: OpenSSLEngine) -> None:
    arrays = [np.arange(n, dtype=np.float32) for n in (0, 3, 70_000)]
    outs = [np.empty(a.nbytes + OVERHEAD, np.uint8) for a in arrays]
    native.encrypt_many(
        [(aad(i), a, o.data) for i, (a, o) in enumerate(zip(arrays, outs, strict=True))]
    )
    backs = [np.zeros_like(a) for a in arrays]
    native.decrypt_many(
        [(aad(i), o, b, f"a{i}") for i, (o, b) in enumerate(zip(outs, backs, strict=True))]
    )
    for a, b in zip(arrays, backs, strict=True):
        assert np.array_equal(a, b)


def tamper_positions(n: int) -> list[int]:
    """First and last byte of the IV, the ciphertext (when there is one) and the tag."""
    record = n + OVERHEAD
    spots = {0, IV_BYTES - 1, record - TAG_BYTES, record - 1}
    if n:
        spots |= {IV_BYTES, IV_BYTES + n // 2, IV_BYTES + n - 1}
    return sorted(spots)


def test_tamper_any_byte_of_any_job_names_that_job(native: OpenSSLEngine) -> None:
    data = plaintexts(2)
    sealed = seal_many(native, data)
    for job, n in enumerate(SIZES):
        for pos in tamper_positions(n):
            sealed[job][pos] ^= 0x40
            with pytest.raises(IntegrityError, match=rf"job {job}: tag mismatch"):
                open_many(native, sealed, SIZES)
            sealed[job][pos] ^= 0x40
    assert open_many(native, sealed, SIZES) == data


def test_first_failing_job_in_list_order_is_named(native: OpenSSLEngine) -> None:
    sealed = seal_many(native, plaintexts(3))
    for job in (8, 5, 2):  # the big job 5 is claimed first by the threads, job 2 is still named
        sealed[job][-1] ^= 1
    with pytest.raises(IntegrityError, match=r"job 2: tag mismatch"):
        open_many(native, sealed, SIZES)


def test_short_record_and_tag_failure_named_in_list_order(native: OpenSSLEngine) -> None:
    sealed = seal_many(native, plaintexts(4))
    sizes = list(SIZES)
    sealed[3][-1] ^= 1
    sealed[6] = bytearray(OVERHEAD - 1)
    sizes[6] = 0
    with pytest.raises(IntegrityError, match=r"job 3: tag mismatch"):
        open_many(native, sealed, sizes)
    sealed[3][-1] ^= 1
    with pytest.raises(IntegrityError, match=r"job 6: sealed buffer is 27 B, shorter than 28 B"):
        open_many(native, sealed, sizes)


def test_aad_binds_each_job(native: OpenSSLEngine) -> None:
    data = plaintexts(5)
    sealed = seal_many(native, data)
    backs = [bytearray(n) for n in SIZES]
    jobs = [(aad(i), s, b, f"job {i}") for i, (s, b) in enumerate(zip(sealed, backs, strict=True))]
    jobs[4] = (aad(99), sealed[4], backs[4], "job 4")
    with pytest.raises(IntegrityError, match=r"job 4: tag mismatch"):
        native.decrypt_many(jobs)


def test_wrong_key_fails(native: OpenSSLEngine) -> None:
    sealed = seal_many(native, plaintexts(6))
    with pytest.raises(IntegrityError, match=r"job 0: tag mismatch"):
        open_many(OpenSSLEngine(bytes(16), threads=native.threads), sealed, SIZES)


def test_wrong_sizes_are_value_errors_before_c(native: OpenSSLEngine) -> None:
    with pytest.raises(ValueError, match=r"job 1: output is 12 B, encrypting 3 B needs 31 B"):
        native.encrypt_many(
            [(b"", b"ok", memoryview(bytearray(30))), (b"", b"abc", memoryview(bytearray(12)))]
        )
    sealed = seal_many(native, [b"abcd"])
    with pytest.raises(ValueError, match=r"job 0: output is 5 B, sealed buffer holds 4 B"):
        native.decrypt_many([(aad(0), sealed[0], bytearray(5), "x")])
    with pytest.raises(ValueError, match="needs 32 B"):
        native.encrypt_into(b"", b"abcd", memoryview(bytearray(31)))
    with pytest.raises(ValueError, match="read-only"):
        native.encrypt_many([(b"", b"abcd", memoryview(bytes(32)))])
    with pytest.raises(ValueError, match="read-only"):
        native.decrypt_many([(aad(0), sealed[0], bytes(4), "x")])


def test_empty_batches_and_bad_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = OpenSSLEngine(KEY, threads=2)
    engine.encrypt_many([])
    engine.decrypt_many([])
    with pytest.raises(ConfigError, match="at least one thread"):
        OpenSSLEngine(KEY, threads=0)
    monkeypatch.setenv(crypto_native.THREADS_ENV, "3")
    assert OpenSSLEngine(KEY).threads == 3
    monkeypatch.setenv(crypto_native.THREADS_ENV, "lots")
    with pytest.raises(ConfigError, match="PLINIUS_AEAD_THREADS='lots'"):
        OpenSSLEngine(KEY)


def test_spawned_threads_give_the_same_records() -> None:
    engine = OpenSSLEngine(KEY, threads=3, spawn=True)
    data = plaintexts(7)
    sealed = seal_many(engine, data)
    assert open_many(CryptographyEngine(KEY), sealed, SIZES) == data
    assert open_many(engine, sealed, SIZES) == data


def test_the_gil_is_released_during_the_c_call() -> None:
    """With thread switching by the interpreter made rare, the main thread can run while a
    worker thread is inside the C call only if that call released the GIL."""
    engine = OpenSSLEngine(KEY, threads=1)
    n = 64 << 20
    plain = aligned_empty(n)
    plain[:] = 1
    sealed = aligned_empty(n + OVERHEAD)
    engine.encrypt_into(b"", plain, sealed.data)
    back = aligned_empty(n)
    overlapped = []
    old = sys.getswitchinterval()
    sys.setswitchinterval(30.0)
    try:
        for _ in range(5):  # a loaded machine may not wake this thread within one call
            done: list[int] = []

            def open_big(done: list[int] = done) -> None:
                engine.decrypt_into(b"", sealed, back, "big")
                done.append(1)

            worker = threading.Thread(target=open_big)
            worker.start()  # returns once the worker gives up the GIL: in C, or when finished
            overlapped.append(not done)
            worker.join()
            if overlapped[-1]:
                break
    finally:
        sys.setswitchinterval(old)
    assert any(overlapped)
    assert np.array_equal(back, plain)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_works_in_a_forked_child() -> None:
    """The parent's workers do not exist after fork(): the child builds its own C engine."""
    engine = OpenSSLEngine(KEY, threads=2)
    data = plaintexts(8)
    sealed = seal_many(engine, data)  # starts the parent's workers
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        ok = False
        try:
            ok = open_many(engine, seal_many(engine, data), SIZES) == data
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert open_many(engine, sealed, SIZES) == data
