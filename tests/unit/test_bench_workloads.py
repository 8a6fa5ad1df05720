"""Workloads shaped like real models: parameter counts, names and shapes, optimizer state."""

from __future__ import annotations

import math

import numpy as np
import pytest

from plinius.core.errors import ConfigError
from plinius.core.memory import PAGE
from plinius.lab.bench.workloads import (
    TensorSpec,
    make_arrays,
    nbytes,
    optimizer_specs,
    parameter_specs,
    workload_labels,
    workload_names,
    workload_specs,
)

# published parameter counts (torchvision resnet50, HF bert-base-uncased BertModel, HF gpt2)
KNOWN_PARAMS = {"resnet50": 25_557_032, "bert-base": 109_482_240, "gpt2-small": 124_439_808}
# state_dict lengths: ResNet-50 has 161 parameters and 53 BatchNorms x 3 buffers
KNOWN_KEYS = {"resnet50": 320, "bert-base": 199, "gpt2-small": 148}
BUFFER_SUFFIXES = (".running_mean", ".running_var", ".num_batches_tracked")


def _params(name: str) -> list[TensorSpec]:
    return [s for s in parameter_specs(name) if not s.name.endswith(BUFFER_SUFFIXES)]


def _count(specs: list[TensorSpec]) -> int:
    return sum(math.prod(s.shape) for s in specs)


def test_names_and_labels() -> None:
    assert workload_names() == ["resnet50", "bert-base", "gpt2-small"]
    assert workload_labels(optimizer=False) == workload_names()
    labels = workload_labels()
    assert len(labels) == 9
    assert {"resnet50+sgd-momentum", "bert-base+adam", "gpt2-small+adam"} <= set(labels)


@pytest.mark.parametrize("name", list(KNOWN_PARAMS))
def test_parameter_counts_match_the_published_models(name: str) -> None:
    assert _count(_params(name)) == KNOWN_PARAMS[name]
    specs = parameter_specs(name)
    assert len(specs) == KNOWN_KEYS[name]
    assert len({s.name for s in specs}) == len(specs)


def test_resnet50_layout() -> None:
    specs = parameter_specs("resnet50")
    by_name = {s.name: s for s in specs}
    assert specs[0] == TensorSpec("conv1.weight", (64, 3, 7, 7))
    assert [s.name for s in specs[1:6]] == [
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
        "bn1.num_batches_tracked",
    ]
    assert by_name["bn1.num_batches_tracked"] == TensorSpec("bn1.num_batches_tracked", (), "int64")
    assert by_name["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert by_name["layer3.5.conv2.weight"].shape == (256, 256, 3, 3)
    assert by_name["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert "layer2.1.downsample.0.weight" not in by_name
    assert specs[-2:] == [TensorSpec("fc.weight", (1000, 2048)), TensorSpec("fc.bias", (1000,))]


def test_bert_and_gpt2_layout() -> None:
    bert = {s.name: s.shape for s in parameter_specs("bert-base")}
    assert bert["embeddings.word_embeddings.weight"] == (30522, 768)
    assert bert["encoder.layer.11.intermediate.dense.weight"] == (3072, 768)
    assert bert["encoder.layer.0.output.dense.weight"] == (768, 3072)
    assert bert["pooler.dense.bias"] == (768,)
    gpt = parameter_specs("gpt2-small")
    names = [s.name for s in gpt]
    assert names[0] == "transformer.wte.weight" and gpt[0].shape == (50257, 768)
    assert "lm_head.weight" not in names  # tied to wte: stored once
    shapes = {s.name: s.shape for s in gpt}
    assert shapes["transformer.h.0.attn.c_attn.weight"] == (768, 2304)  # Conv1D: (in, out)
    assert shapes["transformer.h.11.mlp.c_proj.weight"] == (3072, 768)
    assert names[-1] == "transformer.ln_f.bias"


def test_optimizer_state_covers_float_parameters_only() -> None:
    params = _params("resnet50")
    sgd = optimizer_specs("resnet50", "sgd-momentum")
    assert [s.name for s in sgd] == [f"opt.{p.name}.momentum_buffer" for p in params]
    assert _count(sgd) == KNOWN_PARAMS["resnet50"]
    adam = optimizer_specs("gpt2-small", "adam")
    assert len(adam) == 3 * len(_params("gpt2-small"))
    assert adam[0] == TensorSpec("opt.transformer.wte.weight.exp_avg", (50257, 768))
    assert adam[2] == TensorSpec("opt.transformer.wte.weight.step", (), "float32")
    steps = [s for s in adam if s.name.endswith(".step")]
    assert nbytes(adam) == 4 * (2 * KNOWN_PARAMS["gpt2-small"] + len(steps))


def test_workload_specs_add_the_optimizer() -> None:
    plain = workload_specs("bert-base")
    with_sgd = workload_specs("bert-base+sgd-momentum")
    assert with_sgd[: len(plain)] == plain
    assert nbytes(with_sgd) == 2 * nbytes(plain) == 8 * KNOWN_PARAMS["bert-base"]


@pytest.mark.parametrize("label", ["vgg16", "resnet50+lion", "mnist-64"])
def test_unknown_labels_are_refused(label: str) -> None:
    with pytest.raises(ConfigError, match="unknown"):
        workload_specs(label)


def test_make_arrays_is_aligned_deterministic_and_varied() -> None:
    specs = workload_specs("resnet50+adam")[:40] + parameter_specs("resnet50")[-2:]
    a = make_arrays(specs, seed=1)
    b = make_arrays(specs, seed=1)
    c = make_arrays(specs, seed=2)
    assert [n for n, _ in a] == [s.name for s in specs]
    for spec, (_, x), (_, y) in zip(specs, a, b, strict=True):
        assert x.shape == spec.shape and x.dtype == np.dtype(spec.dtype)
        assert x.ctypes.data % PAGE == 0
        assert np.array_equal(x, y)
    assert sum(x.nbytes for _, x in a) == nbytes(specs)
    floats = [x for _, x in a if x.dtype == np.float32 and x.size > 1000]
    assert not np.array_equal(floats[0].ravel()[:1000], floats[1].ravel()[:1000])
    assert not all(np.array_equal(x, z) for (_, x), (_, z) in zip(a, c, strict=True))
    fc = a[-2][1]
    assert np.isfinite(fc).all() and fc.std() > 0.5  # no zeros or garbage left unfilled
