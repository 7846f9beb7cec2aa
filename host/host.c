/*
** The host: one lua_State and one libuv loop, their handles, signals,
** hooks and shutdown.
*/
#include <errno.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lualib.h>

#include "internal.h"

static const char host_key = 'h';

const char *ah_err_name(int code) {
  switch (code) {
  case AH_OK:
    return "AH_OK";
  case AH_ENOMEM:
    return "AH_ENOMEM";
  case AH_ESYNTAX:
    return "AH_ESYNTAX";
  case AH_EFILE:
    return "AH_EFILE";
  case AH_ERUN:
    return "AH_ERUN";
  case AH_EINVAL:
    return "AH_EINVAL";
  case AH_ECANCELED:
    return "AH_ECANCELED";
  default:
    return "AH_UNKNOWN";
  }
}

const char *ah_strerror(int code) {
  switch (code) {
  case AH_OK:
    return "success";
  case AH_ENOMEM:
    return "out of memory";
  case AH_ESYNTAX:
    return "the chunk does not compile";
  case AH_EFILE:
    return "cannot read the script";
  case AH_ERUN:
    return "the task raised an error";
  case AH_EINVAL:
    return "invalid argument";
  case AH_ECANCELED:
    return "the task was cancelled";
  default:
    return "unknown error";
  }
}

ah_host *ah_host_of(lua_State *L) {
  ah_host *h;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &host_key);
  h = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return h;
}

lua_State *ah_host_lua(ah_host *h) {
  return h->L;
}

uv_loop_t *ah_host_loop(ah_host *h) {
  return h->loop;
}

const char *ah_host_error(ah_host *h) {
  return h->error ? h->error : "";
}

int ah_host_status(ah_host *h) {
  return h->status;
}

int ah_host_busy(ah_host *h) {
  return h->root.nchildren > 0;
}

void ah__set_error(ah_host *h, const char *msg) {
  free(h->error);
  h->error = strdup(msg ? msg : "(no message)");
}

void ah__flush_stdout(ah_host *h) {
  if (fflush(stdout) == 0 || errno != EPIPE) return;
  if (h->signals) { /* `asynchost x.lua | head`: end quietly */
    clearerr(stdout);
    ah__request_exit(h, h->status, 0);
  }
}

void ah__host_report(ah_host *h, const char *msg) {
  ah__set_error(h, msg);
  ah__flush_stdout(h);
  fprintf(stderr, "asynchost: %s\n", msg);
  fflush(stderr);
}

int ah_push_fail(lua_State *L, const char *kind, const char *fmt, ...) {
  va_list ap;
  lua_pushnil(L);
  lua_pushstring(L, kind);
  lua_pushliteral(L, ": ");
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_concat(L, 3);
  return 2;
}

/* ---- hooks, counts, handles ------------------------------------------ */

int ah_host_hook(ah_host *h, int event, ah_hook_fn fn, void *data) {
  if (h->nhooks == h->chooks) {
    int n = h->chooks ? h->chooks * 2 : 8;
    ah__hook *hooks = realloc(h->hooks, (size_t)n * sizeof *hooks);
    if (!hooks) return AH_ENOMEM;
    h->hooks = hooks;
    h->chooks = n;
  }
  h->hooks[h->nhooks].event = event;
  h->hooks[h->nhooks].fn = fn;
  h->hooks[h->nhooks].data = data;
  h->nhooks++;
  return AH_OK;
}

void ah_host_unhook(ah_host *h, int event, ah_hook_fn fn, void *data) {
  int i;
  for (i = 0; i < h->nhooks; i++) {
    ah__hook *k = &h->hooks[i];
    if (k->event == event && k->fn == fn && k->data == data) {
      memmove(k, k + 1, (size_t)(h->nhooks - i - 1) * sizeof *k);
      h->nhooks--;
      return;
    }
  }
}

