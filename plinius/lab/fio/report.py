"""Human output of a fio sweep: table rows, ``fio.md`` and the paper's Fig. 2 as ``fio_fig2.png``.

Emulated targets are starred in every table and plot legend, and the Markdown report says what
each star means, so emulated figures are never shown as real persistent-memory or DAX ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from plinius.lab.fio.client import LOCAL
from plinius.lab.fio.results import JobResult
from plinius.lab.fio.runner import FioReport, Target
from plinius.lab.reporting.markdown import md_table, provenance_md

TABLE_COLUMNS = ["backend", "job", "threads", "MiB/s", "IOPS", "p99 µs", "runs", "status"]
MIB = 1 << 20  # one unit system with plinius bench: MiB = 2^20 bytes
FIG2_JOBS = ("seq-read", "rand-read", "seq-write", "rand-write")


def _labels(targets: Sequence[Target]) -> dict[tuple[str, str], str]:
    """(host, target name) → the target's backend label."""
    return {(t.host, t.name): t.label for t in targets}


def _label(labels: dict[tuple[str, str], str], r: JobResult) -> str:
    return labels.get((r.host, r.target), r.target)


def is_remote(report: FioReport) -> bool:
    """True for a ``--client`` run: tables then name the host of every row."""
    return bool(report.clients) or any(t.host != LOCAL for t in report.targets)


#: the column naming what a row measured: this machine's backends, or a server's directory
WHAT = "backend"
REMOTE_WHAT = "measured in"


def columns(report: FioReport, cols: Sequence[str]) -> list[str]:
    """``cols`` with ``host`` first for a run on fio servers, whose rows name the directory
    measured there instead of a backend (a local table is unchanged)."""
    if not is_remote(report):
        return list(cols)
    return ["host", *(REMOTE_WHAT if c == WHAT else c for c in cols)]


def table_rows(report: FioReport) -> list[dict[str, Any]]:
    """One row per job result; ``backend`` lists every backend the target stands for; in a run
    on fio servers ``host`` (first) names the server and ``measured in`` its directory, file
    system and device (never a local backend: its storage was not measured)."""
    labels = _labels(report.targets)
    remote = is_remote(report)
    what = REMOTE_WHAT if remote else WHAT
    rows: list[dict[str, Any]] = []
    for r in report.results:
        rows.append(
            {
                **({"host": r.host} if remote else {}),
                what: _label(labels, r),
                "job": r.job,
                "threads": r.threads,
                "MiB/s": round(r.bw_bytes / MIB, 1) if r.runs else "-",
                "IOPS": round(r.iops) if r.runs else "-",
                "p99 µs": round(r.clat_p99_ns / 1e3, 1) if r.runs else "-",
                "p50 µs": round(r.clat_p50_ns / 1e3, 1) if r.runs else "-",
                "p99.9 µs": round(r.clat_p99_9_ns / 1e3, 1) if r.runs else "-",
                "fsync µs": round(r.fsync_mean_ns / 1e3, 1) if r.fsync_mean_ns else "-",
                "MiB/s min–max": (
                    f"{r.bw_bytes_min / MIB:.4g}–{r.bw_bytes_max / MIB:.4g}" if r.runs else "-"
                ),
                "runs": r.runs,
                "status": r.status + (" (capped)" if r.capped else ""),
            }
        )
    for t in report.targets:
        if t.status == "failed":
            rows.append(
                {
                    **({"host": t.host} if remote else {}),
                    **{what: t.label, "job": "(all)", "status": "failed", "runs": 0},
                }
            )
    return rows


def emulation_lines(targets: Sequence[Target]) -> list[str]:
    """One line per backend: what its target really was, emulated ones flagged; one per
    target of a fio server: what was measured there."""
    lines = []
    for t in targets:
        if t.host != LOCAL:
            notes = "; ".join(t.notes)
            lines.append(f"{t.host}: fio {t.engine} engine in {t.label} — {notes}")
            continue
        for b in t.backends:
            flag = "EMULATED: " if b.emulated else ""
            notes = "; ".join([*b.notes, *t.notes])
            on = f"on {t.fs_type} ({t.device}, mount {t.mount_point}{', dax' if t.dax else ''})"
            lines.append(
                f"{b.backend}: {flag}fio {t.engine} engine {on}" + (f" — {notes}" if notes else "")
            )
    return lines


def failure_lines(report: FioReport) -> list[str]:
    labels = _labels(report.targets)

    def host(h: str) -> str:
        return "" if h == LOCAL else f"{h} "

    out = [
        f"{host(t.host)}{t.label}: target {t.status}: {t.error}" for t in report.targets if t.error
    ]
    out += [
        f"{host(r.host)}{_label(labels, r)} {r.job} ×{r.threads}: {r.status}: {r.error}"
        for r in report.results
        if r.status != "ok" and r.error
    ]
    return list(dict.fromkeys(out))


