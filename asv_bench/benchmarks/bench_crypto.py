"""AES-GCM engines: sealing into preallocated memory, and the raw library call beside it.

``time_seal`` is what a mirror save pays per buffer; ``time_raw`` is the library's own
encrypt of the same bytes into the same preallocated memory (the ceiling), so their ratio is
the cost of plinius' framing (IV, tag, associated data). Both are timing benchmarks with
asv's own samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from plinius.core.crypto import OVERHEAD, available_engines, make_engine
from plinius.core.memory import aligned_empty
from plinius.lab.bench.engine import _raw_calls

ENGINES = available_engines()


class AesGcm:
    params = ([1, 16, 64], ENGINES)
    param_names = ["mib", "engine"]
    timeout = 300
    number = 1
    repeat = (5, 10, 20.0)

    def setup(self, mib: int, engine: str) -> None:
        n = mib << 20
        self.eng = make_engine(bytes(range(16)), engine)
        self.src = aligned_empty(n)
        self.src[:] = np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8)
        self.out = aligned_empty(n + OVERHEAD)
        self.back = aligned_empty(n)
        self.raw_enc, _ = _raw_calls(engine, bytes(range(16)), b"asv", self.src, self.out)
        self.eng.encrypt_into(b"asv", self.src, self.out.data)  # after: the raw call wrote here

    def time_seal(self, *args: Any) -> None:
        self.eng.encrypt_into(b"asv", self.src, self.out.data)

    def time_open(self, *args: Any) -> None:
        self.eng.decrypt_into(b"asv", self.out.data, self.back.data, "asv buffer")

    def time_raw(self, *args: Any) -> None:
        self.raw_enc()
