/*
** The Lua task API: spawn, task:wait/cancel/status/detach, gather, wait.
*/
#include <string.h>

#include "internal.h"

#define TASK_MT "asynchost.task"

static int is_callable(lua_State *L, int idx) {
  if (lua_isfunction(L, idx)) return 1;
  if (luaL_getmetafield(L, idx, "__call") != LUA_TNIL) {
    lua_pop(L, 1);
    return 1;
  }
  return 0;
}

/* spawn(fn, ...) -> task */
static int l_spawn(lua_State *L) {
  ah_host *h = ah_host_of(L);
  luaL_argexpected(L, is_callable(L, 1), 1, "function");
  ah__task_new(L, h->current, lua_gettop(L) - 1);
  return 1;
}

/* The results of the done task at stack index 1, or its error raised. */
static int task_outcome(lua_State *L, ah_task *t) {
  if (t->outcome == AH__OK) return ah__task_results(L, t, 0);
  return ah__task_raise(L, 1);
}

/* ---- task:wait() ---------------------------------------------------- */

typedef struct waitop {
  ah__watch w;
  ah_task *waiter;
} waitop;

static void wait_notify(ah__watch *w, ah_task *t) {
  (void)t;
  ah_task_resume(ah__container_of(w, waitop, w)->waiter);
}

static void wait_cancel(void *data) {
  ah__watch_remove(&((waitop *)data)->w);
}

static int wait_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return task_outcome(L, ah__task_check(L, 1));
}

static int t_wait(lua_State *L) {
  ah_task *t = ah__task_check(L, 1), *self, *a;
  waitop *op;
  if (t->state == AH__DONE) return task_outcome(L, t);
  self = ah_task_check(L, "wait");
  for (a = self; a; a = a->parent)
    if (a == t)
      return luaL_error(L, "wait: task %d cannot wait for %s", (int)self->id,
                        a == self ? "itself" : "a task it belongs to");
  lua_settop(L, 1);
  op = lua_newuserdatauv(L, sizeof *op, 0);
  op->waiter = self;
  op->w.task = NULL;
  ah__watch_add(t, &op->w, wait_notify);
  return ah_task_suspend(L, wait_cancel, op, wait_k, 0);
}

static int t_cancel(lua_State *L) {
  ah_task *t = ah__task_check(L, 1);
  int was_running = t->state != AH__DONE;
  ah_task_cancel(t);
  lua_pushboolean(L, was_running);
  return 1;
}

static int t_status(lua_State *L) {
  lua_pushstring(L, ah__task_status(ah__task_check(L, 1)));
  return 1;
}

static int t_detach(lua_State *L) {
  ah__task_detach(ah__task_check(L, 1));
  lua_settop(L, 1);
  return 1;
}

static int t_tostring(lua_State *L) {
  ah_task *t = ah__task_check(L, 1);
  lua_pushfstring(L, "task %d (%s)", (int)t->id, ah__task_status(t));
  return 1;
}

static int t_index(lua_State *L) {
  ah_task *t = ah__task_check(L, 1);
  const char *key = lua_tostring(L, 2);
  if (key && strcmp(key, "id") == 0) {
    lua_pushinteger(L, t->id);
    return 1;
  }
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(1));
  return 1;
}

/* ---- gather -----------------------------------------------------------
   Results are moved into the (preallocated) result lists as each task
   finishes, so a finished task's coroutine can be collected at once. */

typedef struct gnode {
  ah__watch w;
  int index;
} gnode;

typedef struct gstate {
  ah_task *self;
  int n, next, running, limit, settle, failed, sleeping;
  int results_ref, errors_ref, failed_ref; /* registry slots */
  gnode nodes[];
} gstate;

/* stack slots of gather's frame */
enum { G_LIST = 1, G_FN, G_OPTS, G_STATE };

static gstate *gnode_state(gnode *nd) {
  return ah__container_of(nd - (nd->index - 1), gstate, nodes);
}

static void gather_cancel_running(gstate *g, const char *reason) {
  int i;
  for (i = 0; i < g->n; i++)
    if (g->nodes[i].w.task) ah__cancel_reason(g->nodes[i].w.task, reason);
}

/* list[i] = value on top of L (popped); the lists are preallocated, so
   this never allocates and is safe outside any Lua call. */
