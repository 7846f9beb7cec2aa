/*
** The Lua C module: `local ah = require "asynchost"` from a plain lua5.4
** attaches a host to the interpreter's state; ah.run(fn, ...) drives its
** loop until fn and its children are done.
*/
#include <stdio.h>
#include <stdlib.h>

#include <lauxlib.h>

#include "internal.h"

static const char module_key = 'm';
static const char running_key = 'r';
static const char exit_key = 'x'; /* the interpreter's own os.exit */

/* What one ah.run waits for; on the heap, since a task that cannot end
   (see run_wait) may call back after run returned. */
typedef struct run_state {
  lua_State *L; /* the caller of run: receives the results */
  uv_loop_t *loop;
  int done, status, nres, abandoned;
} run_state;

static void run_done(ah_task *t, lua_State *co, int status, int nres,
                     void *data) {
  run_state *r = data;
  int i;
  (void)t;
  if (r->abandoned) {
    free(r);
    return;
  }
  r->done = 1;
  r->status = status;
  r->nres = 0;
  if (lua_checkstack(co, nres) && lua_checkstack(r->L, nres + 1)) {
    for (i = 0; i < nres; i++) lua_pushvalue(co, -nres); /* copies, in order */
    lua_xmove(co, r->L, nres);
    r->nres = nres;
  }
  uv_stop(r->loop);
}

/* Exits the process as os.exit asked from inside a task. The exit itself
   is the interpreter's os.exit: closing the state unloads this module, so
   no code of the module may run after lua_close. */
static void run_exit(lua_State *L, ah_host *h) {
  fflush(NULL);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &exit_key) == LUA_TFUNCTION) {
    lua_pushinteger(L, h->status);
    lua_pushboolean(L, h->exit_close);
    lua_call(L, 2, 0); /* does not return */
  }
  exit(h->status);
}

/* Runs the loop until the task is done. Returns 0; 1 when it waited for
   something that can never happen (a deadlock) and was cancelled; -1 when
   it does not end even then. */
static int run_wait(lua_State *L, ah_host *h, ah_task *t, run_state *r) {
  int cancelled = 0;
  while (!r->done) {
    uv_run(r->loop, UV_RUN_DEFAULT);
    if (h->exiting) run_exit(L, h);
    if (r->done) break;
    if (cancelled) return -1;
    ah_task_cancel(t); /* nothing else can wake it: a deadlock */
    cancelled = 1;
  }
  return cancelled;
}

/* run(fn, ...) -> fn's results: fn(...) as a task, the loop driven until
   it and its children are done; raises fn's error. */
static int l_run(lua_State *L) {
  ah_host *h = ah_host_of(L);
  lua_State *hl = ah_host_lua(h);
  int n = lua_gettop(L), rc, status;
  run_state *r;
  ah_task *t;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  if (ah_task_current(h))
    return luaL_error(L, "asynchost.run: already inside a task (call fn "
                         "directly, or spawn it)");
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &running_key) != LUA_TNIL)
    return luaL_error(L, "asynchost.run: the loop is already running");
  lua_pop(L, 1);
  r = calloc(1, sizeof *r);
  if (!r) return luaL_error(L, "asynchost.run: out of memory");
  r->L = L;
  r->loop = ah_host_loop(h);
  if (hl != L) lua_xmove(L, hl, n); /* fn args, onto the main thread */
  rc = ah_host_spawn_call(h, n - 1, run_done, r, &t);
  if (rc != AH_OK) {
    free(r);
    return luaL_error(L, "asynchost.run: %s", ah_host_error(h));
  }
  lua_pushboolean(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &running_key);
  rc = run_wait(L, h, t, r);
  lua_pushnil(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &running_key);
  if (rc < 0) {
    r->abandoned = 1;
    return luaL_error(L, "asynchost.run: deadlock: the function waits for "
                         "something that can never happen, and does not end "
                         "when cancelled");
  }
  n = r->nres;
  status = r->status;
  free(r);
  if (rc > 0) {
    lua_pop(L, n);
    return luaL_error(L, "asynchost.run: deadlock: the function waited for "
                         "something that can never happen (nothing else was "
                         "running), so it was cancelled");
  }
  if (status != AH_OK) return lua_error(L);
  return n;
}

static int l_in_task(lua_State *L) {
  lua_pushboolean(L, ah_task_current(ah_host_of(L)) != NULL);
  return 1;
}

/* os.exit: the host's inside tasks (it ends the task and run), the
   interpreter's outside them (it closes the state if asked). */
static const char exit_chooser[] =
    "local host_exit, lua_exit, in_task = ...\n"
    "return function(...)\n"
    "  if in_task() then return host_exit(...) end\n"
    "  return lua_exit(...)\n"
    "end\n";

static void wrap_exit(lua_State *L) {
  if (lua_getglobal(L, "os") != LUA_TTABLE) {
    lua_pop(L, 1);
    return;
  }
  if (luaL_loadstring(L, exit_chooser) != LUA_OK) lua_error(L);
  lua_getfield(L, -2, "exit");
  lua_rawgetp(L, LUA_REGISTRYINDEX, &exit_key);
  lua_pushcfunction(L, l_in_task);
  lua_call(L, 3, 1);
  lua_setfield(L, -2, "exit");
  lua_pop(L, 1);
}

int luaopen_asynchost(lua_State *L) {
  ah_options opts = {0};
  if (!ah_host_of(L)) {
    if (lua_getglobal(L, "os") == LUA_TTABLE)
      lua_getfield(L, -1, "exit");
    else
      lua_pushnil(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &exit_key);
    lua_pop(L, 1);
    if (!ah_host_attach(L, &opts))
      return luaL_error(L, "asynchost: cannot set up the host");
    wrap_exit(L);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_getfield(L, -1, "asynchost");
    lua_pushcfunction(L, l_run);
    lua_setfield(L, -2, "run");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &module_key);
    lua_pop(L, 1);
  }
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &module_key) != LUA_TTABLE)
    return luaL_error(L, "asynchost: this state already has a host that "
                         "is not the module's");
  return 1;
}
