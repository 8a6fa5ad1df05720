/*
 * romulus_copier.c -- the pool's copier thread (romulus.h, BACKGROUND COMMIT). A commit whose
 * copy to back is big enough hands the rest of its work (a job of romulus_txn.c: the copy
 * main -> back, FENCE 4, IDLE, the log reset) to this thread after FENCE 3 and returns. Whatever
 * needs back waits for it here (bg_wait). This file runs the job it is given and knows nothing
 * of the protocol: the crash order is romulus_txn.c's alone.
 */
#include "romulus_internal.h"

#include <sched.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

/* the commit mode and the copier's test hooks (romulus_sim.h), from the environment at open */
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
    pthread_mutex_init(&p->rd_mu, NULL);
    pthread_cond_init(&p->rd_cv, NULL);
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
        p->bg_job(p); /* the copy, FENCE 4, IDLE and the log reset (romulus_txn.c) */
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

/* Hand job (the commit's work after FENCE 3) to the copier and end the transaction: the pool
 * lock is released, the copier owns the log until the job is done. 0: no copier could be
 * started, nothing was handed over (the caller does the job itself). */
int bg_post(rom_pool *p, void (*job)(rom_pool *p)) {
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
    p->bg_job = job;
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

/* ---------------------------------------------------------------------------------------------
 * The reader thread (romulus.h, READ-AHEAD): one plain copy out of the mapping at a time into
 * the caller's private memory. It touches no pool state but the range it is given: reads of
 * main never wait for a transaction, reads of back wait for the copier (rom_read_start).
 * ------------------------------------------------------------------------------------------- */

/* How long the reader, and a waiter, poll before they block. A restore hands the reader a
 * batch every few hundred microseconds: blocking between batches would make every hand-off a
 * futex wake-up, which the scheduler serves by running the woken thread on the waker's CPU
 * (wake-affine), i.e. not beside it. Polling keeps both on their own cores; it ends after
 * this long without work, so an idle pool costs nothing. */
#define RD_SPIN_NS 1000000u

/* one step of a poll: a pause, and with yield every 64th step the CPU offered to whoever
 * else is runnable here (the thread polled for, when it shares this CPU). The reader polls
 * without yielding: a yield would hand its CPU to another process for a whole time slice. */
static void cpu_relax(unsigned k, int yield) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    if (yield && k % 64 == 0)
        sched_yield();
}

/* A job is cut into pieces the reader and the waiter both claim, one at a time, so a waiter
 * never waits for more than the piece the reader is running: on a busy machine, where the
 * reader may not run for a while, the waiter does the rest itself (no worse than copying
 * inline); on an idle second core the reader does most of it beside the caller. */
#define RD_PIECE (256u << 10)
/* A waiter that waited longer than RD_LATE_NS for the reader's last piece (~25 us of work) had
 * a reader that was not running: the next RD_BACKOFF jobs are left to the caller (inline),
 * then the reader is tried again. On a machine with a free core this never triggers. */
#define RD_LATE_NS 300000u
#define RD_BACKOFF 16u

/* rd_pending: RD_IDLE (no job) or RD_POSTED (a job whose pieces are not all done); it changes
 * only under rd_mu, and is polled without it */
#define RD_IDLE 0
#define RD_POSTED 1

static void rd_run(rom_pool *p, int op, uint8_t *dst, const uint8_t *src, uint64_t n) {
    if (op == RD_FLUSH)
        flush_lines_now(p, dst, n);
    else
        memcpy(dst, src, n);
}

/* claim the next piece of job j (not of a later one); 0: none left */
static int rd_claim(rom_pool *p, const struct rd_job *j, uint64_t *idx) {
    uint64_t v = __atomic_load_n(&p->rd_next, __ATOMIC_ACQUIRE);
    while ((uint32_t)(v >> 32) == j->gen && (v & 0xffffffffu) < j->pieces) {
        if (__atomic_compare_exchange_n(&p->rd_next, &v, v + 1, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE)) {
            *idx = v & 0xffffffffu;
            return 1;
        }
    }
    return 0;
}

