/*
** The PostgreSQL connection engine: libpq's non-blocking API on the loop
** thread, in pipeline mode. See db_conn.h for the model.
**
** Every statement is sent with its own Sync, so an error in one task's
** query aborts nothing but that query, and results come back in the
** order the statements were sent: the head of `sent` owns the next
** result. Scripts (exec) and COPY leave pipeline mode while they run.
**
** libuv polls the socket. Writing waits for writability only while
** PQflush says data is left. DNS for host names runs on the thread pool
** before libpq starts (libpq would resolve them blocking); cancel
** requests (PQcancel blocks) run on the thread pool too.
*/
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db_conn.h"

#define BYTEAOID 17
#define MAX_NOTES 100000 /* queued notifications nobody reads: oldest go */
#define COPY_CHUNK 65536

/* ---- helpers ------------------------------------------------------------- */

void *db_alloc(size_t n) {
  void *p = calloc(1, n ? n : 1);
  if (!p) abort();
  return p;
}

char *db_strdup(const char *s) {
  size_t n = strlen(s ? s : "") + 1;
  char *d = db_alloc(n);
  memcpy(d, s ? s : "", n);
  return d;
}

char *db_strfmt(const char *fmt, ...) {
  va_list ap;
  int n;
  char *s;
  va_start(ap, fmt);
  n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  s = db_alloc((size_t)n + 1);
  va_start(ap, fmt);
  vsnprintf(s, (size_t)n + 1, fmt, ap);
  va_end(ap);
  return s;
}

void db_list_push(db_list *l, db_op *op) {
  op->list = l;
  op->next = NULL;
  op->prev = l->tail;
  if (l->tail)
    l->tail->next = op;
  else
    l->head = op;
  l->tail = op;
  l->n++;
}

void db_list_remove(db_op *op) {
  db_list *l = op->list;
  if (!l) return;
  if (op->prev)
    op->prev->next = op->next;
  else
    l->head = op->next;
  if (op->next)
    op->next->prev = op->prev;
  else
    l->tail = op->prev;
  op->next = op->prev = NULL;
  op->list = NULL;
  l->n--;
}

db_op *db_list_pop(db_list *l) {
  db_op *op = l->head;
  if (op) db_list_remove(op);
  return op;
}

/* libpq's messages end with a newline and continue on tab-indented
   lines: one line, "; " between messages. */
static char *one_line(const char *msg) {
  size_t n = strlen(msg), i, j = 0;
  char *s = db_alloc(n * 2 + 1);
  for (i = 0; i < n; i++) {
    if (msg[i] == '\n') {
      while (i + 1 < n && (msg[i + 1] == '\n')) i++;
      if (i + 1 >= n) break;
      if (msg[i + 1] == '\t') {
        s[j++] = ' ';
        i++;
      } else {
        s[j++] = ';';
        s[j++] = ' ';
      }
    } else
      s[j++] = msg[i];
  }
  s[j] = '\0';
  return s;
}

/* ---- ops ----------------------------------------------------------------- */

db_op *db_op_new(db_host *dh, int kind, const char *sql, size_t len) {
  db_op *op = db_alloc(sizeof *op);
  op->dh = dh;
  op->kind = kind;
  op->state = DB_NEW;
  if (sql) {
    op->sql = db_alloc(len + 1);
    memcpy(op->sql, sql, len);
  }
  return op;
}

void db_op_set_params(db_op *op, int n, db_param *params) {
  free(op->params);
  op->nparams = n;
  op->params = params;
}

static void stmt_unref(db_conn *c, db_stmt *s);

void db_op_free(db_op *op) {
  db_list_remove(op);
  if (ah_timer_active(&op->timer)) ah_timer_stop(op->dh->host, &op->timer);
  if (op->stmt && op->conn) stmt_unref(op->conn, op->stmt);
  PQclear(op->res);
  free(op->err);
  free(op->sqlstate);
  free(op->sql);
  free(op->params);
  free(op->copy);
  if (op->note) db_note_free(op->note);
  if (op->granted) db_conn_unref(op->granted);
  if (op->conn) db_conn_unref(op->conn);
  free(op);
}

void db_op_fail(db_op *op, const char *kind, const char *fmt, ...) {
  va_list ap;
  int n;
  char *s;
  if (op->err) return;
  va_start(ap, fmt);
  n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  s = db_alloc(strlen(kind) + 3 + (size_t)n);
  sprintf(s, "%s: ", kind);
  va_start(ap, fmt);
  vsnprintf(s + strlen(s), (size_t)n + 1, fmt, ap);
  va_end(ap);
  op->err = s;
}

/* "db: <message> (SQLSTATE xxxxx)" from an error result. */
static void fail_result(db_op *op, const PGresult *r) {
  const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
  const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
  char *line;
  const char *sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
  /* FATAL and PANIC end the session: the connection is going away */
  const char *lost =
      sev && (strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0)
          ? "connection lost: "
          : "";
  if (op->err) return;
  line = one_line(msg ? msg : PQresultErrorMessage(r));
  if (st) {
    op->err = db_strfmt("db: %s%s (SQLSTATE %s)", lost, line, st);
    op->sqlstate = db_strdup(st);
  } else
    op->err = db_strfmt("db: %s%s", lost, line);
  free(line);
}

void db_op_complete(db_op *op) {
  op->state = DB_DONE;
  db_list_remove(op);
  if (op->task && !op->dh->closed)
    ah_task_resume(op->task);
  else
    db_op_free(op);
}

/* ---- the connection's life ----------------------------------------------- */

static void update_poll(db_conn *c);
static void pump(db_conn *c);
static void on_poll(uv_poll_t *p, int status, int events);
static void teardown(db_conn *c, const char *err);
static void start_connect(db_conn *c);

void db_conn_ref(db_conn *c) {
  c->refs++;
}

static void conn_free(db_conn *c) {
  int i;
  for (i = 0; i < c->nkw; i++) {
    free(c->kw[i]);
    free(c->val[i]);
  }
  free(c->kw);
  free(c->val);
  for (i = 0; i < c->nhosts; i++) free(c->hosts[i]);
  for (i = 0; i < c->nports; i++) free(c->ports[i]);
  free(c->hosts);
  free(c->ports);
  free(c->host_out);
  free(c->addr_out);
  free(c->port_out);
  free(c->dns_error);
  free(c->error);
  free(c->buckets);
  free(c->scratch_vals);
  free(c->scratch_lens);
  free(c->scratch_fmts);
  if (c->prev)
    c->prev->next = c->next;
  else if (c->dh->conns == c)
    c->dh->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  db_host_unref(c->dh);
  free(c);
}

void db_conn_unref(db_conn *c) {
  if (--c->refs > 0) return;
  if (c->state != DB_C_CLOSED && c->state != DB_C_BROKEN) {
    c->refs = 1; /* teardown may take and drop references */
    db_conn_close(c, "the connection was dropped");
    if (--c->refs > 0) return;
  }
  conn_free(c);
}

void db_conn_set_kind(db_conn *c, const char *kind) {
  if (c->kind == kind || (c->kind && kind && strcmp(c->kind, kind) == 0))
    return;
  if (c->kind) ah_host_count(c->host, c->kind, -1);
  c->kind = kind;
  if (kind) ah_host_count(c->host, kind, 1);
}

