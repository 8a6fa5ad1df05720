"""Raw AES-GCM throughput of each engine versus plinius sealing into preallocated memory.

The issue's bar: sealing a 64 MiB buffer through :meth:`Engine.encrypt_into` reaches >= 90 % of the
library's own one-shot call on the same bytes, i.e. the wrapper adds no copies.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np

from plinius.core.crypto import OVERHEAD, TAG_BYTES, associated_data, available_engines, make_engine
from plinius.core.memory import aligned_empty

MIB = 1 << 20
IV = OVERHEAD - TAG_BYTES  # raw calls write where encrypt_into does: just after the IV


@dataclass
class EngineFigures:
    engine: str
    mib: int
    raw_encrypt_mbps: float
    seal_mbps: float
    raw_decrypt_mbps: float
    open_mbps: float

    @property
    def seal_vs_raw(self) -> float:
        return self.seal_mbps / self.raw_encrypt_mbps

    @property
    def open_vs_raw(self) -> float:
        return self.open_mbps / self.raw_decrypt_mbps

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seal_vs_raw": self.seal_vs_raw, "open_vs_raw": self.open_vs_raw}


def _best(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)  # the least disturbed run: both sides are measured the same way


def _raw_calls(
    name: str, key: bytes, aad: bytes, src: np.ndarray, out: np.ndarray
) -> tuple[Callable[[], object], Callable[[], object]]:
    """The library's own one-shot encrypt and decrypt into ``out``: the ceiling for plinius."""
    n = src.nbytes
    iv = bytes(12)
    if name == "openssl":  # the C one-shot call itself, on one thread, no IV drawn
        from plinius.core.crypto_native import OpenSSLEngine

        native = OpenSSLEngine(key, threads=1)
        native_ct = out[IV : IV + n + TAG_BYTES].data
        native_back = aligned_empty(n).data

        def native_enc() -> None:
            native._encrypt(iv, aad, src.data, native_ct)

        def native_dec() -> bool:
            return native._decrypt(iv, aad, native_ct, native_back)

        native_enc()
        return native_enc, native_dec
    if name == "cryptography":
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        aead = AESGCM(key)
        ct = out[IV : IV + n + TAG_BYTES].data
        back = aligned_empty(n).data

        def enc() -> object:
            return aead.encrypt_into(iv, src.data, aad, ct)

        enc()

        def dec() -> object:
            return aead.decrypt_into(iv, ct, aad, back)

        return enc, dec
    from Crypto.Cipher import AES

    ctv = out[IV : IV + n].data
    back2 = aligned_empty(n).data

    def enc2() -> bytes:
        c = AES.new(key, AES.MODE_GCM, nonce=iv)
        c.update(aad)
        c.encrypt(src.data, output=ctv)
        return c.digest()

    tag = enc2()

    def dec2() -> None:
        c = AES.new(key, AES.MODE_GCM, nonce=iv)
        c.update(aad)
        c.decrypt(ctv, output=back2)
        c.verify(tag)

    return enc2, dec2


def measure_engines(mib: int = 64, repeats: int = 5) -> list[EngineFigures]:
    """Raw versus plinius throughput for every installed engine on one ``mib`` MiB buffer."""
    key = bytes(range(16))
    aad = associated_data(bytes(32), 0, "weights", 1)
    src = aligned_empty(mib * MIB)
    src[:] = np.random.default_rng(0).integers(0, 256, src.size, dtype=np.uint8)
    out = aligned_empty(mib * MIB + OVERHEAD)
    back = aligned_empty(mib * MIB)
    figures = []
    for name in available_engines():
        engine = make_engine(key, name)
        raw_enc, raw_dec = _raw_calls(name, key, aad, src, out)
        t_raw_enc = _best(raw_enc, repeats)
        t_raw_dec = _best(raw_dec, repeats)
        t_seal = _best(partial(engine.encrypt_into, aad, src, out.data), repeats)
        t_open = _best(partial(engine.decrypt_into, aad, out, back, "bench"), repeats)
        figures.append(
            EngineFigures(
                engine=name,
                mib=mib,
                raw_encrypt_mbps=mib / t_raw_enc,
                seal_mbps=mib / t_seal,
                raw_decrypt_mbps=mib / t_raw_dec,
                open_mbps=mib / t_open,
            )
        )
    return figures
