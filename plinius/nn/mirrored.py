"""A Darknet network rebuilt from its mirror: the sealed configuration, then every record.

The enclave builds models only through the protocol; this is the network's own builder, which
``plinius infer`` hands it and the owner's export uses.
"""

from __future__ import annotations

from plinius.core.errors import ModelMismatchError
from plinius.enclave.trusted import buffer_map
from plinius.format.mirror import MirrorInfo, OpenedMirror
from plinius.nn.cfg import parse_cfg_text
from plinius.nn.network import Network


def network_from_opened(opened: OpenedMirror) -> tuple[Network, MirrorInfo]:
    """A new network built from a mirror read once and checked fresh (header, manifest and
    freshness authenticated before the configuration is parsed), restored from its records."""
    info = opened.info
    meta = info.meta
    net = Network(parse_cfg_text(meta["cfg"], f"mirror:{meta['model']}"), batch=meta["batch"])
    if net.fingerprint() != info.fingerprint:
        raise ModelMismatchError("the mirror's sealed configuration does not match its records")
    got = opened.load(buffer_map(net))
    net.load_training_state(got.info.meta["net"])
    return net, got.info