/* Runs the hooks of one event, newest first; a hook may unhook itself. */
static void run_hooks(ah_host *h, int event) {
  int i;
  for (i = h->nhooks - 1; i >= 0; i--) {
    if (i >= h->nhooks) continue;
    if (h->hooks[i].event == event) {
      ah__hook k = h->hooks[i];
      if (event == AH_ON_CLOSE) ah_host_unhook(h, event, k.fn, k.data);
      k.fn(h, k.data);
    }
  }
}

void ah_host_count(ah_host *h, const char *kind, int delta) {
  int i;
  for (i = 0; i < h->ncounts; i++)
    if (h->counts[i].kind == kind || strcmp(h->counts[i].kind, kind) == 0) {
      h->counts[i].n += delta;
      return;
    }
  if (h->ncounts == (int)(sizeof h->counts / sizeof h->counts[0])) return;
  h->counts[h->ncounts].kind = kind;
  h->counts[h->ncounts].n = delta;
  h->ncounts++;
}

typedef struct closing {
  ah_host *h;
  uv_close_cb cb;
  void *data;
} closing;

static void on_handle_closed(uv_handle_t *handle) {
  closing *c = handle->data;
  handle->data = c->data;
  c->h->closing--;
  if (c->cb) c->cb(handle);
  free(c);
}

void ah_host_close_handle(ah_host *h, uv_handle_t *handle,
                          uv_close_cb on_close) {
  closing *c;
  if (uv_is_closing(handle)) return;
  c = malloc(sizeof *c);
  if (!c) abort();
  c->h = h;
  c->cb = on_close;
  c->data = handle->data;
  handle->data = c;
  h->closing++;
  uv_close(handle, on_handle_closed);
}

/* ---- loop handles ------------------------------------------------------ */

static void on_check(uv_check_t *check) {
  ah__run_ready(check->data);
}

static void on_prepare(uv_prepare_t *prepare) {
  ah__flush_stdout(prepare->data);
}

void ah__request_exit(ah_host *h, int code, int close) {
  if (h->exiting) return;
  h->exiting = 1;
  h->status = code;
  h->exit_close = close;
  uv_stop(h->loop);
}

/* ---- shutdown ------------------------------------------------------------ */

static void on_drain_timeout(uv_timer_t *timer) {
  ah_host *h = timer->data;
  ah__cancel_all(h, "shutdown: the drain time is over");
}

void ah_host_shutdown(ah_host *h) {
  if (h->shutdown) return;
  h->shutdown = -1;
  run_hooks(h, AH_ON_SHUTDOWN);
  if (h->root.nchildren > 0) {
    uv_timer_start(&h->drain, on_drain_timeout,
                   (uint64_t)(h->shutdown_timeout * 1000), 0);
    uv_unref((uv_handle_t *)&h->drain);
  }
}

static void on_signal(uv_signal_t *sig, int signum) {
  ah_host *h = sig->data;
  if (ah__signal_seen_early(h)) return;     /* limits.c acted on it already */
  if (h->shutdown) ah__signal_exit(signum); /* a second signal: at once */
  if (signum == SIGINT && h->status == 0) h->status = 130;
  ah_host_shutdown(h);
  h->shutdown = signum;
}

/* Writes to a closed socket or pipe (a client that left, a child that
   exited) must fail with EPIPE, not kill the process: SIGPIPE is ignored,
   as Node.js does, unless the application installed a handler of its own. */
static void ignore_sigpipe(void) {
  struct sigaction sa;
  if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL &&
      !(sa.sa_flags & SA_SIGINFO))
    signal(SIGPIPE, SIG_IGN);
}

static int init_signals(ah_host *h) {
  uv_signal_t *sigs[2] = {&h->sigint, &h->sigterm};
  int nums[2] = {SIGINT, SIGTERM}, i;
  signal(SIGPIPE, SIG_IGN);
  for (i = 0; i < 2; i++) {
    if (uv_signal_init(h->loop, sigs[i]) != 0) return AH_EINVAL;
    sigs[i]->data = h;
    uv_signal_start(sigs[i], on_signal, nums[i]);
    uv_unref((uv_handle_t *)sigs[i]);
  }
  ah__signals_register(h);
  return AH_OK;
}

