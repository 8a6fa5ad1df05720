"""The ``distributed`` section of ``plinius bench``: TorchMirror across ranks against
``torch.distributed.checkpoint``, for DDP and FSDP2, and save throughput against world size.

Why a section of its own: the ranks are processes, so it launches them itself (``python -m
torch.distributed.run --standalone --nproc-per-node W -m
plinius.lab.bench.distributed_worker``, inside ``timeout``, ``OMP_NUM_THREADS=1``) instead of
timing contenders in the suite's rounds. Each launch gets a throw-away owner key, a throw-away
simulated CPU (platform and state directories) and fresh storage under the bench's scratch
roots (``$PLINIUS_SHM_DIR``, default /dev/shm; ``$PLINIUS_DISK_DIR``, default /var/tmp), all
removed afterwards: the benchmark leaves no counter on this machine's platform.

What is measured (:mod:`plinius.lab.bench.distributed_worker` says how): at ``W`` =
``--world-size`` (default 2), in the same interleaved rounds on the same storage, TorchMirror
``save``/``restore`` against ``dcp.save``, ``dcp.async_save`` (until it returns, until written)
and ``dcp.load``, for DDP and FSDP2; every restore checked bit for bit. Then TorchMirror's and
``dcp.save``'s save time at W = 1, 2, 4 (the comparison's W is not launched twice). On a machine
with fewer cores than ranks a launch runs one round and only says whether every save and
restore was exact (correctness only): W = 4 on these 2-core VMs. Figures are the slowest
rank's seconds per operation, medians over rounds with bootstrap 95 % intervals; ratios of the
comparison are paired by round. So is the W = 2 against W = 1 target: the comparison's launch
also times DDP's TorchMirror on rank 0 alone (a process group of one, the other ranks idle) in
the same rounds, because two launches minutes apart on a shared VM see different loads (the
sweep's W = 1 launch is the unpaired fallback).

Time on 2 cores: ``plinius bench --only distributed --world-size 2`` took 141–165 s (2 min 38 s
to 2 min 55 s wall with start-up) while other tests loaded the machine (1-minute load 1.3–7.8):
ResNet-50 + Adam, 293 MiB of state, the run's 7 rounds on tmpfs (78–99 s of it the W = 2
comparison, 24–57 s the W = 1 saves, 17–25 s the W = 4 check); ``--rounds 3`` or
``--quick`` (the first :data:`QUICK_SPECS` tensors of ResNet-50, 3 rounds: 40–115 s) are
shorter. It is not part
of the default ``plinius bench`` (the answer runs only ``save`` and ``peers``); ``--only
distributed``, ``--world-size N`` or ``--paper`` run it. ``python -m
plinius.lab.bench.distributed`` prints its report part (``--places tmpfs,ssd`` adds the same
comparison on the disk).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from plinius.backends.fsinfo import mount_label, mount_of
from plinius.lab.bench.contenders import DEFAULT_ROUNDS
from plinius.lab.bench.stats import (
    RESAMPLES,
    SEED,
    Interval,
    median_interval,
    ratio_interval,
    speedup,
)
from plinius.lab.profiles import root_dir

NAME = "distributed"
DEFAULT_WORLD = 2
DEFAULT_WORKLOAD = "resnet50+adam"
ROUNDS = DEFAULT_ROUNDS
QUICK_ROUNDS = 3
#: --quick: only the first N tensors of the workload's architecture (a few MiB)
QUICK_SPECS = 40
#: the save-throughput sweep
SCALING = (1, 2, 4)
#: the world size the targets are read at
TARGET_WORLD = 2
#: where the comparison runs by default (the disk too: ``places=("tmpfs", "ssd")``)
PLACES = ("tmpfs",)
ROOT_OF = {"tmpfs": "shm", "ssd": "disk"}
WRAPS = ("ddp", "fsdp")
WRAP_LABEL = {"ddp": "DDP", "fsdp": "FSDP2"}
KINDS = ("torchmirror", "dcp.save", "dcp.async_save")
#: DDP's TorchMirror on rank 0 alone (W = 1) in the comparison's rounds: the paired W = 1 side
SOLO = "torchmirror-w1"
SOLO_LABEL = "torchmirror save, rank 0 alone (W = 1, same rounds)"
SAVE, RESTORE, SAVE_DONE = "save", "restore", "save (until written)"
#: seconds one launch may take before ``timeout`` kills it (and its ranks)
LAUNCH_TIMEOUT_S = 600
MAX_WORLD = 64
STORAGE_NOTE = {
    "tmpfs": "tmpfs is RAM: a save there survives a process crash, not a reboot; DCP fsyncs "
    "its files (FileSystemWriter's sync_files=True default in torch 2.13), a no-op on tmpfs, "
    "TorchMirror's tmpfs backend does not: like for like (both in RAM)",
    "ssd": "the disk: TorchMirror's ssd backend writes, fsyncs and renames every file and "
    "fsyncs the directory; DCP fsyncs every file it writes (sync_files=True)",
}


def cores() -> int:
    """The cores this process may use (what decides whether a launch can be timed)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_world(world: int) -> int:
    """``world`` if it is a world size this section launches (1..:data:`MAX_WORLD`)."""
    from plinius.core.errors import ConfigError

    if not 1 <= world <= MAX_WORLD:
        raise ConfigError(f"--world-size {world}: give 1..{MAX_WORLD} ranks")
    return world