static void gather_store(lua_State *L, int ref, int i) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
  lua_insert(L, -2);
  lua_rawseti(L, -2, i);
  lua_pop(L, 1);
}

/* Takes the outcome of the done task t, item i. */
static void gather_collect(gstate *g, ah_task *t, int i) {
  lua_State *L = t->host->L, *co = t->co;
  int n = t->nres, base = lua_gettop(co) - n + 1;
  lua_checkstack(co, 1);
  if (t->outcome == AH__OK) {
    if (n > 0) {
      lua_pushvalue(co, base);
      lua_xmove(co, L, 1);
      gather_store(L, g->results_ref, i);
    }
    if (g->settle && n >= 2 && lua_isnil(co, base) &&
        !lua_isnil(co, base + 1)) {
      lua_pushvalue(co, base + 1);
      lua_xmove(co, L, 1);
      gather_store(L, g->errors_ref, i);
    }
  } else if (g->settle) {
    lua_pushvalue(co, -2);
    lua_xmove(co, L, 1);
    gather_store(L, g->errors_ref, i);
  } else if (!g->failed) {
    g->failed = i;
    ah_task_push(L, t);
    lua_rawseti(L, LUA_REGISTRYINDEX, g->failed_ref);
    gather_cancel_running(g, "a sibling task failed");
  }
}

static void gather_notify(ah__watch *w, ah_task *t) {
  gnode *nd = ah__container_of(w, gnode, w);
  gstate *g = gnode_state(nd);
  g->running--;
  gather_collect(g, t, nd->index);
  /* wake the gatherer only when there is something for it to do */
  if (g->sleeping && (g->running == 0 || (g->next <= g->n && !g->failed)))
    ah_task_resume(g->self);
}

static void gather_release(lua_State *L, gstate *g) {
  luaL_unref(L, LUA_REGISTRYINDEX, g->results_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, g->errors_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, g->failed_ref);
  g->results_ref = g->errors_ref = g->failed_ref = LUA_NOREF;
}

static void gather_cancel(void *data) {
  gstate *g = data;
  int i;
  for (i = 0; i < g->n; i++) {
    ah_task *t = g->nodes[i].w.task;
    if (!t) continue;
    ah__watch_remove(&g->nodes[i].w);
    ah__cancel_reason(t, "the gathering task was cancelled");
  }
  g->running = 0;
  gather_release(g->self->host->L, g);
}

static void gather_start(lua_State *L, gstate *g, int i) {
  ah_task *t;
  if (!lua_isnil(L, G_FN)) {
    lua_pushvalue(L, G_FN);
    lua_geti(L, G_LIST, i);
    lua_pushinteger(L, i);
    t = ah__task_new(L, g->self, 2);
  } else {
    lua_geti(L, G_LIST, i);
    t = ah__task_test(L, -1);
    if (!t) {
      if (!is_callable(L, -1)) {
        g->next = g->n + 1;
        gather_cancel_running(g, "gather was given a bad element");
        luaL_error(
            L, "gather: bad element #%d (function or task expected, got %s)", i,
            luaL_typename(L, -1));
      }
      t = ah__task_new(L, g->self, 0);
    }
  }
  if (t->state == AH__DONE)
    gather_collect(g, t, i);
  else {
    ah__watch_add(t, &g->nodes[i - 1].w, gather_notify);
    g->running++;
  }
  lua_pop(L, 1);
}

static int gather_finish(lua_State *L, gstate *g) {
  if (g->failed) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, g->failed_ref);
    gather_release(L, g);
    return ah__task_raise(L, lua_gettop(L));
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, g->results_ref);
  lua_pushinteger(L, g->n);
  lua_setfield(L, -2, "n");
  if (g->settle) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, g->errors_ref);
    lua_pushinteger(L, g->n);
    lua_setfield(L, -2, "n");
  }
  gather_release(L, g);
  return g->settle ? 2 : 1;
}

static int gather_k(lua_State *L, int status, lua_KContext ctx);

