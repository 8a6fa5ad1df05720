"""The default plan's two private redis-servers (real ``redis-server`` processes): the AOF of
each lands in its instance's directory, and ``describe()`` reports the durability that directory
gives, ``process-crash`` in RAM and ``power-fail`` on the disk (appendfsync always)."""

from __future__ import annotations

from pathlib import Path

import pytest
from needs import require

from plinius.backends import open_backend
from plinius.backends.fsinfo import mount_of
from plinius.backends.registry import parse_spec
from plinius.backends.testing import raw_get, raw_put
from plinius.lab.plan import default_plan, plan_instances, probe


def test_default_redis_instances_have_their_aof_where_their_durability_says(
    monkeypatch: pytest.MonkeyPatch, shm_dir: Path, tmp_path: Path
) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    volatile = mount_of(disk).volatile
    require(f"{disk} is RAM-backed here: no disk to put an AOF on" if volatile else None)
    monkeypatch.setenv("PLINIUS_SHM_DIR", str(shm_dir))
    monkeypatch.setenv("PLINIUS_DISK_DIR", str(disk))
    plan = [p for p in default_plan() if p.name == "redis"]
    assert [p.label for p in plan] == ["redis", "redis@disk"]
    require(probe(plan[0]))
    want = {"redis": (shm_dir, "process-crash"), "redis@disk": (disk, "power-fail")}
    seen = {}
    with plan_instances(plan) as pairs:
        for p, spec in pairs:
            root, level = want[p.label]
            where = Path(parse_spec(spec)[1])
            assert where.is_relative_to(root), (p.label, spec)
            payload = f"mirror bytes of {p.label}".encode()
            with open_backend(spec) as b:
                raw_put(b, "blob", payload)
                info = b.describe()
                assert raw_get(b, "blob") == payload
            seen[p.label] = info.durability
            assert info.extra["appendonly"] == "yes" and info.extra["appendfsync"] == "always"
            assert any("private redis-server" in n for n in info.notes)
            assert any("RAM" in n for n in info.notes) == (level == "process-crash")
            aof = b"".join(f.read_bytes() for f in where.rglob("*.aof"))  # the AOF, here
            assert payload in aof, p.label
    assert seen == {"redis": "process-crash", "redis@disk": "power-fail"}
    assert not list(shm_dir.iterdir()) and not list(disk.iterdir())  # removed with the plan
