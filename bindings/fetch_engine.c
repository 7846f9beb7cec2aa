/*
** The fetch engine: libcurl's multi-socket API on the host's libuv loop.
**
** curl tells us which sockets to watch (CURLMOPT_SOCKETFUNCTION) and when
** to wake it (CURLMOPT_TIMERFUNCTION); a uv_poll per socket and one
** uv_timer call curl_multi_socket_action back. curl's sockets are opened
** and closed by us (CURLOPT_OPENSOCKETFUNCTION/CLOSESOCKETFUNCTION) so a
** poll is always stopped before its descriptor is closed: libuv must never
** watch a closed descriptor, or a new socket that reuses its number.
**
** The engine never calls Lua: a finished transfer records its results and
** resumes its task, whose continuation (bindings/fetch.c) reads them.
*/
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fetch_engine.h"

const char *const fetch_kind_names[FK_COUNT] = {
    "http",      "dns",    "connect", "tls", "timeout",
    "too_large", "closed", "http",    "io"};

#define NSLOTS 256                /* per-host counter buckets */
#define FREE_MAX 1024             /* idle transfers kept for reuse */
#define BODY_KEEP (256 << 10)     /* body buffers up to this size are reused */
#define BODY_GUESS_MAX (64 << 20) /* trust Content-Length up to this */
#define OUT_HIGH (1 << 20) /* output bytes queued before curl is paused */

/* A socket curl asked us to watch, or one we opened for it. */
typedef struct fetch_sock {
  curl_socket_t fd;
  uv_poll_t *poll; /* made when curl first wants it watched */
  int action;      /* CURL_POLL_* curl asked for last, 0 if none */
  int events;      /* UV_READABLE/UV_WRITABLE the poll watches now */
  int owned;       /* opened by open_socket: closed by close_socket */
} fetch_sock;

/* Requests in flight to one host, for fetch.config{per_host = n}. */
struct fetch_slot {
  fetch_slot *next;
  long n;
  char key[];
};

/* An output file written on the thread pool while the body arrives. */
struct fetch_out {
  uv_fs_t req; /* one open, write or close at a time */
  fetch_xfer *x;
  uv_file fd; /* -1 when not open */
  int busy;   /* req is in flight */
  int paused; /* curl was paused until the queue drains */
  int err;    /* the first libuv error */
  int64_t offset;
  char *pend; /* bytes waiting to be written */
  size_t plen, pcap;
  char *wbuf; /* bytes being written */
  size_t wlen, wcap;
  char path[];
};

static void engine_free_if_done(fetch_engine *e);
static int begin(fetch_xfer *x);
static void finish(fetch_xfer *x);
static void out_step(fetch_xfer *x);
static void on_out_fs(uv_fs_t *req);
static void transfer_done(fetch_engine *e, fetch_xfer *x, CURLcode result);

/* ---- loop keep-alive ---------------------------------------------------- */

/* Polls and the timer are unref'd: idle keep-alive sockets must not keep
   the process alive. This always-active handle is ref'd instead while a
   transfer runs. */
static void running_add(fetch_engine *e, int delta) {
  int was = e->running;
  e->running += delta;
  if (e->running * 2 > e->maxconnects && e->maxconnects < e->maxconnects_cap) {
    /* curl's default cache size (4 x the handles in the multi) shrinks
       as soon as transfers end, closing keep-alive connections that the
       next requests want: size it by the peak instead, up to the cap (a
       burst must not leave its idle connections holding every descriptor
       the process may open: the db, the server and files need some). */
    e->maxconnects = e->running * 2;
    if (e->maxconnects > e->maxconnects_cap)
      e->maxconnects = e->maxconnects_cap;
    curl_multi_setopt(e->multi, CURLMOPT_MAXCONNECTS, (long)e->maxconnects);
  }
  if (was == 0 && e->running > 0) uv_ref((uv_handle_t *)e->alive);
  if (was > 0 && e->running == 0) uv_unref((uv_handle_t *)e->alive);
}

/* ---- sockets ------------------------------------------------------------- */

static fetch_sock *sock_get(fetch_engine *e, curl_socket_t fd) {
  return fd >= 0 && (size_t)fd < e->nsocks ? e->socks[fd] : NULL;
}

static fetch_sock *sock_new(fetch_engine *e, curl_socket_t fd, int owned) {
  fetch_sock *k;
  if ((size_t)fd >= e->nsocks) {
    size_t n = e->nsocks ? e->nsocks : 64;
    fetch_sock **socks;
    while (n <= (size_t)fd) n *= 2;
    socks = realloc(e->socks, n * sizeof *socks);
    if (!socks) return NULL;
    memset(socks + e->nsocks, 0, (n - e->nsocks) * sizeof *socks);
    e->socks = socks;
    e->nsocks = n;
  }
  k = calloc(1, sizeof *k);
  if (!k) return NULL;
  k->fd = fd;
  k->owned = owned;
  e->socks[fd] = k;
  return k;
}

static void free_handle(uv_handle_t *h) {
  free(h);
}

static void poll_close(fetch_engine *e, fetch_sock *k) {
  if (!k->poll) return;
  ah_host_close_handle(e->host, (uv_handle_t *)k->poll, free_handle);
  k->poll = NULL;
  k->events = 0;
}

