/*
** http.server: an HTTP/1.1 server on libuv TCP with llhttp (Node.js's
** parser) for API logic written as Lua route handlers.
**
** C owns the sockets and the protocol: accepting, parsing (llhttp), limits
** and timeouts, keep-alive and pipelining, writing responses (one uv_write
** of a pooled buffer per response). Each request becomes a task owned by
** the server (ah_host_spawn_call) running the app's Lua dispatcher
** (lua/http.lua: routing, middleware, handler errors), which returns
** status, body, headers and a default content type; the task's done
** callback writes the response. One request per connection is handled at
** a time; requests pipelined behind it wait in the connection's buffer,
** so responses go out in order.
*/
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "http_internal.h"

#define SMALL_BODY 16384         /* bodies up to this are copied */
#define PEND_LIMIT (1024 * 1024) /* pipelined bytes buffered at most */
#define WRITE_HIGH (256 * 1024)  /* a stream write waits above this */
#define WRITE_LOW (64 * 1024)    /* ... until the queue is below this */
#define LINGER_MS 2000           /* reading after our FIN, at most */
#define WREQ_KEEP 65536          /* bigger pooled buffers are freed */
#define WREQ_POOL 256

static const llhttp_settings_t parser_settings;

/* ---- small things ------------------------------------------------------ */

static const struct {
  short code;
  const char *text;
} reasons[] = {
    {100, "Continue"},
    {200, "OK"},
    {201, "Created"},
    {202, "Accepted"},
    {204, "No Content"},
    {206, "Partial Content"},
    {301, "Moved Permanently"},
    {302, "Found"},
    {303, "See Other"},
    {304, "Not Modified"},
    {307, "Temporary Redirect"},
    {308, "Permanent Redirect"},
    {400, "Bad Request"},
    {401, "Unauthorized"},
    {403, "Forbidden"},
    {404, "Not Found"},
    {405, "Method Not Allowed"},
    {406, "Not Acceptable"},
    {408, "Request Timeout"},
    {409, "Conflict"},
    {410, "Gone"},
    {411, "Length Required"},
    {412, "Precondition Failed"},
    {413, "Content Too Large"},
    {414, "URI Too Long"},
    {415, "Unsupported Media Type"},
    {417, "Expectation Failed"},
    {422, "Unprocessable Content"},
    {429, "Too Many Requests"},
    {431, "Request Header Fields Too Large"},
    {500, "Internal Server Error"},
    {501, "Not Implemented"},
    {502, "Bad Gateway"},
    {503, "Service Unavailable"},
    {504, "Gateway Timeout"},
    {505, "HTTP Version Not Supported"},
};

static const char *reason_phrase(int code) {
  size_t i;
  for (i = 0; i < sizeof reasons / sizeof reasons[0]; i++)
    if (reasons[i].code == code) return reasons[i].text;
  return code < 300   ? "OK"
         : code < 400 ? "Redirect"
         : code < 500 ? "Client Error"
                      : "Server Error";
}

/* "Date: ...\r\n", formatted once a second (locale-independent). */
static const char *date_line(http_server *s, size_t *len) {
  static const char days[] = "SunMonTueWedThuFriSat";
  static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
  time_t now = time(NULL);
  if (now != s->date_sec) {
    struct tm tm;
    gmtime_r(&now, &tm);
    s->date_len = (size_t)snprintf(
        s->date, sizeof s->date,
        "Date: %.3s, %02d %.3s %04d %02d:%02d:%02d GMT\r\n",
        days + 3 * tm.tm_wday, tm.tm_mday, months + 3 * tm.tm_mon,
        tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
    s->date_sec = now;
  }
  *len = s->date_len;
  return s->date;
}

/* Log lines go through the log binding (its format, its threshold):
   HH:MM:SS.mmm LEVEL [task N] message. A done callback runs outside its
   task, so the handler task's id is part of the message there. */
static void log_task(ah_host *h, unsigned task, const char *level,
                     const char *fmt, ...) {
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (task)
    ah_log(ah_host_lua(h), level, "[task %u] %s", task, msg);
  else
    ah_log(ah_host_lua(h), level, "%s", msg);
}

static uint64_t deadline_in(http_server *s, uint64_t ms) {
  return ms ? uv_now(ah_host_loop(s->host)) + ms : 0;
}

/* ---- pooled writes ----------------------------------------------------- */

int http_wreq_reserve(http_wreq *w, size_t need) {
  size_t cap;
  char *buf;
  if (w->len + need <= w->cap) return 0;
  cap = w->cap ? w->cap : 512;
  while (cap < w->len + need) cap *= 2;
  buf = realloc(w->buf, cap);
  if (!buf) return -1;
  w->buf = buf;
  w->cap = cap;
  return 0;
}

http_wreq *http_wreq_get(http_server *s, size_t need) {
  http_wreq *w = s->free_wreqs;
  if (w) {
    s->free_wreqs = w->next;
    s->nfree--;
  } else {
    w = calloc(1, sizeof *w);
    if (!w) return NULL;
  }
  w->len = 0;
  w->ref = LUA_NOREF;
  w->next = NULL;
  if (http_wreq_reserve(w, need) != 0) {
    free(w->buf);
    free(w);
    return NULL;
  }
  return w;
}

void http_wreq_put(http_server *s, http_wreq *w) {
  if (w->ref != LUA_NOREF) {
    luaL_unref(ah_host_lua(s->host), LUA_REGISTRYINDEX, w->ref);
    w->ref = LUA_NOREF;
  }
  if (w->cap > WREQ_KEEP || s->nfree >= WREQ_POOL) {
    free(w->buf);
    free(w);
    return;
  }
  w->next = s->free_wreqs;
  s->free_wreqs = w;
  s->nfree++;
}

static int wadd(http_wreq *w, const char *s, size_t n) {
  if (http_wreq_reserve(w, n) != 0) return -1;
  memcpy(w->buf + w->len, s, n);
  w->len += n;
  return 0;
}

#define WADDL(w, lit) wadd((w), (lit), sizeof(lit) - 1)

static int wprintf(http_wreq *w, const char *fmt, ...) {
  va_list ap;
  int n;
  if (http_wreq_reserve(w, 64) != 0) return -1;
  va_start(ap, fmt);
  n = vsnprintf(w->buf + w->len, w->cap - w->len, fmt, ap);
  va_end(ap);
  if (n < 0) return -1;
  if ((size_t)n >= w->cap - w->len) {
    if (http_wreq_reserve(w, (size_t)n + 1) != 0) return -1;
    va_start(ap, fmt);
    vsnprintf(w->buf + w->len, w->cap - w->len, fmt, ap);
    va_end(ap);
  }
  w->len += (size_t)n;
  return 0;
}

/* ---- connections: life and death --------------------------------------- */

static void server_check(http_server *s);
static int conn_read_start(http_conn *c);
static void conn_feed(http_conn *c, const char *data, size_t len,
                      int from_pend);

static void conn_maybe_free(http_conn *c) {
  http_server *s = c->srv;
  if (!c->handle_closed || c->task || c->shutting) return;
  if (c->prev)
    c->prev->next = c->next;
  else
    s->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  if (c->req) c->req->conn = NULL;
  free(c->head);
  free(c->hdrs);
  free(c->body);
  free(c->pend);
  free(c);
  s->nconns--;
  ah_host_count(s->host, "http.conn", -1);
  server_check(s);
}

static void on_conn_closed(uv_handle_t *handle) {
  http_conn *c = (http_conn *)handle;
  c->handle_closed = 1;
  conn_maybe_free(c);
}

/* Closes at once; a handler still running is cancelled (the client went
   away, or time is up). The memory goes when the handler task is done. */
static void conn_close(http_conn *c) {
  if (c->closing) return;
  c->closing = 1;
  c->state = C_CLOSED;
  c->deadline = 0;
  if (c->waiter) {
    ah_task *t = c->waiter;
    c->waiter = NULL;
    ah_task_resume(t);
  }
  if (c->task) ah_task_cancel(c->task);
  ah_host_close_handle(c->srv->host, (uv_handle_t *)&c->tcp, on_conn_closed);
}

void http_conn_abort(http_conn *c) {
  conn_close(c);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  http_conn *c = req->data;
  c->shutting = 0;
  if (c->closing) {
    conn_maybe_free(c);
    return;
  }
  if (status < 0) conn_close(c);
  /* else: keep reading until the client closes (or LINGER_MS), so that
     unread input does not turn our close into a reset that loses the
     response */
}

/* Ends the connection after what was written: FIN, then linger. */
static void conn_end(http_conn *c) {
  if (c->closing || c->shutting) return;
  c->state = C_LINGER;
  c->deadline = uv_now(ah_host_loop(c->srv->host)) + LINGER_MS;
  c->shut.data = c;
  c->shutting = 1;
  if (uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
    c->shutting = 0;
    conn_close(c);
    return;
  }
  if (c->read_stopped) {
    c->read_stopped = 0;
    conn_read_start(c);
  }
}

/* ---- writing ----------------------------------------------------------- */

static void on_write(uv_write_t *req, int status) {
  http_wreq *w = (http_wreq *)req;
  http_conn *c = w->conn;
  http_wreq_put(c->srv, w);
  if (status < 0) {
    conn_close(c);
    return;
  }
  if (c->waiter &&
      uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) <= WRITE_LOW) {
    ah_task *t = c->waiter;
    c->waiter = NULL;
    ah_task_resume(t);
  }
}

