/*
** sleep(s) and now(): the smallest async binding, and the model for the
** others: check, start the operation, suspend with a cancel hook.
*/
#include <math.h>
#include <stdlib.h>

#include "bindings.h"

typedef struct sleep_op {
  ah_timer timer; /* first: the timer callback casts back */
  ah_host *host;
  ah_task *task;
} sleep_op;

static void sleep_fire(ah_timer *timer) {
  ah_task_resume(((sleep_op *)timer)->task);
}

static void sleep_cancel(void *data) {
  sleep_op *op = data;
  ah_timer_stop(op->host, &op->timer);
  free(op);
}

static int sleep_k(lua_State *L, int status, lua_KContext ctx) {
  (void)L;
  (void)status;
  free((sleep_op *)ctx);
  return 0;
}

/* sleep(s) */
static int l_sleep(lua_State *L) {
  double secs = luaL_checknumber(L, 1);
  ah_task *t;
  sleep_op *op;
  luaL_argcheck(L, !isnan(secs), 1, "not a number");
  t = ah_task_check(L, "sleep");
  if (secs <= 0) return ah_task_yield(L);
  op = malloc(sizeof *op);
  if (!op) return luaL_error(L, "sleep: out of memory");
  op->host = ah_task_host(t);
  op->task = t;
  op->timer.slot = 0;
  ah_timer_start(op->host, &op->timer, secs, sleep_fire);
  return ah_task_suspend(L, sleep_cancel, op, sleep_k, (lua_KContext)op);
}

/* now() -> monotonic seconds */
static int l_now(lua_State *L) {
  lua_pushnumber(L, ah_now());
  return 1;
}

void ah_open_sleep(lua_State *L, int mod) {
  static const luaL_Reg funcs[] = {
      {"sleep", l_sleep}, {"now", l_now}, {NULL, NULL}};
  lua_pushvalue(L, mod);
  luaL_setfuncs(L, funcs, 0);
  lua_pop(L, 1);
}