static void sock_drop(fetch_engine *e, fetch_sock *k) {
  poll_close(e, k);
  e->socks[k->fd] = NULL;
  free(k);
}

static void check_done(fetch_engine *e);

static int poll_update(fetch_engine *e, fetch_sock *k);

/* A poll handle and the engine its callback needs. */
typedef struct fetch_poll {
  uv_poll_t poll;
  fetch_engine *e;
} fetch_poll;

static void on_poll(uv_poll_t *p, int status, int events) {
  fetch_sock *k = p->data;
  fetch_engine *e = ((fetch_poll *)p)->e;
  curl_socket_t fd = k->fd;
  int flags = 0, still;
  if (k->action == 0) { /* an idle connection stirred (closed by the peer) */
    poll_update(e, k);  /* stop: curl checks it before reusing it */
    return;
  }
  if (status < 0) {
    /* An error on the socket (libuv has stopped the poll): let curl try
       what it was waiting for and meet the error itself. CURL_CSELECT_ERR
       would stick to the transfer and fail it later even when the socket
       was only one of happy eyeballs' losing attempts. */
    k->events = 0;
    if (k->action & CURL_POLL_IN) flags |= CURL_CSELECT_IN;
    if (k->action & CURL_POLL_OUT) flags |= CURL_CSELECT_OUT;
  } else {
    if (events & (UV_READABLE | UV_DISCONNECT)) flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  }
  curl_multi_socket_action(e->multi, fd, flags, &still);
  if (status < 0 && (k = sock_get(e, fd)) != NULL && k->poll && k->action &&
      k->events == 0)
    poll_update(e, k); /* curl still wants it: watch it again */
  check_done(e);
}

/* Makes the poll watch what curl wants. uv_poll_start costs two epoll_ctl
   calls even for the same events, so an unchanged watch is left alone. */
static int poll_update(fetch_engine *e, fetch_sock *k) {
  int events = 0;
  if (!k->poll) {
    fetch_poll *p = malloc(sizeof *p);
    if (!p) return -1;
    if (uv_poll_init_socket(e->loop, &p->poll, k->fd) != 0) {
      free(p);
      return -1;
    }
    p->e = e;
    p->poll.data = k;
    uv_unref((uv_handle_t *)&p->poll);
    k->poll = &p->poll;
    k->events = 0;
  }
  if (k->action & CURL_POLL_IN) events |= UV_READABLE;
  if (k->action & CURL_POLL_OUT) events |= UV_WRITABLE;
  if (events == k->events) return 0;
  if (events)
    uv_poll_start(k->poll, events, on_poll);
  else
    uv_poll_stop(k->poll);
  k->events = events;
  return 0;
}

/* CURLMOPT_SOCKETFUNCTION: watch s for what curl wants, or stop. */
static int on_socket(CURL *easy, curl_socket_t s, int what, void *userp,
                     void *socketp) {
  fetch_engine *e = userp;
  fetch_sock *k = sock_get(e, s);
  (void)socketp;
  if (what == CURL_POLL_REMOVE) {
    if (!k) return 0;
    k->action = 0;
    if (!k->owned)
      sock_drop(e, k); /* not ours (the resolver's socketpair) */
    else if (k->events & UV_WRITABLE)
      poll_update(e, k); /* would fire at once: stop now */
    /* else the read watch stays until it fires or the connection is
       reused: a keep-alive connection costs no epoll_ctl per request */
    return 0;
  }
  if (!k && !(k = sock_new(e, s, 0))) return -1;
  k->action = what;
  {
    fetch_xfer *x = NULL;
    if (easy &&
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&x) == CURLE_OK && x)
      x->sock = s;
  }
  return poll_update(e, k);
}

/* CURLOPT_OPENSOCKETFUNCTION */
static curl_socket_t open_socket(void *clientp, curlsocktype purpose,
                                 struct curl_sockaddr *a) {
  fetch_engine *e = clientp;
  fetch_sock *k;
  int fd;
  (void)purpose;
  fd = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
  if (fd < 0) {
    e->socket_errno = errno;
    return CURL_SOCKET_BAD;
  }
  e->socket_errno = 0;
  k = sock_get(e, fd);
  if (k) {
    /* curl closed this number behind our back (a socket it did not open
       through us, or one of ours closed without CLOSESOCKETFUNCTION) and
       still thinks it watches it: move its watch over to the new socket,
       with a new poll, as curl expects. */
    int counted = k->owned; /* one of ours: still counted as open */
    e->stale_fds++;
    poll_close(e, k);
    k->owned = 1;
    if (k->action && poll_update(e, k) != 0) {
      close(fd);
      return CURL_SOCKET_BAD;
    }
    /* the old socket's count goes to the new one (counting it again made
       sockets and idle.fetch.socket one too high for good: bench/soak) */
    if (counted) return fd;
  } else if (!(k = sock_new(e, fd, 1))) {
    close(fd);
    return CURL_SOCKET_BAD;
  }
  e->sockets++;
  ah_host_count(e->host, "idle.fetch.socket", 1);
  return fd;
}

