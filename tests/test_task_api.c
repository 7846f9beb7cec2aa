/*
** The embedding API, as an application uses it: hosts on the
** application's loop and on their own, several hosts in one process,
** tasks started from C with their results and errors, cancellation from
** C, an async Lua function of the application's on the thread pool
** (myapp.compute) with its cancellation, timers, hooks, counts, errors.
**
** libuv-style: one TEST per behaviour, counting callbacks; every test on
** an application loop ends by checking that the loop closes with no
** handle left behind.
**   test_task_api [name...]     (no name: all)
*/
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "asynchost.h"

#include "test_assert.h"

/* ---- helpers ------------------------------------------------------------ */

/* Runs a chunk on the host's state outside any task (setup, checks). */
static void run_lua(ah_host *h, const char *chunk) {
  lua_State *L = ah_host_lua(h);
  if (luaL_dostring(L, chunk) != LUA_OK) {
    fprintf(stderr, "lua: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_settop(L, 0);
}

/* The value of a Lua expression (outside tasks) as an integer / string. */
static lua_Integer lua_int(ah_host *h, const char *expr) {
  lua_State *L = ah_host_lua(h);
  lua_Integer v;
  lua_pushfstring(L, "return (%s)", expr);
  if (luaL_dostring(L, lua_tostring(L, -1)) != LUA_OK) {
    fprintf(stderr, "lua: %s\n", lua_tostring(L, -1));
    abort();
  }
  v = lua_tointeger(L, -1);
  lua_settop(L, 0);
  return v;
}

static char *lua_str(ah_host *h, const char *expr) {
  lua_State *L = ah_host_lua(h);
  const char *s;
  char *copy;
  lua_pushfstring(L, "return (%s)", expr);
  if (luaL_dostring(L, lua_tostring(L, -1)) != LUA_OK) {
    fprintf(stderr, "lua: %s\n", lua_tostring(L, -1));
    abort();
  }
  s = lua_tostring(L, -1);
  copy = strdup(s ? s : "(nil)");
  lua_settop(L, 0);
  return copy;
}

/* Pushes the function a chunk returns, ready for ah_host_spawn_call. */
static void push_fn(ah_host *h, const char *chunk) {
  lua_State *L = ah_host_lua(h);
  if (luaL_loadstring(L, chunk) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
    fprintf(stderr, "lua: %s\n", lua_tostring(L, -1));
    abort();
  }
  ASSERT(lua_isfunction(L, -1));
}

/* What a done callback saw. */
typedef struct outcome {
  int calls, status, nres;
  lua_Integer ints[4];
  char text[512];
  int types[4];
} outcome;

static void on_done(ah_task *t, lua_State *L, int status, int nres,
                    void *data) {
  outcome *o = data;
  int i;
  ASSERT(t != NULL);
  o->calls++;
  o->status = status;
  o->nres = nres;
  for (i = 0; i < nres && i < 4; i++) {
    o->types[i] = lua_type(L, -nres + i);
    o->ints[i] = lua_tointeger(L, -nres + i);
  }
  if (status != AH_OK || (nres > 0 && lua_type(L, -nres) == LUA_TSTRING)) {
    const char *s = lua_tostring(L, status != AH_OK ? -1 : -nres);
    snprintf(o->text, sizeof o->text, "%s", s ? s : "(not a string)");
  }
}

/* Runs an application loop until nothing is left on it. */
static void run_loop(uv_loop_t *loop) {
  uv_run(loop, UV_RUN_DEFAULT);
}

static void close_walk_cb(uv_handle_t *handle, void *arg) {
  (void)arg;
  fprintf(stderr, "left on the loop: handle type %s, active %d\n",
          uv_handle_type_name(uv_handle_get_type(handle)),
          uv_is_active(handle));
}

/* libuv's test epilogue: the loop must close with nothing left. */
static void assert_loop_closes(uv_loop_t *loop) {
  int rc = uv_loop_close(loop);
  if (rc != 0) uv_walk(loop, close_walk_cb, NULL);
  ASSERT_INT(rc, 0);
}

/* ---- myapp.compute(n): the application's own async function ------------ */

typedef struct app {
  int started, worked, resumed, after, after_cancelled, cancels, inflight;
  atomic_int running; /* a worker is inside compute_work */
  atomic_int release; /* lets blockers finish */
} app;

typedef struct compute_op {
  uv_work_t req;
  app *app;
  ah_host *host;
  ah_task *task;
  lua_Integer n, result;
  atomic_int stop;
  int abandoned;
} compute_op;

/* n < 0: run until stopped (a long job); else the sum 1..n */
static void compute_work(uv_work_t *req) {
  compute_op *op = req->data;
  lua_Integer i, sum = 0;
  atomic_fetch_add(&op->app->running, 1);
  if (op->n < 0) {
    while (!atomic_load(&op->stop)) usleep(1000);
  } else
    for (i = 1; i <= op->n; i++) sum += i;
  op->result = sum;
  op->app->worked++; /* read on the loop thread after the after-callback */
  atomic_fetch_sub(&op->app->running, 1);
}

static void compute_after(uv_work_t *req, int status) {
  compute_op *op = req->data;
  app *a = op->app;
  a->after++;
  a->inflight--;
  if (status == UV_ECANCELED) a->after_cancelled++;
  if (op->abandoned) {
    free(op);
    return;
  }
  a->resumed++;
  ah_task_resume(op->task);
}

static void compute_cancel(void *data) {
  compute_op *op = data;
  op->app->cancels++;
  op->abandoned = 1;
  atomic_store(&op->stop, 1);
  uv_cancel((uv_req_t *)&op->req);
  ah_host_count(op->host, "myapp.compute", -1);
}

static int compute_k(lua_State *L, int status, lua_KContext ctx) {
  compute_op *op = (compute_op *)ctx;
  ASSERT_INT(status, LUA_YIELD);
  ah_host_count(op->host, "myapp.compute", -1);
  lua_pushinteger(L, op->result);
  free(op);
  return 1;
}

static int l_compute(lua_State *L) {
  app *a = lua_touserdata(L, lua_upvalueindex(1));
  lua_Integer n = luaL_checkinteger(L, 1);
  ah_task *t = ah_task_check(L, "myapp.compute");
  compute_op *op = calloc(1, sizeof *op);
  int rc;
  ASSERT(op != NULL);
  op->req.data = op;
  op->app = a;
  op->host = ah_task_host(t);
  op->task = t;
  op->n = n;
  atomic_init(&op->stop, 0);
  rc = uv_queue_work(ah_host_loop(op->host), &op->req, compute_work,
                     compute_after);
  if (rc != 0) {
    free(op);
    return ah_push_fail(L, "io", "myapp.compute: %s", uv_strerror(rc));
  }
  a->started++;
  a->inflight++;
  ah_host_count(op->host, "myapp.compute", 1);
  return ah_task_suspend(L, compute_cancel, op, compute_k, (lua_KContext)op);
}

/* AH_ON_CLOSE: abandoned work still on the thread pool must end before
   the loop closes. */
static void drain_work(ah_host *h, void *data) {
  app *a = data;
  while (a->inflight > 0) uv_run(ah_host_loop(h), UV_RUN_ONCE);
}

static void open_myapp(ah_host *h, app *a) {
  static const luaL_Reg funcs[] = {{"compute", l_compute}, {NULL, NULL}};
  lua_State *L = ah_host_lua(h);
  luaL_newlibtable(L, funcs);
  lua_pushlightuserdata(L, a);
  luaL_setfuncs(L, funcs, 1);
  lua_setglobal(L, "myapp");
  ASSERT_INT(ah_host_hook(h, AH_ON_CLOSE, drain_work, a), AH_OK);
}

/* ---- tests: hosts and loops ---------------------------------------------- */

typedef struct ticker {
  uv_timer_t timer;
  int ticks;
} ticker;

static void on_tick(uv_timer_t *timer) {
  ((ticker *)timer->data)->ticks++;
}

static void stop_ticker(ah_task *t, lua_State *L, int status, int nres,
                        void *data) {
  ticker *k = data;
  (void)t, (void)L, (void)nres;
  ASSERT_INT(status, AH_OK);
  uv_close((uv_handle_t *)&k->timer, NULL);
}

static void test_host_on_app_loop(void) {
  uv_loop_t loop;
  ah_options o = {0};
  ticker k = {0};
  ah_host *h;
  ASSERT_INT(uv_loop_init(&loop), 0);
  uv_timer_init(&loop, &k.timer);
  k.timer.data = &k;
  uv_timer_start(&k.timer, on_tick, 5, 5); /* the application's own work */
  o.loop = &loop;
  h = ah_host_new(&o);
  ASSERT(h != NULL);
  ASSERT(ah_host_loop(h) == &loop);
  ASSERT(ah_host_of(ah_host_lua(h)) == h);
  push_fn(h, "local ah = require 'asynchost'\n"
             "return function() ah.sleep(0.02) result = 42 end");
  ASSERT_INT(ah_host_spawn_call(h, 0, stop_ticker, &k, NULL), AH_OK);
  ASSERT_INT(ah_host_busy(h), 1);
  run_loop(&loop); /* the application runs its loop; tasks run on it */
  ASSERT_INT(ah_host_busy(h), 0);
  ASSERT_INT(lua_int(h, "result"), 42);
  ASSERT_INT(lua_int(h, "sleep == nil and 1 or 0"), 1); /* globals: off */
  ah_host_free(h);
  assert_loop_closes(&loop);
}

static void test_host_on_app_loop_runs_next_to_app_timer(void) {
  uv_loop_t loop;
  ah_options o = {0};
  ticker k = {0};
  ah_host *h;
  uv_loop_init(&loop);
  uv_timer_init(&loop, &k.timer);
  k.timer.data = &k;
  uv_timer_start(&k.timer, on_tick, 5, 5);
  o.loop = &loop;
  o.globals = 1;
  h = ah_host_new(&o);
  push_fn(h, "return function() sleep(0.1) result = 42 end");
  ASSERT_INT(ah_host_spawn_call(h, 0, stop_ticker, &k, NULL), AH_OK);
  run_loop(&loop);
  ASSERT_INT(lua_int(h, "result"), 42);
  ASSERT(k.ticks >= 1); /* the app's timer ticked while the task slept */
  ah_host_free(h);
  assert_loop_closes(&loop);
}

static void test_host_on_internal_loop(void) {
  outcome o = {0};
  ah_host *h = ah_host_new(NULL);
  ASSERT(h != NULL);
  ASSERT(ah_host_loop(h) != NULL);
  push_fn(h, "local ah = require 'asynchost'\n"
             "return function(a, b) ah.sleep(0.01) return a + b, 'x', nil end");
  lua_pushinteger(ah_host_lua(h), 40);
  lua_pushinteger(ah_host_lua(h), 2);
  ASSERT_INT(ah_host_spawn_call(h, 2, on_done, &o, NULL), AH_OK);
  ASSERT_INT(lua_gettop(ah_host_lua(h)), 0); /* fn and args were popped */
  ASSERT_INT(o.calls, 0);                    /* nothing runs before the loop */
  ASSERT_INT(ah_host_run(h), 0);
  ASSERT_INT(o.calls, 1);
  ASSERT_INT(o.status, AH_OK);
  ASSERT_INT(o.nres, 3);
  ASSERT_INT(o.ints[0], 42);
  ASSERT_INT(o.types[1], LUA_TSTRING);
  ASSERT_INT(o.types[2], LUA_TNIL);
  ASSERT_INT(ah_host_status(h), 0);
  ah_host_free(h);
}

static void test_two_hosts_share_one_loop(void) {
  uv_loop_t loop;
  ah_options o = {0};
  outcome a = {0}, b = {0};
  ah_host *h1, *h2;
  uv_loop_init(&loop);
  o.loop = &loop;
  o.globals = 1;
  h1 = ah_host_new(&o);
  h2 = ah_host_new(&o);
  ASSERT(h1 && h2 && h1 != h2);
  ASSERT(ah_host_lua(h1) != ah_host_lua(h2));
  run_lua(h1, "who = 'one'");
  run_lua(h2, "who = 'two'");
  push_fn(h1, "return function() sleep(0.05) order = (order or '') .. who "
              "return who end");
  ASSERT_INT(ah_host_spawn_call(h1, 0, on_done, &a, NULL), AH_OK);
  push_fn(h2, "return function() sleep(0.01) order = (order or '') .. who "
              "return who end");
  ASSERT_INT(ah_host_spawn_call(h2, 0, on_done, &b, NULL), AH_OK);
  run_loop(&loop);
  ASSERT_INT(a.calls, 1);
  ASSERT_INT(b.calls, 1);
  ASSERT(strcmp(a.text, "one") == 0);
  ASSERT(strcmp(b.text, "two") == 0);
  {
    char *o1 = lua_str(h1, "order"), *o2 = lua_str(h2, "order");
    ASSERT(strcmp(o1, "one") == 0); /* states share nothing */
    ASSERT(strcmp(o2, "two") == 0);
    free(o1);
    free(o2);
  }
  ah_host_free(h1);
  ASSERT_INT(uv_loop_close(&loop), UV_EBUSY); /* h2 still has its handles */
  ah_host_free(h2);
  assert_loop_closes(&loop);
}

static void test_two_hosts_with_own_loops(void) {
  outcome a = {0}, b = {0};
  ah_host *h1 = ah_host_new(NULL), *h2 = ah_host_new(NULL);
  ASSERT(h1 && h2);
  ASSERT(ah_host_loop(h1) != ah_host_loop(h2));
  push_fn(h1, "local ah = require 'asynchost' "
              "return function() ah.sleep(0.01) return 1 end");
  ah_host_spawn_call(h1, 0, on_done, &a, NULL);
  push_fn(h2, "local ah = require 'asynchost' "
              "return function() ah.sleep(0.01) return 2 end");
  ah_host_spawn_call(h2, 0, on_done, &b, NULL);
  ASSERT_INT(ah_host_run(h2), 0); /* one host's loop does not run the other */
  ASSERT_INT(b.calls, 1);
  ASSERT_INT(a.calls, 0);
  ASSERT_INT(ah_host_busy(h1), 1);
  ASSERT_INT(ah_host_run(h1), 0);
  ASSERT_INT(a.calls, 1);
  ASSERT_INT(a.ints[0], 1);
  ASSERT_INT(b.ints[0], 2);
  ah_host_free(h1);
  ah_host_free(h2);
}

/* ---- tests: starting tasks ------------------------------------------------
 */

static void test_spawn_string_runs_a_chunk(void) {
  ah_options o = {0};
  ah_task *t = NULL;
  ah_host *h;
  o.globals = 1;
  h = ah_host_new(&o);
  ASSERT_INT(ah_host_spawn_string(h, "sleep(0.01) done = 7", "=chunk", &t),
             AH_OK);
  ASSERT(t != NULL);
  ASSERT(ah_task_id(t) > 0);
  ASSERT(ah_task_host(t) == h);
  ASSERT_INT(ah_host_run(h), 0);
  ASSERT_INT(lua_int(h, "done"), 7);
  ah_host_free(h);
}

static void test_syntax_error_is_ah_esyntax(void) {
  ah_host *h = ah_host_new(NULL);
  ah_task *t = NULL;
  ASSERT_INT(ah_host_spawn_string(h, "return +", "=bad", &t), AH_ESYNTAX);
  ASSERT(t == NULL);
  ASSERT_HAS(ah_host_error(h), "bad:1:");
  ASSERT_HAS(ah_host_error(h), "unexpected symbol");
  ASSERT_INT(lua_gettop(ah_host_lua(h)), 0);
  ASSERT_INT(ah_host_busy(h), 0);
  ASSERT_INT(ah_host_run(h), 0);
  ah_host_free(h);
}

static void test_missing_file_is_ah_efile(void) {
  ah_host *h = ah_host_new(NULL);
  const char *argv[] = {"a"};
  ASSERT_INT(ah_host_spawn_file(h, "/nonexistent/dir/x.lua", 1, argv, NULL),
             AH_EFILE);
  ASSERT_HAS(ah_host_error(h), "/nonexistent/dir/x.lua");
  ASSERT_HAS(ah_host_error(h), "No such file");
  ASSERT_INT(lua_gettop(ah_host_lua(h)), 0); /* the args were popped too */
  ah_host_free(h);
}

static void test_spawn_file_passes_args(void) {
  char path[] = "/tmp/ah-test-XXXXXX";
  const char *argv[] = {"alpha", "beta"};
  ah_options o = {0};
  ah_host *h;
  int fd = mkstemp(path);
  FILE *f;
  ASSERT(fd >= 0);
  f = fdopen(fd, "w");
  fputs("local a, b = ...\nsleep(0)\ngot = a .. '+' .. b .. '#' .. select('#', "
        "...)\n",
        f);
  fclose(f);
  o.globals = 1;
  h = ah_host_new(&o);
  ASSERT_INT(ah_host_spawn_file(h, path, 2, argv, NULL), AH_OK);
  ASSERT_INT(ah_host_run(h), 0);
  {
    char *got = lua_str(h, "got");
    ASSERT(strcmp(got, "alpha+beta#2") == 0);
    free(got);
  }
  ah_host_free(h);
  unlink(path);
}

static void test_spawn_call_without_function_is_einval(void) {
  ah_host *h = ah_host_new(NULL);
  lua_State *L = ah_host_lua(h);
  lua_pushinteger(L, 1);
  ASSERT_INT(ah_host_spawn_call(h, 0, on_done, NULL, NULL), AH_EINVAL);
  ASSERT_HAS(ah_host_error(h), "no function");
  ASSERT_INT(ah_host_busy(h), 0);
  lua_settop(L, 0);
  ah_host_free(h);
}

static void test_task_error_is_ah_erun_with_message(void) {
  outcome o = {0};
  ah_host *h = ah_host_new(NULL);
  push_fn(h, "local ah = require 'asynchost' "
             "return function() ah.sleep(0.01) error('boom') end");
  ASSERT_INT(ah_host_spawn_call(h, 0, on_done, &o, NULL), AH_OK);
  ASSERT_INT(ah_host_run(h), 0); /* a C caller saw it: not uncaught */
  ASSERT_INT(o.calls, 1);
  ASSERT_INT(o.status, AH_ERUN);
  ASSERT_INT(o.nres, 1);
  ASSERT_HAS(o.text, "boom");
  ASSERT_HAS(ah_host_error(h), "boom");
  ah_host_free(h);
}

static void test_error_value_keeps_its_type(void) {
  outcome o = {0};
  ah_host *h = ah_host_new(NULL);
  push_fn(h, "return function() error({code = 17}) end");
  ah_host_spawn_call(h, 0, on_done, &o, NULL);
  ah_host_run(h);
  ASSERT_INT(o.status, AH_ERUN);
  ASSERT_INT(o.types[0], LUA_TTABLE);
  ah_host_free(h);
}

static void test_uncaught_error_makes_status_1(void) {
  ah_host *h = ah_host_new(NULL);
  ASSERT_INT(ah_host_spawn_string(h, "error('uncaught here')", "=main", NULL),
             AH_OK);
  ASSERT_INT(ah_host_run(h), 1);
  ASSERT_INT(ah_host_status(h), 1);
  ASSERT_HAS(ah_host_error(h), "uncaught here");
  ah_host_free(h);
}

/* ---- tests: cancellation from C ---------------------------------------- */

/* Cancels a task from a uv_timer, once the task said ready() (so it
   waits in sleep: a slow start, under valgrind, must not make the cancel
   come before the task ran). */
typedef struct canceller {
  uv_timer_t timer;
  ah_task *task;
  int fired, ready;
} canceller;

static void on_cancel_timer(uv_timer_t *timer);

static int l_ready(lua_State *L) {
  ((canceller *)lua_touserdata(L, lua_upvalueindex(1)))->ready = 1;
  return 0;
}

static void start_canceller(ah_host *h, uv_loop_t *loop, canceller *c) {
  lua_State *L = ah_host_lua(h);
  lua_pushlightuserdata(L, c);
  lua_pushcclosure(L, l_ready, 1);
  lua_setglobal(L, "ready");
  uv_timer_init(loop, &c->timer);
  c->timer.data = c;
  uv_timer_start(&c->timer, on_cancel_timer, 5, 1);
}

static void on_cancel_timer(uv_timer_t *timer) {
  canceller *c = timer->data;
  if (!c->ready) return;
  c->fired++;
  ah_task_cancel(c->task);
  uv_close((uv_handle_t *)timer, NULL);
}

static void test_ah_task_cancel_from_c(void) {
  uv_loop_t loop;
  ah_options o = {0};
  outcome out = {0};
  canceller c = {0};
  ah_host *h;
  uv_loop_init(&loop);
  o.loop = &loop;
  o.globals = 1;
  h = ah_host_new(&o);
  push_fn(h, "return function()\n"
             "  local guard <close> = setmetatable({}, {__close = function() "
             "closed = true end})\n"
             "  ready()\n"
             "  sleep(10)\n"
             "  after = true\n"
             "end");
  ASSERT_INT(ah_host_spawn_call(h, 0, on_done, &out, &c.task), AH_OK);
  start_canceller(h, &loop, &c);
  run_loop(&loop); /* ends well before 10 s: sleep was aborted */
  ASSERT_INT(c.fired, 1);
  ASSERT_INT(out.calls, 1);
  ASSERT_INT(out.status, AH_ECANCELED);
  ASSERT_HAS(out.text, "cancelled:");
  ASSERT_INT(lua_int(h, "closed and 1 or 0"), 1); /* <close> ran */
  ASSERT_INT(lua_int(h, "after and 1 or 0"), 0);  /* the rest did not */
  ASSERT_INT(lua_int(h, "require('asynchost').stats().timers"), 0);
  ah_host_free(h);
  assert_loop_closes(&loop);
}

static void test_cancel_before_start_never_runs(void) {
  outcome out = {0};
  ah_options o = {0};
  ah_task *t;
  ah_host *h;
  o.globals = 1;
  h = ah_host_new(&o);
  push_fn(h, "return function() ran = true end");
  ASSERT_INT(ah_host_spawn_call(h, 0, on_done, &out, &t), AH_OK);
  ah_task_cancel(t);
  ASSERT_INT(ah_host_run(h), 0);
  ASSERT_INT(out.calls, 1);
  ASSERT_INT(out.status, AH_ECANCELED);
  ASSERT_INT(lua_int(h, "ran and 1 or 0"), 0);
  ah_host_free(h);
}

static void test_cancel_reaches_children(void) {
  uv_loop_t loop;
  ah_options o = {0};
  outcome out = {0};
  canceller c = {0};
  ah_host *h;
  uv_loop_init(&loop);
  o.loop = &loop;
  o.globals = 1;
  h = ah_host_new(&o);
  push_fn(h, "return function()\n"
             "  local kids = {}\n"
             "  for i = 1, 3 do kids[i] = spawn(function()\n"
             "    local g <close> = setmetatable({}, {__close = function() "
             "closed = (closed or 0) + 1 end})\n"
             "    sleep(10)\n"
             "  end) end\n"
             "  sleep(0.01) -- the children are waiting now\n"
             "  ready()\n"
             "  sleep(10)\n"
             "end");
  ah_host_spawn_call(h, 0, on_done, &out, &c.task);
  start_canceller(h, &loop, &c);
  run_loop(&loop);
  ASSERT_INT(out.status, AH_ECANCELED);
  ASSERT_INT(lua_int(h, "closed"), 3);
  ASSERT_INT(lua_int(h, "require('asynchost').stats().tasks"), 0);
  ah_host_free(h);
  assert_loop_closes(&loop);
}

static void test_shutdown_cancels_after_drain_time(void) {
  outcome out = {0};
  ah_options o = {0};
  ah_host *h;
  o.globals = 1;
  h = ah_host_new(&o);
  run_lua(h, "require('asynchost').shutdown_timeout(0.02)");
  push_fn(h, "return function() sleep(10) end");
  ah_host_spawn_call(h, 0, on_done, &out, NULL);
  ah_host_shutdown(h);
  ASSERT_INT(lua_int(h, "require('asynchost').shutting_down() and 1 or 0"), 1);
  ah_host_run(h);
  ASSERT_INT(out.calls, 1);
  ASSERT_INT(out.status, AH_ECANCELED);
  ASSERT_HAS(out.text, "shutdown");
  ah_host_free(h);
}

static void test_free_cancels_running_tasks(void) {
  outcome out = {0};
  ah_options o = {0};
  ah_host *h;
  o.globals = 1;
  h = ah_host_new(&o);
  push_fn(h, "return function() sleep(10) end");
  ah_host_spawn_call(h, 0, on_done, &out, NULL);
  uv_run(ah_host_loop(h), UV_RUN_NOWAIT); /* it starts and sleeps */
  ASSERT_INT(ah_host_busy(h), 1);
  ASSERT_INT(out.calls, 0);
  ah_host_free(h); /* no loop run needed: the sleep is aborted */
  ASSERT_INT(out.calls, 1);
  ASSERT_INT(out.status, AH_ECANCELED);
}

/* ---- tests: an async function of the application's ---------------------- */

static ah_host *compute_host(uv_loop_t *loop, app *a) {
  ah_options o = {0};
  ah_host *h;
  o.loop = loop;
  o.globals = 1;
  h = ah_host_new(&o);
  ASSERT(h != NULL);
  open_myapp(h, a);
  return h;
}

static void test_custom_async_function_returns_results(void) {
  uv_loop_t loop;
  app a = {0};
  outcome out = {0};
  ah_host *h;
  uv_loop_init(&loop);
  h = compute_host(&loop, &a);
  push_fn(h, "return function()\n"
             "  local r = gather({1, 10, 100, 1000}, function(n) return "
             "myapp.compute(n) end)\n"
             "  return r[1], r[2], r[3], r[4]\n"
             "end");
  ah_host_spawn_call(h, 0, on_done, &out, NULL);
  run_loop(&loop);
  ASSERT_INT(out.status, AH_OK);
  ASSERT_INT(out.nres, 4);
  ASSERT_INT(out.ints[0], 1);
  ASSERT_INT(out.ints[1], 55);
  ASSERT_INT(out.ints[2], 5050);
  ASSERT_INT(out.ints[3], 500500);
  ASSERT_INT(a.started, 4);
  ASSERT_INT(a.worked, 4);
  ASSERT_INT(a.after, 4);
  ASSERT_INT(a.resumed, 4);
  ASSERT_INT(a.cancels, 0);
  ASSERT_INT(lua_int(h, "require('asynchost').stats()['myapp.compute']"), 0);
  ah_host_free(h);
  assert_loop_closes(&loop);
}

/* cancels the task once its job runs on the thread pool */
typedef struct watcher {
  uv_timer_t timer;
  app *app;
  ah_task *task;
  int cancelled;
} watcher;

static void on_watch(uv_timer_t *timer) {
  watcher *w = timer->data;
  if (atomic_load(&w->app->running) == 0) return;
  w->cancelled++;
  ah_task_cancel(w->task);
  uv_close((uv_handle_t *)timer, NULL);
}

static void test_custom_async_function_cancelled_while_running(void) {
  uv_loop_t loop;
  app a = {0};
  outcome out = {0};
  watcher w = {0};
  ah_host *h;
  uv_loop_init(&loop);
  h = compute_host(&loop, &a);
  push_fn(h, "return function() local r = myapp.compute(-1) after = true "
             "return r end");
  ah_host_spawn_call(h, 0, on_done, &out, &w.task);
  w.app = &a;
  uv_timer_init(&loop, &w.timer);
  w.timer.data = &w;
  uv_timer_start(&w.timer, on_watch, 1, 1);
  run_loop(&loop); /* the job only ends when the cancel hook stops it */
  ASSERT_INT(w.cancelled, 1);
  ASSERT_INT(out.status, AH_ECANCELED);
  ASSERT_HAS(out.text, "cancelled: task cancelled");
  ASSERT_INT(a.cancels, 1);
  ASSERT_INT(a.worked, 1);
  ASSERT_INT(a.after, 1);
  ASSERT_INT(a.after_cancelled, 0);
  ASSERT_INT(a.resumed, 0); /* an abandoned op never resumes the task */
  ASSERT_INT(lua_int(h, "after and 1 or 0"), 0);
  ASSERT_INT(lua_int(h, "require('asynchost').stats()['myapp.compute']"), 0);
  ah_host_free(h);
  assert_loop_closes(&loop);
}

/* A job queued behind busy pool threads: cancelled before it starts. */
static void blocker_work(uv_work_t *req) {
  app *a = req->data;
  atomic_fetch_add(&a->running, 1);
  while (!atomic_load(&a->release)) usleep(1000);
}

static void blocker_after(uv_work_t *req, int status) {
  (void)req;
  ASSERT_INT(status, 0);
}

/* lets the blockers go once the queued job was cancelled */
static void on_release(uv_timer_t *timer) {
  app *a = timer->data;
  if (a->cancels == 0) return;
  atomic_store(&a->release, 1);
  uv_close((uv_handle_t *)timer, NULL);
}

static void test_custom_async_function_cancelled_before_running(void) {
  uv_loop_t loop;
  app a = {0};
  outcome out = {0};
  uv_work_t blockers[2]; /* UV_THREADPOOL_SIZE is 2: see main() */
  uv_timer_t release;
  ah_host *h;
  int i;
  uv_loop_init(&loop);
  for (i = 0; i < 2; i++) {
    blockers[i].data = &a;
    ASSERT_INT(uv_queue_work(&loop, &blockers[i], blocker_work, blocker_after),
               0);
  }
  while (atomic_load(&a.running) < 2) usleep(1000); /* the pool is busy */
  h = compute_host(&loop, &a);
  push_fn(h, "return function()\n"
             "  local r, err = timeout(0.02, myapp.compute, 10)\n"
             "  return r, err\n"
             "end");
  ah_host_spawn_call(h, 0, on_done, &out, NULL);
  uv_timer_init(&loop, &release);
  release.data = &a;
  uv_timer_start(&release, on_release, 1, 1);
  run_loop(&loop);
  ASSERT_INT(out.status, AH_OK);
  ASSERT_INT(out.nres, 2);
  ASSERT_INT(out.types[0], LUA_TNIL);
  ASSERT_INT(out.types[1], LUA_TSTRING);
  ASSERT_INT(a.started, 1);
  ASSERT_INT(a.cancels, 1);
  ASSERT_INT(a.after, 1);
  ASSERT_INT(a.after_cancelled, 1); /* uv_cancel took it off the queue */
  ASSERT_INT(a.worked, 0);          /* so it never ran */
  ASSERT_INT(a.resumed, 0);
  ah_host_free(h);
  assert_loop_closes(&loop);
}

static void test_timeout_cancels_the_custom_function(void) {
  uv_loop_t loop;
  app a = {0};
  outcome out = {0};
  ah_host *h;
  uv_loop_init(&loop);
  h = compute_host(&loop, &a);
  push_fn(h, "return function()\n"
             "  local r, err = timeout(0.02, myapp.compute, -1)\n"
             "  return err\n"
             "end");
  ah_host_spawn_call(h, 0, on_done, &out, NULL);
  run_loop(&loop);
  ASSERT_INT(out.status, AH_OK);
  ASSERT_HAS(out.text, "timeout:");
  ASSERT_INT(a.cancels, 1);
  ASSERT_INT(a.resumed, 0);
  ah_host_free(h);
  assert_loop_closes(&loop);
}

static void test_free_waits_for_abandoned_work(void) {
  uv_loop_t loop;
  app a = {0};
  outcome out = {0};
  ah_host *h;
  uv_loop_init(&loop);
  h = compute_host(&loop, &a);
  push_fn(h, "return function() return myapp.compute(-1) end");
  ah_host_spawn_call(h, 0, on_done, &out, NULL);
  while (atomic_load(&a.running) == 0) uv_run(&loop, UV_RUN_NOWAIT);
  ah_host_free(h); /* cancels: the hook stops the job, drain_work waits */
  ASSERT_INT(out.status, AH_ECANCELED);
  ASSERT_INT(a.inflight, 0);
  ASSERT_INT(a.after, 1);
  assert_loop_closes(&loop);
}

static void test_custom_function_misuse_raises(void) {
  uv_loop_t loop;
  app a = {0};
  outcome out = {0};
  ah_host *h;
  lua_State *L;
  uv_loop_init(&loop);
  h = compute_host(&loop, &a);
  L = ah_host_lua(h);
  /* outside a task: raises, starts nothing */
  ASSERT(luaL_dostring(L, "return myapp.compute(5)") != LUA_OK);
  ASSERT_HAS(lua_tostring(L, -1), "myapp.compute: not inside a task");
  lua_settop(L, 0);
  /* a callback that cannot suspend: raises with where and why */
  push_fn(h,
          "return function() local t = {3, 1, 2}\n"
          "  table.sort(t, function(x, y) myapp.compute(1) return x < y end)\n"
          "end");
  ah_host_spawn_call(h, 0, on_done, &out, NULL);
  run_loop(&loop);
  ASSERT_INT(out.status, AH_ERUN);
  ASSERT_HAS(out.text, "myapp.compute: cannot suspend");
  /* a bad argument */
  memset(&out, 0, sizeof out);
  push_fn(h, "return function() return myapp.compute('many') end");
  ah_host_spawn_call(h, 0, on_done, &out, NULL);
  run_loop(&loop);
  ASSERT_INT(out.status, AH_ERUN);
  ASSERT_HAS(out.text, "bad argument #1");
  ASSERT_INT(a.started, 0);
  ah_host_free(h);
  assert_loop_closes(&loop);
}

/* A C function that checks what the task API says about the caller. */
static int l_whoami(lua_State *L) {
  ah_host *h = ah_host_of(L);
  ah_task *t = ah_task_current(h);
  lua_pushinteger(L, t ? (lua_Integer)ah_task_id(t) : -1);
  if (t)
    ah_task_push(L, t);
  else
    lua_pushnil(L);
  return 2;
}

static void test_current_task_from_c(void) {
  ah_options o = {0};
  outcome out = {0};
  ah_task *t;
  ah_host *h;
  o.globals = 1;
  h = ah_host_new(&o);
  lua_register(ah_host_lua(h), "whoami", l_whoami);
  ASSERT_INT(lua_int(h, "whoami()"), -1); /* outside tasks */
  ASSERT(ah_task_current(h) == NULL);
  push_fn(h, "return function() local id, t = whoami() "
             "return id, t:status() == 'running' and 1 or 2 end");
  ah_host_spawn_call(h, 0, on_done, &out, &t);
  ASSERT_INT(ah_host_run(h), 0);
  ASSERT_INT(out.status, AH_OK);
  ASSERT(out.ints[0] > 0);
  ASSERT_INT(out.ints[1], 1);
  ah_host_free(h);
}

/* ---- tests: timers, hooks, counts, options, errors ----------------------- */

typedef struct tim {
  ah_timer timer; /* first: the callback casts back */
  int *order, *n, id;
} tim;

static void on_ah_timer(ah_timer *t) {
  tim *x = (tim *)t;
  x->order[(*x->n)++] = x->id;
}

static void test_ah_timer_fires_in_order_and_stops(void) {
  uv_loop_t loop;
  ah_options o = {0};
  int order[4] = {0}, n = 0;
  tim a = {{0}, order, &n, 1}, b = {{0}, order, &n, 2}, c = {{0}, order, &n, 3};
  ah_host *h;
  double t0;
  uv_loop_init(&loop);
  o.loop = &loop;
  h = ah_host_new(&o);
  t0 = ah_now();
  ah_timer_start(h, &a.timer, 0.03, on_ah_timer);
  ah_timer_start(h, &b.timer, 0.01, on_ah_timer);
  ah_timer_start(h, &c.timer, 0.02, on_ah_timer);
  ASSERT(ah_timer_active(&a.timer) && ah_timer_active(&b.timer));
  ah_timer_stop(h, &c.timer);
  ASSERT(!ah_timer_active(&c.timer));
  ah_timer_stop(h, &c.timer); /* stopping twice is harmless */
  run_loop(&loop);            /* active timers keep the loop alive */
  ASSERT_INT(n, 2);
  ASSERT_INT(order[0], 2);
  ASSERT_INT(order[1], 1);
  ASSERT(!ah_timer_active(&a.timer) && !ah_timer_active(&b.timer));
  ASSERT(ah_now() - t0 >= 0.029);
  ah_host_free(h);
  assert_loop_closes(&loop);
}

static void test_timer_left_active_is_freed_by_host(void) {
  uv_loop_t loop;
  ah_options o = {0};
  int order[2] = {0}, n = 0;
  tim a = {{0}, order, &n, 1};
  ah_host *h;
  uv_loop_init(&loop);
  o.loop = &loop;
  h = ah_host_new(&o);
  ah_timer_start(h, &a.timer, 10, on_ah_timer);
  ah_host_free(h);
  ASSERT_INT(n, 0);
  assert_loop_closes(&loop);
}

typedef struct hooklog {
  int close, close2, shutdown;
  ah_host *seen;
} hooklog;

static void on_close_hook(ah_host *h, void *data) {
  hooklog *l = data;
  l->close++;
  l->seen = h;
}
static void on_close_hook2(ah_host *h, void *data) {
  (void)h;
  ((hooklog *)data)->close2++;
}
static void on_shutdown_hook(ah_host *h, void *data) {
  (void)h;
  ((hooklog *)data)->shutdown++;
}

static void test_hooks_run_at_shutdown_and_free(void) {
  hooklog l = {0};
  ah_host *h = ah_host_new(NULL);
  ASSERT_INT(ah_host_hook(h, AH_ON_CLOSE, on_close_hook, &l), AH_OK);
  ASSERT_INT(ah_host_hook(h, AH_ON_CLOSE, on_close_hook2, &l), AH_OK);
  ASSERT_INT(ah_host_hook(h, AH_ON_SHUTDOWN, on_shutdown_hook, &l), AH_OK);
  ah_host_unhook(h, AH_ON_CLOSE, on_close_hook2, &l);
  ah_host_shutdown(h);
  ah_host_shutdown(h); /* once */
  ASSERT_INT(l.shutdown, 1);
  ASSERT_INT(l.close, 0);
  ASSERT_INT(ah_host_run(h), 0);
  ah_host_free(h);
  ASSERT_INT(l.close, 1);
  ASSERT_INT(l.close2, 0); /* unhooked */
  ASSERT(l.seen == h);
}

static void test_count_shows_in_stats(void) {
  ah_host *h = ah_host_new(NULL);
  ah_host_count(h, "myapp.widget", 2);
  ASSERT_INT(lua_int(h, "require('asynchost').stats()['myapp.widget']"), 2);
  ah_host_count(h, "myapp.widget", -2);
  ASSERT_INT(lua_int(h, "require('asynchost').stats()['myapp.widget']"), 0);
  ah_host_free(h);
}

static void test_globals_option(void) {
  ah_options o = {0};
  ah_host *h = ah_host_new(&o);
  ASSERT_INT(lua_int(h, "sleep == nil and 1 or 0"), 1);
  ASSERT_INT(lua_int(h, "require('asynchost').sleep ~= nil and 1 or 0"), 1);
  ah_host_free(h);
  o.globals = 1;
  h = ah_host_new(&o);
  ASSERT_INT(lua_int(h, "sleep == require('asynchost').sleep and 1 or 0"), 1);
  ASSERT_INT(lua_int(h, "gather ~= nil and spawn ~= nil and 1 or 0"), 1);
  ah_host_free(h);
}

static void test_package_paths_are_prepended(void) {
  char dir[] = "/tmp/ah-mod-XXXXXX", file[64], pathopt[64];
  ah_options o = {0};
  ah_host *h;
  FILE *f;
  ASSERT(mkdtemp(dir) != NULL);
  snprintf(file, sizeof file, "%s/mymod.lua", dir);
  f = fopen(file, "w");
  fputs("local ah = require 'asynchost'\nah.sleep(0.01) -- async at the top "
        "level\nreturn {answer = 41 + 1}\n",
        f);
  fclose(f);
  snprintf(pathopt, sizeof pathopt, "%s/?.lua", dir);
  o.path = pathopt;
  o.cpath = "/nonexistent/?.so";
  h = ah_host_new(&o);
  {
    char *p = lua_str(h, "package.path"), *cp = lua_str(h, "package.cpath");
    ASSERT(strncmp(p, pathopt, strlen(pathopt)) == 0);
    ASSERT(strncmp(cp, "/nonexistent/?.so;", 18) == 0);
    free(p);
    free(cp);
  }
  ASSERT_INT(
      ah_host_spawn_string(h, "answer = require('mymod').answer", "=req", NULL),
      AH_OK);
  ASSERT_INT(ah_host_run(h), 0);
  ASSERT_INT(lua_int(h, "answer"), 42);
  ah_host_free(h);
  unlink(file);
  rmdir(dir);
}

static void test_error_codes_have_names_and_messages(void) {
  static const struct {
    int code;
    const char *name, *msg;
  } codes[] = {{AH_OK, "AH_OK", "success"},
               {AH_ENOMEM, "AH_ENOMEM", "out of memory"},
               {AH_ESYNTAX, "AH_ESYNTAX", "compile"},
               {AH_EFILE, "AH_EFILE", "read"},
               {AH_ERUN, "AH_ERUN", "error"},
               {AH_EINVAL, "AH_EINVAL", "invalid"},
               {AH_ECANCELED, "AH_ECANCELED", "cancelled"}};
  size_t i;
  for (i = 0; i < sizeof codes / sizeof codes[0]; i++) {
    ASSERT(strcmp(ah_err_name(codes[i].code), codes[i].name) == 0);
    ASSERT_HAS(ah_strerror(codes[i].code), codes[i].msg);
  }
  ASSERT(strcmp(ah_err_name(-999), "AH_UNKNOWN") == 0);
  ASSERT_HAS(ah_strerror(-999), "unknown");
  ASSERT(strcmp(ah_err_name(AH_EFILE), ah_err_name(AH_ESYNTAX)) != 0);
}

/* ---- tests: a host on the application's lua_State ----------------------- */

static void test_attach_to_an_existing_state(void) {
  lua_State *L = luaL_newstate();
  outcome out = {0};
  ah_host *h;
  luaL_openlibs(L);
  h = ah_host_attach(L, NULL);
  ASSERT(h != NULL);
  ASSERT(ah_host_lua(h) == L);
  ASSERT(ah_host_of(L) == h);
  ASSERT(ah_host_attach(L, NULL) == NULL); /* one host per state */
  push_fn(h, "local ah = require 'asynchost' "
             "return function() ah.sleep(0.01) return 5 end");
  ah_host_spawn_call(h, 0, on_done, &out, NULL);
  ASSERT_INT(ah_host_run(h), 0);
  ASSERT_INT(out.ints[0], 5);
  lua_close(L); /* frees the host too (valgrind checks) */
}

static void test_free_detaches_but_keeps_the_state(void) {
  lua_State *L = luaL_newstate();
  hooklog l = {0};
  ah_host *h;
  luaL_openlibs(L);
  h = ah_host_attach(L, NULL);
  ah_host_hook(h, AH_ON_CLOSE, on_close_hook, &l);
  ah_host_free(h);
  ASSERT_INT(l.close, 1);
  ASSERT(ah_host_of(L) == NULL);
  ASSERT_INT(luaL_dostring(L, "x = 1 + 1"), LUA_OK); /* the state lives on */
  lua_close(L); /* and closing it frees nothing twice */
  ASSERT_INT(l.close, 1);
}

/* ---- the runner ------------------------------------------------------------
 */

#define T(name)                                                                \
  { #name, test_##name }
static const struct {
  const char *name;
  void (*fn)(void);
} tests[] = {
    T(host_on_app_loop),
    T(host_on_app_loop_runs_next_to_app_timer),
    T(host_on_internal_loop),
    T(two_hosts_share_one_loop),
    T(two_hosts_with_own_loops),
    T(spawn_string_runs_a_chunk),
    T(syntax_error_is_ah_esyntax),
    T(missing_file_is_ah_efile),
    T(spawn_file_passes_args),
    T(spawn_call_without_function_is_einval),
    T(task_error_is_ah_erun_with_message),
    T(error_value_keeps_its_type),
    T(uncaught_error_makes_status_1),
    T(ah_task_cancel_from_c),
    T(cancel_before_start_never_runs),
    T(cancel_reaches_children),
    T(shutdown_cancels_after_drain_time),
    T(free_cancels_running_tasks),
    T(custom_async_function_returns_results),
    T(custom_async_function_cancelled_while_running),
    T(custom_async_function_cancelled_before_running),
    T(timeout_cancels_the_custom_function),
    T(free_waits_for_abandoned_work),
    T(custom_function_misuse_raises),
    T(current_task_from_c),
    T(ah_timer_fires_in_order_and_stops),
    T(timer_left_active_is_freed_by_host),
    T(hooks_run_at_shutdown_and_free),
    T(count_shows_in_stats),
    T(globals_option),
    T(package_paths_are_prepended),
    T(error_codes_have_names_and_messages),
    T(attach_to_an_existing_state),
    T(free_detaches_but_keeps_the_state),
};

int main(int argc, char **argv) {
  size_t i, n = sizeof tests / sizeof tests[0];
  int run = 0, a;
  /* before the thread pool starts: the "before running" test fills it */
  setenv("UV_THREADPOOL_SIZE", "2", 1);
  setvbuf(stdout, NULL, _IONBF, 0);
  for (i = 0; i < n; i++) {
    int selected = argc < 2;
    for (a = 1; a < argc; a++)
      if (strcmp(argv[a], tests[i].name) == 0) selected = 1;
    if (!selected) continue;
    tests[i].fn(); /* a failure aborts with the assertion */
    printf("ok %d - %s\n", ++run, tests[i].name);
  }
  if (run == 0) {
    fprintf(stderr, "no test named so\n");
    return 1;
  }
  printf("%d passed, 0 failed\n", run);
  return 0;
}
