"""AES-GCM engines: plinius' seal/open into preallocated memory versus the raw library call."""

from __future__ import annotations

from typing import Any

from plinius.bench.engine import EngineFigures, measure_engines


class EngineThroughput:
    params = [1, 16, 64]
    param_names = ["mib"]
    timeout = 300

    def setup(self, mib: int) -> None:
        self.figures: dict[str, EngineFigures] = {
            f.engine: f for f in measure_engines(mib=mib, repeats=5)
        }

    def track_seal_vs_raw_cryptography(self, *args: Any) -> float:
        return 100 * self.figures["cryptography"].seal_vs_raw

    def track_seal_vs_raw_pycryptodome(self, *args: Any) -> float:
        return 100 * self.figures["pycryptodome"].seal_vs_raw

    def track_seal_mbps_cryptography(self, *args: Any) -> float:
        return self.figures["cryptography"].seal_mbps

    def track_seal_mbps_pycryptodome(self, *args: Any) -> float:
        return self.figures["pycryptodome"].seal_mbps

    track_seal_vs_raw_cryptography.unit = "%"  # type: ignore[attr-defined]
    track_seal_vs_raw_pycryptodome.unit = "%"  # type: ignore[attr-defined]
    track_seal_mbps_cryptography.unit = "MB/s"  # type: ignore[attr-defined]
    track_seal_mbps_pycryptodome.unit = "MB/s"  # type: ignore[attr-defined]