/* Sends w's buffer, then `extra` (a body kept alive by w->ref), then
   "\r\n" if trailer. Takes w. What the socket takes at once is written
   here (uv_try_write); only the rest goes through uv_write, whose
   completion costs libuv an epoll_ctl per write (it re-arms the watcher
   when the write queue drains), which would be one per response. A
   failed try is left to uv_write, which reports the error through
   on_write as before. */
static int send_parts(http_conn *c, http_wreq *w, const char *extra,
                      size_t elen, int trailer) {
  uv_buf_t bufs[3], *b = bufs;
  int n = 0, rc;
  if (c->closing) {
    http_wreq_put(c->srv, w);
    return UV_ECANCELED;
  }
  bufs[n++] = uv_buf_init(w->buf, (unsigned)w->len);
  if (extra && elen) bufs[n++] = uv_buf_init((char *)extra, (unsigned)elen);
  if (trailer) bufs[n++] = uv_buf_init("\r\n", 2);
  rc = uv_try_write((uv_stream_t *)&c->tcp, bufs, (unsigned)n);
  if (rc > 0) {
    size_t done = (size_t)rc;
    while (n > 0 && done >= b->len) {
      done -= b->len;
      b++;
      n--;
    }
    if (n == 0) { /* all of it: no request, no callback */
      http_wreq_put(c->srv, w);
      return 0;
    }
    b->base += done;
    b->len -= done;
  }
  w->conn = c;
  rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, b, (unsigned)n, on_write);
  if (rc != 0) {
    http_wreq_put(c->srv, w);
    conn_close(c);
  }
  return rc;
}

int http_send(http_conn *c, http_wreq *w, const char *extra, size_t elen) {
  return send_parts(c, w, extra, elen, 0);
}

static int is_tchar(unsigned char ch) {
  static const char extra[] = "!#$%&'*+-.^_`|~";
  if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
      (ch >= '0' && ch <= '9'))
    return 1;
  return ch && strchr(extra, ch) != NULL;
}

static int valid_name(const char *s, size_t n) {
  size_t i;
  if (n == 0) return 0;
  for (i = 0; i < n; i++)
    if (!is_tchar((unsigned char)s[i])) return 0;
  return 1;
}

/* No CR, LF, NUL or other control character but tab: a handler's header
   can never split the response. */
static int valid_value(const char *s, size_t n) {
  size_t i;
  for (i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if ((ch < 0x20 && ch != '\t') || ch == 0x7f) return 0;
  }
  return 1;
}

enum { H_OTHER, H_CTYPE, H_CLEN, H_TE, H_CONN, H_DATE };

static int header_kind(const char *n, size_t len) {
  switch (len) {
  case 4:
    return strncasecmp(n, "date", 4) == 0 ? H_DATE : H_OTHER;
  case 10:
    return strncasecmp(n, "connection", 10) == 0 ? H_CONN : H_OTHER;
  case 12:
    return strncasecmp(n, "content-type", 12) == 0 ? H_CTYPE : H_OTHER;
  case 14:
    return strncasecmp(n, "content-length", 14) == 0 ? H_CLEN : H_OTHER;
  case 17:
    return strncasecmp(n, "transfer-encoding", 17) == 0 ? H_TE : H_OTHER;
  default:
    return H_OTHER;
  }
}

static int add_header_line(http_wreq *w, const char *name, size_t nl,
                           const char *v, size_t vl, char *err, size_t errlen) {
  if (!valid_value(v, vl)) {
    snprintf(err, errlen, "invalid value for header '%.*s' (control character)",
             (int)(nl > 64 ? 64 : nl), name);
    return -1;
  }
  if (http_wreq_reserve(w, nl + vl + 4) != 0) return -1;
  memcpy(w->buf + w->len, name, nl);
  w->len += nl;
  w->buf[w->len++] = ':';
  w->buf[w->len++] = ' ';
  memcpy(w->buf + w->len, v, vl);
  w->len += vl;
  w->buf[w->len++] = '\r';
  w->buf[w->len++] = '\n';
  return 0;
}

static int has_token(const char *v, size_t n, const char *tok) {
  size_t tl = strlen(tok), i;
  for (i = 0; i + tl <= n; i++)
    if (strncasecmp(v + i, tok, tl) == 0) return 1;
  return 0;
}

/* The handler's headers (table at hidx of L): name -> string | number |
   list of them. Sets *flags bits 1: content-type given, 2: date given. */
static int add_lua_headers(http_conn *c, lua_State *L, http_wreq *w, int hidx,
                           int *flags, char *err, size_t errlen) {
  lua_checkstack(L, 6);
  lua_pushnil(L);
  while (lua_next(L, hidx)) {
    size_t nl, vl;
    const char *name, *v;
    int kind, i, n;
    if (lua_type(L, -2) != LUA_TSTRING) {
      snprintf(err, errlen, "header names must be strings (got a %s)",
               luaL_typename(L, -2));
      lua_pop(L, 2);
      return -1;
    }
    name = lua_tolstring(L, -2, &nl);
    if (!valid_name(name, nl)) {
      snprintf(err, errlen, "invalid header name '%.*s'",
               (int)(nl > 64 ? 64 : nl), name);
      lua_pop(L, 2);
      return -1;
    }
    kind = header_kind(name, nl);
    if (kind == H_CLEN || kind == H_TE) { /* the server frames the body */
      lua_pop(L, 1);
      continue;
    }
    if (lua_type(L, -1) == LUA_TTABLE) {
      n = (int)lua_rawlen(L, -1);
      for (i = 1; i <= n; i++) {
        int ty = lua_rawgeti(L, -1, i);
        if (ty != LUA_TSTRING && ty != LUA_TNUMBER) {
          snprintf(err, errlen, "header '%.*s': values must be strings",
                   (int)(nl > 64 ? 64 : nl), name);
          lua_pop(L, 3);
          return -1;
        }
        v = lua_tolstring(L, -1, &vl);
        if (add_header_line(w, name, nl, v, vl, err, errlen) != 0) {
          lua_pop(L, 3);
          return -1;
        }
        lua_pop(L, 1);
      }
      lua_pop(L, 1);
      continue;
    }
    if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER) {
      snprintf(err, errlen, "header '%.*s': a %s is not a header value",
               (int)(nl > 64 ? 64 : nl), name, luaL_typename(L, -1));
      lua_pop(L, 2);
      return -1;
    }
    v = lua_tolstring(L, -1, &vl);
    if (kind == H_CONN) {
      if (has_token(v, vl, "close")) c->close_after = 1;
      lua_pop(L, 1);
      continue;
    }
    if (kind == H_CTYPE) *flags |= 1;
    if (kind == H_DATE) *flags |= 2;
    if (add_header_line(w, name, nl, v, vl, err, errlen) != 0) {
      lua_pop(L, 2);
      return -1;
    }
    lua_pop(L, 1);
  }
  return 0;
}

