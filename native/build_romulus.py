"""cffi out-of-line API-mode build of the Romulus engine as ``plinius._romulus``.

Used by setup.py (``cffi_modules=["native/build_romulus.py:ffibuilder"]``); for a quick in-place
rebuild run ``python setup.py build_ext --inplace`` from the repository root.

No ``-march=native``: the flush instruction is picked at run time by cpuid, so one build runs on
every x86-64. cffi releases the GIL around every call into the engine. The crash-simulation hooks
are compiled in and cost one predictable branch per flush/fence until a test arms them.
"""

from __future__ import annotations

import os
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

CDEF = """
#define ROM_VERSION ...
#define ROM_LINE ...
#define ROM_MIN_POOL ...
#define ROM_MAX_POOL ...
#define ROM_CREATE_NEVER ...
#define ROM_CREATE_AUTO ...
#define ROM_CREATE_FORCE ...
#define ROM_ROOT_NAME_MAX ...
#define ROM_MAX_ROOTS ...
#define ROM_CRASH_EXIT ...

#define ROM_MODE_AUTO ...
#define ROM_MODE_PMEM ...
#define ROM_MODE_MSYNC ...
#define ROM_MODE_NONE ...

#define ROM_FLUSH_AUTO ...
#define ROM_FLUSH_CLWB ...
#define ROM_FLUSH_CLFLUSHOPT ...
#define ROM_FLUSH_CLFLUSH ...
#define ROM_FLUSH_NONE ...

#define ROM_IDLE ...
#define ROM_MUTATING ...
#define ROM_COPYING ...

#define ROM_OPENED ...
#define ROM_CREATED ...
#define ROM_RECREATED ...
#define ROM_ROLLED_BACK ...
#define ROM_ROLLED_FWD ...

#define ROM_OK ...
#define ROM_E_IO ...
#define ROM_E_LOCKED ...
#define ROM_E_BADMAGIC ...
#define ROM_E_TRUNCATED ...
#define ROM_E_VERSION ...
#define ROM_E_SIZE ...
#define ROM_E_FULL ...
#define ROM_E_NOTXN ...
#define ROM_E_INTXN ...
#define ROM_E_RANGE ...
#define ROM_E_BADOFF ...
#define ROM_E_ROOTS ...
#define ROM_E_FLUSH ...
#define ROM_E_CORRUPT ...
#define ROM_E_INVAL ...
#define ROM_E_CLOSED ...
#define ROM_E_NOSPACE ...
#define ROM_E_NOENT ...

typedef struct rom_pool rom_pool;

typedef struct rom_stats {
    uint64_t pool_size;
    uint64_t region_size;
    uint64_t main_off;
    uint64_t back_off;
    uint64_t meta_size;
    uint64_t used;
    uint64_t top;
    uint64_t free_bytes;
    uint64_t alloc_bytes;
    uint64_t nallocs;
    uint64_t commits;
    uint64_t aborts;
    uint64_t fences;
    uint64_t flushed_lines;
    uint64_t last_log_lines;
    uint64_t last_copy_bytes;
    uint64_t last_fences;
    uint64_t full_copies;
    int32_t state;
    int32_t mode;
    int32_t flush;
    int32_t real_pm;
    int32_t opened_as;
    int32_t in_txn;
    int32_t dev_on;
    uint64_t dev_write_bytes;
    uint64_t dev_write_wait_ns;
    uint64_t dev_read_bytes;
    uint64_t dev_read_wait_ns;
} rom_stats;

typedef struct rom_device {
    double write_bps;
    double read_bps;
    uint64_t fence_ns;
    uint64_t read_ns;
} rom_device;

int rom_cpu_flush(void);
int rom_cpu_has(int flush);
const char *rom_flush_name(int flush);
const char *rom_mode_name(int mode);
const char *rom_last_error(void);

int rom_open(const char *path, size_t path_len, uint64_t size, int create, int mode, int flush,
             rom_pool **out);
int rom_open_dev(const char *path, size_t path_len, uint64_t size, int create, int mode,
                 int flush, const rom_device *dev, rom_pool **out);
void rom_model_read(rom_pool *p, uint64_t n);
int rom_close(rom_pool *p);
void rom_release(rom_pool *p);
uint8_t *rom_base(rom_pool *p);
void rom_get_stats(rom_pool *p, rom_stats *out);

int rom_begin(rom_pool *p);
int rom_commit(rom_pool *p);
int rom_abort(rom_pool *p);
int rom_log(rom_pool *p, uint64_t off, uint64_t len);
int rom_store_u64(rom_pool *p, uint64_t off, uint64_t value);

int rom_alloc(rom_pool *p, uint64_t size, uint64_t *off);
int rom_free(rom_pool *p, uint64_t off);
int rom_capacity(rom_pool *p, uint64_t off, uint64_t *cap);
int rom_block_cap(rom_pool *p, uint64_t off, int committed, uint64_t *cap);

int rom_root_get(rom_pool *p, const char *name, int committed, uint64_t *off,
                 uint64_t *size);
int rom_root_set(rom_pool *p, const char *name, uint64_t off, uint64_t size);
int rom_root_del(rom_pool *p, const char *name);
int rom_root_at(rom_pool *p, int index, int committed, char *name, uint64_t *off,
                uint64_t *size);

int rom_bench_swaps(rom_pool *p, uint64_t arr_off, uint64_t nelems, uint64_t swaps_per_txn,
                    uint64_t ntxn, uint64_t seed, double *elapsed_s);

int rom_sim_arm(rom_pool *p, uint64_t crash_at, int kind, uint64_t seed, uint32_t skip_fences);
void rom_sim_disarm(void);
uint64_t rom_sim_events(void);
"""


def _rel(path: Path) -> str:
    """setuptools wants source paths relative to the directory it runs in."""
    return os.path.relpath(path, Path.cwd())


#: ``PLINIUS_SANITIZE=1`` builds the engine with AddressSanitizer + UndefinedBehaviorSanitizer
#: (tox env ``sanitize``): any out-of-bounds access or UB aborts the process instead of passing
#: silently. The interpreter is not instrumented, so libasan must be LD_PRELOADed at run time.
SANITIZE = os.environ.get("PLINIUS_SANITIZE", "") not in ("", "0")
SANITIZE_FLAGS = [
    "-fsanitize=address,undefined",
    "-fno-omit-frame-pointer",
    "-fno-sanitize-recover=all",
    "-g",
]

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "plinius._romulus",
    '#include "romulus.h"',
    sources=[_rel(HERE / "romulus.c")],
    include_dirs=[_rel(HERE)],
    depends=[_rel(HERE / "romulus.h")],
    extra_compile_args=[
        "-O2",
        "-std=gnu11",
        "-Wall",
        "-Wextra",
        "-fno-strict-aliasing",
        *(SANITIZE_FLAGS if SANITIZE else []),
    ],
    extra_link_args=SANITIZE_FLAGS[:1] if SANITIZE else [],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
