/*
 * romulus_copier.c -- the pool's copier thread (romulus.h, BACKGROUND COMMIT). A commit whose
 * copy to back is big enough hands the rest of its work (a job of romulus_txn.c: the copy
 * main -> back, FENCE 4, IDLE, the log reset) to this thread after FENCE 3 and returns. Whatever
 * needs back waits for it here (bg_wait). This file runs the job it is given and knows nothing
 * of the protocol: the crash order is romulus_txn.c's alone.
 */
#include "romulus_internal.h"

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