/* Decimal digits without printf: this runs for every response. */
static int add_uint(http_wreq *w, uint64_t v) {
  char tmp[24];
  int n = 0;
  do {
    tmp[sizeof tmp - 1 - n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  return wadd(w, tmp + sizeof tmp - n, (size_t)n);
}

static int add_status_line(http_wreq *w, int status) {
  const char *r = reason_phrase(status);
  char num[4];
  num[0] = (char)('0' + status / 100 % 10);
  num[1] = (char)('0' + status / 10 % 10);
  num[2] = (char)('0' + status % 10);
  num[3] = ' ';
  if (WADDL(w, "HTTP/1.1 ") != 0 || wadd(w, num, 4) != 0 ||
      wadd(w, r, strlen(r)) != 0)
    return -1;
  return WADDL(w, "\r\n");
}

/* Appends a response head to w. clen >= 0: Content-Length; -1: a stream
   (chunked, or close-delimited for HTTP/1.0); -2: no body (204, 304).
   ctype (may be NULL), the default Content-Type, is one of our own
   constants, written as it is; the headers at hidx are checked. Returns
   -1 with err set when the handler's headers are invalid. */
int http_write_head(http_conn *c, lua_State *L, http_wreq *w, int status,
                    int hidx, const char *ctype, int64_t clen, char *err,
                    size_t errlen) {
  http_server *s = c->srv;
  int flags = 0;
  size_t mark = w->len;
  if (!c->keep_alive || s->draining || c->upgrade) c->close_after = 1;
  if (add_status_line(w, status) != 0) goto oom;
  if (hidx && add_lua_headers(c, L, w, hidx, &flags, err, errlen) != 0) {
    w->len = mark;
    return -1;
  }
  if (ctype && !(flags & 1) &&
      (WADDL(w, "Content-Type: ") != 0 || wadd(w, ctype, strlen(ctype)) != 0 ||
       WADDL(w, "\r\n") != 0))
    goto oom;
  if (clen >= 0) {
    if (WADDL(w, "Content-Length: ") != 0 || add_uint(w, (uint64_t)clen) != 0 ||
        WADDL(w, "\r\n") != 0)
      goto oom;
  } else if (clen == -1) {
    if (c->http_major == 1 && c->http_minor >= 1) {
      c->chunked = 1;
      if (WADDL(w, "Transfer-Encoding: chunked\r\n") != 0) goto oom;
    } else
      c->close_after = 1;
  }
  if (!(flags & 2)) {
    size_t dlen;
    const char *d = date_line(s, &dlen);
    if (wadd(w, d, dlen) != 0) goto oom;
  }
  if (c->close_after) {
    if (WADDL(w, "Connection: close\r\n") != 0) goto oom;
  } else if (c->http_major == 1 && c->http_minor == 0) {
    if (WADDL(w, "Connection: keep-alive\r\n") != 0) goto oom;
  }
  if (WADDL(w, "\r\n") != 0) goto oom;
  return 0;
oom:
  w->len = mark;
  snprintf(err, errlen, "out of memory");
  return -1;
}

/* A response of our own (errors): a short text body. */
static void respond_simple(http_conn *c, int status, int close) {
  http_wreq *w;
  char err[128];
  const char *text = reason_phrase(status);
  size_t n = strlen(text);
  if (c->closing) return;
  if (close) c->close_after = 1;
  w = http_wreq_get(c->srv, 256 + n);
  if (!w) {
    conn_close(c);
    return;
  }
  c->streaming = 0;
  if (http_write_head(c, NULL, w, status, 0, "text/plain; charset=utf-8",
                      (int64_t)n + 1, err, sizeof err) != 0) {
    http_wreq_put(c->srv, w);
    conn_close(c);
    return;
  }
  if (!c->head_only) {
    wadd(w, text, n);
    wadd(w, "\n", 1);
  }
  c->status = status;
  c->sent = n + 1;
  http_send(c, w, NULL, 0);
}

static void access_log(http_conn *c, unsigned task) {
  double ms = (double)(uv_hrtime() - c->t0) / 1e6;
  log_task(c->srv->host, task, "info", "%s %.*s %d %zu %.2fms",
           llhttp_method_name((llhttp_method_t)c->parser.method),
           (int)(c->url_len > 512 ? 512 : c->url_len), c->head, c->status,
           c->sent, ms);
}

/* A request that cannot be served: answer with status and close. */
static void conn_error(http_conn *c, int status) {
  if (c->closing) return;
  if (c->state == C_IDLE && status == 408) { /* nothing began: just close */
    conn_close(c);
    return;
  }
  respond_simple(c, status, 1);
  if (c->srv->access_log && c->url_len) access_log(c, 0);
  conn_end(c);
}

/* ---- after a response ---------------------------------------------------- */

static void request_done(http_conn *c) {
  http_server *s = c->srv;
  if (c->closing) return;
  if (c->close_after || !c->keep_alive || s->draining || c->upgrade) {
    conn_end(c);
    return;
  }
  c->state = C_IDLE;
  c->streaming = 0;
  c->chunked = 0;
  c->deadline = deadline_in(s, s->idle_ms);
  llhttp_resume(&c->parser);
  if (c->plen > c->poff) conn_feed(c, c->pend + c->poff, c->plen - c->poff, 1);
  if (c->read_stopped && !c->closing && c->state != C_LINGER) {
    c->read_stopped = 0;
    conn_read_start(c);
  }
}

/* The normal response: [status body headers ctype] at base of L. */
static void respond(http_conn *c, lua_State *L, int base, int nres,
                    unsigned tid) {
  http_server *s = c->srv;
  http_wreq *w;
  char err[256];
  int code = 500, hidx = 0, nobody;
  const char *body = NULL, *ctype = NULL;
  size_t blen = 0;
  if (nres >= 1 && lua_isinteger(L, base)) {
    lua_Integer v = lua_tointeger(L, base);
    if (v >= 200 && v <= 999) code = (int)v;
  }
  if (nres >= 2 && lua_type(L, base + 1) == LUA_TSTRING)
    body = lua_tolstring(L, base + 1, &blen);
  if (nres >= 3 && lua_istable(L, base + 2)) hidx = base + 2;
  if (nres >= 4 && lua_type(L, base + 3) == LUA_TSTRING)
    ctype = lua_tostring(L, base + 3);
  nobody = code == 204 || code == 304;
  if (nobody) blen = 0;
  w = http_wreq_get(s, 256 + (blen <= SMALL_BODY ? blen : 0));
  if (!w) {
    conn_close(c);
    return;
  }
  if (http_write_head(c, L, w, code, hidx, body && !nobody ? ctype : NULL,
                      nobody ? -2 : (int64_t)blen, err, sizeof err) != 0) {
    log_task(s->host, tid, "error", "http: %s %.*s: the handler's response: %s",
             llhttp_method_name((llhttp_method_t)c->method),
             (int)(c->url_len > 512 ? 512 : c->url_len), c->head, err);
    http_wreq_put(s, w);
    respond_simple(c, 500, 0);
    return;
  }
  c->status = code;
  c->sent = blen;
  if (c->head_only || blen == 0) {
    http_send(c, w, NULL, 0);
  } else if (blen <= SMALL_BODY) {
    wadd(w, body, blen);
    http_send(c, w, NULL, 0);
  } else { /* the string itself goes out; the registry keeps it alive */
    lua_pushvalue(L, base + 1);
    w->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    http_send(c, w, body, blen);
  }
}

static void stream_finish(http_conn *c) {
  if (c->streaming == 1) {
    if (c->chunked && !c->head_only) {
      http_wreq *w = http_wreq_get(c->srv, 8);
      if (!w) {
        conn_close(c);
        return;
      }
      WADDL(w, "0\r\n\r\n");
      http_send(c, w, NULL, 0);
    } else if (!c->chunked)
      c->close_after = 1; /* close-delimited body */
  }
}

/* The handler task ended (its results or its error are on L). */
static void on_done(ah_task *t, lua_State *L, int status, int nres,
                    void *data) {
  http_conn *c = data;
  http_server *s = c->srv;
  c->task = NULL;
  if (c->req) {
    c->req->conn = NULL;
    c->req = NULL;
  }
  c->waiter = NULL;
  if (c->closing) { /* the client went away: nginx logs that as 499 */
    if (s->access_log) {
      c->status = 499;
      access_log(c, ah_task_id(t));
    }
    conn_maybe_free(c);
    return;
  }
  if (status == AH_OK && !c->timed_out) {
    int base = lua_gettop(L) - nres + 1;
    if (c->streaming) {
      if (nres >= 1 && lua_isinteger(L, base) && lua_tointeger(L, base) == 0)
        stream_finish(c);
      else { /* failed after the head went out: the client must see it */
        conn_close(c);
        return;
      }
    } else
      respond(c, L, base, nres, ah_task_id(t));
  } else if (c->streaming) {
    conn_close(c);
    return;
  } else if (c->timed_out) {
    respond_simple(c, 504, 0);
  } else {
    if (status == AH_ERUN)
      log_task(s->host, ah_task_id(t), "error", "http: %s %.*s: %s",
               llhttp_method_name((llhttp_method_t)c->method),
               (int)(c->url_len > 512 ? 512 : c->url_len), c->head,
               lua_tostring(L, -1) ? lua_tostring(L, -1) : "(error object)");
    respond_simple(c, status == AH_ERUN ? 500 : 503, status != AH_ERUN);
  }
  if (s->access_log) access_log(c, ah_task_id(t));
  request_done(c);
}

/* ---- requests ------------------------------------------------------------ */

static void pend_add(http_conn *c, const char *data, size_t len) {
  if (len == 0) return;
  if (c->poff > 0 && c->poff == c->plen) c->poff = c->plen = 0;
  if (c->plen + len > c->pcap) {
    size_t cap = c->pcap ? c->pcap : 4096;
    char *p;
    while (cap < c->plen + len) cap *= 2;
    p = realloc(c->pend, cap);
    if (!p) {
      conn_close(c);
      return;
    }
    c->pend = p;
    c->pcap = cap;
  }
  memcpy(c->pend + c->plen, data, len);
  c->plen += len;
}

/* r's header lines -> a table: names lower-cased (in place, in r's own
   copy), values without trailing blanks, repeated lines joined. */
static void push_headers(lua_State *L, http_req *r) {
  http_hdr *hdrs = (http_hdr *)(r + 1);
  char *head = (char *)(hdrs + r->nhdr);
  uint32_t i;
  lua_createtable(L, 0, (int)r->nhdr);
  for (i = 0; i < r->nhdr; i++) {
    http_hdr *h = &hdrs[i];
    char *name = head + h->name;
    const char *v = head + h->value;
    size_t vl = h->value_len;
    uint32_t k;
    for (k = 0; k < h->name_len; k++)
      if (name[k] >= 'A' && name[k] <= 'Z') name[k] = (char)(name[k] + 32);
    while (vl > 0 && (v[vl - 1] == ' ' || v[vl - 1] == '\t')) vl--;
    lua_pushlstring(L, name, h->name_len);
    lua_pushvalue(L, -1);
    if (lua_rawget(L, -3) == LUA_TNIL) {
      lua_pop(L, 1);
      lua_pushlstring(L, v, vl);
    } else { /* repeated: joined as RFC 9110 says (cookies with "; ") */
      int cookie = h->name_len == 6 && memcmp(name, "cookie", 6) == 0;
      lua_pushstring(L, cookie ? "; " : ", ");
      lua_pushlstring(L, v, vl);
      lua_concat(L, 3);
    }
    lua_rawset(L, -3);
  }
}

/* A new request handle with a copy of c's header lines. */
static http_req *new_req(lua_State *L, http_server *s, http_conn *c) {
  size_t hsize = (size_t)c->nhdr * sizeof(http_hdr);
  http_req *r = lua_newuserdatauv(L, sizeof *r + hsize + c->hlen, 0);
  r->conn = c;
  r->nhdr = (uint32_t)c->nhdr;
  r->hlen = c->hlen;
  if (hsize) memcpy(r + 1, c->hdrs, hsize);
  if (c->hlen) memcpy((char *)(r + 1) + hsize, c->head, c->hlen);
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->ref_reqmt);
  lua_setmetatable(L, -2);
  return r;
}

/* The request table's keys, interned once (s->ref_keys), so that filling
   it costs no string lookups. */
enum {
  KEY_METHOD = 1,
  KEY_PATH,
  KEY_QUERY,
  KEY_BODY,
  KEY_R,
  KEY_STREAMED,
  NKEYS
};
static const char *const key_names[NKEYS] = {
    NULL, "method", "path", "_query", "body", "_r", "_streamed"};

/* The request is complete: build the Lua request, start its task. */
static void conn_dispatch(http_conn *c) {
  http_server *s = c->srv;
  ah_host *h = s->host;
  lua_State *L = ah_host_lua(h);
  const char *url = c->head, *q, *end;
  size_t ulen = c->url_len;
  http_req *r;
  int keys;
  lua_checkstack(L, 8);
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->ref_dispatch);
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->ref_keys); /* keys: see KEY_ */
  keys = lua_gettop(L);
  lua_createtable(L, 0, 8);
  lua_rawgeti(L, keys, KEY_METHOD);
  lua_pushstring(L, llhttp_method_name((llhttp_method_t)c->method));
  lua_rawset(L, -3);
  if (ulen && url[0] != '/') { /* absolute-form: http://host/path */
    const char *p = memchr(url, ':', ulen);
    if (p && (size_t)(p - url) + 3 <= ulen && p[1] == '/' && p[2] == '/') {
      const char *slash = memchr(p + 3, '/', ulen - (size_t)(p + 3 - url));
      if (slash) {
        ulen -= (size_t)(slash - url);
        url = slash;
      } else {
        url = "/";
        ulen = 1;
      }
    }
  }
  end = url + ulen;
  q = memchr(url, '?', ulen);
  {
    const char *hash = memchr(url, '#', ulen);
    if (hash && (!q || hash < q)) q = NULL, end = hash;
    if (hash && q && hash > q) end = hash;
  }
  lua_rawgeti(L, keys, KEY_PATH);
  lua_pushlstring(L, url, (size_t)((q ? q : end) - url));
  lua_rawset(L, -3);
  if (q) {
    lua_rawgeti(L, keys, KEY_QUERY);
    lua_pushlstring(L, q + 1, (size_t)(end - q - 1));
    lua_rawset(L, -3);
  }
  lua_rawgeti(L, keys, KEY_BODY);
  if (c->blen)
    lua_pushlstring(L, c->body, c->blen);
  else
    lua_pushliteral(L, "");
  lua_rawset(L, -3);
  lua_rawgeti(L, keys, KEY_R);
  r = new_req(L, s, c);
  c->req = r;
  lua_rawset(L, -3);
  lua_rawgeti(L, keys, KEY_STREAMED);
  lua_pushboolean(L, 0);
  lua_rawset(L, -3);
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->ref_luamt);
  lua_setmetatable(L, -2);
  lua_remove(L, keys);
  if (c->bcap > 256 * 1024) { /* do not keep a big upload's buffer */
    free(c->body);
    c->body = NULL;
    c->bcap = 0;
  }
  c->blen = 0;
  c->state = C_HANDLING;
  c->deadline = deadline_in(s, s->request_ms);
  if (ah_host_spawn_call(h, 1, on_done, c, &c->task) != AH_OK) {
    c->task = NULL;
    c->req = NULL;
    r->conn = NULL;
    lua_settop(L, 0);
    conn_close(c);
  }
}

