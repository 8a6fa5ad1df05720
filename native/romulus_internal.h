/*
 * romulus_internal.h -- what the engine's translation units share, and nothing the bindings see.
 *
 *   romulus_error.c    errors: the message of the last failure of this thread
 *   romulus_device.c   the PM device model (busy waits charged by flushes, drained at fences)
 *   romulus_persist.c  making stores persistent: flush instruction (cpuid, PLINIUS_PM_FLUSH),
 *                      clwb/clflushopt/clflush + sfence, msync, non-temporal copy, helper
 *                      threads, the environment's tuning read at open; the hooks table
 *   romulus_log.c      the volatile log: dirty-line bitmap and runs
 *   romulus_copier.c   the copier thread of the background commit (runs the job it is handed)
 *   romulus_txn.c      the durable-transaction protocol: begin, commit, abort, recovery
 *   romulus_alloc.c    allocator and named roots (their state lives in main, every store logged)
 *   romulus_pool.c     open, create, validate, recover, close, statistics
 *   romulus_sim.c      simulated process crashes and power failures (romulus_sim.h, tests only)
 *   romulus_bench.c    the SPS loop (romulus_bench.h, benchmarks only)
 *
 * A file calls only files listed before it, so no two files call each other (tests/
 * test_native_layout.py checks it): the transaction protocol calls persist, log and copier;
 * the copier runs the protocol's end of a commit as a job it is handed, without naming it; the
 * crash simulator is reached only through the table pm_hooks, which it fills at start-up.
 *
 * The protocol, its fences and the pool layout are documented in romulus.h. Every function
 * declared here has hidden visibility: the shared object exports only the rom_* API.
 */
#ifndef PLINIUS_ROMULUS_INTERNAL_H
#define PLINIUS_ROMULUS_INTERNAL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "romulus.h"

#include <pthread.h>
#include <sys/types.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#define ROM_X86 1
#else
#define ROM_X86 0
#endif

/* internal linkage across the engine's files: not exported from the shared object */
#define ROM_HIDDEN __attribute__((visibility("hidden")))

#define PAGE 4096u
#define LINE ROM_LINE
#define HDR_PAGE PAGE
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
/* one load of a word of the (attacker-controlled) pool: checked and used as the same value */
#define LD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)

/* "PLNROMUL" and "PLNCREAT" as little-endian words: readable in a hex dump */
#define POOL_MAGIC 0x4c554d4f524e4c50ULL
#define CREATING_MAGIC 0x54414552434e4c50ULL
#define META_MAGIC 0x4154454d4e4c5000ULL
#define BLK_USED 0x44455355424c4b00ULL
#define BLK_FREE 0x45455246424c4b00ULL

/* ---------------------------------------------------------------------------------------------
 * Persistent structures
 * ------------------------------------------------------------------------------------------- */

struct rom_hdr {
    /* line 0: identity, written once at creation */
    uint64_t magic;
    uint64_t creating;
    uint32_t version;
    uint32_t hdr_size;
    uint64_t pool_size;
    uint64_t region_size;
    uint64_t main_off;
    uint64_t back_off;
    uint64_t created_ns;
    /* line 1: who holds the pool (informational only) */
    uint64_t holder_pid;
    uint8_t pad1[56];
    /* line 2: the words of the protocol, on a line of their own */
    uint64_t state;
    uint64_t used;
    uint64_t commits;
    uint8_t pad2[40];
};
_Static_assert(sizeof(struct rom_hdr) == 3 * LINE, "header is three cache lines");

/* Size classes for small blocks (header included): 128..512 by 64, then four per doubling up
 * to LARGE_MIN. Larger blocks are whole pages, kept in one address-ordered free list that is
 * split and coalesced, so a model that grows one layer at a time reuses the space it frees. */
#define NCLASSES 35 /* class 34 is 64 KiB */
#define LARGE_MIN (64u * 1024u)
#define LARGE_CLASS 0xffffu

struct rom_root {
    char name[72]; /* ROM_ROOT_NAME_MAX + NUL, padded */
    uint64_t off;
    uint64_t size;
    uint64_t reserved;
};

struct rom_meta {
    uint64_t magic;
    uint64_t top;         /* first never-allocated byte of main */
    uint64_t free_bytes;  /* bytes in free lists */
    uint64_t alloc_bytes; /* bytes in allocated blocks */
    uint64_t nallocs;
    uint64_t large_free;  /* head of the address-ordered large free list */
    uint64_t pad[2];
    uint64_t free_head[NCLASSES];
    struct rom_root roots[ROM_MAX_ROOTS];
};

