"""``auto`` by measurement: the ways found here, the cached table (untrusted input), the choice
per call size and mode from a given table, and records identical whichever way sealed them."""

from __future__ import annotations

import glob
import json
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from plinius.core import crypto, crypto_choice, crypto_native, crypto_ways
from plinius.core.crypto import (
    OVERHEAD,
    Engine,
    PycryptodomeEngine,
    associated_data,
    make_engine,
)
from plinius.core.crypto_choice import AutoEngine, Plan, choose_plan
from plinius.core.crypto_native import OpenSSLEngine, load_libcrypto
from plinius.core.crypto_ways import SIZES, Table, Way
from plinius.core.errors import ConfigError, IntegrityError

KEY = bytes(range(16))
MiB = 1 << 20
CR, SYS1, SYS2, NEW1, NEW2 = (
    "cryptography/1",
    "openssl[3.0.22]/1",
    "openssl[3.0.22]/2",
    "openssl[3.5.9]/1",
    "openssl[3.5.9]/2",
)


def fake_table(speeds: dict[str, dict[int, tuple[float, float]]] | None = None) -> Table:
    """GB/s of wall time and of CPU time per way and size (the same for both ops), as seconds."""
    speeds = speeds or {
        # cryptography: fastest on one small call, flat CPU cost
        CR: {2 * MiB: (10.0, 10.0), 16 * MiB: (9.0, 9.0), 64 * MiB: (6.0, 6.0)},
        SYS1: {2 * MiB: (3.5, 3.5), 16 * MiB: (3.5, 3.5), 64 * MiB: (3.0, 3.0)},
        SYS2: {2 * MiB: (3.0, 2.9), 16 * MiB: (6.5, 3.2), 64 * MiB: (6.0, 3.0)},
        NEW1: {2 * MiB: (9.5, 9.5), 16 * MiB: (9.5, 9.6), 64 * MiB: (7.0, 7.0)},
        # the pool on the fast library: the wall-time winner for big calls, more CPU per byte
        NEW2: {2 * MiB: (8.0, 7.0), 16 * MiB: (12.0, 8.0), 64 * MiB: (13.0, 6.8)},
    }
    results = {
        op: {
            way: {size: (size / (w * 1e9), size / (c * 1e9)) for size, (w, c) in cells.items()}
            for way, cells in speeds.items()
        }
        for op in crypto_ways.OPS
    }
    return Table(key={"fake": True}, created="2026-01-01T00:00:00+00:00", results=results)


# --- the sizes --------------------------------------------------------------------------------


def test_measured_sizes_are_the_mirrors_calls() -> None:
    from plinius.format import mirror

    assert crypto_ways.SEGMENT == mirror.SEGMENT_BYTES
    want = {mirror.SEGMENT_BYTES, mirror._batch_bytes(0), mirror._SAVE_BATCH, 64 * MiB}
    assert tuple(sorted(want)) == SIZES


# --- the choice, from a given table -----------------------------------------------------------


def test_sync_takes_least_wall_time_per_size() -> None:
    plan = choose_plan(fake_table(), "sync")
    for op in ("seal", "open"):
        assert [w for _, w in plan.steps[op]] == [CR, NEW2, NEW2]
        assert plan.pick(op, 1) == CR  # below the smallest size: the smallest size's way
        assert plan.pick(op, 2 * MiB) == CR
        assert plan.pick(op, 5 * MiB) == CR  # nearer 2 MiB than 16 MiB on a log scale
        assert plan.pick(op, 6 * MiB) == NEW2
        assert plan.pick(op, 1 << 40) == NEW2
    assert plan.describe() == f"{CR} below 5.7 MiB, {NEW2} above"
    assert plan.used() == [CR, NEW2]


