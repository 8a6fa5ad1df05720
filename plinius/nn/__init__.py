"""A Darknet-compatible neural-network engine in numpy: the model plinius trains and mirrors.

``load_model("mnist")`` builds the paper's model (or ``tiny``, ``batch``, ``size-N``, a ``.cfg``
path); :meth:`Network.train_step` runs one SGD step; :meth:`Network.param_buffers` and
:meth:`Network.optimizer_buffers` expose the arena views the mirror seals in place;
:func:`save_weights`/:func:`load_weights` speak Darknet's ``.weights`` format.
"""

from __future__ import annotations

from plinius.nn.cfg import CfgError, NetConfig, parse_cfg, parse_cfg_text
from plinius.nn.network import Network, build_layers
from plinius.nn.weights import load_weights, save_weights
from plinius.nn.zoo import describe, list_models, load_cfg, load_model

__all__ = [
    "CfgError",
    "NetConfig",
    "Network",
    "build_layers",
    "describe",
    "list_models",
    "load_cfg",
    "load_model",
    "load_weights",
    "parse_cfg",
    "parse_cfg_text",
    "save_weights",
]