int db_conn_usable(const db_conn *c) {
  return c->state == DB_C_READY;
}

static void emit(db_conn *c, int event) {
  if (c->on_event) c->on_event(c, event);
}

static void on_poll_closed(uv_handle_t *h) {
  db_conn *c = h->data;
  free(h);
  db_conn_unref(c);
}

static void close_poll(db_conn *c) {
  if (!c->poll) return;
  /* closing stops the watcher at once, while the fd is still libpq's */
  ah_host_close_handle(c->host, (uv_handle_t *)c->poll, on_poll_closed);
  c->poll = NULL;
  c->events = 0;
}

/* Watches libpq's socket for ev. While connecting, libpq may replace the
   socket, even under the same number: the watcher is registered anew. */
static int watch(db_conn *c, int ev) {
  int fd = PQsocket(c->pg), rc;
  if (fd < 0) return UV_EBADF;
  if (c->poll && c->fd != fd) close_poll(c);
  if (!c->poll) {
    c->poll = db_alloc(sizeof *c->poll);
    rc = uv_poll_init(ah_host_loop(c->host), c->poll, fd);
    if (rc != 0) {
      free(c->poll);
      c->poll = NULL;
      return rc;
    }
    c->poll->data = c;
    c->fd = fd;
    c->poll_ref = 1;
    db_conn_ref(c);
  } else if (c->state != DB_C_READY)
    uv_poll_stop(c->poll);
  c->events = ev;
  return uv_poll_start(c->poll, ev, on_poll);
}

/* ---- connecting ---------------------------------------------------------- */

static void connect_done(db_conn *c) {
  db_op *op = c->connect_op;
  c->connect_op = NULL;
  if (op) {
    if (c->state != DB_C_READY && !op->err)
      op->err = db_strdup(c->error ? c->error : "connect: failed");
    db_op_complete(op);
  }
}

/* The connection attempt failed: kind and message say why. */
static void connect_failed(db_conn *c, char *err) {
  ah_timer_stop(c->host, &c->ctimer);
  close_poll(c);
  if (c->pg) PQfinish(c->pg);
  c->pg = NULL;
  free(c->error);
  c->error = err;
  c->state = DB_C_BROKEN;
  db_conn_set_kind(c, NULL);
  connect_done(c);
  emit(c, DB_EV_FAILED);
}

/* Sorts libpq's connection failure: the server answered (authentication,
   unknown database: "db:" with the SQLSTATE, which the verbose message
   carries after the severity), or it could not be reached ("connect:"). */
static char *connect_error(db_conn *c) {
  static const char *const sevs[] = {"FATAL:  ", "ERROR:  ", "PANIC:  "};
  const char *p = c->pg ? PQerrorMessage(c->pg) : "";
  char *s = db_alloc(strlen(p) * 2 + 1), *r, state[6] = "";
  size_t j = 0;
  int server = 0;
  while (*p) {
    const char *e = strchr(p, '\n');
    const char *end = e ? e : p + strlen(p);
    if (strncmp(p, "LOCATION:", 9) != 0 && strncmp(p, "DETAIL:", 7) != 0 &&
        strncmp(p, "HINT:", 5) != 0 && p < end) {
      if (j > 0) {
        if (*p == '\t')
          p++, s[j++] = ' ';
        else
          s[j++] = ';', s[j++] = ' ';
      }
      while (p < end) {
        int k, hit = 0;
        for (k = 0; k < 3 && !hit; k++)
          if ((size_t)(end - p) >= 8 && memcmp(p, sevs[k], 8) == 0) hit = 1;
        if (!hit) {
          s[j++] = *p++;
          continue;
        }
        server = 1;
        p += 8;
        if (end - p >= 7 && p[5] == ':' && p[6] == ' ') {
          memcpy(state, p, 5);
          p += 7;
        }
      }
    }
    p = e ? e + 1 : end;
  }
  s[j] = '\0';
  /* no "connection to server": it failed before trying (a bad option) */
  if (server || (c->pg && PQconnectionNeedsPassword(c->pg)) ||
      !strstr(s, "connection to server")) {
    if (state[0])
      r = db_strfmt("db: %s (SQLSTATE %s)", s, state);
    else
      r = db_strfmt("db: %s", s);
  } else if (c->dns_error) /* other hosts did not even resolve */
    r = db_strfmt("connect: %s; %s", *s ? s : "could not connect",
                  c->dns_error);
  else
    r = db_strfmt("connect: %s", *s ? s : "could not connect");
  free(s);
  return r;
}

static void on_connect_timeout(ah_timer *t) {
  db_conn *c = (db_conn *)((char *)t - offsetof(db_conn, ctimer));
  const char *host = c->pg ? PQhost(c->pg) : NULL;
  const char *port = c->pg ? PQport(c->pg) : NULL;
  db_conn_ref(c);
  connect_failed(c, db_strfmt("connect: timed out after %g s connecting to "
                              "\"%s\", port %s",
                              c->connect_timeout, host ? host : "?",
                              port ? port : "?"));
  db_conn_unref(c);
}

static void connected(db_conn *c) {
  ah_timer_stop(c->host, &c->ctimer);
  PQsetErrorVerbosity(c->pg, PQERRORS_DEFAULT);
  if (PQsetnonblocking(c->pg, 1) != 0 || !PQenterPipelineMode(c->pg)) {
    char *m = one_line(PQerrorMessage(c->pg));
    connect_failed(c, db_strfmt("db: %s", m));
    free(m);
    return;
  }
  c->state = DB_C_READY;
  if (watch(c, UV_READABLE) != 0) {
    connect_failed(c, db_strdup("connect: cannot watch the socket"));
    return;
  }
  update_poll(c);
  connect_done(c);
  emit(c, DB_EV_CONNECTED);
}

/* Goes on with PQconnectPoll's answer. */
static void connect_step(db_conn *c, PostgresPollingStatusType st) {
  int rc;
  if ((int)PQstatus(c->pg) > c->step) c->step = (int)PQstatus(c->pg);
  switch (st) {
  case PGRES_POLLING_READING:
  case PGRES_POLLING_WRITING:
    rc = watch(c, st == PGRES_POLLING_READING ? UV_READABLE : UV_WRITABLE);
    if (rc != 0)
      connect_failed(c, db_strfmt("connect: cannot watch the socket: %s",
                                  uv_strerror(rc)));
    return;
  case PGRES_POLLING_OK:
    connected(c);
    return;
  default:
    connect_failed(c, connect_error(c));
  }
}

static void notice_discard(void *arg, const PGresult *r) {
  (void)arg;
  (void)r;
}

static void start_connect(db_conn *c) {
  c->pg = PQconnectStartParams((const char *const *)c->kw,
                               (const char *const *)c->val, 0);
  if (!c->pg) {
    connect_failed(c, db_strdup("db: out of memory"));
    return;
  }
  PQsetNoticeReceiver(c->pg, notice_discard, NULL);
  PQsetErrorVerbosity(c->pg, PQERRORS_VERBOSE);
  if (PQstatus(c->pg) == CONNECTION_BAD) {
    connect_failed(c, connect_error(c));
    return;
  }
  c->state = DB_C_CONNECTING;
  if (c->connect_timeout > 0)
    ah_timer_start(c->host, &c->ctimer, c->connect_timeout, on_connect_timeout);
  /* as libpq says: before the first PQconnectPoll, wait to write */
  connect_step(c, PGRES_POLLING_WRITING);
}

