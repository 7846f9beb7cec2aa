/*
** timeout(s, fn, ...): runs fn(...) in the calling task under a deadline.
** On expiry the scope is marked expired (sticky while it lasts) and the
** task's pending operation is aborted; timeout() knows its own expiry by
** that flag (whatever fn then returned or raised) and returns
** nil, "timeout: ...".
*/
#include <math.h>

#include "internal.h"

#define SCOPE_MT "asynchost.scope"

int ah__scope_expired(ah_task *t) {
  ah__scope *s;
  for (s = t->scope; s; s = s->outer)
    if (s->expired) return 1;
  return 0;
}

static void scope_fire(ah_timer *timer) {
  ah__scope *s = ah__container_of(timer, ah__scope, timer);
  s->expired = 1;
  ah__interrupt(s->task);
}

static void scope_end(ah__scope *s) {
  ah_task *t = s->task;
  if (!t) return;
  ah_timer_stop(t->host, &s->timer);
  if (t->scope == s) t->scope = s->outer;
  s->task = NULL;
}

/* A scope left by an error that did not go through timeout_k (the
   coroutine was closed) is ended when collected. */
static int scope_gc(lua_State *L) {
  scope_end(luaL_checkudata(L, 1, SCOPE_MT));
  return 0;
}

/* [scope msgh fn results...] or [scope msgh err] */
static int timeout_k(lua_State *L, int status, lua_KContext ctx) {
  ah__scope *s = (ah__scope *)ctx;
  int expired = s->expired;
  ah_task *t = s->task;
  int own;
  scope_end(s); /* t->scope is the outer one again */
  own = expired && t && !t->cancelled && !ah__scope_expired(t);
  /* by the flag alone: fn may have caught the cancellation and returned,
     or raised something else in its place */
  if (!own) {
    if (status == LUA_OK || status == LUA_YIELD) return lua_gettop(L) - 2;
    return lua_error(L);
  }
  lua_pushnil(L);
  lua_pushfstring(L, "timeout: gave up after %f s", s->seconds);
  return 2;
}

static int l_timeout(lua_State *L) {
  double secs = luaL_checknumber(L, 1);
  ah_task *t;
  ah__scope *s;
  luaL_argcheck(L, !isnan(secs), 1, "not a number");
  luaL_checkany(L, 2);
  t = ah_task_check(L, "timeout");
  s = lua_newuserdatauv(L, sizeof *s, 0);
  s->task = NULL;
  s->timer.slot = 0;
  luaL_setmetatable(L, SCOPE_MT);
  lua_replace(L, 1); /* scope fn args */
  ah__push_traceback_msgh(L);
  lua_insert(L, 2); /* scope msgh fn args */
  s->seconds = secs;
  s->expired = 0;
  s->task = t;
  s->outer = t->scope;
  if (s->outer && ah_timer_active(&s->outer->timer)) {
    /* the inner deadline is never longer than the outer one; on a tie the
       outer timer, started first, fires first */
    uint64_t now = uv_hrtime(), due = s->outer->timer.due;
    double left = due > now ? (double)(due - now) / 1e9 : 0;
    if (left < secs) secs = left;
  }
  ah_timer_start(t->host, &s->timer, secs, scope_fire);
  t->scope = s;
  return timeout_k(L,
                   lua_pcallk(L, lua_gettop(L) - 3, LUA_MULTRET, 2,
                              (lua_KContext)s, timeout_k),
                   (lua_KContext)s);
}

void ah__scope_open(lua_State *L, int mod) {
  if (luaL_newmetatable(L, SCOPE_MT)) {
    lua_pushcfunction(L, scope_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, l_timeout);
  lua_setfield(L, mod, "timeout");
}
