"""The targets of the speed issue, computed from one run's samples as ratios with intervals.

Each target compares two things measured in the same interleaved rounds (a backend instance
against a peer, a limit or another instance) at the target workload (the paper's size-64
model when it ran). The ratio's 95 % interval is bootstrapped paired by round
(:mod:`plinius.bench.stats`); the verdict is ``met`` only when the whole interval meets the
bar, ``not met`` when it misses it entirely, ``inconclusive`` when it straddles it,
``reported`` when the issue sets no bar (the figure is shown with its interval), and
``not run`` (with why) when an input is missing. Everything is read from results.json, so
``plinius report`` redraws the table without re-running.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from plinius.bench.stats import Interval, speedup, verdict

TARGET_WORKLOAD = "size-64"
PAPER_PM_VS_SSD = {"save": "3.2–3.5×", "restore": "2.5–3.7×"}
PM_DEVICE_ROLE = "PM device model"


def target_workload(doc: dict[str, Any]) -> str | None:
    """size-64 when it ran, else the first workload the peers and limits ran on, else the
    first workload at all."""
    names = [w["workload"] for w in doc.get("workloads") or []]
    if TARGET_WORKLOAD in names:
        return TARGET_WORKLOAD
    full = [w["workload"] for w in doc.get("workloads") or [] if w.get("full")]
    return (full or names or [None])[0]


def _contenders(doc: dict[str, Any], wl: str | None, section: str) -> list[dict[str, Any]]:
    return [
        c
        for c in doc.get("contenders") or []
        if c["section"] == section and c["workload"] == wl and c.get("ops")
    ]


def _place(c: dict[str, Any]) -> str:
    """Where a peer wrote (``tmpfs`` or ``ssd``): from its facts, else from its name."""
    f = c.get("facts") or {}
    for k in ("label", "dir_kind", "where", "place", "storage", "dir_label"):
        v = str(f.get(k, ""))
        if v in ("tmpfs", "ssd"):
            return v
    name = c["name"].lower()
    return "tmpfs" if "tmpfs" in name else "ssd" if "ssd" in name else ""


def _fastest(
    cands: Sequence[dict[str, Any]], ops: Sequence[str]
) -> tuple[dict[str, Any], str] | None:
    """The (contender, op) with the lowest median among ``cands`` and their ``ops``."""
    best: tuple[float, dict[str, Any], str] | None = None
    for c in cands:
        for op in ops:
            o = c["ops"].get(op)
            if o and o["seconds"]:
                med = float(o["interval"]["median"])
                if best is None or med < best[0]:
                    best = (med, c, op)
    return None if best is None else (best[1], best[2])


def _peer(
    doc: dict[str, Any], wl: str | None, place: str, words: Sequence[str], exclude: Sequence[str]
) -> list[dict[str, Any]]:
    out = []
    for c in _contenders(doc, wl, "peers"):
        name = c["name"].lower()
        wanted = all(w in name for w in words) and not any(x in name for x in exclude)
        if wanted and _place(c) == place:
            out.append(c)
    return out


def _restore_ops(c: dict[str, Any]) -> list[str]:
    """A peer's warm restore operations (every ``restore*`` but the cold one): a peer may time
    more than one way to materialise (numpy.copyto, torch copy_); the faster one is ranked."""
    return [op for op in c["ops"] if op.startswith("restore") and "cold" not in op]


def _all_core_aes(doc: dict[str, Any], wl: str | None) -> dict[str, Any] | None:
    aes = [c for c in _contenders(doc, wl, "limits") if c["name"].lower().startswith("aes")]
    if not aes:
        return None

    # the limit is the fastest raw AES-GCM this run measured, whichever engine and threads
    def encrypt_median(c: dict[str, Any]) -> float:
        o = c["ops"].get("encrypt")
        return float(o["interval"]["median"]) if o and o.get("seconds") else float("inf")

    return min(aes, key=encrypt_median)


def _row(doc: dict[str, Any], wl: str | None, instance: str) -> dict[str, Any] | None:
    for r in doc.get("results") or []:
        if r.get("model") == wl and r.get("instance") == instance and r.get("samples"):
            return r
    return None


def _role_row(doc: dict[str, Any], wl: str | None, role: str) -> dict[str, Any] | None:
    for r in doc.get("results") or []:
        if r.get("model") == wl and r.get("role") == role and r.get("samples"):
            return r
    return None


def _headline(r: dict[str, Any]) -> tuple[list[float], str]:
    s = r["samples"]
    return (list(s["restore_cold"]), "cold") if s.get("restore_cold") else (s["restore"], "warm")


class _Table:
    def __init__(self, wl: str | None) -> None:
        self.wl = wl
        self.rows: list[dict[str, Any]] = []

    def add(
        self,
        key: str,
        target: str,
        bar: float | None,
        iv: Interval | None,
        *,
        sides: str = "",
        durability: str = "-",
        why: str = "",
        at_least: bool = True,
        reference: str = "",
        point: bool = False,
        workload: str | None = None,
        fraction: bool = False,
    ) -> None:
        sign = ">=" if at_least else "<="
        row: dict[str, Any] = {
            "id": key,
            "target": target,
            "workload": workload or self.wl,
            "sides": sides,
            "durability": durability,
            "bar": f"{sign} {bar:g}" if bar is not None else "no target",
            "bar_value": bar,
            "at_least": at_least,
            "interval": None if iv is None else iv.as_json(),
            "measured": None if iv is None else iv.median,
            "reference": reference,
            "point_estimate": point,
            "unit": "fraction" if fraction else "ratio",
        }
        if iv is None:
            row["verdict"], row["why"] = "not run", why or "an input did not run"
        elif bar is None:
            row["verdict"] = "reported"
        else:
            row["verdict"] = verdict(iv, bar, at_least)
        self.rows.append(row)


def _missing(what: Sequence[tuple[str, object]]) -> str:
    gone = [name for name, v in what if v is None]
    return "not run: " + ", ".join(gone) + " did not run at this workload" if gone else ""


def _why_peers(doc: dict[str, Any], wl: str | None, default: str) -> str:
    for w in doc.get("workloads") or []:
        if w["workload"] == wl and "peers" in (w.get("not_run") or {}):
            return str(w["not_run"]["peers"])
    return default


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of the issue, measured in this run (see the module's docstring)."""
    wl = target_workload(doc)
    t = _Table(wl)
    rom = _row(doc, wl, "romulus")
    aes = _all_core_aes(doc, wl)

    # -- against the machine's limit ---------------------------------------------------------
    for op, aes_op, bar, key in (
        ("save", "encrypt", 0.80, "save_vs_aes_all_cores"),
        ("restore", "decrypt", 0.85, "restore_vs_aes_all_cores"),
    ):
        what = f"romulus {op} ≥ {bar:.2f}× raw AES-GCM {aes_op} throughput (fastest way measured)"
        if rom is None or aes is None or aes_op not in aes["ops"]:
            why = _missing([("romulus", rom), (f"limits: all-core {aes_op}", aes)])
            t.add(key, what, bar, None, why=why or f"not run: no {aes_op} samples")
            continue
        iv = speedup(
            rom["samples"][op], aes["ops"][aes_op]["seconds"], rom["bytes"] / aes["nbytes"]
        )
        sides = f"romulus {op} vs {aes['name']} {aes_op} (throughput)"
        t.add(key, what, bar, iv, sides=sides, durability=rom["durability"])

    # -- against the tools people use instead ------------------------------------------------
    st_tmpfs = _peer(doc, wl, "tmpfs", ["safetensors"], ["aes"])
    ts_ssd = _peer(doc, wl, "ssd", ["torch.save", "aes"], [])
    peers_why = _why_peers(doc, wl, "not run: no peers at this workload")
    for key, what, bar, cands, ops_of in (
        (
            "save_vs_safetensors_tmpfs",
            "romulus save ≥ 2× safetensors save (tmpfs)",
            2.0,
            st_tmpfs,
            lambda c: ["save"],
        ),
        (
            "save_vs_torch_aes_fsync_ssd",
            "romulus save ≥ 15× torch.save + AES-GCM + fsync (ssd)",
            15.0,
            ts_ssd,
            lambda c: ["save"],
        ),
        (
            "restore_vs_safetensors_tmpfs",
            "romulus restore ≥ 2× materialised safetensors load (tmpfs, the faster copy)",
            2.0,
            st_tmpfs,
            _restore_ops,
        ),
    ):
        op = "restore" if key.startswith("restore") else "save"
        best = None
        for c in cands:
            got = _fastest([c], ops_of(c))
            if got and (best is None or _med(got) < _med(best)):
                best = got
        if rom is None or best is None:
            why = "not run: romulus did not run at this workload" if rom is None else peers_why
            t.add(key, what, bar, None, why=why)
            continue
        peer, peer_op = best
        iv = speedup(
            rom["samples"][op], peer["ops"][peer_op]["seconds"], rom["bytes"] / peer["nbytes"]
        )
        sides = f"romulus {op} vs {peer['name']} {peer_op}"
        t.add(key, what, bar, iv, sides=sides, durability=f"{rom['durability']} vs -")

    # -- like for like -----------------------------------------------------------------------
    tmpfs = _row(doc, wl, "tmpfs")
    for op, bar in (("save", 2.5), ("restore", 2.5)):
        what = f"romulus vs tmpfs {op} ≥ {bar:g}× (process-crash durability)"
        if rom is None or tmpfs is None:
            t.add(
                f"{op}_romulus_vs_tmpfs",
                what,
                bar,
                None,
                why=_missing([("romulus", rom), ("tmpfs", tmpfs)]),
            )
            continue
        iv = speedup(rom["samples"][op], tmpfs["samples"][op])
        t.add(
            f"{op}_romulus_vs_tmpfs",
            what,
            bar,
            iv,
            sides=f"romulus vs tmpfs {op}",
            durability=f"{rom['durability']} vs {tmpfs['durability']}",
        )
    ssd = _row(doc, wl, "ssd")
    msync = _row(doc, wl, "romulus?mode=msync")
    device = _role_row(doc, wl, PM_DEVICE_ROLE)
    for label, row, paper in (
        ("romulus?mode=msync", msync, None),
        (device["instance"] if device else "romulus (PM device model)", device, PAPER_PM_VS_SSD),
    ):
        for op in ("save", "restore"):
            what = f"{label} vs ssd {op}" + (" (ssd cold)" if op == "restore" else "")
            key = f"{op}_{'msync' if paper is None else 'pm_device'}_vs_ssd"
            ref = f"paper: {paper[op]}" if paper else ""
            if row is None or ssd is None:
                t.add(
                    key, what, None, None, why=_missing([(label, row), ("ssd", ssd)]), reference=ref
                )
                continue
            if op == "save":
                iv = speedup(row["samples"]["save"], ssd["samples"]["save"])
                how = "save"
            else:
                mine, a = _headline(row)
                theirs, b = _headline(ssd)
                iv = speedup(mine, theirs)
                how = f"restore ({a}) vs ssd restore ({b})"
            t.add(
                key,
                what,
                None,
                iv,
                sides=f"{label} {how}" if op == "restore" else f"{label} vs ssd save",
                durability=f"{row['durability']} vs {ssd['durability']}",
                reference=ref,
            )

    # -- mirroring overhead ------------------------------------------------------------------
    rows = [o for o in doc.get("overhead") or [] if not o.get("replica")]
    over = next((o for o in rows if not str(o.get("model", "")).startswith(TORCH_MODEL)), None)
    _overhead_targets(t, "overhead", over, "mnist", (("sync", 0.10), ("async", 0.03)))

    # -- PyTorch (TorchMirror against what PyTorch users use) --------------------------------
    _torch_targets(doc, t)
    tover = next((o for o in rows if str(o.get("model", "")).startswith(TORCH_MODEL)), None)
    _overhead_targets(t, "torch_overhead", tover, TORCH_MODEL, (("sync", None), ("async", 0.05)))
    return t.rows


