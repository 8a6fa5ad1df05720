"""What one mirror save's freshness work costs on each platform: the simulated CPU, and a TPM 2.0
(here swtpm, a software TPM: there is no hardware TPM on the machines this runs on).

Why it needs a measurement of its own: every save calls :meth:`MirrorCounters.begin` and
:meth:`MirrorCounters.commit`, and what they cost depends on the platform's store. The simulated
CPU writes a sealed record with an ``fdatasync`` (begin) and once more unflushed (commit). The
TPM platform opens a connection per change, reads its NV counter and moves it twice around an
fsync'd table write (:mod:`plinius.enclave.counter_table`): 4 NV increments per save, unless
``counter_every`` lets changes between two moves rewrite the table at the same value, which
costs a rollback window (:meth:`CounterEvery.describe`).

How it is measured, in one process: the contenders (the simulated CPU, swtpm with
``counter_every`` 1, 8 and 30s, and the raw swtpm primitives) run in interleaved rounds,
order rotated (:func:`plinius.lab.bench.contenders.run_rounds`). A save contender's sample in a
round is the *mean* time per save of ``saves`` saves on one slot (fresh stamp, version + 1),
not a median, because with ``counter_every=8`` one save in four moves the counter and the
amortised cost is the figure a trainer pays; ``saves`` is a multiple of 4 so every round holds
the same number of moves. A primitive's sample is its mean time per call over ``calls`` calls.
Figures are medians over rounds with bootstrap 95 % intervals (:mod:`plinius.lab.bench.stats`).
NV increments per save are counted, not derived from the protocol: :func:`counting_increments`
wraps :func:`plinius.enclave.tpm_link.counter_increment` for the run.

Untimed: swtpm's manufacturing (about a second), each platform's set-up (its TPM key, the NV
counter defined and moved once, the first record) and two warm-up saves. Everything lives in a
temporary directory on the disk where the state would (``$PLINIUS_DISK_DIR``, default
/var/tmp), removed at the end; swtpm is stopped. Without swtpm or tpm2-pytss the simulated CPU
is still measured and the swtpm rows say why they did not run.

``python -m plinius.lab.bench.freshness [--quick]`` prints the report's part.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plinius.backends.fsinfo import mount_label, mount_of
from plinius.core.errors import ConfigError
from plinius.core.fsutil import atomic_write
from plinius.enclave.counter import ID_BYTES, Extent, MirrorCounters, Stamp, slot_name
from plinius.lab.bench.contenders import Contender, Samples, run_rounds
from plinius.lab.bench.stats import Interval, median_interval, ratio_interval
from plinius.lab.profiles import root_dir

if TYPE_CHECKING:
    from plinius.enclave.platform_protocol import Platform
    from plinius.lab.swtpm import Swtpm

NAME = "freshness"
#: quick: a few seconds in all (swtpm's manufacturing included)
QUICK_ROUNDS, QUICK_SAVES, QUICK_CALLS = 3, 20, 10
#: full: about 30 s on 2 cores
ROUNDS, SAVES, CALLS = 10, 100, 30
#: untimed saves after each platform's set-up
WARMUP_SAVES = 2
#: a hardware TPM's NV_Increment, ms: a documented range, not a measurement of this machine
HW_INCREMENT_MS = (10.0, 50.0)
SOFT = "software TPM"
#: the first NV index the contenders' counters use (one swtpm holds them all, one each)
NV_BASE = 0x013F5100
#: what a benchmarked save records: a 64 MiB mirror (the size changes nothing it costs)
EXTENT = Extent(64 << 20, 4096)


@dataclass(frozen=True)
class Plat:
    """One save contender: a platform kind and, on a TPM, its ``counter_every``."""

    id: str
    label: str
    counter_every: str | None  # None: the simulated CPU


SAVE_CONTENDERS = (
    Plat("simulated", "simulated CPU", None),
    Plat("swtpm", f"swtpm ({SOFT}), counter_every=1", "1"),
    Plat("swtpm?counter_every=8", f"swtpm ({SOFT}), counter_every=8", "8"),
    Plat("swtpm?counter_every=30s", f"swtpm ({SOFT}), counter_every=30s", "30s"),
)
PRIMITIVES_ID = "swtpm-primitives"
#: the raw costs a TPM save is made of: (op, what it is)
PRIMITIVES = (
    ("connect", "connection open + close (TCTI + ESAPI start-up)"),
    ("lookup", "NV index lookup (TR_FromTPMPublic + NV_ReadPublic)"),
    ("nv_read", "NV_Read (the 8-byte counter)"),
    ("nv_increment", "NV_Increment"),
    ("hmac", "TPM2_HMAC (32 bytes, key loaded)"),
    ("derive", "key derivation: storage root key + Load + TPM2_HMAC (once per key and process)"),
    ("table_write", "table write: temp file + fsync + rename + directory fsync (the disk)"),
)
#: every contender id, in the report's order (the asv class's ``contender`` parameter)
IDS = (*(p.id for p in SAVE_CONTENDERS), PRIMITIVES_ID)
#: every operation (the asv class's ``op`` parameter)
OPS = ("save", *(op for op, _ in PRIMITIVES))


def ops_of(contender: str) -> tuple[str, ...]:
    """The operations contender ``contender`` has."""
    return tuple(op for op, _ in PRIMITIVES) if contender == PRIMITIVES_ID else ("save",)


def window(p: Plat) -> str:
    """The rollback window ``p`` implies, as one sentence."""
    if p.counter_every is None:
        return (
            "no counter: the records are files in the simulated CPU's platform location, "
            "which the threat model assumes the attacker does not control"
        )
    from plinius.enclave.counter_table import CounterEvery

    return CounterEvery.parse(p.counter_every, p.label).describe()


@contextlib.contextmanager
def counting_increments() -> Iterator[list[int]]:
    """``[n]``: the NV_Increment calls made while inside. The counter table looks
    :func:`plinius.enclave.tpm_link.counter_increment` up at every call, so wrapping it here
    counts every increment a save really makes."""
    from plinius.enclave import tpm_link

    real = tpm_link.counter_increment
    count = [0]

    def counted(e: Any, handle: Any) -> None:
        count[0] += 1
        real(e, handle)

    tpm_link.counter_increment = counted
    try:
        yield count
    finally:
        tpm_link.counter_increment = real


def _per_call(fn: Callable[[], object], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def swtpm_version() -> str:
    """``swtpm 0.7.1`` (what ``swtpm --version`` says), or ``swtpm`` when it says nothing usable."""
    try:
        out = subprocess.run(
            ["swtpm", "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "swtpm"
    m = re.search(r"version (\S+?),?\s", out + " ")
    return f"swtpm {m.group(1)}" if m else "swtpm"


class FreshnessBench:
    """The contenders of one measurement, built untimed, and what they need: a scratch
    directory on the disk, one swtpm for every TPM contender, the increment count. ``close``
    stops swtpm and removes the directory. Contenders that cannot be built here are in
    ``not_run`` with a one-line reason (an install hint when a tool is missing)."""

    def __init__(
        self,
        ids: Sequence[str] = IDS,
        *,
        saves: int = QUICK_SAVES,
        calls: int = QUICK_CALLS,
        root: Path | None = None,
    ) -> None:
        unknown = [i for i in ids if i not in IDS]
        if unknown:
            raise ValueError(f"no freshness contender {unknown} (known: {', '.join(IDS)})")
        if saves < 1 or calls < 1:
            raise ValueError(f"saves ({saves}) and calls ({calls}) per round must be >= 1")
        self.ids = tuple(i for i in IDS if i in ids)
        self.saves, self.calls = saves, calls
        self.stack = ExitStack()
        self.contenders: list[Contender] = []
        self.not_run: dict[str, str] = {}
        #: per save contender: NV increments of each timed block
        self.increments: dict[str, list[int]] = {}
        self.facts: dict[str, Any] = {}
        try:
            base = Path(tempfile.mkdtemp(prefix="plinius-freshness-", dir=root or root_dir("disk")))
            self.stack.callback(shutil.rmtree, base, True)  # last: after swtpm stopped
            self.base = base
            self.count = self.stack.enter_context(counting_increments())
            m = mount_of(base)
            self.facts["disk"] = {
                "dir": str(base.parent),
                "fs_type": m.fs_type,
                "device": m.device,
                "mount": mount_label(m),
            }
            self._build()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.stack.close()

    # --- building ------------------------------------------------------------------------

    def _build(self) -> None:
        if "simulated" in self.ids:
            from plinius.enclave.platform import SimulatedPlatform

            d = self.base / "simulated"
            self.contenders.append(
                self._saves(SAVE_CONTENDERS[0], SimulatedPlatform(d / "cpu", state_dir=d / "state"))
            )
        tpm_ids = [i for i in self.ids if i != "simulated"]
        if not tpm_ids:
            return
        tpm, why = self._swtpm()
        for n, p in enumerate(SAVE_CONTENDERS):
            if p.id not in tpm_ids:
                continue
            if tpm is None:
                self.not_run[p.id] = why
                continue
            try:
                self.contenders.append(self._tpm_saves(tpm, p, NV_BASE + n))
            except Exception as exc:  # reported as its row's reason; the others go on
                self.not_run[p.id] = f"set-up failed: {type(exc).__name__}: {exc}"
        if PRIMITIVES_ID in tpm_ids:
            if tpm is None:
                self.not_run[PRIMITIVES_ID] = why
            else:
                try:
                    self.contenders.append(self._primitives(tpm, NV_BASE + len(SAVE_CONTENDERS)))
                except Exception as exc:
                    self.not_run[PRIMITIVES_ID] = f"set-up failed: {type(exc).__name__}: {exc}"

    def _swtpm(self) -> tuple[Swtpm | None, str]:
        """A manufactured, started swtpm (stopped by ``close``), or why there is none."""
        from plinius.enclave import tpm_link
        from plinius.lab.swtpm import INSTALL_HINT, Swtpm

        try:
            tpm_link.pytss()
            tpm = Swtpm(self.base / "swtpm")  # manufactures it: EK, certificate, local CA
            self.stack.callback(tpm.stop)
            tpm.start()
        except ConfigError as exc:  # a missing tool or extra: the message has the hint
            return None, str(exc)
        except Exception as exc:
            return None, f"swtpm did not start: {type(exc).__name__}: {exc} ({INSTALL_HINT})"
        state = mount_of(tpm.state)
        self.facts["tpm"] = {
            "version": swtpm_version(),
            "address": tpm.address,
            "state_on": mount_label(state),
            "note": f"{SOFT}: the TPM 2.0 command set at software speed, no hardware TPM here",
        }
        return tpm, ""

    def _tpm_saves(self, tpm: Swtpm, p: Plat, nv: int) -> Contender:
        from plinius.enclave.platform import open_platform

        assert p.counter_every is not None
        d = self.base / re.sub(r"[^0-9A-Za-z]+", "-", p.id)
        spec = tpm.spec(d / "platform", counter_every=p.counter_every, nv=f"{nv:#x}")
        return self._saves(p, open_platform(spec, state_dir=d / "state"))

    def _saves(self, p: Plat, platform: Platform) -> Contender:
        """``save``: ``saves`` begin + commit on one slot, fresh stamps; seconds per save."""
        counters = MirrorCounters(platform)
        slot = slot_name("bench-freshness", str(self.base), p.id)
        run_id = os.urandom(ID_BYTES)
        version = 0
        blocks = self.increments.setdefault(p.id, [])
        count = self.count

        def block(saves: int) -> tuple[float, int]:
            nonlocal version
            stamps = []
            for _ in range(saves):  # made before the clock starts
                version += 1
                stamps.append(Stamp(run_id, version, os.urandom(ID_BYTES)))
            before = count[0]
            t0 = time.perf_counter()
            for s in stamps:
                counters.begin(slot, s, EXTENT)
                counters.commit(slot, s)
            return time.perf_counter() - t0, count[0] - before

        block(WARMUP_SAVES)  # set-up: key derived, counter defined and moved, first record

        def run(op: str) -> float:
            if op != "save":
                raise ValueError(f"{p.id} has no {op!r}")
            secs, moved = block(self.saves)
            blocks.append(moved)
            return secs / self.saves

        where = mount_of(platform.dir)
        facts = {"platform": platform.kind, "dir": str(platform.dir), "on": mount_label(where)}
        return Contender(NAME, p.label, NAME, 0, ("save",), run, counters.close, facts, p.id)

    def _primitives(self, tpm: Swtpm, index: int) -> Contender:
        """Each op: ``calls`` calls of one TPM command (or one table write), seconds per call.
        Its own NV counter (``index``), so its increments move no contender's table."""
        from plinius.enclave import tpm_link

        t = tpm_link.pytss()
        link = tpm_link.TpmLink(f"swtpm:host=127.0.0.1,port={tpm.port}", f"swtpm ({SOFT})")
        with link.session() as e:
            tpm_link.define_counter(e, index, tpm_link.owner_auth())
            found = tpm_link.open_counter(e, index)
            assert found is not None
            tpm_link.counter_increment(e, found[0])  # written: NV_Read wants a written index
            blob = tpm_link.create_hmac_key(e)
        scratch = self.base / "table-write"
        scratch.mkdir()
        tables = sorted(self.base.glob(f"*/platform/{_table_file()}"))
        table = os.urandom(tables[0].stat().st_size if tables else 512)
        self.facts["table_bytes"] = len(table)
        calls = self.calls
        a = t.constants.TPMA_OBJECT
        attrs = a.FIXEDTPM | a.FIXEDPARENT | a.SENSITIVEDATAORIGIN | a.USERWITHAUTH | a.SIGN_ENCRYPT
        hmac_key = t.types.TPM2B_PUBLIC.parse("hmac:sha256", objectAttributes=attrs)
        label = b"plinius-bench-freshness"

        def run(op: str) -> float:
            if op == "connect":

                def connect() -> None:
                    with link.session():
                        pass

                return _per_call(connect, calls)
            if op == "table_write":
                return _per_call(lambda: atomic_write(scratch / _table_file(), table), calls)
            with link.session() as e:
                found = tpm_link.open_counter(e, index)
                assert found is not None
                handle = found[0]
                if op == "lookup":
                    return _per_call(lambda: tpm_link.open_counter(e, index), calls)
                if op == "nv_read":
                    return _per_call(lambda: tpm_link.counter_value(e, handle), calls)
                if op == "nv_increment":
                    return _per_call(lambda: tpm_link.counter_increment(e, handle), calls)
                if op == "derive":
                    return _per_call(lambda: tpm_link.tpm_hmac(e, blob, [label], "bench"), calls)
                if op == "hmac":
                    key, *_ = e.create_primary(None, hmac_key, t.constants.ESYS_TR.OWNER)
                    try:
                        sha = t.constants.TPM2_ALG.SHA256
                        return _per_call(lambda: e.hmac(key, label, sha), calls)
                    finally:
                        e.flush_context(key)
            raise ValueError(f"{PRIMITIVES_ID} has no {op!r}")

        ops = tuple(op for op, _ in PRIMITIVES)
        facts = {"tpm": f"swtpm {tpm.address} ({SOFT})", "nv_index": f"{index:#x}"}
        name = f"swtpm primitives ({SOFT})"
        return Contender(NAME, name, NAME, 0, ops, run, facts=facts, id=PRIMITIVES_ID)