/* ---- Lua overrides ------------------------------------------------------- */

/* print, checking for a closed pipe on stdout */
static int l_print(lua_State *L) {
  int n = lua_gettop(L), i;
  for (i = 1; i <= n; i++) {
    size_t len;
    const char *s = luaL_tolstring(L, i, &len);
    if (i > 1) fputc('\t', stdout);
    fwrite(s, 1, len, stdout);
    lua_pop(L, 1);
  }
  fputc('\n', stdout);
  if (ferror(stdout) && errno == EPIPE) {
    ah_host *h = ah_host_of(L);
    if (h->signals) {
      fflush(stderr);
      exit(h->status);
    }
  }
  return 0;
}

/* os.exit([code [, close]]): ends the process from inside any task; with
   close, the host cancels the tasks and closes the state first. */
static int l_exit(lua_State *L) {
  ah_host *h = ah_host_of(L);
  int code, i;
  if (lua_isboolean(L, 1))
    code = lua_toboolean(L, 1) ? EXIT_SUCCESS : EXIT_FAILURE;
  else
    code = (int)luaL_optinteger(L, 1, EXIT_SUCCESS);
  ah__request_exit(h, code, lua_toboolean(L, 2));
  h->status = code;
  if (h->current && h->rstack[h->rdepth - 1] == L) {
    for (i = 0; i < h->rdepth; i++)
      if (!lua_isyieldable(h->rstack[i])) break;
    if (i == h->rdepth) /* suspend this task for good; the loop stops */
      return ah_task_suspend(L, NULL, NULL, NULL, 0);
  }
  fflush(NULL);
  exit(code);
}

/* require that lets a module's top level call async functions */
static void find_loader(lua_State *L, const char *name) {
  int i;
  luaL_Buffer msg;
  if (lua_getfield(L, lua_upvalueindex(1), "searchers") != LUA_TTABLE)
    luaL_error(L, "'package.searchers' must be a table");
  luaL_buffinit(L, &msg);
  for (i = 1;; i++) {
    luaL_addstring(&msg, "\n\t");
    if (lua_rawgeti(L, 3, i) == LUA_TNIL) {
      lua_pop(L, 1);
      luaL_buffsub(&msg, 2);
      luaL_pushresult(&msg);
      luaL_error(L, "module '%s' not found:%s", name, lua_tostring(L, -1));
    }
    lua_pushstring(L, name);
    lua_call(L, 1, 2);
    if (lua_isfunction(L, -2)) return;
    if (lua_isstring(L, -2)) {
      lua_pop(L, 1);
      luaL_addvalue(&msg);
    } else {
      lua_pop(L, 2);
      luaL_buffsub(&msg, 2);
    }
  }
}

static int require_k(lua_State *L, int status, lua_KContext ctx) {
  const char *name = lua_tostring(L, 1);
  (void)status;
  (void)ctx;
  if (!lua_isnil(L, -1))
    lua_setfield(L, 2, name);
  else
    lua_pop(L, 1);
  if (lua_getfield(L, 2, name) == LUA_TNIL) {
    lua_pushboolean(L, 1);
    lua_copy(L, -1, -2);
    lua_setfield(L, 2, name);
  }
  lua_rotate(L, -2, 1);
  return 2;
}

static int l_require(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  lua_settop(L, 1);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, 2, name) != LUA_TNIL && lua_toboolean(L, -1)) return 1;
  lua_pop(L, 1);
  find_loader(L, name); /* LOADED searchers loader data */
  lua_remove(L, 3);
  lua_rotate(L, -2, 1);
  lua_pushvalue(L, 1);
  lua_pushvalue(L, -3);
  lua_callk(L, 2, 1, 0, require_k);
  return require_k(L, LUA_OK, 0);
}