/* libcurl 7.88 now and then closes a removed transfer's connection with
   close() instead of CLOSESOCKETFUNCTION (1 in ~1,000 cancelled fetches
   in bench/soak): drop its watch and its count at once, before another
   part of the process is given the same descriptor number (libuv would
   hand that one's events to this stale watch). */
static void sock_forget_closed(fetch_engine *e, curl_socket_t fd) {
  fetch_sock *k = sock_get(e, fd);
  if (!k || !k->owned || fcntl(fd, F_GETFD) != -1 || errno != EBADF) return;
  sock_drop(e, k);
  e->sockets--;
  ah_host_count(e->host, "idle.fetch.socket", -1);
}

/* CURLOPT_CLOSESOCKETFUNCTION: the poll goes first, then the descriptor. */
static int close_socket(void *clientp, curl_socket_t fd) {
  fetch_engine *e = clientp;
  fetch_sock *k = sock_get(e, fd);
  if (k) sock_drop(e, k);
  e->sockets--;
  ah_host_count(e->host, "idle.fetch.socket", -1);
  return close(fd);
}

/* ---- the timer ----------------------------------------------------------- */

static void on_timeout(uv_timer_t *t) {
  fetch_engine *e = t->data;
  int still;
  curl_multi_socket_action(e->multi, CURL_SOCKET_TIMEOUT, 0, &still);
  check_done(e);
}

/* CURLMOPT_TIMERFUNCTION */
static int on_timer(CURLM *multi, long ms, void *userp) {
  fetch_engine *e = userp;
  (void)multi;
  if (ms < 0)
    uv_timer_stop(e->timer);
  else
    uv_timer_start(e->timer, on_timeout, (uint64_t)ms, 0);
  return 0;
}

/* ---- per-host slots and the wait queue ----------------------------------- */

static unsigned hash_key(const char *s) {
  unsigned h = 2166136261u;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
  return h % NSLOTS;
}

static fetch_slot **slot_find(fetch_engine *e, const char *key) {
  fetch_slot **p = &e->slots[hash_key(key)];
  while (*p && strcmp((*p)->key, key) != 0) p = &(*p)->next;
  return p;
}

static long slot_count(fetch_engine *e, const char *key) {
  fetch_slot **p;
  if (!e->slots) return 0;
  p = slot_find(e, key);
  return *p ? (*p)->n : 0;
}

static int can_start(fetch_engine *e, fetch_xfer *x) {
  if (e->total > 0 && e->active >= e->total) return 0;
  if (e->per_host > 0 && x->hostkey && slot_count(e, x->hostkey) >= e->per_host)
    return 0;
  return 1;
}

static void slot_take(fetch_engine *e, fetch_xfer *x) {
  e->active++;
  x->holds_slot = 1;
  if (e->per_host > 0 && x->hostkey) {
    fetch_slot **p;
    if (!e->slots && !(e->slots = calloc(NSLOTS, sizeof *e->slots))) return;
    p = slot_find(e, x->hostkey);
    if (!*p) {
      size_t n = strlen(x->hostkey);
      fetch_slot *s = malloc(sizeof *s + n + 1);
      if (!s) return;
      s->next = NULL;
      s->n = 0;
      memcpy(s->key, x->hostkey, n + 1);
      *p = s;
    }
    (*p)->n++;
    x->slot = *p;
  }
}

static void queue_unlink(fetch_engine *e, fetch_xfer *x) {
  if (x->prev)
    x->prev->next = x->next;
  else
    e->wait_head = x->next;
  if (x->next)
    x->next->prev = x->prev;
  else
    e->wait_tail = x->prev;
  x->next = x->prev = NULL;
}

/* Starts the waiting requests the limits now allow, oldest first. A
   request that fails to start finishes at once, which gives back its slot
   and may change the queue: the scan then starts over. */
static void pump(fetch_engine *e) {
  fetch_xfer *x, *next;
  if (e->pumping) {
    e->pump_again = 1;
    return;
  }
  e->pumping = 1;
  do {
    e->pump_again = 0;
    for (x = e->wait_head; x; x = next) {
      if (e->total > 0 && e->active >= e->total) break;
      next = x->next;
      if (!can_start(e, x)) continue;
      queue_unlink(e, x);
      slot_take(e, x);
      if (begin(x) != 0) {
        finish(x);
        e->pump_again = 1;
        break;
      }
    }
  } while (e->pump_again && !e->closed);
  e->pumping = 0;
}

void fetch_engine_limits(fetch_engine *e, long per_host, long total) {
  if (per_host >= 0) e->per_host = per_host;
  if (total >= 0) e->total = total;
  if (e->wait_head && !e->closed) pump(e);
}

static void slot_give(fetch_engine *e, fetch_xfer *x) {
  if (!x->holds_slot) return;
  x->holds_slot = 0;
  e->active--;
  if (x->slot) {
    fetch_slot *s = x->slot;
    x->slot = NULL;
    if (--s->n == 0) {
      fetch_slot **p = slot_find(e, s->key);
      *p = s->next;
      free(s);
    }
  }
  if (e->wait_head && !e->closed) pump(e);
}