/* ---- DNS: host names are resolved on the thread pool ----------------------
 */

static int is_literal(const char *h) {
  unsigned char buf[sizeof(struct in6_addr)];
  return inet_pton(AF_INET, h, buf) == 1 || inet_pton(AF_INET6, h, buf) == 1;
}

static int needs_dns(const char *h) {
  return h[0] && h[0] != '/' && h[0] != '@' && !is_literal(h);
}

static char **split(const char *s, int *n) {
  int count = 1, i = 0;
  const char *p;
  char **v;
  for (p = s; *p; p++)
    if (*p == ',') count++;
  v = db_alloc(sizeof *v * (size_t)count);
  for (p = s;; i++) {
    const char *e = strchr(p, ',');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    v[i] = db_alloc(len + 1);
    memcpy(v[i], p, len);
    if (!e) break;
    p = e + 1;
  }
  *n = count;
  return v;
}

static void append(char **dst, const char *s) {
  char *old = *dst;
  *dst = old ? db_strfmt("%s,%s", old, s) : db_strdup(s);
  free(old);
}

static void set_option(db_conn *c, const char *kw, const char *val) {
  int i;
  for (i = 0; i < c->nkw; i++)
    if (strcmp(c->kw[i], kw) == 0) {
      free(c->val[i]);
      c->val[i] = db_strdup(val);
      return;
    }
  c->kw[c->nkw] = db_strdup(kw);
  c->val[c->nkw] = db_strdup(val);
  c->nkw++;
}

static void resolve_next(db_conn *c);

static void on_resolved(uv_getaddrinfo_t *req, int status,
                        struct addrinfo *res) {
  db_conn *c = req->data;
  struct addrinfo *a;
  const char *host = c->hosts[c->ihost];
  const char *port = c->nports > 1 ? c->ports[c->ihost] : NULL;
  int found = 0;
  free(req);
  c->gai = NULL;
  if (c->state != DB_C_RESOLVING) { /* closed meanwhile */
    if (res) uv_freeaddrinfo(res);
    db_conn_unref(c);
    return;
  }
  for (a = res; status == 0 && a; a = a->ai_next) {
    char ip[INET6_ADDRSTRLEN];
    const void *addr =
        a->ai_family == AF_INET
            ? (const void *)&((struct sockaddr_in *)a->ai_addr)->sin_addr
            : (const void *)&((struct sockaddr_in6 *)a->ai_addr)->sin6_addr;
    if (a->ai_family != AF_INET && a->ai_family != AF_INET6) continue;
    if (!inet_ntop(a->ai_family, addr, ip, sizeof ip)) continue;
    if (c->addr_out && strstr(c->addr_out, ip)) continue; /* seen */
    append(&c->host_out, host);
    append(&c->addr_out, ip);
    if (port) append(&c->port_out, port);
    found++;
  }
  if (res) uv_freeaddrinfo(res);
  if (!found && !c->dns_error)
    c->dns_error = db_strfmt("dns: could not resolve host \"%s\": %s", host,
                             status ? uv_strerror(status) : "no address");
  c->ihost++;
  resolve_next(c);
  db_conn_unref(c);
}

/* Resolves the host entries one after the other, then connects. */
static void resolve_next(db_conn *c) {
  for (; c->ihost < c->nhosts; c->ihost++) {
    const char *h = c->hosts[c->ihost];
    struct addrinfo hints;
    int rc;
    if (!needs_dns(h)) {
      append(&c->host_out, h);
      append(&c->addr_out, "");
      if (c->nports > 1) append(&c->port_out, c->ports[c->ihost]);
      continue;
    }
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    c->gai = db_alloc(sizeof *c->gai);
    c->gai->data = c;
    rc = uv_getaddrinfo(ah_host_loop(c->host), c->gai, on_resolved, h, NULL,
                        &hints);
    if (rc == 0) {
      db_conn_ref(c);
      return;
    }
    free(c->gai);
    c->gai = NULL;
    if (!c->dns_error)
      c->dns_error = db_strfmt("dns: could not resolve host \"%s\": %s", h,
                               uv_strerror(rc));
  }
  if (!c->host_out) { /* nothing resolved */
    connect_failed(c, db_strdup(c->dns_error ? c->dns_error
                                             : "dns: no host to connect to"));
    return;
  }
  set_option(c, "host", c->host_out);
  set_option(c, "hostaddr", c->addr_out);
  if (c->port_out) set_option(c, "port", c->port_out);
  start_connect(c);
}

/* The value of an option: given, else from its environment variable. */
static const char *opt_value(PQconninfoOption *o) {
  if (o->val && o->val[0]) return o->val;
  if (o->envvar) {
    const char *v = getenv(o->envvar);
    if (v && v[0]) return v;
  }
  return NULL;
}

int db_conn_check_dsn(const char *dsn, char *err, size_t errlen) {
  char *perr = NULL;
  PQconninfoOption *opts = PQconninfoParse(dsn, &perr);
  if (!opts) {
    char *m = perr ? one_line(perr) : db_strdup("out of memory");
    snprintf(err, errlen, "db: invalid connection string: %s", m);
    free(m);
    PQfreemem(perr);
    return 0;
  }
  PQconninfoFree(opts);
  return 1;
}

db_conn *db_conn_new(db_host *dh, const char *dsn, int cache_cap, char *err,
                     size_t errlen) {
  char *perr = NULL;
  PQconninfoOption *opts = PQconninfoParse(dsn, &perr), *o;
  const char *host = NULL, *hostaddr = NULL, *port = NULL;
  db_conn *c;
  int n = 0, dns = 0, i;
  if (!opts) {
    char *m = perr ? one_line(perr) : db_strdup("out of memory");
    snprintf(err, errlen, "db: invalid connection string: %s", m);
    free(m);
    PQfreemem(perr);
    return NULL;
  }
  c = db_alloc(sizeof *c);
  c->dh = dh;
  c->host = dh->host;
  c->refs = 1;
  c->fd = -1;
  c->cache_cap = cache_cap;
  dh->refs++;
  c->next = dh->conns;
  if (dh->conns) dh->conns->prev = c;
  dh->conns = c;
  for (o = opts; o->keyword; o++) n++;
  c->kw = db_alloc(sizeof *c->kw * (size_t)(n + 4));
  c->val = db_alloc(sizeof *c->val * (size_t)(n + 4));
  for (o = opts; o->keyword; o++) {
    if (o->val) {
      c->kw[c->nkw] = db_strdup(o->keyword);
      c->val[c->nkw] = db_strdup(o->val);
      c->nkw++;
    }
    if (strcmp(o->keyword, "host") == 0) host = opt_value(o);
    if (strcmp(o->keyword, "hostaddr") == 0) hostaddr = opt_value(o);
    if (strcmp(o->keyword, "port") == 0) port = opt_value(o);
    if (strcmp(o->keyword, "connect_timeout") == 0 && opt_value(o)) {
      double t = atof(opt_value(o));
      c->connect_timeout = t <= 0 ? 0 : t < 2 ? 2 : t; /* as libpq does */
    }
  }
  db_conn_set_kind(c, "db.conn");
  if (host && !hostaddr) {
    c->hosts = split(host, &c->nhosts);
    for (i = 0; i < c->nhosts; i++) dns |= needs_dns(c->hosts[i]);
    if (port) c->ports = split(port, &c->nports);
    if (c->nports > 1 && c->nports != c->nhosts) dns = 0; /* libpq says */
  }
  PQconninfoFree(opts);
  if (dns) {
    c->state = DB_C_RESOLVING;
    resolve_next(c);
  } else
    start_connect(c);
  return c;
}

