"""Persistent-memory device models: what emulated PM would cost on (modelled) Optane DIMMs.

Emulated PM (a pool file on tmpfs) runs at DRAM speed, which real PM never did. A device model
makes the native engine wait, busy on the monotonic clock, as the modelled media would
(``native/romulus.h``, ``rom_device``):

* WRITES: every byte the protocol makes persistent (each cache line flushed, each byte streamed
  to the twin copy) is charged to the media. Each fence (the sfence that drains the write-pending
  queue) waits until ``bytes charged since the last fence / write bandwidth`` has elapsed since
  that last fence, then ``fence_ns`` more. Work between fences (encrypting into the pool)
  overlaps with the media time, as stores evicted to real PM would.
* READS: :meth:`.pool.Pool.model_read` waits ``read_latency_ns + bytes / read
  bandwidth``; the ``romulus`` backend calls it when it hands out a blob for a restore
  (``read``), so a restore costs at least a sequential read of the blob from the media.

NOT modelled: CPU cache misses on individual loads and stores (the pool stays DRAM to the CPU,
so random sample reads through ``map`` and every load during decryption run at DRAM speed);
the 256-byte internal write granularity of Optane (a 64-byte flush is charged 64 bytes); the
write-pending-queue depth and the asymmetric bandwidth under mixed read/write load; NUMA;
contention between threads or pools (the model is per pool). The waits are floors: a model can
only make an operation slower than the machine made it, never faster.

Parameters (per DIMM; Izraelevitz et al., 2019, "Basic Performance Measurements of the Intel
Optane DC Persistent Memory Module", arXiv:1903.05714): about 6.6 GB/s read and 2.3 GB/s write
bandwidth, about 305 ns random load latency, and store + clwb + sfence to the DIMM's
persistence domain of about 90 ns, used as the per-fence cost. Interleaving over n DIMMs
multiplies both bandwidths by n (the paper measured close to linear scaling up to six); the
latencies do not change. GB is 10**9 bytes.

These numbers are a MODEL, not a measurement of PM hardware: every report that uses one says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from plinius.core.errors import ConfigError

#: read and write bandwidth of one Optane DC PMM (bytes/s) and its latencies (ns)
DIMM_READ_BPS = 6.6e9
DIMM_WRITE_BPS = 2.3e9
READ_LATENCY_NS = 305
FENCE_NS = 90
SOURCE = (
    "Izraelevitz et al., 2019, Basic Performance Measurements of the Intel Optane DC "
    "Persistent Memory Module (arXiv:1903.05714): per DIMM ~6.6 GB/s read, ~2.3 GB/s write, "
    "~305 ns random load latency, ~90 ns store+clwb+sfence; bandwidth x DIMM count"
)
NOTE = "a model, not a measurement of PM hardware"
MODELLED = (
    "write bandwidth: bytes flushed or streamed between two fences wait for bytes/write_gbps; "
    "fence_ns per fence; read bandwidth + read latency once per blob handed out for a restore"
)
NOT_MODELLED = (
    "per-load/store cache-miss latency (the pool is DRAM to the CPU: random sample reads via "
    "map() and loads while decrypting run at DRAM speed), 256-byte media granularity, "
    "write-pending-queue depth, mixed read/write interference, NUMA, cross-pool contention"
)
ENV = "PLINIUS_PM_DEVICE"
DIMM_COUNTS = (1, 2, 4, 6)


@dataclass(frozen=True)
class DeviceModel:
    """A modelled PM device: interleaved Optane DC DIMMs."""

    name: str
    dimms: int
    write_gbps: float
    read_gbps: float
    fence_ns: int
    read_latency_ns: int

    def __post_init__(self) -> None:
        # the engine takes write_bps == 0 as "no model": a zero or NaN here must not turn a
        # requested model silently off
        for field in ("write_gbps", "read_gbps"):
            v = getattr(self, field)
            if not (isinstance(v, int | float) and 1e-6 <= v <= 1e6):
                raise ConfigError(
                    f"device model {self.name!r}: {field}={v!r} is not in [1e-6, 1e6]"
                )
        for field in ("fence_ns", "read_latency_ns"):
            v = getattr(self, field)
            if not (isinstance(v, int) and 0 <= v < 10**9):
                raise ConfigError(
                    f"device model {self.name!r}: {field}={v!r} must be an int in [0, 1e9) ns"
                )
        if not (isinstance(self.dimms, int) and self.dimms >= 1):
            raise ConfigError(f"device model {self.name!r}: dimms={self.dimms!r} must be >= 1")

    @property
    def write_bps(self) -> float:
        return self.write_gbps * 1e9

    @property
    def read_bps(self) -> float:
        return self.read_gbps * 1e9

    def write_floor_s(self, nbytes: int) -> float:
        """The least time the model lets ``nbytes`` reach the media (bandwidth only)."""
        return nbytes / self.write_bps

    def read_floor_s(self, nbytes: int) -> float:
        return self.read_latency_ns * 1e-9 + nbytes / self.read_bps

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dimms": self.dimms,
            "write_gbps": round(self.write_gbps, 3),
            "read_gbps": round(self.read_gbps, 3),
            "fence_ns": self.fence_ns,
            "read_latency_ns": self.read_latency_ns,
            "modelled": MODELLED,
            "not_modelled": NOT_MODELLED,
            "source": SOURCE,
            "note": NOTE,
        }


def optane(dimms: int) -> DeviceModel:
    """``dimms`` interleaved Optane DC PMMs: bandwidth scales with the count, latency does not."""
    return DeviceModel(
        name=f"optane-{dimms}dimm",
        dimms=dimms,
        write_gbps=DIMM_WRITE_BPS * dimms / 1e9,
        read_gbps=DIMM_READ_BPS * dimms / 1e9,
        fence_ns=FENCE_NS,
        read_latency_ns=READ_LATENCY_NS,
    )


DEVICES: dict[str, DeviceModel | None] = {
    "none": None,
    **{f"optane-{n}dimm": optane(n) for n in DIMM_COUNTS},
}


def device_model(name: str, what: str = "device") -> DeviceModel | None:
    """The model called ``name`` (``none``/empty: None, DRAM speed); ConfigError otherwise."""
    if name in ("", "none"):
        return None
    model = DEVICES.get(name)
    if model is None:
        raise ConfigError(
            f"{what}={name!r} is not a known PM device model; use one of {', '.join(DEVICES)}"
        )
    return model


def resolve_device(device: str | DeviceModel | None) -> DeviceModel | None:
    """An explicit model or name wins; else ``PLINIUS_PM_DEVICE``; else none (DRAM speed)."""
    if isinstance(device, DeviceModel):
        return device
    if device is not None:
        return device_model(device)
    return device_model(os.environ.get(ENV, ""), ENV)