/* ---- output files -------------------------------------------------------- */

void fetch_xfer_fail(fetch_xfer *x, int kind, const char *fmt, ...) {
  va_list ap;
  int n;
  if (x->fail) return; /* the first failure is the one reported */
  x->fail = kind;
  va_start(ap, fmt);
  n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  free(x->fail_detail);
  x->fail_detail = malloc((size_t)n + 1);
  if (x->fail_detail) {
    va_start(ap, fmt);
    vsnprintf(x->fail_detail, (size_t)n + 1, fmt, ap);
    va_end(ap);
  }
}

int fetch_xfer_output(fetch_xfer *x, const char *path) {
  size_t n = strlen(path);
  fetch_out *o = calloc(1, sizeof *o + n + 1);
  if (!o) return -1;
  memcpy(o->path, path, n + 1);
  o->fd = -1;
  o->x = x;
  o->req.data = o;
  x->out = o;
  return 0;
}

const char *fetch_xfer_output_path(fetch_xfer *x) {
  return x->out ? x->out->path : NULL;
}

static void out_free(fetch_out *o) {
  free(o->pend);
  free(o->wbuf);
  free(o);
}

static void out_fs_error(fetch_xfer *x, int err, const char *what) {
  fetch_out *o = x->out;
  if (!o->err) o->err = err;
  fetch_xfer_fail(x, FK_IO, "%s: cannot %s: %s", o->path, what,
                  uv_strerror(err));
}

static void xfer_destroy(fetch_xfer *x);

/* An fs request ended after the engine was closed: clean up alone. */
static int out_orphaned(fetch_xfer *x) {
  fetch_out *o = x->out;
  if (!x->e->closed) return 0;
  if (o->fd >= 0) close(o->fd); /* the loop may be going away: no uv_fs */
  o->fd = -1;
  {
    fetch_engine *e = x->e;
    xfer_destroy(x);
    engine_free_if_done(e);
  }
  return 1;
}

static void on_out_fs(uv_fs_t *req) {
  fetch_out *o = req->data;
  fetch_xfer *x = o->x;
  ssize_t r = req->result;
  uv_fs_type type = req->fs_type;
  uv_fs_req_cleanup(req);
  o->busy = 0;
  if (out_orphaned(x)) return;
  switch (type) {
  case UV_FS_OPEN:
    if (r < 0)
      out_fs_error(x, (int)r, "open it");
    else
      o->fd = (uv_file)r;
    if (x->state == XS_OPENING && !x->cancelled && !o->err) {
      if (begin(x) != 0) x->state = XS_FLUSHING; /* close, then report */
    } else
      x->state = XS_FLUSHING;
    break;
  case UV_FS_WRITE:
    if (r < 0)
      out_fs_error(x, (int)r, "write to it");
    else {
      o->offset += r; /* writes are sequential (-1): pipes work too */
      if ((size_t)r < o->wlen) { /* a short write: the rest goes first */
        memmove(o->wbuf, o->wbuf + r, o->wlen - (size_t)r);
        o->wlen -= (size_t)r;
        if (!x->cancelled) {
          uv_buf_t b = uv_buf_init(o->wbuf, (unsigned)o->wlen);
          if (uv_fs_write(x->e->loop, &o->req, o->fd, &b, 1, -1, on_out_fs) ==
              0) {
            o->busy = 1;
            return;
          }
          out_fs_error(x, UV_EIO, "write to it");
        }
        o->wlen = 0;
      }
    }
    o->wlen = 0;
    break;
  case UV_FS_CLOSE:
    if (r < 0) out_fs_error(x, (int)r, "close it");
    break;
  default:
    break;
  }
  out_step(x);
}

/* Starts writing what is queued; 1 if a write is now in flight. */
static int out_flush(fetch_xfer *x) {
  fetch_out *o = x->out;
  char *t = o->wbuf;
  size_t c = o->wcap;
  uv_buf_t b;
  if (o->busy || o->plen == 0 || o->err) return o->busy;
  o->wbuf = o->pend; /* swap the buffers: curl fills one, we write one */
  o->wcap = o->pcap;
  o->wlen = o->plen;
  o->pend = t;
  o->pcap = c;
  o->plen = 0;
  b = uv_buf_init(o->wbuf, (unsigned)o->wlen);
  if (uv_fs_write(x->e->loop, &o->req, o->fd, &b, 1, -1, on_out_fs) != 0) {
    out_fs_error(x, UV_EIO, "write to it");
    return 0;
  }
  o->busy = 1;
  return 1;
}

/* Moves the output along: writes what is queued, unpauses curl, closes
   the file once the transfer is over, then finishes the request. */
static void out_step(fetch_xfer *x) {
  fetch_out *o = x->out;
  if (o->busy) return;
  if (x->state == XS_RUNNING) {
    out_flush(x);
    if (o->paused && (o->plen < OUT_HIGH || o->err)) {
      CURLcode rc;
      o->paused = 0; /* curl hands the data over again (or hears the error) */
      rc = curl_easy_pause(x->easy, CURLPAUSE_CONT);
      /* a failed unpause leaves the transfer stalled: end it here */
      if (rc != CURLE_OK && x->state == XS_RUNNING) transfer_done(x->e, x, rc);
    }
    return;
  }
  if (x->state != XS_FLUSHING) return;
  if (!x->cancelled && out_flush(x)) return; /* the tail of the body */
  if (o->fd >= 0) {
    uv_file fd = o->fd;
    o->fd = -1;
    if (uv_fs_close(x->e->loop, &o->req, fd, on_out_fs) == 0) {
      o->busy = 1;
      return;
    }
  }
  finish(x);
}

