/*
 * romulus_txn.c -- the durable-transaction protocol (romulus.h, TRANSACTIONS AND THE FOUR
 * FENCES, RECOVERY): begin, commit (synchronous, or handed to the copier after FENCE 3), abort,
 * and the recovery at open that rolls an interrupted transaction back or forward. Only the
 * order of stores, flushes and fences lives here; how a line is flushed or copied persistently
 * is romulus_persist.c's, the volatile log romulus_log.c's, the copier thread romulus_copier.c's.
 * Comments here say why the code looks the way it does.
 */
#include "romulus_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PREFETCH_LINES 256 /* logs up to this many lines are prefetched before the copy */

int check_txn(rom_pool *p) {
    if (UNLIKELY(!p->in_txn || !pthread_equal(p->owner, pthread_self())))
        return fail(ROM_E_NOTXN, "pool %s: no write transaction open in this thread", p->path);
    return ROM_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Begin: FENCE 1
 * ------------------------------------------------------------------------------------------- */

int rom_begin(rom_pool *p) {
    if (p->closed)
        return fail(ROM_E_CLOSED, "pool %s is closed", p->path);
    int rc = pthread_mutex_lock(&p->lock);
    if (rc == EDEADLK)
        return fail(ROM_E_INTXN, "pool %s: a transaction is already open in this thread",
                    p->path);
    if (rc != 0)
        return fail(ROM_E_IO, "pool %s: cannot take the transaction lock: %s", p->path,
                    strerror(rc));
    /* back must be complete before MUTATING can make recovery copy it over main */
    bg_wait(p, 1);
    p->in_txn = 1;
    p->owner = pthread_self();
    p->txn_fences = 0;
    p->nahead = 0;
    p->log_limit = p->used / 4 / LINE;
    p->hdr->state = ROM_MUTATING;
    pm_flush(p, &p->hdr->state, 8);
    pm_fence(p); /* FENCE 1: MUTATING durable before any store to main */
    prefetch_w(&p->hdr->state); /* for the COPYING store */
    return ROM_OK;
}

/* ROM_OK when [off, off+len) lies inside main's region (overflow-safe), else ROM_E_RANGE. */
static int check_range(const rom_pool *p, uint64_t off, uint64_t len) {
    if (off > p->region || len > p->region - off)
        return fail(ROM_E_RANGE, "range [%llu, +%llu) is outside the %llu-byte main region",
                    (unsigned long long)off, (unsigned long long)len,
                    (unsigned long long)p->region);
    return ROM_OK;
}

/* Flush main's lines [first, first+n) but those flushed ahead (sorted, disjoint). */
static void flush_unless_ahead(rom_pool *p, uint64_t first, uint64_t n) {
    uint64_t end = first + n;
    for (size_t i = 0; i < p->nahead && first < end; i++) {
        uint64_t a = p->ahead[i].first, b = a + p->ahead[i].n;
        if (b <= first || a >= end)
            continue;
        if (a > first)
            pm_flush(p, p->main + first * LINE, (a - first) * LINE);
        first = b;
    }
    if (first < end)
        pm_flush(p, p->main + first * LINE, (end - first) * LINE);
}

static int cmp_run(const void *x, const void *y) {
    const struct run *a = x, *b = y;
    return a->first < b->first ? -1 : a->first > b->first;
}

/* Flush main's lines fully inside [off, off+len) now, on the reader thread, while the caller
 * seals the next range: the commit then flushes only what was not flushed ahead (after the
 * reader's own sfence: FENCE 2 still orders every line of main before COPYING). Only in pmem
 * mode, with no crash simulation (its events stay on one thread, in order) and no device model
 * (its accounting is the committing thread's); otherwise the commit flushes it all. The caller
 * promises the range is final (WriteTxn.written): a line stored to after this would not be
 * flushed again. Edge lines (shared with the neighbouring range) are left to the commit. */
int rom_flush_ahead(rom_pool *p, uint64_t off, uint64_t len) {
    int rc = check_txn(p);
    if (rc)
        return rc;
    if ((rc = check_range(p, off, len)))
        return rc;
    if (p->mode != ROM_MODE_PMEM || pm_hooks.pool == p || p->dev_on)
        return ROM_OK;
    uint64_t first = (off + LINE - 1) / LINE, end = (off + len) / LINE;
    if (end <= first)
        return ROM_OK;
    struct run *last = p->nahead ? &p->ahead[p->nahead - 1] : NULL;
    if (!(last && last->first + last->n == first) && p->nahead == AHEAD_MAX)
        return ROM_OK; /* the commit flushes it */
    if (!rd_post(p, RD_FLUSH, p->main + first * LINE, NULL, (end - first) * LINE))
        return ROM_OK; /* no reader: the commit flushes it */
    if (last && last->first + last->n == first)
        last->n += end - first;
    else
        p->ahead[p->nahead++] = (struct run){first, end - first};
    p->flushed_lines += end - first;
    p->ahead_lines += end - first;
    return ROM_OK;
}

static void end_txn(rom_pool *p) {
    p->last_log_lines = p->log_lines;
    p->last_fences = p->txn_fences;
    log_reset(p);
    p->in_txn = 0;
    pthread_mutex_unlock(&p->lock);
}

/* ---------------------------------------------------------------------------------------------
 * Commit: FENCES 2, 3 and 4
 * ------------------------------------------------------------------------------------------- */

/* After FENCE 3: copy the logged ranges (on overflow all of [0, used)) main -> back, FENCE 4,
 * IDLE. Run by rom_commit or by the copier thread, which then owns the log (the next begin
 * waits for it). The test hook bg_delay_ms sleeps half-way, so a kill can land mid-copy. */
static void copy_piece(rom_pool *p, uint64_t off, uint64_t n, int nt, uint64_t *copied,
                       uint64_t half) {
    while (n) {
        uint64_t k = n;
        if (half && *copied < half && *copied + k > half)
            k = half - *copied; /* stop at the half-way point */
        copy_persist(p, p->back + off, p->main + off, k, nt);
        *copied += k;
        off += k;
        n -= k;
        if (half && *copied == half) {
            struct timespec ts = {p->bg_delay_ms / 1000, (long)(p->bg_delay_ms % 1000) * 1000000L};
            while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
            }
            half = 0;
        }
    }
}

