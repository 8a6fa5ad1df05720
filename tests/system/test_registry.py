"""Backend specs and the registry: third-party backends from entry points and from code, the
refusal to replace a name silently, and install hints."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from plinius.backends import registry
from plinius.backends.ssd import SsdBackend
from plinius.core import plugins
from plinius.core.errors import BackendError, PluginConflictError, SpecError, UnknownBackendError


def test_parse_spec() -> None:
    assert registry.parse_spec("ssd:/a/b") == ("ssd", "/a/b", {})
    assert registry.parse_spec("ssd:///a/b") == ("ssd", "/a/b", {})
    assert registry.parse_spec("romulus:/p.pool?size=1G&mode=msync") == (
        "romulus",
        "/p.pool",
        {"size": "1G", "mode": "msync"},
    )


@pytest.mark.parametrize("bad", ["/just/a/path", "ssd", "ssd:", "SSD:/x", ":x", "ssd:/x?=&"])
def test_malformed_specs(bad: str) -> None:
    with pytest.raises(SpecError):
        registry.parse_spec(bad)


def test_unknown_backend_lists_known() -> None:
    with pytest.raises(UnknownBackendError, match="ssd") as err:
        registry.open_backend("floppy:/x")
    assert "registered" in str(err.value)


def test_builtins_registered() -> None:
    assert {"ssd", "dax", "tmpfs", "romulus"} <= set(registry.registered())
    assert registry.backend_class("ssd") is SsdBackend


class PluginBackend(SsdBackend):
    name = "plugin"


def test_entry_point_plugin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    eps = [EntryPoint("plugin", f"{__name__}:PluginBackend", registry.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(plugins, "entry_points", lambda group: eps)
    assert registry.registered()["plugin"] == f"{__name__}:PluginBackend"
    b = registry.open_backend(f"plugin:{tmp_path}")
    assert isinstance(b, PluginBackend)


def test_broken_plugin_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    eps = [
        EntryPoint("broken", "no_such_module_xyz:Thing", registry.ENTRY_POINT_GROUP),
        EntryPoint("notabackend", "pathlib:Path", registry.ENTRY_POINT_GROUP),
    ]
    monkeypatch.setattr(plugins, "entry_points", lambda group: eps)
    with pytest.raises(BackendError, match="cannot be loaded"):
        registry.backend_class("broken")
    with pytest.raises(BackendError, match="not a plinius Backend"):
        registry.backend_class("notabackend")


@pytest.fixture(autouse=True)
def _no_leftover_registrations(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Registrations made in code by a test end with it."""
    monkeypatch.setattr(registry.BACKENDS, "_in_code", {})
    monkeypatch.delenv(registry.OVERRIDE_ENV, raising=False)
    yield


def fake_distribution(root: Path, dist: str, entry_points: str) -> None:
    """An installed distribution as importlib.metadata sees one: a dist-info on sys.path."""
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


def test_register_backend_in_code(tmp_path: Path) -> None:
    registry.register_backend("mine", PluginBackend)
    assert registry.registered()["mine"] == f"{__name__}:PluginBackend"
    assert registry.backend_class("mine") is PluginBackend
    assert isinstance(registry.open_backend(f"mine:{tmp_path}"), PluginBackend)
    registry.register_backend("lazy", f"{__name__}:PluginBackend")  # imported when used
    assert registry.backend_class("lazy") is PluginBackend


def test_register_backend_refuses_to_replace_without_replace_true() -> None:
    with pytest.raises(PluginConflictError, match=r"'ssd' is already registered.*replace=True"):
        registry.register_backend("ssd", PluginBackend)
    assert registry.backend_class("ssd") is SsdBackend
    registry.register_backend("mine", PluginBackend)
    with pytest.raises(PluginConflictError, match="registered in code"):
        registry.register_backend("mine", SsdBackend)
    registry.register_backend("ssd", PluginBackend, replace=True)
    assert registry.backend_class("ssd") is PluginBackend
    registry.BACKENDS.unregister("ssd")
    assert registry.backend_class("ssd") is SsdBackend


def test_register_backend_checks_name_and_class() -> None:
    with pytest.raises(PluginConflictError, match="invalid backend name"):
        registry.register_backend("Bad:Name", PluginBackend)
    with pytest.raises(TypeError, match="not a plinius Backend"):
        registry.register_backend("path", Path)
    assert "path" not in registry.registered()


def test_entry_point_may_not_replace_a_builtin(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_distribution(
        tmp_path,
        "evil-ssd",
        f"""
        [plinius.backends]
        ssd = {__name__}:PluginBackend
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginConflictError) as err:
        registry.backend_class(
            "tmpfs"
        )  # any lookup: the conflict is not hidden until "ssd" is used
    msg = str(err.value)
    assert "\n" not in msg
    assert "evil-ssd" in msg and "built-in backend 'ssd'" in msg
    assert "PLINIUS_OVERRIDE_BACKENDS=ssd" in msg
    # opting in: the environment variable, or a registration in code
    monkeypatch.setenv(registry.OVERRIDE_ENV, "romulus, ssd")
    assert registry.backend_class("ssd") is PluginBackend
    monkeypatch.delenv(registry.OVERRIDE_ENV)
    registry.register_backend("ssd", f"{__name__}:PluginBackend", replace=True)
    assert registry.backend_class("ssd") is PluginBackend


def test_two_distributions_may_not_share_a_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for dist, cls in (("store-one", "PluginBackend"), ("store-two", "SsdBackend")):
        fake_distribution(tmp_path / dist, dist, f"[plinius.backends]\nshared = {__name__}:{cls}\n")
        monkeypatch.syspath_prepend(str(tmp_path / dist))
    with pytest.raises(PluginConflictError, match=r"store-(one|two).*would replace.*'shared'"):
        registry.registered()


def test_unknown_name_with_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugins, "entry_points", lambda group: [])
    with pytest.raises(
        UnknownBackendError, match=r"pip install \./examples/plinius-backend-example"
    ):
        registry.backend_class("plaindir")
    with pytest.raises(UnknownBackendError) as err:
        registry.backend_class("floppy")
    assert "install it with" not in str(err.value)


def test_builtin_with_missing_optional_dependency(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A built-in with an extra (``redis``) and a missing dependency names the extra to install."""
    (tmp_path / "plinius_fake_redis_backend.py").write_text(
        "import plinius_no_such_client_xyz  # the optional dependency\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.BUILTIN, "fakeredis", "plinius_fake_redis_backend:RedisBackend")
    monkeypatch.setitem(registry.INSTALL_HINTS, "fakeredis", "pip install 'plinius[redis]'")
    with pytest.raises(BackendError, match=r"cannot be loaded.*plinius_no_such_client_xyz") as err:
        registry.backend_class("fakeredis")
    assert str(err.value).endswith("install it with: pip install 'plinius[redis]'")
    monkeypatch.delitem(sys.modules, "plinius_fake_redis_backend", raising=False)


def test_cli_refuses_a_replacing_plugin_in_one_line(tmp_path: Path) -> None:
    """A real process with the conflicting distribution: exit 2, one line, no traceback."""
    fake_distribution(tmp_path, "evil-ssd", f"[plinius.backends]\nssd = {__name__}:PluginBackend\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env.pop(registry.OVERRIDE_ENV, None)
    res = subprocess.run(
        [sys.executable, "-P", "-m", "plinius.cli.main", "backends"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert "evil-ssd" in res.stderr and "PLINIUS_OVERRIDE_BACKENDS=ssd" in res.stderr
