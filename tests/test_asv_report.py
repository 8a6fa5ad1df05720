"""``plinius report --asv`` finds asv's results from wherever README's steps leave the user."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plinius.errors import ConfigError
from plinius.reporting.asvresults import find_results_dir


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "asv_bench" / "out").mkdir(parents=True)
    (tmp_path / "asv_bench" / "asv.conf.json").write_text(json.dumps({"results_dir": "out"}))
    return tmp_path


def test_from_the_repository_root(repo: Path) -> None:
    assert find_results_dir(None, cwd=repo) == repo / "asv_bench" / "out"


def test_from_inside_asv_bench(repo: Path) -> None:
    assert find_results_dir(None, cwd=repo / "asv_bench") == repo / "asv_bench" / "out"


def test_given_the_asv_bench_directory_or_the_results(repo: Path) -> None:
    assert find_results_dir("asv_bench", cwd=repo) == repo / "asv_bench" / "out"
    assert find_results_dir("asv_bench/out", cwd=repo) == repo / "asv_bench" / "out"


def test_nothing_to_find_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no asv.conf.json .* --asv DIR"):
        find_results_dir(None, cwd=tmp_path)