void db_conn_wait_connect(db_conn *c, db_op *op) {
  op->conn = c;
  db_conn_ref(c);
  if (c->state == DB_C_READY || c->state == DB_C_BROKEN ||
      c->state == DB_C_CLOSED) {
    if (c->state != DB_C_READY)
      op->err = db_strdup(c->error ? c->error : "closed: connection closed");
    db_op_complete(op);
    return;
  }
  op->state = DB_WAITING;
  c->connect_op = op;
}

/* ---- prepared statements --------------------------------------------------
   A statement is prepared (Parse + Describe, one Sync) the first time its
   SQL runs on a connection, then runs by name. The Describe tells the
   parameter types: a string given for a bytea parameter is sent as raw
   bytes. A query with string parameters waits in its place for that
   answer (one round trip, the first time only); others follow the Parse
   at once. Either way the connection runs what it is given in order. */

enum { STMT_PREPARING, STMT_READY };

struct db_stmt {
  db_stmt *hnext;
  db_stmt *lprev, *lnext;
  char *sql;
  unsigned hash;
  char name[24];
  int state, refs, dead;
  int nparams;
  Oid *types;
  char *err, *sqlstate; /* why it did not prepare */
};

static unsigned hash_sql(const char *s) {
  unsigned h = 2166136261u;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
  return h;
}

static void lru_unlink(db_conn *c, db_stmt *s) {
  if (s->lprev)
    s->lprev->lnext = s->lnext;
  else
    c->lru_head = s->lnext;
  if (s->lnext)
    s->lnext->lprev = s->lprev;
  else
    c->lru_tail = s->lprev;
  s->lprev = s->lnext = NULL;
}

static void lru_front(db_conn *c, db_stmt *s) {
  s->lnext = c->lru_head;
  if (c->lru_head) c->lru_head->lprev = s;
  c->lru_head = s;
  if (!c->lru_tail) c->lru_tail = s;
}

static void stmt_free(db_stmt *s) {
  free(s->sql);
  free(s->types);
  free(s->err);
  free(s->sqlstate);
  free(s);
}

static void stmt_unref(db_conn *c, db_stmt *s) {
  (void)c;
  if (--s->refs == 0 && s->dead) stmt_free(s);
}

/* Takes s out of the cache; it is freed when no op uses it. */
static void stmt_remove(db_conn *c, db_stmt *s) {
  db_stmt **pp;
  if (s->dead) return;
  for (pp = &c->buckets[s->hash & (unsigned)(c->nbuckets - 1)]; *pp;
       pp = &(*pp)->hnext)
    if (*pp == s) {
      *pp = s->hnext;
      break;
    }
  lru_unlink(c, s);
  c->nstmts--;
  s->dead = 1;
  if (s->refs == 0) stmt_free(s);
}

static db_stmt *stmt_get(db_conn *c, const char *sql) {
  unsigned h;
  db_stmt *s;
  if (!c->buckets) return NULL;
  h = hash_sql(sql);
  for (s = c->buckets[h & (unsigned)(c->nbuckets - 1)]; s; s = s->hnext)
    if (s->hash == h && strcmp(s->sql, sql) == 0) {
      if (c->lru_head != s) {
        lru_unlink(c, s);
        lru_front(c, s);
      }
      return s;
    }
  return NULL;
}

static void queue_internal(db_conn *c, const char *sql);

/* Deallocates the least recently used statements no op uses until at
   most max are left (or all left are in use). */
static void cache_trim(db_conn *c, int max) {
  db_stmt *v = c->lru_tail, *prev;
  for (; v && c->nstmts > max; v = prev) {
    prev = v->lprev;
    if (v->refs == 0 && v->state == STMT_READY) {
      char sqlbuf[48];
      snprintf(sqlbuf, sizeof sqlbuf, "DEALLOCATE %s", v->name);
      stmt_remove(c, v);
      queue_internal(c, sqlbuf);
    }
  }
}

static db_stmt *stmt_add(db_conn *c, const char *sql) {
  db_stmt *s;
  if (!c->buckets) {
    c->nbuckets = 64;
    while (c->nbuckets < c->cache_cap) c->nbuckets *= 2;
    c->buckets = db_alloc(sizeof *c->buckets * (size_t)c->nbuckets);
  }
  cache_trim(c, c->cache_cap - 1);
  s = db_alloc(sizeof *s);
  s->sql = db_strdup(sql);
  s->hash = hash_sql(sql);
  snprintf(s->name, sizeof s->name, "ah_%u", ++c->next_stmt);
  s->state = STMT_PREPARING;
  s->hnext = c->buckets[s->hash & (unsigned)(c->nbuckets - 1)];
  c->buckets[s->hash & (unsigned)(c->nbuckets - 1)] = s;
  lru_front(c, s);
  c->nstmts++;
  return s;
}

static void cache_clear(db_conn *c) {
  while (c->lru_head) stmt_remove(c, c->lru_head);
}

/* ---- routing and sending ---------------------------------------------------
 */

static void queue_internal(db_conn *c, const char *sql) {
  db_op *op = db_op_new(c->dh, DB_QUERY, sql, strlen(sql));
  op->nocache = 1;
  op->conn = c;
  db_conn_ref(c);
  c->nops++;
  op->state = DB_PENDING;
  db_list_push(&c->pending, op);
}

/* Queues op to be sent, with its statement's preparation first if the
   SQL is new on this connection. */
static void route(db_conn *c, db_op *op) {
  if (op->kind == DB_QUERY && !op->nocache && c->cache_cap > 0) {
    db_stmt *s = stmt_get(c, op->sql);
    if (!s) {
      db_op *p = db_op_new(c->dh, DB_PREPARE, NULL, 0);
      s = stmt_add(c, op->sql);
      p->stmt = s;
      s->refs++;
      p->conn = c;
      db_conn_ref(c);
      c->nops++;
      p->state = DB_PENDING;
      db_list_push(&c->pending, p);
    }
    op->stmt = s;
    s->refs++;
  }
  op->state = DB_PENDING;
  db_list_push(&c->pending, op);
}

/* Whether op must wait for its statement's parameter types: it has a
   string that may be meant for bytea. */
static int needs_types(const db_op *op) {
  int i;
  if (!op->stmt || op->stmt->state != STMT_PREPARING) return 0;
  for (i = 0; i < op->nparams; i++)
    if (op->params[i].val && op->params[i].str) return 1;
  return 0;
}

void db_conn_submit(db_conn *c, db_op *op) {
  if (!op->conn) {
    op->conn = c;
    db_conn_ref(c);
  }
  if (c->state != DB_C_READY) {
    if (!op->err)
      op->err =
          db_strdup(c->error ? c->error : "closed: the connection is closed");
    db_op_complete(op);
    return;
  }
  c->nops++;
  if (c->held_by && op->lease != c->held_by) {
    op->state = DB_HELD;
    db_list_push(&c->held, op);
    update_poll(c);
    return;
  }
  route(c, op);
  pump(c);
}