def render_markdown(report: FioReport) -> str:
    p = report.parameters
    rows = table_rows(report)
    cols = ["backend", "job", "threads", "MiB/s", "MiB/s min–max", "IOPS"]
    cols += ["p50 µs", "p99 µs", "p99.9 µs", "fsync µs", "runs", "status"]
    cols = columns(report, cols)
    servers = [
        f"- {c.get('label')}: fio server {c.get('fio_version', '?')} on {c.get('hostname', '?')} "
        f"({c.get('os', '?')} {c.get('arch', '?')})"
        for c in report.clients
    ]
    parts = [
        "# plinius fio: storage characterization of every backend",
        "",
        f"fio {report.fio.get('version')} ({report.fio.get('path')}), job files in "
        f"`{report.fio.get('jobs_dir')}`. `fig2`: the paper's Fig. 2 — 4 KiB synchronous I/O, "
        f"a {p.size >> 20} MiB file per thread, threads {', '.join(map(str, p.threads))}, fsync "
        f"after every written block. `mirror`: one {p.model_size >> 20} MiB sequential write + "
        f"fsync and one sequential read, the mirror's own pattern. Means of {p.runs} run(s); "
        + (
            f"each job capped at {p.runtime_s} s (`capped`: stopped before writing or reading "
            "its whole size). "
            if p.runtime_s
            else "no runtime cap. "
        )
        + "MiB/s are 2^20 bytes per second summed over threads; latencies are fio's completion "
        "latencies (clat) of one I/O, means of per-run percentiles; `fsync µs` is fio's mean fsync "
        "latency, which the write throughput includes and clat does not.",
        "",
        *(
            [
                "**Run on fio servers** (fio's client mode, hosts one after another): `host` "
                "names the server of every row and `measured in` the directory the jobs ran in "
                "there, with its file system and device as known (read here for a server on "
                "loopback, else not inspected, with the disks the server's fio reported). This "
                "machine's backends and their emulation marks do not describe a server's storage.",
                "",
                *servers,
                "",
            ]
            if is_remote(report)
            else [
                "**Backends marked * are emulated here**: their figures come from stand-in "
                "storage, not real persistent memory or a DAX mount. Backends listed together "
                "share one target (same mount and engine) and were measured once.",
                "",
            ]
        ),
        *[f"- {line}" for line in emulation_lines(report.targets)],
        "",
        md_table(rows, cols),
        "",
    ]
    fails = failure_lines(report)
    if fails:
        parts += ["## Failures (partial results kept above)", "", *[f"- {f}" for f in fails], ""]
    key = "server directory" if is_remote(report) else WHAT
    parts += [provenance_md(report.provenance, report.runs_on(), key_column=key), ""]
    return "\n".join(parts)


def fig2_lines(
    results: Sequence[JobResult], targets: Sequence[Target]
) -> list[tuple[str, str, str]]:
    """(host, target, legend label) of each line of Fig. 2: one per host and target."""
    labels = _labels(targets)
    out = []
    for host, tname in dict.fromkeys((r.host, r.target) for r in results):
        label = labels.get((host, tname), tname)
        out.append((host, tname, label if host == LOCAL else f"{host} {label}"))
    return out


def plot_fig2(
    results: FioReport | Sequence[JobResult],
    path: str | Path,
    targets: Sequence[Target] | None = None,
) -> Path:
    """Throughput versus threads per backend for seq/rand × read/write (the paper's Fig. 2).

    Takes a ``FioReport`` (or its results plus targets for labels) so ``plinius bench`` can draw
    it from a ``fio.json`` read back with ``FioReport.from_dict``. Needs the ``plot`` extra.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if isinstance(results, FioReport):
        targets = targets or results.targets
        results = results.results
    fig2 = [r for r in results if r.suite in ("fig2", "") and r.job in FIG2_JOBS and r.runs]
    lines = fig2_lines(fig2, targets or [])
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    for ax, job in zip(axes.flat, FIG2_JOBS, strict=True):
        for host, tname, label in lines:  # one line per (host, target), the host in its label
            pts = sorted(
                (r.threads, r.bw_bytes / (1 << 30))
                for r in fig2
                if (r.host, r.target) == (host, tname) and r.job == job
            )
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o", label=label)
        ax.set_title(job)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("threads")
        ax.set_ylabel("GiB/s (2^30 B/s)")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    threads = sorted({r.threads for r in fig2}) or [1]
    for ax in axes.flat:
        ax.set_xticks(threads, [str(t) for t in threads])
        ax.tick_params(labelbottom=True)  # every panel names its threads, not only the bottom
    marks = "" if any(host != LOCAL for host, _, _ in lines) else "; * = emulated"
    fig.suptitle(f"fio: 4 KiB sync I/O, fsync per written block (paper Fig. 2){marks}")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