static void copy_to_back(rom_pool *p, int copier) {
    struct rom_hdr *h = p->hdr;
    uint64_t used = p->used, copied = 0;
    uint64_t total = p->overflow ? used : p->log_lines * LINE;
    uint64_t half = (copier && p->bg_delay_ms) ? align_up(total / 2, LINE) : 0;
    if (half >= total)
        half = 0;
    if (p->overflow) {
        copy_piece(p, 0, used, used >= p->nt_min, &copied, half);
        p->full_copies++;
    } else {
        for (size_t i = 0; i < p->nruns; i++) {
            uint64_t off = p->runs[i].first * LINE, n = p->runs[i].n * LINE;
            copy_piece(p, off, n, n >= p->nt_min, &copied, half);
        }
    }
    pm_fence(p); /* FENCE 4: back complete before IDLE */
    /* IDLE is neither flushed nor fenced: while COPYING is what PM holds, recovery redoes the
     * idempotent copy main -> back, which changes nothing. Flushing it would make the next
     * begin's store to this line wait for the write-back. */
    h->state = ROM_IDLE;
    p->last_copy_bytes = copied;
}

/* the copier's job for a background commit (romulus_copier.c): the end of the transaction */
static void finish_in_background(rom_pool *p) {
    copy_to_back(p, 1);
    p->last_fences = p->txn_fences;
    log_reset(p);
}