static void install_overrides(lua_State *L) {
  lua_pushcfunction(L, l_print);
  lua_setglobal(L, "print");
  lua_getglobal(L, "os");
  lua_pushcfunction(L, l_exit);
  lua_setfield(L, -2, "exit");
  lua_pop(L, 1);
  lua_getglobal(L, "package");
  lua_pushcclosure(L, l_require, 1);
  lua_setglobal(L, "require");
}

static void prepend_path(lua_State *L, const char *field, const char *path) {
  if (!path) return;
  lua_getglobal(L, "package");
  lua_getfield(L, -1, field);
  lua_pushfstring(L, "%s;%s", path, lua_tostring(L, -1));
  lua_setfield(L, -3, field);
  lua_pop(L, 2);
}

typedef struct open_args {
  ah_host *h;
  const ah_options *opts;
} open_args;

static int open_state(lua_State *L) {
  open_args *a = lua_touserdata(L, 1);
  ah_host *h = a->h;
  lua_pushlightuserdata(L, h);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &host_key);
  lua_createtable(L, 2, 0);
  h->ref_tb = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_newtable(L);
  h->ref_perr = luaL_ref(L, LUA_REGISTRYINDEX);
  luaL_openlibs(L);
  prepend_path(L, "path", a->opts->path);
  prepend_path(L, "cpath", a->opts->cpath);
  install_overrides(L);
  ah__coro_open(L);
  ah__module_open(L, a->opts->globals);
  return 0;
}

static int on_panic(lua_State *L) {
  const char *msg = lua_tostring(L, -1);
  fprintf(stderr, "asynchost: unprotected error: %s\n", msg ? msg : "?");
  fflush(stderr);
  abort();
  return 0;
}

static void init_handle(ah_host *h, uv_handle_t *handle) {
  handle->data = h;
}

/* Makes a host on L: a new state (the host's) when L is NULL, else the
   caller's, which the host then only borrows. */
static ah_host *host_make(const ah_options *opts, lua_State *L) {
  static const ah_options defaults = {0};
  ah_host *h;
  open_args args;
  if (!opts) opts = &defaults;
  h = calloc(1, sizeof *h);
  if (!h) return NULL;
  h->shutdown_timeout = 10;
  h->rcap = 256; /* deeper nesting of coroutines than Lua allows (200) */
  h->rstack = calloc((size_t)h->rcap, sizeof *h->rstack);
  if (!h->rstack) goto fail;
  if (opts->loop)
    h->loop = opts->loop;
  else {
    if (uv_loop_init(&h->own_loop) != 0) goto fail;
    h->loop = &h->own_loop;
    h->owns_loop = 1;
  }
  h->root.host = h;
  h->root.state = AH__RUNNING;
  h->root.ref = LUA_NOREF;
  uv_idle_init(h->loop, &h->idle);
  init_handle(h, (uv_handle_t *)&h->idle);
  uv_check_init(h->loop, &h->check);
  init_handle(h, (uv_handle_t *)&h->check);
  uv_check_start(&h->check, on_check);
  uv_unref((uv_handle_t *)&h->check);
  uv_prepare_init(h->loop, &h->prepare);
  init_handle(h, (uv_handle_t *)&h->prepare);
  uv_prepare_start(&h->prepare, on_prepare);
  uv_unref((uv_handle_t *)&h->prepare);
  uv_timer_init(h->loop, &h->drain);
  init_handle(h, (uv_handle_t *)&h->drain);
  ah__timers_init(h);
  args.h = h;
  args.opts = opts;
  if (L) {
    /* the host runs its tasks from the main thread, whoever attaches it */
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    h->L = lua_tothread(L, -1);
    lua_pop(L, 1);
    h->borrowed = 1;
  } else {
    h->L = luaL_newstate();
    if (!h->L) goto fail_handles;
    ah__alloc_install(h);
    lua_atpanic(h->L, on_panic);
    L = h->L;
  }
  lua_pushcfunction(L, open_state);
  lua_pushlightuserdata(L, &args);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    lua_pop(L, 1);
    goto fail_handles;
  }
  ignore_sigpipe();
  if (opts->signals) {
    h->signals = 1;
    init_signals(h);
  }
  return h;