def workload_of(named: Sequence[str]) -> str:
    """The workload of the section: the first named real-model workload (with Adam when it
    names no optimizer), else :data:`DEFAULT_WORKLOAD`."""
    for label in named:
        if label.startswith(("size-", "file:")):
            continue
        return label if "+" in label else f"{label}+adam"
    return DEFAULT_WORKLOAD


def torch_missing() -> str | None:
    """Why the section cannot run here (with the install hint), or None."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return "torch not installed: pip install 'plinius[torch]' (Python 3.11)"
    return None


# --- launching ---------------------------------------------------------------------------------


def launch(
    world: int,
    out: Path,
    places: Mapping[str, Path],
    key_file: Path,
    platform_dir: Path,
    *,
    workload: str,
    rounds: int,
    kinds: Sequence[str] = KINDS,
    wraps: Sequence[str] = WRAPS,
    specs: int | None = None,
    ops: Sequence[str] = (),
    solo: bool = False,
    timeout_s: float = LAUNCH_TIMEOUT_S,
) -> dict[str, Any]:
    """One torchrun launch of ``world`` ranks (inside ``timeout``); rank 0's JSON. ``ops``:
    only these operations (default: every one)."""
    worker = [
        "-m", "plinius.lab.bench.distributed_worker",
        "--workload", workload, "--rounds", str(rounds), "--kinds", ",".join(kinds),
        "--wraps", ",".join(wraps), "--places", ",".join(f"{k}={v}" for k, v in places.items()),
        "--key-file", str(key_file), "--platform", str(platform_dir), "--out", str(out),
    ]  # fmt: skip
    if specs:
        worker += ["--specs", str(specs)]
    if ops:
        worker += ["--ops", ",".join(ops)]
    if solo:
        worker += ["--solo"]
    cmd = [
        "timeout", "--kill-after=10", str(int(timeout_s)),
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc-per-node", str(world), *worker,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    res = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout_s + 30, check=False
    )
    wall = time.perf_counter() - t0
    if res.returncode != 0 or not out.exists():
        why = "timed out" if res.returncode in (124, 137) else f"exit {res.returncode}"
        raise RuntimeError(f"{world} ranks: torchrun {why}: {_tail(res.stderr + res.stdout)}")
    doc: dict[str, Any] = json.loads(out.read_text())
    doc["wall_s"] = round(wall, 1)
    return doc


def _tail(text: str, lines: int = 4) -> str:
    """The last lines that say something (torchrun's banners and blank lines left out)."""
    keep = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith(("File ", "^", "~", "=", "-"))
    ]
    errs = [line for line in keep if "Error" in line or "error" in line]
    return " | ".join((errs or keep)[-lines:])[:800]


