"""A structure-aware fuzzer of the ``romulus`` pool file (the attacker owns every byte of it).

A real pool is built (roots, small and large allocations, some freed so every kind of free list
is non-empty, a committed mirror-like blob). Then every 8-byte word of the header, the allocator
metadata, the root table and every block header is set to boundary and hostile values (0, 1,
all-ones, the file size and its neighbours, unaligned, self-pointers, pointers into the header
and into back, huge), in main, in back, or in both copies; and random bytes are flipped. Each
case opens the pool and runs a forced allocation (small and large), a read of every root, a
free, an aborted and a committed write transaction, and a reopen. Cases come in two kinds:
``rest`` (the file is damaged before the open) and ``live`` (damaged through the file while the
pool is mapped, which skips the checks at open and hits the ones at use).

Cases run in worker processes, many per worker. A worker prints one line per finished case, so
when a signal kills it or it hangs, the case in flight is known exactly: it is recorded as a
failure and a new worker carries on after it. Any signal, hang, or exception that is not a
deliberate plinius error fails the test.

``PLINIUS_LONG=1`` runs every case and many more random flips; ``PLINIUS_FUZZ_CASES=N`` sets
the number of sampled structured cases (the sanitizer env uses a small number).
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

LONG = os.environ.get("PLINIUS_LONG") == "1"
CASES = int(os.environ.get("PLINIUS_FUZZ_CASES", "0" if LONG else "8000"))  # 0: all of them
FLIPS = int(os.environ.get("PLINIUS_FUZZ_FLIPS", "30000" if LONG else "2000"))
BATCH = 400  # cases per worker process
CASE_TIMEOUT = 20.0  # seconds a single case may take before it counts as a hang
POOL_SIZE = 4 << 20
MAIN_OFF = 4096
META_SIZE = 16384
M_ROOTS = 344
ROOT_SIZE = 96
BLK_FREE = 0x45455246424C4B00
LARGE_CLASS = 0xFFFF
U64 = 2**64 - 1


# --- the template pool --------------------------------------------------------------------------


def build_template(path: Path) -> None:
    """A pool with data in every structure the engine reads."""
    from plinius.backends.romulus import RomulusBackend

    rng = random.Random(7)
    b = RomulusBackend(str(path), size=str(POOL_SIZE))
    try:

        def put(key: str, size: int) -> None:
            txn = b.begin_write(key, size)
            if size:
                txn.view(0, size)[:] = rng.randbytes(size)
            txn.commit()

        for key, size in [
            ("mirror", 90_000),
            ("ds", 224),
            ("zero", 0),
            *[(f"s{i}", n) for i, n in enumerate([100, 300, 700, 2000, 9000, 40_000])],
            ("L1", 200_000),
            ("L2", 150_000),
            ("L3", 100_000),
            ("tail", 500),
        ]:
            put(key, size)
        for key in ("s1", "s3", "L2"):  # free lists: two small classes and the large list
            b.delete(key)
        put("mirror", 90_000)  # rewritten in place: a committed mirror-like blob
    finally:
        b.close()


def _u64(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<Q", data, off)[0])


def targets(data: bytes) -> tuple[list[int], list[int]]:
    """File offsets of header words, and main-relative offsets of metadata/block-header words."""
    region = _u64(data, 32)
    header = list(range(0, 192, 8))
    meta = list(range(0, M_ROOTS, 8))
    used = [i for i in range(128) if data[MAIN_OFF + M_ROOTS + i * ROOT_SIZE] != 0]
    for i in [*used, len(used), 127]:  # used entries, the first free one, the last
        at = M_ROOTS + i * ROOT_SIZE
        meta += list(range(at, at + ROOT_SIZE, 8))
    blocks: set[int] = set()
    for i in used:  # allocated blocks: one header before each root's offset
        off = _u64(data, MAIN_OFF + M_ROOTS + i * ROOT_SIZE + 72)
        if off:
            blocks.add(off - 64)
    heads = [_u64(data, MAIN_OFF + 64 + 8 * c) for c in range(35)]
    heads.append(_u64(data, MAIN_OFF + 40))
    for b in heads:  # free blocks: walk each list (the template is sound)
        while b and b not in blocks and len(blocks) < 200:
            blocks.add(b)
            b = _u64(data, MAIN_OFF + b + 16)
    assert len(blocks) >= 10 and all(h == 0 or h in blocks for h in heads), blocks
    for b in sorted(blocks):
        meta += [b, b + 8, b + 16, b + 24]
    assert region > 0
    return header, meta


def hostile_values(word: int, orig: int, fsize: int, region: int, top: int) -> list[int]:
    vals = [
        0,
        1,
        U64,
        fsize,
        fsize - 8,
        fsize + 8,
        region,
        region - 64,
        region + 64,
        (orig + 1) & U64,  # unaligned
        orig ^ (1 << 63),
        word,  # a pointer to itself
        word & ~63,  # to the block (or line) holding it
        8,  # into the header / the allocator metadata
        META_SIZE - 64,
        top,
        top - 64,
        top + 64,
        1 << 40,
    ]
    return [v & U64 for v in dict.fromkeys(vals) if v & U64 != orig]


def make_cases(template: bytes, rng: random.Random) -> list[dict[str, Any]]:
    fsize = len(template)
    region = _u64(template, 32)
    top = _u64(template, MAIN_OFF + 8)
    header, meta = targets(template)
    structured: list[dict[str, Any]] = []
    for off in header:
        for v in hostile_values(off, _u64(template, off), fsize, region, top):
            structured.append({"pokes": [[off, v]], "live": False, "what": f"hdr+{off}={v:#x}"})
    for off in meta:
        orig = _u64(template, MAIN_OFF + off)
        for v in hostile_values(off, orig, fsize, region, top):
            for where, bases in [
                ("main", [MAIN_OFF]),
                ("back", [MAIN_OFF + region]),
                ("both", [MAIN_OFF, MAIN_OFF + region]),
            ]:
                pokes = [[base + off, v] for base in bases]
                for live in (False, True):
                    structured.append(
                        {"pokes": pokes, "live": live, "what": f"{where}+{off:#x}={v:#x}"}
                    )
    if CASES and len(structured) > CASES:
        structured = rng.sample(structured, CASES)
    flips: list[dict[str, Any]] = []
    hot = [*header, *(MAIN_OFF + o for o in meta), *(MAIN_OFF + region + o for o in meta)]
    for _ in range(FLIPS):
        pokes = []
        for _ in range(rng.randint(1, 8)):
            near = rng.random() < 0.7  # mostly where the structures are
            at = rng.choice(hot) + rng.randrange(8) if near else rng.randrange(fsize)
            pokes.append([at, rng.randrange(256), 1])  # one byte
        flips.append({"pokes": pokes, "live": rng.random() < 0.3, "what": "flips"})
    cases = structured + flips
    for i, c in enumerate(cases):
        c["i"] = i
    return cases


# --- the worker: one process, many cases ---------------------------------------------------------


def _poke(path: Path, pokes: list[list[int]]) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        for p in pokes:
            if len(p) == 3:
                os.pwrite(fd, bytes([p[1]]), p[0])
            else:
                os.pwrite(fd, struct.pack("<Q", p[1]), p[0])
    finally:
        os.close(fd)


def _read_all(b: Any) -> None:
    """Every root's bytes (a blob view that reaches past its block would fault here)."""
    keys = b.blobs()
    for key in keys:
        blob = b.read(key)
        if blob is not None:
            bytes(blob.data)