def test_async_takes_least_cpu_time_and_prefers_the_gil_released() -> None:
    plan = choose_plan(fake_table(), "async")
    # 2 MiB: cryptography is least CPU (10) but holds the GIL; openssl[3.5.9]/1 (9.5) is within
    # 10 % and releases it. 16 MiB: NEW1 (9.6) beats NEW2 (8.0). 64 MiB: NEW1 (7.0) beats NEW2.
    assert [w for _, w in plan.steps["seal"]] == [NEW1, NEW1, NEW1]
    assert plan.describe() == NEW1


def test_ties_go_to_fewer_threads_and_to_the_previous_size() -> None:
    speeds = {
        CR: {2 * MiB: (10.2, 10.2), 16 * MiB: (10.0, 10.0), 64 * MiB: (10.0, 10.0)},
        NEW1: {2 * MiB: (10.0, 10.0), 16 * MiB: (10.2, 10.2), 64 * MiB: (10.2, 10.2)},
        NEW2: {s: (10.4, 10.0) for s in (2 * MiB, 16 * MiB, 64 * MiB)},  # 2 %: noise, not speed
    }
    sync = choose_plan(fake_table(speeds), "sync")
    # one thread first; then the faster at 2 MiB, kept at the larger sizes where NEW1 is 2 %
    # faster (one way, not a switch on noise)
    assert [w for _, w in sync.steps["seal"]] == [CR, CR, CR]
    # async: all within 10 %, the GIL-released ways first, then fewer threads
    assert [w for _, w in choose_plan(fake_table(speeds), "async").steps["open"]] == [NEW1] * 3


def test_three_regimes_are_described_with_both_bounds() -> None:
    speeds = {
        CR: {2 * MiB: (10.0, 10.0), 16 * MiB: (5.0, 5.0), 64 * MiB: (5.0, 5.0)},
        NEW1: {2 * MiB: (5.0, 5.0), 16 * MiB: (10.0, 10.0), 64 * MiB: (5.0, 5.0)},
        NEW2: {2 * MiB: (5.0, 5.0), 16 * MiB: (5.0, 5.0), 64 * MiB: (10.0, 10.0)},
    }
    plan = choose_plan(fake_table(speeds), "sync")
    assert plan.describe() == f"{CR} below 5.7 MiB, {NEW1} 5.7 MiB-32.0 MiB, {NEW2} above"
    assert plan.as_dict()["seal"] == {"2.0 MiB": CR, "16.0 MiB": NEW1, "64.0 MiB": NEW2}


def test_bad_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="mode='fast'"):
        choose_plan(fake_table(), "fast")
    with pytest.raises(ConfigError, match="mode='fast'"):
        make_engine(KEY, mode="fast")


class Spy(PycryptodomeEngine):
    def __init__(self, key: bytes, name: str, calls: list[str]) -> None:
        super().__init__(key)
        self.label, self.calls = name, calls

    def encrypt_into(self, aad: bytes, plaintext: Any, out: memoryview) -> None:
        self.calls.append(f"{self.label}.encrypt_into")
        super().encrypt_into(aad, plaintext, out)

    def encrypt_many(self, jobs: Any) -> None:
        self.calls.append(f"{self.label}.encrypt_many")
        super().encrypt_many(jobs)

    def decrypt_into(self, aad: bytes, sealed: Any, out: Any, what: str) -> None:
        self.calls.append(f"{self.label}.decrypt_into")
        super().decrypt_into(aad, sealed, out, what)

    def decrypt_many(self, jobs: Any) -> None:
        self.calls.append(f"{self.label}.decrypt_many")
        super().decrypt_many(jobs)


