/*
** exec(argv [, opts]): runs a program without blocking the loop (uv_spawn),
** reading its stdout and stderr concurrently.
**
** The child runs in its own session and process group (UV_PROCESS_DETACHED
** does setsid), so a timeout or a cancellation can signal the whole group:
** grandchildren (a shell's pipeline, `sleep` under `sh -c`) die with it.
** Because it is detached it no longer gets the terminal's Ctrl-C, so a
** graceful shutdown of the host (SIGINT/SIGTERM, ah_host_shutdown)
** forwards SIGTERM to every group still running, and freeing the host
** SIGKILLs and reaps them: no child outlives its exec.
*/
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bindings.h"

extern char **environ;

#define DEFAULT_MAX_OUTPUT ((size_t)64 * 1024 * 1024)
#define DEFAULT_KILL_AFTER 2.0
#define READ_CHUNK 65536
#define LINES_HIGH ((size_t)1 << 20) /* queued line bytes that pause reads */
#define LINES_LOW ((size_t)1 << 18)  /* ... and that restart them */

#define container_of(p, type, field)                                           \
  ((type *)((char *)(p)-offsetof(type, field)))

static const char *const stream_names[2] = {"stdout", "stderr"};

typedef struct exec_op exec_op;

/* The host's live processes, for the shutdown and close hooks. */
typedef struct exec_state {
  ah_host *host;
  exec_op *live;
} exec_state;

/* A line waiting for the lines callback. */
typedef struct line_ent {
  struct line_ent *next;
  size_t len;
  int stream;
  char data[];
} line_ent;

typedef struct out_stream {
  uv_pipe_t pipe; /* first: read callbacks cast the handle back */
  exec_op *op;
  char *buf; /* captured output, or the partial line in lines mode */
  size_t len, cap;
  int open; /* not yet closed */
} out_stream;

struct exec_op {
  exec_op *next, *prev; /* exec_state.live */
  exec_state *st;       /* NULL once the host is closing */
  ah_host *host;
  ah_task *task; /* NULL once the call was abandoned (cancelled) */
  uv_process_t proc;
  uv_pipe_t in;
  uv_write_t wreq;
  out_stream out[2];
  ah_timer timer;
  char *name; /* argv[1], for messages */
  char *input;
  size_t input_len, max_output;
  double started, timeout, kill_after;
  int handles; /* libuv handles not yet closed */
  int pid, exited, code, signal;
  int in_open, proc_open;
  int timed_out; /* 1: SIGTERM sent at the timeout, 2: then SIGKILL */
  int too_large; /* 1 + the stream that went over max_output */
  int waiting;   /* the task is suspended on this op */
  int lines, stopped, paused;
  line_ent *qhead, *qtail;
  size_t qbytes;
};

static void op_free(exec_op *op) {
  line_ent *e, *next;
  if (ah_timer_active(&op->timer)) ah_timer_stop(op->host, &op->timer);
  if (op->st) {
    if (op->prev)
      op->prev->next = op->next;
    else
      op->st->live = op->next;
    if (op->next) op->next->prev = op->prev;
  }
  for (e = op->qhead; e; e = next) {
    next = e->next;
    free(e);
  }
  ah_host_count(op->host, "exec", -1);
  free(op->out[0].buf);
  free(op->out[1].buf);
  free(op->input);
  free(op->name);
  free(op);
}

static void wake(exec_op *op) {
  if (op->task && op->waiting) {
    op->waiting = 0;
    ah_task_resume(op->task);
  }
}

/* Every handle is closed: the call can finish (or, abandoned, go away). */
static void on_handle_closed(uv_handle_t *handle) {
  exec_op *op = handle->data;
  if (--op->handles > 0) return;
  if (ah_timer_active(&op->timer)) ah_timer_stop(op->host, &op->timer);
  if (op->task)
    wake(op);
  else
    op_free(op);
}

static void close_handle(exec_op *op, uv_handle_t *h, int *open) {
  if (!*open) return;
  *open = 0;
  ah_host_close_handle(op->host, h, on_handle_closed);
}

