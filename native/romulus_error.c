/*
 * romulus_error.c -- the engine's errors: the message of the last failure of this thread
 * (rom_last_error). Every other file reports through fail() or corrupt(); this one calls none
 * of them, so it sits under all of them.
 */
#include "romulus_internal.h"

#include <stdarg.h>
#include <stdio.h>

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
