"""The host side of a run: one :class:`Session` assembles platform, enclave, the owner's key
step (:mod:`plinius.session.owner`), sized backend, freshness, replicas, restore and close
(:mod:`plinius.session.host`); ``plinius train``, ``TorchMirror`` and the bench use it."""

from plinius.session.host import (
    REPLICA_DRAIN_S,
    BackendLike,
    Replication,
    Resumed,
    Say,
    Session,
    say_stderr,
    sizing,
)

__all__ = [
    "REPLICA_DRAIN_S",
    "BackendLike",
    "Replication",
    "Resumed",
    "Say",
    "Session",
    "say_stderr",
    "sizing",
]
