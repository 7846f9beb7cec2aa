/*
** An application that embeds asynchost on its own libuv loop.
**
** The application keeps its own work on the loop (a heartbeat uv_timer)
** and runs Lua tasks next to it. The tasks call asynchost's sleep and
** fetch, and myapp.compute(n): an async function of the application's
** own, written with the same task API as asynchost's bindings (it counts
** primes on the libuv thread pool, and can be cancelled).
**
**   embed [url]      (url: something to fetch; default $EMBED_URL)
*/
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include <asynchost.h>
#include <lauxlib.h>

/* ---- the application's state ------------------------------------------ */

typedef struct app {
  uv_loop_t loop;
  uv_timer_t heartbeat;
  ah_host *host;
  unsigned ticks;    /* heartbeats while Lua ran */
  unsigned inflight; /* compute requests still on the thread pool */
  int status;        /* exit status */
} app;

/* ---- myapp.compute(n): an async Lua function in C ---------------------- */

typedef struct compute_op {
  uv_work_t req; /* req.data is the op */
  app *app;
  ah_host *host;
  ah_task *task;
  lua_Integer n, primes;
  atomic_int stop; /* set by a cancellation: the worker gives up */
  int abandoned;   /* the task no longer waits for this op */
} compute_op;

/* On a thread-pool thread: no Lua here, only the op's own fields. */
static void compute_work(uv_work_t *req) {
  compute_op *op = req->data;
  lua_Integer i, d, count = 0;
  for (i = 2; i < op->n; i++) {
    if ((i & 0xfff) == 0 && atomic_load(&op->stop)) return;
    for (d = 2; d * d <= i; d++)
      if (i % d == 0) break;
    if (d * d > i) count++;
  }
  op->primes = count;
}

/* On the loop: resume the task, unless it gave up on the op. */
static void compute_after(uv_work_t *req, int status) {
  compute_op *op = req->data;
  (void)status; /* UV_ECANCELED only after compute_cancel */
  op->app->inflight--;
  if (op->abandoned) {
    free(op);
    return;
  }
  ah_task_resume(op->task);
}

/* The task was cancelled: the worker must not resume it. The thread pool
   still owns req until compute_after runs, which frees the op. */
static void compute_cancel(void *data) {
  compute_op *op = data;
  op->abandoned = 1;
  atomic_store(&op->stop, 1);
  uv_cancel((uv_req_t *)&op->req); /* if it has not started yet */
  ah_host_count(op->host, "myapp.compute", -1);
}

/* Runs in the task after ah_task_resume: push the result, free the op. */
static int compute_k(lua_State *L, int status, lua_KContext ctx) {
  compute_op *op = (compute_op *)ctx;
  (void)status;
  ah_host_count(op->host, "myapp.compute", -1);
  lua_pushinteger(L, op->primes);
  free(op);
  return 1;
}

/* myapp.compute(n) -> the number of primes below n */
static int l_compute(lua_State *L) {
  app *a = lua_touserdata(L, lua_upvalueindex(1));
  lua_Integer n = luaL_checkinteger(L, 1);
  ah_task *t;
  compute_op *op;
  int rc;
  luaL_argcheck(L, n >= 0, 1, "must be >= 0");
  t = ah_task_check(L, "myapp.compute"); /* before starting anything */
  op = calloc(1, sizeof *op);
  if (!op) return luaL_error(L, "myapp.compute: out of memory");
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
  a->inflight++;
  ah_host_count(op->host, "myapp.compute", 1);
  return ah_task_suspend(L, compute_cancel, op, compute_k, (lua_KContext)op);
}

/* AH_ON_CLOSE: the host is being freed; abandoned requests still on the
   thread pool must end before the application closes its loop. */
static void on_host_close(ah_host *h, void *data) {
  app *a = data;
  while (a->inflight > 0) uv_run(ah_host_loop(h), UV_RUN_ONCE);
}

/* package.loaded.myapp and the global myapp */
static void open_myapp(app *a) {
  static const luaL_Reg funcs[] = {{"compute", l_compute}, {NULL, NULL}};
  lua_State *L = ah_host_lua(a->host);
  luaL_newlibtable(L, funcs);
  lua_pushlightuserdata(L, a);
  luaL_setfuncs(L, funcs, 1);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushvalue(L, -2);
  lua_setfield(L, -2, "myapp");
  lua_pop(L, 1);
  lua_setglobal(L, "myapp");
}

