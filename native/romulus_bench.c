/*
 * romulus_bench.c -- the paper's SPS microbenchmark with the loop in C (romulus_bench.h): a
 * benchmark entry point, not part of the engine's API. It drives the public transaction API
 * and the engine's inline log, exactly as a store through rom_log would.
 */
#include "romulus_bench.h"
#include "romulus_internal.h"

#include <time.h>

/* ---------------------------------------------------------------------------------------------
 * Benchmark: the paper's SPS microbenchmark with the loop in C
 * ------------------------------------------------------------------------------------------- */

__extension__ typedef unsigned __int128 u128;

int rom_bench_swaps(rom_pool *p, uint64_t arr_off, uint64_t nelems, uint64_t swaps_per_txn,
                    uint64_t ntxn, uint64_t seed, double *elapsed_s) {
    if (nelems == 0 || arr_off % 8 || arr_off > p->region || nelems > (p->region - arr_off) / 8)
        return fail(ROM_E_RANGE, "swap array [%llu, +%llu elements) is outside main",
                    (unsigned long long)arr_off, (unsigned long long)nelems);
    uint64_t *a = (uint64_t *)(p->main + arr_off);
    uint64_t s = seed * 0x9E3779B97F4A7C15ULL + 1;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (uint64_t t = 0; t < ntxn; t++) {
        int rc = rom_begin(p);
        if (rc)
            return rc;
        for (uint64_t k = 0; k < swaps_per_txn; k++) {
            uint64_t i = (uint64_t)(((u128)xorshift(&s) * nelems) >> 64); /* no division */
            uint64_t j = (uint64_t)(((u128)xorshift(&s) * nelems) >> 64);
            uint64_t x = a[i], y = a[j];
            log_range(p, arr_off + i * 8, 8);
            a[i] = y;
            log_range(p, arr_off + j * 8, 8);
            a[j] = x;
        }
        rc = rom_commit(p);
        if (rc)
            return rc;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    *elapsed_s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    return ROM_OK;
}