/* ---- llhttp callbacks ------------------------------------------------------
 */

#define CONN(p) ((http_conn *)(p)->data)

static int on_message_begin(llhttp_t *p) {
  http_conn *c = CONN(p);
  http_server *s = c->srv;
  c->hlen = c->url_len = 0;
  c->nhdr = 0;
  c->blen = 0;
  c->in_value = 0;
  c->err_status = 0;
  c->sent = 0;
  c->status = 0;
  c->streaming = c->chunked = c->timed_out = c->head_only = 0;
  c->close_after = 0;
  c->state = C_READING;
  c->t0 = uv_hrtime();
  c->deadline = deadline_in(s, s->request_ms);
  return 0;
}

static int head_add(http_conn *c, const char *at, size_t len) {
  if (len == 0) return 0; /* c->head may still be NULL */
  if ((size_t)c->hlen + len > c->srv->max_header) return -1;
  if (c->hlen + len > c->hcap) {
    uint32_t cap = c->hcap ? c->hcap : 1024;
    char *p;
    while (cap < c->hlen + len) cap *= 2;
    p = realloc(c->head, cap);
    if (!p) return -1;
    c->head = p;
    c->hcap = cap;
  }
  memcpy(c->head + c->hlen, at, len);
  c->hlen += (uint32_t)len;
  return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len) {
  http_conn *c = CONN(p);
  if (head_add(c, at, len) != 0) {
    c->err_status = 414;
    return -1;
  }
  c->url_len += (uint32_t)len;
  return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  http_conn *c = CONN(p);
  http_hdr *h;
  if (c->nhdr == 0 || c->in_value) { /* a new header line */
    if (c->nhdr == HTTP_MAX_HEADERS) {
      c->err_status = 431;
      return -1;
    }
    if (c->nhdr == c->chdr) {
      int n = c->chdr ? c->chdr * 2 : 16;
      http_hdr *hd = realloc(c->hdrs, (size_t)n * sizeof *hd);
      if (!hd) return -1;
      c->hdrs = hd;
      c->chdr = n;
    }
    h = &c->hdrs[c->nhdr++];
    h->name = c->hlen;
    h->name_len = h->value = h->value_len = 0;
    c->in_value = 0;
  }
  h = &c->hdrs[c->nhdr - 1];
  if (head_add(c, at, len) != 0) {
    c->err_status = 431;
    return -1;
  }
  h->name_len += (uint32_t)len;
  return 0;
}