/* Queues body bytes for the file; CURL_WRITEFUNC_PAUSE while too many wait. */
static size_t out_write(fetch_xfer *x, const char *p, size_t n) {
  fetch_out *o = x->out;
  if (o->err) return 0;
  if (o->busy && o->plen >= OUT_HIGH) {
    o->paused = 1;
    return CURL_WRITEFUNC_PAUSE;
  }
  if (o->plen + n > o->pcap) {
    size_t cap = o->pcap ? o->pcap * 2 : 65536;
    char *b;
    while (cap < o->plen + n) cap *= 2;
    if (!(b = realloc(o->pend, cap))) {
      fetch_xfer_fail(x, FK_IO, "%s: out of memory", o->path);
      return 0;
    }
    o->pend = b;
    o->pcap = cap;
  }
  memcpy(o->pend + o->plen, p, n);
  o->plen += n;
  out_step(x);
  return n;
}

/* ---- transfers ----------------------------------------------------------- */

/* Room for n more bytes of the body: the Content-Length the first time
   (within BODY_GUESS_MAX and max_size: a header is only a promise), else
   double. */
static size_t body_capacity(fetch_xfer *x, size_t n) {
  size_t need = x->len + n, cap = x->cap ? x->cap * 2 : 1024;
  curl_off_t length = -1;
  if (x->len == 0)
    curl_easy_getinfo(x->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length);
  if (length > 0 && length <= BODY_GUESS_MAX &&
      (x->max_size < 0 || length <= x->max_size) && (size_t)length >= need)
    return (size_t)length;
  while (cap < need) cap *= 2;
  return cap;
}

static size_t on_write(char *p, size_t size, size_t nmemb, void *ud) {
  fetch_xfer *x = ud;
  size_t n = size * nmemb;
  if (x->max_size >= 0 && x->received + (curl_off_t)n > x->max_size) {
    fetch_xfer_fail(x, FK_TOO_LARGE, "the body is over max_size (%ld bytes)",
                    (long)x->max_size);
    return 0;
  }
  if (x->out) {
    size_t r = out_write(x, p, n);
    if (r == n) x->received += (curl_off_t)n;
    return r;
  }
  if (x->len + n > x->cap) {
    size_t cap = body_capacity(x, n);
    char *b;
    if (!(b = realloc(x->body, cap))) {
      fetch_xfer_fail(x, FK_HTTP, "out of memory for the body");
      return 0;
    }
    x->body = b;
    x->cap = cap;
  }
  memcpy(x->body + x->len, p, n);
  x->len += n;
  x->received += (curl_off_t)n;
  return n;
}

/* The options every request starts from (curl_easy_reset clears them). */
static void easy_defaults(fetch_xfer *x) {
  fetch_engine *e = x->e;
  CURL *c = x->easy;
  x->defaults = e->defaults;
  curl_easy_setopt(c, CURLOPT_PRIVATE, x);
  curl_easy_setopt(c, CURLOPT_SHARE, e->share);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, x->errbuf);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_write);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, x);
  curl_easy_setopt(c, CURLOPT_OPENSOCKETFUNCTION, open_socket);
  curl_easy_setopt(c, CURLOPT_OPENSOCKETDATA, e);
  curl_easy_setopt(c, CURLOPT_CLOSESOCKETFUNCTION, close_socket);
  curl_easy_setopt(c, CURLOPT_CLOSESOCKETDATA, e);
  curl_easy_setopt(c, CURLOPT_ACCEPT_ENCODING, "");
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(c, CURLOPT_QUICK_EXIT, 1L);
  curl_easy_setopt(c, CURLOPT_USERAGENT, e->user_agent);
}

static void live_link(fetch_engine *e, fetch_xfer *x) {
  x->lprev = NULL;
  x->lnext = e->live;
  if (e->live) e->live->lprev = x;
  e->live = x;
}

static void live_unlink(fetch_engine *e, fetch_xfer *x) {
  if (x->lprev)
    x->lprev->lnext = x->lnext;
  else
    e->live = x->lnext;
  if (x->lnext) x->lnext->lprev = x->lprev;
  x->lnext = x->lprev = NULL;
}

fetch_xfer *fetch_xfer_new(fetch_engine *e) {
  fetch_xfer *x = e->free_list;
  if (x) {
    e->free_list = x->next;
    e->nfree--;
    x->next = NULL;
  } else {
    if (!(x = calloc(1, sizeof *x))) return NULL;
    x->e = e;
  }
  if (!x->easy) {
    x->defaults = 0;
    if (!(x->easy = curl_easy_init())) {
      free(x->body);
      free(x);
      return NULL;
    }
  }
  x->state = XS_IDLE;
  x->cancelled = 0;
  x->result = CURLE_OK;
  x->fail = FK_NONE;
  x->errbuf[0] = '\0';
  x->len = 0;
  x->received = 0;
  x->max_size = -1;
  x->sock = CURL_SOCKET_BAD;
  x->plain = 0;
  if (x->defaults != e->defaults) easy_defaults(x);
  live_link(e, x);
  ah_host_count(e->host, "fetch", 1);
  return x;
}