struct rom_blk {
    uint64_t magic; /* BLK_USED / BLK_FREE */
    uint64_t size;  /* whole block, header included */
    uint64_t next;  /* free-list link (main offset) */
    uint64_t cls;   /* size class or LARGE_CLASS */
    uint64_t pad[4];
};
_Static_assert(sizeof(struct rom_blk) == LINE, "block header is one cache line");

#define META_SIZE (((sizeof(struct rom_meta) + PAGE - 1) / PAGE) * PAGE)
#define BLK_HDR ((uint64_t)sizeof(struct rom_blk))

/* ---------------------------------------------------------------------------------------------
 * Volatile pool state
 * ------------------------------------------------------------------------------------------- */

struct run {
    uint64_t first; /* first line (main-relative) */
    uint64_t n;     /* number of lines */
};

#define AHEAD_MAX 64 /* flushed-ahead runs per transaction; more are flushed at commit */

/* one job of the reader thread (romulus_copier.c): a copy or a flush, run in pieces that the
 * reader and whoever waits for the job claim one at a time */
struct rd_job {
    uint32_t gen; /* which job: pieces are claimed only for it */
    int op;       /* RD_COPY or RD_FLUSH */
    uint8_t *dst;
    const uint8_t *src;
    uint64_t n, pieces;
};

struct prange {
    uintptr_t lo, hi;
};

struct rom_pool {
    char *path;
    int fd;
    int closed;
    uint8_t *base;
    uint64_t map_size;
    struct rom_hdr *hdr;
    uint8_t *main;
    uint8_t *back;
    struct rom_meta *meta;
    uint64_t region;
    uint64_t used; /* the header's used size, validated at open; the header is only written */
    int mode;
    int flush;
    int real_pm;
    int opened_as;
    uint64_t nt_min; /* pmem mode: copies at least this big use non-temporal stores */
    int nthreads;    /* for flushes and copies of PAR_MIN bytes or more */

    pthread_mutex_t lock;
    int in_txn;
    pthread_t owner;

    /* the volatile log: a dirty-line bitmap (dedup) and the list of runs to flush and copy */
    uint64_t *bitmap;
    uint64_t nwords;
    struct run *runs;
    size_t nruns, cap_runs;
    uint64_t log_lines, log_limit;
    int overflow;
    /* line runs of main flushed ahead (rom_flush_ahead) in this transaction, on the reader
     * thread; the commit flushes the logged runs minus these, once the reader is done */
    struct run ahead[AHEAD_MAX];
    size_t nahead;
    uint64_t ahead_lines; /* this session */

    /* msync mode: page ranges flushed since the last fence */
    struct prange *sync;
    size_t nsync, cap_sync;

    uint64_t aborts, fences, flushed_lines, full_copies;
    uint64_t last_log_lines, last_copy_bytes, last_fences, txn_fences;

    /* device model (romulus.h, rom_device): off unless dev_on */
    int dev_on;
    double dev_w_bpns, dev_r_bpns; /* bytes per nanosecond */
    uint64_t dev_fence_ns, dev_read_ns;
    uint64_t dev_pending;  /* bytes charged since the last drain point */
    uint64_t dev_drain_at; /* CLOCK_MONOTONIC ns of the last drain point */
    uint64_t dev_write_bytes, dev_write_wait_ns, dev_read_bytes, dev_read_wait_ns;

    /* background commit (romulus.h, BACKGROUND COMMIT): the copier thread owns the log, the
     * msync list, the fence counters and the device model's write side from the handoff until
     * it clears bg_pending; everything below bg_mu is guarded by it */
    int commit_bg;
    uint64_t bg_min;
    pthread_mutex_t bg_mu;
    pthread_cond_t bg_cv;
    pthread_t bg_thread;
    int bg_started, bg_pending, bg_stop, bg_waiters;
    void (*bg_job)(rom_pool *p); /* what the copier runs for the handed-over commit */
    pid_t bg_pid; /* the process whose copier this is (a forked child has none) */
    int bg_hold;          /* test hook: the copier starts only once someone waits for it */
    uint32_t bg_delay_ms; /* test hook: the copier sleeps half-way through its copy */
    uint64_t bg_copies, bg_copy_ns, last_bg_copy_ns, bg_wait_ns;