def measure(
    *,
    world_size: int = DEFAULT_WORLD,
    rounds: int = ROUNDS,
    workload: str = DEFAULT_WORKLOAD,
    specs: int | None = None,
    places: Sequence[str] = PLACES,
    scaling: Sequence[int] = SCALING,
    quick: bool = False,
) -> dict[str, Any]:
    """The comparison at ``world_size`` and the save sweep over ``scaling``; JSON-ready
    (:func:`result`). Everything made here is removed before it returns."""
    from plinius.core.crypto import generate_key, write_key_file

    check_world(world_size)
    load0 = os.getloadavg()[0]
    n_cores = cores()
    scratch: dict[str, Path] = {}
    storage: dict[str, Any] = {}
    runs: list[dict[str, Any]] = []
    try:
        for kind in {"shm", *(ROOT_OF[p] for p in places)}:
            scratch[kind] = Path(tempfile.mkdtemp(prefix="plinius-dist-", dir=root_dir(kind)))
        key_file = scratch["shm"] / "owner.key"
        write_key_file(key_file, generate_key())
        storage = {p: _facts(scratch[ROOT_OF[p]], p) for p in places}
        # (W, places, kinds, ops, role): a timed sweep launch saves only; an untimed one (more
        # ranks than cores) runs every op once, for correctness
        plan: list[tuple[int, Sequence[str], tuple[str, ...], tuple[str, ...], str]] = [
            (world_size, places, KINDS, (), "comparison")
        ]
        for w in scaling:
            if w != world_size:
                timed = w <= n_cores
                kinds: tuple[str, ...] = ("torchmirror", "dcp.save") if timed else KINDS
                plan.append((w, ("tmpfs",), kinds, (SAVE,) if timed else (), "scaling"))
        for n, (w, where, kinds, ops, role) in enumerate(plan):
            timing = w <= n_cores
            # more ranks than cores: one round for correctness, on a cut workload (a full
            # one would only make the 2 cores time-slice 4 ranks for longer)
            cut = specs if timing or role == "comparison" else specs or QUICK_SPECS
            run_dir = {p: scratch[ROOT_OF[p]] / f"run{n}-{p}" for p in where}
            entry: dict[str, Any] = {
                "world": w,
                "role": role,
                "timing": timing,
                "rounds": rounds if timing else 1,
                "places": list(where),
                "kinds": list(kinds),
                "specs": cut,
            }
            try:
                got = launch(
                    w,
                    scratch["shm"] / f"run{n}.json",
                    run_dir,
                    key_file,
                    scratch["shm"] / f"platform{n}",  # fresh: no counter of another launch
                    workload=workload,
                    rounds=entry["rounds"],
                    kinds=kinds,
                    specs=cut,
                    ops=ops,
                    solo=role == "comparison",
                )
                entry.update(status="ok", **got)
            except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
                entry.update(status="failed", error=str(exc))
            finally:
                for d in run_dir.values():
                    shutil.rmtree(d, ignore_errors=True)
            runs.append(entry)
    finally:
        for d in scratch.values():
            shutil.rmtree(d, ignore_errors=True)
    return result(
        runs,
        world_size=world_size,
        workload=workload,
        specs=specs,
        quick=quick,
        storage=storage,
        load=(load0, os.getloadavg()[0]),
    )


def ops_of(kind: str) -> tuple[str, ...]:
    """The operations contender kind ``kind`` has, in the order a round runs them."""
    if kind not in KINDS:
        raise ValueError(f"no distributed contender {kind!r} (known: {', '.join(KINDS)})")
    return (SAVE, SAVE_DONE) if kind == "dcp.async_save" else (SAVE, RESTORE)


def measure_one(
    world: int, wrap: str, kind: str, op: str, *, workload: str = DEFAULT_WORKLOAD,
    specs: int | None = None,
) -> float:  # fmt: skip
    """One launch of ``world`` ranks running contender ``wrap``/``kind`` once on tmpfs, its ops
    up to ``op`` (a restore reads the save before it); the slowest rank's seconds of ``op``
    (the asv class's figure). Scratch removed before it returns."""
    from plinius.core.crypto import generate_key, write_key_file

    ops = ops_of(kind)
    if op not in ops:
        raise ValueError(f"{kind} has no {op!r}")
    scratch = Path(tempfile.mkdtemp(prefix="plinius-dist-", dir=root_dir("shm")))
    try:
        write_key_file(scratch / "owner.key", generate_key())
        got = launch(
            world, scratch / "run.json", {"tmpfs": scratch / "data"}, scratch / "owner.key",
            scratch / "platform", workload=workload, rounds=1, kinds=(kind,), wraps=(wrap,),
            specs=specs, ops=ops[: ops.index(op) + 1],
        )  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    (c,) = got["contenders"]
    if c.get("errors"):
        raise RuntimeError(f"{c['id']}: {c['errors'][0]}")
    return float(c["ops"][op]["seconds"][0])


