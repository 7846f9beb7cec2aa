/*
** The fuzz targets' shared harness: see fuzz.h.
*/
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "fuzz.h"

FILE *fz_err;

static ah_host *host;
static uv_timer_t guard; /* bounds each fz_turn's wait */

typedef struct call_state {
  int done, status;
} call_state;

ah_host *fz_host(void) {
  ah_options o;
  if (host) return host;
  fz_err = stderr;
  if (!getenv("FUZZ_LOG")) {
    FILE *null = fopen("/dev/null", "w");
    if (null)
      stderr = null; /* log.c writes to stderr; libFuzzer kept its own */
  }
  /* fetch must never reach a proxy from the environment */
  unsetenv("http_proxy");
  unsetenv("https_proxy");
  unsetenv("HTTPS_PROXY");
  unsetenv("all_proxy");
  unsetenv("ALL_PROXY");
  memset(&o, 0, sizeof o);
  o.globals = 1;
  host = ah_host_new(&o);
  if (!host) {
    fprintf(fz_err, "fuzz: ah_host_new failed\n");
    abort();
  }
  uv_timer_init(ah_host_loop(host), &guard);
  uv_unref((uv_handle_t *)&guard);
  return host;
}

int fz_load(const char *name) {
  lua_State *L = ah_host_lua(fz_host());
  char path[4096];
  snprintf(path, sizeof path, "%s/%s.lua", FUZZ_DIR, name);
  if (luaL_loadfile(L, path) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK ||
      !lua_isfunction(L, -1)) {
    fprintf(fz_err, "fuzz: %s: %s\n", name,
            lua_isstring(L, -1) ? lua_tostring(L, -1) : "no function");
    abort();
  }
  return luaL_ref(L, LUA_REGISTRYINDEX);
}

static void on_guard(uv_timer_t *t) {
  (void)t;
}

void fz_turn(int ms) {
  uv_loop_t *loop = ah_host_loop(host);
  uv_timer_start(&guard, on_guard, (uint64_t)ms, 0);
  uv_run(loop, UV_RUN_ONCE);
  uv_timer_stop(&guard);
}

static void on_done(ah_task *t, lua_State *L, int status, int nres,
                    void *data) {
  call_state *st = data;
  (void)t;
  (void)nres;
  st->done = 1;
  st->status = status;
  if (status != AH_OK) {
    const char *msg = lua_tostring(L, -1);
    fprintf(fz_err, "fuzz: the harness raised: %s\n", msg ? msg : "?");
    abort();
  }
}

void fz_call(int fn, const uint8_t *data, size_t size, int max_ms) {
  lua_State *L = ah_host_lua(fz_host());
  call_state st = {0, 0};
  uint64_t end = uv_hrtime() + (uint64_t)max_ms * 1000000;
  lua_rawgeti(L, LUA_REGISTRYINDEX, fn);
  lua_pushlstring(L, (const char *)data, size);
  if (ah_host_spawn_call(host, 1, on_done, &st, NULL) != AH_OK) {
    fprintf(fz_err, "fuzz: cannot start the harness task\n");
    abort();
  }
  ah_host_run_ready(host); /* at once, not after the loop's next wait */
  while (!st.done) {
    if (uv_hrtime() > end) {
      fprintf(fz_err, "fuzz: the input ran longer than %d ms\n", max_ms);
      abort();
    }
    fz_turn(5);
  }
}

void fz_after(void) {
  static unsigned n;
  if (++n % 64 == 0) lua_gc(ah_host_lua(host), LUA_GCCOLLECT, 0);
}