static int on_header_field_complete(llhttp_t *p) {
  http_conn *c = CONN(p);
  c->in_value = 1; /* the next field callback starts a new line */
  if (c->nhdr > 0) c->hdrs[c->nhdr - 1].value = c->hlen;
  return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
  http_conn *c = CONN(p);
  http_hdr *h = &c->hdrs[c->nhdr - 1];
  if (head_add(c, at, len) != 0) {
    c->err_status = 431;
    return -1;
  }
  h->value_len += (uint32_t)len;
  return 0;
}

static const http_hdr *find_header(http_conn *c, const char *name) {
  size_t n = strlen(name);
  int i;
  for (i = 0; i < c->nhdr; i++)
    if (c->hdrs[i].name_len == n &&
        strncasecmp(c->head + c->hdrs[i].name, name, n) == 0)
      return &c->hdrs[i];
  return NULL;
}

static int on_headers_complete(llhttp_t *p) {
  http_conn *c = CONN(p);
  http_server *s = c->srv;
  const http_hdr *expect;
  int has_body;
  c->method = (uint8_t)p->method;
  c->http_major = p->http_major;
  c->http_minor = p->http_minor;
  c->keep_alive = (uint8_t)llhttp_should_keep_alive(p);
  c->upgrade = p->upgrade;
  c->head_only = p->method == HTTP_HEAD;
  if (c->url_len == 0) { /* llhttp lets "CONNECT  HTTP/1.1" through */
    c->err_status = 400;
    return -1;
  }
  if ((p->flags & F_CONTENT_LENGTH) && p->content_length > s->max_body) {
    c->err_status = 413;
    return -1;
  }
  has_body = (p->flags & F_CHUNKED) ||
             ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0);
  if ((p->flags & F_CONTENT_LENGTH) && p->content_length > c->bcap &&
      p->content_length <= 1024 * 1024) { /* more grows as it arrives */
    char *b = realloc(c->body, p->content_length);
    if (!b) {
      c->err_status = 413;
      return -1;
    }
    c->body = b;
    c->bcap = p->content_length;
  }
  expect = find_header(c, "expect");
  if (expect && p->http_major == 1 && p->http_minor >= 1) {
    if (expect->value_len != 12 ||
        strncasecmp(c->head + expect->value, "100-continue", 12) != 0) {
      c->err_status = 417;
      return -1;
    }
    if (has_body) { /* go on: the body is wanted */
      http_wreq *w = http_wreq_get(s, 32);
      if (!w) return -1;
      WADDL(w, "HTTP/1.1 100 Continue\r\n\r\n");
      http_send(c, w, NULL, 0);
    }
  }
  return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  http_conn *c = CONN(p);
  if (c->blen + len > c->srv->max_body) {
    c->err_status = 413;
    return -1;
  }
  if (c->blen + len > c->bcap) {
    size_t cap = c->bcap ? c->bcap : 4096;
    char *b;
    while (cap < c->blen + len) cap *= 2;
    if (cap > c->srv->max_body) cap = c->srv->max_body;
    b = realloc(c->body, cap);
    if (!b) {
      c->err_status = 413;
      return -1;
    }
    c->body = b;
    c->bcap = cap;
  }
  memcpy(c->body + c->blen, at, len);
  c->blen += len;
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  http_conn *c = CONN(p);
  c->keep_alive = (uint8_t)llhttp_should_keep_alive(p);
  conn_dispatch(c);
  return HPE_PAUSED; /* one request at a time; the rest waits in pend */
}

static const llhttp_settings_t parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_header_field_complete = on_header_field_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static int status_of_error(http_conn *c, llhttp_errno_t err) {
  if (c->err_status) return c->err_status;
  return err == HPE_INVALID_VERSION ? 505 : 400;
}

static void conn_feed(http_conn *c, const char *data, size_t len,
                      int from_pend) {
  llhttp_errno_t err = llhttp_execute(&c->parser, data, len);
  if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) {
    size_t used = (size_t)(llhttp_get_error_pos(&c->parser) - data);
    if (err == HPE_PAUSED_UPGRADE) c->upgrade = 1;
    if (from_pend) {
      c->poff += used;
      if (c->poff >= c->plen) c->poff = c->plen = 0;
    } else
      pend_add(c, data + used, len - used);
    if (c->state != C_HANDLING && !c->closing) conn_close(c);
    return;
  }
  if (from_pend) c->poff = c->plen = 0;
  if (err == HPE_OK) return;
  conn_error(c, status_of_error(c, err));
}

/* ---- reading and accepting
 * --------------------------------------------------- */

static void on_alloc(uv_handle_t *handle, size_t size, uv_buf_t *buf) {
  http_conn *c = (http_conn *)handle;
  (void)size;
  *buf = uv_buf_init(c->srv->rbuf, HTTP_RBUF);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  http_conn *c = (http_conn *)stream;
  if (nread < 0) { /* EOF or error: the client is gone */
    conn_close(c);
    return;
  }
  if (nread == 0 || c->closing || c->state == C_LINGER) return;
  if (c->state == C_HANDLING || c->plen > c->poff) {
    pend_add(c, buf->base, (size_t)nread);
    if (c->plen - c->poff > PEND_LIMIT && !c->read_stopped) {
      uv_read_stop(stream);
      c->read_stopped = 1;
    }
    return;
  }
  conn_feed(c, buf->base, (size_t)nread, 0);
  /* A request parsed here has its handler task ready: run it now, so
     its response leaves before the next connection is read and the
     client works while we do (instead of a loop turn that reads every
     connection, then answers them all in the check phase). c may be
     closed by what runs: nothing touches it after this. */
  if (c->task) ah_host_run_ready(c->srv->host);
}

/* uv_read_start with the server's callbacks (used after a stop). */
static int conn_read_start(http_conn *c) {
  return uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

/* A connection of s whose socket is not open yet. */
static http_conn *conn_new(http_server *s) {
  http_conn *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  if (uv_tcp_init(ah_host_loop(s->host), &c->tcp) != 0) {
    free(c);
    return NULL;
  }
  c->srv = s;
  c->next = s->conns;
  if (s->conns) s->conns->prev = c;
  s->conns = c;
  s->nconns++;
  ah_host_count(s->host, "http.conn", 1);
  return c;
}

/* The socket is open: start reading requests. */
static void conn_start(http_conn *c) {
  http_server *s = c->srv;
  uv_tcp_nodelay(&c->tcp, 1);
  llhttp_init(&c->parser, HTTP_REQUEST, &parser_settings);
  c->parser.data = c;
  c->keep_alive = 1;
  c->http_major = 1;
  c->http_minor = 1;
  c->state = C_IDLE;
  c->deadline = deadline_in(s, s->idle_ms);
  if (conn_read_start(c) != 0) {
    conn_close(c);
    return;
  }
  if (s->nconns > s->max_conns) { /* over the limit: say so and go */
    c->state = C_READING;
    c->t0 = uv_hrtime();
    respond_simple(c, 503, 1);
    conn_end(c);
  }
}

static void on_connection(uv_stream_t *server, int status) {
  http_server *s = server->data;
  http_conn *c;
  if (status < 0 || s->draining || !(c = conn_new(s))) return;
  if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
    conn_close(c);
    return;
  }
  conn_start(c);
}