TORCH_MODEL = "examples/torch_mnist.py"
TORCH_MIRROR = "TorchMirror (romulus)"


def _overhead_targets(
    t: _Table,
    prefix: str,
    over: dict[str, Any] | None,
    default_model: str,
    bars: Sequence[tuple[str, float | None]],
) -> None:
    """Mirroring overhead per iteration, sync and async: a paired interval over the rounds
    (older documents: the medians' point estimate)."""
    for mode, bar in bars:
        model = over["model"] if over else default_model
        limit = f" ≤ {bar:.0%}" if bar is not None else ""
        what = f"{model} mirroring overhead{limit} ({mode}, mirror every step)"
        got = None if over is None else over.get(f"{mode}_overhead")
        v = None if got is None else float(got)
        if over is None or v is None:
            why = "not run: the overhead section did not run"
            if over is not None:
                why = str(over.get("not_run") or "not measured")
            t.add(f"{prefix}_{mode}", what, bar, None, why=why, at_least=False)
            continue
        raw = over.get(f"{mode}_overhead_interval")
        point = not isinstance(raw, dict)
        iv = Interval.from_json(raw) if isinstance(raw, dict) else Interval(v, v, v, 1)
        t.add(
            f"{prefix}_{mode}",
            what,
            bar,
            iv,
            at_least=False,
            point=point,
            fraction=True,
            sides=f"{mode} mirror vs no mirror, per step",
            workload=str(over.get("model")),
            durability=str(over.get("durability") or "-"),
        )


