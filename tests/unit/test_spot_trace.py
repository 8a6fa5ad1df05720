"""Spot traces: the shipped paper trace, AWS JSON, CSV, the synthetic generator, bad input."""

from __future__ import annotations

import gzip
import hashlib
import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from spot_names import PAPER, PAPER_SOURCE

from plinius.lab.spot import trace as trace_mod
from plinius.lab.spot.trace import (
    MAX_SLOTS,
    TraceError,
    decode_runs,
    encode_runs,
    load_trace,
    paper_trace,
    synthetic_trace,
)

# Computed once from the original price_time_c3.2xlarge.csv (SHA-256 249c4d17...2e4a) with the
# CSV loader: SHA-256 of its 129,601 prices as little-endian float64. Not read from the package.
PAPER_SERIES_SHA256 = "f0f4eda0b134d1fbce92512c5ff17e1bd9720a97aa15dcf41ecbd4b2243bb668"
PAPER_CSV_SHA256 = "249c4d173b6368518aafea1b553375c0b8fae554a5f9d5690f202ae170e62e4a"


def _shipped() -> bytes:
    return (
        resources.files("plinius.lab.spot")
        .joinpath("data", trace_mod.PAPER_TRACE_FILE)
        .read_bytes()
    )


def test_paper_trace() -> None:
    t = load_trace(PAPER)
    assert len(t) == 129_601 and t.slot_seconds == 300 and t.source == PAPER_SOURCE
    assert t.prices.min() == pytest.approx(0.064) and t.prices.max() == pytest.approx(4.2)
    assert 0 < t.interruptions(0.0955) < len(t)
    assert t.interruptions(0.0955) == 638 and int(t.running(0.0955).sum()) == 68_515
    day = t.window(0, 288)
    assert len(day) == 288
    assert day.cost(0.0955) == pytest.approx(float(np.sum(day.prices[day.prices <= 0.0955])) / 12)
    assert list(t.prices[:10]) == [0.0956] * 8 + [0.0948] * 2  # the CSV's first rows


def test_shipped_copy_decodes_to_the_original_series() -> None:
    """The digest of the CSV loader's series, computed here without SpotTrace.digest."""
    t = paper_trace()
    assert t.prices.dtype == np.float64
    assert hashlib.sha256(t.prices.astype("<f8").tobytes()).hexdigest() == PAPER_SERIES_SHA256
    assert t.digest() == PAPER_SERIES_SHA256 == trace_mod.PAPER_DIGEST
    assert np.array_equal(load_trace(PAPER).prices, t.prices)


def test_shipped_copy_is_small_documented_package_data() -> None:
    data = _shipped()
    assert data[:2] == b"\x1f\x8b" and len(data) < 64_000  # gzip, ~47 KB
    text = gzip.decompress(data).decode()
    comments = tuple(line[2:] for line in text.splitlines() if line.startswith("# "))
    assert any(PAPER_CSV_SHA256 in c for c in comments)
    assert sum(1 for line in text.splitlines() if line[:1].isdigit()) == 23_359  # runs
    # deterministic: re-encoding the decoded trace gives the shipped bytes back
    assert encode_runs(decode_runs(data, "x"), comments) == data
    readme = resources.files("plinius.lab.spot").joinpath("data", "README.md").read_text()
    for needle in (
        "c3.2xlarge",
        "price_time_c3.2xlarge.csv",
        PAPER_CSV_SHA256,
        PAPER_SERIES_SHA256,
    ):
        assert needle in readme


def test_damaged_or_missing_shipped_copy_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trace_mod, "PAPER_DIGEST", "0" * 64)
    with pytest.raises(TraceError, match="damaged"):
        load_trace(PAPER)
    monkeypatch.undo()
    monkeypatch.setattr(trace_mod, "PAPER_TRACE_FILE", "no-such-trace.csv.gz")
    with pytest.raises(TraceError, match="missing from the installed"):
        paper_trace()


def test_run_length_round_trip() -> None:
    s = synthetic_trace(slots=500, seed=7)
    data = encode_runs(s, ("a comment",))
    back = decode_runs(data, "s")
    assert np.array_equal(back.prices, s.prices) and back.slot_seconds == s.slot_seconds
    assert encode_runs(s, ("a comment",)) == data  # no time or name in the gzip header


def _gz(text: str) -> bytes:
    return gzip.compress(text.encode(), mtime=0)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"price,slots\n0.1,2\n", "not a gzip"),
        (_gz("0.1,2\n"), "expected the header"),
        (_gz("price,slots\n"), "no price rows"),
        (_gz("price,slots\n0.1,0\n"), "slots >= 1"),
        (_gz("price,slots\n0.1,-2\n"), "slots >= 1"),
        (_gz("price,slots\n0.1,²\n"), "slots >= 1"),
        (_gz("price,slots\n0.1\n"), "slots >= 1"),
        (_gz("price,slots\n-0.1,2\n"), "negative"),
        (_gz("price,slots\nnan,2\n"), "not finite"),
        (_gz(f"price,slots\n0.1,{MAX_SLOTS}\n0.2,1\n"), "two years"),
    ],
)
def test_bad_run_length_traces(data: bytes, message: str) -> None:
    with pytest.raises(TraceError, match=message):
        decode_runs(data, "t")


def test_trace_names_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert np.array_equal(load_trace("synthetic", seed=3).prices, synthetic_trace(seed=3).prices)
    assert load_trace("synthetic").source == synthetic_trace(seed=0).source
    monkeypatch.chdir(tmp_path)
    Path("paper").write_text("0.1,1\n0.2,3\n")
    for as_file in ("./paper", Path("paper")):  # a path, not the name, reads the file
        assert list(load_trace(as_file).prices) == [0.1, 0.1, 0.2]
    assert len(load_trace("paper")) == 129_601


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
    with pytest.raises(TraceError, match=r"does not exist \(built-in traces: paper, synthetic\)"):
        load_trace("papers")
    with pytest.raises(TraceError, match="never run"):
        load_trace(PAPER).check_bid(0.01)


def test_synthetic_is_deterministic_and_plausible() -> None:
    a, b = synthetic_trace(seed=3), synthetic_trace(seed=3)
    assert np.array_equal(a.prices, b.prices)
    assert not np.array_equal(a.prices, synthetic_trace(seed=4).prices)
    assert len(a) == 8064  # four weeks of 5-minute slots
    assert 10 < a.interruptions(0.0955) < 100  # the paper's trace: ~40 per four weeks
    with pytest.raises(TraceError):
        synthetic_trace(slots=0)