fail_handles:
  ah_host_free(h);
  return NULL;
fail:
  free(h->rstack);
  free(h);
  return NULL;
}

ah_host *ah_host_new(const ah_options *opts) {
  return host_make(opts, NULL);
}

/* ---- a host on the caller's lua_State --------------------------------- */

static const char attached_key = 'a';

/* __gc of the registry userdata that ties an attached host to its state */
static int attached_gc(lua_State *L) {
  ah_host **slot = lua_touserdata(L, 1);
  ah_host *h = *slot;
  *slot = NULL;
  if (h) ah_host_free(h);
  return 0;
}

ah_host *ah_host_attach(lua_State *L, const ah_options *opts) {
  ah_host **slot, *h;
  if (ah_host_of(L)) return NULL; /* one host per state */
  /* made first, so that it is finalized after the objects the host makes
     (Lua calls finalizers in the reverse order of their marking) */
  slot = lua_newuserdatauv(L, sizeof *slot, 0);
  *slot = NULL;
  lua_createtable(L, 0, 2);
  lua_pushcfunction(L, attached_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushliteral(L, "asynchost.attached");
  lua_setfield(L, -2, "__name");
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &attached_key);
  h = host_make(opts, L);
  if (h) *slot = h;
  return h;
}

/* Unties an attached host from its state, which lives on. */
static void detach_state(ah_host *h) {
  ah_host **slot;
  if (lua_rawgetp(h->L, LUA_REGISTRYINDEX, &attached_key) == LUA_TUSERDATA) {
    slot = lua_touserdata(h->L, -1);
    *slot = NULL;
  }
  lua_pop(h->L, 1);
  lua_pushnil(h->L);
  lua_rawsetp(h->L, LUA_REGISTRYINDEX, &attached_key);
  lua_pushnil(h->L);
  lua_rawsetp(h->L, LUA_REGISTRYINDEX, &host_key);
}

/* ---- starting tasks from C ------------------------------------------------
 */

static int start_loaded(ah_host *h, int status, int nargs, ah_done_fn done,
                        void *data, ah_task **out) {
  lua_State *L = h->L;
  ah_task *t;
  if (status != LUA_OK) {
    ah__set_error(h, lua_tostring(L, -1));
    lua_pop(L, 1 + nargs);
    return status == LUA_ERRFILE  ? AH_EFILE
           : status == LUA_ERRMEM ? AH_ENOMEM
                                  : AH_ESYNTAX;
  }
  lua_rotate(L, -(nargs + 1), 1); /* fn args */
  t = ah__task_new(L, NULL, nargs);
  t->done = done;
  t->done_data = data;
  t->fatal = done == NULL;
  lua_pop(L, 1);
  if (out) *out = t;
  return AH_OK;
}

int ah_host_spawn_file(ah_host *h, const char *path, int argc,
                       const char *const *argv, ah_task **out) {
  lua_State *L = h->L;
  int i;
  for (i = 0; i < argc; i++) lua_pushstring(L, argv[i]);
  return start_loaded(h, luaL_loadfile(L, path), argc, NULL, NULL, out);
}

int ah_host_spawn_string(ah_host *h, const char *chunk, const char *name,
                         ah_task **out) {
  lua_State *L = h->L;
  int st = luaL_loadbuffer(L, chunk, strlen(chunk), name ? name : chunk);
  return start_loaded(h, st, 0, NULL, NULL, out);
}

