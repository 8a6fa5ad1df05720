"""Spot price traces: built in by name, or read from a CSV (``price,slot``) or AWS JSON file.

A trace is one price per fixed slot (5 minutes on AWS). Under a bid, a slot whose price is above
the bid has the instance off (the trainer is killed); at or below it the instance runs and pays
that slot's price.

Built-in traces (:data:`TRACE_NAMES`): ``paper``, the Plinius paper's AWS c3.2xlarge trace,
shipped inside the package run-length encoded (``plinius/spot/data/``, see its README), and
``synthetic``, a seeded generator shaped like it.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import io
import json
import math
import os
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from plinius.core import fsutil
from plinius.core.errors import ConfigError, NotFoundError

AWS_SLOT_SECONDS = 300
MAX_SLOTS = 2 * 366 * 24 * 3600 // AWS_SLOT_SECONDS  # two years of 5-minute slots
MAX_SLOT_NUMBER = 1 << 53  # exact in a float64
MAX_PRICE = 1e6  # USD/hour: far above any instance, far below where sums lose meaning
TRACE_MAX_BYTES = 64 << 20

TRACE_NAMES = ("paper", "synthetic")  # what ``load_trace`` and ``plinius spot --trace`` accept
PAPER_TRACE_FILE = "c3.2xlarge-paper.runs.csv.gz"  # in plinius/spot/data/
PAPER_SOURCE = "paper (AWS c3.2xlarge)"
PAPER_SLOTS = 129_601
# SHA-256 of the paper trace's prices as little-endian float64, slot by slot (SpotTrace.digest),
# as loaded from the original price_time_c3.2xlarge.csv: the shipped copy must decode to it
PAPER_DIGEST = "f0f4eda0b134d1fbce92512c5ff17e1bd9720a97aa15dcf41ecbd4b2243bb668"
RUNS_HEADER = "price,slots"


class TraceError(ConfigError):
    """A trace that cannot be used: unknown format, empty, non-monotonic, unusable bid."""


@dataclass(frozen=True)
class SpotTrace:
    prices: np.ndarray  # float64 USD per hour, one per slot
    slot_seconds: int  # real length of one slot in the market (300 on AWS)
    source: str

    def __post_init__(self) -> None:
        if self.prices.size == 0:
            raise TraceError(f"trace {self.source} is empty")
        if not np.all(np.isfinite(self.prices)) or np.any(self.prices < 0):
            raise TraceError(f"trace {self.source} has negative or non-numeric prices")
        if self.prices.size > MAX_SLOTS:
            raise _too_long(self.source, int(self.prices.size))

    def __len__(self) -> int:
        return int(self.prices.size)

    def digest(self) -> str:
        """SHA-256 (hex) of the prices as little-endian float64, slot by slot."""
        data = np.ascontiguousarray(self.prices, dtype="<f8").tobytes()
        return hashlib.sha256(data).hexdigest()

    def running(self, bid: float) -> np.ndarray:
        """True for slots where the instance runs (price at or below the bid)."""
        return np.asarray(self.prices <= bid)

    def window(self, start: int, slots: int) -> SpotTrace:
        if not 0 <= start < len(self):
            raise TraceError(f"start slot {start} outside the trace (0..{len(self) - 1})")
        return SpotTrace(
            self.prices[start : start + slots], self.slot_seconds, f"{self.source}[{start}:]"
        )

    def check_bid(self, bid: float) -> None:
        if not (math.isfinite(bid) and 0 <= bid <= MAX_PRICE):
            raise TraceError(f"bid {bid} is not a finite USD/hour price in 0..{MAX_PRICE:g}")
        if not self.running(bid).any():
            raise TraceError(
                f"bid {bid} is below every price of {self.source} (min {self.prices.min():.4f}): "
                "the instance would never run; raise --bid"
            )

    def interruptions(self, bid: float) -> int:
        """How many times the instance is switched off after having run."""
        r = self.running(bid).astype(np.int8)
        return int(np.sum((r[:-1] == 1) & (r[1:] == 0)))

    def mean_paid_price(self, bid: float) -> float:
        """USD/hour paid on average while running at ``bid`` (what an up-second costs)."""
        self.check_bid(bid)
        return float(np.mean(self.prices[self.running(bid)]))

    def cost(self, bid: float, slots_used: int | None = None) -> float:
        """Dollars paid for the running slots among the first ``slots_used`` (default: all)."""
        p = self.prices[:slots_used]
        return float(np.sum(p[p <= bid]) * self.slot_seconds / 3600)


def load_trace(source: str | os.PathLike[str], *, seed: int = 0) -> SpotTrace:
    """A built-in trace by name, or a CSV ``price,slot`` / ``aws ec2 describe-spot-price-history``
    JSON file.

    A ``str`` in :data:`TRACE_NAMES` names a built-in trace: ``"paper"`` (:func:`paper_trace`) or
    ``"synthetic"`` (:func:`synthetic_trace` with ``seed``); anything else, and every
    ``os.PathLike``, is a file (``"./paper"`` reads a file called ``paper``).

    Only a regular file of at most ``TRACE_MAX_BYTES`` is read (a FIFO cannot block us), and
    every price and slot is checked: finite, within bounds, slots strictly increasing, the whole
    trace at most ``MAX_SLOTS`` slots long.
    """
    if isinstance(source, str) and source in TRACE_NAMES:
        return paper_trace() if source == "paper" else synthetic_trace(seed=seed)
    p = Path(source)
    try:
        raw = fsutil.read_regular(p, "trace file", max_bytes=TRACE_MAX_BYTES)
    except NotFoundError:
        raise TraceError(
            f"trace file {p} does not exist (built-in traces: {', '.join(TRACE_NAMES)})"
        ) from None
    except ConfigError as exc:
        raise TraceError(str(exc)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TraceError(f"trace file {p} is not UTF-8 text (byte {exc.start})") from None
    stripped = text.lstrip()
    if not stripped:
        raise TraceError(f"trace {p} is empty")
    if stripped[0] in "{[":
        return _from_aws_json(stripped, str(p))
    return _from_csv(text, str(p))


def _price(text: object, where: str) -> float:
    """A price in USD/hour: finite, >= 0 and at most ``MAX_PRICE``."""
    try:
        value = float(str(text))
    except ValueError:
        raise TraceError(f"{where}: price {str(text)[:40]!r} is not a number") from None
    if not (math.isfinite(value) and 0 <= value <= MAX_PRICE):
        raise TraceError(
            f"{where}: price {str(text)[:40]} is negative, not finite or above "
            f"{MAX_PRICE:g} USD/hour"
        )
    return value


def _too_long(source: str, slots: int) -> TraceError:
    return TraceError(
        f"trace {source} spans {slots:,} slots of {AWS_SLOT_SECONDS // 60} minutes, more than "
        f"the {MAX_SLOTS:,} (two years) a replay can use: cut the trace"
    )


def _from_csv(text: str, source: str) -> SpotTrace:
    prices: list[float] = []
    slots: list[int] = []
    for lineno, row in enumerate(csv.reader(text.splitlines()), 1):
        if not row or row[0].strip().startswith("#"):
            continue
        if len(row) != 2:
            raise TraceError(
                f"{source}:{lineno}: expected 'price,slot', got {','.join(row)[:60]!r}"
            )
        try:
            price, slot = float(row[0]), float(row[1])
        except ValueError:
            if lineno == 1:  # a header line
                continue
            raise TraceError(f"{source}:{lineno}: not numbers: {','.join(row)[:60]!r}") from None
        where = f"{source}:{lineno}"
        prices.append(_price(price, where))
        if not (math.isfinite(slot) and slot.is_integer() and abs(slot) <= MAX_SLOT_NUMBER):
            raise TraceError(f"{where}: slot {row[1].strip()[:40]!r} is not a whole slot number")
        slots.append(int(slot))
    if not prices:
        raise TraceError(f"trace {source} has no price rows")
    s = np.asarray(slots, dtype=np.int64)
    if np.any(np.diff(s) <= 0):
        bad = int(np.flatnonzero(np.diff(s) <= 0)[0])
        what = "repeats" if s[bad + 1] == s[bad] else "follows"
        raise TraceError(
            f"{source}: slots must increase: slot {s[bad + 1]} {what} {s[bad]} (row {bad + 2})"
        )
    # a gap in slot numbers means the price held: repeat it
    idx = s - s[0]
    if int(idx[-1]) + 1 > MAX_SLOTS:
        raise _too_long(source, int(idx[-1]) + 1)
    full = np.empty(int(idx[-1]) + 1)
    starts = idx
    vals = np.asarray(prices)
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else full.size
        full[start:end] = vals[i]
    return SpotTrace(full, AWS_SLOT_SECONDS, source)


def _from_aws_json(text: str, source: str) -> SpotTrace:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TraceError(f"{source} is neither CSV nor valid JSON: {exc}") from None
    except RecursionError:
        raise TraceError(f"{source}: JSON nested too deeply to be a price history") from None
    items = doc.get("SpotPriceHistory") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise TraceError(
            f"{source}: unknown trace format; expected CSV 'price,slot' rows or the JSON of "
            "`aws ec2 describe-spot-price-history` (a SpotPriceHistory list)"
        )
    if not items:
        raise TraceError(f"trace {source} is empty")
    points: list[tuple[float, float]] = []
    for i, it in enumerate(items):
        try:
            stamp = str(it["Timestamp"]).replace("Z", "+00:00")
            when = dt.datetime.fromisoformat(stamp)
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            price = it["SpotPrice"]
        except (KeyError, ValueError, TypeError):
            raise TraceError(f"{source}: entry {i} lacks a valid Timestamp/SpotPrice") from None
        points.append((when.timestamp(), _price(price, f"{source}: entry {i}")))
    times = [t for t, _ in points]
    # AWS pages are not in one order, so the points are sorted; a repeated time is not one trace
    if len(set(times)) != len(times):
        raise TraceError(
            f"{source}: a timestamp appears twice (several zones or products mixed?): filter the "
            "history to one availability zone and product"
        )
    points.sort()
    t0 = points[0][0]
    n = int((points[-1][0] - t0) // AWS_SLOT_SECONDS) + 1
    if n > MAX_SLOTS:
        raise _too_long(source, n)
    prices = np.empty(n)
    for i, (ts, price) in enumerate(points):
        start = int((ts - t0) // AWS_SLOT_SECONDS)
        end = int((points[i + 1][0] - t0) // AWS_SLOT_SECONDS) if i + 1 < len(points) else n
        prices[start : max(end, start + 1)] = price
    return SpotTrace(prices, AWS_SLOT_SECONDS, source)


def paper_trace() -> SpotTrace:
    """The Plinius paper's AWS c3.2xlarge trace (129,601 5-minute slots), shipped in the package.

    Decoded from ``plinius/spot/data/`` and checked against :data:`PAPER_DIGEST`: it is exactly
    what :func:`load_trace` reads from the original ``price_time_c3.2xlarge.csv``.
    """
    ref = resources.files("plinius.lab.spot").joinpath("data", PAPER_TRACE_FILE)
    try:
        data = ref.read_bytes()
    except OSError as exc:
        raise TraceError(
            f"the built-in paper trace ({PAPER_TRACE_FILE}) is missing from the installed "
            f"plinius package: {exc.strerror or exc}; reinstall plinius"
        ) from None
    trace = decode_runs(data, PAPER_SOURCE)
    if len(trace) != PAPER_SLOTS or trace.digest() != PAPER_DIGEST:
        raise TraceError(
            f"the built-in paper trace ({PAPER_TRACE_FILE}) is damaged: {len(trace)} slots, "
            f"digest {trace.digest()[:16]}... instead of {PAPER_SLOTS} and "
            f"{PAPER_DIGEST[:16]}...; reinstall plinius"
        )
    return trace


def encode_runs(trace: SpotTrace, comments: tuple[str, ...] = ()) -> bytes:
    """``trace`` run-length encoded: gzip'd UTF-8 text, ``# comment`` lines, a ``price,slots``
    header, then one ``price,slots`` row per run of equal prices (``repr`` of the float, so
    :func:`decode_runs` gives back the very same float64s). The gzip header carries no name or
    time, so equal traces encode to equal bytes."""
    p = trace.prices
    starts = np.flatnonzero(np.concatenate([[True], p[1:] != p[:-1]]))
    lengths = np.diff(np.append(starts, p.size))
    lines = [f"# {c}" for c in comments] + [RUNS_HEADER]
    lines += [f"{float(p[s])!r},{int(n)}" for s, n in zip(starts, lengths, strict=True)]
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=buf, mtime=0) as gz:
        gz.write(("\n".join(lines) + "\n").encode("utf-8"))
    return buf.getvalue()


def decode_runs(data: bytes, source: str, slot_seconds: int = AWS_SLOT_SECONDS) -> SpotTrace:
    """The trace :func:`encode_runs` wrote; every row checked (price bounds, whole run lengths,
    at most ``MAX_SLOTS`` slots in all)."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
            raw = gz.read(TRACE_MAX_BYTES + 1)
        text = raw.decode("utf-8")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise TraceError(f"{source}: not a gzip'd UTF-8 run-length trace ({exc})") from None
    if len(raw) > TRACE_MAX_BYTES:
        raise TraceError(f"{source}: decompresses to more than {TRACE_MAX_BYTES} bytes")
    prices: list[float] = []
    lengths: list[int] = []
    total = 0
    header_seen = False
    for lineno, line in enumerate(text.splitlines(), 1):
        where = f"{source}:{lineno}"
        if not line or line.startswith("#"):
            continue
        if not header_seen:
            if line != RUNS_HEADER:
                raise TraceError(f"{where}: expected the header {RUNS_HEADER!r}")
            header_seen = True
            continue
        price, sep, count = line.partition(",")
        if not (sep and count.isascii() and count.isdigit() and len(count) <= 12) or (
            int(count) < 1
        ):
            raise TraceError(f"{where}: expected 'price,slots' with slots >= 1: {line[:60]!r}")
        total += int(count)
        if total > MAX_SLOTS:
            raise _too_long(source, total)
        prices.append(_price(price, where))
        lengths.append(int(count))
    if not prices:
        raise TraceError(f"trace {source} has no price rows")
    full = np.repeat(np.asarray(prices, dtype=np.float64), np.asarray(lengths, dtype=np.int64))
    return SpotTrace(full, slot_seconds, source)


