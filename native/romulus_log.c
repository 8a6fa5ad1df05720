/*
 * romulus_log.c -- the volatile log of a transaction (romulus.h, TRANSACTIONS): a dirty-line
 * bitmap, so each line is logged once, and the list of line runs that commit flushes and copies
 * to back. Nothing of it is persistent. The per-store path (log_range, add_run) is inline in
 * romulus_internal.h; this file has the multi-line case and the reset at the end of a
 * transaction.
 */
#include "romulus_internal.h"

#include <string.h>

void log_lines(rom_pool *p, uint64_t first, uint64_t last) {
    uint64_t l = first;
    while (l <= last && !p->overflow) {
        uint64_t w = l >> 6;
        unsigned b = (unsigned)(l & 63);
        uint64_t nb = 64 - b;
        if (nb > last - l + 1)
            nb = last - l + 1;
        uint64_t mask = (nb == 64) ? ~0ULL : (((1ULL << nb) - 1) << b);
        uint64_t fresh = mask & ~p->bitmap[w];
        p->bitmap[w] |= mask;
        if (fresh == mask) {
            add_run(p, l, nb);
        } else {
            while (fresh) { /* runs of not-yet-logged lines inside this word */
                unsigned s = (unsigned)__builtin_ctzll(fresh);
                uint64_t x = fresh >> s;
                unsigned len = (~x == 0) ? 64 - s : (unsigned)__builtin_ctzll(~x);
                add_run(p, (w << 6) + s, len);
                uint64_t m = (len >= 64) ? ~0ULL : ((1ULL << len) - 1);
                fresh &= ~(m << s);
            }
        }
        l += nb;
    }
}

static void clear_bits(rom_pool *p, uint64_t first, uint64_t n) {
    uint64_t l = first, last = first + n - 1;
    while (l <= last) {
        uint64_t w = l >> 6;
        unsigned b = (unsigned)(l & 63);
        uint64_t nb = 64 - b;
        if (nb > last - l + 1)
            nb = last - l + 1;
        p->bitmap[w] &= (nb == 64) ? 0 : ~(((1ULL << nb) - 1) << b);
        l += nb;
    }
}

void log_reset(rom_pool *p) {
    if (p->overflow)
        memset(p->bitmap, 0, p->nwords * sizeof(uint64_t));
    else
        for (size_t i = 0; i < p->nruns; i++)
            clear_bits(p, p->runs[i].first, p->runs[i].n);
    p->nruns = 0;
    p->log_lines = 0;
    p->overflow = 0;
}
