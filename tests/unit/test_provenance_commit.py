"""Every report names the code behind it: the commit is recorded in the package at build time."""

from __future__ import annotations

from pathlib import Path

import pytest

import plinius
from plinius.lab.reporting import provenance


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    provenance.git_commit.cache_clear()


def test_recorded_commit_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "site-packages" / "plinius"
    pkg.mkdir(parents=True)
    (pkg / "_build_commit.txt").write_text("0123abcd\n")
    monkeypatch.setattr(plinius, "__file__", str(pkg / "__init__.py"))
    assert provenance.git_commit() == "0123abcd"


def test_installed_copy_without_record_does_not_guess(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = tmp_path / "site-packages" / "plinius"
    pkg.mkdir(parents=True)
    monkeypatch.setattr(plinius, "__file__", str(pkg / "__init__.py"))
    assert provenance.git_commit() is None


def test_this_install_knows_its_commit() -> None:
    here = Path(plinius.__file__).resolve().parent
    if "site-packages" in here.parts:  # a wheel install (tox, CI): the record must be there
        assert (here / "_build_commit.txt").read_text().strip()
    assert provenance.git_commit()
