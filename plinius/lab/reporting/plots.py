"""PNG figures in the paper's style (matplotlib, the ``plot`` extra; imported lazily).

Each function takes plain result dicts (as stored in results.json) so ``plinius report`` can
redraw them from saved or asv results without re-running anything.
"""

from __future__ import annotations

import textwrap
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from plinius.core.errors import MissingExtraError
from plinius.lab.profiles import marker

#: what to do when figures cannot be drawn
PLOT_HINT = "figures need matplotlib: pip install 'plinius[plot]'"

#: line style per durability level, so RAM-only and disk-durable instances never look alike
STYLES = {"power-fail": "-", "process-crash": "--", "none": ":"}
MIB = 1 << 20


def _plt() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MissingExtraError(PLOT_HINT) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def series_label(r: dict[str, Any]) -> str:
    """What a legend shows for a results row: the backend instance, its durability, emulation."""
    if "series" in r:
        return str(r["series"])
    name = str(r.get("instance") or r["backend"])
    facts = [str(r["durability"])] if r.get("durability") else []
    if r.get("emulated"):
        facts.append("emulated")
    return f"{name} [{', '.join(facts)}]" if facts else name


def _by_backend(results: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        groups[series_label(r)].append(r)
    for rows in groups.values():
        rows.sort(key=lambda r: r["model_mb"])
    return groups


def _x(results: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """The x key and label: the exact mirror bytes when every row has them, else the model."""
    if results and all("bytes" in r for r in results):
        return "bytes", "mirror size (MiB = 2^20 B; weights + momentum)"
    return "model_mb", "model size (MiB)"


def _xs(rows: Sequence[dict[str, Any]], key: str) -> list[float]:
    return [r[key] / MIB if key == "bytes" else r[key] for r in rows]


def _style(rows: Sequence[dict[str, Any]], name: str) -> dict[str, Any]:
    backend = str(rows[0].get("backend", name)).rsplit("/", 1)[-1]
    return {
        "marker": marker(backend),
        "linestyle": STYLES.get(str(rows[0].get("durability")), "-"),
    }


def _interval(r: dict[str, Any], key: str) -> tuple[float, float, float] | None:
    """(median, lo, hi) of ``key`` from a row's bootstrap intervals, None in older rows."""
    iv = (r.get("intervals") or {}).get(key)
    if not iv:
        return None
    lo, hi = iv["ci95"]
    return float(iv["median"]), float(lo), float(hi)


def _bars(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[float], ...]:
    """Medians (ms) and error-bar lengths: the 95 % interval, else min–max (older runs)."""
    med, lo, hi = [], [], []
    for r in rows:
        got = _interval(r, f"{key}_s")
        if got is None:
            got = (r[f"{key}_s"], r.get(f"{key}_s_min", r[f"{key}_s"]), r.get(f"{key}_s_max", 0))
        m, a, b = (v * 1e3 for v in got)
        med.append(m)
        lo.append(max(m - a, 0.0))
        hi.append(max(b - m, 0.0))
    return med, lo, hi


def save_restore(results: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Fig. 7: save and restore time versus mirror size, one line per backend instance
    (legend: instance [durability, emulated]; dashed = process-crash, solid = power-fail)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), sharex=True)
    xkey, xlabel = _x(results)
    groups = _by_backend(results)
    seen: dict[str, list[float]] = {"x": [], "save": [], "restore": []}
    for (name, rows), colour in zip(groups.items(), _colours(len(groups)), strict=True):
        xs = _xs(rows, xkey)
        seen["x"] += xs
        for ax, key in zip(axes, ("save", "restore"), strict=True):
            style = {**_style(rows, name), "color": colour}
            med, lo, hi = _bars(rows, key)
            seen[key] += med
            ax.errorbar(xs, med, yerr=[lo, hi], capsize=2, label=name, **style)
            cold = [r for r in rows if r.get("restore_cold_s") is not None]
            if key == "restore" and len(cold) == len(rows):
                cmed, clo, chi = _bars(rows, "restore_cold")
                seen[key] += cmed
                style["linestyle"] = "-."
                ax.errorbar(xs, cmed, yerr=[clo, chi], capsize=2, label=f"{name} cold", **style)
    spread = "95 % CI" if all(_interval(r, "save_s") for r in results) else "min–max"
    for ax, key in zip(axes, ("save", "restore"), strict=True):
        ax.set(xlabel=xlabel, ylabel=f"{key} time (ms)", title=f"{key} (median, {spread})")
        _log_if_wide(ax, "x", seen["x"])
        _log_if_wide(ax, "y", seen[key])
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="x-small")
    fig.suptitle(title or "Encrypted mirror save/restore per backend instance [durability]")
    return _save(fig, plt, path)


