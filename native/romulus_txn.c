/*
 * romulus_txn.c -- the engine's core: errors, the flush instruction, flush and fence (with the
 * device model they charge), the volatile log and the transactions with their four fences.
 * The protocol and the pool layout are documented in romulus.h; comments here say why the code
 * looks the way it does.
 */
#include "romulus_internal.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#if ROM_X86
#include <cpuid.h>
#include <emmintrin.h> /* SSE2 is baseline on x86-64: movntdq needs no -march */
#endif

/* ---------------------------------------------------------------------------------------------
 * Errors
 * ------------------------------------------------------------------------------------------- */

static __thread char g_err[768];

int fail(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return code;
}

const char *rom_last_error(void) { return g_err; }

int corrupt(rom_pool *p, const char *fmt, ...) {
    char detail[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    snprintf(g_err, sizeof g_err, "pool %s is corrupt: %s", p->path, detail);
    return ROM_E_CORRUPT;
}

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

static void par_run(rom_pool *p, int op, uint8_t *dst, const uint8_t *src, uint64_t n) {
    int nt = (n >= PAR_MIN && sim_pool != p) ? p->nthreads : 1;
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

uint64_t mono_ns(void) {
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
void pm_flush(rom_pool *p, const void *addr, uint64_t len) {
    if (UNLIKELY(len == 0))
        return;
    if (UNLIKELY(sim_pool == p))
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

void pm_fence(rom_pool *p) {
    p->fences++;
    p->txn_fences++;
    if (UNLIKELY(sim_pool == p) && sim_fence(p))
        return;
    hw_fence(p);
    if (UNLIKELY(p->dev_on))
        dev_drain(p); /* after the real fence: the model only ever adds time */
}

/* Copy and make persistent (after the next fence). In pmem mode the copy streams past the cache
 * with non-temporal stores, which need no flush and no read-for-ownership of the destination
 * (measured faster than copy + clwb at every size here); src/dst/n are line-aligned. */
void copy_persist(rom_pool *p, uint8_t *dst, const uint8_t *src, uint64_t n, int nt) {
    if (ROM_X86 && nt && p->mode == ROM_MODE_PMEM) {
        if (n >= PAR_MIN)
            par_run(p, OP_NTCOPY, dst, src, n);
        else
            nt_copy_raw(dst, src, n);
        p->flushed_lines += n / LINE;
        if (UNLIKELY(p->dev_on))
            p->dev_pending += n;
        if (UNLIKELY(sim_pool == p))
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

/* ---------------------------------------------------------------------------------------------
 * Transactions
 * ------------------------------------------------------------------------------------------- */

int check_txn(rom_pool *p) {
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
    /* back must be complete before MUTATING can make recovery copy it over main */
    bg_wait(p, 1);
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

static int bg_post(rom_pool *p);

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
    uint64_t bytes = p->overflow ? used : p->log_lines * LINE;
    if (p->commit_bg && bytes >= p->bg_min && bg_post(p))
        return ROM_OK; /* durable; the copier does the rest and ends the log */
    copy_to_back(p, 0);
    end_txn(p);
    return ROM_OK;
}

/* ---------------------------------------------------------------------------------------------
 * The copier thread (romulus.h, BACKGROUND COMMIT)
 * ------------------------------------------------------------------------------------------- */

void bg_init(rom_pool *p) {
    pthread_mutex_init(&p->bg_mu, NULL);
    pthread_cond_init(&p->bg_cv, NULL);
    const char *e = getenv("PLINIUS_PM_COMMIT");
    p->commit_bg = !(e && strcmp(e, "sync") == 0);
    e = getenv("PLINIUS_PM_BG_MIN");
    p->bg_min = (e && *e) ? strtoull(e, NULL, 10) : BG_MIN_DEFAULT;
    e = getenv("PLINIUS_ROMULUS_BG_HOLD"); /* test hooks, romulus_sim.h */
    p->bg_hold = e && *e && strcmp(e, "0") != 0;
    e = getenv("PLINIUS_ROMULUS_BG_DELAY_MS");
    p->bg_delay_ms = (e && *e) ? (uint32_t)strtoul(e, NULL, 10) : 0;
}

static void *bg_main(void *arg) {
    rom_pool *p = arg;
    sigset_t all; /* signals belong to the application's threads */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    pthread_mutex_lock(&p->bg_mu);
    for (;;) {
        while (!p->bg_stop && (!p->bg_pending || (p->bg_hold && !p->bg_waiters)))
            pthread_cond_wait(&p->bg_cv, &p->bg_mu);
        if (!p->bg_pending)
            break; /* stopped with nothing to copy */
        pthread_mutex_unlock(&p->bg_mu);
        uint64_t t0 = mono_ns();
        copy_to_back(p, 1);
        p->last_fences = p->txn_fences;
        log_reset(p);
        uint64_t ns = mono_ns() - t0;
        pthread_mutex_lock(&p->bg_mu);
        p->bg_copies++;
        p->bg_copy_ns += ns;
        p->last_bg_copy_ns = ns;
        p->bg_pending = 0;
        pthread_cond_broadcast(&p->bg_cv);
    }
    pthread_mutex_unlock(&p->bg_mu);
    return NULL;
}

/* hand the copy after FENCE 3 to the copier and end the transaction; 0: no copier (do it here) */
static int bg_post(rom_pool *p) {
    pthread_mutex_lock(&p->bg_mu);
    if (!p->bg_started) {
        if (pthread_create(&p->bg_thread, NULL, bg_main, p) != 0) {
            pthread_mutex_unlock(&p->bg_mu);
            return 0;
        }
        p->bg_started = 1;
        p->bg_pid = getpid();
    }
    p->last_log_lines = p->log_lines;
    p->in_txn = 0;
    p->bg_pending = 1;
    pthread_cond_broadcast(&p->bg_cv);
    pthread_mutex_unlock(&p->bg_mu);
    pthread_mutex_unlock(&p->lock);
    return 1;
}

uint64_t bg_wait(rom_pool *p, int count) {
    uint64_t waited = 0;
    pthread_mutex_lock(&p->bg_mu);
    /* a forked child has no copier (the parent's finishes the copy in the shared mapping):
     * waiting there would never end */
    if (p->bg_pending && p->bg_pid == getpid()) {
        uint64_t t0 = mono_ns();
        p->bg_waiters++;
        pthread_cond_broadcast(&p->bg_cv); /* a held copier (test hook) starts now */
        while (p->bg_pending)
            pthread_cond_wait(&p->bg_cv, &p->bg_mu);
        p->bg_waiters--;
        waited = mono_ns() - t0;
        if (count)
            p->bg_wait_ns += waited;
    }
    pthread_mutex_unlock(&p->bg_mu);
    return waited;
}

void bg_shutdown(rom_pool *p) {
    bg_wait(p, 1);
    pthread_mutex_lock(&p->bg_mu);
    int started = p->bg_started && p->bg_pid == getpid(); /* not a forked child's */
    p->bg_stop = 1;
    p->bg_started = 0;
    pthread_cond_broadcast(&p->bg_cv);
    pthread_mutex_unlock(&p->bg_mu);
    if (started)
        pthread_join(p->bg_thread, NULL);
    pthread_mutex_lock(&p->bg_mu);
    p->bg_stop = 0; /* a later commit (none after close) could start a new copier */
    pthread_mutex_unlock(&p->bg_mu);
}

uint64_t rom_wait_copy(rom_pool *p) { return bg_wait(p, 0); }

int rom_set_commit(rom_pool *p, int commit, uint64_t bg_min) {
    if (commit != ROM_COMMIT_SYNC && commit != ROM_COMMIT_BACKGROUND)
        return fail(ROM_E_INVAL, "unknown commit mode %d: use sync (0) or background (1)",
                    commit);
    if (p->closed)
        return fail(ROM_E_CLOSED, "pool %s is closed", p->path);
    if (p->in_txn)
        return fail(ROM_E_INTXN, "pool %s: the commit mode cannot change inside a transaction",
                    p->path);
    bg_wait(p, 0);
    p->commit_bg = commit == ROM_COMMIT_BACKGROUND;
    if (bg_min != UINT64_MAX)
        p->bg_min = bg_min;
    return ROM_OK;
}

void abort_txn(rom_pool *p) {
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

/* ---------------------------------------------------------------------------------------------
 * Mode and flush instruction at open
 * ------------------------------------------------------------------------------------------- */

int resolve_env(int *mode, int *flush) {
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