/* Frees x and what it holds (not its place in queues or the multi). */
static void xfer_destroy(fetch_xfer *x) {
  fetch_engine *e = x->e;
  if (x->out) out_free(x->out);
  if (x->easy) curl_easy_cleanup(x->easy);
  curl_slist_free_all(x->headers);
  free(x->body);
  free(x->hostkey);
  free(x->fail_detail);
  if (x->state != XS_IDLE) {
    live_unlink(e, x);
    ah_host_count(e->host, "fetch", -1);
  }
  free(x);
}

/* Puts x in the multi handle, or opens its output file first. */
static int begin(fetch_xfer *x) {
  fetch_engine *e = x->e;
  CURLMcode mc;
  if (x->out && x->out->fd < 0 && !x->out->err) {
    fetch_out *o = x->out;
    int r =
        uv_fs_open(e->loop, &o->req, o->path,
                   O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644, on_out_fs);
    if (r != 0) {
      out_fs_error(x, r, "open it");
      return FK_IO;
    }
    o->busy = 1;
    x->state = XS_OPENING;
    return 0;
  }
  mc = curl_multi_add_handle(e->multi, x->easy);
  if (mc != CURLM_OK) {
    fetch_xfer_fail(x, FK_HTTP, "cannot start: %s", curl_multi_strerror(mc));
    return FK_HTTP;
  }
  running_add(e, 1);
  x->state = XS_RUNNING;
  return 0;
}

int fetch_xfer_start(fetch_xfer *x, ah_task *task) {
  fetch_engine *e = x->e;
  x->task = task;
  if (!can_start(e, x) || e->wait_head) {
    x->state = XS_QUEUED;
    x->prev = e->wait_tail;
    x->next = NULL;
    if (e->wait_tail)
      e->wait_tail->next = x;
    else
      e->wait_head = x;
    e->wait_tail = x;
    if (can_start(e, x)) pump(e); /* older ones may be blocked by host */
    if (x->state == XS_DONE) return x->fail ? x->fail : FK_HTTP;
    return 0;
  }
  slot_take(e, x);
  if (begin(x) != 0) {
    slot_give(e, x);
    return x->fail;
  }
  return 0;
}

/* The transfer is over (or never started): results are ready. */
static void finish(fetch_xfer *x) {
  if (x->holds_slot) slot_give(x->e, x);
  if (x->out && (x->out->busy || x->out->fd >= 0)) {
    x->state = XS_FLUSHING;
    out_step(x);
    return;
  }
  x->state = XS_DONE;
  if (x->cancelled)
    fetch_xfer_release(x);
  else
    ah_task_resume(x->task);
}

static void transfer_done(fetch_engine *e, fetch_xfer *x, CURLcode result) {
  curl_off_t n;
  long conns = 1;
  curl_multi_remove_handle(e->multi, x->easy);
  running_add(e, -1);
  x->result = result;
  e->requests++;
  if (curl_easy_getinfo(x->easy, CURLINFO_NUM_CONNECTS, &conns) == CURLE_OK &&
      conns == 0 && result == CURLE_OK)
    e->reused++;
  if (curl_easy_getinfo(x->easy, CURLINFO_SIZE_DOWNLOAD_T, &n) == CURLE_OK)
    e->bytes += (uint64_t)n;
  x->state = XS_FLUSHING;
  finish(x);
}

static void check_done(fetch_engine *e) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(e->multi, &left)) != NULL) {
    if (m->msg == CURLMSG_DONE) {
      CURL *easy = m->easy_handle;
      CURLcode result = m->data.result;
      fetch_xfer *x = NULL;
      curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&x);
      if (x) transfer_done(e, x, result);
    }
  }
}

void fetch_xfer_cancel(void *data) {
  fetch_xfer *x = data;
  fetch_engine *e = x->e;
  x->cancelled = 1;
  switch (x->state) {
  case XS_QUEUED:
    queue_unlink(e, x);
    fetch_xfer_release(x);
    break;
  case XS_RUNNING:
    /* Removed mid-transfer, curl closes an HTTP/1 connection rather than
       reuse it half-read (an HTTP/2 stream is reset); the easy handle is
       not recycled, to be sure nothing of this request lingers in it. */
    curl_multi_remove_handle(e->multi, x->easy);
    sock_forget_closed(e, x->sock);
    running_add(e, -1);
    curl_easy_cleanup(x->easy);
    x->easy = NULL;
    slot_give(e, x);
    if (x->out) {
      x->state = XS_FLUSHING;
      out_step(x);
    } else
      fetch_xfer_release(x);
    break;
  default: /* XS_OPENING, XS_FLUSHING: the fs callback finishes it */
    break;
  }
}

