"""Issue 24: the read-only open of ``plinius verify``/``export``/``infer`` asks each backend for
what it declares. ``create="never"`` goes only to a class with ``read_only_open = True``; a
plug-in that never heard of ``create`` is opened plainly instead of failing on the option."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plinius.backends import Backend, backend_class, open_backend, register_backend
from plinius.backends.registry import BACKENDS, open_read_only
from plinius.backends.tmpfs import TmpfsBackend
from plinius.cli.main import main
from plinius.core.crypto import generate_key, write_key_file
from plinius.core.errors import ConfigError, NotFoundError
from plinius.enclave.platform import SimulatedPlatform
from plinius.nn import load_model
from plinius.session import Session


class NoCreateOption(TmpfsBackend):
    """A plug-in written before ``create=``: any option it does not know is refused."""

    name = "nocreate"
    read_only_open = False

    def __init__(self, location: str, **options: Any) -> None:
        if options:
            raise ConfigError(f"backend 'nocreate' takes no options, got {', '.join(options)}")
        super().__init__(location)


@pytest.fixture
def nocreate() -> Iterator[type[Backend]]:
    register_backend(NoCreateOption.name, NoCreateOption)
    yield NoCreateOption
    BACKENDS.unregister(NoCreateOption.name)


def test_the_base_declares_nothing_and_the_builtins_declare_create_never() -> None:
    assert Backend.read_only_open is False
    for name in ("romulus", "dax", "ssd", "tmpfs", "redis", "rediss"):
        assert backend_class(name).read_only_open is True, name


def test_create_never_goes_only_to_a_class_that_declares_it(
    tmp_path: Path, nocreate: type[Backend]
) -> None:
    with open_backend(f"nocreate:{tmp_path / 'n'}") as b:  # made by a plain open
        b.close()
    with open_read_only(f"nocreate:{tmp_path / 'n'}") as ro:
        assert isinstance(ro, NoCreateOption) and ro.read("mirror") is None
    with pytest.raises(NotFoundError):  # a declaring class gets create=never: nothing made
        open_read_only(f"tmpfs:{tmp_path / 'missing'}")
    assert not (tmp_path / "missing").exists()


def test_verify_opens_a_plug_in_without_create(
    tmp_path: Path, nocreate: type[Backend], capsys: pytest.CaptureFixture[str]
) -> None:
    """``plinius verify`` on a plug-in that takes no ``create``: the mirror verifies."""
    key = tmp_path / "k.key"
    write_key_file(key, generate_key())
    cpu, state = tmp_path / "cpu", tmp_path / "state"
    spec = f"nocreate:{tmp_path / 'store'}"
    platform = SimulatedPlatform(cpu, state_dir=state)
    s = Session(load_model("tiny"), label="tiny", key_file=key, platform=platform, say=print)
    s.attach(s.open(spec, mirror_bytes=1 << 20))
    s.restore()
    s.mirror()
    s.close()
    capsys.readouterr()
    argv = ["--backend", spec, "--key-file", str(key), "--platform", f"sim:{cpu}"]
    assert main(["verify", *argv, "--state-dir", str(state)]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith("ok: mirror of tiny")
