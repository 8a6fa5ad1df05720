"""What a path really lives on: file system, mount options, device, DAX. Read from /proc and /sys.

Reports must never present emulated storage as the real thing, so every backend describes itself
through these facts rather than through what its name promises.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

VOLATILE_FS = frozenset({"tmpfs", "ramfs", "devtmpfs", "hugetlbfs"})


@dataclass(frozen=True)
class MountInfo:
    mount_point: str
    fs_type: str
    device: str
    options: str

    @property
    def dax(self) -> bool:
        """True when the file system is mounted with DAX (``dax`` or ``dax=always``)."""
        opts = self.options.split(",")
        return "dax" in opts or "dax=always" in opts

    @property
    def volatile(self) -> bool:
        """True for RAM-backed file systems whose content is gone after a reboot."""
        return self.fs_type in VOLATILE_FS


def mount_label(m: MountInfo) -> str:
    """``tmpfs`` or ``ext4 on /dev/sda1``: how notes name a mount."""
    return m.fs_type if m.device == m.fs_type else f"{m.fs_type} on {m.device}"


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape")


def mount_of(path: str | os.PathLike[str]) -> MountInfo:
    """The mount that holds ``path`` (longest mount-point prefix of its real path)."""
    real = os.path.realpath(path)
    best: MountInfo | None = None
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return MountInfo("?", "unknown", "unknown", "")
    for line in lines:
        left, _, right = line.partition(" - ")
        lf = left.split()
        rf = right.split()
        if len(lf) < 6 or len(rf) < 2:
            continue
        mp = _unescape(lf[4])
        if not (real == mp or real.startswith(mp.rstrip("/") + "/") or mp == "/"):
            continue
        if best is None or len(mp) >= len(best.mount_point):
            super_opts = rf[2] if len(rf) > 2 else ""
            opts = ",".join(dict.fromkeys(o for o in f"{lf[5]},{super_opts}".split(",") if o))
            best = MountInfo(mp, rf[0], _unescape(rf[1]), opts)
    return best or MountInfo("?", "unknown", "unknown", "")


def block_device_facts(device: str) -> dict[str, str]:
    """Rotational flag and model of a block device, when /sys knows it."""
    name = os.path.basename(device)
    facts: dict[str, str] = {}
    base = Path("/sys/class/block") / name
    if not base.exists():
        return facts
    for key, rel in (("rotational", "queue/rotational"), ("model", "device/model")):
        for cand in (base / rel, base.parent / name.rstrip("0123456789") / rel):
            try:
                facts[key] = cand.read_text().strip()
                break
            except OSError:
                continue
    facts["pmem"] = str(name.startswith("pmem") or name.startswith("dax"))
    return facts
