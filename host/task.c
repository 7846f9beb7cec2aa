/*
** The task scheduler: tasks are coroutines owned by the host, run from one
** place (ah__run_ready), suspended and resumed through the public task API.
*/
#include <string.h>

#include "internal.h"

#define TASK_MT "asynchost.task"

/* ---- the ready queue ------------------------------------------------ */

static void on_idle(uv_idle_t *idle) {
  ah__run_ready(idle->data);
}

void ah__queue_push(ah_host *h, ah_task *t) {
  if (t->queued) return;
  t->queued = 1;
  t->qnext = NULL;
  if (h->qtail)
    h->qtail->qnext = t;
  else {
    h->qhead = t;
    uv_idle_start(&h->idle, on_idle); /* keeps the next poll from blocking */
  }
  h->qtail = t;
}

static ah_task *queue_pop(ah_host *h) {
  ah_task *t = h->qhead;
  if (!t) return NULL;
  h->qhead = t->qnext;
  if (!h->qhead) h->qtail = NULL;
  t->qnext = NULL;
  t->queued = 0;
  return t;
}

/* ---- the task tree -------------------------------------------------- */

static void tree_link(ah_task *parent, ah_task *t) {
  t->parent = parent;
  t->prev = NULL;
  t->next = parent->child;
  if (parent->child) parent->child->prev = t;
  parent->child = t;
  parent->nchildren++;
}

static void tree_unlink(ah_task *t) {
  ah_task *p = t->parent;
  if (!p) return;
  if (t->prev)
    t->prev->next = t->next;
  else
    p->child = t->next;
  if (t->next) t->next->prev = t->prev;
  t->prev = t->next = NULL;
  t->parent = NULL;
  p->nchildren--;
}

void ah__task_detach(ah_task *t) {
  ah_host *h = t->host;
  if (t->state == AH__DONE || t->parent == &h->root) return;
  tree_unlink(t);
  tree_link(&h->root, t);
  t->detached = 1;
}

/* ---- watchers ------------------------------------------------------- */

void ah__watch_add(ah_task *t, ah__watch *w, ah__watch_fn fn) {
  w->task = t;
  w->fn = fn;
  w->prev = NULL;
  w->next = t->watchers;
  if (t->watchers) t->watchers->prev = w;
  t->watchers = w;
}

void ah__watch_remove(ah__watch *w) {
  ah_task *t = w->task;
  if (!t) return;
  if (w->prev)
    w->prev->next = w->next;
  else
    t->watchers = w->next;
  if (w->next) w->next->prev = w->prev;
  w->next = w->prev = NULL;
  w->task = NULL;
}

/* ---- errors --------------------------------------------------------- */

int ah__is_cancel_error(lua_State *L, int idx) {
  size_t len;
  const char *s;
  if (lua_type(L, idx) != LUA_TSTRING) return 0;
  s = lua_tolstring(L, idx, &len);
  return len >= 10 && memcmp(s, "cancelled:", 10) == 0;
}

/* Drops the frames at the bottom of a traceback that are the host's own
   (the CLI's driver chunk and the C functions that called it). */
static void trim_traceback(lua_State *L) {
  size_t len;
  const char *s = lua_tolstring(L, -1, &len);
  const char *end = s + len;
  for (;;) {
    const char *nl = end;
    while (nl > s && nl[-1] != '\n') nl--;
    if (nl == s) break;
    if (strncmp(nl, "\t[C]: in ?", 10) != 0 &&
        strncmp(nl, "\tasynchost.", 11) != 0 &&
        strncmp(nl, "\t[C]: in function 'xpcall'", 26) != 0 &&
        strncmp(nl, "\t[C]: in function 'asynchost._call'", 35) != 0)
      break;
    end = nl - 1;
  }
  if (end != s + len) {
    lua_pushlstring(L, s, (size_t)(end - s));
    lua_replace(L, -2);
  }
}

