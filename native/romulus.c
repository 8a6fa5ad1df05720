/*
 * romulus.c -- RomulusLog over a memory-mapped pool file. The protocol, the fences and the pool
 * layout are documented in romulus.h; comments here say why the code looks the way it does.
 */
#define _GNU_SOURCE
#include "romulus.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#define ROM_X86 1
#include <cpuid.h>
#include <emmintrin.h> /* SSE2 is baseline on x86-64: movntdq needs no -march */
#else
#define ROM_X86 0
#endif

#ifndef MAP_SYNC
#define MAP_SYNC 0x80000
#endif
#ifndef MAP_SHARED_VALIDATE
#define MAP_SHARED_VALIDATE 0x03
#endif

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
};

static __thread char g_err[768];

static int fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return code;
}

const char *rom_last_error(void) { return g_err; }

/* "pool PATH is corrupt: DETAIL": every value read from the pool that fails a check */
static int corrupt(rom_pool *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int corrupt(rom_pool *p, const char *fmt, ...) {
    char detail[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    snprintf(g_err, sizeof g_err, "pool %s is corrupt: %s", p->path, detail);
    return ROM_E_CORRUPT;
}

static uint64_t align_up(uint64_t n, uint64_t a) { return (n + a - 1) & ~(a - 1); }

/* Flushes evict lines on this kind of CPU; fetching a line we are about to use again while a
 * fence waits hides the miss. prefetchw decodes as a NOP on CPUs without it. */
static inline void prefetch_w(const void *a) {
#if defined(__x86_64__) || defined(__i386__)
    __asm__ volatile("prefetchw %0" : : "m"(*(const volatile char *)a));
#else
    __builtin_prefetch(a, 1, 3);
#endif
}

/* ---------------------------------------------------------------------------------------------
 * Flush instruction, chosen once by cpuid
 * ------------------------------------------------------------------------------------------- */

static int cpu_bits = -1; /* bit f set: instruction f available */

static int detect_cpu(void) {
    int bits = 0;
#if ROM_X86
    unsigned a, b, c, d;
    if (__get_cpuid(1, &a, &b, &c, &d) && (d & (1u << 19)))
        bits |= 1 << ROM_FLUSH_CLFLUSH;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
        if (b & (1u << 23))
            bits |= 1 << ROM_FLUSH_CLFLUSHOPT;
        if (b & (1u << 24))
            bits |= 1 << ROM_FLUSH_CLWB;
    }
#endif
    return bits;
}

int rom_cpu_has(int flush) {
    if (cpu_bits < 0)
        cpu_bits = detect_cpu(); /* idempotent: a race writes the same value */
    if (flush == ROM_FLUSH_NONE)
        return 1;
    return flush >= 0 && flush <= ROM_FLUSH_CLFLUSH && (cpu_bits >> flush) & 1;
}

int rom_cpu_flush(void) {
    for (int f = ROM_FLUSH_CLWB; f <= ROM_FLUSH_CLFLUSH; f++)
        if (rom_cpu_has(f))
            return f;
    return ROM_FLUSH_NONE;
}

const char *rom_flush_name(int flush) {
    switch (flush) {
    case ROM_FLUSH_CLWB: return "clwb";
    case ROM_FLUSH_CLFLUSHOPT: return "clflushopt";
    case ROM_FLUSH_CLFLUSH: return "clflush";
    case ROM_FLUSH_NONE: return "none";
    default: return "?";
    }
}

const char *rom_mode_name(int mode) {
    switch (mode) {
    case ROM_MODE_PMEM: return "pmem";
    case ROM_MODE_MSYNC: return "msync";
    case ROM_MODE_NONE: return "none";
    default: return "?";
    }
}

static int parse_name(const char *s, const char *(*namer)(int), int lo, int hi) {
    for (int i = lo; i <= hi; i++)
        if (strcmp(s, namer(i)) == 0)
            return i;
    return -1;
}

/* ---------------------------------------------------------------------------------------------
 * Simulated crashes (test hooks; one armed pool per process, off unless armed)
 * ------------------------------------------------------------------------------------------- */

struct pend {
    uint64_t off; /* file offset of the line */
    uint8_t data[LINE];
};

static struct {
    rom_pool *pool; /* armed pool, or NULL */
    uint64_t events, crash_at, rng;
    int kind;
    uint32_t skip_fences;
    uint8_t *shadow; /* power kind: what has reached persistence */
    struct pend *pend;
    size_t npend, cap_pend;
} g_sim;

static uint64_t xorshift(uint64_t *s) {
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static void sim_crash(rom_pool *p) __attribute__((noreturn));
static void sim_crash(rom_pool *p) {
    if (g_sim.kind == 2 && g_sim.shadow) {
        /* power failure: each line holds its last persisted value, or any later value it had
         * (a flush snapshot, or its current content if the cache evicted it) */
        uint8_t *img = g_sim.shadow;
        for (size_t i = 0; i < g_sim.npend; i++)
            if (xorshift(&g_sim.rng) & 1)
                memcpy(img + g_sim.pend[i].off, g_sim.pend[i].data, LINE);
        for (uint64_t off = 0; off < p->map_size; off += LINE)
            if (memcmp(img + off, p->base + off, LINE) != 0 && (xorshift(&g_sim.rng) & 1))
                memcpy(img + off, p->base + off, LINE);
        uint64_t done = 0;
        while (done < p->map_size) {
            ssize_t n = pwrite(p->fd, img + done, p->map_size - done, (off_t)done);
            if (n <= 0)
                _exit(ROM_CRASH_EXIT + 1);
            done += (uint64_t)n;
        }
    }
    _exit(ROM_CRASH_EXIT);
}

static void sim_event(rom_pool *p) {
    g_sim.events++;
    if (g_sim.crash_at && g_sim.events == g_sim.crash_at)
        sim_crash(p);
}

static void sim_flush(rom_pool *p, const void *addr, uint64_t len) {
    sim_event(p);
    if (g_sim.kind != 2)
        return;
    uint64_t lo = ((uint64_t)((const uint8_t *)addr - p->base)) & ~(uint64_t)(LINE - 1);
    uint64_t hi = (uint64_t)((const uint8_t *)addr - p->base) + len;
    for (uint64_t off = lo; off < hi; off += LINE) {
        if (g_sim.npend == g_sim.cap_pend) {
            size_t cap = g_sim.cap_pend ? 2 * g_sim.cap_pend : 1024;
            struct pend *np = realloc(g_sim.pend, cap * sizeof *np);
            if (!np)
                abort();
            g_sim.pend = np;
            g_sim.cap_pend = cap;
        }
        g_sim.pend[g_sim.npend].off = off;
        memcpy(g_sim.pend[g_sim.npend].data, p->base + off, LINE);
        g_sim.npend++;
    }
}

/* returns 1 when this fence is to be skipped (fault injection) */
static int sim_fence(rom_pool *p) {
    sim_event(p);
    if (p->txn_fences >= 1 && p->txn_fences <= 31 && (g_sim.skip_fences >> p->txn_fences) & 1)
        return 1;
    if (g_sim.kind == 2)
        for (size_t i = 0; i < g_sim.npend; i++)
            memcpy(g_sim.shadow + g_sim.pend[i].off, g_sim.pend[i].data, LINE);
    g_sim.npend = 0;
    return 0;
}

int rom_sim_arm(rom_pool *p, uint64_t crash_at, int kind, uint64_t seed, uint32_t skip_fences) {
    rom_sim_disarm();
    if (kind != 1 && kind != 2)
        return fail(ROM_E_INVAL, "simulated crash kind must be 1 (process) or 2 (power)");
    if (kind == 2) {
        g_sim.shadow = malloc(p->map_size);
        if (!g_sim.shadow)
            return fail(ROM_E_IO, "no memory for the power-failure shadow");
        memcpy(g_sim.shadow, p->base, p->map_size); /* the pool is persistent when armed */
    }
    g_sim.kind = kind;
    g_sim.crash_at = crash_at;
    g_sim.rng = seed * 0x9E3779B97F4A7C15ULL + 1;
    g_sim.skip_fences = skip_fences;
    g_sim.events = 0;
    g_sim.pool = p;
    return ROM_OK;
}

void rom_sim_disarm(void) {
    free(g_sim.shadow);
    g_sim.shadow = NULL;
    g_sim.npend = 0;
    g_sim.pool = NULL;
    g_sim.crash_at = 0;
    g_sim.skip_fences = 0;
}

uint64_t rom_sim_events(void) { return g_sim.events; }

/* ---------------------------------------------------------------------------------------------
 * Flush and fence
 * ------------------------------------------------------------------------------------------- */

static void sync_add(rom_pool *p, uintptr_t lo, uintptr_t hi) {
    lo &= ~(uintptr_t)(PAGE - 1);
    hi = (uintptr_t)align_up(hi, PAGE);
    if (p->nsync) {
        struct prange *last = &p->sync[p->nsync - 1];
        if (lo <= last->hi && hi >= last->lo) {
            if (lo < last->lo)
                last->lo = lo;
            if (hi > last->hi)
                last->hi = hi;
            return;
        }
    }
    if (p->nsync == p->cap_sync) {
        /* too many scattered pages: one msync over their hull writes only the dirty ones */
        uintptr_t mlo = lo, mhi = hi;
        for (size_t i = 0; i < p->nsync; i++) {
            if (p->sync[i].lo < mlo)
                mlo = p->sync[i].lo;
            if (p->sync[i].hi > mhi)
                mhi = p->sync[i].hi;
        }
        p->sync[0].lo = mlo;
        p->sync[0].hi = mhi;
        p->nsync = 1;
        return;
    }
    p->sync[p->nsync].lo = lo;
    p->sync[p->nsync].hi = hi;
    p->nsync++;
}

#define PREFETCH_LINES 256 /* logs up to this many lines are prefetched before the copy */
#define NT_MIN_DEFAULT 0     /* measured: streaming stores win even for single lines */

/* The raw primitives, callable from helper threads (no pool state touched). */
static void flush_raw(int flush, uintptr_t a, uintptr_t end) {
#if ROM_X86
    switch (flush) {
    case ROM_FLUSH_CLWB:
        for (; a < end; a += LINE)
            __asm__ volatile("clwb %0" : "+m"(*(volatile char *)a));
        break;
    case ROM_FLUSH_CLFLUSHOPT:
        for (; a < end; a += LINE)
            __asm__ volatile("clflushopt %0" : "+m"(*(volatile char *)a));
        break;
    case ROM_FLUSH_CLFLUSH:
        for (; a < end; a += LINE)
            __asm__ volatile("clflush %0" : "+m"(*(volatile char *)a));
        break;
    default:
        break;
    }
#else
    (void)flush, (void)a, (void)end;
#endif
}

static void nt_copy_raw(uint8_t *dst, const uint8_t *src, uint64_t n) {
#if ROM_X86
    __m128i *d = (__m128i *)dst;
    const __m128i *s = (const __m128i *)src;
    for (uint64_t i = 0; i < n / 16; i += 4) {
        __m128i x0 = _mm_load_si128(s + i), x1 = _mm_load_si128(s + i + 1);
        __m128i x2 = _mm_load_si128(s + i + 2), x3 = _mm_load_si128(s + i + 3);
        _mm_stream_si128(d + i, x0);
        _mm_stream_si128(d + i + 1, x1);
        _mm_stream_si128(d + i + 2, x2);
        _mm_stream_si128(d + i + 3, x3);
    }
#else
    memcpy(dst, src, n);
#endif
}

/* Big flushes and copies (a whole mirror) are split over helper threads: one core does not
 * saturate memory bandwidth on these machines. Each helper ends with its own sfence before it
 * is joined, so when the committing thread fences next, every helper's flushes and streaming
 * stores are already complete: the protocol's order is unchanged. */
enum { OP_FLUSH, OP_NTCOPY, OP_MEMCPY };

struct par_job {
    int op, flush;
    uint8_t *dst;
    const uint8_t *src;
    uint64_t n;
};

static void *par_work(void *arg) {
    struct par_job *j = arg;
    if (j->op == OP_FLUSH)
        flush_raw(j->flush, (uintptr_t)j->dst, (uintptr_t)j->dst + j->n);
    else if (j->op == OP_NTCOPY)
        nt_copy_raw(j->dst, j->src, j->n);
    else
        memcpy(j->dst, j->src, j->n);
#if ROM_X86
    __asm__ volatile("sfence" ::: "memory");
#endif
    return NULL;
}

#define PAR_MIN (8u << 20)
#define PAR_MAX 8

static void par_run(rom_pool *p, int op, uint8_t *dst, const uint8_t *src, uint64_t n) {
    int nt = (n >= PAR_MIN && g_sim.pool != p) ? p->nthreads : 1;
    struct par_job jobs[PAR_MAX];
    pthread_t th[PAR_MAX];
    int started[PAR_MAX] = {0};
    uint64_t chunk = align_up((n + (uint64_t)nt - 1) / (uint64_t)nt, PAGE), at = 0;
    int k = 0;
    for (; k < nt && at < n; k++, at += chunk) {
        uint64_t len = n - at < chunk ? n - at : chunk;
        jobs[k] = (struct par_job){op, p->flush, dst + at, src ? src + at : NULL, len};
    }
    for (int i = 1; i < k; i++) /* a helper that cannot start is done inline below */
        started[i] = pthread_create(&th[i], NULL, par_work, &jobs[i]) == 0;
    par_work(&jobs[0]);
    for (int i = 1; i < k; i++) {
        if (started[i])
            pthread_join(th[i], NULL);
        else
            par_work(&jobs[i]);
    }
}

/* ---------------------------------------------------------------------------------------------
 * Device model: busy waits on the monotonic clock (romulus.h, rom_device)
 * ------------------------------------------------------------------------------------------- */

static uint64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static inline void cpu_relax(void) {
#if ROM_X86
    __builtin_ia32_pause();
#endif
}

/* spin until `until`; returns the time it was reached */
static uint64_t spin_until(uint64_t until) {
    uint64_t now = mono_ns();
    while (now < until) {
        cpu_relax();
        now = mono_ns();
    }
    return now;
}

/* a fence drains the write-pending queue: the bytes charged since the last drain point cannot
 * have reached the media faster than the modelled bandwidth, and the drain itself has a cost */
static void dev_drain(rom_pool *p) {
    uint64_t now = mono_ns();
    uint64_t target = p->dev_drain_at + (uint64_t)((double)p->dev_pending / p->dev_w_bpns);
    if (target < now)
        target = now;
    target += p->dev_fence_ns;
    uint64_t done = spin_until(target);
    p->dev_write_wait_ns += done - now;
    p->dev_write_bytes += p->dev_pending;
    p->dev_pending = 0;
    p->dev_drain_at = done;
}

void rom_model_read(rom_pool *p, uint64_t n) {
    if (!p || !p->dev_on)
        return;
    uint64_t now = mono_ns();
    uint64_t done = spin_until(now + p->dev_read_ns + (uint64_t)((double)n / p->dev_r_bpns));
    p->dev_read_bytes += n;
    p->dev_read_wait_ns += done - now;
}

/* Write back [addr, addr+len): from the line holding addr (rounded DOWN) to the one holding the
 * last byte. */
static void pm_flush(rom_pool *p, const void *addr, uint64_t len) {
    if (UNLIKELY(len == 0))
        return;
    if (UNLIKELY(g_sim.pool == p))
        sim_flush(p, addr, len);
    uintptr_t a = (uintptr_t)addr & ~(uintptr_t)(LINE - 1);
    uintptr_t end = (uintptr_t)addr + len;
    uint64_t lines = (end - a + LINE - 1) / LINE;
    p->flushed_lines += lines;
    if (UNLIKELY(p->dev_on))
        p->dev_pending += lines * LINE;
    if (p->mode == ROM_MODE_MSYNC) {
        sync_add(p, a, end);
        return;
    }
    if (p->mode != ROM_MODE_PMEM)
        return;
    if (end - a >= PAR_MIN)
        par_run(p, OP_FLUSH, (uint8_t *)a, NULL, end - a);
    else
        flush_raw(p->flush, a, end);
}

static void hw_fence(rom_pool *p) {
    if (p->mode == ROM_MODE_MSYNC) {
        for (size_t i = 0; i < p->nsync; i++)
            msync((void *)p->sync[i].lo, p->sync[i].hi - p->sync[i].lo, MS_SYNC);
        p->nsync = 0;
        __asm__ volatile("" ::: "memory");
        return;
    }
#if ROM_X86
    if (p->mode == ROM_MODE_PMEM) {
        __asm__ volatile("sfence" ::: "memory");
        return;
    }
#endif
    __asm__ volatile("" ::: "memory"); /* none: program order is enough against process crashes */
}

static void pm_fence(rom_pool *p) {
    p->fences++;
    p->txn_fences++;
    if (UNLIKELY(g_sim.pool == p) && sim_fence(p))
        return;
    hw_fence(p);
    if (UNLIKELY(p->dev_on))
        dev_drain(p); /* after the real fence: the model only ever adds time */
}

/* Copy and make persistent (after the next fence). In pmem mode the copy streams past the cache
 * with non-temporal stores, which need no flush and no read-for-ownership of the destination
 * (measured faster than copy + clwb at every size here); src/dst/n are line-aligned. */
static void copy_persist(rom_pool *p, uint8_t *dst, const uint8_t *src, uint64_t n, int nt) {
    if (ROM_X86 && nt && p->mode == ROM_MODE_PMEM) {
        if (n >= PAR_MIN)
            par_run(p, OP_NTCOPY, dst, src, n);
        else
            nt_copy_raw(dst, src, n);
        p->flushed_lines += n / LINE;
        if (UNLIKELY(p->dev_on))
            p->dev_pending += n;
        if (UNLIKELY(g_sim.pool == p))
            sim_flush(p, dst, n);
        return;
    }
    if (n >= PAR_MIN)
        par_run(p, OP_MEMCPY, dst, src, n);
    else
        memcpy(dst, src, n);
    pm_flush(p, dst, n);
}

/* ---------------------------------------------------------------------------------------------
 * The volatile log
 * ------------------------------------------------------------------------------------------- */

static void add_run(rom_pool *p, uint64_t first, uint64_t n) {
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

static void log_lines(rom_pool *p, uint64_t first, uint64_t last) {
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

static void log_reset(rom_pool *p) {
    if (p->overflow)
        memset(p->bitmap, 0, p->nwords * sizeof(uint64_t));
    else
        for (size_t i = 0; i < p->nruns; i++)
            clear_bits(p, p->runs[i].first, p->runs[i].n);
    p->nruns = 0;
    p->log_lines = 0;
    p->overflow = 0;
}

/* a logged store into main (allocator metadata, roots) */
static inline void st64(rom_pool *p, uint64_t *addr, uint64_t v) {
    log_range(p, (uint64_t)((uint8_t *)addr - p->main), 8);
    *addr = v;
}

/* ---------------------------------------------------------------------------------------------
 * Transactions
 * ------------------------------------------------------------------------------------------- */

static int check_txn(rom_pool *p) {
    if (UNLIKELY(!p->in_txn || !pthread_equal(p->owner, pthread_self())))
        return fail(ROM_E_NOTXN, "pool %s: no write transaction open in this thread", p->path);
    return ROM_OK;
}

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
    p->in_txn = 1;
    p->owner = pthread_self();
    p->txn_fences = 0;
    p->log_limit = p->used / 4 / LINE;
    p->hdr->state = ROM_MUTATING;
    pm_flush(p, &p->hdr->state, 8);
    pm_fence(p); /* FENCE 1: MUTATING durable before any store to main */
    prefetch_w(&p->hdr->state); /* for the COPYING store */
    return ROM_OK;
}

static void end_txn(rom_pool *p) {
    p->last_log_lines = p->log_lines;
    p->last_fences = p->txn_fences;
    log_reset(p);
    p->in_txn = 0;
    pthread_mutex_unlock(&p->lock);
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
    if (p->overflow) {
        pm_flush(p, p->main, used); /* ALL of main, not just what was logged */
    } else {
        for (size_t i = 0; i < p->nruns; i++)
            pm_flush(p, p->main + p->runs[i].first * LINE, p->runs[i].n * LINE);
    }
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
    uint64_t copied = 0;
    if (p->overflow) {
        copy_persist(p, p->back, p->main, used, used >= p->nt_min);
        copied = used;
        p->full_copies++;
    } else {
        for (size_t i = 0; i < p->nruns; i++) {
            uint64_t off = p->runs[i].first * LINE, n = p->runs[i].n * LINE;
            copy_persist(p, p->back + off, p->main + off, n, n >= p->nt_min);
            copied += n;
        }
    }
    pm_fence(p); /* FENCE 4: back complete before IDLE */
    /* IDLE is neither flushed nor fenced: while COPYING is what PM holds, recovery redoes the
     * idempotent copy main -> back, which changes nothing. Flushing it would make the next
     * begin's store to this line wait for the write-back. */
    h->state = ROM_IDLE;
    p->last_copy_bytes = copied;
    end_txn(p);
    return ROM_OK;
}

static void abort_txn(rom_pool *p) {
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
    if (off > p->region || len > p->region - off)
        return fail(ROM_E_RANGE, "range [%llu, +%llu) is outside the %llu-byte main region",
                    (unsigned long long)off, (unsigned long long)len,
                    (unsigned long long)p->region);
    log_range(p, off, len);
    return ROM_OK;
}

int rom_store_u64(rom_pool *p, uint64_t off, uint64_t value) {
    if (off % 8)
        return fail(ROM_E_RANGE, "8-byte store at unaligned offset %llu", (unsigned long long)off);
    int rc = rom_log(p, off, 8);
    if (rc)
        return rc;
    *(uint64_t *)(p->main + off) = value;
    return ROM_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Allocator (all its state in main, every store logged)
 *
 * Every offset, size, class and link read from the pool is hostile until checked (the attacker
 * owns the file, and an abort restores logged lines from `back`, which may differ from `main`).
 * Each is loaded once (LD), checked against the validated top of the heap, and only then used;
 * list walks are address-ordered or bounded by how many blocks fit. A violation is
 * ROM_E_CORRUPT naming the field, never a wild access or an endless loop.
 * ------------------------------------------------------------------------------------------- */

static uint64_t class_size(unsigned c) {
    if (c < 7)
        return 128 + 64 * (uint64_t)c; /* 128 .. 512 */
    c -= 7;
    unsigned k = 9 + c / 4, i = c % 4 + 1;
    return (1ULL << k) + (uint64_t)i * (1ULL << (k - 2)); /* four per doubling */
}

static int class_of(uint64_t total) {
    for (unsigned c = 0; c < NCLASSES; c++)
        if (class_size(c) >= total)
            return (int)c;
    return -1;
}

static struct rom_blk *blk_in(uint8_t *region, uint64_t off) {
    return (struct rom_blk *)(region + off);
}
static struct rom_blk *blk_at(rom_pool *p, uint64_t off) { return blk_in(p->main, off); }

static void blk_init(rom_pool *p, uint64_t b, uint64_t size, uint64_t cls, uint64_t magic) {
    struct rom_blk *k = blk_at(p, b);
    log_range(p, b, BLK_HDR);
    k->magic = magic;
    k->size = size;
    k->next = 0;
    k->cls = cls;
}

static uint64_t avail(rom_pool *p) {
    uint64_t top = LD(p->meta->top), fr = LD(p->meta->free_bytes);
    return (top <= p->region ? p->region - top : 0) + fr; /* statistics only */
}

/* large blocks start one header before a page boundary, so user data is page-aligned */
static uint64_t large_start(uint64_t top) { return align_up(top + BLK_HDR, PAGE) - BLK_HDR; }

static const char *region_name(rom_pool *p, const uint8_t *region) {
    return region == p->back ? " (committed copy)" : "";
}

/* the validated top of the heap of `region` (main or back) */
static int top_of(rom_pool *p, uint8_t *region, uint64_t *out) {
    uint64_t top = LD(((struct rom_meta *)region)->top);
    if (top < META_SIZE || top > p->region || top % LINE)
        return corrupt(p,
                       "allocator top%s 0x%llx is outside the heap [0x%llx, 0x%llx] or not "
                       "%u-byte aligned",
                       region_name(p, region), (unsigned long long)top,
                       (unsigned long long)META_SIZE, (unsigned long long)p->region, LINE);
    *out = top;
    return ROM_OK;
}

/* "free-list head of size class 3" / "link of free block 0x... in size class 3" */
static void list_field(char *buf, size_t n, uint64_t c, uint64_t from) {
    if (c == LARGE_CLASS && !from)
        snprintf(buf, n, "large free-list head");
    else if (c == LARGE_CLASS)
        snprintf(buf, n, "link of large free block 0x%llx", (unsigned long long)from);
    else if (!from)
        snprintf(buf, n, "free-list head of size class %u", (unsigned)c);
    else
        snprintf(buf, n, "link of free block 0x%llx in size class %u", (unsigned long long)from,
                 (unsigned)c);
}

static int bad_link(rom_pool *p, uint8_t *region, uint64_t c, uint64_t from, uint64_t b,
                    const char *why) {
    char field[96];
    list_field(field, sizeof field, c, from);
    return corrupt(p, "%s%s %s (offset 0x%llx)", field, region_name(p, region), why,
                   (unsigned long long)b);
}

/* b, read from a small free list of class c, is a free block of that class under top */
static int chk_small(rom_pool *p, uint8_t *region, unsigned c, uint64_t from, uint64_t b,
                     uint64_t top) {
    uint64_t cs = class_size(c);
    if (b < META_SIZE || b % LINE || b > top || top - b < cs)
        return bad_link(p, region, c, from, b, "points outside the heap");
    struct rom_blk *k = blk_in(region, b);
    if (LD(k->magic) != BLK_FREE)
        return bad_link(p, region, c, from, b, "points at a block that is not free");
    if (LD(k->size) != cs || LD(k->cls) != c)
        return bad_link(p, region, c, from, b, "points at a block of another size");
    return ROM_OK;
}

/* b, read from the large free list, is a free large block in [lo, top); its size in *size */
static int chk_large(rom_pool *p, uint8_t *region, uint64_t from, uint64_t b, uint64_t lo,
                     uint64_t top, uint64_t *size) {
    if (b < META_SIZE || (b + BLK_HDR) % PAGE || b > top || top - b < PAGE)
        return bad_link(p, region, LARGE_CLASS, from, b, "points outside the heap");
    if (b < lo)
        return bad_link(p, region, LARGE_CLASS, from, b,
                        "goes backwards (the list must be address-ordered)");
    struct rom_blk *k = blk_in(region, b);
    uint64_t s = LD(k->size);
    if (LD(k->magic) != BLK_FREE || LD(k->cls) != LARGE_CLASS)
        return bad_link(p, region, LARGE_CLASS, from, b, "points at a block that is not free");
    if (s < PAGE || s % PAGE || s > top - b)
        return bad_link(p, region, LARGE_CLASS, from, b,
                        "points at a block whose size runs past the heap");
    *size = s;
    return ROM_OK;
}

/* first fit in the address-ordered large list, else from the top; *out 0 when full */
static int alloc_large(rom_pool *p, uint64_t total, uint64_t *out) {
    struct rom_meta *m = p->meta;
    uint64_t top;
    int rc = top_of(p, p->main, &top);
    if (rc)
        return rc;
    *out = 0;
    uint64_t prev = 0, cur = LD(m->large_free), lo = META_SIZE;
    while (cur) { /* strictly increasing addresses: at most region / PAGE steps */
        uint64_t ksize;
        if ((rc = chk_large(p, p->main, prev, cur, lo, top, &ksize)))
            return rc;
        struct rom_blk *k = blk_at(p, cur);
        uint64_t next = LD(k->next);
        if (ksize >= total) {
            if (ksize - total >= LARGE_MIN) { /* split: the tail stays free in place */
                uint64_t tail = cur + total;
                blk_init(p, tail, ksize - total, LARGE_CLASS, BLK_FREE);
                st64(p, &blk_at(p, tail)->next, next);
                next = tail;
            } else {
                total = ksize;
            }
            if (prev)
                st64(p, &blk_at(p, prev)->next, next);
            else
                st64(p, &m->large_free, next);
            st64(p, &m->free_bytes, LD(m->free_bytes) - total);
            blk_init(p, cur, total, LARGE_CLASS, BLK_USED);
            *out = cur;
            return ROM_OK;
        }
        prev = cur;
        lo = cur + ksize;
        cur = next;
    }
    uint64_t b = large_start(top);
    if (b > p->region || total > p->region - b)
        return ROM_OK;
    st64(p, &m->top, b + total);
    blk_init(p, b, total, LARGE_CLASS, BLK_USED);
    *out = b;
    return ROM_OK;
}

/* pop the head of small list c after checking it */
static int pop_small(rom_pool *p, unsigned c, uint64_t top, uint64_t *out) {
    struct rom_meta *m = p->meta;
    uint64_t b = LD(m->free_head[c]);
    int rc = chk_small(p, p->main, c, 0, b, top);
    if (rc)
        return rc;
    uint64_t next = LD(blk_at(p, b)->next);
    if (next == b)
        return bad_link(p, p->main, c, b, next, "points at itself");
    st64(p, &m->free_head[c], next);
    st64(p, &m->free_bytes, LD(m->free_bytes) - class_size(c));
    *out = b;
    return ROM_OK;
}

static int alloc_small(rom_pool *p, unsigned c, uint64_t *out) {
    struct rom_meta *m = p->meta;
    uint64_t cs = class_size(c), top, b = 0;
    int rc = top_of(p, p->main, &top);
    if (rc)
        return rc;
    *out = 0;
    if (LD(m->free_head[c])) {
        if ((rc = pop_small(p, c, top, &b)))
            return rc;
    } else if (cs <= p->region - top) {
        b = top;
        st64(p, &m->top, b + cs);
    } else {
        for (unsigned d = c + 1; d < NCLASSES && !b; d++) /* a bigger free block, whole */
            if (LD(m->free_head[d])) {
                if ((rc = pop_small(p, d, top, &b)))
                    return rc;
                c = d;
                cs = class_size(d);
            }
        if (!b) /* last resort: carve it from the coalesced large free blocks */
            return alloc_large(p, align_up(cs, PAGE), out);
    }
    blk_init(p, b, cs, c, BLK_USED);
    *out = b;
    return ROM_OK;
}

int rom_alloc(rom_pool *p, uint64_t size, uint64_t *off) {
    int rc = check_txn(p);
    if (rc)
        return rc;
    *off = 0;
    uint64_t total = size + BLK_HDR;
    if (total < size || total > p->region)
        return fail(ROM_E_FULL, "pool full: %llu bytes needed, %llu free in %s",
                    (unsigned long long)size, (unsigned long long)avail(p), p->path);
    int c = total < LARGE_MIN ? class_of(total) : -1;
    uint64_t need = c >= 0 ? class_size((unsigned)c) : align_up(total, PAGE), b;
    rc = c >= 0 ? alloc_small(p, (unsigned)c, &b) : alloc_large(p, need, &b);
    if (rc)
        return rc;
    if (!b) {
        uint64_t fr = avail(p);
        return fail(ROM_E_FULL, "pool full: %llu bytes needed, %llu free in %s%s",
                    (unsigned long long)need, (unsigned long long)fr, p->path,
                    fr >= need ? " (free space is fragmented)" : "");
    }
    struct rom_meta *m = p->meta;
    st64(p, &m->alloc_bytes, LD(m->alloc_bytes) + blk_at(p, b)->size);
    st64(p, &m->nallocs, LD(m->nallocs) + 1);
    *off = b + BLK_HDR;
    return ROM_OK;
}

/* off (a user offset, from the caller or a root) is an allocated block of `region` under its
 * top: 1 with its header's checked size and class, 0 if not (an error only for a bad top) */
static int block_of(rom_pool *p, uint8_t *region, uint64_t off, uint64_t *size, uint64_t *cls,
                    int *rc) {
    uint64_t top;
    *rc = top_of(p, region, &top);
    if (*rc)
        return 0;
    if (off < META_SIZE + BLK_HDR || off % LINE || off > top)
        return 0;
    uint64_t b = off - BLK_HDR;
    struct rom_blk *k = blk_in(region, b);
    uint64_t s = LD(k->size), c = LD(k->cls);
    if (LD(k->magic) != BLK_USED || s < 2 * BLK_HDR || s > top - b)
        return 0;
    if (c == LARGE_CLASS) {
        if (s % PAGE || off % PAGE)
            return 0;
    } else if (c >= NCLASSES || class_size((unsigned)c) != s) {
        return 0;
    }
    *size = s;
    *cls = c;
    return 1;
}

static int free_large(rom_pool *p, uint64_t b, uint64_t size, uint64_t top) {
    struct rom_meta *m = p->meta;
    uint64_t pp = 0, prev = 0, psize = 0, cur = LD(m->large_free), csize = 0, lo = META_SIZE;
    int rc;
    while (cur) { /* find the neighbours of [b, b+size) in the address-ordered list */
        if ((rc = chk_large(p, p->main, prev, cur, lo, top, &csize)))
            return rc;
        if (cur >= b)
            break;
        if (cur + csize > b)
            return bad_link(p, p->main, LARGE_CLASS, prev, cur,
                            "points at a free block overlapping an allocated one");
        pp = prev;
        prev = cur;
        psize = csize;
        lo = cur + csize;
        cur = LD(blk_at(p, cur)->next);
    }
    if (cur && cur < b + size)
        return bad_link(p, p->main, LARGE_CLASS, prev, cur,
                        "points at a free block overlapping an allocated one");
    uint64_t fb = LD(m->free_bytes);
    /* merge with the following free block */
    if (cur && b + size == cur) {
        cur = LD(blk_at(p, cur)->next);
        fb -= csize;
        size += csize;
    }
    /* merge into the preceding free block */
    if (prev && prev + psize == b) {
        fb -= psize;
        b = prev;
        size += psize;
        prev = pp;
    }
    if (b + size == top) { /* give it back to the top */
        st64(p, &m->top, b);
        if (prev)
            st64(p, &blk_at(p, prev)->next, cur);
        else
            st64(p, &m->large_free, cur);
        st64(p, &m->free_bytes, fb);
        log_range(p, b, BLK_HDR);
        blk_at(p, b)->magic = BLK_FREE;
        return ROM_OK;
    }
    blk_init(p, b, size, LARGE_CLASS, BLK_FREE);
    st64(p, &blk_at(p, b)->next, cur);
    if (prev)
        st64(p, &blk_at(p, prev)->next, b);
    else
        st64(p, &m->large_free, b);
    st64(p, &m->free_bytes, fb + size);
    return ROM_OK;
}

int rom_free(rom_pool *p, uint64_t off) {
    int rc = check_txn(p);
    if (rc)
        return rc;
    uint64_t size, cls, top;
    if (!block_of(p, p->main, off, &size, &cls, &rc))
        return rc ? rc
                  : fail(ROM_E_BADOFF, "pool %s: offset %llu is not an allocated block", p->path,
                         (unsigned long long)off);
    if ((rc = top_of(p, p->main, &top)))
        return rc;
    struct rom_meta *m = p->meta;
    uint64_t b = off - BLK_HDR;
    if (cls == LARGE_CLASS) {
        if ((rc = free_large(p, b, size, top)))
            return rc;
    } else {
        struct rom_blk *k = blk_at(p, b);
        st64(p, &k->magic, BLK_FREE);
        if (b + size == top) {
            st64(p, &m->top, b);
        } else {
            st64(p, &k->next, LD(m->free_head[cls]));
            st64(p, &m->free_head[cls], b);
            st64(p, &m->free_bytes, LD(m->free_bytes) + size);
        }
    }
    st64(p, &m->alloc_bytes, LD(m->alloc_bytes) - size);
    st64(p, &m->nallocs, LD(m->nallocs) - 1);
    return ROM_OK;
}

int rom_block_cap(rom_pool *p, uint64_t off, int committed, uint64_t *cap) {
    uint64_t size, cls;
    int rc;
    if (!block_of(p, committed ? p->back : p->main, off, &size, &cls, &rc))
        return rc ? rc
                  : fail(ROM_E_BADOFF, "pool %s: offset %llu is not an allocated block%s",
                         p->path, (unsigned long long)off, committed ? " (committed)" : "");
    *cap = size - BLK_HDR;
    return ROM_OK;
}

int rom_capacity(rom_pool *p, uint64_t off, uint64_t *cap) { return rom_block_cap(p, off, 0, cap); }

/* The allocator metadata of `region` (main or back) before it is trusted at open: magic,
 * top, counters, every free list walked with a bound and summed against free_bytes, and the
 * root table's names. Reads only. */
static int check_meta(rom_pool *p, uint8_t *region) {
    struct rom_meta *m = (struct rom_meta *)region;
    const char *rn = region_name(p, region);
    if (LD(m->magic) != META_MAGIC)
        return corrupt(p, "allocator metadata magic%s is 0x%llx, not 0x%llx", rn,
                       (unsigned long long)LD(m->magic), (unsigned long long)META_MAGIC);
    uint64_t top;
    int rc = top_of(p, region, &top);
    if (rc)
        return rc;
    if (top > p->used)
        return corrupt(p, "allocator top%s 0x%llx is above the used size 0x%llx", rn,
                       (unsigned long long)top, (unsigned long long)p->used);
    uint64_t heap = top - META_SIZE, sum = 0;
    if (LD(m->alloc_bytes) > heap || LD(m->nallocs) > heap / class_size(0))
        return corrupt(p, "allocation counters%s (%llu bytes in %llu blocks) exceed the heap", rn,
                       (unsigned long long)LD(m->alloc_bytes), (unsigned long long)LD(m->nallocs));
    for (unsigned c = 0; c < NCLASSES; c++) {
        uint64_t cs = class_size(c), max = heap / cs, n = 0, from = 0;
        for (uint64_t b = LD(m->free_head[c]); b; b = LD(blk_in(region, b)->next)) {
            if ((rc = chk_small(p, region, c, from, b, top)))
                return rc;
            if (++n > max)
                return corrupt(p, "free list of size class %u%s has more blocks than the heap "
                                  "holds (a cycle)", c, rn);
            sum += cs;
            from = b;
        }
    }
    uint64_t lo = META_SIZE, from = 0, size;
    for (uint64_t b = LD(m->large_free); b; b = LD(blk_in(region, b)->next)) {
        if ((rc = chk_large(p, region, from, b, lo, top, &size)))
            return rc;
        sum += size;
        lo = b + size;
        from = b;
    }
    if (sum != LD(m->free_bytes))
        return corrupt(p, "free_bytes%s is %llu, but the free lists hold %llu", rn,
                       (unsigned long long)LD(m->free_bytes), (unsigned long long)sum);
    for (int i = 0; i < ROM_MAX_ROOTS; i++) {
        const struct rom_root *r = &m->roots[i];
        if (!r->name[0])
            continue;
        size_t n = strnlen(r->name, sizeof r->name);
        if (n > ROM_ROOT_NAME_MAX)
            return corrupt(p, "name of root %d%s is not terminated within %d bytes", i, rn,
                           ROM_ROOT_NAME_MAX);
        for (int j = 0; j < i; j++)
            if (strncmp(m->roots[j].name, r->name, sizeof r->name) == 0)
                return corrupt(p, "roots %d and %d%s have the same name", j, i, rn);
    }
    return ROM_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Named roots
 * ------------------------------------------------------------------------------------------- */

static int check_name(rom_pool *p, const char *name) {
    size_t n = strnlen(name, ROM_ROOT_NAME_MAX + 1);
    if (n == 0 || n > ROM_ROOT_NAME_MAX)
        return fail(ROM_E_ROOTS, "pool %s: root names have 1 to %d bytes", p->path,
                    ROM_ROOT_NAME_MAX);
    return ROM_OK;
}

/* the committed table is the copy in back: it differs from main only inside a transaction */
static struct rom_meta *meta_of(rom_pool *p, int committed) {
    return committed ? (struct rom_meta *)p->back : p->meta;
}

static struct rom_root *find_root(struct rom_meta *m, const char *name) {
    for (int i = 0; i < ROM_MAX_ROOTS; i++) {
        struct rom_root *r = &m->roots[i];
        if (r->name[0] && strncmp(r->name, name, sizeof r->name) == 0)
            return r;
    }
    return NULL;
}

int rom_root_get(rom_pool *p, const char *name, int committed, uint64_t *off,
                 uint64_t *size) {
    int rc = check_name(p, name);
    if (rc)
        return rc;
    struct rom_root *r = find_root(meta_of(p, committed), name);
    if (!r)
        return 0;
    *off = r->off;
    *size = r->size;
    return 1;
}

int rom_root_set(rom_pool *p, const char *name, uint64_t off, uint64_t size) {
    int rc = check_txn(p);
    if (!rc)
        rc = check_name(p, name);
    if (rc)
        return rc;
    struct rom_root *r = find_root(p->meta, name);
    if (!r) {
        for (int i = 0; i < ROM_MAX_ROOTS && !r; i++)
            if (!p->meta->roots[i].name[0])
                r = &p->meta->roots[i];
        if (!r)
            return fail(ROM_E_ROOTS, "pool %s: all %d roots are in use", p->path, ROM_MAX_ROOTS);
        log_range(p, (uint64_t)((uint8_t *)r - p->main), sizeof *r);
        memset(r->name, 0, sizeof r->name);
        memcpy(r->name, name, strlen(name));
    }
    st64(p, &r->off, off);
    st64(p, &r->size, size);
    return ROM_OK;
}

int rom_root_del(rom_pool *p, const char *name) {
    int rc = check_txn(p);
    if (!rc)
        rc = check_name(p, name);
    if (rc)
        return rc;
    struct rom_root *r = find_root(p->meta, name);
    if (r) {
        log_range(p, (uint64_t)((uint8_t *)r - p->main), sizeof *r);
        memset(r, 0, sizeof *r);
    }
    return ROM_OK;
}

int rom_root_at(rom_pool *p, int index, int committed, char *name, uint64_t *off,
                uint64_t *size) {
    if (index < 0 || index >= ROM_MAX_ROOTS)
        return fail(ROM_E_ROOTS, "root index %d out of range", index);
    struct rom_root *r = &meta_of(p, committed)->roots[index];
    if (!r->name[0])
        return 0;
    memcpy(name, r->name, ROM_ROOT_NAME_MAX);
    name[ROM_ROOT_NAME_MAX] = 0;
    *off = r->off;
    *size = r->size;
    return 1;
}

/* ---------------------------------------------------------------------------------------------
 * Open, create, recover, close
 * ------------------------------------------------------------------------------------------- */

static uint64_t region_of(uint64_t pool_size) { return ((pool_size - HDR_PAGE) / 2) & ~(uint64_t)(PAGE - 1); }

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void set_layout(rom_pool *p) {
    p->hdr = (struct rom_hdr *)p->base;
    p->region = region_of(p->map_size);
    p->main = p->base + HDR_PAGE;
    p->back = p->main + p->region;
    p->meta = (struct rom_meta *)p->main;
}

static void fsync_dir(const char *path) {
    char *dir = strdup(path);
    if (!dir)
        return;
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        slash[1] = 0;
    else if (slash)
        *slash = 0;
    int fd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(dir);
}

static void create_pool(rom_pool *p) {
    struct rom_hdr *h = p->hdr; /* the creating-stamp is already on disk (rom_open) */
    h->version = ROM_VERSION;
    h->hdr_size = (uint32_t)sizeof *h;
    h->pool_size = p->map_size;
    h->region_size = p->region;
    h->main_off = HDR_PAGE;
    h->back_off = HDR_PAGE + p->region;
    h->created_ns = now_ns();
    h->state = ROM_IDLE;
    h->used = META_SIZE; /* from creation on, full copies include the allocator metadata */
    h->commits = 0;
    p->used = META_SIZE;
    memset(p->main, 0, META_SIZE);
    p->meta->magic = META_MAGIC;
    p->meta->top = META_SIZE;
    memcpy(p->back, p->main, META_SIZE);
    pm_flush(p, h, sizeof *h);
    pm_flush(p, p->main, META_SIZE);
    pm_flush(p, p->back, META_SIZE);
    pm_fence(p);
    h->magic = POOL_MAGIC; /* last: only a complete pool carries it */
    pm_flush(p, &h->magic, 8);
    pm_fence(p);
    /* then the stamp goes: a pool whose magic is later damaged must not pass for an unfinished
     * creation (which is re-created automatically) */
    h->creating = 0;
    pm_flush(p, &h->creating, 8);
    pm_fence(p);
    fsync(p->fd); /* the file's size and blocks, for msync mode on a disk file system */
    fsync_dir(p->path);
}

/* state and used come from the validated header copy, never re-read from the file */
static void recover(rom_pool *p, uint64_t state, uint64_t used) {
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
    pm_fence(p);
    h->state = ROM_IDLE;
    pm_flush(p, &h->state, 8);
    pm_fence(p);
}

/* what is wrong with a header that carries the magic, or NULL */
static const char *header_problem(const struct rom_hdr *h) {
    if (h->version == 0)
        return "version 0";
    if (h->hdr_size != sizeof *h)
        return "header size";
    if (h->pool_size < ROM_MIN_POOL || h->pool_size > ROM_MAX_POOL || h->pool_size % PAGE)
        return "pool size";
    if (h->region_size != region_of(h->pool_size))
        return "region size";
    if (h->main_off != HDR_PAGE || h->back_off != HDR_PAGE + h->region_size)
        return "main/back offsets";
    if (h->state > ROM_COPYING)
        return "state word";
    if (h->used < META_SIZE || h->used > h->region_size || h->used % LINE)
        return "used size";
    return NULL;
}

/* A file stamped "creating" but without the magic is re-created only if it never held data:
 * no commit, and the allocator metadata of main and back (where the file has them) as
 * creation leaves it, zeros or a fresh table. Anything else is a damaged pool. */
static int unfinished_is_pristine(int fd, uint64_t fsize, const struct rom_hdr *h, char *why,
                                  size_t n) {
    if (h->commits || h->state) {
        snprintf(why, n, "its header records %llu commits, state %llu",
                 (unsigned long long)h->commits, (unsigned long long)h->state);
        return 0;
    }
    struct rom_meta *m = malloc(sizeof *m);
    if (!m) {
        snprintf(why, n, "out of memory");
        return 0;
    }
    uint64_t at[2] = {HDR_PAGE, fsize >= ROM_MIN_POOL ? HDR_PAGE + region_of(fsize) : 0};
    int ok = 1;
    for (int i = 0; i < 2 && ok && at[i]; i++) {
        memset(m, 0, sizeof *m);
        if (at[i] < fsize && pread(fd, m, sizeof *m, (off_t)at[i]) < 0) {
            snprintf(why, n, "cannot read it: %s", strerror(errno));
            ok = 0;
            break;
        }
        uint64_t magic = m->magic, top = m->top;
        m->magic = 0;
        m->top = 0;
        static const struct rom_meta zero;
        if ((magic && magic != META_MAGIC) || (top && top != META_SIZE) ||
            memcmp(m, &zero, sizeof *m) != 0) {
            snprintf(why, n, "the allocator metadata of %s holds allocations or roots",
                     i ? "back" : "main");
            ok = 0;
        }
    }
    free(m);
    return ok;
}

static int resolve_env(int *mode, int *flush) {
    const char *e;
    if (*mode == ROM_MODE_AUTO) {
        *mode = ROM_MODE_PMEM;
        if ((e = getenv("PLINIUS_PM_MODE")) && *e) {
            *mode = parse_name(e, rom_mode_name, ROM_MODE_PMEM, ROM_MODE_NONE);
            if (*mode < 0)
                return fail(ROM_E_FLUSH, "PLINIUS_PM_MODE=%s: use pmem, msync or none", e);
        }
    }
    if (*mode < ROM_MODE_PMEM || *mode > ROM_MODE_NONE)
        return fail(ROM_E_FLUSH, "unknown durability mode %d", *mode);
    if (*flush == ROM_FLUSH_AUTO) {
        *flush = rom_cpu_flush();
        if ((e = getenv("PLINIUS_PM_FLUSH")) && *e) {
            *flush = parse_name(e, rom_flush_name, ROM_FLUSH_CLWB, ROM_FLUSH_CLFLUSH);
            if (*flush < 0)
                return fail(ROM_E_FLUSH, "PLINIUS_PM_FLUSH=%s: use clwb, clflushopt or clflush",
                            e);
        }
    }
    if (*flush < ROM_FLUSH_CLWB || *flush > ROM_FLUSH_NONE)
        return fail(ROM_E_FLUSH, "unknown flush instruction %d", *flush);
    if (!rom_cpu_has(*flush)) {
        char have[64] = "";
        for (int f = ROM_FLUSH_CLWB; f <= ROM_FLUSH_CLFLUSH; f++)
            if (rom_cpu_has(f)) {
                strcat(have, *have ? ", " : "");
                strcat(have, rom_flush_name(f));
            }
        return fail(ROM_E_FLUSH, "this CPU has no %s (it has: %s)", rom_flush_name(*flush),
                    *have ? have : "none");
    }
    if (*mode == ROM_MODE_PMEM && *flush == ROM_FLUSH_NONE)
        return fail(ROM_E_FLUSH, "mode pmem needs a cache-line flush instruction; use msync");
    return ROM_OK;
}

static int open_fail(rom_pool *p, int rc) {
    if (g_sim.pool == p)
        rom_sim_disarm();
    if (p->base)
        munmap(p->base, p->map_size);
    if (p->fd >= 0)
        close(p->fd); /* drops the flock */
    free(p->bitmap);
    free(p->runs);
    free(p->sync);
    free(p->path);
    free(p);
    return rc;
}

static int read_hdr(int fd, struct rom_hdr *h, uint64_t fsize) {
    memset(h, 0, sizeof *h);
    size_t want = fsize < sizeof *h ? (size_t)fsize : sizeof *h;
    return pread(fd, h, want, 0) == (ssize_t)want ? 0 : -1;
}

static void sim_arm_from_env(rom_pool *p) {
    const char *at = getenv("PLINIUS_ROMULUS_CRASH_AT");
    if (!at || !*at)
        return;
    const char *kind = getenv("PLINIUS_ROMULUS_CRASH_KIND");
    const char *seed = getenv("PLINIUS_ROMULUS_CRASH_SEED");
    rom_sim_arm(p, strtoull(at, NULL, 10), (kind && strcmp(kind, "power") == 0) ? 2 : 1,
                seed ? strtoull(seed, NULL, 10) : 1, 0);
}

int rom_open(const char *path, size_t path_len, uint64_t size, int create, int mode, int flush,
             rom_pool **out) {
    return rom_open_dev(path, path_len, size, create, mode, flush, NULL, out);
}

/* a finite, positive rate no faster than 1 PB/s and no slower than 1 kB/s, or a latency under
 * one second: anything else is a caller's mistake, not a device */
static int check_device(const rom_device *d) {
    if (!(d->write_bps >= 1e3 && d->write_bps <= 1e15))
        return fail(ROM_E_INVAL, "device model: write bandwidth %g B/s is not in [1e3, 1e15]",
                    d->write_bps);
    if (!(d->read_bps >= 1e3 && d->read_bps <= 1e15))
        return fail(ROM_E_INVAL, "device model: read bandwidth %g B/s is not in [1e3, 1e15]",
                    d->read_bps);
    if (d->fence_ns > 1000000000ULL || d->read_ns > 1000000000ULL)
        return fail(ROM_E_INVAL, "device model: latencies must be under one second");
    return ROM_OK;
}

int rom_open_dev(const char *path, size_t path_len, uint64_t size, int create, int mode,
                 int flush, const rom_device *dev, rom_pool **out) {
    *out = NULL;
    if (dev && dev->write_bps != 0.0) {
        int drc = check_device(dev);
        if (drc)
            return drc;
    } else {
        dev = NULL;
    }
    /* a path is a counted string: a NUL inside it would silently open another file */
    if (!path || path_len == 0 || strnlen(path, path_len + 1) != path_len)
        return fail(ROM_E_INVAL, "pool path is empty or contains a NUL byte");
    if (create < ROM_CREATE_NEVER || create > ROM_CREATE_FORCE)
        return fail(ROM_E_INVAL, "unknown create policy %d", create);
    int rc = resolve_env(&mode, &flush);
    if (rc)
        return rc;
    if (size > ROM_MAX_POOL) /* before align_up, which would wrap near 2^64 */
        return fail(ROM_E_INVAL, "pool size %llu is too large: at most %llu bytes",
                    (unsigned long long)size, (unsigned long long)ROM_MAX_POOL);
    if (size)
        size = align_up(size, PAGE);
    if (size && size < ROM_MIN_POOL)
        return fail(ROM_E_INVAL, "pool size %llu is too small: at least %u bytes",
                    (unsigned long long)size, ROM_MIN_POOL);
    rom_pool *p = calloc(1, sizeof *p);
    if (!p)
        return fail(ROM_E_IO, "out of memory");
    p->fd = -1;
    p->mode = mode;
    p->flush = flush;
    if (dev) {
        p->dev_on = 1;
        p->dev_w_bpns = dev->write_bps / 1e9;
        p->dev_r_bpns = dev->read_bps / 1e9;
        p->dev_fence_ns = dev->fence_ns;
        p->dev_read_ns = dev->read_ns;
        p->dev_drain_at = mono_ns();
    }
    p->path = strdup(path);
    if (!p->path)
        return open_fail(p, fail(ROM_E_IO, "out of memory"));
    const char *nt = getenv("PLINIUS_PM_NT_MIN");
    p->nt_min = (nt && *nt) ? strtoull(nt, NULL, 10) : NT_MIN_DEFAULT;
    const char *thr = getenv("PLINIUS_PM_THREADS");
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    p->nthreads = (thr && *thr) ? atoi(thr) : (int)(ncpu > 0 ? ncpu : 1);
    if (p->nthreads < 1)
        p->nthreads = 1;
    if (p->nthreads > PAR_MAX)
        p->nthreads = PAR_MAX;
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ERRORCHECK);
    pthread_mutex_init(&p->lock, &attr);
    pthread_mutexattr_destroy(&attr);

    p->fd = open(path, O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0), 0600);
    if (p->fd < 0) {
        int e = errno;
        if (e == ENOENT && create == ROM_CREATE_NEVER) /* nothing created, nothing to open */
            return open_fail(p, fail(ROM_E_NOENT, "no pool at %s (not created: create=never)",
                                     path));
        return open_fail(p, fail(ROM_E_IO, "cannot open pool %s: %s", path, strerror(e)));
    }
    struct stat st;
    if (fstat(p->fd, &st) != 0 || !S_ISREG(st.st_mode))
        return open_fail(p, fail(ROM_E_IO, "pool %s is not a regular file", path));
    if (flock(p->fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        struct rom_hdr h;
        unsigned long long pid = 0;
        if (fstat(p->fd, &st) == 0 && read_hdr(p->fd, &h, (uint64_t)st.st_size) == 0 &&
            h.magic == POOL_MAGIC)
            pid = h.holder_pid;
        if (e == EWOULDBLOCK) {
            if (pid == (unsigned long long)getpid())
                return open_fail(p, fail(ROM_E_LOCKED,
                                         "pool %s is already open in this process: close it "
                                         "first", path));
            if (pid)
                return open_fail(p, fail(ROM_E_LOCKED,
                                         "pool %s is in use by another process (pid %llu)",
                                         path, pid));
            return open_fail(p, fail(ROM_E_LOCKED, "pool %s is in use by another opener",
                                     path));
        }
        return open_fail(p, fail(ROM_E_IO, "cannot lock pool %s: %s", path, strerror(e)));
    }
    if (fstat(p->fd, &st) != 0)
        return open_fail(p, fail(ROM_E_IO, "cannot stat pool %s: %s", path, strerror(errno)));
    uint64_t fsize = (uint64_t)st.st_size;
    struct rom_hdr h;
    if (read_hdr(p->fd, &h, fsize) != 0)
        return open_fail(p, fail(ROM_E_IO, "cannot read pool %s: %s", path, strerror(errno)));

    /* Decide from the header copy alone (nothing is mapped or written yet) whether this is an
     * empty file, a creation that never finished, a damaged pool or a foreign file: only the
     * first two are ever (re)created without create=force. */
    int creating = 0;
    static const char force_hint[] = "; to overwrite it with a new empty pool, open it once "
                                     "with create=force (spec option ?create=force)";
    if (create == ROM_CREATE_FORCE) {
        if (!size) {
            if (fsize < ROM_MIN_POOL || fsize > ROM_MAX_POOL)
                return open_fail(p, fail(ROM_E_INVAL, "creating pool %s needs a size", path));
            size = align_up(fsize, PAGE);
        }
        creating = ROM_CREATED;
    } else if (fsize == 0) {
        if (!create)
            return open_fail(p, fail(ROM_E_BADMAGIC,
                                     "%s is not a plinius pool (empty file)", path));
        if (!size)
            return open_fail(p, fail(ROM_E_INVAL, "creating pool %s needs a size", path));
        creating = ROM_CREATED;
    } else if (h.magic != POOL_MAGIC) {
        char why[160];
        if (fsize >= 16 && h.magic == 0 && h.creating == CREATING_MAGIC) {
            if (!unfinished_is_pristine(p->fd, fsize, &h, why, sizeof why))
                return open_fail(p, fail(ROM_E_CORRUPT,
                                         "pool %s is corrupt: it has no magic but is not an "
                                         "unfinished creation (%s)%s",
                                         path, why, force_hint));
            if (!create)
                return open_fail(p, fail(ROM_E_BADMAGIC,
                                         "%s is an unfinished pool creation (opened without "
                                         "create)", path));
            creating = ROM_RECREATED; /* a creation that died before writing the magic */
            if (!size)
                size = fsize <= ROM_MAX_POOL ? align_up(fsize, PAGE) : 0;
            if (size < ROM_MIN_POOL)
                return open_fail(p, fail(ROM_E_INVAL, "pool %s is an unfinished creation of "
                                                      "unknown size: open it with a size",
                                         path));
        } else if (fsize >= sizeof h && h.version >= 1 && h.version <= ROM_VERSION &&
                   h.hdr_size == sizeof h && h.main_off == HDR_PAGE) {
            return open_fail(p, fail(ROM_E_CORRUPT,
                                     "pool %s is corrupt: its magic is 0x%llx, not 0x%llx, but "
                                     "the rest of its header is a pool's; refusing to touch it%s",
                                     path, (unsigned long long)h.magic,
                                     (unsigned long long)POOL_MAGIC, force_hint));
        } else {
            return open_fail(p, fail(ROM_E_BADMAGIC,
                                     "%s is not a plinius pool (bad magic); refusing to touch "
                                     "it%s",
                                     path, force_hint));
        }
    } else {
        if (fsize < sizeof h)
            return open_fail(p, fail(ROM_E_TRUNCATED,
                                     "pool %s is truncated: %llu bytes, shorter than its header",
                                     path, (unsigned long long)fsize));
        if (h.version > ROM_VERSION)
            return open_fail(p, fail(ROM_E_VERSION,
                                     "pool %s has format version %u, this plinius reads up to "
                                     "%u: upgrade plinius",
                                     path, h.version, ROM_VERSION));
        const char *bad = header_problem(&h);
        if (bad)
            return open_fail(p, fail(ROM_E_CORRUPT,
                                     "pool %s is corrupt: inconsistent header (%s)", path, bad));
        if (fsize < h.pool_size)
            return open_fail(p, fail(ROM_E_TRUNCATED,
                                     "pool %s is truncated: %llu bytes, created with %llu",
                                     path, (unsigned long long)fsize,
                                     (unsigned long long)h.pool_size));
        if (fsize > h.pool_size)
            return open_fail(p, fail(ROM_E_CORRUPT,
                                     "pool %s is corrupt: %llu bytes, but was created with %llu",
                                     path, (unsigned long long)fsize,
                                     (unsigned long long)h.pool_size));
        if (size && size != h.pool_size)
            return open_fail(p, fail(ROM_E_SIZE,
                                     "pool %s was created with %llu bytes, not %llu: pools "
                                     "cannot be resized; open it without a size or use a new "
                                     "file",
                                     path, (unsigned long long)h.pool_size,
                                     (unsigned long long)size));
        size = h.pool_size;
    }
    if (creating) {
        /* A forced creation first empties the file: a crash from here on leaves an empty file
         * or an unfinished (pristine) one, never old data under a creating-stamp. */
        if (creating == ROM_CREATED && fsize && (ftruncate(p->fd, 0) != 0 || fsync(p->fd) != 0)) {
            int e = errno;
            return open_fail(p, fail(ROM_E_IO, "cannot empty pool %s: %s", path, strerror(e)));
        }
        /* The stamp goes to the file before it is sized or mapped: from here on a crash, even
         * a power failure, leaves a file recognisable as an unfinished pool, never a file of
         * zeros that could not be told from someone else's. */
        const uint64_t stamp[2] = {0, CREATING_MAGIC};
        if (pwrite(p->fd, stamp, sizeof stamp, 0) != (ssize_t)sizeof stamp ||
            fdatasync(p->fd) != 0) {
            int e = errno;
            return open_fail(p, fail(ROM_E_IO, "cannot write pool %s: %s", path, strerror(e)));
        }
        if (ftruncate(p->fd, (off_t)size) != 0) {
            int e = errno;
            return open_fail(p, fail(e == ENOSPC || e == EFBIG ? ROM_E_NOSPACE : ROM_E_IO,
                                     "cannot size pool %s to %llu bytes: %s", path,
                                     (unsigned long long)size, strerror(e)));
        }
    }
    /* Every page of the file gets its blocks now, for an existing pool too (a sparse copy):
     * a hole that cannot be filled later would be a SIGBUS at a store, not an error here. */
    int e = 0;
    if (creating)
        e = posix_fallocate(p->fd, 0, (off_t)size);
    else if (fallocate(p->fd, 0, 0, (off_t)size) != 0) /* no slow emulation: EOPNOTSUPP is ok */
        e = errno;
    if (e == ENOSPC || e == EFBIG || e == EDQUOT) {
        if (creating == ROM_CREATED && ftruncate(p->fd, 0) != 0) { /* leave it empty */
        }
        fsync(p->fd);
        return open_fail(p, fail(ROM_E_NOSPACE, "no room for a %llu-byte pool at %s: %s",
                                 (unsigned long long)size, path, strerror(e)));
    }
    if (fstat(p->fd, &st) != 0 || (uint64_t)st.st_size != size) /* changed under the lock */
        return open_fail(p, fail(ROM_E_TRUNCATED, "pool %s changed size while being opened",
                                 path));
    p->map_size = size;
    void *m = mmap(NULL, size, PROT_READ | PROT_WRITE,
                   MAP_SHARED_VALIDATE | MAP_SYNC | MAP_POPULATE, p->fd, 0);
    if (m != MAP_FAILED) {
        p->real_pm = 1; /* MAP_SYNC works only on DAX: flushes reach the media themselves */
    } else {
        m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, p->fd, 0);
        if (m == MAP_FAILED) {
            int e2 = errno;
            return open_fail(p, fail(ROM_E_IO, "cannot map pool %s: %s", path, strerror(e2)));
        }
    }
    p->base = m;
    set_layout(p);
    p->nwords = (p->region / LINE + 63) / 64;
    p->bitmap = calloc(p->nwords, sizeof(uint64_t));
    p->cap_runs = 1024;
    p->runs = malloc(p->cap_runs * sizeof *p->runs);
    p->cap_sync = 256;
    p->sync = malloc(p->cap_sync * sizeof *p->sync);
    if (!p->bitmap || !p->runs || !p->sync)
        return open_fail(p, fail(ROM_E_IO, "out of memory opening pool %s", path));
    sim_arm_from_env(p); /* before creation and recovery, so crashes there can be tested */
    if (creating) {
        create_pool(p);
        p->opened_as = creating;
    } else {
        /* the header copy was validated above: use it, not the mapping, from here on */
        p->used = h.used;
        p->opened_as = ROM_OPENED;
        /* what recovery copies from must be sound before it overwrites the other copy */
        rc = check_meta(p, h.state == ROM_MUTATING ? p->back : p->main);
        if (rc)
            return open_fail(p, rc);
        recover(p, h.state, h.used);
        if (memcmp(p->main, p->back, META_SIZE) != 0)
            return open_fail(p, corrupt(p, "the committed copy of the allocator metadata and "
                                           "root table (back) differs from main"));
        if (h.creating) { /* pools of older versions kept their creating-stamp */
            p->hdr->creating = 0;
            pm_flush(p, &p->hdr->creating, 8);
            pm_fence(p);
        }
    }
    p->hdr->holder_pid = (uint64_t)getpid();
    *out = p;
    return ROM_OK;
}

int rom_close(rom_pool *p) {
    if (p->closed)
        return ROM_OK;
    if (p->in_txn)
        abort_txn(p);
    p->hdr->holder_pid = 0;
    pm_fence(p); /* orders the last IDLE (and, in msync mode, writes the pending pages) */
    if (g_sim.pool == p)
        rom_sim_disarm();
    flock(p->fd, LOCK_UN);
    close(p->fd);
    p->fd = -1;
    p->closed = 1;
    return ROM_OK;
}

void rom_release(rom_pool *p) {
    if (!p)
        return;
    rom_close(p);
    munmap(p->base, p->map_size);
    pthread_mutex_destroy(&p->lock);
    free(p->bitmap);
    free(p->runs);
    free(p->sync);
    free(p->path);
    free(p);
}

uint8_t *rom_base(rom_pool *p) { return p->base; }

void rom_get_stats(rom_pool *p, rom_stats *s) {
    memset(s, 0, sizeof *s);
    s->pool_size = p->map_size;
    s->region_size = p->region;
    s->main_off = HDR_PAGE;
    s->back_off = HDR_PAGE + p->region;
    s->meta_size = META_SIZE;
    s->used = p->used;
    s->top = LD(p->meta->top);
    s->free_bytes = avail(p);
    s->alloc_bytes = p->meta->alloc_bytes;
    s->nallocs = p->meta->nallocs;
    s->commits = p->hdr->commits;
    s->aborts = p->aborts;
    s->fences = p->fences;
    s->flushed_lines = p->flushed_lines;
    s->last_log_lines = p->last_log_lines;
    s->last_copy_bytes = p->last_copy_bytes;
    s->last_fences = p->last_fences;
    s->full_copies = p->full_copies;
    s->state = (int32_t)p->hdr->state;
    s->mode = p->mode;
    s->flush = p->flush;
    s->real_pm = p->real_pm;
    s->opened_as = p->opened_as;
    s->in_txn = p->in_txn;
    s->dev_on = p->dev_on;
    s->dev_write_bytes = p->dev_write_bytes;
    s->dev_write_wait_ns = p->dev_write_wait_ns;
    s->dev_read_bytes = p->dev_read_bytes;
    s->dev_read_wait_ns = p->dev_read_wait_ns;
}

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