def synthetic_trace(slots: int = 8064, seed: int = 0, base: float = 0.094) -> SpotTrace:
    """A seeded trace shaped like the paper's c3.2xlarge one.

    Model: the log-price follows a mean-reverting random walk around ``base`` (reversion 0.05 per
    slot, noise 0.002), plus demand spikes that start with probability 0.002 per slot, multiply the
    price by 1.2–3× and last a geometric number of slots (mean 12). Default: four weeks of 5-minute
    slots. Deterministic for a given seed.
    """
    if slots <= 0:
        raise TraceError("a synthetic trace needs at least one slot")
    rng = np.random.default_rng(seed)
    x = np.empty(slots)
    level = 0.0
    spike_left = 0
    spike = 1.0
    for i in range(slots):
        level += -0.05 * level + 0.002 * rng.standard_normal()
        if spike_left == 0 and rng.random() < 0.002:
            spike_left = int(rng.geometric(1 / 12))
            spike = float(rng.uniform(1.2, 3.0))
        mult = spike if spike_left > 0 else 1.0
        spike_left = max(0, spike_left - 1)
        x[i] = base * np.exp(level) * mult
    return SpotTrace(np.round(x, 4), AWS_SLOT_SECONDS, f"synthetic(seed={seed}, slots={slots})")