/* ---- the Lua side ------------------------------------------------------- */

static const char script[] =
    "local ah = require 'asynchost'\n"
    "return function(url)\n"
    "  local lines = ah.gather({\n"
    "    function() ah.sleep(0.2) return 'slept 0.2 s' end,\n"
    "    function()\n"
    "      return ('compute(200000) = %d "
    "primes'):format(myapp.compute(200000))\n"
    "    end,\n"
    "    function()\n"
    "      if not ah.fetch then return 'fetch: not in this build' end\n"
    "      if not url then return 'fetch: no url given' end\n"
    "      local res, err = ah.fetch(url, {timeout = 10})\n"
    "      if not res then return 'fetch ' .. url .. ' failed: ' .. err end\n"
    "      return ('fetch %s -> %d, %d bytes'):format(url, res.status, "
    "#res.body)\n"
    "    end,\n"
    "  })\n"
    "  -- the application's own operation is cancellable like sleep or fetch\n"
    "  local r, err = ah.timeout(0.05, myapp.compute, 1 << 40)\n"
    "  lines[#lines + 1] = 'timeout(0.05, myapp.compute, 2^40) -> ' ..\n"
    "    tostring(r) .. ', ' .. tostring(err)\n"
    "  return lines\n"
    "end\n";

static void on_heartbeat(uv_timer_t *timer) {
  app *a = timer->data;
  a->ticks++;
}

/* The Lua function's task ended: print what it returned, then stop the
   application's own work so that the loop can end. */
static void on_done(ah_task *t, lua_State *L, int status, int nres,
                    void *data) {
  app *a = data;
  (void)t;
  if (status != AH_OK) {
    fprintf(stderr, "embed: %s: %s\n", ah_err_name(status),
            lua_tostring(L, -1));
    a->status = 1;
  } else if (nres >= 1 && lua_istable(L, -nres)) {
    lua_Integer i, n = luaL_len(L, -nres);
    for (i = 1; i <= n; i++) {
      lua_geti(L, -nres, i);
      printf("lua: %s\n", lua_tostring(L, -1));
      lua_pop(L, 1);
    }
  }
  printf("app: heartbeat ticked %s while the Lua tasks ran\n",
         a->ticks > 0 ? "on" : "NOT");
  uv_close((uv_handle_t *)&a->heartbeat, NULL);
}

int main(int argc, char **argv) {
  const char *url = argc > 1 ? argv[1] : getenv("EMBED_URL");
  ah_options opts = {0};
  app a = {0};
  lua_State *L;
  int rc;

  uv_loop_init(&a.loop);
  uv_timer_init(&a.loop, &a.heartbeat); /* the application's own work */
  a.heartbeat.data = &a;
  uv_timer_start(&a.heartbeat, on_heartbeat, 10, 10);

  opts.loop = &a.loop; /* the host runs on the application's loop */
  a.host = ah_host_new(&opts);
  if (!a.host) {
    fprintf(stderr, "embed: cannot create the host\n");
    return 1;
  }
  ah_host_hook(a.host, AH_ON_CLOSE, on_host_close, &a);
  open_myapp(&a);

  /* load the chunk, call it to get the function, start that as a task */
  L = ah_host_lua(a.host);
  if (luaL_loadbuffer(L, script, sizeof script - 1, "=app") != LUA_OK ||
      lua_pcall(L, 0, 1, 0) != LUA_OK) {
    fprintf(stderr, "embed: %s\n", lua_tostring(L, -1));
    return 1;
  }
  if (url)
    lua_pushstring(L, url);
  else
    lua_pushnil(L);
  rc = ah_host_spawn_call(a.host, 1, on_done, &a, NULL);
  if (rc != AH_OK) {
    fprintf(stderr, "embed: %s: %s\n", ah_strerror(rc), ah_host_error(a.host));
    return 1;
  }

  uv_run(&a.loop, UV_RUN_DEFAULT); /* the application's loop, as always */

  ah_host_free(a.host);
  rc = uv_loop_close(&a.loop);
  printf("app: host freed, loop %s\n",
         rc == 0 ? "closed cleanly" : "still has handles");
  return rc == 0 ? a.status : 1;
}