def measure_all(
    world: int, *, workload: str = DEFAULT_WORKLOAD, specs: int | None = None
) -> dict[tuple[str, str, str], float]:
    """One launch of ``world`` ranks running every wrap, contender and op once on tmpfs;
    ``{(wrap, kind, op): the slowest rank's seconds}`` (the asv class's figures: one launch
    per world size, not one per parameter combination). Scratch removed before it returns."""
    from plinius.core.crypto import generate_key, write_key_file

    scratch = Path(tempfile.mkdtemp(prefix="plinius-dist-", dir=root_dir("shm")))
    try:
        write_key_file(scratch / "owner.key", generate_key())
        got = launch(
            world, scratch / "run.json", {"tmpfs": scratch / "data"}, scratch / "owner.key",
            scratch / "platform", workload=workload, rounds=1, specs=specs,
        )  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    out: dict[tuple[str, str, str], float] = {}
    for c in got["contenders"]:
        if c.get("errors"):
            raise RuntimeError(f"{c['id']}: {c['errors'][0]}")
        for op, m in c["ops"].items():
            out[(c["wrap"], c["kind"], op)] = float(m["seconds"][0])
    return out


def _facts(d: Path, place: str) -> dict[str, Any]:
    m = mount_of(d)
    return {
        "dir": str(d.parent),
        "mount": mount_label(m),
        "fs_type": m.fs_type,
        "note": STORAGE_NOTE[place],
    }


# --- results -----------------------------------------------------------------------------------


def unpaired_ratio(num: Sequence[float], den: Sequence[float]) -> Interval:
    """``median(num) / median(den)`` with a bootstrap interval resampling each side on its own
    (samples of two launches: round ``r`` of one has nothing to do with round ``r`` of the
    other, even when both have as many rounds)."""
    a, b = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    if a.size == 0 or b.size == 0 or np.any(b <= 0):
        raise ValueError("a ratio needs samples on both sides, the denominator's > 0")
    point = float(np.median(a) / np.median(b))
    if a.size == 1 and b.size == 1:
        return Interval(point, point, point, 1, False)
    rng = np.random.default_rng(SEED)
    ma = np.median(a[rng.integers(0, a.size, size=(RESAMPLES, a.size))], axis=1)
    mb = np.median(b[rng.integers(0, b.size, size=(RESAMPLES, b.size))], axis=1)
    lo, hi = np.percentile(ma / mb, [2.5, 97.5])
    return Interval(point, min(float(lo), point), max(float(hi), point), min(a.size, b.size), False)


def _mib_s(nbytes: int, iv: Interval) -> dict[str, Any]:
    """Throughput of ``nbytes`` in ``iv`` seconds, as an interval in MiB/s."""
    mib = nbytes / (1 << 20)
    return {"median": mib / iv.median, "ci95": [mib / iv.hi, mib / iv.lo], "n": iv.n}


def _op_row(c: Mapping[str, Any], op: str, timing: bool) -> dict[str, Any] | None:
    o = (c.get("ops") or {}).get(op)
    if not o or not o.get("seconds"):
        return None
    iv = median_interval(o["seconds"])
    row: dict[str, Any] = {"seconds": o["seconds"], "per_rank": o.get("per_rank", [])}
    if timing:
        row["ms"] = iv.scaled(1e3).as_json()
        row["mib_s"] = _mib_s(int(c["nbytes"]), iv)
    return row


def _contender(c: Mapping[str, Any], timing: bool) -> dict[str, Any]:
    ops = {op: _op_row(c, op, timing) for op in (SAVE, SAVE_DONE, RESTORE)}
    return {
        "id": c["id"],
        "name": c["name"],
        "wrap": c["wrap"],
        "kind": c["kind"],
        "place": c["place"],
        "nbytes": c["nbytes"],
        "rank_bytes": c.get("rank_bytes"),
        "status": "failed" if c.get("errors") else "ok",
        "errors": c.get("errors") or [],
        "exact": not c.get("errors") and RESTORE in (c.get("ops") or {}),
        "facts": c.get("facts") or {},
        "ops": {k: v for k, v in ops.items() if v is not None},
    }


def _find(run: Mapping[str, Any], wrap: str, kind: str, place: str) -> dict[str, Any] | None:
    return next(
        (
            c
            for c in run.get("contenders") or []
            if (c["wrap"], c["kind"], c["place"]) == (wrap, kind, place)
        ),
        None,
    )


