"""Backend specs and the registry, including third-party backends from entry points."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from plinius.backends import registry
from plinius.backends.ssd import SsdBackend
from plinius.errors import BackendError, SpecError, UnknownBackendError


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
    monkeypatch.setattr(registry, "entry_points", lambda group: eps)
    assert registry.registered()["plugin"] == f"{__name__}:PluginBackend"
    b = registry.open_backend(f"plugin:{tmp_path}")
    assert isinstance(b, PluginBackend)


def test_broken_plugin_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    eps = [
        EntryPoint("broken", "no_such_module_xyz:Thing", registry.ENTRY_POINT_GROUP),
        EntryPoint("notabackend", "pathlib:Path", registry.ENTRY_POINT_GROUP),
    ]
    monkeypatch.setattr(registry, "entry_points", lambda group: eps)
    with pytest.raises(BackendError, match="cannot be loaded"):
        registry.backend_class("broken")
    with pytest.raises(BackendError, match="not a plinius Backend"):
        registry.backend_class("notabackend")
