"""The answer of ``plinius bench``: where should *this* mirror live, and what does each choice cost?

From the save section's rows at the user's one workload (every backend instance, measured in the
same interleaved rounds), one table per durability level: save, cold and warm restore (medians
with their 95 % intervals), the mirroring overhead per training step at the user's step time and
mirror interval, the work lost per failure, the bytes per save. Then one recommendation per level
by one stated rule: the fastest save wins only where it is faster than the next option's beyond
the noise (their ratio's interval, paired by round as in the targets table, lies above 1);
otherwise the options are *tied* and the report says what to choose by. The same rows
and the same intervals feed the targets table, so the two never disagree. Options of different
durability are never ranked against each other; one labelled "cost of durability" line says
what the stronger level costs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from plinius.lab.bench.stats import Interval, median_interval, speedup

RULE = (
    "an option wins only where its save is faster than the next option's beyond the noise (the "
    "95 % interval of their ratio, paired by round as in the targets, lies above 1); otherwise "
    "they are tied"
)
_OPS = ("save", "restore", "restore_cold")
#: the durability levels, strongest first (the order of the answer's tables)
LEVELS = ("power-fail", "process-crash", "none")
TITLES = {"power-fail": "power failure", "process-crash": "process crash"}


@dataclass(frozen=True)
class Option:
    """One backend instance (or one peer: what users do instead) at the user's workload."""

    instance: str
    durability: str
    emulated: bool
    role: str
    mirror_bytes: int
    save: Interval
    restore_warm: Interval
    restore_cold: Interval | None
    #: seconds of save per training step (save / (every × step time)), as a fraction
    overhead: Interval
    #: training seconds lost by one failure: half an interval on average plus the restore
    lost_s: float
    #: a device model: the instance it only adds delays to ("" when that one did not run)
    models: str | None = None
    #: a device model's own added wait per save (median seconds)
    model_wait_s: float | None = None
    #: a peer: "sealed" (AES-GCM by hand) or "plaintext"; None for plinius's own options
    peer: str | None = None
    save_samples: tuple[float, ...] = ()

    @property
    def restore(self) -> Interval:
        """The headline restore: cold where the backend has a page cache to evict."""
        return self.restore_cold or self.restore_warm

    @property
    def ranked(self) -> bool:
        """Whether the recommendation may pick it: plinius's own, real (not a model) options."""
        return self.models is None and self.peer is None


@dataclass(frozen=True)
class Verdict:
    durability: str
    text: str
    winner: str | None  # None: tied (or a single option)


def _option(
    name: str,
    durability: str,
    samples: Mapping[str, Sequence[float]],
    nbytes: int,
    interval_s: float,
    **more: Any,
) -> Option:
    save = median_interval(samples["save"])
    warm = median_interval(samples["restore"])
    cold = median_interval(samples["restore_cold"]) if samples.get("restore_cold") else None
    return Option(
        instance=name,
        durability=durability,
        mirror_bytes=nbytes,
        save=save,
        restore_warm=warm,
        restore_cold=cold,
        overhead=save.scaled(1.0 / interval_s),
        lost_s=interval_s / 2 + (cold or warm).median,
        save_samples=tuple(samples["save"]),
        **{"emulated": False, "role": "", **more},
    )


def options(doc: Mapping[str, Any], workload: str, step_s: float, every: int) -> list[Option]:
    """Every instance measured at ``workload``, fastest save first."""
    out = []
    interval_s = step_s * every
    for r in doc.get("results") or []:
        if r.get("model") != workload or not r.get("samples"):
            continue
        wait = (r.get("save_breakdown") or {}).get("model_wait_s")
        out.append(
            _option(
                str(r["instance"]),
                str(r["durability"]),
                r["samples"],
                int(r["bytes"]),
                interval_s,
                emulated=bool(r.get("emulated")),
                role=str(r.get("role") or ""),
                models=r.get("models"),
                model_wait_s=wait,
            )
        )
    return sorted(out, key=lambda o: o.save.median)


def peers(doc: Mapping[str, Any], workload: str, step_s: float, every: int) -> list[Option]:
    """What users would do instead, measured in the same rounds on the same tensors: the
    fastest peer sealed by hand (AES-GCM) and the fastest plaintext one of each durability."""
    got: dict[tuple[str, str], Option] = {}
    for c in doc.get("contenders") or []:
        ops = c.get("ops") or {}
        if c.get("section") != "peers" or c.get("workload") != workload:
            continue
        if "save" not in ops or "restore" not in ops or c.get("errors"):
            continue
        facts = c.get("facts") or {}
        durability = str(facts.get("durability") or "")
        kind = "sealed" if facts.get("engine") else "plaintext"
        samples = {
            op: v["seconds"] for op, v in ops.items() if op in ("save", "restore", "restore_cold")
        }
        o = _option(
            str(c["name"]), durability, samples, int(c["nbytes"]), step_s * every, peer=kind
        )
        have = got.get((durability, kind))
        if have is None or o.save.median < have.save.median:
            got[(durability, kind)] = o
    return sorted(got.values(), key=lambda o: o.save.median)