int http_open_fd(http_server *s, int fd) {
  http_conn *c;
  int rc;
  if (s->draining) return UV_ECANCELED;
  if (!(c = conn_new(s))) return UV_ENOMEM;
  if ((rc = uv_tcp_open(&c->tcp, fd)) != 0) {
    conn_close(c);
    return rc;
  }
  conn_start(c);
  return 0;
}

/* ---- the server's life
 * ------------------------------------------------------- */

static void server_free(http_server *s) {
  lua_State *L = ah_host_lua(s->host);
  luaL_unref(L, LUA_REGISTRYINDEX, s->ref_dispatch);
  luaL_unref(L, LUA_REGISTRYINDEX, s->ref_reqmt);
  luaL_unref(L, LUA_REGISTRYINDEX, s->ref_luamt);
  luaL_unref(L, LUA_REGISTRYINDEX, s->ref_keys);
  luaL_unref(L, LUA_REGISTRYINDEX, s->ref_sdt);
  luaL_unref(L, LUA_REGISTRYINDEX, s->ref_self);
  while (s->free_wreqs) {
    http_wreq *w = s->free_wreqs;
    s->free_wreqs = w->next;
    free(w->buf);
    free(w);
  }
  if (s->ud) *s->ud = NULL;
  free(s);
}

static void on_host_shutdown(ah_host *h, void *data);
static void on_host_close(ah_host *h, void *data);

static void on_sweep_closed(uv_handle_t *handle) {
  server_free(handle->data);
}

/* Everything is closed: wake close()'s waiter, free the server. */
static void server_check(http_server *s) {
  if (!s->draining || s->handles > 1 || s->nconns > 0) return;
  if (s->closer) {
    ah_task *t = s->closer;
    s->closer = NULL;
    ah_task_resume(t);
  }
  if (s->handles == 1) {
    s->handles = 0;
    if (!s->freed_hooks) {
      s->freed_hooks = 1;
      ah_host_unhook(s->host, AH_ON_SHUTDOWN, on_host_shutdown, s);
      ah_host_unhook(s->host, AH_ON_CLOSE, on_host_close, s);
    }
    uv_timer_stop(&s->sweep);
    s->sweep.data = s;
    ah_host_close_handle(s->host, (uv_handle_t *)&s->sweep, on_sweep_closed);
  }
}

static void on_listener_closed(uv_handle_t *handle) {
  http_server *s = handle->data;
  s->handles--;
  server_check(s);
}

static void force_close_all(http_server *s) {
  http_conn *c;
  for (c = s->conns; c; c = c->next) conn_close(c);
}

/* Stops accepting; idle connections close, the others after their
   response. timeout >= 0: whatever is left then is closed (handlers
   cancelled). */
static void server_drain(http_server *s, double timeout) {
  uv_loop_t *loop = ah_host_loop(s->host);
  http_conn *c;
  if (timeout >= 0) {
    uint64_t at = uv_now(loop) + (uint64_t)(timeout * 1000);
    if (!s->force_at || at < s->force_at) s->force_at = at;
  }
  if (!s->draining) {
    s->draining = 1;
    if (s->listening) {
      s->listening = 0;
      ah_host_count(s->host, "http.server", -1);
      s->tcp.data = s;
      ah_host_close_handle(s->host, (uv_handle_t *)&s->tcp, on_listener_closed);
    }
    for (c = s->conns; c; c = c->next) {
      if (c->closing || c->state != C_IDLE) continue;
      if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) == 0)
        conn_close(c);
      else
        conn_end(c);
    }
  }
  if (s->force_at && uv_now(loop) >= s->force_at) force_close_all(s);
  server_check(s);
}

static void on_sweep(uv_timer_t *timer) {
  http_server *s = timer->data;
  uint64_t now = uv_now(timer->loop);
  http_conn *c;
  for (c = s->conns; c; c = c->next) {
    if (c->closing || !c->deadline || now < c->deadline) continue;
    switch (c->state) {
    case C_IDLE:
    case C_LINGER:
      conn_close(c);
      break;
    case C_READING:
      conn_error(c, 408);
      break;
    case C_HANDLING:
      if (c->task && !c->streaming) {
        c->timed_out = 1;
        c->deadline = 0;
        ah_task_cancel(c->task);
      }
      break;
    default:
      break;
    }
  }
  if (s->worker_ppid && getppid() != s->worker_ppid) { /* orphaned worker */
    s->worker_ppid = 0;
    ah_host_shutdown(s->host);
  }
  if (s->draining && s->force_at && now >= s->force_at) force_close_all(s);
}

static double shutdown_timeout(http_server *s) {
  lua_State *L = ah_host_lua(s->host);
  double t = 10;
  int top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->ref_sdt);
  if (lua_isfunction(L, -1) && lua_pcall(L, 0, 1, 0) == LUA_OK &&
      lua_isnumber(L, -1))
    t = lua_tonumber(L, -1);
  lua_settop(L, top);
  return t;
}

static void on_host_shutdown(ah_host *h, void *data) {
  http_server *s = data;
  (void)h;
  server_drain(s, shutdown_timeout(s));
}

/* The host is being freed: no task runs any more; close everything. */
static void on_host_close(ah_host *h, void *data) {
  http_server *s = data;
  http_conn *c;
  (void)h;
  s->freed_hooks = 1;
  ah_host_unhook(s->host, AH_ON_SHUTDOWN, on_host_shutdown, s);
  s->closer = NULL;
  for (c = s->conns; c; c = c->next) {
    c->task = NULL; /* never resumed again: its done callback will not come */
    if (c->req) {
      c->req->conn = NULL;
      c->req = NULL;
    }
    c->waiter = NULL;
  }
  server_drain(s, 0);
}

/* ---- Lua: the server handle
 * ---------------------------------------------------- */

static http_server *check_server(lua_State *L, int idx) {
  http_server **ud = luaL_checkudata(L, idx, HTTP_SERVER_MT);
  return *ud;
}

static int srv_gc(lua_State *L) {
  http_server **ud = luaL_checkudata(L, 1, HTTP_SERVER_MT);
  if (*ud) (*ud)->ud = NULL;
  *ud = NULL;
  return 0;
}

static int srv_port(lua_State *L) {
  http_server *s = check_server(L, 1);
  if (!s) return 0;
  lua_pushinteger(L, s->port);
  return 1;
}

static int srv_stats(lua_State *L) {
  http_server *s = check_server(L, 1);
  http_conn *c;
  int busy = 0;
  lua_createtable(L, 0, 3);
  if (!s) return 1;
  for (c = s->conns; c; c = c->next) busy += c->task != NULL;
  lua_pushinteger(L, s->nconns);
  lua_setfield(L, -2, "connections");
  lua_pushinteger(L, busy);
  lua_setfield(L, -2, "handling");
  lua_pushboolean(L, s->listening);
  lua_setfield(L, -2, "listening");
  return 1;
}

static void closer_cancel(void *data) {
  ((http_server *)data)->closer = NULL;
}

static int close_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  lua_pushboolean(L, 1);
  return 1;
}

/* srv:close([timeout]) -> true, once every connection is closed (at once
   when called by one of the server's own handlers) */
static int srv_close(lua_State *L) {
  http_server *s = check_server(L, 1);
  double timeout = luaL_optnumber(L, 2, 10);
  ah_task *t;
  http_conn *c;
  luaL_argcheck(L, timeout >= 0, 2, "must be >= 0");
  lua_settop(L, 1);
  if (!s) {
    lua_pushboolean(L, 1);
    return 1;
  }
  server_drain(s, timeout);
  s = check_server(L, 1);
  t = ah_task_current(ah_host_of(L));
  if (!s || s->nconns == 0 || !t || !lua_isyieldable(L) || s->closer) {
    lua_pushboolean(L, 1);
    return 1;
  }
  for (c = s->conns; c; c = c->next)
    if (c->task == t) { /* a handler closing its own server */
      lua_pushboolean(L, 1);
      return 1;
    }
  t = ah_task_check(L, "close");
  s->closer = t;
  return ah_task_suspend(L, closer_cancel, s, close_k, 0);
}