/* Message handler of every task body: keeps the error value and records
   the traceback where it was raised, unless this value already has one
   (an error re-raised by wait, gather or timeout). */
static int task_msgh(lua_State *L) {
  ah_host *h = ah_host_of(L);
  if (ah__is_cancel_error(L, 1)) return 1;
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->ref_tb);
  lua_rawgeti(L, -1, 1);
  if (lua_rawequal(L, -1, 1)) {
    lua_settop(L, 1);
    return 1;
  }
  lua_pop(L, 1);
  luaL_traceback(L, L, NULL, 1);
  trim_traceback(L);
  lua_rawseti(L, -2, 2);
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, 1);
  lua_settop(L, 1);
  return 1;
}

void ah__push_traceback_msgh(lua_State *L) {
  lua_pushcfunction(L, task_msgh);
}

/* Pushes "file:line" of where the task at idx was spawned, or nil. */
void ah__task_where(lua_State *L, int idx) {
  ah_task *t = lua_touserdata(L, idx);
  lua_Debug ar;
  if (lua_getiuservalue(L, idx, 2) != LUA_TFUNCTION) return;
  lua_getinfo(L, ">S", &ar);
  if (t->line > 0)
    lua_pushfstring(L, "%s:%d", ar.short_src, t->line);
  else
    lua_pushstring(L, ar.short_src);
}

/* Pushes the error value and traceback of the failed task at idx, the
   traceback extended by where the task was spawned. */
static void push_error(lua_State *L, int idx) {
  ah_task *t = lua_touserdata(L, idx);
  lua_State *co = t->co;
  int base = lua_gettop(co) - 1;
  idx = lua_absindex(L, idx);
  lua_checkstack(co, 2);
  lua_pushvalue(co, base);
  lua_pushvalue(co, base + 1);
  lua_xmove(co, L, 2); /* err tb */
  if (!lua_isstring(L, -1) || t->fatal) return;
  ah__task_where(L, idx);
  if (lua_isstring(L, -1))
    lua_pushfstring(L, "%s\n(in task %d spawned at %s)", lua_tostring(L, -2),
                    (int)t->id, lua_tostring(L, -1));
  else
    lua_pushfstring(L, "%s\n(in task %d)", lua_tostring(L, -2), (int)t->id);
  lua_replace(L, -3);
  lua_pop(L, 1);
}

/* Raises the error of the failed task at idx, keeping its traceback for
   the report. */
int ah__task_raise(lua_State *L, int idx) {
  ah_host *h = ah_host_of(L);
  push_error(L, idx); /* err tb */
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->ref_tb);
  lua_insert(L, -2);
  lua_rawseti(L, -2, 2);
  lua_pushvalue(L, -2);
  lua_rawseti(L, -2, 1);
  lua_pop(L, 1);
  return lua_error(L);
}

int ah__raise_cancelled(lua_State *L, ah_task *t) {
  ah__scope *s;
  if (t->cancelled) {
    lua_pushfstring(L, "cancelled: %s",
                    t->reason ? t->reason : "task cancelled");
    return lua_error(L);
  }
  for (s = t->scope; s; s = s->outer)
    if (s->expired) break;
  lua_pushfstring(L, "cancelled: deadline of %f s exceeded",
                  s ? s->seconds : 0.0);
  return lua_error(L);
}

/* ---- creating tasks --------------------------------------------------- */

/* [fn args...] -> [task]: a new task, queued to run. The task object
   holds its coroutine and the function that spawned it (for reports). */
