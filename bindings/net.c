/*
** net.probe(host, port [, timeout]): can a TCP connection be made? The
** connect time in seconds, or nil, "dns:|connect:|timeout: ..." (the ops
** health checker's port probe).
*/
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "bindings.h"

#define container_of(p, type, field)                                           \
  ((type *)((char *)(p)-offsetof(type, field)))

/* getaddrinfo on the thread pool, then each address in turn, under one
   deadline. The result is the time to connect, so the health checker can
   show it; nothing is sent. */

typedef struct probe_op {
  ah_host *host;
  ah_task *task; /* NULL once the call is over (answered or cancelled) */
  uv_getaddrinfo_t gai;
  uv_tcp_t tcp;
  uv_connect_t creq;
  ah_timer timer;
  struct addrinfo *ai, *cur;
  char *where; /* "host:port" */
  double started, timeout, elapsed;
  int resolving, tcp_open, closing; /* callbacks still to come */
  int answered, kind, err;
} probe_op;

enum { PROBE_OK, PROBE_DNS, PROBE_CONNECT, PROBE_TIMEOUT };

/* Frees the op once nobody (task, libuv) can still reach it. */
static void probe_release(probe_op *op) {
  if (op->task || op->resolving || op->tcp_open || op->closing) return;
  if (ah_timer_active(&op->timer)) ah_timer_stop(op->host, &op->timer);
  if (op->ai) uv_freeaddrinfo(op->ai);
  ah_host_count(op->host, "net", -1);
  free(op->where);
  free(op);
}

/* Records the outcome once and wakes the task. */
static void probe_answer(probe_op *op, int kind, int err) {
  if (op->answered) return;
  op->answered = 1;
  op->kind = kind;
  op->err = err;
  op->elapsed = ah_now() - op->started;
  if (ah_timer_active(&op->timer)) ah_timer_stop(op->host, &op->timer);
  if (op->task) ah_task_resume(op->task);
}

static void probe_try(probe_op *op);

static void probe_closed(uv_handle_t *h) {
  probe_op *op = h->data;
  op->closing = 0;
  if (!op->answered) { /* that address failed: the next one */
    op->cur = op->cur->ai_next;
    if (op->cur) {
      probe_try(op);
      return;
    }
    probe_answer(op, PROBE_CONNECT, op->err);
  }
  probe_release(op);
}

static void probe_close(probe_op *op) {
  if (!op->tcp_open) return;
  op->tcp_open = 0;
  op->closing = 1;
  ah_host_close_handle(op->host, (uv_handle_t *)&op->tcp, probe_closed);
}

static void probe_connected(uv_connect_t *req, int status) {
  probe_op *op = req->data;
  if (op->answered) return; /* closed by the timeout; probe_closed follows */
  if (status == 0)
    probe_answer(op, PROBE_OK, 0);
  else
    op->err = status;
  probe_close(op);
}

static void probe_try(probe_op *op) {
  int err;
  uv_tcp_init(ah_host_loop(op->host), &op->tcp);
  op->tcp.data = op;
  op->tcp_open = 1;
  op->creq.data = op;
  err = uv_tcp_connect(&op->creq, &op->tcp, op->cur->ai_addr, probe_connected);
  if (err != 0) {
    op->err = err;
    probe_close(op);
  }
}

static void probe_resolved(uv_getaddrinfo_t *req, int status,
                           struct addrinfo *res) {
  probe_op *op = req->data;
  op->resolving = 0;
  op->ai = res;
  if (op->answered || status != 0 || !res) {
    probe_answer(op, PROBE_DNS, status ? status : UV_EAI_NONAME);
    probe_release(op);
    return;
  }
  op->cur = res;
  probe_try(op);
}

/* The deadline (or a cancellation): answer now, stop what is in flight. */
static void probe_timer(ah_timer *t) {
  probe_op *op = container_of(t, probe_op, timer);
  probe_answer(op, PROBE_TIMEOUT, UV_ETIMEDOUT);
  if (op->resolving) uv_cancel((uv_req_t *)&op->gai); /* may be too late */
  probe_close(op);
}

static void probe_cancel(void *data) {
  probe_op *op = data;
  op->task = NULL;
  probe_timer(&op->timer);
  probe_release(op);
}

static int probe_k(lua_State *L, int status, lua_KContext ctx) {
  probe_op *op = (probe_op *)ctx;
  int n;
  (void)status;
  switch (op->kind) {
  case PROBE_OK:
    lua_pushnumber(L, op->elapsed);
    n = 1;
    break;
  case PROBE_DNS:
    n = ah_push_fail(L, "dns", "%s: %s", op->where, uv_strerror(op->err));
    break;
  case PROBE_CONNECT:
    n = ah_push_fail(L, "connect", "%s: %s", op->where, uv_strerror(op->err));
    break;
  default:
    n = ah_push_fail(L, "timeout", "%s: no connection after %f s", op->where,
                     (lua_Number)op->timeout);
  }
  op->task = NULL;
  probe_release(op);
  return n;
}

/* net.probe(host, port [, timeout = 5]) -> seconds | nil, err */
static int l_probe(lua_State *L) {
  const char *host = luaL_checkstring(L, 1);
  lua_Integer port = luaL_checkinteger(L, 2);
  double timeout = luaL_optnumber(L, 3, 5);
  char service[16];
  struct addrinfo hints;
  probe_op *op;
  ah_task *t;
  int err;
  luaL_argcheck(L, port > 0 && port < 65536, 2, "port out of range");
  luaL_argcheck(L, timeout > 0, 3, "timeout must be > 0");
  t = ah_task_check(L, "net.probe");
  op = calloc(1, sizeof *op);
  if (!op) return luaL_error(L, "net.probe: out of memory");
  lua_pushfstring(L, strchr(host, ':') ? "[%s]:%I" : "%s:%I", host, port);
  op->where = strdup(lua_tostring(L, -1));
  if (!op->where) {
    free(op);
    return luaL_error(L, "net.probe: out of memory");
  }
  op->host = ah_host_of(L);
  op->task = t;
  op->timeout = timeout;
  op->started = ah_now();
  op->gai.data = op;
  ah_host_count(op->host, "net", 1);
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  snprintf(service, sizeof service, "%d", (int)port);
  err = uv_getaddrinfo(ah_host_loop(op->host), &op->gai, probe_resolved, host,
                       service, &hints);
  if (err != 0) {
    int n = ah_push_fail(L, "dns", "%s: %s", op->where, uv_strerror(err));
    op->task = NULL;
    probe_release(op);
    return n;
  }
  op->resolving = 1;
  ah_timer_start(op->host, &op->timer, timeout, probe_timer);
  return ah_task_suspend(L, probe_cancel, op, probe_k, (lua_KContext)op);
}

void ah_open_net(lua_State *L, int mod) {
  static const luaL_Reg funcs[] = {{"probe", l_probe}, {NULL, NULL}};
  luaL_newlib(L, funcs);
  lua_setfield(L, mod, "net");
}