void fetch_xfer_release(fetch_xfer *x) {
  fetch_engine *e = x->e;
  if (x->holds_slot) slot_give(e, x);
  if (e->closed || e->nfree >= FREE_MAX) {
    xfer_destroy(x);
    engine_free_if_done(e);
    return;
  }
  live_unlink(e, x);
  ah_host_count(e->host, "fetch", -1);
  curl_slist_free_all(x->headers);
  x->headers = NULL;
  free(x->hostkey);
  x->hostkey = NULL;
  free(x->fail_detail);
  x->fail_detail = NULL;
  x->fail = FK_NONE;
  if (x->out) {
    out_free(x->out);
    x->out = NULL;
  }
  x->task = NULL;
  x->state = XS_IDLE;
  if (x->cap > BODY_KEEP) {
    free(x->body);
    x->body = NULL;
    x->cap = 0;
  }
  x->len = 0;
  /* a plain request's options are all set again by the next one */
  if (x->easy && x->plain)
    curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, NULL); /* freed above */
  else if (x->easy) {
    curl_easy_reset(x->easy);
    x->defaults = 0;
  }
  x->next = e->free_list;
  e->free_list = x;
  e->nfree++;
}

/* RFC 9112 6.3: differing Content-Length values make the response
   invalid; libcurl 7.88 takes the last one */
static int conflicting_length(CURL *easy) {
  struct curl_header *h;
  char first[32];
  size_t i, n;
  if (curl_easy_header(easy, "Content-Length", 0, CURLH_HEADER, -1, &h) !=
          CURLHE_OK ||
      h->amount < 2)
    return 0;
  n = h->amount;
  snprintf(first, sizeof first, "%s", h->value);
  for (i = 1; i < n; i++)
    if (curl_easy_header(easy, "Content-Length", i, CURLH_HEADER, -1, &h) !=
            CURLHE_OK ||
        strcmp(h->value, first) != 0)
      return 1;
  return 0;
}

/* curl says only "Couldn't connect" when our open_socket failed: say why
   (out of descriptors, most often) */
static void connect_detail(fetch_xfer *x, const char **detail) {
  long os_errno = 0;
  int err = x->e->socket_errno;
  size_t n;
  if (x->easy) curl_easy_getinfo(x->easy, CURLINFO_OS_ERRNO, &os_errno);
  if (os_errno != 0 ||
      (err != EMFILE && err != ENFILE && err != ENOBUFS && err != ENOMEM))
    return;
  if (strstr(x->errbuf, " (socket: ")) return; /* said already */
  n = strlen(x->errbuf);
  if (n == 0) n = (size_t)snprintf(x->errbuf, sizeof x->errbuf, "%s", *detail);
  if (n < sizeof x->errbuf)
    snprintf(x->errbuf + n, sizeof x->errbuf - n, " (socket: %s)",
             strerror(err));
  *detail = x->errbuf;
}

int fetch_xfer_error(fetch_xfer *x, const char **detail) {
  CURLcode c = x->result;
  *detail = x->errbuf[0] ? x->errbuf : curl_easy_strerror(c);
  if (x->fail) {
    *detail = x->fail_detail ? x->fail_detail : "failed";
    return x->fail;
  }
  switch (c) {
  case CURLE_OK:
    if (x->easy && conflicting_length(x->easy)) {
      *detail = "conflicting Content-Length headers";
      return FK_HTTP;
    }
    return FK_NONE;
  case CURLE_COULDNT_RESOLVE_HOST:
  case CURLE_COULDNT_RESOLVE_PROXY:
    return FK_DNS;
  case CURLE_COULDNT_CONNECT:
    connect_detail(x, detail);
    return FK_CONNECT;
  case CURLE_PROXY:
    return FK_CONNECT;
  case CURLE_OPERATION_TIMEDOUT:
    return FK_TIMEOUT;
  case CURLE_SSL_CONNECT_ERROR:
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_CIPHER:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_ENGINE_NOTFOUND:
  case CURLE_SSL_ENGINE_SETFAILED:
  case CURLE_SSL_ENGINE_INITFAILED:
  case CURLE_SSL_SHUTDOWN_FAILED:
  case CURLE_SSL_CRL_BADFILE:
  case CURLE_SSL_ISSUER_ERROR:
  case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
  case CURLE_SSL_INVALIDCERTSTATUS:
  case CURLE_SSL_CLIENTCERT:
  case CURLE_USE_SSL_FAILED:
    return FK_TLS;
  case CURLE_PARTIAL_FILE:
  case CURLE_RECV_ERROR:
  case CURLE_SEND_ERROR:
  case CURLE_GOT_NOTHING:
  case CURLE_HTTP2_STREAM:
    return FK_CLOSED;
  case CURLE_FILESIZE_EXCEEDED:
    *detail = "the Content-Length is over max_size";
    return FK_TOO_LARGE;
  case CURLE_TOO_MANY_REDIRECTS:
    *detail = "too many redirects";
    return FK_HTTP;
  default:
    return FK_HTTP;
  }
}

/* ---- the engine ---------------------------------------------------------- */

