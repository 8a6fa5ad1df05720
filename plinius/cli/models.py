"""``plinius models``: the model zoo (name, layers, parameters, size), or any models named."""

from __future__ import annotations

import argparse
from typing import Any

from plinius.cli.common import add_json_flag, print_json, print_table
from plinius.nn.zoo import PAPER_SIZES_MB, describe, list_models


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "models",
        help="list the model zoo (mnist, tiny, batch, size-N) or describe given models",
        description=(
            "List the zoo: the paper's MNIST model, a tiny test model, the batch-size model "
            "and the save/restore benchmark's size-N models. Name models (zoo names, size-N "
            "or .cfg paths) to describe just those."
        ),
    )
    p.add_argument("models", nargs="*", metavar="MODEL", help="zoo name, size-N or .cfg path")
    p.add_argument(
        "--layers", action="store_true", help="also list each model's layers (with MODEL)"
    )
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    infos = [describe(m) for m in args.models] if args.models else list_models(PAPER_SIZES_MB)
    rows: list[dict[str, Any]] = [i.as_dict() for i in infos]
    if args.layers and args.models:
        from plinius.nn.network import build_layers
        from plinius.nn.zoo import load_cfg

        for row, name in zip(rows, args.models, strict=True):
            _, layers = build_layers(load_cfg(name))
            row["layer_list"] = [
                {
                    "layer": layer.index,
                    "description": layer.describe(),
                    "output": "x".join(str(d) for d in layer.out_shape),
                    "parameters": layer.n_params(),
                }
                for layer in layers
            ]
    if args.json:
        print_json(rows)
        return 0
    print_table(
        rows,
        ["name", "layers", "conv_layers", "parameters", "mib", "batch", "description"],
        title="plinius model zoo (MiB = 2^20 bytes of float32 parameters)",
    )
    for row in rows:
        if "layer_list" in row:
            print_table(
                row["layer_list"],
                ["layer", "description", "output", "parameters"],
                title=f"{row['name']} (fingerprint {row['fingerprint'][:16]}…)",
            )
    return 0