    /* read-ahead (romulus.h, READ-AHEAD): the reader thread copies one range out of the pool
     * into the caller's private memory while the caller works; everything below rd_mu is
     * guarded by it */
    pthread_mutex_t rd_mu;
    pthread_cond_t rd_cv;
    pthread_t rd_thread;
    int rd_started, rd_pending, rd_stop;
    int rd_spinning; /* the reader polls rd_pending: a post needs no wake-up */
    int rd_sleepers; /* waiters blocked on rd_cv: the last piece's runner wakes them */
    pid_t rd_pid; /* the process whose reader this is (a forked child copies inline) */
    int rd_avoid;  /* the CPU the reader is kept off (the poster's last), -1: none */
    uint32_t rd_backoff; /* posts left to run inline: the reader was late (a busy machine) */
    uint64_t rd_inline;  /* this session: posts run inline because of that */
    struct rd_job rd_job; /* the job in flight (set under rd_mu by rd_post) */
    uint64_t rd_next;     /* (generation << 32) | next piece to claim: atomic */
    uint64_t rd_done;     /* pieces of the job in flight done: atomic */
    uint64_t rd_copies, rd_copy_ns, rd_wait_ns;
    uint64_t rd_taken_back; /* pieces a waiter ran itself (the reader had not claimed them) */
};

/* ---------------------------------------------------------------------------------------------
 * Shared helpers
 * ------------------------------------------------------------------------------------------- */

static inline uint64_t align_up(uint64_t n, uint64_t a) { return (n + a - 1) & ~(a - 1); }

