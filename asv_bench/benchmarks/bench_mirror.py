"""Save and restore of encrypted mirrors: backend × model size × crypto engine (Fig. 7, Table I)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from plinius.backends import open_backend
from plinius.bench.saverestore import PAPER_SIZES_MB, fingerprint_for, synthetic_model
from plinius.crypto import available_engines, make_engine
from plinius.defaults import all_backend_names, scratch_specs
from plinius.mirror import MirrorStore

BACKENDS = all_backend_names()
ENGINES = available_engines()


class SaveRestore:
    params = (BACKENDS, list(PAPER_SIZES_MB), ENGINES)
    param_names = ["backend", "model_mb", "engine"]
    timeout = 600
    number = 1
    repeat = (3, 5, 60.0)

    def setup(self, backend: str, model_mb: int, engine: str) -> None:
        self._ctx = scratch_specs([backend])
        spec = self._ctx.__enter__()[backend]
        self.records = synthetic_model(model_mb)
        self.nbytes = sum(r.array.nbytes for r in self.records)
        self.dests = {(r.layer, r.name): np.empty_like(r.array) for r in self.records}
        self.backend = open_backend(spec)
        self.store = MirrorStore(
            self.backend, make_engine(bytes(16), engine), fingerprint_for(self.records)
        )
        self.version = 1
        self.store.save(self.records, version=self.version)
        self.store.load(into=self.dests)

    def teardown(self, *args: Any) -> None:
        self.backend.close()
        self._ctx.__exit__(None, None, None)

    def _save(self) -> Any:
        self.version += 1
        return self.store.save(self.records, version=self.version)

    def time_save(self, *args: Any) -> None:
        self._save()

    def time_restore(self, *args: Any) -> None:
        self.store.load(into=self.dests)

    def peakmem_save(self, *args: Any) -> None:
        self._save()

    def track_save_mbps(self, *args: Any) -> float:
        return self.nbytes / 2**20 / statistics.median(self._save().total_s for _ in range(3))

    track_save_mbps.unit = "MB/s"  # type: ignore[attr-defined]

    def track_restore_mbps(self, *args: Any) -> float:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            self.store.load(into=self.dests)
            times.append(time.perf_counter() - t0)
        return self.nbytes / 2**20 / statistics.median(times)

    track_restore_mbps.unit = "MB/s"  # type: ignore[attr-defined]


class SaveBreakdown:
    """Share of save time per phase (the paper's Table I), in percent."""

    params = (BACKENDS, [10, 56, 100])
    param_names = ["backend", "model_mb"]
    timeout = 600

    def setup(self, backend: str, model_mb: int) -> None:
        self._ctx = scratch_specs([backend])
        spec = self._ctx.__enter__()[backend]
        records = synthetic_model(model_mb)
        self.backend = open_backend(spec)
        store = MirrorStore(self.backend, make_engine(bytes(16)), fingerprint_for(records))
        stats = [store.save(records, version=v).as_dict() for v in range(1, 5)][1:]
        self.shares = {
            k: 100 * statistics.median(s[k] / s["total_s"] for s in stats)
            for k in ("encrypt_s", "write_s", "flush_s", "fsync_s")
        }

    def teardown(self, *args: Any) -> None:
        self.backend.close()
        self._ctx.__exit__(None, None, None)

    def track_encrypt_share(self, *args: Any) -> float:
        return self.shares["encrypt_s"]

    def track_write_share(self, *args: Any) -> float:
        return self.shares["write_s"]

    def track_flush_share(self, *args: Any) -> float:
        return self.shares["flush_s"]

    def track_fsync_share(self, *args: Any) -> float:
        return self.shares["fsync_s"]

    for _f in (track_encrypt_share, track_write_share, track_flush_share, track_fsync_share):
        _f.unit = "%"  # type: ignore[attr-defined]