static int gather_step(lua_State *L) {
  gstate *g = lua_touserdata(L, G_STATE);
  while (!g->failed && g->running < g->limit && g->next <= g->n)
    gather_start(L, g, g->next++);
  if (g->running == 0 && (g->failed || g->next > g->n))
    return gather_finish(L, g);
  g->sleeping = 1;
  return ah_task_suspend(L, gather_cancel, g, gather_k, 0);
}

static int gather_k(lua_State *L, int status, lua_KContext ctx) {
  gstate *g = lua_touserdata(L, G_STATE);
  (void)status;
  (void)ctx;
  g->sleeping = 0;
  return gather_step(L);
}

static int new_list_ref(lua_State *L, int n) {
  lua_createtable(L, n, 1);
  return luaL_ref(L, LUA_REGISTRYINDEX);
}

/* gather(fns [, opts]) or gather(list, fn [, opts]) */
static int l_gather(lua_State *L) {
  ah_task *self;
  gstate *g;
  lua_Integer n, limit;
  int settle;
  luaL_checktype(L, 1, LUA_TTABLE);
  if (lua_istable(L, 2) && !is_callable(L, 2)) { /* gather(fns, opts) */
    lua_settop(L, 2);
    lua_pushnil(L);
    lua_insert(L, 2);
  } else if (!lua_isnoneornil(L, 2)) {
    luaL_argexpected(L, is_callable(L, 2), 2, "function");
  }
  lua_settop(L, 3);
  if (!lua_isnil(L, G_OPTS)) luaL_checktype(L, G_OPTS, LUA_TTABLE);
  self = ah_task_check(L, "gather");
  n = luaL_len(L, G_LIST);
  if (lua_getfield(L, G_LIST, "n") == LUA_TNUMBER && lua_isinteger(L, -1))
    n = lua_tointeger(L, -1);
  lua_pop(L, 1);
  limit = n;
  settle = 0;
  if (!lua_isnil(L, G_OPTS)) {
    if (lua_getfield(L, G_OPTS, "limit") != LUA_TNIL) {
      int isint;
      limit = lua_tointegerx(L, -1, &isint);
      if (!isint || limit < 1)
        return luaL_error(L, "gather: opts.limit must be an integer >= 1");
    }
    lua_getfield(L, G_OPTS, "settle");
    settle = lua_toboolean(L, -1);
    lua_pop(L, 2);
  }
  if (n < 0 || n > 0x7ffffff) return luaL_error(L, "gather: list too long");
  g = lua_newuserdatauv(L, sizeof *g + (size_t)n * sizeof(gnode), 0);
  memset(g, 0, sizeof *g + (size_t)n * sizeof(gnode));
  g->results_ref = g->errors_ref = g->failed_ref = LUA_NOREF;
  g->self = self;
  g->n = (int)n;
  g->next = 1;
  g->limit = limit > n ? (int)n : (int)limit;
  g->settle = settle;
  for (int i = 0; i < n; i++) g->nodes[i].index = i + 1;
  g->results_ref = new_list_ref(L, (int)n);
  g->errors_ref = settle ? new_list_ref(L, (int)n) : LUA_NOREF;
  lua_pushboolean(L, 0);
  g->failed_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return gather_step(L);
}

/* ---- wait(tasks, opts) -> done, pending --------------------------------- */

enum { W_ALL, W_FIRST, W_ERROR };

typedef struct wstate {
  ah_task *self;
  int n, ndone, nfailed, mode, sleeping, timed_out;
  ah_timer timer;
  gnode nodes[];
} wstate;

static int wait_satisfied(wstate *w) {
  if (w->timed_out || w->ndone == w->n) return 1;
  if (w->mode == W_FIRST) return w->ndone > 0;
  if (w->mode == W_ERROR) return w->nfailed > 0;
  return 0;
}

static wstate *wnode_state(gnode *nd) {
  return ah__container_of(nd - (nd->index - 1), wstate, nodes);
}

static void waitall_notify(ah__watch *w, ah_task *t) {
  wstate *ws = wnode_state(ah__container_of(w, gnode, w));
  ws->ndone++;
  if (t->outcome != AH__OK) ws->nfailed++;
  if (ws->sleeping && wait_satisfied(ws)) ah_task_resume(ws->self);
}

static void waitall_timeout(ah_timer *timer) {
  wstate *ws = ah__container_of(timer, wstate, timer);
  ws->timed_out = 1;
  ah_task_resume(ws->self);
}

