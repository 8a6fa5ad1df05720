"""Where a figure came from: machine, CPU, software versions, commit, and what is emulated.

Every report embeds this, so emulated persistent memory or a simulated enclave is never mistaken
for real hardware.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import plinius
from plinius.core.gitcommit import checkout_commit

FLAGS_OF_INTEREST = (
    "aes",
    "vaes",
    "pclmulqdq",
    "avx2",
    "avx512f",
    "clflush",
    "clflushopt",
    "clwb",
    "sgx",
    "sgx_lc",
)
PACKAGES = ("numpy", "pycryptodome", "cryptography", "cffi", "matplotlib", "asv", "rich")


@cache
def cpu_info() -> dict[str, Any]:
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", "", platform.machine()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {
        "model": model,
        "cores": os.cpu_count(),
        "governor": cpu_governor(),
        "flags": [f for f in FLAGS_OF_INTEREST if f in flags],
        "sgx_in_cpu": "sgx" in flags,
    }


def cpu_governor() -> str:
    """The cpufreq scaling governor of every CPU (one value, or each distinct one joined);
    ``not exposed`` where the kernel or the hypervisor gives none (typical on cloud VMs)."""
    found = []
    for f in sorted(Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_governor")):
        try:
            found.append(f.read_text().strip())
        except OSError:
            continue
    return "/".join(dict.fromkeys(found)) if found else "not exposed"


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the system has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_times() -> list[int] | None:
    """The machine's CPU time counters (``/proc/stat``'s first line, in ticks), or None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    return [int(x) for x in fields[1:]] if fields and fields[0] == "cpu" else None


def steal_since(cpu_before: list[int] | None) -> float | None:
    """The fraction of CPU time the hypervisor stole since :func:`cpu_times` gave
    ``cpu_before`` (None: not exposed, or no time passed)."""
    now = cpu_times()
    if not cpu_before or not now or len(cpu_before) < 8 or len(now) < 8:
        return None
    delta = [b - a for a, b in zip(cpu_before, now, strict=False)]
    total = sum(delta[:8])
    return delta[7] / total if total > 0 else None


def contention_facts(
    load_before: list[float] | None, cpu_before: list[int] | None, rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """Whether the run shared the machine: load before and after (1 min), the fraction of CPU
    time stolen by the hypervisor in between, and the widest spread of the save samples
    ((max - min) / median over the rounds) of any row."""
    after = load_average()
    stolen = steal_since(cpu_before)
    steal = None if stolen is None else round(stolen, 4)
    spreads = []
    for r in rows:
        saves = sorted((r.get("samples") or {}).get("save") or [])
        if len(saves) >= 2 and saves[len(saves) // 2] > 0:
            spreads.append((saves[-1] - saves[0]) / saves[len(saves) // 2])
    return {
        "cores": os.cpu_count(),
        "load_before": load_before[0] if load_before else None,
        "load_after": after[0] if after else None,
        "steal_fraction": steal,
        "max_spread": round(max(spreads), 3) if spreads else None,
    }


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"plinius": plinius.__version__}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


@cache
def git_commit() -> str | None:
    """The commit recorded when this package was built, else the live checkout's (editable)."""
    built = Path(plinius.__file__).resolve().parent / "_build_commit.txt"
    try:
        recorded = built.read_text().strip()
    except OSError:
        recorded = ""
    if recorded:
        return recorded
    here = Path(plinius.__file__).resolve().parent.parent
    if not (here / ".git").exists():
        return None  # an installed copy without a record: do not guess from a parent repo
    return checkout_commit(here)


def provenance(engine: str | None = None, load_before: list[float] | None = None) -> dict[str, Any]:
    """A JSON-ready record of the machine and software behind a result. ``load_before``: the
    load average taken before the run (the one after is taken now), so a reader sees whether
    other work shared the machine."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "load_average": {"before": load_before, "after": load_average()},
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpu": cpu_info(),
        "memory_bytes": mem,
        "packages": package_versions(),
        "git_commit": git_commit(),
        "crypto_engine": engine,
        "crypto_engine_choice": _engine_choice(engine),
        "sgx": "simulated",
        "platform": PLATFORM_NOTE,
        "tpm_device": "present" if Path("/dev/tpmrm0").exists() else "none",
        "pm": "emulated" if not Path("/dev/pmem0").exists() else "present",
    }


#: which root of trust the bench's timings ran on (the freshness section says its own)
PLATFORM_NOTE = (
    "simulated CPU (every section but freshness; freshness also runs swtpm, a software TPM)"
)


def _engine_choice(engine: str | None) -> dict[str, Any] | None:
    """How ``auto`` chose ``engine`` in this process (measured speeds, or the override), or
    ``{"how": "named"}`` when the run named it."""
    from plinius.core.crypto_choice import last_choice

    if engine is None:
        return None
    if last_choice.get("chosen") == engine:
        return dict(last_choice)
    return {"chosen": engine, "how": "named"}