def recommend(opts: Sequence[Option], durability: str) -> Verdict:
    """The one rule (:data:`RULE`) applied to plinius's options of one durability level. A
    device model (an option that only adds delays to another) and a peer are shown but never
    win."""
    real = [o for o in opts if o.durability == durability and o.ranked]
    if not real:
        return Verdict(durability, "nothing measured at this level", None)
    if len(real) == 1:
        only = real[0]
        return Verdict(durability, f"`{only.instance}` (the only option measured)", only.instance)
    best, nxt = real[0], real[1]
    beats = _beats(best, nxt)
    if beats is not None:
        text = (
            f"**`{best.instance}`**: its save is {beats.median:.1f}× [{beats.lo:.1f}–"
            f"{beats.hi:.1f}] faster than the next option (`{nxt.instance}`), beyond the noise"
        )
        return Verdict(durability, text, best.instance)
    tied = [o.instance for o in real if o is best or _beats(best, o) is None]
    by_restore = min((o for o in real if o.instance in tied), key=lambda o: o.restore.median)
    text = (
        f"**tied** on save: {', '.join(f'`{t}`' for t in tied)} (the fastest is not faster "
        f"than these beyond the noise); choose by restore (fastest: `{by_restore.instance}`), "
        "by what you run already, or by cost"
    )
    return Verdict(durability, text, None)


def _beats(a: Option, b: Option) -> Interval | None:
    """How many times faster ``a`` saves than ``b`` when beyond the noise, else None: paired
    by round as the targets table does (a contended round slows both sides alike), or from the
    two medians' intervals when the rounds cannot be paired."""
    if a.save_samples and len(a.save_samples) == len(b.save_samples):
        iv = speedup(a.save_samples, b.save_samples)
        return iv if iv.lo > 1 else None
    if a.save.hi < b.save.lo:
        r = b.save.median / a.save.median
        return Interval(r, b.save.lo / a.save.hi, b.save.hi / a.save.lo, len(a.save_samples))
    return None


def against_peers(opts: Sequence[Option], mine: Sequence[Option], durability: str) -> str:
    """One sentence: plinius's fastest option of ``durability`` against the fastest peer that
    seals by hand, paired by round (the peers carry no freshness: an old file put back loads)."""
    ours = [o for o in opts if o.durability == durability and o.ranked and o.save_samples]
    theirs = [o for o in mine if o.durability == durability and o.peer == "sealed"]
    if not ours or not theirs:
        return ""
    a, b = ours[0], theirs[0]
    if len(a.save_samples) != len(b.save_samples):
        return ""
    iv = speedup(a.save_samples, b.save_samples)
    how = (
        "faster, beyond the noise"
        if iv.lo > 1
        else ("slower, beyond the noise" if iv.hi < 1 else "a tie within the noise")
    )
    return (
        f"Against what users do instead: `{a.instance}` saves {iv.median:.2f}× "
        f"[{iv.lo:.2f}–{iv.hi:.2f}] the speed of the fastest hand-sealed peer "
        f"(`{b.instance}`): {how}, and the peer has no freshness (an old file put back loads)."
    )


def _ms(iv: Interval | None) -> str:
    if iv is None:
        return "n/a"
    return f"{iv.median * 1e3:,.1f} [{iv.lo * 1e3:,.1f}–{iv.hi * 1e3:,.1f}]"


def _pct(iv: Interval) -> str:
    if iv.hi < 0.00005:
        return "< 0.005 %"
    return f"{iv.median:.2%} [{iv.lo:.2%}–{iv.hi:.2%}]"


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


def contention(doc: Mapping[str, Any]) -> list[str]:
    """Why this run's figures may be noisy: load above the cores before the run, CPU steal
    over it, and what the rounds' watch saw (:mod:`plinius.lab.bench.contention`). The save
    samples' spread is not a sign: a disk with fsync spreads on a quiet machine. Empty when
    the machine looked quiet."""
    why = []
    env = doc.get("contention") or {}
    cores = env.get("cores") or os.cpu_count() or 1
    before = env.get("load_before")
    if before is not None and before > cores:
        why.append(f"load average {before:.1f} on {cores} cores before the run")
    steal = env.get("steal_fraction")
    if steal is not None and steal > 0.05:
        why.append(f"CPU steal {steal:.0%} during the run")
    for r in (doc.get("rounds") or {}).values():
        for reason in (r.get("contention") or {}).get("reasons") or []:
            if reason not in why:
                why.append(reason)
    return why


def machine_line(doc: Mapping[str, Any]) -> list[str]:
    """What ran: the CPU and the AES-GCM the run chose (``auto`` names the ways it measured
    fastest here), so a figure is never read as another machine's."""
    prov = doc.get("provenance") or {}
    if not prov:
        return []
    cpu = prov.get("cpu") or {}
    choice = prov.get("crypto_engine_choice") or {}
    engine = str(prov.get("crypto_engine") or "?")
    how = choice.get("note") if isinstance(choice, dict) else None
    sealed = f"`{engine}` ({how})" if how else f"`{engine}`"
    return [
        f"Measured on {cpu.get('model') or 'an unknown CPU'} ({cpu.get('cores') or '?'} cores); "
        f"AES-GCM by {sealed}; the enclave is simulated (a software boundary), the platform "
        "the simulated CPU.",
        "",
    ]