ah_task *ah__task_new(lua_State *L, ah_task *parent, int nargs) {
  ah_host *h = ah_host_of(L);
  ah_task *t = lua_newuserdatauv(L, sizeof *t, 2);
  lua_State *co;
  lua_Debug ar;
  memset(t, 0, sizeof *t);
  t->ref = LUA_NOREF;
  t->host = h;
  luaL_setmetatable(L, TASK_MT);
  co = lua_newthread(L);
  lua_setiuservalue(L, -2, 1);
  lua_insert(L, -(nargs + 2)); /* task fn args */
  lua_checkstack(co, nargs + 1);
  lua_xmove(L, co, nargs + 1);
  if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "fl", &ar)) {
    t->line = ar.currentline;
    lua_setiuservalue(L, -2, 2);
  }
  lua_pushvalue(L, -1);
  t->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  *(ah_task **)lua_getextraspace(co) = t;
  t->co = co;
  t->id = ++h->next_id;
  t->state = AH__NEW;
  tree_link(parent ? parent : &h->root, t);
  h->ntasks++;
  ah__queue_push(h, t);
  return t;
}

/* ---- finishing ------------------------------------------------------ */

static void task_finish(ah_task *t);

/* err tb -> message: the error as text, and its traceback. */
static int format_report(lua_State *L) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
    luaL_addvalue(&b);
  else if (lua_type(L, 1) == LUA_TSTRING || lua_type(L, 1) == LUA_TNUMBER) {
    lua_pushvalue(L, 1);
    luaL_addvalue(&b);
  } else
    luaL_addstring(&b, lua_pushfstring(L, "(error object is a %s value)",
                                       luaL_typename(L, 1)));
  if (lua_isstring(L, 2)) {
    luaL_addchar(&b, '\n');
    lua_pushvalue(L, 2);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  return 1;
}

static void report_uncaught(ah_task *t) {
  ah_host *h = t->host;
  lua_State *L = h->L;
  int top = lua_gettop(L);
  lua_pushcfunction(L, format_report);
  ah_task_push(L, t);
  push_error(L, -1);
  lua_remove(L, -3);
  if (lua_pcall(L, 2, 1, 0) != LUA_OK || !lua_isstring(L, -1)) {
    lua_settop(L, top);
    lua_pushliteral(L, "(error object cannot be shown)");
  }
  if (!t->fatal) {
    lua_pushfstring(L, "error in task %d: ", (int)t->id);
    lua_insert(L, -2);
    lua_concat(L, 2);
  }
  ah__host_report(h, lua_tostring(L, -1));
  lua_settop(L, top);
  h->status = 1;
  if (t->fatal) {
    ah__cancel_all(h, "the main task failed");
    ah_host_shutdown(h);
  }
}

/* A failed task nobody waits for: its parent is cancelled and re-raises
   the error when it ends; at the top, the error is reported. */
static void propagate(ah_task *t) {
  ah_host *h = t->host;
  ah_task *p = t->parent;
  lua_State *L = h->L;
  if (p == &h->root) {
    report_uncaught(t);
    return;
  }
  if (!p->has_perr) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->ref_perr);
    lua_rawgeti(L, LUA_REGISTRYINDEX, p->ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->ref);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    p->has_perr = 1;
  }
  ah__cancel_reason(p, "a child task failed");
}

/* The parent takes the error of the child that failed under it. */
static void adopt_child_error(ah_task *p) {
  ah_host *h = p->host;
  lua_State *L = h->L;
  ah_task *c;
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->ref_perr);
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->ref);
  lua_rawget(L, -2);
  c = lua_touserdata(L, -1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->ref);
  lua_pushnil(L);
  lua_rawset(L, -4);
  if (c) {
    push_error(L, -1);
    lua_settop(p->co, 0);
    lua_xmove(L, p->co, 2);
    p->nres = 2;
    p->outcome = AH__FAILED;
  }
  lua_pop(L, 2);
  p->has_perr = 0;
}