void db_conn_internal(db_conn *c, const char *sql) {
  if (c->state != DB_C_READY) return;
  queue_internal(c, sql);
  pump(c);
}

static int utf8_valid(const unsigned char *s, size_t n) {
  size_t i = 0, k, j;
  while (i < n) {
    unsigned char b = s[i];
    unsigned cp;
    if (b < 0x80) {
      i++;
      continue;
    }
    if (b >= 0xc2 && b <= 0xdf)
      k = 1, cp = b & 0x1f;
    else if (b >= 0xe0 && b <= 0xef)
      k = 2, cp = b & 0x0f;
    else if (b >= 0xf0 && b <= 0xf4)
      k = 3, cp = b & 0x07;
    else
      return 0;
    if (n - i <= k) return 0;
    for (j = 1; j <= k; j++) {
      if ((s[i + j] & 0xc0) != 0x80) return 0;
      cp = (cp << 6) | (s[i + j] & 0x3f);
    }
    if ((k == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (k == 3 && (cp < 0x10000 || cp > 0x10ffff)))
      return 0;
    i += k + 1;
  }
  return 1;
}

static void grow_scratch(db_conn *c, int n) {
  if (n <= c->scratch_cap) return;
  free(c->scratch_vals);
  free(c->scratch_lens);
  free(c->scratch_fmts);
  c->scratch_cap = n < 16 ? 16 : n;
  c->scratch_vals = db_alloc(sizeof *c->scratch_vals * (size_t)c->scratch_cap);
  c->scratch_lens = db_alloc(sizeof *c->scratch_lens * (size_t)c->scratch_cap);
  c->scratch_fmts = db_alloc(sizeof *c->scratch_fmts * (size_t)c->scratch_cap);
}

/* Queues one statement and its Sync in libpq's output buffer. */
static int send_pipelined(db_conn *c, db_op *op) {
  db_stmt *s = op->stmt;
  int i, ok;
  if (op->kind == DB_PREPARE) {
    ok = PQsendPrepare(c->pg, s->name, s->sql, 0, NULL) &&
         PQsendDescribePrepared(c->pg, s->name);
  } else {
    grow_scratch(c, op->nparams);
    for (i = 0; i < op->nparams; i++) {
      const db_param *p = &op->params[i];
      int bin = 0;
      if (p->val && p->str) {
        if (s && i < s->nparams)
          bin = s->types[i] == BYTEAOID;
        else if (!s)
          bin = !utf8_valid((const unsigned char *)p->val, (size_t)p->len);
        /* text cannot hold a zero byte: let the server say what it thinks */
        if (!bin && memchr(p->val, 0, (size_t)p->len)) bin = 1;
      }
      c->scratch_vals[i] = p->val;
      c->scratch_lens[i] = p->len;
      c->scratch_fmts[i] = bin;
    }
    if (s)
      ok = PQsendQueryPrepared(c->pg, s->name, op->nparams, c->scratch_vals,
                               c->scratch_lens, c->scratch_fmts, 0);
    else
      ok = PQsendQueryParams(c->pg, op->sql, op->nparams, NULL, c->scratch_vals,
                             c->scratch_lens, c->scratch_fmts, 0);
  }
  return ok && PQpipelineSync(c->pg);
}

static void broken(db_conn *c, const char *why);

static void flush(db_conn *c) {
  int r = PQflush(c->pg);
  if (r < 0) {
    broken(c, PQerrorMessage(c->pg));
    return;
  }
  c->want_write = r == 1;
}

/* Statements queued in one loop turn (by many tasks) leave together:
   libpq writes each with its Sync at once, so when a second statement
   follows the first in the same turn, the TCP socket is corked until the
   loop is about to wait. On loopback this saves the kernel a round of
   packet work per statement; a lone statement goes out at once. */
static void end_turn(db_host *dh) {
  db_conn *c;
  while ((c = dh->touched) != NULL) {
    int off = 0;
    dh->touched = c->next_touched;
    c->touched = 0;
    if (c->corked && c->state == DB_C_READY)
      setsockopt(c->fd, IPPROTO_TCP, TCP_CORK, &off, sizeof off);
    c->corked = 0;
    db_conn_unref(c);
  }
}

static void on_uncork(uv_prepare_t *p) {
  end_turn(p->data);
  uv_prepare_stop(p);
}

/* Before a statement is written: the first of the turn goes as it is,
   the next ones cork the socket. */
static void before_send(db_conn *c) {
  int on = 1;
  if (!c->touched) {
    c->touched = 1;
    c->next_touched = c->dh->touched;
    c->dh->touched = c;
    db_conn_ref(c);
    uv_prepare_start(c->dh->uncork, on_uncork);
    return;
  }
  if (c->corked || c->cork < 0) return;
  if (c->cork == 0) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    c->cork = getsockname(c->fd, (struct sockaddr *)&ss, &len) == 0 &&
                      (ss.ss_family == AF_INET || ss.ss_family == AF_INET6)
                  ? 1
                  : -1;
    if (c->cork < 0) return;
  }
  if (setsockopt(c->fd, IPPROTO_TCP, TCP_CORK, &on, sizeof on) != 0)
    c->cork = -1;
  else
    c->corked = 1;
}

/* Sends what is queued, in order, as far as the connection lets it: a
   script or a COPY waits for the pipeline to drain and holds everything
   behind it; nothing goes while a cancel request is under way. */
static void pump(db_conn *c) {
  int sent = 0, failed = 0;
  while (c->state == DB_C_READY && c->pending.head && !c->excl &&
         !c->cancelling && !c->cancel_target) {
    db_op *op = c->pending.head;
    if (op->stmt && op->stmt->err) { /* its SQL did not prepare */
      db_list_remove(op);
      c->nops--;
      op->err = db_strdup(op->stmt->err);
      if (op->stmt->sqlstate) op->sqlstate = db_strdup(op->stmt->sqlstate);
      stmt_unref(c, op->stmt);
      op->stmt = NULL;
      db_op_complete(op);
      failed = 1;
      continue;
    }
    if (needs_types(op)) break;
    if (op->kind == DB_EXEC || op->kind == DB_COPY) {
      if (c->sent.n > 0) break;
      if (!PQexitPipelineMode(c->pg) || !PQsendQuery(c->pg, op->sql)) {
        broken(c, PQerrorMessage(c->pg));
        return;
      }
      db_list_remove(op);
      op->state = DB_SENT;
      db_list_push(&c->sent, op);
      c->excl = op;
      sent = 1;
      break;
    }
    before_send(c);
    if (!send_pipelined(c, op)) {
      broken(c, PQerrorMessage(c->pg));
      return;
    }
    db_list_remove(op);
    op->state = DB_SENT;
    db_list_push(&c->sent, op);
    sent = 1;
  }
  if (sent && c->state == DB_C_READY) flush(c);
  update_poll(c);
  if (failed) emit(c, DB_EV_PROGRESS);
}

/* ---- results ---------------------------------------------------------------
 */