def _seconds(c: Mapping[str, Any] | None, op: str) -> list[float] | None:
    if c is None or c.get("status") != "ok":
        return None
    o = c["ops"].get(op)
    return list(o["seconds"]) if o and o.get("seconds") else None


def result(
    raw_runs: Sequence[Mapping[str, Any]],
    *,
    world_size: int,
    workload: str,
    specs: int | None,
    quick: bool,
    storage: Mapping[str, Any],
    load: tuple[float, float],
) -> dict[str, Any]:
    """What results.json keeps: every launch with its contenders (medians and intervals where
    it was timed), the comparison's ratios and the save sweep."""
    runs = []
    for r in raw_runs:
        entry = {k: v for k, v in r.items() if k != "contenders"}
        if entry.get("status") == "ok" and entry.get("errors"):  # a wrap that was not built
            said = "; ".join(map(str, entry["errors"]))
            if r.get("contenders"):
                entry["notes"] = said
            else:
                entry.update(status="failed", error=said)
        entry["contenders"] = [
            _contender(c, bool(r.get("timing"))) for c in r.get("contenders") or []
        ]
        runs.append(entry)
    comp = next((r for r in runs if r["role"] == "comparison"), None)
    ratios = []
    if comp is not None and comp["status"] == "ok" and comp["timing"]:
        for place in comp["places"]:
            for wrap in WRAPS:
                mine = _find(comp, wrap, "torchmirror", place)
                for kind, op, their_op in (
                    ("dcp.save", SAVE, SAVE),
                    ("dcp.async_save", SAVE, SAVE),
                    ("dcp.async_save", SAVE, SAVE_DONE),
                    ("dcp.save", RESTORE, RESTORE),
                    (SOLO, SAVE, SAVE),
                ):
                    a, b = _seconds(mine, op), _seconds(_find(comp, wrap, kind, place), their_op)
                    if not a or not b:
                        continue
                    iv = speedup(a, b)
                    ratios.append(
                        {
                            "wrap": wrap,
                            "place": place,
                            "mine": f"torchmirror {op}",
                            "theirs": SOLO_LABEL
                            if kind == SOLO
                            else f"{'dcp.load' if op == RESTORE else kind} {their_op}",
                            "speedup": iv.as_json(),
                        }
                    )
    sweep = []
    for r in sorted(runs, key=lambda r: r["world"]):
        for wrap in WRAPS:
            for kind in ("torchmirror", "dcp.save"):
                c = _find(r, wrap, kind, "tmpfs")
                row: dict[str, Any] = {
                    "world": r["world"],
                    "wrap": wrap,
                    "kind": kind,
                    "timing": r["timing"],
                    "rounds": r["rounds"],
                    "specs": r.get("specs"),
                    "status": r["status"] if c is None else c["status"],
                }
                if r["status"] != "ok":
                    row["error"] = r.get("error", "")
                elif c is None:
                    continue
                else:
                    row["rank_bytes"] = c.get("rank_bytes")
                    row["exact"] = c.get("exact")
                    if c["errors"]:
                        row["error"] = c["errors"][0]
                    s = c["ops"].get(SAVE)
                    if s and "ms" in s:
                        row["ms"] = s["ms"]
                        row["mib_s"] = s["mib_s"]
                sweep.append(row)
    nbytes = next((c["nbytes"] for r in runs for c in r["contenders"]), None)
    doc: dict[str, Any] = {
        "world_size": world_size,
        "target_world": TARGET_WORLD,
        "workload": workload,
        "specs": specs,
        "quick": quick,
        "nbytes": nbytes,
        "cores": cores(),
        "aead_threads": os.environ.get("PLINIUS_AEAD_THREADS") or None,
        "load": [round(x, 2) for x in load],
        "storage": dict(storage),
        "runs": runs,
        "ratios": ratios,
        "scaling": sweep,
    }
    return doc


# --- targets -----------------------------------------------------------------------------------

SAVE_BAR, RESTORE_BAR, DEDUP_BAR = 2.0, 1.5, 0.6