static void task_finish(ah_task *t) {
  ah_host *h = t->host;
  ah_task *p = t->parent;
  int observed = t->watchers != NULL || t->done != NULL;
  if (t->has_perr) adopt_child_error(t);
  t->state = AH__DONE;
  while (t->watchers) {
    ah__watch *w = t->watchers;
    ah__watch_remove(w);
    w->fn(w, t);
  }
  if (t->done) {
    int status = t->outcome == AH__OK       ? AH_OK
                 : t->outcome == AH__FAILED ? AH_ERUN
                                            : AH_ECANCELED;
    int top = lua_gettop(t->co);
    if (status != AH_OK) {
      lua_pushvalue(t->co, -2); /* the error value alone on top */
      ah__set_error(h, lua_tostring(t->co, -1));
    }
    t->done(t, t->co, status, status == AH_OK ? t->nres : 1, t->done_data);
    lua_settop(t->co, top);
  }
  if (t->outcome == AH__FAILED && !observed) propagate(t);
  tree_unlink(t);
  luaL_unref(h->L, LUA_REGISTRYINDEX, t->ref);
  t->ref = LUA_NOREF;
  h->ntasks--;
  if (p && p != &h->root && p->state == AH__ENDED && p->nchildren == 0)
    task_finish(p);
}

static void body_ended(ah_task *t, int nres) {
  t->nres = nres;
  t->state = AH__ENDED;
  t->scope = NULL;
  t->cancel = NULL;
  t->waiting = 0;
  if (t->nchildren == 0) task_finish(t);
}

/* The body raised: the coroutine is dead with its stack intact, so the
   traceback is taken where the error happened (unless the error is one
   already seen, re-raised by wait/gather/timeout); then lua_resetthread
   closes its pending <close> variables. Leaves [spawner err tb]. */
static void body_failed(ah_task *t) {
  ah_host *h = t->host;
  lua_State *co = t->co, *L = h->L;
  int top = lua_gettop(L), st;
  lua_pushvalue(co, -1);
  lua_xmove(co, L, 1); /* err */
  if (ah__is_cancel_error(L, -1))
    lua_pushnil(L);
  else {
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->ref_tb);
    lua_rawgeti(L, -1, 1);
    if (lua_rawequal(L, -1, -3))
      lua_rawgeti(L, -2, 2);
    else {
      luaL_traceback(L, co, NULL, 0);
      trim_traceback(L);
    }
    lua_replace(L, -3);
    lua_pop(L, 1); /* err tb */
  }
  st = lua_resetthread(co); /* runs the __close handlers with err */
  if (st != LUA_OK) {
    lua_pushvalue(L, top + 1);
    lua_xmove(L, co, 1);
    if (!lua_rawequal(co, -1, -2)) { /* a __close handler raised: it wins */
      lua_pop(co, 1);
      lua_xmove(co, L, 1);
      lua_replace(L, top + 1);
      lua_pushnil(L);
      lua_replace(L, top + 2);
    }
  }
  lua_settop(co, 0);
  lua_xmove(L, co, 2);
  t->outcome = (t->cancelled || ah__is_cancel_error(co, -2)) ? AH__CANCELLED
                                                             : AH__FAILED;
  body_ended(t, 2);
}

/* ---- running -------------------------------------------------------- */

static void task_run(ah_task *t) {
  ah_host *h = t->host;
  lua_State *co = t->co;
  int nargs = 0, nres = 0, st;
  if (t->state == AH__NEW) {
    if (t->cancelled) { /* cancelled before it ever ran */
      lua_settop(co, 0);
      lua_pushfstring(co, "cancelled: %s",
                      t->reason ? t->reason : "task cancelled");
      lua_pushnil(co);
      t->outcome = AH__CANCELLED;
      body_ended(t, 2);
      return;
    }
    nargs = lua_gettop(co) - 1;
  }
  t->state = AH__RUNNING;
  h->current = t;
  h->rstack[0] = co;
  h->rdepth = 1;
  if (h->limits) ah__limits_resume(h, co);
  st = lua_resume(co, h->L, nargs, &nres);
  h->current = NULL;
  h->rdepth = 0;
  if (st == LUA_YIELD && h->stopping) { /* see limits.c: stop_hard */
    h->stopping = h->suspending = 0;
    lua_pushstring(co, h->stop_msg);
    body_failed(t);
  } else if (st == LUA_YIELD) {
    t->state = AH__SUSPENDED;
    if (h->suspending)
      h->suspending = 0;
    else { /* a bare coroutine.yield() in a task: like sleep(0) */
      lua_pop(co, nres);
      ah__queue_push(h, t);
    }
  } else if (st == LUA_OK) {
    body_ended(t, nres);
  } else
    body_failed(t);
}