static void close_stream(out_stream *s) {
  close_handle(s->op, (uv_handle_t *)&s->pipe, &s->open);
}

/* Signals the child's process group. After the child was reaped its pid
   may be reused, so the group is signalled then only while a pipe is still
   open (a member of the group holds it, so the group id is still ours). */
static void kill_group(exec_op *op, int sig) {
  if (op->pid <= 0) return;
  if (op->exited && !op->out[0].open && !op->out[1].open) return;
  if (kill(-op->pid, sig) != 0 && !op->exited) kill(op->pid, sig);
}

/* Stops reading and writing: the result will not need the output. */
static void abort_io(exec_op *op) {
  close_stream(&op->out[0]);
  close_stream(&op->out[1]);
  close_handle(op, (uv_handle_t *)&op->in, &op->in_open);
}

static void drop_lines(exec_op *op) {
  line_ent *e, *next;
  for (e = op->qhead; e; e = next) {
    next = e->next;
    free(e);
  }
  op->qhead = op->qtail = NULL;
  op->qbytes = 0;
}

/* The call is abandoned (cancelled, or its lines callback raised): the
   group is killed and the op frees itself once the child is reaped. */
static void op_abandon(exec_op *op) {
  op->task = NULL;
  op->waiting = 0;
  drop_lines(op);
  kill_group(op, SIGKILL);
  abort_io(op);
  if (op->handles == 0) op_free(op);
}

static void exec_cancel(void *data) {
  op_abandon(data);
}

/* ---- the child's end --------------------------------------------------- */

static void on_child_exit(uv_process_t *proc, int64_t status, int sig) {
  exec_op *op = container_of(proc, exec_op, proc);
  op->exited = 1;
  op->signal = sig;
  op->code = sig ? 128 + sig : (int)status;
  close_handle(op, (uv_handle_t *)&op->proc, &op->proc_open);
}

static void on_timer(ah_timer *t) {
  exec_op *op = container_of(t, exec_op, timer);
  if (op->timed_out == 0 && op->kill_after > 0) {
    op->timed_out = 1;
    kill_group(op, SIGTERM);
    ah_timer_start(op->host, &op->timer, op->kill_after, on_timer);
    return;
  }
  op->timed_out = 2;
  kill_group(op, SIGKILL);
  abort_io(op); /* a descendant that left the group may hold the pipes */
}

static void on_written(uv_write_t *req, int status) {
  exec_op *op = container_of(req, exec_op, wreq);
  (void)status; /* EPIPE: the child did not read all of it; not an error */
  free(op->input);
  op->input = NULL;
  close_handle(op, (uv_handle_t *)&op->in, &op->in_open);
}

static void queue_line(exec_op *op, int stream, const char *p, size_t n) {
  line_ent *e = malloc(sizeof *e + n);
  if (!e) abort();
  e->next = NULL;
  e->len = n;
  e->stream = stream;
  memcpy(e->data, p, n);
  if (op->qtail)
    op->qtail->next = e;
  else
    op->qhead = e;
  op->qtail = e;
  op->qbytes += n + 1;
}

/* Moves the complete lines of s into the queue; at eof, the rest too. */
static void split_lines(exec_op *op, out_stream *s, int stream, int eof) {
  size_t start = 0;
  char *nl;
  if (op->stopped) {
    s->len = 0;
    return;
  }
  while (start < s->len &&
         (nl = memchr(s->buf + start, '\n', s->len - start)) != NULL) {
    size_t end = (size_t)(nl - s->buf);
    queue_line(op, stream, s->buf + start, end - start);
    start = end + 1;
  }
  if (eof && start < s->len) {
    queue_line(op, stream, s->buf + start, s->len - start);
    start = s->len;
  }
  memmove(s->buf, s->buf + start, s->len - start);
  s->len -= start;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  out_stream *s = (out_stream *)h;
  (void)suggested;
  if (s->cap - s->len < READ_CHUNK) {
    size_t cap = s->cap ? s->cap : READ_CHUNK;
    char *nb;
    while (cap - s->len < READ_CHUNK) cap *= 2;
    nb = realloc(s->buf, cap);
    if (!nb) { /* libuv reports UV_ENOBUFS to on_read */
      *buf = uv_buf_init(NULL, 0);
      return;
    }
    s->buf = nb;
    s->cap = cap;
  }
  *buf = uv_buf_init(s->buf + s->len, (unsigned)(s->cap - s->len));
}

