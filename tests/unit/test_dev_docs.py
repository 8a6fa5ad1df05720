"""Issue 24: the development recipes do what they say. Local ``tox`` fails, never skips, when an
interpreter of the matrix is missing (and README says how to get one, or how to run only the
3.11 envs); README's asv regression check compares two different commits."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    """README's ``## title`` section, up to the next ``## ``."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : None if end < 0 else end]


def test_tox_fails_on_a_missing_interpreter() -> None:
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(ROOT / "tox.ini")
    envs = [e.strip() for e in ini["tox"]["env_list"].split(",")]
    assert {"py311", "py312", "py313"} <= set(envs)
    assert ini["tox"]["skip_missing_interpreters"].strip() == "false"


def test_readme_says_how_to_get_the_interpreters_or_run_only_311() -> None:
    dev = section("Development")
    assert "pyenv install 3.12 3.13" in dev or "uv python install 3.12 3.13" in dev, dev
    assert "tox -e py311,lint,type" in dev, dev


def test_readme_asv_regression_check_compares_two_commits() -> None:
    """``asv continuous main HEAD`` on main benchmarks one commit twice and reports nothing."""
    runs = re.findall(r"^asv continuous ([^#\n]*)", section("asv on several machines"), re.M)
    assert runs
    for args in runs:
        base, head = args.split()[-2:]
        assert base != head and base not in {"main", "master"}, args