/* Runs the tasks that were ready when it started; tasks made ready while
   it runs wait for the next turn, so sleep(0) lets I/O in. */
void ah__run_ready(ah_host *h) {
  unsigned n = 0;
  ah_task *t;
  if (h->current || h->freeing > 1) return;
  for (t = h->qhead; t; t = t->qnext) n++;
  while (n-- > 0 && !h->exiting && (t = queue_pop(h)) != NULL) task_run(t);
  if (!h->qhead) uv_idle_stop(&h->idle);
}

/* ---- the public task API ---------------------------------------------- */

void ah_host_run_ready(ah_host *h) {
  if (h->qhead) ah__run_ready(h);
}

/* Names the C function that stops co from yielding, for the message. */
static int raise_unyieldable(lua_State *L, lua_State *co, const char *fname) {
  lua_Debug ar;
  int level, first = (co == L) ? 1 : 0;
  for (level = first; lua_getstack(co, level, &ar); level++) {
    lua_getinfo(co, "n", &ar);
    if (ar.name && strcmp(ar.name, "__gc") == 0)
      return luaL_error(L,
                        "%s: cannot suspend inside a __gc metamethod "
                        "(finalizers run where no task can wait)",
                        fname);
  }
  for (level = first; lua_getstack(co, level, &ar); level++) {
    lua_getinfo(co, "Sn", &ar);
    if (*ar.what == 'C' && level > 0 &&
        !(ar.name &&
          (strcmp(ar.name, "pcall") == 0 || strcmp(ar.name, "xpcall") == 0))) {
      const char *who = ar.name
                            ? lua_pushfstring(L, "the C function '%s'", ar.name)
                            : "a C function";
      return luaL_error(L,
                        "%s: cannot suspend inside a callback of %s (such as "
                        "a table.sort comparator or a string.gsub function): "
                        "it cannot wait for a task; move the call out of the "
                        "callback",
                        fname, who);
    }
  }
  return luaL_error(L,
                    "%s: cannot suspend here: a C call boundary is on the "
                    "stack (a C function called Lua without a continuation)",
                    fname);
}

ah_task *ah_task_check(lua_State *L, const char *fname) {
  ah_host *h = ah_host_of(L);
  ah_task *t = h->current;
  int i;
  if (!t)
    luaL_error(L,
               "%s: not inside a task (async functions run in tasks: use the "
               "asynchost CLI, or spawn one)",
               fname);
  if (h->rstack[h->rdepth - 1] != L)
    luaL_error(L,
               "%s: cannot suspend: this coroutine was not resumed by the "
               "task-aware coroutine.resume",
               fname);
  for (i = h->rdepth - 1; i >= 0; i--)
    if (!lua_isyieldable(h->rstack[i]))
      raise_unyieldable(L, h->rstack[i], fname);
  if (t->cancelled || ah__scope_expired(t)) ah__raise_cancelled(L, t);
  return t;
}

/* Continuation of every suspension: raises if the operation was aborted
   by a cancellation, else runs the binding's continuation. */
static int suspend_k(lua_State *L, int status, lua_KContext ctx) {
  ah_task *t = (ah_task *)ctx;
  lua_KFunction k = t->k;
  int n;
  t->k = NULL;
  if (t->interrupted) {
    t->interrupted = 0;
    return ah__raise_cancelled(L, t);
  }
  n = k ? k(L, status, t->kctx) : 0;
  if (t->cancelled || ah__scope_expired(t)) {
    lua_pop(L, n);
    return ah__raise_cancelled(L, t);
  }
  return n;
}