static void on_read(uv_stream_t *h, ssize_t n, const uv_buf_t *buf);

/* Lines mode: stops reading while the callback is far behind. */
static void pause_reading(exec_op *op, int pause) {
  int i;
  if (op->paused == pause) return;
  op->paused = pause;
  for (i = 0; i < 2; i++)
    if (op->out[i].open) {
      if (pause)
        uv_read_stop((uv_stream_t *)&op->out[i].pipe);
      else
        uv_read_start((uv_stream_t *)&op->out[i].pipe, on_alloc, on_read);
    }
}

static void on_read(uv_stream_t *h, ssize_t n, const uv_buf_t *buf) {
  out_stream *s = (out_stream *)h;
  exec_op *op = s->op;
  int stream = s == &op->out[1];
  (void)buf;
  if (n > 0) s->len += (size_t)n;
  if (op->lines) split_lines(op, s, stream, n < 0);
  if (s->len > op->max_output) { /* a line, or all output, is too long */
    op->too_large = stream + 1;
    kill_group(op, SIGKILL);
    abort_io(op);
  } else if (n < 0)
    close_stream(s);
  if (op->lines) {
    if (op->qbytes > LINES_HIGH) pause_reading(op, 1);
    if (op->qhead) wake(op);
  }
}

/* ---- starting ---------------------------------------------------------- */

typedef struct spawn_args {
  char **argv, **env;
  int nargs, nenv;
} spawn_args;

static void free_args(spawn_args *a) {
  int i;
  if (a->argv)
    for (i = 0; i < a->nargs; i++) free(a->argv[i]);
  if (a->env)
    for (i = 0; i < a->nenv; i++) free(a->env[i]);
  free(a->argv);
  free(a->env);
  a->argv = a->env = NULL;
}

static char *dup_value(lua_State *L, int idx, spawn_args *a) {
  size_t len;
  const char *s = lua_tolstring(L, idx, &len);
  char *d = malloc(len + 1);
  if (!d) {
    free_args(a);
    luaL_error(L, "exec: out of memory");
  }
  memcpy(d, s, len + 1);
  return d;
}

/* Raises on a bad argv list; allocates nothing. */
static void check_argv(lua_State *L) {
  lua_Integer n, i;
  luaL_checktype(L, 1, LUA_TTABLE);
  n = luaL_len(L, 1);
  luaL_argcheck(L, n >= 1, 1, "the list must name a program (argv[1])");
  luaL_argcheck(L, n < 1 << 20, 1, "too many arguments");
  for (i = 1; i <= n; i++) {
    int t = lua_geti(L, 1, i);
    lua_pop(L, 1);
    if (t != LUA_TSTRING && t != LUA_TNUMBER)
      luaL_argerror(L, 1,
                    lua_pushfstring(L, "argv[%d] is a %s, not a string", (int)i,
                                    lua_typename(L, t)));
  }
  lua_geti(L, 1, 1);
  luaL_argcheck(L, lua_tostring(L, -1)[0] != '\0', 1, "argv[1] is empty");
  lua_pop(L, 1);
}

/* Raises on a bad opts.env table (at tbl); allocates nothing. */
static void check_env(lua_State *L, int tbl) {
  lua_pushnil(L);
  while (lua_next(L, tbl)) {
    const char *k;
    int t = lua_type(L, -1);
    if (lua_type(L, -2) != LUA_TSTRING)
      luaL_error(L, "exec: opts.env keys must be strings");
    k = lua_tostring(L, -2);
    if (!*k || strchr(k, '='))
      luaL_error(L, "exec: bad environment variable name '%s'", k);
    if (t != LUA_TSTRING && t != LUA_TNUMBER &&
        !(t == LUA_TBOOLEAN && !lua_toboolean(L, -1)))
      luaL_error(L, "exec: opts.env.%s must be a string, a number or false", k);
    lua_pop(L, 1);
  }
}

