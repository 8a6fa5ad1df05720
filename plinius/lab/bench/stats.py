"""Medians with bootstrap 95 % intervals, for figures and for ratios of figures.

A benchmark on a shared 2-core VM swings 2–3× between its fastest and slowest repeat, so a
single median says little. Every figure of ``plinius bench`` is reported as the median of its
rounds with a percentile-bootstrap 95 % confidence interval (seeded, so a report redrawn from
its JSON gives the same interval), and every ratio the same way.

Ratios are bootstrapped **paired by round**: :func:`plinius.lab.bench.contenders.run_rounds`
interleaves contenders, so round ``r`` of both sides ran within the same second or so and
shared the VM's state then (other tenants, turbo, page cache). Resampling rounds jointly keeps
that pairing; when the two sides have different numbers of rounds (one failed part-way) they are
resampled independently, and the interval says so (``paired: false``).

A target is ``met`` only when the whole interval is on the right side of it, ``not met`` when
the whole interval misses it, and ``inconclusive`` when it straddles the bar.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

RESAMPLES = 2000
SEED = 0
LEVEL = 0.95

Verdict = Literal["met", "not met", "inconclusive"]


@dataclass(frozen=True)
class Interval:
    """A median and its bootstrap 95 % confidence interval over ``n`` samples (rounds)."""

    median: float
    lo: float
    hi: float
    n: int
    paired: bool | None = None  # ratios only: rounds resampled jointly (True) or independently

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"median": self.median, "ci95": [self.lo, self.hi], "n": self.n}
        if self.paired is not None:
            out["paired"] = self.paired
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Interval:
        lo, hi = d["ci95"]
        return cls(float(d["median"]), float(lo), float(hi), int(d["n"]), d.get("paired"))

    def scaled(self, k: float) -> Interval:
        """The interval of ``k × x`` (``k`` > 0), e.g. seconds to MiB/s via ``1/x`` elsewhere."""
        return Interval(self.median * k, self.lo * k, self.hi * k, self.n, self.paired)

    def text(self, fmt: str = "{:.3g}", unit: str = "") -> str:
        """``median [lo–hi]unit``: how tables print an interval."""
        m, lo, hi = (fmt.format(v) for v in (self.median, self.lo, self.hi))
        return f"{m}{unit} [{lo}–{hi}]"


def _clean(samples: Sequence[float]) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("an interval needs at least one sample")
    if not np.all(np.isfinite(x)):
        raise ValueError("samples must be finite numbers")
    return x


def _bounds(stat: np.ndarray, level: float) -> tuple[float, float]:
    a = (1 - level) / 2 * 100
    lo, hi = np.percentile(stat, [a, 100 - a])
    return float(lo), float(hi)


def _indices(rng: np.random.Generator, n: int, resamples: int) -> np.ndarray:
    return rng.integers(0, n, size=(resamples, n))


def median_interval(
    samples: Sequence[float], seed: int = SEED, resamples: int = RESAMPLES, level: float = LEVEL
) -> Interval:
    """Median of ``samples`` with its percentile-bootstrap interval (vectorised, seeded)."""
    x = _clean(samples)
    med = float(np.median(x))
    if x.size == 1:
        return Interval(med, med, med, 1)
    rng = np.random.default_rng(seed)
    boot = np.median(x[_indices(rng, x.size, resamples)], axis=1)
    lo, hi = _bounds(boot, level)
    return Interval(med, min(lo, med), max(hi, med), int(x.size))


def ratio_interval(
    num: Sequence[float],
    den: Sequence[float],
    scale: float = 1.0,
    seed: int = SEED,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
) -> Interval:
    """``scale × median(num) / median(den)`` with a bootstrap interval.

    Paired by round when both sides have as many samples (rounds resampled jointly), else each
    side resampled independently. For a speed-up of A over B give B's seconds as ``num`` and
    A's as ``den``; for a throughput ratio ``scale`` is the ratio of the bytes moved.
    """
    a, b = _clean(num), _clean(den)
    if np.any(b <= 0):
        raise ValueError("the denominator's samples must be > 0")
    point = scale * float(np.median(a)) / float(np.median(b))
    paired = a.size == b.size
    if a.size == 1 and b.size == 1:
        return Interval(point, point, point, 1, paired)
    rng = np.random.default_rng(seed)
    if paired:
        idx = _indices(rng, a.size, resamples)
        ia, ib = idx, idx
    else:
        ia = _indices(rng, a.size, resamples)
        ib = _indices(rng, b.size, resamples)
    boot = scale * np.median(a[ia], axis=1) / np.median(b[ib], axis=1)
    lo, hi = _bounds(boot, level)
    return Interval(point, min(lo, point), max(hi, point), int(min(a.size, b.size)), paired)


def speedup(fast_s: Sequence[float], slow_s: Sequence[float], bytes_ratio: float = 1.0) -> Interval:
    """How many times faster the ``fast_s`` side is (throughput ratio when bytes differ:
    ``bytes_ratio`` = bytes of the fast side / bytes of the slow side)."""
    return ratio_interval(slow_s, fast_s, scale=bytes_ratio)


def verdict(iv: Interval, bar: float, at_least: bool = True) -> Verdict:
    """``met`` when the whole interval meets ``bar``, ``not met`` when the whole interval misses
    it, else ``inconclusive``. ``at_least``: the bar is a minimum (else a maximum)."""
    if not all(math.isfinite(v) for v in (iv.lo, iv.hi)):
        return "inconclusive"
    if at_least:
        if iv.lo >= bar:
            return "met"
        return "not met" if iv.hi < bar else "inconclusive"
    if iv.hi <= bar:
        return "met"
    return "not met" if iv.lo > bar else "inconclusive"