def test_auto_engine_hands_each_call_to_the_way_of_its_total_size() -> None:
    plan = Plan(
        mode="sync",
        steps={
            "seal": ((2 * MiB, "small"), (16 * MiB, "big")),
            "open": ((2 * MiB, "big"), (16 * MiB, "small")),
        },
    )
    calls: list[str] = []
    engine = AutoEngine(
        KEY, plan, {"small": Spy(KEY, "small", calls), "big": Spy(KEY, "big", calls)}
    )
    assert engine.name == "auto" and engine.key_id == crypto.key_id(KEY)
    assert not engine.parallel and engine.threads == 1
    assert set(engine.ways_used()) == {"small", "big"}
    one = b"x" * 1000
    rec = bytearray(len(one) + OVERHEAD)
    engine.encrypt_into(b"a", one, memoryview(rec))
    back = bytearray(len(one))
    engine.decrypt_into(b"a", rec, back, "one")
    assert back == one and calls == ["small.encrypt_into", "big.decrypt_into"]
    calls.clear()
    data = [os.urandom(3 * MiB) for _ in range(4)]  # 12 MiB in all: nearer 16 than 2
    recs = [bytearray(len(d) + OVERHEAD) for d in data]
    engine.encrypt_many([(b"a", d, memoryview(r)) for d, r in zip(data, recs, strict=True)])
    backs = [bytearray(len(d)) for d in data]
    engine.decrypt_many(
        [(b"a", r, b, f"job {i}") for i, (r, b) in enumerate(zip(recs, backs, strict=True))]
    )
    assert backs == data
    assert [c for c in calls if c.endswith("_many")] == ["big.encrypt_many", "small.decrypt_many"]
    assert {c for c in calls if "encrypt" in c} == {"big.encrypt_many", "big.encrypt_into"}
    recs[2][-1] ^= 1
    with pytest.raises(IntegrityError, match="job 2"):
        engine.decrypt_many(
            [(b"a", r, b, f"job {i}") for i, (r, b) in enumerate(zip(recs, backs, strict=True))]
        )
    with pytest.raises(ConfigError, match="no engine for way"):
        AutoEngine(KEY, plan, {"small": Spy(KEY, "small", calls)})


