"""``plinius bench --workload FILE``: the answer for the user's own checkpoint, from its tensor
names, shapes and dtypes (a safetensors header is all that is read); a file that is not one is
one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy as stn

from plinius.core.errors import ConfigError
from plinius.lab.bench.saverestore import workload
from plinius.lab.bench.workloads import FILE_PREFIX, file_specs, nbytes


def test_a_safetensors_checkpoint_becomes_the_workload(tmp_path: Path) -> None:
    f = tmp_path / "model.safetensors"
    stn.save_file({"w": np.ones((64, 32), np.float16), "n": np.arange(5, dtype=np.int64)}, f)
    specs = file_specs(str(f))
    assert {(s.name, s.shape, s.dtype) for s in specs} == {
        ("w", (64, 32), "float16"),
        ("n", (5,), "int64"),
    }
    assert nbytes(specs) == 64 * 32 * 2 + 5 * 8
    model = workload(FILE_PREFIX + str(f))
    assert sorted(r.name for r in model.records) == ["n", "w"]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "header length"),
        ((1 << 40).to_bytes(8, "little"), "header length"),
        ((4).to_bytes(8, "little") + b"\xff\xfe{}", "not JSON"),
        (b"\x02\x00\x00\x00\x00\x00\x00\x00[]", "not a table"),
        (b"\x02\x00\x00\x00\x00\x00\x00\x00{}", "no tensor"),
    ],
)
def test_a_file_that_is_not_a_checkpoint_is_one_error(
    tmp_path: Path, content: bytes, needle: str
) -> None:
    f = tmp_path / "bad.safetensors"
    f.write_bytes(content)
    with pytest.raises(ConfigError, match=needle):
        file_specs(str(f))


def test_a_tensor_without_a_valid_shape_is_refused(tmp_path: Path) -> None:
    head = json.dumps({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}).encode()
    f = tmp_path / "neg.safetensors"
    f.write_bytes(len(head).to_bytes(8, "little") + head + bytes(4))
    with pytest.raises(ConfigError, match="no valid dtype and shape"):
        file_specs(str(f))
    with pytest.raises(ConfigError, match="no such file"):
        file_specs(str(tmp_path / "missing.safetensors"))
    (tmp_path / "x.npz").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"expected a \.safetensors"):
        file_specs(str(tmp_path / "x.npz"))
