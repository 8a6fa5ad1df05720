/*
 * romulus_device.c -- the persistent-memory DEVICE MODEL (romulus.h, rom_device): busy waits on
 * the monotonic clock that hold the bytes made persistent to a modelled write bandwidth, add a
 * cost to every fence, and make rom_model_read wait as a read from the media would. It only
 * ever adds waiting: what is written, where and in which order is the protocol's alone. The
 * flush primitives charge it (dev_charge, romulus_internal.h); each fence drains it.
 */
#include "romulus_internal.h"

#include <time.h>

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

/* a finite, positive rate no faster than 1 PB/s and no slower than 1 kB/s, or a latency under
 * one second: anything else is a caller's mistake, not a device */
int dev_check(const rom_device *d) {
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

void dev_init(rom_pool *p, const rom_device *d) {
    p->dev_on = 1;
    p->dev_w_bpns = d->write_bps / 1e9;
    p->dev_r_bpns = d->read_bps / 1e9;
    p->dev_fence_ns = d->fence_ns;
    p->dev_read_ns = d->read_ns;
    p->dev_drain_at = mono_ns();
}

/* a fence drains the write-pending queue: the bytes charged since the last drain point cannot
 * have reached the media faster than the modelled bandwidth, and the drain itself has a cost */
void dev_drain(rom_pool *p) {
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
