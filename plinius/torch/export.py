"""The owner's way out of a PyTorch mirror: the model's tensors as a ``safetensors`` file.

Decrypting authenticates every record; the model tensors (layer 0, tied ones under every name
``state_dict`` gives them) are rebuilt in their torch dtypes from the raw records and the manifest,
never unpickled. The file holds plaintext weights: created 0600, never over an existing file,
written whole beside it first (a kill leaves no file or the whole one under its name).
"""

from __future__ import annotations

import os

import torch

from plinius.core import fsutil
from plinius.core.errors import ConfigError, PliniusError
from plinius.format.mirror import OpenedMirror
from plinius.torch.codec import dtype_from_name
from plinius.torch.state import KIND, MODEL

SAFETENSORS_HINT = "pip install 'plinius[torch]' (or: pip install safetensors)"


def model_state(opened: OpenedMirror) -> dict[str, torch.Tensor]:
    """The mirrored model's ``state_dict`` (every name, tied tensors as separate copies)."""
    net = opened.info.meta.get("net") or {}
    if net.get("model_kind") != KIND:
        raise ConfigError(f"{opened.what} does not hold a PyTorch model")
    dtypes = {(r[0], r[1]): r[2] for r in net["layout"]}
    arrays = opened.load().arrays
    out: dict[str, torch.Tensor] = {}
    for (layer, name), arr in arrays.items():
        if layer != MODEL:
            continue
        t = torch.from_numpy(arr)
        want = dtype_from_name(dtypes[(layer, name)])
        out[name] = t if t.dtype == want else t.view(want)
    for alias, first in net.get("aliases", {}).items():
        out[alias] = out[first].clone()
    return out


def write_safetensors(opened: OpenedMirror, path: str | os.PathLike[str]) -> int:
    """Write the model tensors of ``opened`` to ``path`` (0600, refused if it exists); bytes."""
    try:
        from safetensors.torch import save
    except ImportError:
        raise ConfigError(
            f"export to safetensors needs the safetensors package: {SAFETENSORS_HINT}"
        ) from None
    tensors = model_state(opened)
    meta = {
        "plinius_iteration": str(opened.info.iteration),
        "plinius_version": str(opened.info.version),
    }
    data = save(tensors, metadata=meta)
    target = fsutil.check_path(path, "output")
    try:
        # written whole and flushed in a private scratch directory beside the target, then
        # linked in (never over a file): a kill or a full disk leaves nothing under the name
        with fsutil.scratch_beside(target) as scratch:
            staged = scratch / "model.safetensors"
            fsutil.create_exclusive(staged, data, mode=0o600)
            fsutil.link_new(staged, target, mode=0o600)
    except PliniusError:
        raise  # (NotFoundError is an OSError too)
    except FileExistsError:
        raise ConfigError(
            f"{path} exists: plinius export never overwrites, give a new path"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    return len(data)


__all__ = ["SAFETENSORS_HINT", "model_state", "write_safetensors"]
