"""``plinius report --asv`` finds asv's results from wherever README's steps leave the user, and
reads the save and restore times of the generated save class."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plinius.core.errors import ConfigError
from plinius.lab.reporting.asvresults import SAVE_CLASS, find_results_dir, load, save_restore_rows


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


def _results_file(root: Path, results: dict[str, list[object]]) -> None:
    """One asv schema-2 result file of machine ``vm`` with ``results`` (name -> columns)."""
    (root / "vm").mkdir(parents=True)
    doc = {
        "version": 2,
        "commit_hash": "0123456789abcdef",
        "env_name": "existing-py",
        "params": {"machine": "vm"},
        "result_columns": ["result", "params"],
        "results": results,
    }
    (root / "vm" / "0123456789-existing-py.json").write_text(json.dumps(doc))


def test_save_rows_come_from_the_generated_save_class(tmp_path: Path) -> None:
    assert SAVE_CLASS == "SaveContenders"
    params = [
        ["'size-10'"],
        ["'openssl'"],
        ["'romulus'", "'ssd'", "'redis'"],
        ["'save'", "'restore'", "'restore_cold'"],
    ]
    # asv's order: the last parameter varies fastest; None: skipped here (NotImplementedError)
    values = [0.004, 0.002, None, 0.02, 0.01, 0.015, None, None, None]
    _results_file(
        tmp_path,
        {
            f"bench_sections.{SAVE_CLASS}.time_op": [values, params],
            # another section's class and an old-style class are not save rows
            "bench_sections.PeersContenders.time_op": [values, params],
            "bench_mirror.SaveRestore.time_save": [[0.1], [["'tmpfs'"], ["10"], ["'openssl'"]]],
        },
    )
    rows = save_restore_rows(load(tmp_path))
    assert rows == [
        {
            "machine": "vm",
            "commit": "0123456789",
            "backend": "romulus",
            "model_mb": 10.0,
            "engine": "openssl",
            "save_s": 0.004,
            "save_s_min": 0.004,
            "save_s_max": 0.004,
            "restore_s": 0.002,
            "restore_s_min": 0.002,
            "restore_s_max": 0.002,
            "series": "vm/romulus",
        },
        {
            "machine": "vm",
            "commit": "0123456789",
            "backend": "ssd",
            "model_mb": 10.0,
            "engine": "openssl",
            "save_s": 0.02,
            "save_s_min": 0.02,
            "save_s_max": 0.02,
            "restore_s": 0.01,
            "restore_s_min": 0.01,
            "restore_s_max": 0.01,
            "series": "vm/ssd",
        },
    ]  # redis did not run: no row; the cold restore is not a column of this report
    assert save_restore_rows(load(tmp_path), engine="cryptography") == []