def targets(doc: Mapping[str, Any], t: Any) -> None:
    """The issue's three bars, per wrap where it names none: TorchMirror save ≥ 2× ``dcp.save``
    and restore ≥ 1.5× ``dcp.load`` at W = 2 (tmpfs, encrypted and fresh against plaintext),
    and TorchMirror's DDP save at W = 2 ≤ 0.6× its W = 1 time (each rank seals its half of the
    replicated tensors): paired with rank 0 alone in the same rounds when the comparison ran
    at W = 2, else the sweep's two launches, unpaired."""
    got = doc.get(NAME) or {}
    wl = got.get("workload")
    runs = got.get("runs") or []
    comp = next((r for r in runs if r.get("role") == "comparison"), None)
    why = ""
    if not got:
        why = "not run: the distributed section did not run (plinius bench --only distributed)"
    elif comp is None or comp.get("status") != "ok":
        why = f"not run: the comparison failed: {(comp or {}).get('error', 'no launch')}"
    elif comp["world"] != TARGET_WORLD:
        why = f"not run: the comparison ran at W = {comp['world']} (--world-size 2 measures it)"
    elif not comp.get("timing"):
        why = f"not run: W = {TARGET_WORLD} on {got.get('cores')} cores is correctness only"
    for wrap in WRAPS:
        w = WRAP_LABEL[wrap]
        for key, what, bar, kind, op in (
            (
                f"dist_save_vs_dcp_save_{wrap}",
                f"TorchMirror save ≥ 2× dcp.save, {w}, W = 2 (tmpfs; sealed + fresh vs plaintext)",
                SAVE_BAR,
                "dcp.save",
                SAVE,
            ),
            (
                f"dist_restore_vs_dcp_load_{wrap}",
                f"TorchMirror restore ≥ 1.5× dcp.load, {w}, W = 2 (tmpfs; sealed + fresh vs "
                "plaintext)",
                RESTORE_BAR,
                "dcp.save",
                RESTORE,
            ),
        ):
            if why:
                t.add(key, what, bar, None, why=why, workload=wl)
                continue
            assert comp is not None
            mine, them = _find(comp, wrap, "torchmirror", "tmpfs"), _find(comp, wrap, kind, "tmpfs")
            a, b = _seconds(mine, op), _seconds(them, op)
            if not a or not b:
                bad = mine if not a else them
                err = (bad or {}).get("errors") or ["did not run"]
                t.add(key, what, bar, None, why=f"not run: {err[0]}", workload=wl)
                continue
            theirs = "dcp.load" if op == RESTORE else kind
            t.add(
                key, what, bar, speedup(a, b), workload=wl,
                sides=f"TorchMirror {op} vs {theirs}, {w}, W = 2, slowest rank",
                durability="RAM (tmpfs) both",
            )  # fmt: skip
    key = "dist_ddp_save_w2_vs_w1"
    what = "TorchMirror DDP save time at W = 2 ≤ 0.6× W = 1 (dedup: each rank seals its half)"
    by_world = {r["world"]: r for r in runs if r.get("status") == "ok" and r.get("timing")}
    if not got:
        t.add(key, what, DEDUP_BAR, None, why=why, at_least=False, workload=wl)
        return
    if comp is not None and comp.get("world") == 2 and not why:
        a = _seconds(_find(comp, "ddp", "torchmirror", "tmpfs"), SAVE)
        b = _seconds(_find(comp, "ddp", SOLO, "tmpfs"), SAVE)
        if a and b:  # paired: both in the same rounds of one launch
            t.add(
                key, what, DEDUP_BAR, ratio_interval(a, b), at_least=False, workload=wl,
                sides="TorchMirror DDP save, W = 2 / rank 0 alone (W = 1) in the same rounds, "
                "slowest rank",
                durability="RAM (tmpfs)",
            )  # fmt: skip
            return
    a = _seconds(_find(by_world.get(2) or {}, "ddp", "torchmirror", "tmpfs"), SAVE)
    b = _seconds(_find(by_world.get(1) or {}, "ddp", "torchmirror", "tmpfs"), SAVE)
    if not a or not b:
        missing = [w for w, s in ((2, a), (1, b)) if not s]
        t.add(
            key, what, DEDUP_BAR, None, at_least=False, workload=wl,
            why=f"not run: no timed TorchMirror DDP save at W = {', '.join(map(str, missing))}",
        )  # fmt: skip
        return
    t.add(
        key, what, DEDUP_BAR, unpaired_ratio(a, b), at_least=False, workload=wl,
        sides="TorchMirror DDP save, W = 2 / W = 1, slowest rank (two launches: unpaired)",
        durability="RAM (tmpfs)",
    )  # fmt: skip


# --- the report --------------------------------------------------------------------------------


def _text(d: Mapping[str, Any] | None, fmt: str = "{:.3g}", unit: str = "") -> str:
    return "" if not d else Interval.from_json(dict(d)).text(fmt, unit)


