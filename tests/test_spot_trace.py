"""Spot traces: the paper's CSV, AWS JSON, the synthetic generator, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from plinius.spot.trace import TraceError, load_trace, synthetic_trace

PAPER_TRACE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "spot"
PAPER_CSV = PAPER_TRACE / "price_time_c3.2xlarge.csv"


def test_paper_trace() -> None:
    t = load_trace(PAPER_CSV)
    assert len(t) == 129_601 and t.slot_seconds == 300
    assert t.prices.min() == pytest.approx(0.064) and t.prices.max() == pytest.approx(4.2)
    assert 0 < t.interruptions(0.0955) < len(t)
    day = t.window(0, 288)
    assert len(day) == 288
    assert day.cost(0.0955) == pytest.approx(float(np.sum(day.prices[day.prices <= 0.0955])) / 12)


def test_aws_json(tmp_path: Path) -> None:
    doc = {
        "SpotPriceHistory": [
            {"SpotPrice": "0.20", "Timestamp": "2024-01-01T00:10:00Z"},
            {"SpotPrice": "0.05", "Timestamp": "2024-01-01T00:00:00Z"},
            {"SpotPrice": "0.06", "Timestamp": "2024-01-01T00:20:00+00:00"},
        ]
    }
    p = tmp_path / "t.json"
    p.write_text(json.dumps(doc))
    t = load_trace(p)
    assert list(t.prices) == [0.05, 0.05, 0.20, 0.20, 0.06]
    assert t.interruptions(0.1) == 1


def test_csv_gaps_hold_the_price(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("price,slot\n0.1,1\n0.2,4\n0.3,5\n")
    assert list(load_trace(p).prices) == [0.1, 0.1, 0.1, 0.2, 0.3]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty"),
        ("0.1,1\n0.2,1\n", "slots must increase"),
        ("0.1,2\n0.2,1\n", "slots must increase"),
        ("0.1;1\n", "expected 'price,slot'"),
        ("0.1,1\nabc,2\n", "not numbers"),
        ('{"something": 1}', "unknown trace format"),
        ('{"SpotPriceHistory": []}', "empty"),
        ('{"SpotPriceHistory": [{"SpotPrice": "x"}]}', "Timestamp/SpotPrice"),
        ("{broken", "neither CSV nor valid JSON"),
        ("-1,1\n", "negative"),
    ],
)
def test_bad_traces(tmp_path: Path, content: str, message: str) -> None:
    p = tmp_path / "t"
    p.write_text(content)
    with pytest.raises(TraceError, match=message):
        load_trace(p)


def test_missing_file_and_impossible_bid(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="does not exist"):
        load_trace(tmp_path / "nope.csv")
    with pytest.raises(TraceError, match="never run"):
        load_trace(PAPER_CSV).check_bid(0.01)


def test_synthetic_is_deterministic_and_plausible() -> None:
    a, b = synthetic_trace(seed=3), synthetic_trace(seed=3)
    assert np.array_equal(a.prices, b.prices)
    assert not np.array_equal(a.prices, synthetic_trace(seed=4).prices)
    assert len(a) == 8064  # four weeks of 5-minute slots
    assert 10 < a.interruptions(0.0955) < 100  # the paper's trace: ~40 per four weeks
    with pytest.raises(TraceError):
        synthetic_trace(slots=0)