/* [argv] -> a->argv: a NULL-terminated copy of the checked list */
static void build_argv(lua_State *L, spawn_args *a) {
  lua_Integer n = luaL_len(L, 1), i;
  a->argv = calloc((size_t)n + 1, sizeof *a->argv);
  if (!a->argv) luaL_error(L, "exec: out of memory");
  for (i = 1; i <= n; i++) {
    lua_geti(L, 1, i);
    a->argv[a->nargs++] = dup_value(L, -1, a);
    lua_pop(L, 1);
  }
}

static int env_overridden(lua_State *L, int tbl, const char *entry) {
  const char *eq = strchr(entry, '=');
  int found;
  if (!eq) return 0;
  lua_pushlstring(L, entry, (size_t)(eq - entry));
  found = lua_rawget(L, tbl) != LUA_TNIL;
  lua_pop(L, 1);
  return found;
}

/* [... env] -> a->env: the inherited environment plus the checked env
   table's entries (a false value removes the variable) */
static void build_env(lua_State *L, int tbl, spawn_args *a) {
  size_t n = 0, extra = 0;
  char **e;
  lua_pushnil(L);
  while (lua_next(L, tbl)) {
    extra++;
    lua_pop(L, 1);
  }
  for (e = environ; e && *e; e++) n++;
  a->env = calloc(n + extra + 1, sizeof *a->env);
  if (!a->env) {
    free_args(a);
    luaL_error(L, "exec: out of memory");
  }
  for (e = environ; e && *e; e++)
    if (!env_overridden(L, tbl, *e)) {
      a->env[a->nenv] = strdup(*e);
      if (!a->env[a->nenv++]) {
        free_args(a);
        luaL_error(L, "exec: out of memory");
      }
    }
  lua_pushnil(L);
  while (lua_next(L, tbl)) {
    if (lua_type(L, -1) != LUA_TBOOLEAN) {
      lua_pushvalue(L, -2);
      lua_pushliteral(L, "=");
      lua_pushvalue(L, -3);
      lua_concat(L, 3);
      a->env[a->nenv++] = dup_value(L, -1, a);
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
}

typedef struct exec_opts {
  const char *input, *cwd;
  size_t input_len;
  double timeout, kill_after;
  lua_Integer max_output;
  int lines;
} exec_opts;

static double opt_seconds(lua_State *L, const char *name, double dflt) {
  double v;
  int t = lua_getfield(L, 2, name);
  if (t == LUA_TNIL) {
    lua_pop(L, 1);
    return dflt;
  }
  if (t != LUA_TNUMBER)
    luaL_error(L, "exec: opts.%s must be a number of seconds", name);
  v = lua_tonumber(L, -1);
  lua_pop(L, 1);
  if (!(v >= 0)) luaL_error(L, "exec: opts.%s must be >= 0", name);
  return v;
}

/* [argv opts] -> [argv opts lines-callback|nil]; strings stay anchored in
   opts while the call runs */
static void check_opts(lua_State *L, exec_opts *o) {
  memset(o, 0, sizeof *o);
  o->timeout = 0;
  o->kill_after = DEFAULT_KILL_AFTER;
  o->max_output = (lua_Integer)DEFAULT_MAX_OUTPUT;
  if (lua_isnoneornil(L, 2)) {
    lua_settop(L, 2);
    lua_pushnil(L);
    return;
  }
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  switch (lua_getfield(L, 2, "stdin")) {
  case LUA_TNIL:
    break;
  case LUA_TSTRING:
    o->input = lua_tolstring(L, -1, &o->input_len);
    break;
  default:
    luaL_error(L, "exec: opts.stdin must be a string");
  }
  lua_pop(L, 1);
  switch (lua_getfield(L, 2, "cwd")) {
  case LUA_TNIL:
    break;
  case LUA_TSTRING:
    o->cwd = lua_tostring(L, -1);
    break;
  default:
    luaL_error(L, "exec: opts.cwd must be a string");
  }
  lua_pop(L, 1);
  o->timeout = opt_seconds(L, "timeout", 0);
  o->kill_after = opt_seconds(L, "kill_after", DEFAULT_KILL_AFTER);
  switch (lua_getfield(L, 2, "max_output")) {
  case LUA_TNIL:
    break;
  case LUA_TNUMBER:
    o->max_output = (lua_Integer)lua_tonumber(L, -1);
    if (o->max_output < 1) luaL_error(L, "exec: opts.max_output must be >= 1");
    break;
  default:
    luaL_error(L, "exec: opts.max_output must be a number of bytes");
  }
  lua_pop(L, 1);
  switch (lua_getfield(L, 2, "env")) {
  case LUA_TNIL:
    break;
  case LUA_TTABLE:
    check_env(L, lua_gettop(L));
    break;
  default:
    luaL_error(L, "exec: opts.env must be a table");
  }
  lua_pop(L, 1);
  switch (lua_getfield(L, 2, "lines")) { /* stays at index 3 */
  case LUA_TNIL:
    break;
  case LUA_TFUNCTION:
    o->lines = 1;
    break;
  default:
    luaL_error(L, "exec: opts.lines must be a function");
  }
}

static exec_op *op_new(lua_State *L, exec_state *st, ah_task *t,
                       const spawn_args *a, const exec_opts *o) {
  exec_op *op = calloc(1, sizeof *op);
  if (!op) return NULL;
  op->name = strdup(a->argv[0]);
  if (o->input) {
    op->input = malloc(o->input_len ? o->input_len : 1);
    if (op->input) memcpy(op->input, o->input, o->input_len);
  }
  if (!op->name || (o->input && !op->input)) {
    free(op->name);
    free(op->input);
    free(op);
    return NULL;
  }
  op->st = st;
  op->host = ah_host_of(L);
  op->task = t;
  op->input_len = o->input_len;
  op->max_output = (size_t)o->max_output;
  op->timeout = o->timeout;
  op->kill_after = o->kill_after;
  op->lines = o->lines;
  op->out[0].op = op->out[1].op = op;
  op->next = st->live;
  if (st->live) st->live->prev = op;
  st->live = op;
  ah_host_count(op->host, "exec", 1);
  return op;
}

static void init_pipe(exec_op *op, uv_pipe_t *p, int *open) {
  uv_pipe_init(ah_host_loop(op->host), p, 0);
  p->data = op;
  *open = 1;
  op->handles++;
}

/* Spawns the child; on failure closes what was made and returns the uv
   error (the op then frees itself). */
static int op_spawn(exec_op *op, const spawn_args *a, const exec_opts *o) {
  uv_process_options_t po;
  uv_stdio_container_t stdio[3];
  int err, i;
  memset(&po, 0, sizeof po);
  memset(stdio, 0, sizeof stdio);
  stdio[0].flags = UV_IGNORE; /* /dev/null */
  if (o->input) {
    init_pipe(op, &op->in, &op->in_open);
    stdio[0].flags = UV_CREATE_PIPE | UV_READABLE_PIPE;
    stdio[0].data.stream = (uv_stream_t *)&op->in;
  }
  for (i = 0; i < 2; i++) {
    init_pipe(op, &op->out[i].pipe, &op->out[i].open);
    stdio[i + 1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[i + 1].data.stream = (uv_stream_t *)&op->out[i].pipe;
  }
  po.exit_cb = on_child_exit;
  po.file = a->argv[0];
  po.args = a->argv;
  po.env = a->env;
  po.cwd = o->cwd;
  po.flags = UV_PROCESS_DETACHED;
  po.stdio_count = 3;
  po.stdio = stdio;
  op->started = ah_now();
  err = uv_spawn(ah_host_loop(op->host), &op->proc, &po);
  op->proc.data = op;
  op->proc_open = 1;
  op->handles++;
  if (err != 0) {
    op->task = NULL;
    op->exited = 1;
    abort_io(op);
    close_handle(op, (uv_handle_t *)&op->proc, &op->proc_open);
    return err;
  }
  op->pid = uv_process_get_pid(&op->proc);
  for (i = 0; i < 2; i++)
    uv_read_start((uv_stream_t *)&op->out[i].pipe, on_alloc, on_read);
  if (o->input) {
    uv_buf_t b = uv_buf_init(op->input, (unsigned)op->input_len);
    if (op->input_len == 0 ||
        uv_write(&op->wreq, (uv_stream_t *)&op->in, &b, 1, on_written) != 0)
      close_handle(op, (uv_handle_t *)&op->in, &op->in_open);
  }
  if (op->timeout > 0)
    ah_timer_start(op->host, &op->timer, op->timeout, on_timer);
  return 0;
}

/* ---- finishing --------------------------------------------------------- */

/* [argv opts cb] -> result table | nil, err; frees op */
static int push_result(lua_State *L, exec_op *op) {
  int n;
  if (op->timed_out) {
    n = ah_push_fail(L, "timeout", "%s killed after %f s", op->name,
                     (lua_Number)op->timeout);
  } else if (op->too_large) {
    n = ah_push_fail(L, "too_large", "%s: %s over %I bytes%s", op->name,
                     stream_names[op->too_large - 1],
                     (lua_Integer)op->max_output,
                     op->lines ? " in one line" : "");
  } else {
    lua_createtable(L, 0, 6);
    lua_pushinteger(L, op->code);
    lua_setfield(L, -2, "code");
    lua_pushinteger(L, op->signal);
    lua_setfield(L, -2, "signal");
    lua_pushlstring(L,
                    op->lines        ? ""
                    : op->out[0].buf ? op->out[0].buf
                                     : "",
                    op->lines ? 0 : op->out[0].len);
    lua_setfield(L, -2, "stdout");
    lua_pushlstring(L,
                    op->lines        ? ""
                    : op->out[1].buf ? op->out[1].buf
                                     : "",
                    op->lines ? 0 : op->out[1].len);
    lua_setfield(L, -2, "stderr");
    lua_pushinteger(L, op->pid);
    lua_setfield(L, -2, "pid");
    lua_pushnumber(L, ah_now() - op->started);
    lua_setfield(L, -2, "time");
    n = 1;
  }
  op_free(op);
  return n;
}

static int exec_step(lua_State *L, exec_op *op);

static int exec_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  return exec_step(L, (exec_op *)ctx);
}

/* After the lines callback: [argv opts cb ret|err] */
static int lines_k(lua_State *L, int status, lua_KContext ctx) {
  exec_op *op = (exec_op *)ctx;
  if (status != LUA_OK && status != LUA_YIELD) {
    op_abandon(op);
    return lua_error(L);
  }
  if (lua_isboolean(L, -1) && !lua_toboolean(L, -1) && !op->stopped) {
    op->stopped = 1; /* `return false`: stop the program, keep the result */
    drop_lines(op);
    kill_group(op, SIGKILL);
    abort_io(op);
  }
  lua_settop(L, 3);
  return exec_step(L, op);
}

/* Drives one exec call: hands queued lines to the callback, finishes when
   every handle is closed, else waits. [argv opts cb] */
static int exec_step(lua_State *L, exec_op *op) {
  if (ah_task_cancelling(op->task)) { /* the callback swallowed a cancel */
    op_abandon(op);
    ah_task_check(L, "exec"); /* raises "cancelled: ..." */
  }
  if (op->qhead) {
    line_ent *e = op->qhead;
    op->qhead = e->next;
    if (!op->qhead) op->qtail = NULL;
    op->qbytes -= e->len + 1;
    if (op->qbytes < LINES_LOW) pause_reading(op, 0);
    lua_pushvalue(L, 3);
    lua_pushlstring(L, e->data, e->len);
    lua_pushstring(L, stream_names[e->stream]);
    free(e);
    return lines_k(L, lua_pcallk(L, 2, 1, 0, (lua_KContext)op, lines_k),
                   (lua_KContext)op);
  }
  if (op->handles == 0) return push_result(L, op);
  op->waiting = 1;
  return ah_task_suspend(L, exec_cancel, op, exec_k, (lua_KContext)op);
}

/* exec(argv [, opts]) -> {code, signal, stdout, stderr, pid, time}
   | nil, "process: ..." | nil, "timeout: ..." | nil, "too_large: ..." */
static int l_exec(lua_State *L) {
  exec_state *st = lua_touserdata(L, lua_upvalueindex(1));
  spawn_args a = {0};
  exec_opts o;
  exec_op *op;
  ah_task *t;
  int err;
  check_opts(L, &o); /* [argv opts cb] */
  check_argv(L);
  t = ah_task_check(L, "exec");
  /* nothing raises from here on but out of memory */
  build_argv(L, &a);
  if (lua_istable(L, 2)) {
    if (lua_getfield(L, 2, "env") == LUA_TTABLE) build_env(L, 4, &a);
    lua_settop(L, 3);
  }
  op = op_new(L, st, t, &a, &o);
  if (!op) {
    free_args(&a);
    return luaL_error(L, "exec: out of memory");
  }
  err = op_spawn(op, &a, &o);
  if (err != 0) {
    int n = o.cwd ? ah_push_fail(L, "process", "%s: %s (cwd %s)", a.argv[0],
                                 uv_strerror(err), o.cwd)
                  : ah_push_fail(L, "process", "%s: %s", a.argv[0],
                                 uv_strerror(err));
    free_args(&a);
    return n;
  }
  free_args(&a);
  return exec_step(L, op);
}

/* ---- the host's life ----------------------------------------------------- */

/* A graceful shutdown: the children, detached from the terminal, get the
   SIGTERM the terminal or service manager would have sent them. */
static void exec_on_shutdown(ah_host *h, void *data) {
  exec_state *st = data;
  exec_op *op;
  (void)h;
  for (op = st->live; op; op = op->next)
    if (op->task) kill_group(op, SIGTERM);
}

/* The host is being freed: kill and reap every child now (the process
   handle is closed first, so libuv will not reap it behind our back). */
static void exec_on_close(ah_host *h, void *data) {
  exec_state *st = data;
  exec_op *op;
  ah_host_unhook(h, AH_ON_SHUTDOWN, exec_on_shutdown, st);
  while ((op = st->live) != NULL) {
    st->live = op->next;
    op->st = NULL;
    op->task = NULL;
    op->waiting = 0;
    kill_group(op, SIGKILL);
    abort_io(op);
    if (!op->exited && op->pid > 0) {
      int status, i;
      close_handle(op, (uv_handle_t *)&op->proc, &op->proc_open);
      /* SIGKILL is prompt unless the child is stuck in the kernel: 2 s */
      for (i = 0; i < 2000; i++) {
        pid_t r = waitpid(op->pid, &status, WNOHANG);
        if (r != 0 && !(r < 0 && errno == EINTR)) break;
        usleep(1000);
      }
      op->exited = 1;
    }
  }
}

static const char state_key = 'x';

void ah_open_exec(lua_State *L, int mod) {
  exec_state *st = lua_newuserdatauv(L, sizeof *st, 0);
  st->host = ah_host_of(L);
  st->live = NULL;
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &state_key); /* lives as long as L */
  if (ah_host_hook(st->host, AH_ON_SHUTDOWN, exec_on_shutdown, st) != AH_OK ||
      ah_host_hook(st->host, AH_ON_CLOSE, exec_on_close, st) != AH_OK)
    luaL_error(L, "exec: out of memory");
  lua_pushcclosure(L, l_exec, 1);
  lua_setfield(L, mod, "exec");
}