def _mib(d: Mapping[str, Any] | None) -> str:
    if not d:
        return ""
    lo, hi = d["ci95"]
    return f"{d['median']:.0f} [{lo:.0f}–{hi:.0f}]"


COMPARISON_COLUMNS = (
    "wrap",
    "contender",
    "storage",
    "save (ms)",
    "save until written (ms)",
    "restore (ms)",
    "save MiB/s",
    "exact restores",
)


def comparison_rows(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    comp = next((r for r in doc.get("runs") or [] if r.get("role") == "comparison"), None)
    out: list[dict[str, Any]] = []
    for c in (comp or {}).get("contenders") or []:
        ops = c["ops"]
        row: dict[str, Any] = {
            "wrap": WRAP_LABEL.get(c["wrap"], c["wrap"]),
            "contender": {
                "torchmirror": "torchmirror (sealed)",
                SOLO: "torchmirror (sealed), rank 0 alone: W = 1",
            }.get(c["kind"], c["kind"]),
            "storage": c["place"],
        }
        if c["status"] != "ok":
            row["save (ms)"] = "failed: " + " ".join(str(c["errors"][0]).split())[:200]
            out.append(row)
            continue
        save = ops.get(SAVE_DONE) or ops.get(SAVE) or {}
        row["save (ms)"] = _text((ops.get(SAVE) or {}).get("ms"))
        row["save until written (ms)"] = _text((ops.get(SAVE_DONE) or {}).get("ms"))
        row["restore (ms)"] = _text((ops.get(RESTORE) or {}).get("ms"))
        row["save MiB/s"] = _mib(save.get("mib_s"))
        row["exact restores"] = (
            "yes, every round" if RESTORE in ops else "n/a (saves only: not restored)"
        )
        out.append(row)
    return sorted(out, key=lambda r: (r["wrap"], r["storage"]))


RATIO_COLUMNS = ("wrap", "storage", "TorchMirror", "against", "TorchMirror is × faster")


def ratio_rows(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "wrap": WRAP_LABEL[r["wrap"]],
            "storage": r["place"],
            "TorchMirror": r["mine"],
            "against": r["theirs"],
            "TorchMirror is × faster": _text(r["speedup"], unit="×"),
        }
        for r in doc.get("ratios") or []
    ]


SCALING_COLUMNS = (
    "W", "wrap", "contender", "save (ms), slowest rank", "MiB/s", "state held per rank", "note"
)  # fmt: skip


