"""``plinius export``: the owner's way out, the mirrored model as a Darknet ``.weights`` file
(``--weights``) or, for a PyTorch mirror (``plinius.torch``), a ``safetensors`` file."""

from __future__ import annotations

import argparse
import os
from typing import Any

from plinius.backends.registry import open_read_only
from plinius.cli.common import add_state_flags, check_backend, output_file
from plinius.core.crypto import make_engine, read_key_file
from plinius.core.errors import ConfigError
from plinius.enclave.platform import open_platform
from plinius.format.mirror import OpenedMirror
from plinius.session.owner import TORCH_HINT, TORCH_KIND, export_weights, mirror_kind, open_owned


def register(sub: Any) -> None:
    p = sub.add_parser(
        "export", help="decrypt the mirror (owner's key) into a .weights or .safetensors file"
    )
    p.add_argument("--backend", required=True, help="backend spec")
    p.add_argument("--key-file", required=True, help="the owner's key file")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument(
        "--weights",
        help="output Darknet .weights file (a Darknet mirror; mode 0600, never overwrites)",
    )
    out.add_argument(
        "--safetensors",
        help="output .safetensors file of the model tensors (a PyTorch mirror; mode 0600, "
        "never overwrites)",
    )
    add_state_flags(p)
    p.set_defaults(func=run)


def export_safetensors(opened: OpenedMirror, out: str | os.PathLike[str]) -> tuple[int, str]:
    """Write a PyTorch mirror's model tensors as a ``safetensors`` file (0600, never over an
    existing file); (iteration, model label). Needs the ``torch`` extra (imported here, at the
    top: the library below never imports torch for the owner's tools)."""
    try:
        from plinius.torch.export import write_safetensors
    except ImportError as exc:
        raise ConfigError(
            f"this mirror holds a PyTorch model; exporting it needs {exc.name}: {TORCH_HINT}"
        ) from None
    write_safetensors(opened, out)
    return opened.info.iteration, str(opened.info.meta.get("model"))


def run(args: argparse.Namespace) -> int:
    out = args.weights if args.weights is not None else args.safetensors
    what = "weights file (--weights)" if args.weights is not None else "output (--safetensors)"
    output_file(out, what)
    engine = make_engine(read_key_file(args.key_file))
    if os.path.lexists(out):  # either format: an earlier export (or a symlink) is kept as it is
        raise ConfigError(f"{what} {out} exists: export never overwrites, give a new path")
    with open_read_only(check_backend(args.backend)) as backend:
        platform = open_platform(args.platform, state_dir=args.state_dir, create=False)
        opened = open_owned(backend, engine, platform)  # one read serves the check and export
        torch_mirror = mirror_kind(opened) == TORCH_KIND
        if torch_mirror != (args.safetensors is not None):
            raise ConfigError(
                "this mirror holds a PyTorch model: export it with --safetensors FILE"
                if torch_mirror
                else "this mirror holds a Darknet model: export it with --weights FILE"
            )
        export = export_safetensors if torch_mirror else export_weights
        iteration, label = export(opened, out)
    kind = "safetensors" if torch_mirror else "Darknet .weights"
    print(f"wrote {out}: {label} at iteration {iteration} ({kind} format)")
    return 0