def speedups(results: Sequence[dict[str, Any]], path: Path) -> Path:
    """Save and restore speed-up of every instance versus the baseline of *its own* durability
    level at each size (never RAM against a disk); baselines themselves are not drawn."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharex=True)
    xkey, xlabel = _x(results)
    groups = _by_backend(results)
    xs_seen: list[float] = []
    for (name, rows), colour in zip(groups.items(), _colours(len(groups)), strict=True):
        rows = [r for r in rows if r.get("baseline") and r["baseline"] != r.get("instance")]
        if not rows:
            continue
        xs_seen += _xs(rows, xkey)
        label = f"{name} vs {rows[0]['baseline']}"
        for ax, key in zip(axes, ("save", "restore"), strict=True):
            k = f"speedup_{key}_vs_baseline"
            pts = [
                (x, r[k], _interval(r, k))
                for x, r in zip(_xs(rows, xkey), rows, strict=True)
                if r.get(k) is not None
            ]
            if pts:
                xs = [p[0] for p in pts]
                ys = [p[1] for p in pts]
                err = [
                    [y - (p[2][1] if p[2] else y) for y, p in zip(ys, pts, strict=True)],
                    [(p[2][2] if p[2] else y) - y for y, p in zip(ys, pts, strict=True)],
                ]
                style = {**_style(rows, name), "color": colour}
                ax.errorbar(xs, ys, yerr=err, capsize=2, label=label, **style)
    for ax, key in zip(axes, ("save", "restore"), strict=True):
        _log_if_wide(ax, "x", xs_seen)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set(
            xlabel=xlabel,
            ylabel="× faster than the baseline of equal durability",
            title=f"{key} speed-up, like for like (95 % CI where measured)",
        )
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    return _save(fig, plt, path)


def targets(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """The targets table as a figure: each ratio's median with its 95 % interval beside its
    bar (a dashed mark), so a straddled bar reads as inconclusive at a glance."""
    plt = _plt()
    shown = [
        t
        for t in rows
        if t.get("interval") and not t.get("point_estimate") and t.get("unit") != "fraction"
    ]
    labels = [textwrap.fill(str(t["target"]), 46) for t in shown]
    lines = sum(label.count("\n") + 1 for label in labels)
    fig, ax = plt.subplots(figsize=(10, 0.17 * max(lines, 4) + 0.1 * len(shown) + 1.0))
    colours = {"met": "tab:green", "not met": "tab:red", "inconclusive": "tab:orange"}
    for i, t in enumerate(shown):
        iv = t["interval"]
        lo, hi = iv["ci95"]
        m = iv["median"]
        c = colours.get(t["verdict"], "tab:gray")
        ax.errorbar([m], [i], xerr=[[m - lo], [hi - m]], fmt="o", color=c, capsize=3)
        if t.get("bar_value") is not None:
            ax.plot([t["bar_value"]] * 2, [i - 0.35, i + 0.35], color="black", ls="--", lw=1)
    ax.set_yticks(range(len(shown)), labels, fontsize=7)
    values = [v for t in shown for v in t["interval"]["ci95"]]
    values += [t["bar_value"] for t in shown if t.get("bar_value")]
    _log_if_wide(ax, "x", [*values, min(values, default=1) / 11])
    ax.set(xlabel="ratio (median, 95 % CI); dashed: the bar", title="Targets")
    ax.invert_yaxis()
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, plt, path)


def batch_times(points: Sequence[dict[str, Any]], path: Path) -> Path:
    """Fig. 8: iteration time versus batch size, encrypted-in-PM versus plaintext data."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    xs = [p["batch"] for p in points]
    ax.plot(xs, [p["plaintext_s"] for p in points], marker="o", label="unencrypted data")
    ax.plot(xs, [p["encrypted_s"] for p in points], marker="s", label="encrypted data in PM")
    ax.set(
        xscale="log",
        xlabel="batch size",
        ylabel="time per iteration (s)",
        title=f"Iteration time, model {points[0]['model'] if points else ''}",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, plt, path)