# --- the cache: round trip, untrusted input, keys ---------------------------------------------


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """An empty cache directory, no table in this process, and a fake measurement counted."""
    monkeypatch.setenv(crypto_ways.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(crypto_ways, "_memo", {})
    state: dict[str, Any] = {"measured": 0}

    def fake_measure(ways: Any, *, rounds: int = 5, key: Any = None) -> Table:
        state["measured"] += 1
        t = fake_table()
        names = [w.name for w in ways]
        t.results = {op: {n: per.get(n, per[CR]) for n in names} for op, per in t.results.items()}
        # a real measurement has every size this machine measures (the restore batch's too)
        for per in t.results.values():
            for n, cells in per.items():
                per[n] = {s: cells.get(s, cells[2 * MiB]) for s in SIZES}
        t.key = key
        t.created = datetime.now(UTC).isoformat(timespec="seconds")
        return t

    monkeypatch.setattr(crypto_ways, "measure", fake_measure)
    state["ways"] = [
        Way("cryptography", 1),
        Way("openssl", 2, crypto_ways.Library("openssl[3.5.9]", "OpenSSL 3.5.9", "/x", "/x", "t")),
    ]
    yield state


def test_cache_round_trip(cache: dict[str, Any]) -> None:
    ways = cache["ways"]
    first = crypto_ways.table(ways)
    assert first.source == "measured now" and cache["measured"] == 1
    assert first.path is not None and first.path.parent == Path(os.environ["PLINIUS_CACHE_DIR"])
    crypto_ways._memo.clear()  # a new process
    again = crypto_ways.table(ways)
    assert cache["measured"] == 1 and again.source == "cached"
    assert again.results == first.results and again.created == first.created
    assert again.describe_source() == f"cached at {first.created} ({first.path})"
    assert crypto_ways.table(ways, remeasure=True).source == "measured now"
    assert cache["measured"] == 2


def test_a_table_measured_on_a_busy_machine_is_measured_again_once_it_is_quiet(
    cache: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A table timed while other work ran is kept while the machine stays busy (measuring
    again would be as noisy) and replaced by the first process that finds it quiet."""
    ways = cache["ways"]
    load = [3.5]
    monkeypatch.setattr(os, "getloadavg", lambda: (load[0], load[0], load[0]))
    busy = crypto_ways.table(ways)
    busy.load = load[0]  # what measure() records: the load before it ran
    crypto_ways.write_cache(busy)
    assert busy.provisional and cache["measured"] == 1
    crypto_ways._memo.clear()  # a new process, still busy: the provisional table is used
    assert crypto_ways.table(ways).source == "cached" and cache["measured"] == 1
    crypto_ways._memo.clear()
    load[0] = 0.1  # quiet now: measured again, and the new table is not provisional
    quiet = crypto_ways.table(ways)
    assert quiet.source == "measured now" and cache["measured"] == 2 and not quiet.provisional
    crypto_ways._memo.clear()
    assert crypto_ways.table(ways).source == "cached" and cache["measured"] == 2


def _planted(cache: dict[str, Any], content: bytes | None = None, doc: Any = None) -> Path:
    ways = cache["ways"]
    crypto_ways.table(ways)
    crypto_ways._memo.clear()
    path = crypto_ways.cache_path(crypto_ways.table_key(ways))
    path.write_bytes(content if content is not None else json.dumps(doc).encode())
    return path


def _valid_doc(cache: dict[str, Any]) -> dict[str, Any]:
    ways = cache["ways"]
    crypto_ways.table(ways)
    path = crypto_ways.cache_path(crypto_ways.table_key(ways))
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def _hostile_docs(doc: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    for change in (
        lambda d: d.update(format=99),
        lambda d: d.update(extra="x"),
        lambda d: d.update(path="/tmp/evil/libcrypto.so.3"),
        lambda d: d["results"]["seal"].update({"openssl[6.6.6]/64": d["results"]["seal"][CR]}),
        lambda d: d["results"]["seal"].update({"/tmp/evil.so/1": d["results"]["seal"][CR]}),
        lambda d: d["results"]["seal"].pop(CR),
        lambda d: d["results"]["open"][CR].update({str(2 * MiB): [-1, 1]}),
        lambda d: d["results"]["open"][CR].update({str(2 * MiB): [float("inf"), 1]}),
        lambda d: d["results"]["open"][CR].update({str(2 * MiB): ["fast", 1]}),
        lambda d: d["results"]["open"][CR].update({str(3 * MiB): [1, 1]}),
        lambda d: d.update(created="yesterday"),
        lambda d: d.update(created="2020-01-01T00:00:00+00:00"),  # too old
        lambda d: d.update(created="2999-01-01T00:00:00+00:00"),  # from the future
        lambda d: d.update(created="2026-01-01T00:00:00"),  # no time zone
        # a date ISO parsing accepts, with a forged line in it (`plinius engines` prints it)
        lambda d: d.update(created=d["created"].replace("T", "\n")),
        lambda d: d.update(created=d["created"].replace("T", "\x1b")),
        lambda d: d.update(load=True),
        lambda d: d["key"]["cpu"].update(model="another CPU"),
        lambda d: d.update(results=[]),
    ):
        bad = json.loads(json.dumps(doc))
        change(bad)
        out.append(bad)
    return [*out, [], "table", None, 42]


def test_hostile_cache_files_are_ignored_and_measured_again(cache: dict[str, Any]) -> None:
    ways = cache["ways"]
    doc = _valid_doc(cache)
    contents = [
        b"x" * (crypto_ways.CACHE_MAX_BYTES + 1),  # huge
        b"\x00\xff not json",
        b"[" * 100_000 + b"]" * 100_000,  # nesting deep enough to blow the parser's stack
        *(json.dumps(d).encode() for d in _hostile_docs(doc)),
    ]
    for i, content in enumerate(contents):
        _planted(cache, content)
        before = cache["measured"]
        got = crypto_ways.table(ways)
        assert got.source == "measured now" and cache["measured"] == before + 1, i
        crypto_ways._memo.clear()
        assert crypto_ways.table(ways).source == "cached", i  # and the cache was rewritten


def test_a_symlinked_or_special_cache_file_is_not_read(
    cache: dict[str, Any], tmp_path: Path
) -> None:
    ways = cache["ways"]
    doc = _valid_doc(cache)
    path = crypto_ways.cache_path(crypto_ways.table_key(ways))
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps(doc))
    path.unlink()
    path.symlink_to(elsewhere)
    crypto_ways._memo.clear()
    before = cache["measured"]
    assert crypto_ways.table(ways).source == "measured now" and cache["measured"] == before + 1
    assert not path.is_symlink() and elsewhere.read_text() == json.dumps(doc)  # replaced, not
    path.unlink()  # written through
    os.mkfifo(path)
    crypto_ways._memo.clear()
    assert crypto_ways.table(ways).source == "measured now"  # never blocks on a FIFO


def test_another_cpu_or_library_version_measures_again(
    cache: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    ways = cache["ways"]
    crypto_ways.table(ways)
    crypto_ways._memo.clear()
    assert crypto_ways.table(ways).source == "cached"
    model, flags = crypto_ways._cpu_model()
    monkeypatch.setattr(crypto_ways, "_cpu_model", lambda: (model, "0" * 16))
    crypto_ways._memo.clear()
    assert crypto_ways.table(ways).source == "measured now"
    monkeypatch.setattr(crypto_ways, "_cpu_model", lambda: (model, flags))
    monkeypatch.setattr(crypto_ways, "usable_cores", lambda: 64)
    crypto_ways._memo.clear()
    assert crypto_ways.table(ways).source == "measured now"
    monkeypatch.setattr(crypto_ways, "usable_cores", lambda: len(os.sched_getaffinity(0)))
    lib = crypto_ways.Library("openssl[3.5.10]", "OpenSSL 3.5.10", "/x", "/x", "t")
    crypto_ways._memo.clear()
    assert crypto_ways.table([ways[0], Way("openssl", 2, lib)]).source == "measured now"
    crypto_ways._memo.clear()
    assert crypto_ways.table(ways).source == "cached"  # the first machine's table is kept
    assert cache["measured"] == 4


def test_an_unwritable_cache_dir_warns_once_and_measures_per_process(
    cache: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv(crypto_ways.CACHE_ENV, str(tmp_path / "a-file" / "cache"))
    monkeypatch.setattr(crypto_ways, "_warned", set())
    ways = cache["ways"]
    got = crypto_ways.table(ways)
    assert got.source == "measured now" and got.path is None
    assert crypto_ways.table(ways) is got  # this process keeps it
    crypto_ways._memo.clear()
    crypto_ways.table(ways)
    err = capsys.readouterr().err
    assert err.count("warning: cannot write the crypto engine table") == 1
    assert len(err.strip().splitlines()) == 1


def test_cache_dir_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(crypto_ways.CACHE_ENV, str(tmp_path / "c"))
    assert crypto_ways.cache_dir() == tmp_path / "c"
    monkeypatch.delenv(crypto_ways.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert crypto_ways.cache_dir() == tmp_path / "xdg" / "plinius"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # the spec says: ignore it
    assert crypto_ways.cache_dir() == Path.home() / ".cache" / "plinius"


# --- the ways and the libraries found here ----------------------------------------------------


def _psycopg_libcrypto() -> str | None:
    for entry in sys.path:
        found = sorted(glob.glob(os.path.join(entry, "psycopg_binary.libs", "libcrypto*.so*")))
        if found:
            return found[0]
    return None


def test_discovery_finds_the_system_and_bundled_libraries() -> None:
    ways = crypto_ways.discover()
    names = [w.name for w in ways]
    assert "cryptography/1" in names and "pycryptodome/1" not in names
    libs = {w.library.label: w.library for w in ways if w.library is not None}
    system = [lib for lib in libs.values() if lib.origin == "system"]
    assert len(system) == 1 and system[0].load is None
    threads = crypto_native.default_threads()
    assert {w.threads for w in ways if w.library is not None} == {1, threads}
    bundled = _psycopg_libcrypto()
    if bundled is not None:
        found = [lib for lib in libs.values() if lib.origin == "psycopg-binary"]
        assert len(found) == 1 and os.path.realpath(found[0].path) == os.path.realpath(bundled)
        assert found[0].label.startswith("openssl[3.")


def test_the_default_libcrypto_and_the_bundled_one_both_seal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    default = OpenSSLEngine(KEY, threads=2)
    assert default.libcrypto.requested is None
    assert default.libcrypto.version_text.startswith("OpenSSL ")
    assert default.way == f"openssl[{default.libcrypto.version}]/2"
    bundled = _psycopg_libcrypto()
    others = [default]
    if bundled is not None:
        lib = load_libcrypto(bundled)
        assert load_libcrypto(bundled) is lib  # loaded once per process
        assert lib.version.startswith("3.") and lib.path == os.path.realpath(bundled)
        others.append(OpenSSLEngine(KEY, threads=2, libcrypto=bundled))
        monkeypatch.setenv(crypto_native.LIBCRYPTO_ENV, bundled)
        forced = OpenSSLEngine(KEY)
        assert forced.libcrypto is lib
        assert [w.library.origin for w in crypto_ways.discover() if w.library] == [
            "$PLINIUS_LIBCRYPTO"
        ] * len({1, crypto_native.default_threads()})
    data = [os.urandom(n) for n in (0, 5, 1 << 20, 3 << 20)]
    for a in others:
        for b in others:
            recs = [bytearray(len(d) + OVERHEAD) for d in data]
            a.encrypt_many([(b"x", d, memoryview(r)) for d, r in zip(data, recs, strict=True)])
            backs = [bytearray(len(d)) for d in data]
            b.decrypt_many([(b"x", r, k, "r") for r, k in zip(recs, backs, strict=True)])
            assert backs == data


def test_a_bad_libcrypto_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(crypto_native.LIBCRYPTO_ENV, "/nonexistent")
    for build in (lambda: OpenSSLEngine(KEY), lambda: make_engine(KEY)):
        with pytest.raises(ConfigError) as info:
            build()
        assert str(info.value) == (
            "PLINIUS_LIBCRYPTO='/nonexistent': not an existing libcrypto file"
        )
    not_a_lib = tmp_path / "libcrypto.so.3"
    not_a_lib.write_text("not an ELF file\n")
    monkeypatch.setenv(crypto_native.LIBCRYPTO_ENV, str(not_a_lib))
    with pytest.raises(ConfigError, match=r"cannot load libcrypto .*libcrypto\.so\.3: ") as info:
        OpenSSLEngine(KEY)
    assert "\n" not in str(info.value)
    monkeypatch.delenv(crypto_native.LIBCRYPTO_ENV)
    with pytest.raises(ConfigError, match="cannot load libcrypto"):
        OpenSSLEngine(KEY, libcrypto=str(tmp_path / "missing.so"))
    with pytest.raises(ConfigError, match="no symbol EVP_CIPHER_CTX_new"):
        OpenSSLEngine(KEY, libcrypto="libc.so.6")


def test_serial_below_is_gone_but_zero_is_accepted() -> None:
    assert OpenSSLEngine(KEY, serial_below=0).serial_below == 0
    with pytest.raises(ConfigError, match="use the auto engine"):
        OpenSSLEngine(KEY, serial_below=1 << 20)
    assert not hasattr(crypto_native, "DEFAULT_SERIAL_BELOW")


# --- records: the same bytes whichever way sealed them ----------------------------------------


class Stream:
    """One random byte stream for every IV draw, per buffer or per batch alike: each way that
    seals the same jobs in the same order gets the same IVs."""

    POOL = os.urandom(1 << 16)

    def __init__(self) -> None:
        self.at = 0

    def __call__(self, n: int) -> bytes:
        out = self.POOL[self.at : self.at + n]
        self.at += n
        assert len(out) == n
        return out


def _every_way() -> dict[str, Engine]:
    engines = {w.name: crypto_ways.build(w, KEY) for w in crypto_ways.discover()}
    engines["pycryptodome/1"] = PycryptodomeEngine(KEY)
    engines["auto"] = make_engine(KEY)
    engines["auto-async"] = make_engine(KEY, mode="async")
    return engines


def test_every_way_writes_the_same_records_and_opens_every_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engines = _every_way()
    data = [os.urandom(n) for n in (0, 1, 4096, 100_003, 2 * MiB, 2 * MiB + 5)]
    aads = [associated_data(b"m" * 32, i, f"b{i}", 3) for i in range(len(data))]
    sealed: dict[str, list[bytearray]] = {}
    for name, engine in engines.items():
        stream = Stream()
        monkeypatch.setattr(crypto, "random_bytes", stream)
        monkeypatch.setattr(crypto_native, "random_bytes", stream)
        recs = [bytearray(len(d) + OVERHEAD) for d in data]
        engine.encrypt_many(
            [(a, d, memoryview(r)) for a, d, r in zip(aads, data, recs, strict=True)]
        )
        single = bytearray(len(data[3]) + OVERHEAD)
        engine.encrypt_into(aads[3], data[3], memoryview(single))
        sealed[name] = [*recs, single]
    reference = sealed["pycryptodome/1"]
    for name, recs in sealed.items():
        assert recs == reference, name
    for name, engine in engines.items():
        backs = [bytearray(len(d)) for d in data]
        engine.decrypt_many(
            [
                (a, r, b, f"job {i}")
                for i, (a, r, b) in enumerate(zip(aads, reference[:-1], backs, strict=True))
            ]
        )
        assert backs == data, name
        back = bytearray(len(data[3]))
        engine.decrypt_into(aads[3], reference[-1], back, "single")
        assert back == data[3], name


def test_auto_records_its_choice_for_reports() -> None:
    engine = make_engine(KEY)
    choice = crypto_choice.last_choice
    assert choice["chosen"] == engine.name and choice["mode"] == "sync"
    assert choice["installed"][0] == "openssl"
    assert choice["note"] == engine.describe()
    assert choice["how"].startswith("measured here")
    assert choice["table_source"] == "measured now" or choice["table_source"].startswith(
        "cached at "
    )
    assert "cores" in choice["cpu"] and choice["libcrypto"]
    assert set(choice["ways"]) == {"seal", "open"}
    used = set(engine.ways_used())
    assert {w for per in choice["ways"].values() for w in per.values()} == used
    assert engine.parallel == any(e.parallel for e in engine.ways_used().values())


def test_the_engine_env_still_forces_one(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("openssl", "cryptography", "pycryptodome"):
        monkeypatch.setenv(crypto_choice.ENV, name)
        assert make_engine(KEY).name == name
        assert crypto_choice.last_choice["how"] == "$PLINIUS_CRYPTO_ENGINE"
    monkeypatch.setenv(crypto_choice.ENV, "rot13")
    with pytest.raises(ConfigError, match="PLINIUS_CRYPTO_ENGINE='rot13'"):
        make_engine(KEY)


def test_only_one_way_installed_means_no_measuring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crypto_ways, "discover", lambda: [Way("pycryptodome", 1)])

    def boom(*_: Any, **__: Any) -> Table:
        raise AssertionError("measured")

    monkeypatch.setattr(crypto_ways, "table", boom)
    engine = make_engine(KEY)
    assert engine.name == "pycryptodome" and engine.describe() == "pycryptodome/1"
    assert crypto_choice.last_choice["how"] == "the only way installed"