int rom_commit(rom_pool *p) {
    int rc = check_txn(p);
    if (rc)
        return rc;
    struct rom_hdr *h = p->hdr;
    /* full copies and recovery must cover new allocations; a top that is not sane (restored
     * from a hostile back by an abort) is not followed: the next allocation reports it */
    uint64_t top = LD(p->meta->top);
    if (top > p->used && top <= p->region && top % LINE == 0) {
        p->used = top;
        h->used = top;
        pm_flush(p, &h->used, 8);
    }
    uint64_t used = p->used;
    if (p->nahead) {
        rd_finish(p); /* the flushes ahead done, each fenced by the reader */
        qsort(p->ahead, p->nahead, sizeof p->ahead[0], cmp_run);
    }
    if (p->overflow) { /* ALL of main, not just what was logged */
        flush_unless_ahead(p, 0, (used + LINE - 1) / LINE);
    } else {
        for (size_t i = 0; i < p->nruns; i++)
            flush_unless_ahead(p, p->runs[i].first, p->runs[i].n);
    }
    p->nahead = 0;
    pm_fence(p); /* FENCE 2: main complete before COPYING */
    /* the flushes evicted the logged main lines: fetch them back for the copy to back while
     * FENCE 3 waits */
    if (!p->overflow && p->log_lines <= PREFETCH_LINES)
        for (size_t i = 0; i < p->nruns; i++)
            for (uint64_t l = 0; l < p->runs[i].n; l++)
                __builtin_prefetch(p->main + (p->runs[i].first + l) * LINE, 0, 3);
    h->state = ROM_COPYING;
    h->commits++; /* same line: durable with COPYING */
    pm_flush(p, &h->state, 8);
    pm_fence(p); /* FENCE 3: COPYING durable before back is touched; the txn is durable */
    prefetch_w(&h->state); /* for the IDLE store */
    uint64_t bytes = p->overflow ? used : p->log_lines * LINE;
    if (p->commit_bg && bytes >= p->bg_min && bg_post(p, finish_in_background))
        return ROM_OK; /* durable; the copier does the rest and ends the log */
    copy_to_back(p, 0);
    end_txn(p);
    return ROM_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Abort and the transaction's log
 * ------------------------------------------------------------------------------------------- */

void abort_txn(rom_pool *p) {
    if (p->nahead)
        rd_finish(p); /* no flush ahead still running over main */
    p->nahead = 0;
    if (p->overflow) {
        copy_persist(p, p->main, p->back, p->used, 0);
    } else {
        for (size_t i = 0; i < p->nruns; i++) {
            uint64_t off = p->runs[i].first * LINE, n = p->runs[i].n * LINE;
            memcpy(p->main + off, p->back + off, n);
            pm_flush(p, p->main + off, n);
        }
    }
    pm_fence(p); /* main restored in PM before IDLE stops recovery from doing it */
    p->hdr->state = ROM_IDLE; /* not flushed: a lost IDLE only repeats the rollback */
    p->aborts++;
    p->last_copy_bytes = 0;
    end_txn(p);
}

int rom_abort(rom_pool *p) {
    int rc = check_txn(p);
    if (rc)
        return rc;
    abort_txn(p);
    return ROM_OK;
}

int rom_log(rom_pool *p, uint64_t off, uint64_t len) {
    int rc = check_txn(p);
    if (rc)
        return rc;
    if ((rc = check_range(p, off, len)))
        return rc;
    log_range(p, off, len);
    return ROM_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Recovery at open (romulus.h, RECOVERY)
 * ------------------------------------------------------------------------------------------- */

/* state and used come from the validated header copy, never re-read from the file */
void recover(rom_pool *p, uint64_t state, uint64_t used) {
    struct rom_hdr *h = p->hdr;
    if (state == ROM_MUTATING) { /* roll back */
        copy_persist(p, p->main, p->back, used, used >= p->nt_min);
        p->opened_as = ROM_ROLLED_BACK;
    } else if (state == ROM_COPYING) { /* roll forward */
        copy_persist(p, p->back, p->main, used, used >= p->nt_min);
        p->opened_as = ROM_ROLLED_FWD;
    } else {
        return;
    }
    pm_fence(p); /* the copy complete before IDLE stops the next open from redoing it */
    h->state = ROM_IDLE;
    pm_flush(p, &h->state, 8);
    pm_fence(p);
}
