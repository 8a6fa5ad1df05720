/*
 * romulus_sim.c -- simulated crashes at the Nth flush/fence event (romulus_sim.h): test hooks,
 * not part of the engine's API. One armed pool per process; off unless armed, and then the
 * engine's only cost is the UNLIKELY(pm_hooks.pool == p) branch at each flush and fence.
 *
 * The engine never calls this file by name: at start-up (a constructor, when the module is
 * loaded) it fills the table pm_hooks (romulus_internal.h), which the flush primitives and the
 * pool's open and close call through. This file calls down only (errors, the copier's wait).
 */
#include "romulus_sim.h"
#include "romulus_internal.h"

#include <string.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------------------------
 * Simulated crashes (test hooks; one armed pool per process, off unless armed)
 * ------------------------------------------------------------------------------------------- */

struct pend {
    uint64_t off; /* file offset of the line */
    uint8_t data[LINE];
};

static struct {
    uint64_t events, crash_at, rng;
    int kind;
    uint32_t skip_fences;
    uint8_t *shadow; /* power kind: what has reached persistence */
    struct pend *pend;
    size_t npend, cap_pend;
} g_sim;

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
    bg_wait(p, 0); /* the pool is persistent when armed: no copy in flight */
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
    pm_hooks.pool = p; /* from now on every flush and fence of p is an event */
    return ROM_OK;
}

void rom_sim_disarm(void) {
    if (pm_hooks.pool)
        bg_wait(pm_hooks.pool, 0); /* the copier may still be counting events */
    free(g_sim.shadow);
    g_sim.shadow = NULL;
    g_sim.npend = 0;
    pm_hooks.pool = NULL;
    g_sim.crash_at = 0;
    g_sim.skip_fences = 0;
}

uint64_t rom_sim_events(void) {
    if (pm_hooks.pool)
        bg_wait(pm_hooks.pool, 0); /* count the copier's events too */
    return g_sim.events;
}

int rom_sim_bg(rom_pool *p, int hold, uint32_t delay_ms) {
    bg_wait(p, 0);
    pthread_mutex_lock(&p->bg_mu);
    p->bg_hold = hold != 0;
    p->bg_delay_ms = delay_ms;
    pthread_mutex_unlock(&p->bg_mu);
    return ROM_OK;
}

/* the pool goes away (closed, or its open failed): disarm if it is the armed one */
static void sim_forget(rom_pool *p) {
    if (pm_hooks.pool == p)
        rom_sim_disarm();
}

/* at open, before creation and recovery, so crashes there can be tested */
static void sim_arm_from_env(rom_pool *p) {
    const char *at = getenv("PLINIUS_ROMULUS_CRASH_AT");
    if (!at || !*at)
        return;
    const char *kind = getenv("PLINIUS_ROMULUS_CRASH_KIND");
    const char *seed = getenv("PLINIUS_ROMULUS_CRASH_SEED");
    rom_sim_arm(p, strtoull(at, NULL, 10), (kind && strcmp(kind, "power") == 0) ? 2 : 1,
                seed ? strtoull(seed, NULL, 10) : 1, 0);
}

/* registered when the module is loaded: until rom_sim_arm sets pm_hooks.pool, flush and fence
 * are never called, and opened/closing only look at the environment and the armed pool */
__attribute__((constructor)) static void sim_register(void) {
    pm_hooks.flush = sim_flush;
    pm_hooks.fence = sim_fence;
    pm_hooks.opened = sim_arm_from_env;
    pm_hooks.closing = sim_forget;
}
