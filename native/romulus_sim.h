/*
 * romulus_sim.h -- test hooks of the Romulus engine: simulated crashes at the Nth flush/fence
 * event. Not part of the engine's API (romulus.h): only the test bindings use it, through the
 * same compiled module (plinius.backends.romulus.pool, "testing hooks" section).
 *
 * kind 1 = process crash (_exit at the event), kind 2 = power failure: a shadow of the pool keeps
 * what has been flushed and fenced; at the event, the file is overwritten with the shadow plus a
 * random subset of the lines still pending (flushed but not fenced, or written but not flushed).
 * crash_at 0 only counts events. skip_fences: bitmask of fence numbers (1..4, bit n) within each
 * transaction to skip, to show that the tests catch a broken protocol. Also armed by the
 * environment at open: PLINIUS_ROMULUS_CRASH_AT, _CRASH_KIND (process|power), _CRASH_SEED.
 * The process exits with ROM_CRASH_EXIT at the simulated crash, from whichever thread reaches
 * the event (the copier's flushes and FENCE 4 are events too).
 */
#ifndef PLINIUS_ROMULUS_SIM_H
#define PLINIUS_ROMULUS_SIM_H

#include "romulus.h"

#define ROM_CRASH_EXIT 77 /* exit status of a simulated crash */

int rom_sim_arm(rom_pool *p, uint64_t crash_at, int kind, uint64_t seed, uint32_t skip_fences);
void rom_sim_disarm(void);
uint64_t rom_sim_events(void); /* flush/fence events counted since the last rom_sim_arm */
/* The copier thread (romulus.h, BACKGROUND COMMIT): hold 1 makes it start a copy only once a
 * caller waits for it (rom_begin, rom_close, ...), so simulated crashes in the copy land during
 * that wait; delay_ms makes it sleep half-way through each copy, so a real kill can land with
 * back half-copied. Also set at open by PLINIUS_ROMULUS_BG_HOLD=1 and
 * PLINIUS_ROMULUS_BG_DELAY_MS=N. */
int rom_sim_bg(rom_pool *p, int hold, uint32_t delay_ms);

#endif /* PLINIUS_ROMULUS_SIM_H */