static void stmt_prepared(db_conn *c, db_op *p) {
  db_stmt *s = p->stmt;
  if (p->err || !p->res) {
    /* the SQL does not prepare: every query using it fails so */
    s->err = db_strdup(p->err ? p->err : "db: the statement was lost");
    if (p->sqlstate) s->sqlstate = db_strdup(p->sqlstate);
    stmt_remove(c, s);
    return;
  }
  s->state = STMT_READY;
  s->nparams = PQnparams(p->res);
  if (s->nparams > 0) {
    int i;
    s->types = db_alloc(sizeof *s->types * (size_t)s->nparams);
    for (i = 0; i < s->nparams; i++) s->types[i] = PQparamtype(p->res, i);
  }
}

/* A statement the server no longer has, or whose plan went stale after
   a schema change. */
static int stale(const db_op *op) {
  if (!op->sqlstate) return 0;
  return strcmp(op->sqlstate, "26000") == 0 ||
         (strcmp(op->sqlstate, "0A000") == 0 && op->err &&
          strstr(op->err, "cached plan"));
}

static void cancel_abandoned(db_conn *c);

static void finish(db_conn *c, db_op *op) {
  db_list_remove(op);
  c->nops--;
  if (op == c->cancel_target) c->cancel_target = NULL;
  cancel_abandoned(c);
  if (op->kind == DB_PREPARE) {
    stmt_prepared(c, op);
    db_op_free(op);
    emit(c, DB_EV_PROGRESS);
    return;
  }
  if (op->stmt && op->stmt->err) { /* ran after a Parse that failed */
    free(op->err);
    free(op->sqlstate);
    op->err = db_strdup(op->stmt->err);
    op->sqlstate = op->stmt->sqlstate ? db_strdup(op->stmt->sqlstate) : NULL;
  } else if (op->stmt && op->err && stale(op)) {
    db_stmt *s = op->stmt;
    int exists = strcmp(op->sqlstate, "26000") != 0;
    char sqlbuf[48];
    snprintf(sqlbuf, sizeof sqlbuf, "DEALLOCATE %s", s->name);
    if (!s->dead) {
      stmt_remove(c, s);
      if (exists) queue_internal(c, sqlbuf);
    }
    /* outside a lease nothing depends on the failed try: run it again */
    if (!op->retried && op->task && !op->lease) {
      stmt_unref(c, s);
      op->stmt = NULL;
      free(op->err);
      free(op->sqlstate);
      op->err = op->sqlstate = NULL;
      op->retried = 1;
      op->sub = 0;
      c->nops++;
      route(c, op);
      return;
    }
  }
  if (op->stmt) {
    stmt_unref(c, op->stmt);
    op->stmt = NULL;
    if (c->nstmts > c->cache_cap) cache_trim(c, c->cache_cap);
  }
  db_op_complete(op);
  emit(c, DB_EV_PROGRESS);
}

static void on_pipe_result(db_conn *c, db_op *op, PGresult *r) {
  int ncmds = op->kind == DB_PREPARE ? 2 : 1;
  if (!r) {
    if (++op->sub > ncmds) broken(c, "the results are out of step");
    return;
  }
  switch (PQresultStatus(r)) {
  case PGRES_PIPELINE_SYNC:
    PQclear(r);
    finish(c, op);
    return;
  case PGRES_PIPELINE_ABORTED:
    db_op_fail(op, "db", "the statement was not run (pipeline aborted)");
    break;
  case PGRES_FATAL_ERROR:
  case PGRES_NONFATAL_ERROR:
  case PGRES_BAD_RESPONSE:
    fail_result(op, r);
    break;
  case PGRES_COPY_IN:
  case PGRES_COPY_OUT:
  case PGRES_COPY_BOTH:
    PQclear(r);
    db_op_fail(op, "db", "COPY FROM STDIN and TO STDOUT need copy_in");
    broken(c, "a COPY was started through query()");
    return;
  default:
    if (op->kind == DB_PREPARE && op->sub == 0) break; /* the Parse */
    PQclear(op->res);
    op->res = r;
    return;
  }
  PQclear(r);
}

/* Results of a script or a COPY, outside the pipeline: NULL ends them. */
static void on_excl_result(db_conn *c, db_op *op, PGresult *r) {
  if (!r) {
    c->excl = NULL;
    if (!PQenterPipelineMode(c->pg)) {
      broken(c, PQerrorMessage(c->pg));
      return;
    }
    finish(c, op);
    return;
  }
  switch (PQresultStatus(r)) {
  case PGRES_COPY_IN:
    PQclear(r);
    if (op->kind == DB_COPY && op->copy_phase == 0 && !op->err) {
      op->copy_phase = 1;
      return;
    }
    db_op_fail(op, "db", "COPY FROM STDIN needs copy_in");
    if (PQputCopyEnd(c->pg, "COPY FROM STDIN needs copy_in") < 0)
      broken(c, PQerrorMessage(c->pg));
    return;
  case PGRES_COPY_OUT:
  case PGRES_COPY_BOTH:
    PQclear(r);
    c->copy_out = 1;
    db_op_fail(op, "db", "COPY TO STDOUT is not supported");
    return;
  case PGRES_FATAL_ERROR:
  case PGRES_NONFATAL_ERROR:
  case PGRES_BAD_RESPONSE:
    fail_result(op, r);
    PQclear(r);
    return;
  default:
    if (op->kind == DB_COPY && op->copy_phase == 0) {
      db_op_fail(op, "db", "copy_in needs a COPY ... FROM STDIN statement");
      PQclear(r);
      return;
    }
    PQclear(op->res);
    op->res = r;
  }
}

/* Feeds COPY data while the socket takes it. 1: go on, 0: wait. */
static int copy_push(db_conn *c, db_op *op) {
  int r;
  if (op->task) {
    while (op->copy_off < op->copy_len) {
      size_t n = op->copy_len - op->copy_off;
      if (n > COPY_CHUNK) n = COPY_CHUNK;
      r = PQputCopyData(c->pg, op->copy + op->copy_off, (int)n);
      if (r < 0) {
        broken(c, PQerrorMessage(c->pg));
        return 0;
      }
      if (r == 0) {
        c->want_write = 1;
        return 0;
      }
      op->copy_off += n;
      r = PQflush(c->pg);
      if (r < 0) {
        broken(c, PQerrorMessage(c->pg));
        return 0;
      }
      if (r == 1) {
        c->want_write = 1;
        return 0;
      }
    }
  }
  /* all sent, or nobody waits any more: the server rolls the COPY back */
  r = PQputCopyEnd(c->pg, op->task ? NULL : "cancelled");
  if (r < 0) {
    broken(c, PQerrorMessage(c->pg));
    return 0;
  }
  if (r == 0) {
    c->want_write = 1;
    return 0;
  }
  op->copy_phase = 2;
  flush(c);
  return c->state == DB_C_READY;
}

static int drain_copy_out(db_conn *c) {
  char *buf = NULL;
  int r = PQgetCopyData(c->pg, &buf, 1);
  if (buf) PQfreemem(buf);
  if (r > 0) return 1;
  if (r == 0) return 0;
  c->copy_out = 0;
  return 1;
}

void db_note_free(db_note *n) {
  PQfreemem(n->n);
  free(n);
}

db_note *db_conn_pop_note(db_conn *c) {
  db_note *n = c->notes;
  if (!n) return NULL;
  c->notes = n->next;
  if (!c->notes) c->notes_tail = NULL;
  c->nnotes--;
  n->next = NULL;
  return n;
}

