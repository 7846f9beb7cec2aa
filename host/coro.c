/*
** A task-aware coroutine library (as OpenResty's): coroutine.resume and
** coroutine.wrap pass an async suspension (sleep, fetch, ...) of the
** coroutine they resume up to the task, and resume the coroutine again
** when the task resumes. Everything else is Lua's.
*/
#include <lualib.h>

#include "internal.h"

/* Extra space of a user coroutine waiting in an async call. A task's
   coroutine holds its ah_task there; others hold NULL. */
static char busy_mark;
#define BUSY ((void *)&busy_mark)

static void **extra(lua_State *co) {
  return (void **)lua_getextraspace(co);
}

/* Why co cannot be resumed by user code, or NULL. */
static const char *not_resumable(lua_State *co) {
  void *x = *extra(co);
  if (x == BUSY) return "cannot resume a coroutine that waits in an async call";
  if (x != NULL) return "cannot resume the coroutine of a task";
  return NULL;
}

static lua_State *getco(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  luaL_argexpected(L, co, 1, "coroutine");
  return co;
}

static int push_rstack(ah_host *h, lua_State *L, lua_State *co) {
  if (!h->current || h->rstack[h->rdepth - 1] != L) return 0;
  if (h->rdepth == h->rcap) return 0; /* deeper than LUAI_MAXCCALLS allows */
  h->rstack[h->rdepth++] = co;
  return 1;
}

/* Resumes co with narg values from L. Returns what lcorolib's auxresume
   returns (values moved to L, or -1 with the error on top), or -2 when
   co suspended the task: the caller must yield with resume_k. */
static int auxresume(lua_State *L, lua_State *co, int narg) {
  ah_host *h = ah_host_of(L);
  int status, nres, pushed;
  if (!lua_checkstack(co, narg)) {
    lua_pushliteral(L, "too many arguments to resume");
    return -1;
  }
  if (lua_status(co) == LUA_OK && lua_gettop(co) == 0) {
    lua_pushliteral(L, "cannot resume dead coroutine");
    return -1;
  }
  lua_xmove(L, co, narg);
  pushed = push_rstack(h, L, co);
  status = lua_resume(co, L, narg, &nres);
  if (pushed) h->rdepth--;
  if (status == LUA_YIELD && h->suspending) {
    *extra(co) = BUSY;
    return -2;
  }
  if (status == LUA_OK || status == LUA_YIELD) {
    if (!lua_checkstack(L, nres + 1)) {
      lua_pop(co, nres);
      lua_pushliteral(L, "too many results to resume");
      return -1;
    }
    lua_xmove(co, L, nres);
    return nres;
  }
  lua_xmove(co, L, 1);
  return -1;
}

static int finish_resume(lua_State *L, int r);

static int resume_k(lua_State *L, int status, lua_KContext ctx) {
  lua_State *co = getco(L);
  (void)status;
  (void)ctx;
  *extra(co) = NULL;
  return finish_resume(L, auxresume(L, co, 0));
}

static int finish_resume(lua_State *L, int r) {
  if (r == -2) return lua_yieldk(L, 0, 0, resume_k);
  if (r < 0) {
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
  }
  lua_pushboolean(L, 1);
  lua_insert(L, -(r + 1));
  return r + 1;
}

static int co_resume(lua_State *L) {
  lua_State *co = getco(L);
  const char *why = not_resumable(co);
  if (why) {
    lua_pushboolean(L, 0);
    lua_pushstring(L, why);
    return 2;
  }
  return finish_resume(L, auxresume(L, co, lua_gettop(L) - 1));
}

static int finish_wrap(lua_State *L, int r);

static int wrap_k(lua_State *L, int status, lua_KContext ctx) {
  lua_State *co = lua_tothread(L, lua_upvalueindex(1));
  (void)status;
  (void)ctx;
  *extra(co) = NULL;
  return finish_wrap(L, auxresume(L, co, 0));
}

static int finish_wrap(lua_State *L, int r) {
  lua_State *co = lua_tothread(L, lua_upvalueindex(1));
  if (r == -2) return lua_yieldk(L, 0, 0, wrap_k);
  if (r < 0) {
    int stat = lua_status(co);
    if (stat != LUA_OK && stat != LUA_YIELD) { /* error in the coroutine */
      stat = lua_resetthread(co);              /* close its tbc variables */
      lua_xmove(co, L, 1);
    }
    if (stat != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING &&
        !ah__is_cancel_error(L, -1)) {
      luaL_where(L, 1);
      lua_insert(L, -2);
      lua_concat(L, 2);
    }
    return lua_error(L);
  }
  return r;
}

static int co_wrapped(lua_State *L) {
  lua_State *co = lua_tothread(L, lua_upvalueindex(1));
  const char *why = not_resumable(co);
  if (why) return luaL_error(L, "%s", why);
  return finish_wrap(L, auxresume(L, co, lua_gettop(L)));
}

static int co_wrap(lua_State *L) {
  lua_State *co;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  co = lua_newthread(L);
  *extra(co) = NULL;
  lua_pushvalue(L, 1);
  lua_xmove(L, co, 1);
  lua_pushcclosure(L, co_wrapped, 1);
  return 1;
}

static int co_create(lua_State *L) {
  lua_State *co;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  co = lua_newthread(L);
  *extra(co) = NULL;
  lua_pushvalue(L, 1);
  lua_xmove(L, co, 1);
  return 1;
}

static int co_close(lua_State *L) {
  lua_State *co = getco(L);
  if (*extra(co) == BUSY)
    return luaL_error(L,
                      "cannot close a coroutine that waits in an async call");
  if (*extra(co) != NULL)
    return luaL_error(L, "cannot close the coroutine of a task");
  lua_getfield(L, lua_upvalueindex(1), "close");
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

void ah__coro_open(lua_State *L) {
  static const luaL_Reg funcs[] = {{"resume", co_resume},
                                   {"wrap", co_wrap},
                                   {"create", co_create},
                                   {NULL, NULL}};
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, LUA_COLIBNAME);
  luaL_setfuncs(L, funcs, 0);
  lua_newtable(L); /* Lua's own coroutine.close, kept for co_close */
  lua_getfield(L, -2, "close");
  lua_setfield(L, -2, "close");
  lua_pushcclosure(L, co_close, 1);
  lua_setfield(L, -2, "close");
  lua_pop(L, 2);
}
