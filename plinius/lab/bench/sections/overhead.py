"""``overhead``: what mirroring costs a training iteration (sync and async, mirror every step),
with and without a replica, and for the PyTorch adapter; and the fixed host cost of one
``TorchMirror`` mirror (a tiny model against ``torch.save``, the example CNN)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from plinius.lab.bench.iteration import MirrorOverhead
from plinius.lab.bench.registry import Section, SuiteOptions, register
from plinius.lab.bench.stats import Interval
from plinius.lab.bench.verdicts import TargetTable

NAME = "overhead"
TORCH_MODEL = "examples/torch_mnist.py"
#: the fixed-cost row's kind (:mod:`plinius.lab.bench.mirror_cost`)
FIXED = "fixed_cost"
#: a tiny model's synchronous mirror at most this many times ``torch.save`` of its state
TINY_BAR = 5.0
#: the loaded row: ResNet-50 training on every core, a mirror every 10 steps (issue 26)
LOADED = "resnet50"
LOADED_EVERY = 10
LOADED_ASYNC_BAR = 0.05
QUICK = "not run in --quick: ten ResNet-50 steps per block take about 2 minutes on 2 cores"


def run(opts: SuiteOptions) -> list[dict[str, Any]]:
    from plinius.lab.bench.iteration import mirror_overhead, replica_overhead
    from plinius.lab.bench.mirror_cost import fixed_cost_row
    from plinius.lab.bench.torch_section import RESNET50_MODEL, overhead_row

    model = "batch" if opts.quick else "mnist"
    n = max(3, opts.rounds)  # iterations per mode, interleaved: the intervals' samples
    if opts.quick:
        loaded = {
            **MirrorOverhead(RESNET50_MODEL, "romulus", 0.0, 0.0, 0.0, not_run=QUICK).as_dict(),
            "loop": LOADED,
            "every": LOADED_EVERY,
        }
    else:  # 3 modes x (1 + blocks) blocks of 10 CPU-bound steps: about 2 minutes on 2 cores
        loaded = overhead_row(
            blocks=min(n, 5), steps_per_block=LOADED_EVERY, loop=LOADED, every=LOADED_EVERY
        )
    return [
        mirror_overhead(model, iterations=n).as_dict(),
        replica_overhead(model, n).as_dict(),
        overhead_row(blocks=n, steps_per_block=10 if opts.quick else 20),
        loaded,
        # a mirror takes about a millisecond: many rounds cost little and tighten the intervals
        fixed_cost_row(rounds=max(30, 20 * n)),
    ]


def _targets(
    t: TargetTable,
    prefix: str,
    over: Mapping[str, Any] | None,
    default_model: str,
    bars: Sequence[tuple[str, float | None]],
    *,
    every: int = 1,
    load: str = "",
) -> None:
    """Mirroring overhead per iteration, sync and async: a paired interval over the rounds
    (older documents: the medians' point estimate)."""
    for mode, bar in bars:
        model = over["model"] if over else default_model
        limit = f" ≤ {bar:.0%}" if bar is not None else ""
        how = "mirror every step" if every == 1 else f"mirror every {every} steps"
        what = f"{model} mirroring overhead{limit} ({mode}, {how}{', ' + load if load else ''})"
        got = None if over is None else over.get(f"{mode}_overhead")
        if over is None or got is None:
            why = "not run: the overhead section did not run"
            if over is not None:
                why = str(over.get("not_run") or "not measured")
            t.add(f"{prefix}_{mode}", what, bar, None, why=why, at_least=False)
            continue
        v = float(got)
        raw = over.get(f"{mode}_overhead_interval")
        iv = Interval.from_json(raw) if isinstance(raw, dict) else Interval(v, v, v, 1)
        t.add(
            f"{prefix}_{mode}",
            what,
            bar,
            iv,
            at_least=False,
            point=not isinstance(raw, dict),
            fraction=True,
            sides=f"{mode} mirror vs no mirror, per step",
            workload=str(over.get("model")),
            durability=str(over.get("durability") or "-"),
        )


def _fixed_target(t: TargetTable, row: Mapping[str, Any] | None) -> None:
    """A tiny model's synchronous mirror within ``TINY_BAR`` × ``torch.save`` of its state."""
    from plinius.lab.bench.mirror_cost import TINY_MODEL

    key, what = "torch_fixed_cost", f"tiny model mirror ≤ {TINY_BAR:g}× torch.save (host time)"
    raw = None if row is None else row.get("tiny_vs_torch_save")
    if row is None or not isinstance(raw, dict):
        why = "not run: the overhead section did not run"
        if row is not None:
            why = str(row.get("not_run") or "not measured")
        t.add(key, what, TINY_BAR, None, why=why, at_least=False)
        return
    t.add(
        key,
        what,
        TINY_BAR,
        Interval.from_json(raw),
        at_least=False,
        sides="TorchMirror.mirror() (sync) vs torch.save into memory, per save",
        workload=str(row.get("model") or TINY_MODEL),
        durability=str(row.get("backend") or "-"),
    )


def targets(doc: Mapping[str, Any], t: TargetTable) -> None:
    every = doc.get(NAME) or []
    rows = [o for o in every if not o.get("replica") and o.get("kind") != FIXED]
    loaded = next((o for o in rows if o.get("loop") == LOADED), None)
    rows = [o for o in rows if o is not loaded]
    over = next((o for o in rows if not str(o.get("model", "")).startswith(TORCH_MODEL)), None)
    _targets(t, "overhead", over, "mnist", (("sync", 0.10), ("async", 0.03)))
    tover = next((o for o in rows if str(o.get("model", "")).startswith(TORCH_MODEL)), None)
    _targets(t, "torch_overhead", tover, TORCH_MODEL, (("sync", 0.10), ("async", 0.05)))
    _targets(
        t,
        "resnet50_loaded_overhead",
        loaded,
        "ResNet-50",
        (("sync", None), ("async", LOADED_ASYNC_BAR)),
        every=LOADED_EVERY,
        load="training on every core",
    )
    _fixed_target(t, next((o for o in every if o.get("kind") == FIXED), None))


def _text(o: Mapping[str, Any], mode: str) -> str:
    iv = o.get(f"{mode}_overhead_interval")
    text = f"{o[f'{mode}_overhead']:+.1%}"
    if not isinstance(iv, dict):
        return text
    lo, hi = iv["ci95"]
    if lo <= 0:  # the interval reaches zero: no overhead this run can measure
        return f"no measurable overhead (< {max(hi, 0.0):.1%})"
    return f"{text} [{lo:+.1%}–{hi:+.1%}]"


def render(doc: Mapping[str, Any]) -> list[str]:
    from plinius.lab.reporting.markdown import md_table

    if not doc.get(NAME):
        return []
    fixed = [o for o in doc[NAME] if o.get("kind") == FIXED]
    rows = [
        {
            **o,
            "instance": o.get("instance") or o["backend"],
            "durability": o.get("durability") or "-",
            "emulated": "yes" if o.get("emulated") else "no",
            "replica": o.get("replica") or "-",
            "mirror every": f"{o.get('every') or 1} steps" if (o.get("every") or 1) > 1 else "step",
            "threads": o.get("threads") or 1,
            **(
                {"sync_overhead": "not run", "async_overhead": o["not_run"]}
                if o.get("not_run")
                else {"sync_overhead": _text(o, "sync"), "async_overhead": _text(o, "async")}
            ),
        }
        for o in doc[NAME]
        if o.get("kind") != FIXED
    ]
    columns = [
        "model",
        "instance",
        "replica",
        "durability",
        "emulated",
        "mirror every",
        "threads",
        "no_mirror_s",
        "sync_s",
        "async_s",
        "sync_overhead",
        "async_overhead",
    ]
    return [
        "## Mirroring overhead per training step",
        "",
        "Seconds per step without a mirror, with a synchronous and with an asynchronous one "
        "(median of interleaved blocks; overhead: paired 95 % interval). `threads` are the "
        "training loop's: on every core, the background seal competes with training for them.",
        "",
        md_table(rows, columns),
        "",
        *_render_fixed(fixed),
    ]


def _render_fixed(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Host milliseconds per ``TorchMirror.mirror()`` (median [95 % interval]) per case."""
    from plinius.lab.reporting.markdown import md_table

    out: list[str] = []
    for row in rows:
        out += ["## Fixed host cost of one mirror (TorchMirror, ms per save)", ""]
        if row.get("not_run"):
            out += [f"not run: {row['not_run']}", ""]
            continue
        table = []
        for case, iv in (row.get("ms") or {}).items():
            kind, _, how = case.partition("-")
            table.append(
                {
                    "model": (row.get("models") or {}).get(kind, kind),
                    "save": how,
                    "host ms": Interval.from_json(iv).text("{:.3f}"),
                }
            )
        ratio = row.get("tiny_vs_torch_save")
        out += [md_table(table, ["model", "save", "host ms"]), ""]
        if isinstance(ratio, dict):
            iv = Interval.from_json(ratio)
            out += [
                f"Tiny model, synchronous mirror on {row.get('backend')}: "
                f"{iv.text('{:.2f}')} × `torch.save` (paired by round; async: the loop waits "
                "for the snapshot only, +flush: until the mirror is committed).",
                "",
            ]
    return out


register(
    Section(
        NAME,
        "mirroring cost per training iteration (numpy trainer, replica, PyTorch adapter)",
        90,
        run=run,
        targets=targets,
        render=render,
    )
)
