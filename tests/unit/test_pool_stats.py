"""PoolStats is generated from the one declaration of the pool statistics, ``rom_stats`` in
``native/romulus.h`` (through cffi): every C field shows up, under the names reports and tests
have always used, with the same types."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest
from plinius._romulus import ffi

from plinius.backends.romulus import Pool, PoolStats

#: the names and types PoolStats had when it was written out by hand (run reports use them)
BEFORE: dict[str, type] = {
    "pool_size": int,
    "region_size": int,
    "main_off": int,
    "back_off": int,
    "meta_size": int,
    "used": int,
    "top": int,
    "free_bytes": int,
    "alloc_bytes": int,
    "nallocs": int,
    "commits": int,
    "aborts": int,
    "fences": int,
    "flushed_lines": int,
    "last_log_lines": int,
    "last_copy_bytes": int,
    "last_fences": int,
    "full_copies": int,
    "state": str,
    "mode": str,
    "flush": str,
    "real_pm": bool,
    "opened_as": str,
    "in_txn": bool,
    "dev_write_bytes": int,
    "dev_write_wait_s": float,
    "dev_read_bytes": int,
    "dev_read_wait_s": float,
    "commit": str,
    "bg_min": int,
    "bg_copies": int,
    "bg_copy_s": float,
    "last_bg_copy_s": float,
    "bg_wait_s": float,
}


def test_every_field_of_the_header_is_shown() -> None:
    shown = {f.name for f in dataclasses.fields(PoolStats)}
    for cname, _ in ffi.typeof("rom_stats").fields:
        if cname in ("dev_on", "bg_reserved"):
            continue
        name = {"commit_mode": "commit"}.get(cname, cname.removesuffix("_ns") + "_s")
        assert (cname if cname in shown else name) in shown, cname


def test_names_order_and_types_are_unchanged(tmp_path: Path) -> None:
    with Pool(tmp_path / "p", 1 << 20, device="optane-1dimm") as pool:
        with pool.transaction():
            pool.set_root("r", pool.alloc(64), 64)
        st = pool.stats()
        doc = st.as_dict()
        assert list(doc) == list(BEFORE)
        assert {k: type(v) for k, v in doc.items()} == BEFORE
        assert st.commits == 1 and st.nallocs == 1 and st.state == "idle"
        assert st.opened_as == "created" and st.commit == "background" and st.in_txn is False
        assert st.dev_write_bytes > 0 and st.dev_write_wait_s >= 0.0
        assert dataclasses.is_dataclass(st) and pickle.loads(pickle.dumps(st)) == st
        with pytest.raises(dataclasses.FrozenInstanceError):
            st.commits = 2
