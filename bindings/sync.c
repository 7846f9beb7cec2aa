/*
** queue(n) and semaphore(n): tasks waiting on each other, FIFO.
*/
#include "bindings.h"

#define QUEUE_MT "asynchost.queue"
#define SEM_MT "asynchost.semaphore"

/* A waiting task; lives on its own stack while it waits. */
typedef struct waiter {
  struct waiter *next, *prev;
  ah_task *task;
  int granted; /* semaphore: the permit was handed over */
} waiter;

static void wl_init(waiter *s) {
  s->next = s->prev = s;
}

static int wl_empty(const waiter *s) {
  return s->next == s;
}

static void wl_push(waiter *s, waiter *w) {
  w->prev = s->prev;
  w->next = s;
  s->prev->next = w;
  s->prev = w;
}

static void wl_remove(waiter *w) {
  if (!w->next) return;
  w->prev->next = w->next;
  w->next->prev = w->prev;
  w->next = w->prev = NULL;
}

static waiter *wl_pop(waiter *s) {
  waiter *w;
  if (wl_empty(s)) return NULL;
  w = s->next;
  wl_remove(w);
  return w;
}

static void wl_wake_one(waiter *s) {
  waiter *w = wl_pop(s);
  if (w) ah_task_resume(w->task);
}

static void wl_wake_all(waiter *s) {
  waiter *w;
  while ((w = wl_pop(s)) != NULL) ah_task_resume(w->task);
}

static void waiter_cancel(void *data) {
  wl_remove(data);
}

/* The waiter of this call at stack slot idx, made on first use. */
static waiter *waiter_at(lua_State *L, int idx, ah_task *t) {
  waiter *w;
  if (lua_gettop(L) < idx) {
    lua_settop(L, idx - 1);
    w = lua_newuserdatauv(L, sizeof *w, 0);
    w->next = w->prev = NULL;
  } else
    w = lua_touserdata(L, idx);
  w->task = t;
  w->granted = 0;
  return w;
}

/* ---- queue ------------------------------------------------------------ */

typedef struct queue {
  lua_Integer cap; /* 0: unbounded */
  lua_Integer first, last;
  int closed;
  waiter getters, putters;
} queue;

static char nil_item; /* stands for nil inside the item table */

static queue *check_queue(lua_State *L) {
  return luaL_checkudata(L, 1, QUEUE_MT);
}

static lua_Integer q_count(const queue *q) {
  return q->last - q->first + 1;
}

static int q_get_k(lua_State *L, int status, lua_KContext ctx);
static int q_put_k(lua_State *L, int status, lua_KContext ctx);

/* [q (waiter)] */
static int q_get_try(lua_State *L, queue *q) {
  ah_task *t;
  if (q_count(q) > 0) {
    lua_getiuservalue(L, 1, 1);
    lua_rawgeti(L, -1, q->first);
    lua_pushnil(L);
    lua_rawseti(L, -3, q->first++);
    if (lua_touserdata(L, -1) == &nil_item) {
      lua_pop(L, 1);
      lua_pushnil(L);
    }
    wl_wake_one(&q->putters);
    return 1;
  }
  if (q->closed) return ah_push_fail(L, "closed", "the queue is closed");
  t = ah_task_check(L, "get");
  wl_push(&q->getters, waiter_at(L, 2, t));
  return ah_task_suspend(L, waiter_cancel, lua_touserdata(L, 2), q_get_k, 0);
}

static int q_get_k(lua_State *L, int status, lua_KContext ctx) {
  queue *q = lua_touserdata(L, 1);
  waiter *w = lua_touserdata(L, 2);
  (void)status;
  (void)ctx;
  wl_remove(w);
  if (ah_task_cancelling(w->task)) { /* leave the item for the next getter */
    if (q_count(q) > 0) wl_wake_one(&q->getters);
    return 0;
  }
  return q_get_try(L, q);
}

/* q:get() -> value | nil, "closed: ..." */
static int q_get(lua_State *L) {
  queue *q = check_queue(L);
  lua_settop(L, 1);
  return q_get_try(L, q);
}

/* [q v (waiter)] */
static int q_put_try(lua_State *L, queue *q) {
  ah_task *t;
  if (q->closed) return ah_push_fail(L, "closed", "the queue is closed");
  if (q->cap == 0 || q_count(q) < q->cap) {
    lua_getiuservalue(L, 1, 1);
    if (lua_isnil(L, 2))
      lua_pushlightuserdata(L, &nil_item);
    else
      lua_pushvalue(L, 2);
    lua_rawseti(L, -2, ++q->last);
    wl_wake_one(&q->getters);
    lua_pushboolean(L, 1);
    return 1;
  }
  t = ah_task_check(L, "put");
  wl_push(&q->putters, waiter_at(L, 3, t));
  return ah_task_suspend(L, waiter_cancel, lua_touserdata(L, 3), q_put_k, 0);
}