static void waitall_release(wstate *ws) {
  int i;
  for (i = 0; i < ws->n; i++) ah__watch_remove(&ws->nodes[i].w);
  ah_timer_stop(ws->self->host, &ws->timer);
}

static void waitall_cancel(void *data) {
  waitall_release(data);
}

/* [tasks opts state] -> done pending */
static int waitall_result(lua_State *L, wstate *ws) {
  int i, nd = 0, np = 0;
  waitall_release(ws);
  lua_newtable(L);
  lua_newtable(L);
  for (i = 1; i <= ws->n; i++) {
    ah_task *t;
    lua_geti(L, 1, i);
    t = lua_touserdata(L, -1);
    if (t->state == AH__DONE)
      lua_seti(L, -3, ++nd);
    else
      lua_seti(L, -2, ++np);
  }
  return 2;
}

static int waitall_k(lua_State *L, int status, lua_KContext ctx) {
  wstate *ws = lua_touserdata(L, 3);
  (void)status;
  (void)ctx;
  ws->sleeping = 0;
  return waitall_result(L, ws);
}

static int l_wait(lua_State *L) {
  static const char *const modes[] = {"all", "first", "error", NULL};
  lua_Integer n, i;
  int mode = W_ALL;
  double secs = -1;
  ah_task *self;
  wstate *ws;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 2);
  if (!lua_isnil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "return_when");
    if (!lua_isnil(L, -1)) mode = luaL_checkoption(L, -1, NULL, modes);
    lua_getfield(L, 2, "timeout");
    if (!lua_isnil(L, -1)) {
      int ok;
      secs = lua_tonumberx(L, -1, &ok);
      if (!ok) return luaL_error(L, "wait: opts.timeout must be a number");
    }
    lua_pop(L, 2);
  }
  n = luaL_len(L, 1);
  for (i = 1; i <= n; i++) {
    lua_geti(L, 1, i);
    if (!ah__task_test(L, -1))
      return luaL_error(L, "wait: bad element #%d (task expected, got %s)",
                        (int)i, luaL_typename(L, -1));
    lua_pop(L, 1);
  }
  self = ah_task_check(L, "wait");
  ws = lua_newuserdatauv(L, sizeof *ws + (size_t)n * sizeof(gnode), 0);
  memset(ws, 0, sizeof *ws + (size_t)n * sizeof(gnode));
  ws->self = self;
  ws->n = (int)n;
  ws->mode = mode;
  for (i = 1; i <= n; i++) {
    ah_task *t;
    lua_geti(L, 1, i);
    t = lua_touserdata(L, -1);
    lua_pop(L, 1);
    ws->nodes[i - 1].index = (int)i;
    if (t->state == AH__DONE) {
      ws->ndone++;
      if (t->outcome != AH__OK) ws->nfailed++;
    } else
      ah__watch_add(t, &ws->nodes[i - 1].w, waitall_notify);
  }
  if (wait_satisfied(ws) || secs == 0) return waitall_result(L, ws);
  if (secs > 0) ah_timer_start(self->host, &ws->timer, secs, waitall_timeout);
  ws->sleeping = 1;
  return ah_task_suspend(L, waitall_cancel, ws, waitall_k, 0);
}

/* current() -> the running task, or nil */
static int l_current(lua_State *L) {
  ah_host *h = ah_host_of(L);
  if (!h->current) return 0;
  ah_task_push(L, h->current);
  return 1;
}

void ah__tasklib_open(lua_State *L, int mod) {
  static const luaL_Reg methods[] = {{"wait", t_wait},
                                     {"cancel", t_cancel},
                                     {"status", t_status},
                                     {"detach", t_detach},
                                     {NULL, NULL}};
  static const luaL_Reg funcs[] = {{"spawn", l_spawn},
                                   {"gather", l_gather},
                                   {"wait", l_wait},
                                   {"current", l_current},
                                   {NULL, NULL}};
  if (luaL_newmetatable(L, TASK_MT)) {
    luaL_newlib(L, methods);
    lua_pushcclosure(L, t_index, 1);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, t_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  lua_pushvalue(L, mod);
  luaL_setfuncs(L, funcs, 0);
  lua_pop(L, 1);
}