def scaling_rows(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for r in doc.get("scaling") or []:
        note = "" if r["timing"] else f"correctness only ({doc.get('cores')} cores): 1 round"
        if r.get("specs") != doc.get("specs"):
            note += f", on the first {r.get('specs')} tensors of the workload"
        if r.get("status") != "ok":
            note = f"failed: {' '.join(str(r.get('error', '')).split())[:200]}"
        elif not r["timing"]:
            note += "; every restore exact" if r.get("exact") else "; saves ran"
        rb = r.get("rank_bytes") if r.get("specs") == doc.get("specs") else None
        out.append(
            {
                "W": r["world"],
                "wrap": WRAP_LABEL[r["wrap"]],
                "contender": r["kind"],
                "save (ms), slowest rank": _text(r.get("ms")) if r["timing"] else "",
                "MiB/s": _mib(r.get("mib_s")) if r["timing"] else "",
                "state held per rank": f"{rb / (1 << 20):.1f} MiB" if rb else "",
                "note": note,
            }
        )
    return out


def headline(doc: Mapping[str, Any]) -> str:
    comp: Mapping[str, Any] = next(
        (r for r in doc.get("runs") or [] if r.get("role") == "comparison"), {}
    )
    wl = doc.get("workload")
    if doc.get("specs"):
        wl = f"{wl} cut to its first {doc['specs']} tensors (--quick)"
    nbytes = doc.get("nbytes") or 0
    load = "–".join(f"{x:.1f}" for x in doc.get("load") or [])
    storage = "; ".join(
        f"{p}: {s['mount']} under {s['dir']} ({s['note']})"
        for p, s in (doc.get("storage") or {}).items()
    )
    backends = ", ".join(p for p in doc.get("storage") or {})
    n = doc.get("cores")
    return (
        f"Workload {wl}: {nbytes / (1 << 20):.0f} MiB of model and optimizer state, built on "
        f"every rank, wrapped as DDP and as FSDP2 (`fully_shard` on every module holding "
        f"parameters, then the root), Adam state from one real step. The comparison ran "
        f"{comp.get('world', '?')} ranks (torchrun --standalone, gloo on CPU, one thread each) "
        f"in {comp.get('rounds', '?')} interleaved rounds, order rotated; every timed operation "
        "starts after a barrier and its figure is the slowest rank's seconds (a save is done "
        "when the last rank is), median [95 % bootstrap interval]. TorchMirror's save is "
        "synchronous (sealed, written and committed across ranks when it returns), its restore "
        "a new TorchMirror + restore() (what a restarted job runs); DCP's state is "
        "get_state_dict (+ set_state_dict after dcp.load). Every restore is zeroed before and "
        "compared bit for bit after (untimed): a contender that does not restore exactly fails. "
        f"Storage: {storage}. The enclave is simulated (a software boundary); the platform is a "
        "throw-away simulated CPU; no persistent memory is used (TorchMirror on its file "
        f"backends: {backends}). {n} cores, 1-minute load {load}: W ≤ {n} is timed, a larger "
        "W runs one round for correctness only."
    )


def markdown(doc: Mapping[str, Any]) -> list[str]:
    """The section's part of report.md."""
    from plinius.lab.reporting.markdown import md_table

    parts = [
        "## Distributed: TorchMirror against torch.distributed.checkpoint (DDP, FSDP2)",
        "",
        headline(doc),
        "",
    ]
    failed = [r for r in doc.get("runs") or [] if r.get("status") != "ok"]
    for r in failed:
        parts += [f"- W = {r['world']} ({r['role']}) failed: {r.get('error')}", ""]
    for r in doc.get("runs") or []:
        if r.get("notes"):
            parts += [f"- W = {r['world']} ({r['role']}): {r['notes']}", ""]
    comp = comparison_rows(doc)
    if comp:
        parts += [md_table(comp, COMPARISON_COLUMNS), ""]
    ratios = ratio_rows(doc)
    if ratios:
        parts += [
            "TorchMirror's speed-up over each, paired by round (sealed and fresh against "
            "plaintext; `dcp.async_save` returns before its files are written):",
            "",
            md_table(ratios, RATIO_COLUMNS),
            "",
        ]
    sweep = scaling_rows(doc)
    if sweep:
        parts += [
            "Save time against world size (tmpfs; the total state is the same at every W; "
            f"W = 4 on {doc.get('cores')} cores is correctness only: more ranks than cores "
            "time the CPU scheduler, not the save):",
            "",
            md_table(sweep, SCALING_COLUMNS),
            "",
            threads_line(doc),
            "",
        ]
    return parts


def threads_line(doc: Mapping[str, Any]) -> str:
    """Why a DDP save at W = 2 need not take half the W = 1 time on a small machine."""
    n = doc.get("cores")
    v = doc.get("aead_threads")
    threads = f"PLINIUS_AEAD_THREADS={v}: {v}" if v else f"PLINIUS_AEAD_THREADS unset: up to {n}"
    return (
        f"TorchMirror's AES-GCM may seal on every core a rank can use ({threads} "
        f"threads per rank; `auto` picks the threads per call size), so on {n} cores "
        "one rank alone can already seal on all of them: at W = 2 the ranks share those cores "
        "(and add the two-phase commit), and each rank sealing half the replicated bytes "
        "halves the save time only where every rank has cores of its own."
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m plinius.lab.bench.distributed",
        description="TorchMirror across ranks against torch.distributed.checkpoint",
    )
    p.add_argument("--world-size", type=int, default=DEFAULT_WORLD)
    p.add_argument("--rounds", type=int, default=ROUNDS)
    p.add_argument("--workload", default=DEFAULT_WORKLOAD)
    p.add_argument("--places", default=",".join(PLACES), help="tmpfs, ssd or tmpfs,ssd")
    p.add_argument("--quick", action="store_true", help=f"the first {QUICK_SPECS} tensors")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    doc = measure(
        world_size=args.world_size,
        rounds=QUICK_ROUNDS if args.quick else args.rounds,
        workload=args.workload,
        specs=QUICK_SPECS if args.quick else None,
        places=[x for x in args.places.split(",") if x],
        quick=args.quick,
    )
    print(json.dumps(doc, indent=1) if args.json else "\n".join(markdown(doc)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