def _table_file() -> str:
    from plinius.enclave.counter_table import TABLE_FILE

    return TABLE_FILE


# --- measuring -------------------------------------------------------------------------------


def measure(
    *,
    rounds: int = QUICK_ROUNDS,
    saves: int = QUICK_SAVES,
    calls: int = QUICK_CALLS,
    ids: Sequence[str] = IDS,
    root: Path | None = None,
    tick: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Every contender of ``ids`` in ``rounds`` interleaved rounds; the result as JSON-ready
    data (:func:`result`). swtpm is stopped and the scratch directory removed before this
    returns, whatever happened."""
    load0 = os.getloadavg()[0]
    bench = FreshnessBench(ids, saves=saves, calls=calls, root=root)
    try:
        samples = run_rounds(bench.contenders, rounds, tick or (lambda: None))
    finally:
        bench.close()
    return result(bench, samples, rounds, (load0, os.getloadavg()[0]))


def _iv_json(seconds: Sequence[float]) -> dict[str, Any]:
    return median_interval(seconds).scaled(1e3).as_json()


def result(
    bench: FreshnessBench, samples: Sequence[Samples], rounds: int, load: tuple[float, float]
) -> dict[str, Any]:
    """The measurement as results.json keeps it (``ms``: median and 95 % interval, in ms)."""
    by_id = {s.contender.id: s for s in samples}
    sim = by_id.get("simulated")
    sim_s = sim.seconds.get("save") if sim is not None else None
    rows: list[dict[str, Any]] = []
    for p in SAVE_CONTENDERS:
        if p.id not in bench.ids:
            continue
        row: dict[str, Any] = {
            "id": p.id,
            "label": p.label,
            "platform": "simulated" if p.counter_every is None else "tpm",
            "counter_every": p.counter_every,
            "window": window(p),
        }
        got = by_id.get(p.id)
        if got is None:
            row.update(status="not run", reason=bench.not_run.get(p.id, "not built"))
            rows.append(row)
            continue
        secs = got.seconds.get("save", [])
        row["status"] = "failed" if got.errors or not secs else "ok"
        if got.errors:
            row["reason"] = got.errors[0]
        row["seconds"] = secs
        if secs:
            row["ms"] = _iv_json(secs)
            if p.counter_every is not None:
                moved = bench.increments.get(p.id, [])[: len(secs)]
                row["increments"] = moved
                row["increments_per_save"] = sum(moved) / (len(moved) * bench.saves)
            if sim_s and p.id != "simulated":
                row["vs_simulated"] = ratio_interval(secs, sim_s).as_json()
        rows.append(row)
    prims: list[dict[str, Any]] = []
    if PRIMITIVES_ID in bench.ids:
        got = by_id.get(PRIMITIVES_ID)
        for op, what in PRIMITIVES:
            prow: dict[str, Any] = {"op": op, "label": what}
            if got is None:
                prow.update(status="not run", reason=bench.not_run.get(PRIMITIVES_ID, "not built"))
            elif got.seconds.get(op):
                prow.update(status="ok", seconds=got.seconds[op], ms=_iv_json(got.seconds[op]))
            else:
                prow.update(status="failed", reason=(got.errors or ["not reached"])[0])
            prims.append(prow)
    doc: dict[str, Any] = {
        "rounds": rounds,
        "saves_per_round": bench.saves,
        "calls_per_round": bench.calls,
        "warmup_saves": WARMUP_SAVES,
        "cores": os.cpu_count(),
        "load": [round(x, 2) for x in load],
        **bench.facts,
        "contenders": rows,
        "primitives": prims,
    }
    doc["explained"] = explained(doc)
    doc["hardware"] = hardware(doc)
    return doc


def _median(rows: Sequence[Mapping[str, Any]], key: str, value: str) -> float | None:
    r = next((r for r in rows if r.get(key) == value and r.get("ms")), None)
    return None if r is None else float(r["ms"]["median"])


#: the per-change primitives of a TPM save (twice per save: begin and commit)
PER_CHANGE = ("connect", "lookup", "nv_read", "table_write")


def explained(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each TPM contender's per-save figure rebuilt from the primitives' medians: per change
    (2 per save) a connection, an NV lookup, an NV_Read and a table write, plus the counted
    increments per save × NV_Increment. Empty without the primitives."""
    prims = doc.get("primitives") or []
    parts = {op: _median(prims, "op", op) for op in (*PER_CHANGE, "nv_increment")}
    if any(v is None for v in parts.values()):
        return []
    per_change = sum(float(parts[op] or 0.0) for op in PER_CHANGE)
    inc = float(parts["nv_increment"] or 0.0)
    out = []
    for r in doc.get("contenders") or []:
        if r.get("platform") != "tpm" or r.get("increments_per_save") is None or not r.get("ms"):
            continue
        n = float(r["increments_per_save"])
        out.append(
            {
                "id": r["id"],
                "label": r["label"],
                "per_change_ms": per_change,
                "increments_per_save": n,
                "increment_ms": inc,
                "estimate_ms": 2 * per_change + n * inc,
                "measured_ms": float(r["ms"]["median"]),
            }
        )
    return out


def hardware(doc: Mapping[str, Any]) -> dict[str, Any]:
    """What the counted increments per save would spend in NV_Increment alone on a hardware
    TPM, at its documented 10–50 ms (not a measurement of this machine)."""
    lo, hi = HW_INCREMENT_MS
    per = []
    for r in doc.get("contenders") or []:
        if r.get("increments_per_save") is None:
            continue
        n = float(r["increments_per_save"])
        per.append(
            {
                "id": r["id"],
                "counter_every": r["counter_every"],
                "increments_per_save": n,
                "ms": [n * lo, n * hi],
            }
        )
    return {
        "increment_ms": [lo, hi],
        "note": "a documented range, not a measurement of this machine",
        "per_save": per,
    }


# --- the report ------------------------------------------------------------------------------


def _text(d: Mapping[str, Any] | None, fmt: str = "{:.3g}", unit: str = "") -> str:
    return "" if not d else Interval.from_json(dict(d)).text(fmt, unit)


def headline(doc: Mapping[str, Any]) -> str:
    disk = doc.get("disk") or {}
    tpm = doc.get("tpm")
    on = f"{disk.get('mount', '?')} under {disk.get('dir', '?')}"
    said = (
        f"One save's freshness work (`begin` + `commit` on one slot, a fresh stamp, version + 1) "
        f"per platform, in one process: {doc['rounds']} interleaved rounds (order rotated) of "
        f"{doc['saves_per_round']} saves per contender after {doc['warmup_saves']} warm-up saves; "
        "a round's figure is its mean per save, the table gives the median over rounds "
        "[95 % bootstrap interval] in ms. The simulated CPU's records and every platform "
        f"directory are on {on}. "
    )
    if tpm:
        said += (
            f"The TPM is {tpm['version']}, a {SOFT} (no hardware TPM here), its state on "
            f"{tpm['state_on']}. "
        )
    load = "–".join(f"{x:.1f}" for x in doc.get("load") or [])
    return said + (
        f"{doc.get('cores')} cores, 1-minute load {load}: other work was running on the "
        "machine, so the intervals include its noise."
    )


TABLE_COLUMNS = ("platform", "per save (ms)", "NV increments per save", "× simulated")


def _reason(r: Mapping[str, Any]) -> str:
    return f"{r.get('status')}: {' '.join(str(r.get('reason') or '?').split())}"


def table_rows(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The per-save freshness cost table: one row per save contender."""
    out = []
    for r in doc.get("contenders") or []:
        row: dict[str, Any] = {"platform": r["label"]}
        if r.get("ms"):
            row["per save (ms)"] = _text(r["ms"])
            if r.get("status") != "ok":
                row["per save (ms)"] += f" ({_reason(r)})"
        else:
            row["per save (ms)"] = _reason(r)
        n = r.get("increments_per_save")
        row["NV increments per save"] = (
            "no counter" if r["platform"] == "simulated" else "" if n is None else f"{n:.2f}"
        )
        row["× simulated"] = _text(r.get("vs_simulated"), unit="×")
        out.append(row)
    return out


PRIMITIVE_COLUMNS = (f"swtpm primitive ({SOFT})", "per call (ms)")


def primitive_rows(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for r in doc.get("primitives") or []:
        cell = _text(r["ms"], "{:.3g}") if r.get("ms") else _reason(r)
        out.append({PRIMITIVE_COLUMNS[0]: r["label"], PRIMITIVE_COLUMNS[1]: cell})
    return out


def explain_lines(doc: Mapping[str, Any]) -> list[str]:
    """Per TPM contender: the per-save figure rebuilt from the primitives."""
    out = []
    for x in doc.get("explained") or []:
        out.append(
            f"- {x['label']}: per save ≈ 2 × (connection + NV lookup + NV_Read + table write) "
            f"+ {x['increments_per_save']:.2f} × NV_Increment = 2 × {x['per_change_ms']:.3g} + "
            f"{x['increments_per_save']:.2f} × {x['increment_ms']:.3g} = "
            f"{x['estimate_ms']:.3g} ms; measured {x['measured_ms']:.3g} ms (the difference: the "
            "read-back of each increment (one NV_Read each), the platform locks, reading and "
            "sealing the table, Python)"
        )
    return out


def hardware_line(doc: Mapping[str, Any]) -> str:
    hw = doc.get("hardware") or {}
    lo, hi = hw.get("increment_ms") or HW_INCREMENT_MS
    said = []
    for p in hw.get("per_save") or []:
        n, every = float(p["increments_per_save"]), str(p["counter_every"])
        if every.endswith("s"):  # time-based: the increments follow the clock, not the saves
            said.append(
                f"at counter_every={every}, {n:.2f} per save in this run, but a move (2 "
                f"increments, {2 * lo:g}–{2 * hi:g} ms) comes at most once per {every[:-1]} s "
                "whatever the save rate"
            )
            continue
        said.append(
            f"at counter_every={every}, the {n:.2f} increments per save counted above would "
            f"spend {p['ms'][0]:.3g}–{p['ms'][1]:.3g} ms per save in NV_Increment alone"
        )
    text = (
        f"A hardware TPM's NV_Increment is documented at roughly {lo:g}–{hi:g} ms (a documented "
        f"range, not a measurement of this machine; the swtpm figures above are a {SOFT}'s)"
    )
    if not said:
        return text + "; no increments were counted here (swtpm did not run)."
    return (
        text
        + ": "
        + "; ".join(said)
        + ". The connections, reads and table writes of a hardware TPM save are not in that "
        "estimate."
    )


def window_lines(doc: Mapping[str, Any]) -> list[str]:
    return [f"- {r['label']}: {r['window']}." for r in doc.get("contenders") or []]


def markdown(doc: Mapping[str, Any]) -> list[str]:
    """The section's part of report.md."""
    from plinius.lab.reporting.markdown import md_table

    parts = [
        f"## Freshness cost per save: simulated CPU and swtpm ({SOFT})",
        "",
        headline(doc),
        "",
        md_table(table_rows(doc), TABLE_COLUMNS),
        "",
        "Rollback window of each (what an attacker who holds the platform directory can put back):",
        "",
        *window_lines(doc),
        "",
    ]
    prims = primitive_rows(doc)
    if prims:
        parts += [
            f"Raw swtpm primitives ({SOFT}), in the same rounds, {doc['calls_per_round']} calls "
            "per round each, median [95 % interval] of the per-call mean:",
            "",
            md_table(prims, PRIMITIVE_COLUMNS),
            "",
            *explain_lines(doc),
            "",
        ]
    parts += [hardware_line(doc), ""]
    return parts


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m plinius.lab.bench.freshness",
        description="per-save freshness cost of the simulated CPU and swtpm (a software TPM)",
    )
    p.add_argument("--quick", action="store_true", help="3 rounds of 20 saves (a few seconds)")
    p.add_argument("--rounds", type=int, help="interleaved rounds")
    p.add_argument("--saves", type=int, help="saves per contender and round (a multiple of 4)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    doc = measure(
        rounds=args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS),
        saves=args.saves or (QUICK_SAVES if args.quick else SAVES),
        calls=QUICK_CALLS if args.quick else CALLS,
    )
    print(json.dumps(doc, indent=1) if args.json else "\n".join(markdown(doc)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["IDS", "OPS", "FreshnessBench", "main", "markdown", "measure"]
