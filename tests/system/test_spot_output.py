"""What ``plinius spot`` prints: one summary block by default, every replayed slot with
``--verbose`` (real trainer processes, a short run on the paper's trace)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cli_runner import run_cli as plinius
from spot_names import PAPER_SOURCE

pytestmark = pytest.mark.system

#: the quick replay, trained to fewer iterations so each arm is a few seconds
SHORT = ("spot", "--quick", "--iterations", "30")
SLOT_LINE = re.compile(r"\b(resilient|nonresilient): slot \d+ (running|OFF)")


def test_spot_prints_one_summary_block(tmp_path: Path) -> None:
    res = plinius(*SHORT, "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    lines = (res.stdout + res.stderr).splitlines()
    assert not [ln for ln in lines if SLOT_LINE.search(ln)]
    assert len(lines) <= 16, "\n".join(lines)
    out = res.stdout
    doc = json.loads((tmp_path / "results.json").read_text())
    r, p = doc["result"], doc["parameters"]
    assert f"Trace {PAPER_SOURCE} from slot {r['start_slot']}, bid {p['bid']}" in out
    for run in ("resilient", "nonresilient"):
        row = next(ln for ln in out.splitlines() if ln.startswith(f"| {run} |"))
        assert f"| {r[run]['cost_usd']:.4f} |" in row
        assert f"| {r[run]['iterations_executed']} |" in row
    total = r["resilient"]["cost_usd"] + r["nonresilient"]["cost_usd"]
    executed = r["resilient"]["iterations_executed"] + r["nonresilient"]["iterations_executed"]
    (totals,) = [ln for ln in out.splitlines() if ln.startswith("**Totals**")]
    assert f"${total:.4f}" in totals and f"{executed} iterations executed" in totals
    assert (tmp_path / "report.md").read_text().strip() in out  # the report, as written


def test_spot_verbose_prints_every_slot(tmp_path: Path) -> None:
    res = plinius(*SHORT, "--verbose", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    shown = [m.groups() for m in map(SLOT_LINE.search, res.stderr.splitlines()) if m]
    r = json.loads((tmp_path / "results.json").read_text())["result"]
    for run in ("resilient", "nonresilient"):
        want = [(run, "running" if s["on"] else "OFF") for s in r[run]["states"]]
        assert [x for x in shown if x[0] == run] == want