/* the engine's one pseudo-random generator (simulated power failures, the SPS loop) */
static inline uint64_t xorshift(uint64_t *s) {
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* romulus_error.c: errors (the message of the last failure of this thread: rom_last_error) */
ROM_HIDDEN int fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* "pool PATH is corrupt: DETAIL": every value read from the pool that fails a check */
ROM_HIDDEN int corrupt(rom_pool *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* romulus_device.c: the device model (romulus.h, rom_device) */
ROM_HIDDEN uint64_t mono_ns(void); /* CLOCK_MONOTONIC */
ROM_HIDDEN int dev_check(const rom_device *d); /* ROM_E_INVAL unless a plausible device */
ROM_HIDDEN void dev_init(rom_pool *p, const rom_device *d);
ROM_HIDDEN void dev_drain(rom_pool *p); /* at a fence: wait until the charged bytes drained */

/* charge n bytes made persistent to the modelled media (drained at the next fence) */
static inline void dev_charge(rom_pool *p, uint64_t n) {
    if (UNLIKELY(p->dev_on))
        p->dev_pending += n;
}

/* romulus_persist.c: hooks at the persistence events, for the crash simulator (romulus_sim.c),
 * which fills the table at start-up; all NULL by default. flush and fence are called only for
 * the pool named in `pool` (NULL: none), behind one predictable branch; fence returns 1 to skip
 * that fence (fault injection). opened is called at open once the pool is mapped, before
 * creation and recovery; closing when a pool goes away (closed, or its open failed). */
struct pm_hooks {
    rom_pool *pool;
    void (*flush)(rom_pool *p, const void *addr, uint64_t len);
    int (*fence)(rom_pool *p);
    void (*opened)(rom_pool *p);
    void (*closing)(rom_pool *p);
};
extern ROM_HIDDEN struct pm_hooks pm_hooks;

static inline void hooks_opened(rom_pool *p) {
    if (pm_hooks.opened)
        pm_hooks.opened(p);
}

static inline void hooks_closing(rom_pool *p) {
    if (pm_hooks.closing)
        pm_hooks.closing(p);
}

/* romulus_persist.c: mode and flush instruction from the arguments, the environment or cpuid;
 * the rest of its environment (PLINIUS_PM_NT_MIN, PLINIUS_PM_THREADS) into a new pool */
ROM_HIDDEN int resolve_env(int *mode, int *flush);
ROM_HIDDEN void persist_init(rom_pool *p);

/* romulus_persist.c: flush, fence and persistent copy (romulus.h, DURABILITY MODES) */
#define NT_MIN_DEFAULT 0 /* measured: streaming stores win even for single lines */
#define PAR_MAX 8        /* helper threads for big flushes and copies */
ROM_HIDDEN void pm_flush(rom_pool *p, const void *addr, uint64_t len);
/* write back whole lines [addr, addr+len) and sfence, on the calling thread: no statistics, no
 * hooks, no device model (the reader thread's flush-ahead; pmem mode only) */
ROM_HIDDEN void flush_lines_now(rom_pool *p, const void *addr, uint64_t len);
ROM_HIDDEN void pm_fence(rom_pool *p);
ROM_HIDDEN void copy_persist(rom_pool *p, uint8_t *dst, const uint8_t *src, uint64_t n, int nt);

/* Flushes evict lines on this kind of CPU; fetching a line we are about to use again while a
 * fence waits hides the miss. prefetchw decodes as a NOP on CPUs without it. */
static inline void prefetch_w(const void *a) {
#if defined(__x86_64__) || defined(__i386__)
    __asm__ volatile("prefetchw %0" : : "m"(*(const volatile char *)a));
#else
    __builtin_prefetch(a, 1, 3);
#endif
}

/* romulus_log.c: the volatile log (a dirty-line bitmap and the runs to flush and copy) */
ROM_HIDDEN void log_lines(rom_pool *p, uint64_t first, uint64_t last);
ROM_HIDDEN void log_reset(rom_pool *p); /* empty it at the end of a transaction */

/* append lines [first, first+n) to the runs; inline with log_range on every store's path */
static inline void add_run(rom_pool *p, uint64_t first, uint64_t n) {
    p->log_lines += n;
    if (p->log_lines > p->log_limit) {
        p->overflow = 1; /* commit will flush and copy all of [0, used) */
        return;
    }
    if (p->nruns && p->runs[p->nruns - 1].first + p->runs[p->nruns - 1].n == first) {
        p->runs[p->nruns - 1].n += n;
        return;
    }
    if (p->nruns == p->cap_runs) {
        size_t cap = 2 * p->cap_runs;
        struct run *nr = realloc(p->runs, cap * sizeof *nr);
        if (!nr) { /* out of memory: falling back to a full copy is always correct */
            p->overflow = 1;
            return;
        }
        p->runs = nr;
        p->cap_runs = cap;
    }
    p->runs[p->nruns].first = first;
    p->runs[p->nruns].n = n;
    p->nruns++;
}

/* declare main[off, off+len) written; inline: it is on every store's path */
static inline void log_range(rom_pool *p, uint64_t off, uint64_t len) {
    if (UNLIKELY(p->overflow) || UNLIKELY(len == 0))
        return;
    uint64_t first = off / LINE, last = (off + len - 1) / LINE;
    if (LIKELY(first == last)) {
        uint64_t bit = 1ULL << (first & 63);
        if (p->bitmap[first >> 6] & bit)
            return; /* already logged */
        p->bitmap[first >> 6] |= bit;
        add_run(p, first, 1);
        return;
    }
    log_lines(p, first, last);
}

/* a logged store into main (allocator metadata, roots) */
static inline void st64(rom_pool *p, uint64_t *addr, uint64_t v) {
    log_range(p, (uint64_t)((uint8_t *)addr - p->main), 8);
    *addr = v;
}

/* romulus_copier.c: the copier thread (romulus.h, BACKGROUND COMMIT) */
#define BG_MIN_DEFAULT (256u * 1024u) /* smaller copies cost less than the handoff */
ROM_HIDDEN void bg_init(rom_pool *p);
/* hand job (the commit's end after FENCE 3) to the copier, release the pool lock; 0: no copier */
ROM_HIDDEN int bg_post(rom_pool *p, void (*job)(rom_pool *p));
ROM_HIDDEN uint64_t bg_wait(rom_pool *p, int count); /* ns waited; count: add to bg_wait_ns */
ROM_HIDDEN void bg_shutdown(rom_pool *p);            /* wait, then stop and join the copier */
ROM_HIDDEN void rd_shutdown(rom_pool *p);            /* wait, then stop and join the reader */
#define RD_COPY 0
#define RD_FLUSH 1
/* hand the reader one job (RD_COPY: memcpy(dst, src, n); RD_FLUSH: flush_lines_now(dst, n)),
 * after the one in flight; 0: no reader here, the caller does it */
ROM_HIDDEN int rd_post(rom_pool *p, int op, uint8_t *dst, const uint8_t *src, uint64_t n);
ROM_HIDDEN void rd_finish(rom_pool *p); /* until the reader's job is done */

/* romulus_txn.c: transactions */
ROM_HIDDEN int check_txn(rom_pool *p); /* ROM_E_NOTXN unless this thread has one open */
ROM_HIDDEN void abort_txn(rom_pool *p);
/* at open: roll an interrupted transaction back (MUTATING) or forward (COPYING) */
ROM_HIDDEN void recover(rom_pool *p, uint64_t state, uint64_t used);

/* romulus_alloc.c: the allocator metadata and root table of main or back, checked at open */
ROM_HIDDEN int check_meta(rom_pool *p, uint8_t *region);
ROM_HIDDEN uint64_t avail(rom_pool *p); /* free bytes, for statistics */

#endif /* PLINIUS_ROMULUS_INTERNAL_H */