/* ---- Lua: listen
 * --------------------------------------------------------------- */

static lua_Integer opt_int(lua_State *L, int idx, const char *k,
                           lua_Integer def) {
  lua_Integer v;
  lua_getfield(L, idx, k);
  v = lua_isnil(L, -1) ? def : lua_tointeger(L, -1);
  lua_pop(L, 1);
  return v;
}

static double opt_num(lua_State *L, int idx, const char *k, double def) {
  double v;
  lua_getfield(L, idx, k);
  v = lua_isnil(L, -1) ? def : lua_tonumber(L, -1);
  lua_pop(L, 1);
  return v;
}

static int opt_bool(lua_State *L, int idx, const char *k) {
  int v;
  lua_getfield(L, idx, k);
  v = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

/* a count or size option, clamped to [0, max] (huge and NaN included) */
static double opt_count(lua_State *L, int idx, const char *k, double def,
                        double max) {
  double v = opt_num(L, idx, k, def);
  if (!(v >= 0)) return 0;
  return v > max ? max : floor(v);
}

static uint64_t secs_to_ms(double s) {
  if (!(s > 0)) return 0;
  if (s > 1e9) s = 1e9;
  return (uint64_t)(s * 1000 + 0.5) ? (uint64_t)(s * 1000 + 0.5) : 1;
}

static void on_failed_closed(uv_handle_t *handle) {
  free(handle->data);
}

/* A listening socket made by hand for SO_REUSEPORT (libuv 1.44 has no
   flag for it), then given to libuv. */
static int reuseport_socket(uv_tcp_t *tcp, const struct sockaddr *sa) {
  int fd, one = 1;
  socklen_t len = sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                            : sizeof(struct sockaddr_in);
  fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
      setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
      bind(fd, sa, len) != 0) {
    int e = -errno;
    close(fd);
    return e;
  }
  if (uv_tcp_open(tcp, fd) != 0) {
    close(fd);
    return UV_EINVAL;
  }
  return 0;
}

/* [cfg] + address -> server handle | nil, err */
static int start_listening(lua_State *L, http_server *s,
                           const struct sockaddr *sa) {
  ah_host *h = s->host;
  char where[80], ip[64];
  struct sockaddr_storage bound;
  int rc, namelen = sizeof bound, backlog, reuseport, i;
  http_server **ud;
  uv_ip_name(sa, ip, sizeof ip);
  snprintf(where, sizeof where, sa->sa_family == AF_INET6 ? "[%s]:%d" : "%s:%d",
           ip,
           ntohs(sa->sa_family == AF_INET6
                     ? ((const struct sockaddr_in6 *)sa)->sin6_port
                     : ((const struct sockaddr_in *)sa)->sin_port));
  backlog = (int)opt_count(L, 1, "backlog", 511, INT_MAX);
  reuseport = opt_bool(L, 1, "reuseport") || getenv("ASYNCHOST_WORKER") != NULL;
  uv_tcp_init(ah_host_loop(h), &s->tcp);
  s->tcp.data = s;
  rc = reuseport ? reuseport_socket(&s->tcp, sa) : uv_tcp_bind(&s->tcp, sa, 0);
  if (rc == 0) rc = uv_listen((uv_stream_t *)&s->tcp, backlog, on_connection);
  if (rc == 0)
    rc = uv_tcp_getsockname(&s->tcp, (struct sockaddr *)&bound, &namelen);
  if (rc != 0) {
    ah_host_close_handle(h, (uv_handle_t *)&s->tcp, on_failed_closed);
    return ah_push_fail(L, "io", "cannot listen on %s: %s", where,
                        uv_strerror(rc));
  }
  s->port = ntohs(bound.ss_family == AF_INET6
                      ? ((struct sockaddr_in6 *)&bound)->sin6_port
                      : ((struct sockaddr_in *)&bound)->sin_port);
  s->listening = 1;
  s->handles = 2;
  ah_host_count(h, "http.server", 1);
  uv_timer_init(ah_host_loop(h), &s->sweep);
  s->sweep.data = s;
  {
    uint64_t m = LINGER_MS, iv;
    if (s->idle_ms && s->idle_ms < m) m = s->idle_ms;
    if (s->request_ms && s->request_ms < m) m = s->request_ms;
    iv = m / 8;
    if (iv < 10) iv = 10;
    if (iv > 500) iv = 500;
    uv_timer_start(&s->sweep, on_sweep, iv, iv);
    uv_unref((uv_handle_t *)&s->sweep);
  }
  if (getenv("ASYNCHOST_WORKER")) s->worker_ppid = (int)getppid();
  ah_host_hook(h, AH_ON_SHUTDOWN, on_host_shutdown, s);
  ah_host_hook(h, AH_ON_CLOSE, on_host_close, s);
  /* refs: the dispatcher, the metatables of requests and of their
     handles, shutdown_timeout, self */
  lua_getfield(L, 1, "dispatch");
  s->ref_dispatch = luaL_ref(L, LUA_REGISTRYINDEX);
  luaL_getmetatable(L, HTTP_REQ_MT);
  s->ref_reqmt = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_getfield(L, 1, "req_mt");
  s->ref_luamt = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_createtable(L, NKEYS - 1, 0);
  for (i = 1; i < NKEYS; i++) {
    lua_pushstring(L, key_names[i]);
    lua_rawseti(L, -2, i);
  }
  s->ref_keys = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_getfield(L, 1, "shutdown_timeout");
  s->ref_sdt = luaL_ref(L, LUA_REGISTRYINDEX);
  ud = lua_newuserdatauv(L, sizeof *ud, 0);
  *ud = s;
  s->ud = ud;
  luaL_setmetatable(L, HTTP_SERVER_MT);
  lua_pushvalue(L, -1);
  s->ref_self = luaL_ref(L, LUA_REGISTRYINDEX);
  return 1;
}

typedef struct resolve_op {
  uv_getaddrinfo_t req;
  http_server *s;
  ah_task *task;
  int status, cancelled;
  struct sockaddr_storage addr;
} resolve_op;

static void on_resolved(uv_getaddrinfo_t *req, int status,
                        struct addrinfo *res) {
  resolve_op *op = (resolve_op *)req;
  if (status == 0 && res) memcpy(&op->addr, res->ai_addr, res->ai_addrlen);
  if (res) uv_freeaddrinfo(res);
  if (op->cancelled) {
    free(op->s);
    free(op);
    return;
  }
  op->status = status;
  ah_task_resume(op->task);
}

static void resolve_cancel(void *data) {
  resolve_op *op = data;
  op->cancelled = 1;
  uv_cancel((uv_req_t *)&op->req);
}

static int listen_k(lua_State *L, int status, lua_KContext ctx) {
  resolve_op *op = (resolve_op *)ctx;
  http_server *s = op->s;
  int rc = op->status;
  struct sockaddr_storage addr = op->addr;
  const char *host;
  (void)status;
  free(op);
  if (rc != 0) {
    lua_getfield(L, 1, "host");
    host = lua_tostring(L, -1);
    free(s);
    return ah_push_fail(L, "dns", "cannot resolve %s: %s", host,
                        uv_strerror(rc));
  }
  return start_listening(L, s, (struct sockaddr *)&addr);
}

/* listen(cfg) -> server handle | nil, err
   cfg: host, port, backlog, reuseport, the limits, dispatch, req_mt */