def _extended(doc: Mapping[str, Any], workload: str) -> str:
    r = (doc.get("rounds") or {}).get(workload) or {}
    count, planned = r.get("count"), r.get("planned")
    if count and planned and count > planned:
        return f"the rounds went on from {planned} to {count}"
    return ""


def _row(o: Option) -> str:
    tag = " *(emulated)*" if o.emulated else ""
    if o.models is not None:
        of = f"`{o.models}`" if o.models else "the pool without the model (not run)"
        added = (
            f"; its modelled media added {o.model_wait_s * 1e3:,.1f} ms per save, the "
            "background copy's included"
            if o.model_wait_s is not None
            else ""
        )
        tag += f" *(a model of real PM, compare with {of}{added})*"
    if o.peer == "sealed":
        tag = " *(peer: AES-GCM + fsync by hand, no freshness)*"
    elif o.peer == "plaintext":
        tag = " *(peer: plaintext, not confidential)*"
    return (
        f"| `{o.instance}`{tag} | {_ms(o.save)} | {_ms(o.restore_cold)} | "
        f"{_ms(o.restore_warm)} | {_pct(o.overhead)} | {o.lost_s:,.1f} s | "
        f"{_mib(o.mirror_bytes)} |"
    )


def markdown(doc: Mapping[str, Any], workload: str, step_s: float, every: int) -> list[str]:
    """The first screen of report.md: the whole answer, under 60 lines."""
    opts = options(doc, workload, step_s, every)
    others = peers(doc, workload, step_s, every)
    wl: Mapping[str, Any] = next(
        (w for w in doc.get("workloads") or [] if w["workload"] == workload), {}
    )
    size = _mib(int(wl.get("mirror_bytes") or (opts[0].mirror_bytes if opts else 0)))
    asked = (doc.get("parameters") or {}).get("answer", {}).get("mirror_bytes")
    measured = int(wl.get("mirror_bytes") or 0)
    note = ""
    if asked and measured and abs(measured - asked) > 0.05 * asked:
        note = f" (you asked for {_mib(int(asked))}: this is the closest synthetic model)"
    rounds = ((doc.get("rounds") or {}).get(workload) or {}).get("count") or (
        doc.get("parameters") or {}
    ).get("rounds", "?")
    lines = [
        f"# Where should a {size} encrypted mirror live?",
        "",
        f"Workload `{workload}` ({size} per save{note}, AES-GCM sealed), one mirror every {every} "
        f"training steps of {step_s:g} s. Medians of {rounds} interleaved rounds with 95 % "
        "intervals; times in ms. Emulated storage is marked *emulated*: not a hardware figure.",
        "",
        *machine_line(doc),
    ]
    noisy = contention(doc)
    if noisy:
        more = _extended(doc, workload)
        lines += [
            f"> **Contended machine**: {'; '.join(noisy)}. "
            + (f"To keep the intervals honest {more}. " if more else "")
            + "Figures are noisier than on a quiet machine; a verdict below stands only where "
            "intervals separate.",
            "",
        ]
    for level in LEVELS:
        mine = [o for o in opts if o.durability == level]
        if not mine:
            continue
        theirs = [o for o in others if o.durability == level]
        lines += [
            f"## Survives a {TITLES[level]}" if level != "none" else "## No durability",
            "",
            "| option | save ms | restore cold ms | restore warm ms | overhead per step "
            "| work lost per failure | bytes per save |",
            "|---|---|---|---|---|---|---|",
            *(_row(o) for o in mine),
            *(_row(o) for o in theirs),
            "",
            f"**Recommendation ({level})**: {recommend(opts, level).text}.",
            "",
        ]
        peer_line = against_peers(opts, others, level)
        if peer_line:
            lines += [peer_line, ""]
    strong = [o for o in opts if o.durability == "power-fail" and o.ranked]
    weak = [o for o in opts if o.durability == "process-crash" and o.ranked]
    if strong and weak:
        lines += [
            f"Cost of durability: surviving a power failure costs "
            f"{strong[0].save.median / weak[0].save.median:.1f}× the fastest save that survives "
            f"only a process crash (`{strong[0].instance}` vs `{weak[0].instance}`).",
            "",
        ]
    lines += [
        f"Rule: {RULE}; peers (what users do instead, on the same tensors: the fastest sealed "
        "and plaintext one per level, all of them below) and device models are shown, never "
        f"ranked. Overhead per step = save / ({every} × {step_s:g} s), synchronous mirroring "
        "(`--async-mirror` hides most of it); work lost per failure = half an interval on "
        "average plus the restore.",
        "",
        "---",
        "",
    ]
    return lines