/* run piece i of job j (rd_mu not held); the last piece done ends the job */
static void rd_piece(rom_pool *p, const struct rd_job *j, uint64_t i) {
    uint64_t off = i * RD_PIECE, k = j->n - off < RD_PIECE ? j->n - off : RD_PIECE;
    rd_run(p, j->op, j->dst + off, j->src ? j->src + off : NULL, k);
    if (__atomic_add_fetch(&p->rd_done, 1, __ATOMIC_ACQ_REL) == j->pieces) {
        pthread_mutex_lock(&p->rd_mu);
        __atomic_store_n(&p->rd_pending, RD_IDLE, __ATOMIC_RELEASE);
        if (p->rd_sleepers)
            pthread_cond_broadcast(&p->rd_cv);
        pthread_mutex_unlock(&p->rd_mu);
    }
}

/* a job the reader has not looked at yet: posted, and of another generation than its last */
static int rd_new_job(rom_pool *p, uint32_t last) {
    return __atomic_load_n(&p->rd_pending, __ATOMIC_ACQUIRE) == RD_POSTED &&
           __atomic_load_n(&p->rd_job.gen, __ATOMIC_ACQUIRE) != last;
}

static void *rd_main(void *arg) {
    rom_pool *p = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    uint32_t last = 0;
    pthread_mutex_lock(&p->rd_mu);
    for (;;) {
        while (!p->rd_stop && !(p->rd_pending == RD_POSTED && p->rd_job.gen != last))
            pthread_cond_wait(&p->rd_cv, &p->rd_mu);
        if (p->rd_stop)
            break;
        struct rd_job j = p->rd_job;
        last = j.gen;
        pthread_mutex_unlock(&p->rd_mu);
        uint64_t t0 = mono_ns(), i;
        int did = 0;
        while (rd_claim(p, &j, &i)) {
            rd_piece(p, &j, i);
            did = 1;
        }
        uint64_t ns = mono_ns() - t0;
        pthread_mutex_lock(&p->rd_mu);
        if (did) {
            p->rd_copies++;
            p->rd_copy_ns += ns;
        }
        /* poll for the next job a while (see RD_SPIN_NS) */
        p->rd_spinning = 1;
        pthread_mutex_unlock(&p->rd_mu);
        uint64_t until = mono_ns() + RD_SPIN_NS;
        unsigned k = 0;
        while (!rd_new_job(p, last) && !__atomic_load_n(&p->rd_stop, __ATOMIC_ACQUIRE)) {
            cpu_relax(++k, 0);
            if (k % 256 == 0 && mono_ns() > until)
                break;
        }
        pthread_mutex_lock(&p->rd_mu);
        p->rd_spinning = 0; /* from here a post wakes the reader (checked above, under rd_mu) */
    }
    pthread_mutex_unlock(&p->rd_mu);
    return NULL;
}

/* With rd_mu held: until the job in flight is done; ns waited. The waiter runs every piece
 * the reader has not claimed, then polls a while for the reader's last one, then blocks. */
static uint64_t rd_drain(rom_pool *p) {
    if (p->rd_pending == RD_IDLE)
        return 0;
    uint64_t t0 = mono_ns(), i, mine = 0;
    struct rd_job j = p->rd_job;
    pthread_mutex_unlock(&p->rd_mu);
    while (rd_claim(p, &j, &i)) {
        rd_piece(p, &j, i);
        mine++;
    }
    unsigned k = 0;
    uint64_t t1 = mono_ns();
    int shared = p->rd_avoid < 0; /* the reader may be queued on this very CPU */
    while (__atomic_load_n(&p->rd_pending, __ATOMIC_ACQUIRE) != RD_IDLE) {
        cpu_relax(++k, shared);
        if (k % 256 == 0 && mono_ns() - t0 > RD_SPIN_NS)
            break;
    }
    pthread_mutex_lock(&p->rd_mu);
    p->rd_taken_back += mine;
    p->rd_sleepers++;
    while (p->rd_pending != RD_IDLE)
        pthread_cond_wait(&p->rd_cv, &p->rd_mu);
    p->rd_sleepers--;
    uint64_t t2 = mono_ns();
    if (t2 - t1 > RD_LATE_NS)
        p->rd_backoff = RD_BACKOFF;
    return t2 - t0;
}

/* With rd_mu held: keep the reader off the CPU the poster runs on. A reader woken by the
 * poster is queued on the poster's CPU (wake-affine) and, polling there, is not moved soon
 * enough: it would run only when the poster waits, i.e. never beside it. Measured on a 2-vCPU
 * VM: with the reader on the poster's CPU the poster ran 10 of every 16 pieces itself. One
 * affinity call when the poster's CPU changes; none on a process confined to one CPU. */