void db_conn_unpop_note(db_conn *c, db_note *n) {
  n->next = c->notes;
  c->notes = n;
  if (!c->notes_tail) c->notes_tail = n;
  c->nnotes++;
}

void db_conn_deliver_notes(db_conn *c) {
  while (c->notewait.head && c->notes) {
    db_op *op = db_list_pop(&c->notewait);
    ah_timer_stop(c->host, &op->timer);
    op->note = db_conn_pop_note(c);
    db_op_complete(op);
  }
  update_poll(c);
}

static void take_notes(db_conn *c) {
  PGnotify *n;
  int got = 0;
  while (c->pg && (n = PQnotifies(c->pg)) != NULL) {
    db_note *note = db_alloc(sizeof *note);
    note->n = n;
    if (c->notes_tail)
      c->notes_tail->next = note;
    else
      c->notes = note;
    c->notes_tail = note;
    if (++c->nnotes > MAX_NOTES) db_note_free(db_conn_pop_note(c));
    got = 1;
  }
  if (got) db_conn_deliver_notes(c);
}

/* Hands the results that have arrived to their ops, in order. */
static void process(db_conn *c) {
  while (c->state == DB_C_READY) {
    db_op *op = c->sent.head;
    PGresult *r;
    if (!op) break;
    if (op->kind == DB_COPY && op->copy_phase == 1) {
      if (!copy_push(c, op)) break;
      continue;
    }
    if (c->copy_out) {
      if (!drain_copy_out(c)) break;
      continue;
    }
    if (PQisBusy(c->pg)) break;
    if (PQstatus(c->pg) == CONNECTION_BAD) {
      broken(c, PQerrorMessage(c->pg));
      return;
    }
    r = PQgetResult(c->pg);
    if (op->kind == DB_EXEC || op->kind == DB_COPY)
      on_excl_result(c, op, r);
    else
      on_pipe_result(c, op, r);
  }
  if (c->state == DB_C_READY) take_notes(c);
}

/* Whether OpenSSL holds decrypted bytes libpq has not read yet. libpq
   reads at most its buffer's room per call; what is left of a TLS record
   stays inside OpenSSL, where no poller sees it (a known hang of async
   libpq clients with servers that send big records). OpenSSL is the one
   libpq loaded: its SSL_pending is looked up when the host starts. */
static int ssl_pending(db_conn *c) {
  void *ssl;
  if (!c->dh->ssl_pending || !PQsslInUse(c->pg)) return 0;
  ssl = PQsslStruct(c->pg, "OpenSSL");
  return ssl && c->dh->ssl_pending(ssl) > 0;
}

/* PQconsumeInput, and again while OpenSSL holds more. 0: broken. */
static int consume(db_conn *c) {
  int rounds = 0;
  do {
    if (!PQconsumeInput(c->pg)) return 0;
  } while (++rounds < 64 && ssl_pending(c));
  return 1;
}

static void on_poll(uv_poll_t *p, int status, int events) {
  db_conn *c = p->data;
  db_conn_ref(c);
  if (c->state == DB_C_CONNECTING) {
    /* an error on the socket (a refused connection) is libpq's to read */
    (void)status;
    connect_step(c, PQconnectPoll(c->pg));
  } else if (c->state == DB_C_READY) {
    if (status < 0) /* libuv stopped watching: the socket has an error */
      broken(c, PQconsumeInput(c->pg) ? uv_strerror(status)
                                      : PQerrorMessage(c->pg));
    else {
      if (events & UV_WRITABLE) flush(c);
      if (c->state == DB_C_READY && (events & UV_READABLE) && !consume(c))
        broken(c, PQerrorMessage(c->pg));
      if (c->state == DB_C_READY) process(c);
      if (c->state == DB_C_READY) pump(c);
    }
  }
  db_conn_unref(c);
}

/* Readable always (results, notifications, the server going away);
   writable while libpq has data left. Referenced, so keeping the process
   alive, only while someone waits on the connection. */
static void update_poll(db_conn *c) {
  int ev, active;
  if (!c->poll || c->state != DB_C_READY) return;
  ev = UV_READABLE | (c->want_write ? UV_WRITABLE : 0);
  if (ev != c->events) {
    c->events = ev;
    uv_poll_start(c->poll, ev, on_poll);
  }
  active = c->nops > 0 || c->notewait.n > 0;
  if (active != c->poll_ref) {
    c->poll_ref = active;
    if (active)
      uv_ref((uv_handle_t *)c->poll);
    else
      uv_unref((uv_handle_t *)c->poll);
  }
}

/* ---- cancel requests
 * ----------------------------------------------------------- */

typedef struct cancel_req {
  uv_work_t work;
  PGcancel *pc;
  db_conn *c;
  char err[256];
} cancel_req;

static void cancel_work(uv_work_t *w) {
  cancel_req *req = (cancel_req *)w;
  PQcancel(req->pc, req->err, sizeof req->err);
}

static void send_cancel(db_conn *c, db_op *op);

/* A cancel request that reaches the backend between two statements (say
   while it skips the rest of a failed pipeline segment) is dropped by the
   server: while the abandoned statement it was for still runs, ask again. */
static void on_recancel(ah_timer *t) {
  db_op *op = (db_op *)((char *)t - offsetof(db_op, timer));
  db_conn *c = op->conn;
  if (c && c->cancel_target == op && !c->cancelling && c->state == DB_C_READY &&
      op->abandoned)
    send_cancel(c, op);
}

static void cancel_done(uv_work_t *w, int status) {
  cancel_req *req = (cancel_req *)w;
  db_conn *c = req->c;
  (void)status;
  PQfreeCancel(req->pc);
  c->cancelling = 0;
  ah_host_count(c->host, "db.cancel", -1);
  if (c->cancel_target && c->cancel_target->abandoned && c->state == DB_C_READY)
    ah_timer_start(c->host, &c->cancel_target->timer, 0.25, on_recancel);
  cancel_abandoned(c);
  if (c->state == DB_C_READY) pump(c);
  db_conn_unref(c);
  free(req);
}

/* Asks the server to stop the statement running for op. Until the
   request is through and op's results are in, nothing else is sent, so
   the request cannot hit a later statement. */
static void send_cancel(db_conn *c, db_op *op) {
  cancel_req *req;
  PGcancel *pc = PQgetCancel(c->pg);
  if (!pc) return;
  req = db_alloc(sizeof *req);
  req->pc = pc;
  req->c = c;
  if (uv_queue_work(ah_host_loop(c->host), &req->work, cancel_work,
                    cancel_done) != 0) {
    PQfreeCancel(pc);
    free(req);
    return;
  }
  db_conn_ref(c);
  c->cancelling = 1;
  c->cancel_target = op;
  ah_host_count(c->host, "db.cancel", 1);
}

/* Every statement in flight is a query whose task was cancelled: a
   cancel request can only stop work nobody waits for. Sent for the first
   of them, and again for the next when the first is through (several
   cancelled queries pipelined on one connection, say a pool's under a
   shutdown, would otherwise each run to its end). */
static void cancel_abandoned(db_conn *c) {
  db_op *o;
  if (c->cancelling || c->cancel_target || c->state != DB_C_READY ||
      !c->sent.head)
    return;
  for (o = c->sent.head; o; o = o->next)
    if (!o->abandoned || o->kind != DB_QUERY) return;
  send_cancel(c, c->sent.head);
}

