"""The benchmark is open: a section is one module that registers itself. A toy section in one new
file (installed as a plug-in through the ``plinius.bench_sections`` entry point, nothing else
edited) is listed by ``--only``, runs, sets a target, renders into report.md and is saved in
results.json; a rounds section's contenders run interleaved with the backends'."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
from cli_runner import run_cli

from plinius.core.errors import ConfigError
from plinius.lab.bench.registry import Section, register, section_names, sections, unregister

TOY = textwrap.dedent(
    '''
    """A toy section: one standalone figure and one contender in the rounds."""
    import time

    from plinius.lab.bench.contenders import Contender
    from plinius.lab.bench.registry import Section, register
    from plinius.lab.bench.stats import Interval


    def run(opts):
        return {"answer": 42, "rounds": opts.rounds}


    def contenders(ctx):
        def nap(op):
            t0 = time.perf_counter()
            time.sleep(0.001)
            return time.perf_counter() - t0

        return [Contender("toyrounds", "nap", ctx.model.name, 1, ("nap",), nap, id="nap@here")]


    def targets(doc, t):
        v = float(doc["toy"]["answer"])
        t.add("toy_answer", "the toy's answer ≥ 40", 40.0, Interval(v, v, v, 1), point=True)


    def render(doc):
        return ["## Toy section", "", f"The answer is {doc['toy']['answer']}.", ""]


    register(Section("toy", "a toy", 95, run=run, targets=targets, render=render))
    register(Section("toyrounds", "a toy in the rounds", 96, contenders=contenders,
                     full_only=False))
    '''
)


@pytest.fixture
def toy_plugin(tmp_path: Path) -> dict[str, str]:
    """A directory on PYTHONPATH with the toy module and a dist-info naming it in the group."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "toy_section.py").write_text(TOY)
    info = site / "toy_section-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-section\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[plinius.bench_sections]\ntoy = toy_section\n")
    return {**os.environ, "PYTHONPATH": str(site)}


def test_a_toy_section_in_one_file_runs_renders_and_is_saved(
    tmp_path: Path, toy_plugin: dict[str, str]
) -> None:
    out = tmp_path / "out"
    res = run_cli(
        "bench",
        "--backends",
        "tmpfs",
        "--sizes",
        "1",
        "--rounds",
        "3",
        "--only",
        "toy,toyrounds,save",
        "--out",
        str(out),
        "--json",
        env=toy_plugin,
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads((out / "results.json").read_text())
    assert doc["toy"] == {"answer": 42, "rounds": 3}
    assert doc["sections"]["toy"]["status"] == "ok"
    assert doc["sections"]["toyrounds"]["status"] == "ok"
    # the toy contender ran in the same rotated rounds as the backend instance
    order = doc["rounds"]["size-1"]["order"]
    assert len(order) == 3 and {"toyrounds:nap", "save:tmpfs"} == set(order[0])
    nap = next(c for c in doc["contenders"] if c["section"] == "toyrounds")
    assert nap["id"] == "toyrounds:nap@here" and len(nap["ops"]["nap"]["seconds"]) == 3
    toy = next(t for t in doc["targets"] if t["id"] == "toy_answer")
    assert toy["verdict"] == "met" and toy["measured"] == 42
    report = (out / "report.md").read_text()
    assert "## Toy section" in report and "The answer is 42." in report
    assert "the toy's answer" in report
    # without the plug-in the section does not exist: --only names it and fails in one line
    res = run_cli("bench", "--only", "toy", "--out", str(tmp_path / "o2"))
    assert res.returncode == 2 and "unknown section(s) toy" in res.stderr


def test_the_shipped_sections_are_registered_in_order() -> None:
    names = section_names()
    assert names[:4] == ("save", "peers", "limits", "torch")
    assert {"engines", "sps", "fio", "batch", "overhead"} <= set(names)
    for s in sections():
        assert (s.run is None) != (s.contenders is None), s.name


def test_a_section_needs_one_way_to_run_and_a_unique_name() -> None:
    with pytest.raises(ConfigError, match="exactly one of run, contenders"):
        Section("bad", "neither", 1)
    first = Section("dup-test", "one", 99, run=lambda opts: None)
    register(first)
    try:
        register(first)  # the same module imported twice: fine
        with pytest.raises(ConfigError, match="registered twice"):
            register(Section("dup-test", "another", 99, run=lambda opts: 1))
    finally:
        unregister("dup-test")
