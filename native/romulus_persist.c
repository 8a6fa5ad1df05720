/*
 * romulus_persist.c -- making stores persistent (romulus.h, DURABILITY MODES): the flush
 * instruction chosen by cpuid (or PLINIUS_PM_FLUSH), clwb / clflushopt / clflush per line and
 * sfence, msync in msync mode, the non-temporal copy, big flushes and copies split over helper
 * threads, and the tuning the environment gives at open. It knows nothing of transactions: the
 * protocol (romulus_txn.c) decides what to flush and where the fences go.
 *
 * Each flush and fence is an event for the crash simulator, reported through pm_hooks (NULL
 * until a test arms it): this file never names the simulator, the simulator fills the table.
 */
#include "romulus_internal.h"

#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#if ROM_X86
#include <cpuid.h>
#include <emmintrin.h> /* SSE2 is baseline on x86-64: movntdq needs no -march */
#endif

struct pm_hooks pm_hooks; /* all NULL: no simulator armed (romulus_internal.h) */

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

/* ---------------------------------------------------------------------------------------------
 * The environment, read at open (romulus.h, TUNING): every PLINIUS_PM_* variable of this layer
 * is parsed here and nowhere else
 * ------------------------------------------------------------------------------------------- */

static int parse_name(const char *s, const char *(*namer)(int), int lo, int hi) {
    for (int i = lo; i <= hi; i++)
        if (strcmp(s, namer(i)) == 0)
            return i;
    return -1;
}

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

void persist_init(rom_pool *p) {
    const char *nt = getenv("PLINIUS_PM_NT_MIN");
    p->nt_min = (nt && *nt) ? strtoull(nt, NULL, 10) : NT_MIN_DEFAULT;
    const char *thr = getenv("PLINIUS_PM_THREADS");
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    p->nthreads = (thr && *thr) ? atoi(thr) : (int)(ncpu > 0 ? ncpu : 1);
    if (p->nthreads < 1)
        p->nthreads = 1;
    if (p->nthreads > PAR_MAX)
        p->nthreads = PAR_MAX;
}

/* ---------------------------------------------------------------------------------------------
 * The raw primitives, callable from helper threads (no pool state touched)
 * ------------------------------------------------------------------------------------------- */

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

/* a pool armed for simulated crashes flushes on one thread: its events keep their order */
static void par_run(rom_pool *p, int op, uint8_t *dst, const uint8_t *src, uint64_t n) {
    int nt = (n >= PAR_MIN && pm_hooks.pool != p) ? p->nthreads : 1;
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
 * Flush, fence and persistent copy of a pool
 * ------------------------------------------------------------------------------------------- */

/* msync mode: remember the dirty pages; the fence msync()s them */
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

/* Write back [addr, addr+len): from the line holding addr (rounded DOWN) to the one holding the
 * last byte. */
void pm_flush(rom_pool *p, const void *addr, uint64_t len) {
    if (UNLIKELY(len == 0))
        return;
    if (UNLIKELY(pm_hooks.pool == p))
        pm_hooks.flush(p, addr, len);
    uintptr_t a = (uintptr_t)addr & ~(uintptr_t)(LINE - 1);
    uintptr_t end = (uintptr_t)addr + len;
    uint64_t lines = (end - a + LINE - 1) / LINE;
    p->flushed_lines += lines;
    dev_charge(p, lines * LINE);
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

void flush_lines_now(rom_pool *p, const void *addr, uint64_t len) {
    if (len == 0 || p->mode != ROM_MODE_PMEM)
        return;
    flush_raw(p->flush, (uintptr_t)addr, (uintptr_t)addr + len);
#if ROM_X86
    __asm__ volatile("sfence" ::: "memory"); /* the write-backs done before the job is */
#endif
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
    if (UNLIKELY(pm_hooks.pool == p) && pm_hooks.fence(p))
        return; /* fault injection: this fence is skipped */
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
        dev_charge(p, n);
        if (UNLIKELY(pm_hooks.pool == p))
            pm_hooks.flush(p, dst, n);
        return;
    }
    if (n >= PAR_MIN)
        par_run(p, OP_MEMCPY, dst, src, n);
    else
        memcpy(dst, src, n);
    pm_flush(p, dst, n);
}