static int l_listen(lua_State *L) {
  ah_host *h = ah_host_of(L);
  const char *host;
  int port, literal;
  http_server *s;
  ah_task *t = NULL;
  struct sockaddr_storage addr;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_getfield(L, 1, "host");
  host = lua_isnil(L, -1) ? "127.0.0.1" : luaL_checkstring(L, -1);
  lua_pop(L, 1);
  port = (int)opt_int(L, 1, "port", 0);
  luaL_argcheck(L, port >= 0 && port <= 65535, 1, "port out of range");
  if (strcmp(host, "*") == 0 || strcmp(host, "") == 0) host = "0.0.0.0";
  if (strcmp(host, "localhost") == 0) host = "127.0.0.1";
  literal = uv_ip4_addr(host, port, (struct sockaddr_in *)&addr) == 0 ||
            uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr) == 0;
  if (!literal) t = ah_task_check(L, "listen"); /* a name: resolve it */
  s = calloc(1, sizeof *s);
  if (!s) return luaL_error(L, "http: out of memory");
  s->host = h;
  s->ref_self = s->ref_dispatch = s->ref_reqmt = s->ref_luamt = s->ref_keys =
      s->ref_sdt = LUA_NOREF;
  s->max_body = (size_t)opt_count(L, 1, "max_body", 8 << 20, 1e15);
  /* the head is indexed with 32-bit sizes */
  s->max_header = (size_t)opt_count(L, 1, "max_header", 16 << 10, 1 << 30);
  s->idle_ms = secs_to_ms(opt_num(L, 1, "idle_timeout", 60));
  s->request_ms = secs_to_ms(opt_num(L, 1, "request_timeout", 30));
  s->max_conns = (int)opt_count(L, 1, "max_connections", 10000, INT_MAX);
  s->access_log = opt_bool(L, 1, "access_log");
  if (literal) return start_listening(L, s, (struct sockaddr *)&addr);
  {
    resolve_op *op = calloc(1, sizeof *op);
    struct addrinfo hints;
    char service[8];
    if (!op) {
      free(s);
      return luaL_error(L, "http: out of memory");
    }
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    snprintf(service, sizeof service, "%d", port);
    op->s = s;
    op->task = t;
    if (uv_getaddrinfo(ah_host_loop(h), &op->req, on_resolved, host, service,
                       &hints) != 0) {
      free(op);
      free(s);
      return ah_push_fail(L, "dns", "cannot resolve %s", host);
    }
    return ah_task_suspend(L, resolve_cancel, op, listen_k, (lua_KContext)op);
  }
}

/* ---- Lua: requests
 * --------------------------------------------------------------- */

/* The connection of the request handle at idx, or NULL when the request
   is over or its client went away. */
http_conn *http_check_req(lua_State *L, int idx) {
  http_req *r = luaL_checkudata(L, idx, HTTP_REQ_MT);
  if (!r->conn || r->conn->closing) return NULL;
  return r->conn;
}

/* remote_addr(r) -> "ip" | nil */
static int l_remote_addr(lua_State *L) {
  http_conn *c = http_check_req(L, 1);
  struct sockaddr_storage ss;
  int len = sizeof ss;
  char ip[64];
  if (!c || uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0 ||
      uv_ip_name((struct sockaddr *)&ss, ip, sizeof ip) != 0)
    return 0;
  lua_pushstring(L, ip);
  return 1;
}

/* headers(r) -> the request's headers as a table (req.headers, built
   when first read; valid after the request is over too) */
static int l_headers(lua_State *L) {
  push_headers(L, luaL_checkudata(L, 1, HTTP_REQ_MT));
  return 1;
}

/* stream_begin(r, status, headers, ctype) -> true | nil, "closed: ..." */
static int l_stream_begin(lua_State *L) {
  http_conn *c = http_check_req(L, 1);
  lua_Integer status = luaL_checkinteger(L, 2);
  const char *ctype = luaL_optstring(L, 4, NULL);
  int hidx = lua_istable(L, 3) ? 3 : 0;
  http_wreq *w;
  char err[256];
  luaL_argcheck(
      L, status >= 200 && status <= 999 && status != 204 && status != 304, 2,
      "not a status a body can follow");
  if (!c) return ah_push_fail(L, "closed", "the client went away");
  if (c->streaming) return luaL_error(L, "http: the response has begun");
  w = http_wreq_get(c->srv, 512);
  if (!w) return luaL_error(L, "http: out of memory");
  if (http_write_head(c, L, w, (int)status, hidx, ctype, -1, err, sizeof err) !=
      0) {
    http_wreq_put(c->srv, w);
    return luaL_error(L, "http: %s", err);
  }
  c->streaming = 1;
  c->deadline = 0; /* a stream may take its time */
  c->status = (int)status;
  if (http_send(c, w, NULL, 0) != 0)
    return ah_push_fail(L, "closed", "the client went away");
  lua_pushboolean(L, 1);
  return 1;
}

static void waiter_cancel(void *data) {
  http_req *r = data;
  if (r->conn) r->conn->waiter = NULL;
}

static int write_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  if (!http_check_req(L, 1))
    return ah_push_fail(L, "closed", "the client went away");
  lua_pushboolean(L, 1);
  return 1;
}

/* stream_write(r, data) -> true | nil, "closed: ..."; waits while much
   is queued for a slow client */
static int l_stream_write(lua_State *L) {
  http_conn *c = http_check_req(L, 1);
  size_t n;
  const char *d = luaL_checklstring(L, 2, &n);
  http_wreq *w;
  ah_task *t;
  if (!c) return ah_push_fail(L, "closed", "the client went away");
  if (c->streaming != 1) return luaL_error(L, "http: no stream has begun");
  if (n > 0 && !c->head_only) {
    w = http_wreq_get(c->srv, 24 + (n <= SMALL_BODY ? n + 2 : 0));
    if (!w) return luaL_error(L, "http: out of memory");
    if (c->chunked) wprintf(w, "%zx\r\n", n);
    c->sent += n;
    if (n <= SMALL_BODY) {
      wadd(w, d, n);
      if (c->chunked) WADDL(w, "\r\n");
      if (http_send(c, w, NULL, 0) != 0)
        return ah_push_fail(L, "closed", "the client went away");
    } else {
      lua_pushvalue(L, 2);
      w->ref = luaL_ref(L, LUA_REGISTRYINDEX);
      if (send_parts(c, w, d, n, c->chunked) != 0)
        return ah_push_fail(L, "closed", "the client went away");
    }
  }
  if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > WRITE_HIGH &&
      !c->waiter) {
    t = ah_task_check(L, "write");
    lua_settop(L, 1);
    c->waiter = t;
    return ah_task_suspend(L, waiter_cancel, lua_touserdata(L, 1), write_k, 0);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* ---- Lua: helpers
 * ------------------------------------------------------------------ */

/* encode(v) -> json | nil, err */
static int l_encode(lua_State *L) {
  char err[256];
  luaL_checkany(L, 1);
  err[0] = '\0';
  if (ah_json_encode(L, 1, err, sizeof err)) return 1;
  return ah_push_fail(L, "json", "%s", err[0] ? err : "cannot encode");
}

/* decode(s) -> v | nil, err */
static int l_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  return ah_json_decode(L, s, n) ? 1 : 2;
}

/* log(level, msg) */
static int l_log(lua_State *L) {
  const char *level = luaL_checkstring(L, 1);
  const char *msg = luaL_checkstring(L, 2);
  ah_log(L, level, "%s", msg);
  return 0;
}

/* worker() -> the ASYNCHOST_WORKER number or nil */
static int l_worker(lua_State *L) {
  const char *w = getenv("ASYNCHOST_WORKER");
  if (!w) return 0;
  lua_pushinteger(L, atoi(w));
  return 1;
}

void ah_open_http(lua_State *L, int mod) {
  static const luaL_Reg srv_methods[] = {{"port", srv_port},
                                         {"close", srv_close},
                                         {"stats", srv_stats},
                                         {"__gc", srv_gc},
                                         {NULL, NULL}};
  static const luaL_Reg internals[] = {{"listen", l_listen},
                                       {"remote_addr", l_remote_addr},
                                       {"headers", l_headers},
                                       {"stream_begin", l_stream_begin},
                                       {"stream_write", l_stream_write},
                                       {"sendfile", http_l_sendfile},
                                       {"encode", l_encode},
                                       {"decode", l_decode},
                                       {"log", l_log},
                                       {"worker", l_worker},
                                       {NULL, NULL}};
  mod = lua_absindex(L, mod);
  if (luaL_newmetatable(L, HTTP_SERVER_MT)) {
    lua_pushvalue(L, -1);
    lua_setfield(L, -2, "__index");
    luaL_setfuncs(L, srv_methods, 0);
  }
  lua_pop(L, 1);
  luaL_newmetatable(L, HTTP_REQ_MT);
  lua_pop(L, 1);
  lua_getfield(L, mod, "_load");
  lua_pushliteral(L, "http");
  lua_call(L, 1, 1);
  lua_pushvalue(L, mod);
  luaL_newlib(L, internals);
  lua_call(L, 2, 0);
}
