"""``plinius engines``: the measured table as JSON and text, the cache it reads, one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cli_runner import run_cli


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PLINIUS_CRYPTO_ENGINE", None)
    env.pop("PLINIUS_LIBCRYPTO", None)
    env.update(extra)
    return env


def test_json_parses_and_a_second_run_reads_the_cache(tmp_path: Path) -> None:
    env = _env(PLINIUS_CACHE_DIR=str(tmp_path / "cache"))
    first = run_cli("engines", "--json", env=env)
    assert first.returncode == 0, first.stderr
    doc = json.loads(first.stdout)
    assert doc["table_source"] == "measured now"
    assert Path(doc["cache_path"]).parent == tmp_path / "cache"
    names = {w["way"] for w in doc["ways"]}
    assert "cryptography/1" in names and any(n.startswith("openssl[") for n in names)
    assert {(r["way"], r["op"], r["size"]) for r in doc["results"]} == {
        (w, op, s) for w in names for op in ("seal", "open") for s in doc["sizes"]
    }
    assert all(r["gbps"] > 0 and r["cpu_s_per_gib"] > 0 for r in doc["results"])
    for mode in ("sync", "async"):
        picked = {w for per in doc["choice"][mode]["ways"].values() for w in per.values()}
        assert picked <= names
    second = run_cli("engines", "--json", env=env)
    again = json.loads(second.stdout)
    assert again["table_source"] == "cached" and again["created"] == doc["created"]
    text = run_cli("engines", env=env)
    assert text.returncode == 0, text.stderr
    assert "measured on this machine, " in text.stdout and "cached at " in text.stdout
    assert "auto, sync: " in text.stdout and "auto, async: " in text.stdout
    fresh = json.loads(run_cli("engines", "--measure", "--json", env=env).stdout)
    assert fresh["table_source"] == "measured now" and fresh["cache_path"] == doc["cache_path"]


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = _env(PLINIUS_CACHE_DIR=str(tmp_path / "cache"))
    bad = run_cli("engines", "--bogus", env=env)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "unrecognized arguments: --bogus" in bad.stderr
    env["PLINIUS_LIBCRYPTO"] = "/nonexistent"
    lib = run_cli("engines", env=env)
    assert lib.returncode == 2 and lib.stderr.strip().splitlines() == [
        "plinius engines: error: PLINIUS_LIBCRYPTO='/nonexistent': not an existing libcrypto file"
    ]


def test_a_cache_dir_that_cannot_be_written_is_one_warning(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    res = run_cli("engines", "--json", env=_env(PLINIUS_CACHE_DIR=str(tmp_path / "file" / "c")))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["cache_path"] is None
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: cannot write the crypto engine table")
