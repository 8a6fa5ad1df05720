"""``plinius bench --only freshness --quick --json`` end to end: the simulated CPU and swtpm (a
software TPM, started by the section) at counter_every 1, 8 and 30s, each with a finite median
and interval, the increments per save the protocol makes, the report saying "software TPM";
and without swtpm on the PATH the simulated row still runs and the swtpm rows say why not. No
assert is about speed."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from cli_runner import run_cli
from needs import require

from plinius.lab.bench.freshness import IDS, PRIMITIVES, SAVE_CONTENDERS

pytestmark = pytest.mark.system


def _swtpm_missing() -> str | None:
    for tool in ("swtpm", "swtpm_setup"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install swtpm swtpm-tools)"
    try:
        import tpm2_pytss  # noqa: F401 - only whether it imports
    except ImportError:
        return "tpm2-pytss is not installed (pip install 'plinius[tpm]')"
    return None


def _bench(tmp_path: Path, **env: str) -> tuple[dict[str, Any], str]:
    disk = tmp_path / "disk"
    disk.mkdir()
    out = tmp_path / "out"
    res = run_cli(
        "bench", "--only", "freshness", "--quick", "--json", "--out", str(out),
        env={**os.environ, "PLINIUS_DISK_DIR": str(disk), **env},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["sections"]["freshness"]["status"] == "ok"
    assert list(disk.iterdir()) == []  # swtpm's state and every platform directory removed
    return doc, (out / "report.md").read_text()


def _interval_ok(d: dict[str, Any]) -> bool:
    lo, hi = d["ci95"]
    return all(math.isfinite(v) for v in (lo, d["median"], hi)) and lo <= d["median"] <= hi


def test_four_contenders_with_intervals_and_the_report_says_software_tpm(tmp_path: Path) -> None:
    require(_swtpm_missing())
    doc, report = _bench(tmp_path)
    got = doc["freshness"]
    rows = {r["id"]: r for r in got["contenders"]}
    assert list(rows) == [p.id for p in SAVE_CONTENDERS] == list(IDS[:4])
    for r in rows.values():
        assert r["status"] == "ok", r
        assert len(r["seconds"]) == got["rounds"] and _interval_ok(r["ms"])
    for r in list(rows.values())[1:]:
        assert _interval_ok(r["vs_simulated"])
    # counted, and what the protocol says: 2 changes per save, each moving the counter twice;
    # with counter_every=8 one move (2 increments) per 8 changes (20 saves: exactly 5 moves)
    assert rows["swtpm"]["increments_per_save"] == 4.0
    assert rows["swtpm?counter_every=8"]["increments_per_save"] == 0.5
    assert rows["swtpm?counter_every=30s"]["increments_per_save"] >= 0
    prims = {p["op"]: p for p in got["primitives"]}
    assert list(prims) == [op for op, _ in PRIMITIVES]
    assert all(p["status"] == "ok" and _interval_ok(p["ms"]) for p in prims.values())
    assert {x["id"] for x in got["explained"]} == set(IDS[1:4])
    assert "software TPM" in got["tpm"]["note"]
    # the report's part: every line naming swtpm says it is a software TPM
    part = report[report.index("## Freshness cost per save") :].split("\n## ")[0]
    named = [line for line in part.splitlines() if "swtpm" in line]
    assert len(named) >= 8 and all("software TPM" in line for line in named), named
    assert "a documented range, not a measurement of this machine" in part
    assert "40–200 ms per save in NV_Increment alone" in part  # 4 increments × 10–50 ms


def test_without_swtpm_the_simulated_row_runs_and_the_others_say_why(tmp_path: Path) -> None:
    doc, report = _bench(tmp_path, PATH=str(tmp_path / "no-tools"))
    rows = {r["id"]: r for r in doc["freshness"]["contenders"]}
    assert rows["simulated"]["status"] == "ok" and _interval_ok(rows["simulated"]["ms"])
    for p in SAVE_CONTENDERS[1:]:
        assert rows[p.id]["status"] == "not run"
        reason = rows[p.id]["reason"]
        assert "apt-get install swtpm" in reason or "pip install" in reason, reason
    assert "| swtpm (software TPM), counter_every=8 | not run: " in report
