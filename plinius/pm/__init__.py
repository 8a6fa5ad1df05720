"""Persistent memory: the native RomulusLog engine (``native/``) and its typed Python wrapper."""

from plinius.pm.device import DEVICES, DeviceModel, device_model
from plinius.pm.pool import (
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
    sim_disarm,
    sim_events,
)

__all__ = [
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
    "cpu_flush",
    "cpu_has",
    "device_model",
    "sim_disarm",
    "sim_events",
]
