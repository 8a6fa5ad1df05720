"""The crypto engine registry: the same rules as the backends' (one :class:`Registry`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from plinius.backends import registry
from plinius.core import crypto, crypto_choice
from plinius.core.crypto import (
    CryptographyEngine,
    PycryptodomeEngine,
    available_engines,
    engine_names,
    make_engine,
    register_engine,
)
from plinius.core.errors import ConfigError, PluginConflictError
from plinius.core.plugins import Registry

KEY = bytes(range(16))


class SlowEngine(PycryptodomeEngine):
    name = "slow"


@pytest.fixture(autouse=True)
def _no_leftover_registrations(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(crypto.ENGINE_REGISTRY, "_in_code", {})
    monkeypatch.delenv("PLINIUS_OVERRIDE_ENGINES", raising=False)
    yield


def test_one_registry_mechanism_for_backends_and_engines() -> None:
    assert isinstance(crypto.ENGINE_REGISTRY, Registry)
    assert type(crypto.ENGINE_REGISTRY) is type(registry.BACKENDS)


def test_register_engine_in_code() -> None:
    register_engine("slow", SlowEngine)
    assert engine_names()[:3] == ["openssl", "cryptography", "pycryptodome"]  # built-ins first
    assert available_engines()[-1] == "slow"
    # the default is still the faster built-in measured here, never the slow plug-in
    assert make_engine(KEY).name == crypto_choice.last_choice["chosen"] != "slow"
    e = make_engine(KEY, "slow")
    assert isinstance(e, SlowEngine) and e.key_id == crypto.key_id(KEY)


def test_register_engine_refuses_silent_replacement() -> None:
    with pytest.raises(PluginConflictError, match="'pycryptodome' is already registered"):
        register_engine("pycryptodome", SlowEngine)
    assert type(make_engine(KEY, "pycryptodome")) is PycryptodomeEngine
    register_engine("pycryptodome", SlowEngine, replace=True)
    assert type(make_engine(KEY, "pycryptodome")) is SlowEngine
    with pytest.raises(TypeError, match="not a plinius Engine"):
        register_engine("path", Path)


def test_unusable_engine_is_not_available_and_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    register_engine("needs-hw", SlowEngine, usable=lambda: False)
    monkeypatch.setitem(crypto.ENGINE_HINTS, "needs-hw", "pip install plinius-hw-aes")
    assert "needs-hw" in engine_names() and "needs-hw" not in available_engines()
    with pytest.raises(
        ConfigError, match="'needs-hw' is not installed: pip install plinius-hw-aes"
    ):
        make_engine(KEY, "needs-hw")


def test_missing_native_engine_hints_openssl_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    # an install built without OpenSSL's headers: the Python engines take over
    monkeypatch.setitem(crypto.ENGINES, "openssl", (crypto.ENGINES["openssl"][0], lambda: False))
    assert available_engines() == ["cryptography", "pycryptodome"]
    assert make_engine(KEY).name == "cryptography"
    with pytest.raises(ConfigError, match=r"not installed: reinstall plinius .*libssl-dev"):
        make_engine(KEY, "openssl")


def test_missing_cryptography_hints_the_fast_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(crypto.ENGINES, "openssl", (crypto.ENGINES["openssl"][0], lambda: False))
    monkeypatch.setitem(crypto.ENGINES, "cryptography", (CryptographyEngine, lambda: False))
    assert available_engines() == ["pycryptodome"]
    assert make_engine(KEY).name == "pycryptodome"
    with pytest.raises(ConfigError, match=r"not installed: pip install 'plinius\[fast\]'"):
        make_engine(KEY, "cryptography")


def test_unknown_engine_lists_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"unknown crypto engine 'rot13'.*pycryptodome"):
        make_engine(KEY, "rot13")
    monkeypatch.setitem(crypto.ENGINE_HINTS, "rot13", "pip install plinius-rot13")
    with pytest.raises(ConfigError, match="install it with: pip install plinius-rot13"):
        make_engine(KEY, "rot13")


def test_entry_point_engines(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A new name joins after the built-ins; a built-in's name is refused unless opted in."""
    info = tmp_path / "aes_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: aes-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[plinius.engines]\nslow = {__name__}:SlowEngine\ncryptography = {__name__}:SlowEngine\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginConflictError, match=r"aes-plugin.*built-in crypto engine"):
        make_engine(KEY, "slow")
    monkeypatch.setenv("PLINIUS_OVERRIDE_ENGINES", "cryptography")
    assert available_engines() == ["openssl", "cryptography", "pycryptodome", "slow"]
    assert type(make_engine(KEY, "slow")) is SlowEngine
    assert type(make_engine(KEY, "cryptography")) is SlowEngine


def test_a_plugin_that_breaks_at_import_breaks_only_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A third-party engine whose import raises something other than ImportError is not
    usable and named in one line; every other engine still works."""
    (tmp_path / "brokenengine.py").write_text("raise RuntimeError('plug-in bug')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    register_engine("broken", "brokenengine:Engine")
    assert "broken" not in available_engines()
    assert make_engine(KEY).name in ("auto", "openssl", "cryptography", "pycryptodome")
    with pytest.raises(ConfigError, match=r"broken.*plug-in bug"):
        make_engine(KEY, "broken")
