"""The data owner's side: key, encrypted dataset, attestation + provisioning, and the way out.

In the paper's workflow the owner sends the trainer binary and the encrypted data, verifies the
enclave's quote, opens a secure channel and provisions the data key. These functions are that
side, talking to the enclave only through its ecalls.
"""

from __future__ import annotations

import os
from pathlib import Path

from plinius.backends.base import Backend
from plinius.core.crypto import Engine, make_engine
from plinius.core.datasets import load_dataset
from plinius.core.errors import ConfigError, PliniusError
from plinius.core.fsutil import check_path, link_new, private_dir, scratch_beside
from plinius.enclave.attestation import QuoteVerifier, pinned_key_verifier
from plinius.enclave.channel import EphemeralKey, wrap
from plinius.enclave.counter import FreshnessGuard, MirrorCounters
from plinius.enclave.measure import measurement
from plinius.enclave.platform import Platform
from plinius.enclave.trusted import (
    PROVISION_AAD,
    Enclave,
    mirror_guard,
    open_fresh,
)
from plinius.format.encdata import DatasetInfo, encrypt_dataset, read_info
from plinius.format.mirror import MirrorInfo, MirrorStore, OpenedMirror
from plinius.nn import Network, save_weights
from plinius.nn.mirrored import network_from_opened


def provision(
    enclave: Enclave, key: bytes, verifier: QuoteVerifier | str, model_fp: bytes
) -> bytes:
    """Attest ``enclave`` (expected measurement computed here) and hand it ``key``.

    ``verifier``: the platform's :meth:`~plinius.enclave.platform.Platform.owner_verifier`
    (or a simulated platform's pinned quoting key, PEM)."""
    check = pinned_key_verifier(verifier) if isinstance(verifier, str) else verifier
    expected = measurement(model_fp)
    quote_bytes, enclave_public = enclave.ecall_attest()
    check(quote_bytes, expected, enclave_public)
    mine = EphemeralKey()
    chan = mine.channel_key(enclave_public, quote_bytes + mine.public + enclave_public)
    return enclave.ecall_provision(mine.public, wrap(chan, key, PROVISION_AAD + expected))


def encrypt_data(
    key: bytes, out: str | os.PathLike[str], spec: str | None = None, seed: int = 0
) -> DatasetInfo:
    """Seal a plaintext dataset (IDX directory, ``embedded``...) sample by sample into ``out``."""
    ds = load_dataset(spec, seed=seed)
    return encrypt_dataset(
        out,
        make_engine(key),
        ds.name,
        {"train": (ds.x_train, ds.y_train), "test": (ds.x_test, ds.y_test)},
        ds.shape,
        ds.classes,
    )


def default_dataset(key: bytes, state_dir: Path, seed: int = 0) -> tuple[Path, bool]:
    """The embedded MNIST subset sealed under ``key`` (made on first use); (path, made now)."""
    engine = make_engine(key)
    d = private_dir(state_dir / "datasets", "data set cache directory")
    path = d / f"embedded-seed{seed}-{engine.key_id.hex()}.pld"
    if path.exists():
        try:
            read_info(path, engine)
            return path, False
        except PliniusError:
            path.unlink()  # a damaged cache of our own making: rebuild it
    encrypt_data(key, path, None, seed)
    return path, True


def _owner_store(
    backend: Backend, engine: Engine, platform: Platform
) -> tuple[MirrorStore, FreshnessGuard]:
    """The mirror in ``backend`` (any model) and its slot's read-only freshness check."""
    store = MirrorStore(backend, engine, None)
    return store, mirror_guard(MirrorCounters(platform, create=False), store, settle=False)


def verify_mirror(backend: Backend, engine: Engine, platform: Platform) -> MirrorInfo:
    """Authenticate every buffer of the stored mirror and check it is the one last committed.

    One read of the blob: header, manifest and every record's tag come from it."""
    return open_fresh(*_owner_store(backend, engine, platform)).verify()


def open_mirror(backend: Backend, engine: Engine, platform: Platform) -> tuple[Network, int, str]:
    """Decrypt the mirror into a fresh network outside any enclave (the owner holds the key).

    One read of the blob; decrypting every record authenticates it, so this verifies too."""
    net, info = network_from_opened(open_fresh(*_owner_store(backend, engine, platform)))
    return net, info.iteration, str(info.meta["model"])


def open_owned(backend: Backend, engine: Engine, platform: Platform) -> OpenedMirror:
    """The stored mirror (any kind) read once, header and manifest authenticated, checked fresh."""
    return open_fresh(*_owner_store(backend, engine, platform))


#: ``meta["net"]["model_kind"]`` of a mirror written by ``plinius.torch.TorchMirror``
TORCH_KIND = "torch"
TORCH_HINT = "pip install 'plinius[torch]'"


def mirror_kind(opened: OpenedMirror | MirrorInfo) -> str:
    """``"torch"`` or ``"darknet"``: which way out the mirror takes."""
    info = opened.info if isinstance(opened, OpenedMirror) else opened
    net = info.meta.get("net")
    return (
        TORCH_KIND if isinstance(net, dict) and net.get("model_kind") == TORCH_KIND else "darknet"
    )


def torch_mirror_hint(info: MirrorInfo) -> str:
    """One line for a command that runs Darknet models only, given a PyTorch mirror: what the
    mirror is and the ways out that work."""
    return (
        f"this is a PyTorch mirror (TorchMirror) of {info.meta.get('model')} at iteration "
        f"{info.iteration}, not a Darknet model: load it with "
        "plinius.torch.TorchMirror(model, optimizer, backend=..., key_file=...).restore() "
        "or export it with plinius export --safetensors FILE"
    )


def export_weights(opened: OpenedMirror, out: str | os.PathLike[str]) -> tuple[int, str]:
    """Write a Darknet mirror as a new ``.weights`` file (0600); (iteration, model label).

    Decrypting every record authenticates it, so this verifies too. Like the ``safetensors``
    export, it never replaces anything at ``out`` (a file, a symlink): a ``ConfigError``. The
    file is written whole in a private scratch directory beside ``out``, then linked in: a
    kill leaves no file or the whole one at ``out``; the scratch directory a kill leaves (the
    plaintext weights in it) is removed by the next export to that name."""
    net, info = network_from_opened(opened)
    target = Path(check_path(out, "output"))
    with scratch_beside(target) as scratch:
        staged = scratch / "weights"
        save_weights(net, staged)
        _link_new(staged, target)
    return info.iteration, str(info.meta["model"])


def _link_new(staged: Path, target: Path) -> None:
    """Give the complete file ``staged`` the name ``target`` only if nothing has that name."""
    try:
        link_new(staged, target, mode=0o600)
    except PliniusError:
        raise  # (NotFoundError is an OSError too)
    except FileExistsError:
        raise ConfigError(
            f"{target} exists: plinius export never overwrites, give a new path"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc.strerror}") from None
