/*
** require "asynchost": the module table, its Lua parts (the lua/ files,
** compiled in), and the CLI globals.
*/
#include <string.h>

#include "internal.h"
#include "../bindings/bindings.h"

extern const struct {
  const char *name;
  const char *src;
  size_t len;
} ah__lua_files[];

/* Loads the compiled-in lua/<name>.lua as a chunk named "asynchost.<name>". */
int ah__load_lua(lua_State *L, const char *name) {
  int i;
  for (i = 0; ah__lua_files[i].name; i++)
    if (strcmp(ah__lua_files[i].name, name) == 0) {
      lua_pushfstring(L, "=asynchost.%s", name);
      int st = luaL_loadbuffer(L, ah__lua_files[i].src, ah__lua_files[i].len,
                               lua_tostring(L, -1));
      lua_remove(L, -2);
      return st;
    }
  lua_pushfstring(L, "no compiled-in Lua file '%s'", name);
  return LUA_ERRFILE;
}

/* stats() -> {tasks=, ready=, timers=, <kind>=...}: what is still alive.
   `current` counts the running task and its ancestors (alive by
   necessity), so tasks - current is what else runs. */
static int l_stats(lua_State *L) {
  ah_host *h = ah_host_of(L);
  ah_task *t;
  int i, ready = 0, chain = 0;
  lua_createtable(L, 0, 5 + h->ncounts);
  for (t = h->current; t && t != &h->root; t = t->parent) chain++;
  lua_pushinteger(L, chain);
  lua_setfield(L, -2, "current");
  lua_pushinteger(L, h->ntasks);
  lua_setfield(L, -2, "tasks");
  for (t = h->qhead; t; t = t->qnext) ready++;
  lua_pushinteger(L, ready);
  lua_setfield(L, -2, "ready");
  lua_pushinteger(L, h->nheap);
  lua_setfield(L, -2, "timers");
  lua_pushinteger(L, h->closing);
  lua_setfield(L, -2, "closing");
  for (i = 0; i < h->ncounts; i++) {
    lua_pushinteger(L, h->counts[i].n);
    lua_setfield(L, -2, h->counts[i].kind);
  }
  return 1;
}

/* memory() -> used, limit|nil: the bytes the Lua state holds, and its cap
   (--max-memory). Not in stats(), whose fields count what is left. */
static int l_memory(lua_State *L) {
  ah_host *h = ah_host_of(L);
  lua_pushinteger(L, (lua_Integer)ah_host_memory(h));
  if (ah_host_memory_limit(h))
    lua_pushinteger(L, (lua_Integer)ah_host_memory_limit(h));
  else
    lua_pushnil(L);
  return 2;
}

/* shutdown_timeout([s]) -> s: how long a graceful shutdown waits */
static int l_shutdown_timeout(lua_State *L) {
  ah_host *h = ah_host_of(L);
  if (!lua_isnoneornil(L, 1)) {
    double s = luaL_checknumber(L, 1);
    luaL_argcheck(L, s >= 0, 1, "must be >= 0");
    h->shutdown_timeout = s;
  }
  lua_pushnumber(L, h->shutdown_timeout);
  return 1;
}

static int l_shutdown(lua_State *L) {
  ah_host_shutdown(ah_host_of(L));
  return 0;
}

static int l_shutting_down(lua_State *L) {
  lua_pushboolean(L, ah_host_of(L)->shutdown != 0);
  return 1;
}

static int call_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return lua_gettop(L);
}

/* _call(f, ...) -> f(...) called from C, unprotected: the CLI runs the
   script so, for its traceback to say "main chunk" and to be taken where
   any error (even a memory error, which skips message handlers) happened. */
static int l_call(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_callk(L, lua_gettop(L) - 1, LUA_MULTRET, 0, call_k);
  return call_k(L, LUA_OK, 0);
}

static void open_lua_part(lua_State *L, int mod, const char *name) {
  if (ah__load_lua(L, name) != LUA_OK) lua_error(L);
  lua_pushvalue(L, mod);
  ah__push_traceback_msgh(L);
  lua_call(L, 2, 0);
}

static int load_embedded(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  if (ah__load_lua(L, name) != LUA_OK) return lua_error(L);
  return 1;
}

void ah__module_open(lua_State *L, int globals) {
  static const luaL_Reg funcs[] = {
      {"stats", l_stats},       {"shutdown_timeout", l_shutdown_timeout},
      {"shutdown", l_shutdown}, {"shutting_down", l_shutting_down},
      {"memory", l_memory},     {"_load", load_embedded},
      {"_call", l_call},        {NULL, NULL}};
  int mod;
  lua_newtable(L);
  mod = lua_gettop(L);
  luaL_setfuncs(L, funcs, 0);
  lua_pushliteral(L, AH_VERSION);
  lua_setfield(L, mod, "version");
  ah__tasklib_open(L, mod);
  ah__scope_open(L, mod);
  ah_open_sleep(L, mod);
  ah_open_sync(L, mod);
  ah_open_stdin(L, mod);
  ah_open_json(L, mod);
  ah_open_log(L, mod);
  ah_open_fetch(L, mod);
  ah_open_db(L, mod);
  ah_open_http(L, mod);
  ah_open_html(L, mod);
  ah_open_fs(L, mod);
  ah_open_exec(L, mod);
  ah_open_net(L, mod);
  open_lua_part(L, mod, "prelude");
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushvalue(L, mod);
  lua_setfield(L, -2, "asynchost");
  lua_pop(L, 1);
  if (globals) {
    lua_pushnil(L);
    while (lua_next(L, mod)) {
      const char *k = lua_tostring(L, -2);
      if (k[0] != '_' && strcmp(k, "version") != 0 && strcmp(k, "stats") != 0 &&
          strcmp(k, "memory") != 0)
        lua_setglobal(L, k);
      else
        lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
}