int ah_task_suspend(lua_State *L, ah_cancel_fn cancel, void *data,
                    lua_KFunction k, lua_KContext ctx) {
  ah_host *h = ah_host_of(L);
  ah_task *t = h->current;
  t->cancel = cancel;
  t->cancel_data = data;
  t->k = k;
  t->kctx = ctx;
  t->waiting = 1;
  t->interrupted = 0;
  h->suspending = 1;
  return lua_yieldk(L, 0, (lua_KContext)t, suspend_k);
}

int ah_task_yield(lua_State *L) {
  ah_host *h = ah_host_of(L);
  ah_task *t = h->current;
  t->cancel = NULL;
  t->k = NULL;
  t->waiting = 0;
  t->interrupted = 0;
  ah__queue_push(h, t); /* runs again on the next turn */
  h->suspending = 1;
  return lua_yieldk(L, 0, (lua_KContext)t, suspend_k);
}

int ah_task_cancelling(ah_task *t) {
  return t->cancelled || ah__scope_expired(t);
}

void ah_task_resume(ah_task *t) {
  if (!t->waiting) return;
  t->waiting = 0;
  t->cancel = NULL;
  ah__queue_push(t->host, t);
}

/* Aborts the pending operation, if it can be: its hook stops it, and the
   task wakes up to raise "cancelled". */
void ah__interrupt(ah_task *t) {
  ah_cancel_fn fn = t->cancel;
  if (t->state != AH__SUSPENDED || !t->waiting || !fn) return;
  t->cancel = NULL;
  t->waiting = 0;
  t->interrupted = 1;
  fn(t->cancel_data);
  ah__queue_push(t->host, t);
}

void ah__cancel_reason(ah_task *t, const char *reason) {
  ah_task *c, *next;
  if (t->state == AH__DONE) return;
  if (!t->cancelled) {
    t->cancelled = 1;
    t->reason = reason;
  }
  for (c = t->child; c; c = next) {
    next = c->next;
    ah__cancel_reason(c, reason);
  }
  ah__interrupt(t);
}

void ah_task_cancel(ah_task *t) {
  ah__cancel_reason(t, "task cancelled");
}

void ah__cancel_all(ah_host *h, const char *reason) {
  ah_task *c, *next;
  for (c = h->root.child; c; c = next) {
    next = c->next;
    ah__cancel_reason(c, reason);
  }
}

ah_task *ah_task_current(ah_host *h) {
  return h->current;
}

ah_host *ah_task_host(ah_task *t) {
  return t->host;
}

unsigned ah_task_id(ah_task *t) {
  return t->id;
}

/* Pushes the task object, or nil once the task is done (the registry
   holds it only until then). */
void ah_task_push(lua_State *L, ah_task *t) {
  if (t->ref != LUA_NOREF)
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->ref);
  else
    lua_pushnil(L);
}

const char *ah__task_status(ah_task *t) {
  if (t->state != AH__DONE) return "running";
  switch (t->outcome) {
  case AH__OK:
    return "done";
  case AH__FAILED:
    return "failed";
  default:
    return "cancelled";
  }
}

/* Pushes a done task's results (just the first, or all). */
int ah__task_results(lua_State *L, ah_task *t, int first_only) {
  lua_State *co = t->co;
  int n = t->nres, base = lua_gettop(co) - n + 1, i;
  if (first_only) {
    if (n == 0) {
      lua_pushnil(L);
      return 1;
    }
    n = 1;
  }
  luaL_checkstack(L, n, "too many results");
  lua_checkstack(co, n);
  for (i = 0; i < n; i++) lua_pushvalue(co, base + i);
  lua_xmove(co, L, n);
  return n;
}

ah_task *ah__task_test(lua_State *L, int idx) {
  return luaL_testudata(L, idx, TASK_MT);
}

ah_task *ah__task_check(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, TASK_MT);
}