def sps(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Fig. 6: swaps per second versus transaction size, one line per flush mode/driver."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[str(r["series"])].append(r)
    for (name, pts), colour in zip(groups.items(), _colours(len(groups)), strict=True):
        pts.sort(key=lambda r: r["swaps_per_tx"])
        xs = [p["swaps_per_tx"] for p in pts]
        ax.plot(xs, [p["sps"] / 1e6 for p in pts], marker="o", label=name, color=colour)
    ax.set(
        xscale="log",
        xlabel="swaps per transaction",
        ylabel="million swaps / s",
        title="Romulus SPS on a 10 MB persistent array",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def _log_if_wide(ax: Any, axis: str, values: Sequence[float]) -> None:
    """A log ``axis`` ("x" or "y") when the positive ``values`` span more than 10×, with plain
    tick labels (1, 2, 5 × 10^k written out) that never collide."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    pos = [v for v in values if v > 0]
    if not pos or max(pos) / min(pos) <= 10:
        return
    which = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    which.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    which.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.6g}"))
    which.set_minor_formatter(NullFormatter())


def _colours(n: int) -> list[Any]:
    """``n`` distinct colours (tab10, then tab20's lighter ones): no two series alike."""
    import matplotlib

    tab10, tab20 = matplotlib.colormaps["tab10"], matplotlib.colormaps["tab20"]
    base = [tab10(i) for i in range(10)]
    light = [tab20(i) for i in range(1, 20, 2)]
    pool = base + light
    return [pool[i % len(pool)] for i in range(n)]


def _save(fig: Any, plt: Any, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def answer(panels: Sequence[tuple[str, Sequence[Any]]], path: Path, title: str) -> Path:
    """The answer in one figure: one panel per durability level, each option's save and
    headline restore as bars with their 95 % intervals, on a log axis when the options differ
    by more than 10× (``panels``: ``(level, options)`` of :mod:`plinius.lab.bench.answer`);
    peers (what users do instead) hatched and labelled, device models labelled."""
    plt = _plt()
    panels = [(level, opts) for level, opts in panels if opts]
    n = max(len(panels), 1)
    height = max(2.2, 0.55 * max((len(o) for _, o in panels), default=1) + 1.2)
    fig, axes = plt.subplots(n, 1, figsize=(8.5, height * n), squeeze=False)
    colours = {"save": "#1f77b4", "restore": "#ff7f0e"}
    for ax, (level, opts) in zip(axes[:, 0], panels, strict=False):
        names = [
            o.instance
            + (" (emulated)" if o.emulated else "")
            + (f" (peer, {o.peer})" if o.peer else "")
            + (" (device model)" if o.models is not None else "")
            for o in opts
        ]
        hatch = ["//" if o.peer else "" for o in opts]
        ys = range(len(opts))
        lows: list[float] = []
        highs: list[float] = []
        for k, (key, shift) in enumerate((("save", -0.18), ("restore", 0.18))):
            ivs = [o.save if key == "save" else o.restore for o in opts]
            med = [iv.median * 1e3 for iv in ivs]
            err = [
                [max(iv.median - iv.lo, 0) * 1e3 for iv in ivs],
                [max(iv.hi - iv.median, 0) * 1e3 for iv in ivs],
            ]
            bars = ax.barh(
                [y + shift for y in ys], med, height=0.34, xerr=err, capsize=3,
                color=colours[key], label=key if k == 0 else "restore (cold where it has one)",
            )  # fmt: skip
            for bar, h in zip(bars, hatch, strict=True):
                if h:
                    bar.set_hatch(h)
                    bar.set_alpha(0.6)
            lows += [iv.lo * 1e3 for iv in ivs if iv.lo > 0]
            highs += [iv.hi * 1e3 for iv in ivs]
        ax.set_yticks(list(ys), names, fontsize=8)
        ax.invert_yaxis()
        _log_if_wide(ax, "x", lows + highs)
        ax.set_xlabel("ms (median, 95 % interval)")
        what = {"power-fail": "a power failure", "process-crash": "a process crash"}
        ax.set_title(f"survives {what.get(level, level)}", fontsize=9, loc="left")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="upper right", ncol=2, frameon=False)
    fig.suptitle(title, fontsize=10, x=0.02, ha="left")
    return _save(fig, plt, path)
