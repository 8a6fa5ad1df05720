"""The model zoo and ``plinius models``: names, sizes, the paper's numbers, cfg paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plinius.cli.main import main
from plinius.core.errors import ConfigError
from plinius.nn import describe, list_models, load_cfg, load_model
from plinius.nn.zoo import MIB, PAPER_SIZES_MB, layers_for_size, size_model_bytes


def test_fixed_models_match_the_paper() -> None:
    mnist = describe("mnist")
    assert (mnist.layers, mnist.conv_layers, mnist.parameters) == (17, 12, 391_594)
    assert mnist.batch == 128 and mnist.input == "1x28x28"
    assert 1.49 < mnist.mib < 1.5
    batch = describe("batch")
    assert batch.conv_layers == 4
    tiny = describe("tiny")
    assert tiny.parameters < 20_000 and tiny.batch == 32
    assert len({describe(n).fingerprint for n in ("mnist", "tiny", "batch")}) == 3


@pytest.mark.parametrize("mb", PAPER_SIZES_MB)
def test_size_models_are_close_to_the_asked_size(mb: int) -> None:
    info = describe(f"size-{mb}")
    assert abs(info.mib - mb) <= 1.2  # one 2.25 MiB layer is the granularity
    n = layers_for_size(mb)
    assert info.conv_layers == n + 3
    assert info.bytes == size_model_bytes(n)


def test_size_layers_are_the_papers_2_25_mib() -> None:
    assert size_model_bytes(5) - size_model_bytes(4) == 4 * (256 * 256 * 9 + 4 * 256)
    assert (256 * 256 * 9 * 4) / MIB == 2.25
    # The paper grows its models five layers at a time: 10 MB is 5 layers, 100 MB is 45.
    assert [layers_for_size(mb) for mb in PAPER_SIZES_MB] == list(range(5, 50, 5))


def test_list_models_and_cfg_paths(tmp_path: Path) -> None:
    names = [m.name for m in list_models()]
    assert names[:3] == ["mnist", "tiny", "batch"] and "size-100" in names
    p = tmp_path / "mine.cfg"
    p.write_text(
        "[net]\nbatch=2\nheight=4\nwidth=4\nchannels=1\n"
        "[convolutional]\nfilters=2\nsize=3\npad=1\nactivation=leaky\n[avgpool]\n[softmax]\n"
    )
    info = describe(str(p))
    assert info.parameters == 2 * 9 + 2 and info.layers == 3
    net = load_model(str(p))
    assert net.n_params() == 20


def test_unknown_models_are_errors() -> None:
    with pytest.raises(ConfigError, match="unknown model 'resnet'"):
        load_cfg("resnet")
    with pytest.raises(ConfigError, match="no such"):
        load_cfg("missing.cfg")
    with pytest.raises(ConfigError):
        load_cfg("size-0")


def test_cli_models_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    assert by_name["mnist"]["parameters"] == 391_594 and by_name["mnist"]["conv_layers"] == 12
    assert {"name", "layers", "parameters", "mib", "bytes", "fingerprint"} <= set(rows[0])
    assert len(by_name["mnist"]["fingerprint"]) == 64
    assert [r["name"] for r in rows][-1] == "size-100"


def test_cli_models_table_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "tiny", "--layers"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "connected 784->10" in out and "maxpool 2x2/2" in out
    assert main(["models", "nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