def _exercise(path: Path, pokes: list[list[int]] | None) -> None:
    """Open, then everything that reads what the attacker wrote; pokes: damage it live."""
    from plinius.backends.romulus import RomulusBackend

    b = RomulusBackend(str(path))
    try:
        if pokes:
            _poke(path, pokes)  # the mapping is shared: the engine sees it at once
        _read_all(b)
        txn = b.begin_write("fz-large", 120_000)  # forced allocations: a large block...
        txn.view(0, 120_000)[:] = b"\xa5" * 120_000
        txn.commit()
        txn = b.begin_write("fz-small", 200)  # ...and a small one
        txn.view(0, 200)[:] = b"\x5a" * 200
        _read_all(b)  # committed reads while a transaction is open
        txn.commit()
        for key in ("s0", "L1", "s5", "ds"):  # frees: small and large, merging neighbours
            b.delete(key)
        txn = b.begin_write("fz-abort", 5000)
        txn.view(0, 5000)[:] = b"\x11" * 5000
        txn.abort()  # restores the logged lines from back
        txn = b.begin_write("mirror", 90_000)  # the usual rewrite in place
        txn.view(0, 100)[:] = b"\x22" * 100
        txn.commit()
        pool = b.pool
        with pool.transaction():
            offs = [pool.alloc(n) for n in (64, 500, 3000, 70_000)]
            for off in offs:
                pool.free(off)
        pool.stats()
    finally:
        b.close()
    b = RomulusBackend(str(path))  # what the operations left must open again or be refused
    try:
        _read_all(b)
    finally:
        b.close()


