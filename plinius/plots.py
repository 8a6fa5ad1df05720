"""PNG figures in the paper's style (matplotlib, the ``plot`` extra; imported lazily).

Each function takes plain result dicts (as stored in results.json) so ``plinius report`` can
redraw them from saved or asv results without re-running anything.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from plinius.errors import ConfigError

MARKERS = {"romulus": "o", "tmpfs": "s", "dax": "^", "ssd": "v"}


def _plt() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'plinius[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _by_backend(results: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        groups[str(r.get("series", r["backend"]))].append(r)
    for rows in groups.values():
        rows.sort(key=lambda r: r["model_mb"])
    return groups


def save_restore(results: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Fig. 7: save and restore time versus model size, one line per backend."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for name, rows in _by_backend(results).items():
        xs = [r["model_mb"] for r in rows]
        for ax, key in zip(axes, ("save", "restore"), strict=True):
            med = [r[f"{key}_s"] * 1e3 for r in rows]
            lo = [m - r[f"{key}_s_min"] * 1e3 for m, r in zip(med, rows, strict=True)]
            hi = [r[f"{key}_s_max"] * 1e3 - m for m, r in zip(med, rows, strict=True)]
            marker = MARKERS.get(name.rsplit("/", 1)[-1], "x")
            ax.errorbar(xs, med, yerr=[lo, hi], marker=marker, capsize=2, label=name)
    for ax, key in zip(axes, ("save", "restore"), strict=True):
        ax.set(
            xlabel="model size (MiB)", ylabel=f"{key} time (ms)", title=f"{key} (median, min–max)"
        )
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title or "Encrypted mirror save/restore per backend")
    return _save(fig, plt, path)


def speedups(results: Sequence[dict[str, Any]], path: Path) -> Path:
    """Save and restore speed-up of every backend versus ``ssd`` at each model size."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for name, rows in _by_backend(results).items():
        xs = [r["model_mb"] for r in rows]
        for ax, key in zip(axes, ("save", "restore"), strict=True):
            ys = [r.get(f"speedup_{key}_vs_ssd") for r in rows]
            if any(y is None for y in ys):
                continue
            ax.plot(xs, ys, marker=MARKERS.get(name, "x"), label=name)
    for ax, key in zip(axes, ("save", "restore"), strict=True):
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set(xlabel="model size (MiB)", ylabel="× faster than ssd", title=f"{key} speed-up")
        ax.grid(alpha=0.3)
        ax.legend()
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
    for name, pts in groups.items():
        pts.sort(key=lambda r: r["swaps_per_tx"])
        ax.plot(
            [p["swaps_per_tx"] for p in pts], [p["sps"] / 1e6 for p in pts], marker="o", label=name
        )
    ax.set(
        xscale="log",
        xlabel="swaps per transaction",
        ylabel="million swaps / s",
        title="Romulus SPS on a 10 MB persistent array",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
