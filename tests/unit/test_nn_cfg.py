"""The Darknet ``.cfg`` parser: real files parse, mistakes are reported with file, line, option."""

from __future__ import annotations

from pathlib import Path

import pytest

from plinius.core.errors import ConfigError
from plinius.nn import CfgError, build_layers, parse_cfg, parse_cfg_text
from plinius.nn.policy import LearningRatePolicy, parse_net_section

NET = """[net]
batch = 128
height=28
width=28
channels=1
learning_rate=0.1
policy=poly
power=4
max_batches = 500
momentum=0.9
decay=0.0005
"""


def layers_of(text: str) -> list[str]:
    _, layers = build_layers(parse_cfg_text(NET + text, "m.cfg"))
    return [layer.kind for layer in layers]


def error_of(text: str, net: str = NET) -> CfgError:
    with pytest.raises(CfgError) as info:
        build_layers(parse_cfg_text(net + text, "m.cfg"))
    return info.value


def test_darknet_syntax_comments_blanks_and_aliases() -> None:
    text = """
# a comment
; another
[conv]
filters = 4
size=3
stride=1
pad=1
activation=leaky

[max]
size=2
stride=2

[conn]
output=10
activation=linear

[soft]
groups=1
[cost]
"""
    assert layers_of(text) == ["convolutional", "maxpool", "connected", "softmax", "cost"]


def test_net_section_values() -> None:
    cfg = parse_cfg_text(NET + "[softmax]\n", "m.cfg")
    net = parse_net_section(cfg.net)
    assert (net.batch, net.height, net.width, net.channels) == (128, 28, 28, 1)
    assert net.momentum == 0.9 and net.decay == 0.0005 and net.max_batches == 500
    assert net.policy == LearningRatePolicy("poly", 0.1, 4.0, 500)


def test_unknown_option_names_file_line_and_option() -> None:
    err = error_of("[convolutional]\nfilter=64\nsize=3\n")
    assert err.path == "m.cfg" and err.line == 13 and err.option == "filter"
    assert str(err).startswith("m.cfg:13: option 'filter': [convolutional]")


def test_bad_values_are_located() -> None:
    err = error_of("[convolutional]\nfilters=64\nsize=three\n")
    assert (err.line, err.option) == (14, "size") and "integer" in str(err)
    err = error_of("[convolutional]\nfilters=4\nactivation=swish\n")
    assert err.option == "activation" and "leaky" in str(err)
    err = error_of("[dropout]\nprobability=1.5\n")
    assert err.line == 12 and "probability" in str(err)
    err = error_of("[convolutional]\nfilters=0\n")
    assert err.option == "filters" and "> 0" in str(err)
    err = error_of("[convolutional]\nfilters=2\nsize=9\n", NET.replace("28", "4"))
    assert "does not fit" in str(err)


def test_unsupported_layers_and_options() -> None:
    err = error_of("[route]\nlayers=-1\n")
    assert err.line == 12 and "not supported" in str(err)
    err = error_of("[convolutional]\nfilters=4\ngroups=2\n")
    assert err.option == "groups"
    err = error_of("[cost]\ntype=masked\n")
    assert err.option == "type"
    err = error_of("[softmax]\n", NET + "adam=1\n")
    assert err.option == "adam"


@pytest.mark.parametrize(
    "text,line,needle",
    [
        ("batch=1\n[net]\n", 1, "before the first"),
        ("[convolutional]\nfilters=1\n", 1, "expected [net]"),
        ("[net]\nbatch=1\n", 1, "no layers"),
        ("[net]\nbatch\n", 2, "key=value"),
        ("[net]\nbatch=1\nbatch=2\n[softmax]\n", 3, "twice"),
        ("[net\nbatch=1\n", 1, "malformed"),
        ("", 1, "no sections"),
        ("[net]\nbatch=1\n[softmax]\n[net]\n", 4, "only appear once"),
    ],
)
def test_structure_errors(text: str, line: int, needle: str) -> None:
    with pytest.raises(CfgError) as info:
        parse_cfg_text(text, "x.cfg")
    assert info.value.line == line and needle in str(info.value)


def test_net_errors() -> None:
    err = error_of("[softmax]\n", NET.replace("policy=poly", "policy=fast"))
    assert err.option == "policy"
    err = error_of("[softmax]\n", NET.replace("policy=poly", "policy=steps"))
    assert "steps" in str(err)
    bad = NET.replace("policy=poly", "policy=steps\nsteps=10,20\nscales=.1")
    assert "scales" in str(error_of("[softmax]\n", bad))
    no_geometry = NET.replace("height=28\n", "")
    assert "height" in str(error_of("[softmax]\n", no_geometry))


def test_cost_must_be_last() -> None:
    with pytest.raises(ConfigError, match="last"):
        build_layers(parse_cfg_text(NET + "[cost]\n[softmax]\n", "m.cfg"))


def test_parse_cfg_reads_files_and_reports_missing(tmp_path: Path) -> None:
    p = tmp_path / "a.cfg"
    p.write_text(NET + "[softmax]\n")
    assert parse_cfg(p).path == str(p)
    with pytest.raises(ConfigError, match="no such"):
        parse_cfg(tmp_path / "missing.cfg")


def test_learning_rate_policies() -> None:
    constant = LearningRatePolicy("constant", 0.1)
    assert constant.rate(0) == constant.rate(10**6) == 0.1
    steps = LearningRatePolicy("steps", 0.1, steps=(100, 200), scales=(0.1, 0.5))
    assert steps.rate(99) == 0.1
    assert steps.rate(100) == pytest.approx(0.01)
    assert steps.rate(250) == pytest.approx(0.005)
    poly = LearningRatePolicy("poly", 0.1, power=4, max_batches=500)
    assert poly.rate(0) == 0.1
    assert poly.rate(250) == pytest.approx(0.1 * 0.5**4)
    assert poly.rate(500) == 0.0 and poly.rate(600) == 0.0
    step = LearningRatePolicy("step", 0.1, step=10, scale=0.5)
    assert step.rate(25) == pytest.approx(0.025)
    burn = LearningRatePolicy("constant", 0.1, power=2, burn_in=10)
    assert burn.rate(5) == pytest.approx(0.1 * 0.25)
    assert LearningRatePolicy("exp", 0.1, gamma=0.9).rate(2) == pytest.approx(0.081)