def _torch_targets(doc: dict[str, Any], t: _Table) -> None:
    """TorchMirror on ``romulus`` against ``torch.save``/``torch.load`` on tmpfs and the
    hand-made ``torch.save`` + AES-GCM + fsync on ssd, at the first workload the torch section
    ran on (ResNet-50 + SGD-momentum by default)."""
    runs = [c for c in doc.get("contenders") or [] if c["section"] == "torch" and c.get("ops")]
    wl = next((c["workload"] for c in runs if c["name"] == TORCH_MIRROR), None)
    mine = next((c for c in runs if c["name"] == TORCH_MIRROR and c["workload"] == wl), None)

    def peer(name: str) -> dict[str, Any] | None:
        return next((c for c in runs if c["name"] == name and c["workload"] == wl), None)

    for key, what, bar, other, op, their_op in (
        (
            "torch_save_vs_torch_save_tmpfs",
            "TorchMirror (romulus) save ≥ 3× torch.save (tmpfs, plaintext)",
            3.0,
            "torch.save (tmpfs)",
            "save",
            "save",
        ),
        (
            "torch_save_vs_torch_aes_fsync_ssd",
            "TorchMirror (romulus) save ≥ 5× torch.save + AES-GCM + fsync (ssd)",
            5.0,
            "torch.save+AES-GCM+fsync (ssd)",
            "save",
            "save",
        ),
        (
            "torch_restore_vs_torch_load_tmpfs",
            "TorchMirror (romulus) restore faster than torch.load (tmpfs)",
            1.0,
            "torch.save (tmpfs)",
            "restore",
            "restore",
        ),
    ):
        them = peer(other)
        if mine is None or them is None or their_op not in them["ops"] or op not in mine["ops"]:
            why = _missing([(TORCH_MIRROR, mine), (other, them)]) or "not run: no samples"
            if not runs:
                why = "not run: the torch section did not run (torch, --workloads)"
            t.add(key, what, bar, None, why=why, workload=wl)
            continue
        iv = speedup(
            mine["ops"][op]["seconds"],
            them["ops"][their_op]["seconds"],
            mine["nbytes"] / them["nbytes"] if them["nbytes"] else 1.0,
        )
        t.add(key, what, bar, iv, sides=f"{TORCH_MIRROR} {op} vs {other} {their_op}", workload=wl)


def _med(got: tuple[dict[str, Any], str]) -> float:
    c, op = got
    return float(c["ops"][op]["interval"]["median"])
