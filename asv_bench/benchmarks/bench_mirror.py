"""Save and restore of encrypted mirrors: backend × model size × crypto engine (Fig. 7).

The one save/restore series of the asv suite (romulus included): timing benchmarks with asv's
own samples and statistics. Resident memory is not benchmarked here: on romulus it would be the
pool mapping, not what a save allocates (the contract suite bounds allocations instead), and the
save-time breakdown (the paper's Table I) is in ``plinius bench``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from plinius.backends import open_backend
from plinius.bench.saverestore import bench_model, fingerprint_for
from plinius.crypto import available_engines, make_engine
from plinius.defaults import all_backend_names, scratch_specs
from plinius.lab.profiles import profile
from plinius.mirror import MirrorStore

# every backend once (a second name of the same backend, such as rediss, is left out); redis runs
# on a private loopback server of its own (``redis-server`` must be installed)
BACKENDS = [n for n in all_backend_names() if profile(n).extra]
ENGINES = available_engines()
# zoo models size-N, saved as training mirrors them (weights + momentum, about 2N MiB), as in
# ``plinius bench``: both ends and the middle of the paper's Fig. 7
SIZES_MB = [10, 56, 100]


class SaveRestore:
    params = (BACKENDS, SIZES_MB, ENGINES)
    param_names = ["backend", "model_mb", "engine"]
    timeout = 600
    number = 1
    repeat = (5, 10, 30.0)

    def setup(self, backend: str, model_mb: int, engine: str) -> None:
        self._ctx = scratch_specs([backend])
        spec = self._ctx.__enter__()[backend]
        self.records = bench_model(model_mb).records
        self.dests = {(r.layer, r.name): np.empty_like(r.array) for r in self.records}
        self.backend = open_backend(spec)
        self.store = MirrorStore(
            self.backend, make_engine(bytes(16), engine), fingerprint_for(self.records)
        )
        self.version = 1
        self.store.save(self.records, version=self.version)  # warm: allocations, page cache
        self.store.load(into=self.dests)

    def teardown(self, *args: Any) -> None:
        self.backend.close()
        self._ctx.__exit__(None, None, None)

    def time_save(self, *args: Any) -> None:
        self.version += 1
        self.store.save(self.records, version=self.version)

    def time_restore(self, *args: Any) -> None:
        self.store.load(into=self.dests)