def worker(template: Path, work: Path) -> None:
    """Read cases (JSON lines) on stdin; print ``i outcome detail`` per case, flushed."""
    from plinius.core.errors import PliniusError, PoolCorruptError

    data = template.read_bytes()
    for line in sys.stdin:
        case = json.loads(line)
        work.write_bytes(data)
        live = case["live"]
        if not live:
            _poke(work, case["pokes"])
        try:
            _exercise(work, case["pokes"] if live else None)
            outcome = "accepted"
        except PoolCorruptError as exc:
            outcome = "refused:PoolCorruptError"
            detail = str(exc)
        except PliniusError as exc:
            outcome = f"refused:{type(exc).__name__}"
            detail = str(exc)
        except BaseException as exc:  # not deliberate: a bug
            import traceback

            outcome = "BUG"
            detail = "".join(traceback.format_exception(exc)).replace("\n", " | ")
        else:
            detail = ""
        print(case["i"], outcome, detail[:300].replace("\n", " "), flush=True)


# --- the test ------------------------------------------------------------------------------------


def run_cases(
    cases: list[dict[str, Any]], template: Path, scratch: Path
) -> tuple[Counter[str], list[str]]:
    """All cases in batches of worker processes; a dead or hung worker costs only its case."""
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    todo = list(cases)
    nworker = 0
    while todo:
        batch, todo = todo[:BATCH], todo[BATCH:]
        work = scratch / f"w{nworker}.pool"
        nworker += 1
        proc = subprocess.Popen(
            [sys.executable, "-P", __file__, "--worker", str(template), str(work)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )
        payload = "".join(json.dumps(c) + "\n" for c in batch)
        timed_out = False
        try:
            out, err = proc.communicate(payload, timeout=CASE_TIMEOUT * 2 + 0.05 * len(batch))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            timed_out = True
        done = 0
        for line in out.splitlines():
            idx, outcome, *rest = line.split(" ", 2)
            outcomes[outcome] += 1
            if outcome == "BUG":
                failures.append(f"case {idx} {batch[done]['what']}: {rest[0] if rest else ''}")
            done += 1
        work.unlink(missing_ok=True)
        if done < len(batch):  # the case in flight killed or hung the worker
            bad = batch[done]
            kind = "hang" if timed_out else f"exit {proc.returncode}"
            outcomes[f"FAIL:{kind}"] += 1
            failures.append(f"case {bad['i']} {bad['what']} {bad['pokes']}: {kind}: {err[-1500:]}")
            todo = batch[done + 1 :] + todo
        elif proc.returncode != 0:
            failures.append(f"worker exited {proc.returncode} after its batch: {err[-1500:]}")
    return outcomes, failures


@pytest.mark.slow
def test_pool_fuzz(tmp_path: Path, shm_dir: Path) -> None:
    template = shm_dir / "template.pool"
    build_template(template)
    cases = make_cases(template.read_bytes(), random.Random(2024))
    t0 = time.monotonic()
    outcomes, failures = run_cases(cases, template, shm_dir)
    elapsed = time.monotonic() - t0
    total = sum(outcomes.values())
    refused = sum(n for k, n in outcomes.items() if k.startswith("refused:"))
    summary = ", ".join(f"{k}={n}" for k, n in sorted(outcomes.items()))
    print(
        f"\npool fuzz: {total} cases in {elapsed:.1f}s: {refused} cleanly refused, "
        f"{outcomes['accepted']} accepted (harmless); {summary}"
    )
    assert total == len(cases)
    assert not failures, "\n".join(failures[:20])
    assert refused > total // 10 and outcomes["accepted"] > 0  # both classes are exercised


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--worker":
    worker(Path(sys.argv[2]), Path(sys.argv[3]))