static int q_put_k(lua_State *L, int status, lua_KContext ctx) {
  queue *q = lua_touserdata(L, 1);
  waiter *w = lua_touserdata(L, 3);
  (void)status;
  (void)ctx;
  wl_remove(w);
  if (ah_task_cancelling(w->task)) {
    if (q->cap == 0 || q_count(q) < q->cap) wl_wake_one(&q->putters);
    return 0;
  }
  return q_put_try(L, q);
}

/* q:put(v) -> true | nil, "closed: ..." */
static int q_put(lua_State *L) {
  queue *q = check_queue(L);
  luaL_checkany(L, 2);
  lua_settop(L, 2);
  return q_put_try(L, q);
}

/* q:close(): wakes every waiter; get drains what is left */
static int q_close(lua_State *L) {
  queue *q = check_queue(L);
  q->closed = 1;
  wl_wake_all(&q->getters);
  wl_wake_all(&q->putters);
  return 0;
}

static int q_len(lua_State *L) {
  lua_pushinteger(L, q_count(check_queue(L)));
  return 1;
}

static int q_tostring(lua_State *L) {
  queue *q = check_queue(L);
  lua_pushfstring(L, "queue (%d/%d%s)", (int)q_count(q), (int)q->cap,
                  q->closed ? ", closed" : "");
  return 1;
}

/* queue([n]) -> q; n = 0 or absent: unbounded */
static int l_queue(lua_State *L) {
  lua_Integer cap = luaL_optinteger(L, 1, 0);
  queue *q;
  luaL_argcheck(L, cap >= 0, 1, "capacity must be >= 0");
  q = lua_newuserdatauv(L, sizeof *q, 1);
  q->cap = cap;
  q->first = 1;
  q->last = 0;
  q->closed = 0;
  wl_init(&q->getters);
  wl_init(&q->putters);
  lua_newtable(L);
  lua_setiuservalue(L, -2, 1);
  luaL_setmetatable(L, QUEUE_MT);
  return 1;
}

/* ---- semaphore -------------------------------------------------------- */

typedef struct sem {
  lua_Integer count;
  waiter waiters;
} sem;

static sem *check_sem(lua_State *L) {
  return luaL_checkudata(L, 1, SEM_MT);
}

static void sem_release1(sem *s) {
  waiter *w = wl_pop(&s->waiters);
  if (w) { /* hand the permit over, so no newcomer can take it first */
    w->granted = 1;
    ah_task_resume(w->task);
  } else
    s->count++;
}

static void sem_waiter_cancel(void *data) {
  wl_remove(data);
}

static int sem_acquire_k(lua_State *L, int status, lua_KContext ctx) {
  sem *s = lua_touserdata(L, 1);
  waiter *w = lua_touserdata(L, 2);
  (void)status;
  (void)ctx;
  if (ah_task_cancelling(w->task)) {
    if (w->granted) sem_release1(s);
    return 0;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* s:acquire() -> true */
static int sem_acquire(lua_State *L) {
  sem *s = check_sem(L);
  ah_task *t;
  waiter *w;
  lua_settop(L, 1);
  if (s->count > 0 && wl_empty(&s->waiters)) {
    s->count--;
    lua_pushboolean(L, 1);
    return 1;
  }
  t = ah_task_check(L, "acquire");
  w = waiter_at(L, 2, t);
  wl_push(&s->waiters, w);
  return ah_task_suspend(L, sem_waiter_cancel, w, sem_acquire_k, 0);
}

static int sem_release(lua_State *L) {
  sem_release1(check_sem(L));
  return 0;
}

static int sem_count(lua_State *L) {
  lua_pushinteger(L, check_sem(L)->count);
  return 1;
}

static int sem_tostring(lua_State *L) {
  lua_pushfstring(L, "semaphore (%d free)", (int)check_sem(L)->count);
  return 1;
}

/* semaphore(n) -> s */
static int l_semaphore(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  sem *s;
  luaL_argcheck(L, n >= 0, 1, "count must be >= 0");
  s = lua_newuserdatauv(L, sizeof *s, 0);
  s->count = n;
  wl_init(&s->waiters);
  luaL_setmetatable(L, SEM_MT);
  return 1;
}

static void new_class(lua_State *L, const char *name, const luaL_Reg *methods) {
  luaL_newmetatable(L, name);
  lua_pushvalue(L, -1);
  lua_setfield(L, -2, "__index");
  luaL_setfuncs(L, methods, 0);
  lua_pop(L, 1);
}

void ah_open_sync(lua_State *L, int mod) {
  static const luaL_Reg qmethods[] = {{"get", q_get},
                                      {"put", q_put},
                                      {"close", q_close},
                                      {"__len", q_len},
                                      {"__tostring", q_tostring},
                                      {NULL, NULL}};
  static const luaL_Reg smethods[] = {{"acquire", sem_acquire},
                                      {"release", sem_release},
                                      {"count", sem_count},
                                      {"__tostring", sem_tostring},
                                      {NULL, NULL}};
  new_class(L, QUEUE_MT, qmethods);
  new_class(L, SEM_MT, smethods);
  lua_pushcfunction(L, l_queue);
  lua_setfield(L, mod, "queue");
  lua_pushcfunction(L, l_semaphore);
  lua_setfield(L, mod, "semaphore");
}
