"""The ``romulus`` backend and everything it stands on: the native RomulusLog engine (``native/``,
bound by ``pool``), the PM device model (``device``) and the backend itself (``backend``)."""

from plinius.backends.romulus.backend import RomulusBackend, suggested_pool_size
from plinius.backends.romulus.device import DEVICES, DeviceModel, device_model
from plinius.backends.romulus.pool import (
    COMMITS,
    CRASH_EXIT,
    FLUSHES,
    MAX_POOL_SIZE,
    MAX_ROOTS,
    MIN_POOL_SIZE,
    MODES,
    ROOT_NAME_MAX,
    Pool,
    PoolStats,
    cpu_flush,
    cpu_has,
    sim_copier,
    sim_disarm,
    sim_events,
)

__all__ = [
    "COMMITS",
    "CRASH_EXIT",
    "DEVICES",
    "FLUSHES",
    "MAX_POOL_SIZE",
    "MAX_ROOTS",
    "MIN_POOL_SIZE",
    "MODES",
    "ROOT_NAME_MAX",
    "DeviceModel",
    "Pool",
    "PoolStats",
    "RomulusBackend",
    "cpu_flush",
    "cpu_has",
    "device_model",
    "sim_copier",
    "sim_disarm",
    "sim_events",
    "suggested_pool_size",
]