void db_op_abandon(db_op *op) {
  db_conn *c = op->conn;
  op->task = NULL;
  op->abandoned = 1;
  if (c) db_conn_ref(c);
  switch (op->state) {
  case DB_WAITING:
    if (op->kind == DB_CONNECT && c->connect_op == op) {
      c->connect_op = NULL;
      db_conn_close(c, "the connection attempt was cancelled");
    }
    db_op_free(op);
    if (c) update_poll(c);
    break;
  case DB_HELD:
  case DB_PENDING:
    db_op_free(op);
    c->nops--;
    update_poll(c);
    emit(c, DB_EV_PROGRESS);
    break;
  case DB_SENT:
    /* its results will be read and dropped; the engine frees it */
    if (c->sent.head == op && !op->next && !c->cancelling &&
        (op->kind != DB_COPY || op->copy_phase == 2))
      send_cancel(c, op);
    else
      cancel_abandoned(c);
    break;
  default: /* DB_POOLWAIT, DB_LEASEWAIT, ... */
    db_op_free(op);
  }
  if (c) db_conn_unref(c);
}

/* ---- leases
 * --------------------------------------------------------------------- */

unsigned db_conn_lease(db_conn *c) {
  if (++c->next_lease == 0) c->next_lease = 1;
  c->held_by = c->next_lease;
  return c->held_by;
}

static void grant(db_conn *c, db_op *op) {
  op->granted = c;
  db_conn_ref(c);
  op->granted_lease = db_conn_lease(c);
  db_op_complete(op);
}

void db_conn_wait_lease(db_conn *c, db_op *op) {
  if (!op->conn) {
    op->conn = c;
    db_conn_ref(c);
  }
  if (c->state != DB_C_READY) {
    op->err =
        db_strdup(c->error ? c->error : "closed: the connection is closed");
    db_op_complete(op);
  } else if (!c->held_by)
    grant(c, op);
  else {
    op->state = DB_LEASEWAIT;
    db_list_push(&c->leasewait, op);
  }
}

void db_conn_release(db_conn *c, unsigned lease) {
  db_op *op;
  if (c->held_by != lease || lease == 0) return;
  c->held_by = 0;
  if (c->state != DB_C_READY) return;
  db_conn_ref(c);
  /* an open or failed transaction (or statements still in flight that
     may have opened one) is rolled back before anyone else comes */
  if (c->sent.n > 0 || c->pending.n > 0 ||
      PQtransactionStatus(c->pg) != PQTRANS_IDLE)
    queue_internal(c, "ROLLBACK");
  if ((op = db_list_pop(&c->leasewait)) != NULL)
    grant(c, op);
  else
    while ((op = db_list_pop(&c->held)) != NULL) route(c, op);
  pump(c);
  db_conn_unref(c);
}

void db_conn_wait_note(db_conn *c, db_op *op);

static void on_note_timeout(ah_timer *t) {
  db_op *op = (db_op *)((char *)t - offsetof(db_op, timer));
  db_conn *c = op->conn;
  db_list_remove(op);
  db_op_fail(op, "timeout", "no notification within %g s", op->timeout);
  db_op_complete(op);
  update_poll(c);
}

void db_conn_wait_note(db_conn *c, db_op *op) {
  op->conn = c;
  db_conn_ref(c);
  if (c->notes) {
    op->note = db_conn_pop_note(c);
    db_op_complete(op);
    return;
  }
  if (c->state != DB_C_READY) {
    op->err =
        db_strdup(c->error ? c->error : "closed: the connection is closed");
    db_op_complete(op);
    return;
  }
  op->state = DB_WAITING;
  db_list_push(&c->notewait, op);
  if (op->timeout >= 0)
    ah_timer_start(c->host, &op->timer, op->timeout, on_note_timeout);
  update_poll(c);
}

/* ---- the end
 * ---------------------------------------------------------------------- */

static void fail_list(db_conn *c, db_list *l, const char *err, int counted) {
  db_op *op;
  while ((op = db_list_pop(l)) != NULL) {
    if (counted) c->nops--;
    if (op->stmt) {
      stmt_unref(c, op->stmt);
      op->stmt = NULL;
    }
    ah_timer_stop(c->host, &op->timer);
    if (!op->err) op->err = db_strdup(err);
    db_op_complete(op);
  }
}

/* Fails everything waiting on the connection with err and lets go of
   the server. */
static void teardown(db_conn *c, const char *err) {
  db_note *n;
  db_conn_ref(c);
  ah_timer_stop(c->host, &c->ctimer);
  close_poll(c);
  if (c->gai) uv_cancel((uv_req_t *)c->gai);
  c->excl = NULL;
  c->cancel_target = NULL;
  fail_list(c, &c->sent, err, 1);
  fail_list(c, &c->pending, err, 1);
  fail_list(c, &c->held, err, 1);
  fail_list(c, &c->leasewait, err, 0);
  fail_list(c, &c->notewait, err, 0);
  cache_clear(c);
  while ((n = db_conn_pop_note(c)) != NULL) db_note_free(n);
  if (c->pg) PQfinish(c->pg);
  c->pg = NULL;
  db_conn_set_kind(c, NULL);
  connect_done(c);
  db_conn_unref(c);
}

static void broken(db_conn *c, const char *why) {
  char *line;
  if (c->state != DB_C_READY) return;
  line = one_line(why && *why ? why : "the connection broke");
  free(c->error);
  c->error = db_strfmt("db: connection lost: %s", line);
  free(line);
  c->state = DB_C_BROKEN;
  db_conn_ref(c);
  teardown(c, c->error);
  emit(c, DB_EV_BROKEN);
  db_conn_unref(c);
}

void db_conn_close(db_conn *c, const char *why) {
  if (c->state == DB_C_CLOSED) return;
  if (c->state != DB_C_BROKEN) {
    free(c->error);
    c->error = db_strfmt("closed: %s", why);
  }
  c->state = DB_C_CLOSED;
  teardown(c, c->error);
}

/* ---- the host
 * ---------------------------------------------------------------------- */

db_host *db_host_new(ah_host *h) {
  db_host *dh = db_alloc(sizeof *dh);
  dh->host = h;
  dh->refs = 1;
  *(void **)&dh->ssl_pending = dlsym(RTLD_DEFAULT, "SSL_pending");
  dh->uncork = db_alloc(sizeof *dh->uncork);
  uv_prepare_init(ah_host_loop(h), dh->uncork);
  dh->uncork->data = dh;
  uv_unref((uv_handle_t *)dh->uncork);
  return dh;
}

void db_host_unref(db_host *dh) {
  if (--dh->refs == 0) free(dh);
}

static void on_uncork_closed(uv_handle_t *h) {
  db_host *dh = h->data;
  free(h);
  db_host_unref(dh);
}

void db_host_close(db_host *dh) {
  db_conn *c, *next;
  dh->closed = 1;
  end_turn(dh);
  dh->refs++;
  ah_host_close_handle(dh->host, (uv_handle_t *)dh->uncork, on_uncork_closed);
  while (dh->pools) db_pool_close(dh->pools);
  for (c = dh->conns; c; c = next) {
    db_conn_ref(c);
    db_conn_close(c, "the host is closing");
    next = c->next;
    db_conn_unref(c);
  }
}
