/*
** What the fuzz targets share: one host per process (the first input
** makes it), Lua harness functions loaded once, and each input run as a
** task on that host with a bound on its time. A harness function raises
** when an invariant breaks; that aborts, so libFuzzer keeps the input.
*/
#ifndef AH_FUZZ_H
#define AH_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <lauxlib.h>

#include "asynchost.h"

/* The host (with the CLI's globals). Log lines from the bindings go to
   /dev/null unless FUZZ_LOG is set; fz_err is the real stderr. */
ah_host *fz_host(void);
extern FILE *fz_err;

/* Runs fuzz/<name>.lua (outside any task) and keeps the function it
   returns; returns its registry reference. Aborts on an error. */
int fz_load(const char *name);

/* Runs fn(data) as a task until it ends, running the loop for at most
   max_ms milliseconds. Aborts if it raises or takes longer. */
void fz_call(int fn, const uint8_t *data, size_t size, int max_ms);

/* Runs the loop once, waiting at most ms (a timer bounds the wait). */
void fz_turn(int ms);

/* Called after each input: a full collection now and then, so __gc
   paths run under the sanitizers too. */
void fz_after(void);

#endif
