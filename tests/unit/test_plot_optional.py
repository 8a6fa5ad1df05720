"""Figures are the ``plot`` extra: without matplotlib every command still writes its results
and says how to get the figure, instead of failing after the work is done."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from plinius.core.errors import MissingExtraError
from plinius.lab.experiments.workspace import publish
from plinius.lab.reporting import plots


def test_missing_matplotlib_is_a_named_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(MissingExtraError, match=r"plinius\[plot\]"):
        plots.sps([{"k": 1, "mode": "clwb", "sps": 1.0}], Path("/nonexistent/x.png"))


def test_publish_without_matplotlib_keeps_results(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)

    def plot(doc: dict[str, object], path: Path) -> None:
        plots.sps([], path)

    publish(
        "test/1", {"n": 1}, {"x": 2}, str(tmp_path / "out"), "fig.png",
        lambda doc: "# report\n", plot, as_json=False,
    )  # fmt: skip
    out = tmp_path / "out"
    assert json.loads((out / "results.json").read_text())["result"] == {"x": 2}
    assert (out / "report.md").read_text() == "# report\n"
    assert not (out / "fig.png").exists()
    assert (
        "no figure: figures need matplotlib: pip install 'plinius[plot]'" in capsys.readouterr().out
    )