static void rd_place(rom_pool *p) {
    int cpu = sched_getcpu();
    if (cpu < 0 || cpu == p->rd_avoid)
        return;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0 || !CPU_ISSET(cpu, &set))
        return;
    CPU_CLR(cpu, &set);
    if (CPU_COUNT(&set) == 0)
        return;
    if (pthread_setaffinity_np(p->rd_thread, sizeof set, &set) == 0)
        p->rd_avoid = cpu;
}

int rd_post(rom_pool *p, int op, uint8_t *dst, const uint8_t *src, uint64_t n) {
    pthread_mutex_lock(&p->rd_mu);
    p->rd_wait_ns += rd_drain(p);
    if (!p->rd_started || p->rd_pid != getpid()) {
        int forked = p->rd_started; /* the parent's reader: not ours to start again */
        if (forked || pthread_create(&p->rd_thread, NULL, rd_main, p) != 0) {
            pthread_mutex_unlock(&p->rd_mu);
            return 0;
        }
        p->rd_started = 1;
        p->rd_pid = getpid();
        p->rd_avoid = -1;
    }
    if (p->rd_backoff) {
        p->rd_backoff--;
        p->rd_inline++;
        pthread_mutex_unlock(&p->rd_mu);
        return 0; /* the caller runs it */
    }
    rd_place(p);
    if (n == 0) {
        pthread_mutex_unlock(&p->rd_mu);
        return 1; /* nothing to do: done */
    }
    uint32_t gen = p->rd_job.gen + 1;
    if (gen == 0)
        gen = 1; /* 0 is the reader's "none yet" */
    p->rd_job = (struct rd_job){gen, op, dst, src, n, (n + RD_PIECE - 1) / RD_PIECE};
    __atomic_store_n(&p->rd_done, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&p->rd_next, (uint64_t)gen << 32, __ATOMIC_RELEASE);
    __atomic_store_n(&p->rd_pending, RD_POSTED, __ATOMIC_RELEASE);
    if (!p->rd_spinning)
        pthread_cond_broadcast(&p->rd_cv);
    pthread_mutex_unlock(&p->rd_mu);
    return 1;
}

void rd_finish(rom_pool *p) {
    pthread_mutex_lock(&p->rd_mu);
    if (p->rd_pid == getpid())
        p->rd_wait_ns += rd_drain(p);
    pthread_mutex_unlock(&p->rd_mu);
}

int rom_read_start(rom_pool *p, void *dst, uint64_t off, uint64_t n, int committed) {
    if (p->closed)
        return fail(ROM_E_CLOSED, "pool %s is closed", p->path);
    if (off > p->region || n > p->region - off)
        return fail(ROM_E_RANGE, "read [%llu, +%llu) is outside the %llu-byte region",
                    (unsigned long long)off, (unsigned long long)n,
                    (unsigned long long)p->region);
    if (committed)
        bg_wait(p, 0); /* back is the last committed state once the copier is done */
    const uint8_t *src = (committed ? p->back : p->main) + off;
    if (!rd_post(p, RD_COPY, dst, src, n))
        memcpy(dst, src, n); /* no reader here: copy inline, done when this returns */
    return ROM_OK;
}

uint64_t rom_read_wait(rom_pool *p) {
    pthread_mutex_lock(&p->rd_mu);
    uint64_t waited = p->rd_pid == getpid() ? rd_drain(p) : 0;
    p->rd_wait_ns += waited;
    pthread_mutex_unlock(&p->rd_mu);
    return waited;
}

void rd_shutdown(rom_pool *p) {
    pthread_mutex_lock(&p->rd_mu);
    int ours = p->rd_started && p->rd_pid == getpid();
    if (ours)
        rd_drain(p);
    __atomic_store_n(&p->rd_stop, 1, __ATOMIC_RELEASE);
    p->rd_started = 0;
    pthread_cond_broadcast(&p->rd_cv);
    pthread_mutex_unlock(&p->rd_mu);
    if (ours)
        pthread_join(p->rd_thread, NULL);
    pthread_mutex_lock(&p->rd_mu);
    p->rd_stop = 0;
    pthread_mutex_unlock(&p->rd_mu);
}
