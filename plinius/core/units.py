"""Human-friendly sizes for specs and flags (``512M``, ``1G``, ``4096``)."""

from __future__ import annotations

import math
import re

from plinius.core.errors import ConfigError

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_FACTORS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str | int, what: str = "size") -> int:
    """Parse ``text`` as bytes; K/M/G/T suffixes are binary (1M = 1 MiB)."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(text)
    if not m:
        raise ConfigError(f"{what}={text!r} is not a size; use e.g. 4096, 64M or 1G")
    value = float(m.group(1)) * _FACTORS[m.group(2).lower()]
    if not math.isfinite(value) or value > 2**63 - 1:
        raise ConfigError(f"{what}={text[:40]!r} is too large (at most 8 EiB)")
    return int(value)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
