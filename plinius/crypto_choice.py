"""What engine ``auto`` means on this machine: measured once per process, not assumed.

The native ``openssl`` engine seals on every core, but with the libcrypto it was built
against; ``cryptography`` seals on one core with the OpenSSL bundled in its wheel. Which wins
depends on both builds and the core count: on a 2-core VM whose system OpenSSL 3.0 lacks the
VAES code paths, one core of the wheel's OpenSSL outruns both cores of the system one. So the
first ``make_engine(key)`` of a process times the parallel engine against the fastest serial
one on the same batch and keeps the faster; ``$PLINIUS_CRYPTO_ENGINE`` names one instead.
"""

from __future__ import annotations

import os
import time
from typing import Any

from plinius.errors import ConfigError

ENV = "PLINIUS_CRYPTO_ENGINE"
#: the calibration batch: the mirror's segments, several of them so the pool has work
CALIBRATE_SEGMENTS = 4
CALIBRATE_SEGMENT = 2 << 20
ROUNDS = 3

#: how this process chose (``plinius bench`` records it in its provenance)
last_choice: dict[str, Any] = {}


def _seconds(engine: Any, jobs: list[Any]) -> float:
    t0 = time.perf_counter()
    engine.encrypt_many(jobs)
    return time.perf_counter() - t0


def calibrate(names: list[str]) -> dict[str, float]:
    """Seconds per calibration batch of each engine in ``names`` (best of interleaved rounds,
    after one warm-up each), sealing into page-aligned buffers allocated once."""
    from plinius.crypto import OVERHEAD, make_engine
    from plinius.memory import aligned_empty

    key = os.urandom(16)
    engines = {n: make_engine(key, n) for n in names}
    plain = aligned_empty(CALIBRATE_SEGMENTS * CALIBRATE_SEGMENT)
    plain[...] = 7
    out = aligned_empty(CALIBRATE_SEGMENTS * (CALIBRATE_SEGMENT + OVERHEAD))
    step = CALIBRATE_SEGMENT + OVERHEAD
    jobs = [
        (
            b"calibrate-%d" % i,
            plain[i * CALIBRATE_SEGMENT : (i + 1) * CALIBRATE_SEGMENT],
            out[i * step : (i + 1) * step].data,
        )
        for i in range(CALIBRATE_SEGMENTS)
    ]
    best = {n: float("inf") for n in names}
    for e in engines.values():
        e.encrypt_many(jobs)
    for _ in range(ROUNDS):
        for n, e in engines.items():
            best[n] = min(best[n], _seconds(e, jobs))
    return best


def choose(available: list[str]) -> str:
    """The engine ``auto`` stands for, given the installed ones (fastest-first order)."""
    forced = os.environ.get(ENV, "").strip()
    if forced and forced != "auto":
        if forced not in available:
            raise ConfigError(
                f"{ENV}={forced!r}: not an installed crypto engine "
                f"(installed: {', '.join(available)})"
            )
        last_choice.clear()
        last_choice.update(chosen=forced, how=f"${ENV}")
        return forced
    if last_choice.get("how") == "measured" and last_choice.get("from") == available:
        return str(last_choice["chosen"])
    parallel = [n for n in available if n == "openssl"]
    serial = [n for n in available if n != "openssl"][:1]
    if not parallel or not serial:
        chosen = available[0]
        last_choice.clear()
        last_choice.update(chosen=chosen, how="only candidate", **{"from": available})
        return chosen
    secs = calibrate([*parallel, *serial])
    chosen = min(secs, key=lambda n: secs[n])
    nbytes = CALIBRATE_SEGMENTS * CALIBRATE_SEGMENT
    last_choice.clear()
    last_choice.update(
        chosen=chosen,
        how="measured",
        gb_per_s={n: round(nbytes / s / 1e9, 2) for n, s in secs.items()},
        batch_bytes=nbytes,
        **{"from": available},
    )
    return chosen


__all__ = ["ENV", "calibrate", "choose", "last_choice"]