int ah_host_spawn_call(ah_host *h, int nargs, ah_done_fn done, void *data,
                       ah_task **out) {
  lua_State *L = h->L;
  ah_task *t;
  if (lua_gettop(L) < nargs + 1 || !lua_isfunction(L, -(nargs + 1))) {
    ah__set_error(h, "ah_host_spawn_call: no function below the arguments");
    return AH_EINVAL;
  }
  t = ah__task_new(L, NULL, nargs);
  t->done = done;
  t->done_data = data;
  t->fatal = done == NULL;
  lua_pop(L, 1);
  if (out) *out = t;
  return AH_OK;
}

/* ---- running and freeing ----------------------------------------------------
 */

static void report_deadlock(ah_host *h) {
  ah_task *t;
  int shown = 0;
  ah__flush_stdout(h);
  fprintf(stderr,
          "asynchost: deadlock: %u task(s) wait for something that can never "
          "happen (nothing else is running)\n",
          h->ntasks);
  for (t = h->root.child; t && shown < 3; t = t->next, shown++) {
    ah_task *w = t;
    while (w->child) w = w->child; /* the deepest waits first */
    luaL_traceback(h->L, w->co, NULL, 0);
    fprintf(stderr, "task %u waits at:\n%s\n", w->id, lua_tostring(h->L, -1));
    lua_pop(h->L, 1);
  }
}

int ah_host_run(ah_host *h) {
  uv_run(h->loop, UV_RUN_DEFAULT);
  ah__flush_stdout(h);
  if (!h->exiting && h->root.nchildren > 0) {
    report_deadlock(h);
    h->status = 1;
    ah__cancel_all(h, "deadlock");
    uv_run(h->loop, UV_RUN_NOWAIT);
  }
  return h->status;
}

/* Closes the host's own loop. Thread-pool work still running (a bindings'
   fs or stdin read) must finish first, since it writes into the loop: wait
   up to 2 s for it. If it never ends (a read of a terminal nobody types
   into), the host is left allocated rather than freed under it. */
static int close_own_loop(ah_host *h) {
  int ms;
  for (ms = 0; uv_loop_close(&h->own_loop) == UV_EBUSY; ms++) {
    if (ms >= 2000) return 0;
    uv_run(&h->own_loop, UV_RUN_NOWAIT);
    uv_sleep(1);
  }
  return 1;
}

void ah_host_free(ah_host *h) {
  int rounds;
  if (!h) return;
  h->freeing = 1;
  h->exiting = 0;
  if (h->L) {
    ah__cancel_all(h, "the host is closing");
    for (rounds = 0; h->qhead && rounds < 100; rounds++) ah__run_ready(h);
    run_hooks(h, AH_ON_CLOSE);
  }
  h->freeing = 2;
  ah__timers_close(h);
  ah_host_close_handle(h, (uv_handle_t *)&h->idle, NULL);
  ah_host_close_handle(h, (uv_handle_t *)&h->check, NULL);
  ah_host_close_handle(h, (uv_handle_t *)&h->prepare, NULL);
  ah_host_close_handle(h, (uv_handle_t *)&h->drain, NULL);
  if (h->signals) {
    ah__signals_unregister(h);
    ah_host_close_handle(h, (uv_handle_t *)&h->sigint, NULL);
    ah_host_close_handle(h, (uv_handle_t *)&h->sigterm, NULL);
  }
  for (rounds = 0; h->closing > 0 && rounds < 1000; rounds++)
    uv_run(h->loop, UV_RUN_NOWAIT);
  if (h->L && h->borrowed)
    detach_state(h);
  else if (h->L)
    lua_close(h->L);
  h->L = NULL;
  for (rounds = 0; h->closing > 0 && rounds < 1000; rounds++)
    uv_run(h->loop, UV_RUN_NOWAIT);
  if (h->owns_loop && !close_own_loop(h)) return; /* see close_own_loop */
  free(h->hooks);
  free(h->rstack);
  free(h->error);
  free(h);
}
