/*
 * romulus_bench.h -- the benchmark loop of the Romulus engine: the paper's SPS microbenchmark
 * (random swaps in a persistent uint64 array) with the loop in C, so the figure is the engine's
 * and not the binding's. Not part of the engine's API (romulus.h): only the benchmarks use it,
 * through the same compiled module (plinius.backends.romulus.pool, "benchmark" section).
 */
#ifndef PLINIUS_ROMULUS_BENCH_H
#define PLINIUS_ROMULUS_BENCH_H

#include "romulus.h"

/* ntxn transactions of swaps_per_txn swaps each in main[arr_off, +8*nelems); *elapsed_s the
 * wall time of the whole loop */
int rom_bench_swaps(rom_pool *p, uint64_t arr_off, uint64_t nelems, uint64_t swaps_per_txn,
                    uint64_t ntxn, uint64_t seed, double *elapsed_s);

#endif /* PLINIUS_ROMULUS_BENCH_H */