static void engine_free_if_done(fetch_engine *e) {
  fetch_slot *sl;
  int i;
  if (!e->closed || e->live) return;
  for (i = 0; e->slots && i < NSLOTS; i++)
    while ((sl = e->slots[i]) != NULL) {
      e->slots[i] = sl->next;
      free(sl);
    }
  free(e->slots);
  free(e->socks);
  free(e->user_agent);
  free(e);
}

/* AH_ON_CLOSE: the host is being freed; its tasks were cancelled. */
static void engine_close(ah_host *h, void *data) {
  fetch_engine *e = data;
  fetch_xfer *x, *next;
  size_t i;
  (void)h;
  e->closed = 1;
  while ((x = e->free_list) != NULL) {
    e->free_list = x->next;
    x->state = XS_IDLE;
    xfer_destroy(x);
  }
  e->nfree = 0;
  /* What is still live waits for an fs callback (it frees itself), or was
     forgotten; either way its easy handle must go before the share. */
  for (x = e->live; x; x = next) {
    next = x->lnext;
    if (x->state == XS_QUEUED) queue_unlink(e, x);
    if (x->easy) {
      if (x->state == XS_RUNNING) curl_multi_remove_handle(e->multi, x->easy);
      curl_easy_cleanup(x->easy);
      x->easy = NULL;
    }
  }
  if (e->multi) curl_multi_cleanup(e->multi); /* closes idle connections */
  e->multi = NULL;
  for (i = 0; i < e->nsocks; i++)
    if (e->socks[i]) sock_drop(e, e->socks[i]);
  if (e->share) curl_share_cleanup(e->share);
  e->share = NULL;
  if (e->timer)
    ah_host_close_handle(e->host, (uv_handle_t *)e->timer, free_handle);
  if (e->alive)
    ah_host_close_handle(e->host, (uv_handle_t *)e->alive, free_handle);
  e->timer = NULL;
  e->alive = NULL;
  curl_global_cleanup();
  engine_free_if_done(e);
}

fetch_engine *fetch_engine_new(ah_host *h) {
  fetch_engine *e = calloc(1, sizeof *e);
  if (!e) return NULL;
  e->host = h;
  e->loop = ah_host_loop(h);
  e->user_agent = strdup("asynchost/" AH_VERSION);
  e->defaults = 1;
  if (!e->user_agent || curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    free(e->user_agent);
    free(e);
    return NULL;
  }
  if (ah_host_hook(h, AH_ON_CLOSE, engine_close, e) != AH_OK) {
    curl_global_cleanup();
    free(e->user_agent);
    free(e);
    return NULL;
  }
  return e;
}

static void on_alive(uv_async_t *a) {
  (void)a;
}

int fetch_engine_ready(fetch_engine *e, char *err, size_t errlen) {
  static int warned;
  const curl_version_info_data *v;
  if (e->multi) return 0;
  if (e->closed) {
    snprintf(err, errlen, "the host is closing");
    return -1;
  }
  v = curl_version_info(CURLVERSION_NOW);
  e->async_dns = (v->features & CURL_VERSION_ASYNCHDNS) != 0;
  if (!e->async_dns && !warned) {
    warned = 1; /* once per process: all hosts share the libcurl */
    fprintf(stderr,
            "asynchost: libcurl %s has no asynchronous resolver: "
            "name lookups block the loop\n",
            v->version);
  }
  if (!e->timer && !(e->timer = malloc(sizeof *e->timer))) goto oom;
  if (!e->alive && !(e->alive = malloc(sizeof *e->alive))) goto oom;
  if (!(e->share = curl_share_init())) goto oom;
  if (!(e->multi = curl_multi_init())) goto oom;
  uv_timer_init(e->loop, e->timer);
  e->timer->data = e;
  uv_unref((uv_handle_t *)e->timer);
  uv_async_init(e->loop, e->alive, on_alive);
  e->alive->data = e;
  uv_unref((uv_handle_t *)e->alive);
  curl_share_setopt(e->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
  curl_share_setopt(e->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
  curl_share_setopt(e->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_PSL);
  curl_multi_setopt(e->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(e->multi, CURLMOPT_SOCKETDATA, e);
  curl_multi_setopt(e->multi, CURLMOPT_TIMERFUNCTION, on_timer);
  curl_multi_setopt(e->multi, CURLMOPT_TIMERDATA, e);
  curl_multi_setopt(e->multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
  e->maxconnects = 32;
  curl_multi_setopt(e->multi, CURLMOPT_MAXCONNECTS, (long)e->maxconnects);
  {
    struct rlimit r;
    e->maxconnects_cap = 1 << 30;
    if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur != RLIM_INFINITY &&
        r.rlim_cur / 4 < (rlim_t)e->maxconnects_cap)
      e->maxconnects_cap = (int)(r.rlim_cur / 4);
    if (e->maxconnects_cap < e->maxconnects)
      e->maxconnects_cap = e->maxconnects;
  }
  return 0;
oom:
  if (e->share) curl_share_cleanup(e->share);
  e->share = NULL;
  free(e->timer);
  free(e->alive);
  e->timer = NULL;
  e->alive = NULL;
  snprintf(err, errlen, "out of memory");
  return -1;
}
